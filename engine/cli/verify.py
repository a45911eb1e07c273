"""``rollout-ledger verify``: check a log from its header to its last event, name the
first bad event, and salvage the events before it.

A SQLite log is checked as every read checks it (:meth:`engine.log.EventLog.chunks`):
its header, the sequence, each row's checksum (or, in rows written before checksums,
that each value fits its field) and the committed tail; a JSON Lines log line by line.
Then its events are folded, so an illegal transition is a bad event too: what
``--salvage`` writes always replays.  Prints ``OK: N events`` and exits 0, or names
the first bad event (its sequence number, or line, and what is wrong) and exits 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Iterator, Sequence

from engine.cli.ledger import _fail
from engine.core.events import SCHEMA_VERSION, Event, to_json
from engine.core.reducer import Folder, IllegalTransition
from engine.log import EventLog, LogError, jsonl_records
from engine.log.files import OutputError, atomic_output, atomic_path, check_output

#: Events written to a salvaged SQLite log per transaction.
_BATCH = 10_000


def register(subparsers: argparse._SubParsersAction) -> None:
    verify = subparsers.add_parser("verify", help="check a log for damage and name the first bad event")
    verify.add_argument("log", type=Path, help="SQLite log, or JSON Lines with --jsonl or a .jsonl name")
    verify.add_argument("--jsonl", action="store_true", help="read LOG as JSON Lines")
    verify.add_argument(
        "--salvage", type=Path, metavar="OUT",
        help="write the events before the first bad one to the new log OUT (JSON Lines if it ends in .jsonl, else SQLite)",
    )
    verify.set_defaults(run=_verify)


def _chunks(path: Path, jsonl: bool) -> Iterator[tuple[Sequence[int], list[Event]]]:
    """``(positions, events)``: sequence numbers of a SQLite log, line numbers of JSON Lines."""
    if jsonl:
        for line, event in jsonl_records(path):
            yield (line,), [event]
        return
    with EventLog(path, mode="r") as log:
        for first, events in log.chunks():
            yield range(first, first + len(events)), events


def scan(path: Path, jsonl: bool, keep: Callable[[list[Event]], object] = lambda events: None) -> tuple[int, str | None]:
    """Read and fold the log at ``path``, handing each run of good events to ``keep``;
    the number of good events and what is wrong with the first bad one (``None``: none)."""
    if path.is_file() and path.stat().st_size == 0:
        return 0, f"{path} is an empty file (0 bytes): no header, no events"
    folder, count = Folder(), 0
    unit = "line" if jsonl else "event"
    try:
        for positions, events in _chunks(path, jsonl):
            try:
                folder.extend(events)
            except IllegalTransition as err:
                index = next((i for i, event in enumerate(events) if event is err.event), 0)
                keep(events[:index])
                return count + index, f"{path}: {unit} {positions[index]} is illegal here: {err}"
            keep(events)
            count += len(events)
    except LogError as err:
        return count, str(err)
    return count, None


def _verify(args: argparse.Namespace) -> int:
    jsonl = args.jsonl or args.log.suffix == ".jsonl"
    if args.salvage is None:
        count, problem = scan(args.log, jsonl)
    else:
        try:
            check_output(args.salvage, args.log)
            if not jsonl:
                EventLog(args.log, mode="r").close()  # a file that is no log has nothing to salvage
        except (OutputError, LogError) as err:
            return _fail(str(err))
        count, problem = _salvage(args.log, jsonl, args.salvage)
        print(f"wrote the {count} events before the first bad one to {args.salvage}" if problem else f"wrote {count} events to {args.salvage}")
    if problem is not None:
        return _fail(f"{problem} (the {count} events before it are intact)" if count else problem)
    print(f"OK: {count} events")
    return 0


def _salvage(path: Path, jsonl: bool, out: Path) -> tuple[int, str | None]:
    """:func:`scan` of ``path``, writing the good events to the new log ``out``, whole or not at all."""
    if out.suffix == ".jsonl":
        with atomic_output(out) as lines:
            lines.write(json.dumps({"schema": SCHEMA_VERSION}) + "\n")
            return scan(path, jsonl, lambda events: lines.writelines(json.dumps(to_json(e)) + "\n" for e in events))
    with atomic_path(out) as partial, EventLog(partial, mode="x") as log:
        batch: list[Event] = []

        def keep(events: list[Event]) -> None:
            batch.extend(events)
            if len(batch) >= _BATCH:
                log.append(batch)
                batch.clear()

        result = scan(path, jsonl, keep)
        log.append(batch)
    return result
