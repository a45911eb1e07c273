"""Ledger commands: ``replay``, ``inspect``, ``export`` and ``import``.

They read logs in chunks of decoded events (:meth:`engine.log.EventLog.chunks`) and
fold each chunk in one call, so a replay costs little more than decoding and folding."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from engine.core.events import Event, to_json
from engine.core.reducer import Folder, IllegalTransition, State, capacity
from engine.log import EventLog, LogError, jsonl_records, write_jsonl

#: The counters ``replay`` prints, in order.
COUNTERS = ("version", "pending", "running", "ready", "accepted", "rejected", "filtered", "consumed", "submitted", "capacity", "events")


def register(subparsers: argparse._SubParsersAction) -> None:
    replay = subparsers.add_parser("replay", help="fold a log and print the ledger's counters")
    replay.add_argument("log", type=Path, help="SQLite log, or JSON Lines with --jsonl or a .jsonl name")
    replay.add_argument("--jsonl", action="store_true", help="read LOG as JSON Lines")
    replay.add_argument("--format", choices=("table", "json"), default="table")
    replay.set_defaults(run=_replay)

    inspect = subparsers.add_parser("inspect", help="print one rollout's history")
    inspect.add_argument("log", type=Path)
    inspect.add_argument("rollout")
    inspect.add_argument("--jsonl", action="store_true", help="read LOG as JSON Lines")
    inspect.set_defaults(run=_inspect)

    export = subparsers.add_parser("export", help="write a SQLite log as JSON Lines")
    export.add_argument("log", type=Path)
    export.add_argument("--jsonl", type=Path, required=True, metavar="OUT", help="the JSON Lines file to write")
    export.set_defaults(run=_export)

    load = subparsers.add_parser("import", help="check a JSON Lines log and write it as a SQLite log")
    load.add_argument("jsonl", type=Path)
    load.add_argument("log", type=Path, help="the SQLite log to create (must not exist)")
    load.set_defaults(run=_import)


def counters(state: State) -> dict[str, int]:
    """The counters of DESIGN.md for ``state``."""
    values = {name: getattr(state, name) for name in COUNTERS if name not in ("capacity", "events")}
    values["capacity"] = capacity(state)
    values["events"] = state.events
    return {name: values[name] for name in COUNTERS}


def _is_jsonl(path: Path, flag: bool) -> bool:
    return flag or path.suffix == ".jsonl"


def _records(path: Path, jsonl: bool) -> Iterator[tuple[int, Event]]:
    """``(position, event)``: line numbers for JSON Lines, sequence numbers for SQLite."""
    if _is_jsonl(path, jsonl):
        yield from jsonl_records(path)
        return
    if not path.is_file():
        raise LogError(f"no log at {path}")
    with EventLog(path, mode="r") as log:
        yield from log.records()


#: Events folded per call when replaying JSON Lines (SQLite logs come in the store's chunks).
_JSONL_CHUNK = 4096


def _chunks(path: Path, jsonl: bool) -> Iterator[tuple[Sequence[int], list[Event]]]:
    """``(positions, events)`` chunks of a log, positions as in :func:`_records`; an
    error reading the log comes after a chunk of the events before it."""
    if _is_jsonl(path, jsonl):
        yield from _batched(jsonl_records(path))
        return
    if not path.is_file():
        raise LogError(f"no log at {path}")
    with EventLog(path, mode="r") as log:
        for first, events in log.chunks():
            yield range(first, first + len(events)), events


def _batched(records: Iterable[tuple[int, Event]]) -> Iterator[tuple[list[int], list[Event]]]:
    positions: list[int] = []
    events: list[Event] = []
    try:
        for position, event in records:
            positions.append(position)
            events.append(event)
            if len(events) == _JSONL_CHUNK:
                yield positions, events
                positions, events = [], []
    except LogError:
        if events:
            yield positions, events
        raise
    if events:
        yield positions, events


def _fail(message: str) -> int:
    print(f"rollout-ledger: {message}", file=sys.stderr)
    return 2


def _fold(path: Path, jsonl: bool) -> State:
    """The state of the log at ``path``; an illegal event raises :class:`LogError` naming
    its position (line or sequence number)."""
    folder = Folder()
    unit = "line" if _is_jsonl(path, jsonl) else "event"
    for positions, events in _chunks(path, jsonl):
        try:
            folder.extend(events)  # folds each event in turn; an illegal one raises
        except IllegalTransition as err:  # its message names the rollout and its status
            where = next((f"{unit} {p}" for p, e in zip(positions, events) if e is err.event), f"{unit}s {positions[0]}-{positions[-1]}")
            raise LogError(f"{path}: {where}: {err}") from err
    return folder.state


def _replay(args: argparse.Namespace) -> int:
    try:
        state = _fold(args.log, args.jsonl)
    except LogError as err:
        return _fail(str(err))
    values = counters(state)
    if args.format == "json":
        print(json.dumps(values))
    else:
        width = max(map(len, values))
        for name, value in values.items():
            print(f"{name:<{width}}  {value}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    found = False
    try:
        for position, event in _records(args.log, args.jsonl):
            if args.rollout == getattr(event, "rollout", None) or args.rollout in getattr(event, "rollouts", ()):
                found = True
                t = "" if event.t is None else f"t={event.t:.3f}  "
                print(f"{position:>8}  {t}{json.dumps(to_json(event))}")
    except LogError as err:
        return _fail(str(err))
    if not found:
        return _fail(f"no rollout {args.rollout!r} in {args.log}")
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        count = write_jsonl((event for _, event in _records(args.log, False)), args.jsonl)
    except LogError as err:
        return _fail(str(err))
    print(f"wrote {count} events to {args.jsonl}")
    return 0


def _import(args: argparse.Namespace) -> int:
    if args.log.exists():
        return _fail(f"{args.log} exists; choose a new path")
    try:
        _fold(args.jsonl, True)  # refuse an illegal history before writing anything
        with EventLog(args.log) as log:
            batch: list[Event] = []
            for _, event in jsonl_records(args.jsonl):
                batch.append(event)
                if len(batch) == 10_000:
                    log.append(batch)
                    batch = []
            last = log.append(batch)
    except LogError as err:
        return _fail(str(err))
    print(f"wrote {last} events to {args.log}")
    return 0
