"""The event log: the SQLite store (:mod:`engine.log.store`) and JSON Lines
(:mod:`engine.log.jsonl`).  Below the ledger, above the core: it encodes and decodes
events and checks the log's integrity; it decides nothing about the lifecycle."""

from engine.log.jsonl import jsonl_records, read_jsonl, write_jsonl
from engine.log.replay import replay
from engine.log.store import BadLine, EventLog, LogError, SchemaTooNew, TornLog

__all__ = ["BadLine", "EventLog", "LogError", "SchemaTooNew", "TornLog", "jsonl_records", "read_jsonl", "replay", "write_jsonl"]
