"""Replay: fold a whole log, SQLite or JSON Lines, into the state it records."""

from __future__ import annotations

from pathlib import Path

from engine.core.reducer import State, fold
from engine.log.jsonl import read_jsonl
from engine.log.store import EventLog, existing


def replay(path: str | Path) -> State:
    """Fold the whole log at ``path`` (SQLite, or JSON Lines if it ends in ``.jsonl``)."""
    if Path(path).suffix == ".jsonl":
        return fold(read_jsonl(path))
    with EventLog(existing(path), mode="r") as log:
        return fold(log.events())
