"""JSON Lines, the exchange format of the event log: one event per line after a
schema header.  Read errors name the line number and the rollout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from engine.core.events import SCHEMA_VERSION, Event, EventError, from_json, to_json
from engine.log.errors import BadLine, SchemaTooNew, TornLog
from engine.log.store import existing


def read_jsonl(path: str | Path) -> Iterator[Event]:
    """Events of a JSON Lines file (see :func:`jsonl_records`)."""
    return (event for _, event in jsonl_records(path))


def jsonl_records(path: str | Path) -> Iterator[tuple[int, Event]]:
    """``(line number, event)`` pairs of a JSON Lines file; raises :class:`BadLine`
    naming the line and rollout.

    A first line ``{"schema": N}`` is a header: a newer schema is refused.  An
    unparseable last line without a newline is a torn tail (:class:`TornLog`); a file
    with no line at all (every export writes its header) is damage too, never an
    empty run."""
    seen = False
    with open(existing(path), encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            seen = True
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                if not line.endswith("\n"):
                    raise TornLog(f"{path}: line {number} is a torn tail (incomplete last line)", number) from err
                raise BadLine(number, f"not JSON: {err.msg}") from err
            if number == 1 and isinstance(obj, dict) and "schema" in obj and "type" not in obj:
                if not isinstance(obj["schema"], int) or obj["schema"] > SCHEMA_VERSION:
                    raise SchemaTooNew(
                        f"{path} was written with event schema {obj['schema']!r}; this rollout-ledger reads "
                        f"schema {SCHEMA_VERSION} and older. Upgrade rollout-ledger to read it."
                    )
                continue
            try:
                event = from_json(obj)
            except (EventError, ValueError) as err:
                rollout = obj.get("rollout") if isinstance(obj, dict) else None
                raise BadLine(number, str(err), rollout if isinstance(rollout, str) else None) from err
            yield number, event
    if not seen:
        raise TornLog(f"{path}: the file is empty; a JSON Lines log holds at least its schema header", 1)


def write_jsonl(events: Iterable[Event], path: str | Path) -> int:
    """Write a schema header and one event per line; returns the number of events."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"schema": SCHEMA_VERSION}) + "\n")
        for event in events:
            out.write(json.dumps(to_json(event)) + "\n")
            count += 1
    return count
