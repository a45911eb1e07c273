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
from typing import Any, Iterator, Sequence

from engine.core.events import SCHEMA_VERSION, Event
from engine.log.codec import BATCH_TYPES, DECODE, ENCODE, Row


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

#: Rows decoded at once when reading (:meth:`EventLog.chunks`).
READ_CHUNK = 256

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

#: The event types whose ``data`` lists the rollouts they name, as SQL (``records(rollout=...)`` searches it).
_BATCH_TYPES = "(" + ", ".join(f"'{kind}'" for kind in BATCH_TYPES) + ")"


def _decode_row(seq: int, kind: str, rollout: Any, version: Any, tokens: Any, t: Any, data: Any) -> Event:
    try:
        return DECODE[kind](rollout, version, tokens, t, data)
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
        encode = ENCODE
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
        """``(seq, event)`` pairs from ``start`` on (only ``rollout``'s when given),
        checked as :meth:`chunks` checks them."""
        if rollout is not None:
            return self._history(start, rollout)
        return itertools.chain.from_iterable(zip(itertools.count(first), events) for first, events in self.chunks(start))

    def events(self, start: int = 1) -> Iterator[Event]:
        """The events from ``start`` on, in order (checked as :meth:`records` checks them)."""
        return itertools.chain.from_iterable(events for _, events in self.chunks(start))

    def _history(self, start: int, rollout: str) -> Iterator[tuple[int, Event]]:
        """The records that name ``rollout`` (the row's column, or the rollouts a batch event lists)."""
        query = f"SELECT * FROM events WHERE seq >= ? AND (rollout = ? OR (type IN {_BATCH_TYPES} AND data LIKE ?)) ORDER BY seq"
        for seq, *columns in self._db.execute(query, (start, rollout, f"%{json.dumps(rollout)}%")):
            event = _decode_row(seq, *columns)
            if rollout == getattr(event, "rollout", None) or rollout in getattr(event, "rollouts", ()):
                yield seq, event

    def chunks(self, start: int = 1) -> Iterator[tuple[int, list[Event]]]:
        """The events from ``start`` on as ``(first seq, events)`` chunks of up to
        :data:`READ_CHUNK`, each decoded in one pass: the fastest way to read a log.

        Raises :class:`TornLog` at a gap in the sequence, at a damaged row (after a
        chunk of the events before it) or at a tail that does not match the committed
        last sequence number.  Events committed by another writer after the read began
        are left for the next read."""
        expected = start
        try:
            # Read the committed tail first, then only rows up to it: rows appended by a
            # writer while we read are not ours, and rows missing below it are damage.
            committed = int(self._meta("last_seq", "0"))
            cursor = self._db.execute("SELECT * FROM events WHERE seq >= ? AND seq <= ? ORDER BY seq", (start, committed))
            decode = DECODE
            while rows := cursor.fetchmany(READ_CHUNK):
                events = None
                # seq is the primary key, so the rows are distinct and ascending: the
                # chunk is contiguous exactly when its first and last rows are in place.
                if rows[0][0] == expected and rows[-1][0] == expected + len(rows) - 1:
                    try:
                        events = [decode[kind](r, v, n, t, d) for _, kind, r, v, n, t, d in rows]
                    except Exception:  # a damaged row: found and named below
                        events = None
                if events is None:
                    good, error = self._salvage(rows, expected)
                    if good:
                        yield expected, good
                    raise error
                yield expected, events
                expected += len(rows)
        except sqlite3.DatabaseError as err:
            raise TornLog(f"{self.path}: damaged after event {expected - 1}: {err}", expected) from err
        if expected <= committed:
            raise TornLog(f"{self.path}: the log ends at event {expected - 1} but {committed} were committed", expected)

    def _salvage(self, rows: list[Any], expected: int) -> tuple[list[Event], TornLog]:
        """The events of ``rows`` before the first missing or damaged one, and the error naming it."""
        good: list[Event] = []
        for seq, kind, rollout, version, tokens, t, data in rows:
            if seq != expected:
                return good, TornLog(f"{self.path}: event {expected} is missing (next stored is {seq})", expected)
            try:
                good.append(_decode_row(seq, kind, rollout, version, tokens, t, data))
            except TornLog as err:
                return good, err
            expected += 1
        raise AssertionError("a chunk that failed to decode decoded row by row")  # pragma: no cover

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LogError(f"no log at {path}")
    return path
