"""The event log: the SQLite store (:mod:`engine.log.store`) and JSON Lines
(:mod:`engine.log.jsonl`).  Below the ledger, above the core: it encodes and decodes
events, checks that their values fit the log and that the log is intact, and keeps one
writer per log; it decides nothing about the lifecycle."""

from engine.log.errors import BadLine, LogError, LogLocked, NotALog, SchemaTooNew, TornLog
from engine.log.jsonl import jsonl_records, read_jsonl, write_jsonl
from engine.log.replay import replay
from engine.log.store import EventLog
from engine.log.values import InvalidValue, check_events

__all__ = [
    "BadLine", "EventLog", "InvalidValue", "LogError", "LogLocked", "NotALog", "SchemaTooNew", "TornLog",
    "check_events", "jsonl_records", "read_jsonl", "replay", "write_jsonl",
]
