"""The durable event log: an append-only SQLite store (JSON Lines exchange is in :mod:`engine.log.jsonl`).

One row per event, keyed by a sequence number that increases by one per event.
Appends are batched into one transaction each, and each transaction also records
the last sequence number in ``meta``; reading checks both, so a log whose tail was
lost or damaged is reported (:class:`TornLog`), never folded silently.  A log
written by a newer event schema is refused (:class:`SchemaTooNew`).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from engine.core.config import Config
from engine.core.events import (
    SCHEMA_VERSION,
    Accepted,
    Checkpoint,
    Consumed,
    Enqueued,
    Event,
    Filtered,
    Interrupted,
    InterruptedBatch,
    Paused,
    Recomputed,
    Rejected,
    Resumed,
    ResumedBatch,
    RunStarted,
    Segment,
    Stage,
    Submitted,
    Version,
)
from engine.core.reducer import EMPTY, State, fold


class LogError(Exception):
    """A log that cannot be read as a rollout-ledger log."""


class TornLog(LogError):
    """The log's tail is missing or damaged; ``position`` is the first bad sequence number or line."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class SchemaTooNew(LogError):
    """The log was written by a newer event schema than this program reads."""


class BadLine(LogError):
    """A JSON Lines line that is not a valid event; names the line number and the rollout."""

    def __init__(self, line: int, message: str, rollout: str | None = None) -> None:
        where = f"line {line}" + (f" (rollout {rollout!r})" if rollout else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.rollout = rollout


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    type    TEXT NOT NULL,
    rollout TEXT,
    version INTEGER,
    tokens  INTEGER,
    t       REAL,
    data    TEXT
);
-- an id is enqueued once per log: the durable guard against reusing a finished rollout's id
CREATE UNIQUE INDEX IF NOT EXISTS enqueued_once ON events (rollout) WHERE type = 'enqueued';
"""

# Row columns: (seq, type, rollout, version, tokens, t, data).  One encoder and one
# decoder per event type; rare fields go in ``data`` (text or JSON).  An encoder
# builds the whole row from the sequence number and the event, in one tuple.
Row = tuple[int, str, "str | None", "int | None", "int | None", "float | None", "str | None"]

_ENCODE: dict[type, Callable[[int, Any], Row]] = {
    RunStarted: lambda s, e: (s, "run_started", None, None, None, e.t, json.dumps(e.config.to_json())),
    Enqueued: lambda s, e: (s, "enqueued", e.rollout, None, e.attempt, e.t, e.prompt),
    Submitted: lambda s, e: (s, "submitted", e.rollout, e.version, None, e.t, None),
    Segment: lambda s, e: (s, "segment", e.rollout, e.version, e.tokens, e.t, None),
    Interrupted: lambda s, e: (s, "interrupted", e.rollout, None, None, e.t, None),
    Accepted: lambda s, e: (s, "accepted", e.rollout, None, None, e.t, None),
    Rejected: lambda s, e: (s, "rejected", e.rollout, None, None, e.t, e.reason),
    Filtered: lambda s, e: (s, "filtered", e.rollout, None, None, e.t, e.reason),
    Consumed: lambda s, e: (s, "consumed", None, None, None, e.t, json.dumps(e.rollouts)),
    Version: lambda s, e: (s, "version", None, e.version, None, e.t, None),
    Paused: lambda s, e: (s, "paused", None, None, None, e.t, None),
    Resumed: lambda s, e: (s, "resumed", e.rollout, e.version, None, e.t, None),
    Recomputed: lambda s, e: (s, "recomputed", e.rollout, e.version, None, e.t, None),
    Checkpoint: lambda s, e: (s, "checkpoint", None, e.version, None, e.t, e.path),
    Stage: lambda s, e: (s, "stage", None, None, None, e.t, json.dumps([e.path, e.phase, e.detail])),
    InterruptedBatch: lambda s, e: (s, "interrupted_batch", None, e.version, None, e.t, json.dumps([e.rollouts, e.tokens])),
    ResumedBatch: lambda s, e: (s, "resumed_batch", None, e.version, None, e.t, json.dumps(e.rollouts)),
}

#: Rows per INSERT statement: a batch is written in statements of ``_CHUNK`` rows, then
#: of the powers of two below it (at most six more statements for the remainder), so a
#: few cached statements cover every batch size.  Binding a statement's rows at once
#: costs less per row than stepping a one-row statement per event; 64 rows are 448
#: parameters, under SQLite's oldest limit of 999.
_CHUNK = 64
_INSERT = {rows: "INSERT INTO events VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows) for rows in (64, 32, 16, 8, 4, 2, 1)}

#: Bound in place of ``None``.  Python's sqlite3 binds ``None`` only after an adapter
#: lookup (a registry miss, then attribute lookups; on Python 3.11 one of them raises
#: and clears an ``AttributeError``): most of the cost of a row with empty columns.
#: SQLite stores a NaN double as NULL, so NaN binds the very same NULL on the fast
#: path for floats (``test_empty_columns_are_stored_as_null`` checks it on the SQLite
#: in use); a NaN in an event was stored as NULL already.
_NULL = float("nan")

_DECODE: dict[str, Callable[[Any, Any, Any, Any, Any], Event]] = {
    "run_started": lambda r, v, n, t, d: RunStarted(Config.from_json(json.loads(d)), t),
    "enqueued": lambda r, v, n, t, d: Enqueued(r, d, n, t),
    "submitted": lambda r, v, n, t, d: Submitted(r, v, t),
    "segment": lambda r, v, n, t, d: Segment(r, v, n, t),
    "interrupted": lambda r, v, n, t, d: Interrupted(r, t),
    "accepted": lambda r, v, n, t, d: Accepted(r, t),
    "rejected": lambda r, v, n, t, d: Rejected(r, d, t),
    "filtered": lambda r, v, n, t, d: Filtered(r, d, t),
    "consumed": lambda r, v, n, t, d: Consumed(tuple(json.loads(d)), t),
    "version": lambda r, v, n, t, d: Version(v, t),
    "paused": lambda r, v, n, t, d: Paused(t),
    "resumed": lambda r, v, n, t, d: Resumed(r, v, t),
    "recomputed": lambda r, v, n, t, d: Recomputed(r, v, t),
    "checkpoint": lambda r, v, n, t, d: Checkpoint(v, d, t),
    "stage": lambda r, v, n, t, d: Stage(*json.loads(d), t),
    "interrupted_batch": lambda r, v, n, t, d: InterruptedBatch(*map(tuple, json.loads(d)), v, t),
    "resumed_batch": lambda r, v, n, t, d: ResumedBatch(tuple(json.loads(d)), v, t),
}

#: The event types whose ``data`` lists the rollouts they name, as SQL (``records(rollout=...)`` searches it).
_BATCH_TYPES = "('consumed', 'interrupted_batch', 'resumed_batch')"


def _decode_row(seq: int, kind: str, rollout: Any, version: Any, tokens: Any, t: Any, data: Any) -> Event:
    try:
        return _DECODE[kind](rollout, version, tokens, t, data)
    except Exception as err:  # an unknown type or a damaged row: name it, never skip it
        raise TornLog(f"event {seq} ({kind!r}, rollout {rollout!r}) is damaged: {err!r}", seq) from err


def _insert(db: sqlite3.Connection, rows: list[Row]) -> None:
    """Insert ``rows`` in order, in statements of :data:`_CHUNK` rows and then fewer,
    with :data:`_NULL` for each empty column."""
    chain, null = itertools.chain.from_iterable, _NULL
    start, left = 0, len(rows)
    while left:
        size = _CHUNK if left >= _CHUNK else 1 << (left.bit_length() - 1)
        db.execute(_INSERT[size], [null if value is None else value for value in chain(rows[start : start + size])])
        start += size
        left -= size


class EventLog:
    """An append-only SQLite (WAL) event log.  ``append`` writes one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._check_schema()
            self.last_seq = int(self._meta("last_seq", "0"))
        except sqlite3.DatabaseError as err:
            raise TornLog(f"{self.path} is not a readable rollout-ledger log: {err}") from err

    def _meta(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def _check_schema(self) -> None:
        stored = int(self._meta("schema", "0"))
        if stored > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} was written with event schema {stored}; this rollout-ledger reads schema "
                f"{SCHEMA_VERSION} and older. Upgrade rollout-ledger to read it."
            )
        if stored == 0:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', '0')")
            stored = SCHEMA_VERSION
        #: The schema the stored events are written in; an older log is marked with this
        #: one in the transaction of its first append (reading alone leaves it as it was).
        self.schema = stored

    def append(self, events: Sequence[Event]) -> int:
        """Write ``events`` in one transaction; returns the last sequence number."""
        if not events:
            return self.last_seq
        first = self.last_seq + 1
        encode = _ENCODE
        rows = [encode[type(event)](seq, event) for seq, event in zip(itertools.count(first), events)]
        last = first + len(rows) - 1
        db = self._db
        db.execute("BEGIN")
        try:
            _insert(db, rows)
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(last),))
            if self.schema < SCHEMA_VERSION:
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.last_seq = last
        self.schema = SCHEMA_VERSION
        return last

    def enqueued_among(self, rollouts: Sequence[str]) -> set[str]:
        """Those of ``rollouts`` that a committed ``enqueued`` event already used."""
        used: set[str] = set()
        for start in range(0, len(rollouts), 500):  # stay under SQLite's parameter limit
            chunk = rollouts[start : start + 500]
            query = f"SELECT rollout FROM events WHERE type = 'enqueued' AND rollout IN ({','.join('?' * len(chunk))})"
            used.update(row[0] for row in self._db.execute(query, chunk))
        return used

    def enqueued_ids(self) -> Iterator[str]:
        """Every id a committed ``enqueued`` event used (read from the unique index)."""
        return (row[0] for row in self._db.execute("SELECT rollout FROM events WHERE type = 'enqueued'"))

    def records(self, start: int = 1, rollout: str | None = None) -> Iterator[tuple[int, Event]]:
        """``(seq, event)`` pairs from ``start`` on (only ``rollout``'s when given).

        Raises :class:`TornLog` at a gap in the sequence or a tail that does not
        match the committed last sequence number.  Events committed by another
        writer after the read began are left for the next read."""
        if rollout is not None:
            query = f"SELECT * FROM events WHERE seq >= ? AND (rollout = ? OR (type IN {_BATCH_TYPES} AND data LIKE ?)) ORDER BY seq"
            rows = self._db.execute(query, (start, rollout, f"%{json.dumps(rollout)}%"))
            for seq, *columns in rows:
                event = _decode_row(seq, *columns)
                if rollout == getattr(event, "rollout", None) or rollout in getattr(event, "rollouts", ()):
                    yield seq, event
            return
        expected = start
        try:
            # Read the committed tail first, then only rows up to it: rows appended by a
            # writer while we read are not ours, and rows missing below it are damage.
            committed = int(self._meta("last_seq", "0"))
            cursor = self._db.execute("SELECT * FROM events WHERE seq >= ? AND seq <= ? ORDER BY seq", (start, committed))
            cursor.arraysize = 4096
            decode = _DECODE
            while True:
                rows = cursor.fetchmany()
                if not rows:
                    break
                for seq, kind, rollout_id, version, tokens, t, data in rows:
                    if seq != expected:
                        raise TornLog(f"{self.path}: event {expected} is missing (next stored is {seq})", expected)
                    try:
                        event = decode[kind](rollout_id, version, tokens, t, data)
                    except Exception:
                        event = _decode_row(seq, kind, rollout_id, version, tokens, t, data)
                    yield seq, event
                    expected += 1
        except sqlite3.DatabaseError as err:
            raise TornLog(f"{self.path}: damaged after event {expected - 1}: {err}", expected) from err
        if expected <= committed:
            raise TornLog(f"{self.path}: the log ends at event {expected - 1} but {committed} were committed", expected)

    def events(self, start: int = 1) -> Iterator[Event]:
        """The events from ``start`` on, in order."""
        return (event for _, event in self.records(start))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replay(path: str | Path) -> State:
    """Fold the whole log at ``path`` (SQLite, or JSON Lines if it ends in ``.jsonl``)."""
    if Path(path).suffix == ".jsonl":
        from engine.log.jsonl import read_jsonl

        return fold(read_jsonl(path))
    with EventLog(_existing(path)) as log:
        return fold(log.events(), EMPTY)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LogError(f"no log at {path}")
    return path
