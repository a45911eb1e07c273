"""Ledger commands: ``replay``, ``inspect``, ``export`` and ``import``.

They read logs in chunks of decoded events (:meth:`engine.log.EventLog.chunks`) and
fold each chunk in one call, so a replay costs little more than decoding and folding."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from engine.core.events import Event, to_json
from engine.core.reducer import Folder, IllegalTransition, State, capacity
from engine.log import EventLog, LogError, jsonl_records, write_jsonl
from engine.log.files import OutputError, atomic_path, check_output

#: The counters ``replay`` prints, in order.
COUNTERS = ("version", "pending", "running", "ready", "accepted", "rejected", "filtered", "consumed", "submitted", "capacity", "events")


def register(subparsers: argparse._SubParsersAction) -> None:
    replay = subparsers.add_parser("replay", help="fold a log and print the ledger's counters")
    replay.add_argument("log", type=Path, help="SQLite log, or JSON Lines with --jsonl or a .jsonl name")
    replay.add_argument("--jsonl", action="store_true", help="read LOG as JSON Lines")
    replay.add_argument("--format", choices=("table", "json"), default="table")
    replay.set_defaults(run=_replay, inputs=("log",))

    inspect = subparsers.add_parser("inspect", help="print one rollout's history")
    inspect.add_argument("log", type=Path)
    inspect.add_argument("rollout")
    inspect.add_argument("--jsonl", action="store_true", help="read LOG as JSON Lines")
    inspect.set_defaults(run=_inspect, inputs=("log",))

    export = subparsers.add_parser("export", help="write a SQLite log as JSON Lines")
    export.add_argument("log", type=Path)
    export.add_argument("--jsonl", type=Path, required=True, metavar="OUT", help="the JSON Lines file to write")
    export.set_defaults(run=_export, inputs=("log",))

    load = subparsers.add_parser("import", help="check a JSON Lines log and write it as a SQLite log")
    load.add_argument("jsonl", type=Path)
    load.add_argument("log", type=Path, help="the SQLite log to create (must not exist)")
    load.set_defaults(run=_import, inputs=("jsonl",))


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


def _unreadable(path: Path) -> str | None:
    """What makes ``path`` unusable as an input file, or ``None``."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory, not a log"
    if not path.is_file():
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def _export(args: argparse.Namespace) -> int:
    """The log at LOG as JSON Lines at OUT, whole or not at all: LOG is checked and
    opened before OUT is touched, OUT may not be LOG, and the lines go to a temporary
    file beside OUT that replaces it only once every event is written."""
    source, out = args.log, args.jsonl
    problem = _unreadable(source)
    if problem is not None:
        return _fail(f"{source}: {problem}")
    try:
        check_output(out, source)
        records = _records(source, False)
        first = next(records, None)  # opens and checks the log before any output exists
        events = (event for _, event in itertools.chain(() if first is None else (first,), records))
        with atomic_path(out) as partial:
            count = write_jsonl(events, partial)
    except (LogError, OutputError) as err:
        return _fail(str(err))
    print(f"wrote {count} events to {out}")
    return 0


#: Events written per transaction by ``import``.
_IMPORT_BATCH = 10_000

#: What SQLite refuses to store: a value out of its integer range, a string that is
#: not valid Unicode, a constraint (an id enqueued twice), or any other database error.
_UNSTORABLE = (sqlite3.Error, OverflowError, UnicodeEncodeError, ValueError)


def _store(source: Path, target: Path) -> int:
    """Append the events of the JSON Lines ``source`` to a new SQLite log at ``target``;
    an event SQLite refuses raises :class:`LogError` naming its line."""
    with EventLog(target) as log:
        records = jsonl_records(source)
        while batch := list(itertools.islice(records, _IMPORT_BATCH)):
            try:
                log.append([event for _, event in batch])
            except _UNSTORABLE:  # the batch was rolled back: find its first event that cannot be stored
                for line, event in batch:
                    try:
                        log.append([event])
                    except _UNSTORABLE as err:
                        raise LogError(f"{source}: line {line}: cannot be stored: {type(err).__name__}: {err}") from err
                raise
        return log.last_seq


def _import(args: argparse.Namespace) -> int:
    """JSON Lines at JSONL as a new SQLite log at LOG, every event or none: the history
    is folded (refusing an illegal event) before LOG is touched, and the database is
    built at a temporary path beside LOG that is renamed to LOG once it is complete."""
    source, target = args.jsonl, args.log
    problem = _unreadable(source)
    if problem is not None:
        return _fail(f"{source}: {problem}")
    if target.exists() or target.is_symlink():
        return _fail(f"{target}: exists; choose a new path for the log")
    try:
        check_output(target, source)
        _fold(source, True)  # refuse an illegal history before writing anything
        partial: Path | None = None
        try:
            with atomic_path(target) as partial:
                partial.unlink()  # SQLite creates the database file itself
                last = _store(source, partial)
        finally:  # side files of a database that was not completed: SQLite's, a writer's lock
            for side in ("-wal", "-shm", "-journal", ".lock"):
                if partial is not None:
                    with contextlib.suppress(OSError):
                        Path(f"{partial}{side}").unlink()
    except (LogError, OutputError) as err:
        return _fail(str(err))
    print(f"wrote {last} events to {target}")
    return 0
