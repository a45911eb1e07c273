"""The durable event log: an append-only SQLite store (JSON Lines exchange is in :mod:`engine.log.jsonl`).

One row per event, keyed by a sequence number that increases by one per event, each
with a checksum chained over the rows (:mod:`engine.log.checksum`).  Appends are
batched into one transaction each, and each transaction also records the last
sequence number in ``meta``; reading checks the sequence, the tail and every row's
checksum, so a log whose tail was lost or whose rows were damaged is reported
(:class:`TornLog`, naming the first bad event), never folded silently.

A log opened for writing (``mode`` ``"a"``, or ``"x"`` for a new one) holds the log's
writer lock (:mod:`engine.log.lock`) until it is closed; one opened for reading
(``"r"``) writes nothing, to the log or beside it.  Only a writer creates a log, and
neither opens a file that is not one (:mod:`engine.log.header`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence

from engine.core.events import Event
from engine.log.checksum import chunk_intact, row_intact, seal
from engine.log.codec import BATCH_TYPES, DECODE, ENCODE, Row
from engine.log.errors import BadLine, LogError, LogLocked, NotALog, SchemaTooNew, TornLog
from engine.log.header import LOG_SCHEMA, UPGRADE, Header, check_file, connect_readonly, create, header_rows, read_header
from engine.log.lock import WriterLock
from engine.log.values import check_events, first_misfit, problem

__all__ = ["BadLine", "EventLog", "LogError", "LogLocked", "NotALog", "SchemaTooNew", "TornLog", "existing"]

#: Rows decoded at once when reading (:meth:`EventLog.chunks`).
READ_CHUNK = 256

#: Rows per INSERT statement: a batch is written in statements of ``_CHUNK`` rows, then
#: of the powers of two below it (at most six more statements for the remainder), so a
#: few cached statements cover every batch size.  Binding a statement's rows at once
#: costs less per row than stepping a one-row statement per event; 64 rows are 512
#: parameters, under SQLite's oldest limit of 999.
_CHUNK = 64
_INSERT = {rows: "INSERT INTO events VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows) for rows in (64, 32, 16, 8, 4, 2, 1)}

#: Bound in place of ``None``.  Python's sqlite3 binds ``None`` only after an adapter
#: lookup (a registry miss, then attribute lookups; on Python 3.11 one of them raises
#: and clears an ``AttributeError``): most of the cost of a row with empty columns.
#: SQLite stores a NaN double as NULL, so NaN binds the very same NULL on the fast
#: path for floats (``test_empty_columns_are_stored_as_null`` checks it on the SQLite
#: in use).  (A NaN in an event is refused before it gets here: it would read back as
#: ``None``.)
_NULL = float("nan")

#: The event types whose ``data`` lists the rollouts they name, as SQL (``records(rollout=...)`` searches it).
_BATCH_TYPES = "(" + ", ".join(f"'{kind}'" for kind in BATCH_TYPES) + ")"

#: ``checked_from`` of a log without checksums: no row is checked by checksum.
_NEVER = 1 << 62


def _where(seq: int, kind: Any, rollout: Any) -> str:
    return f"event {seq} ({kind!r}, rollout {rollout!r})" if rollout is not None else f"event {seq} ({kind!r})"


def _decode_row(seq: int, kind: str, rollout: Any, version: Any, tokens: Any, t: Any, data: Any) -> Event:
    try:
        return DECODE[kind](rollout, version, tokens, t, data)
    except Exception as err:  # an unknown type or a damaged row: name it, never skip it
        raise TornLog(f"{_where(seq, kind, rollout)} is damaged: {err!r}", seq) from err


def _stored(rows: list[Row]) -> list[Row]:
    """``rows`` as SQLite gives them back: a time stamp in a REAL column reads as a
    float, and -0.0 as 0.0 (the checksum covers the values read back)."""
    for index, row in enumerate(rows):
        t = row[5]
        if t is not None and (type(t) is not float or t == 0.0 or t != t):
            rows[index] = (*row[:5], None if t != t else float(t) + 0.0, row[6])
    return rows


def _insert(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
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
    """An append-only SQLite (WAL) event log.  ``append`` writes one transaction.

    ``mode``: ``"a"`` (the default) opens a log for writing, creating it when the path
    does not exist; ``"x"`` creates a new log at a path that does not exist or is an
    empty file (such as :func:`engine.log.files.atomic_path`'s temporary file); ``"r"``
    opens an existing log for reading only.  A writer holds the log's lock until
    :meth:`close` (a second writer gets :class:`LogLocked`).  A file that is not a
    log, or a log of a newer schema, is refused (:class:`NotALog`,
    :class:`SchemaTooNew`, :class:`TornLog` for a damaged header) and left as it was.
    """

    def __init__(self, path: str | Path, mode: str = "a") -> None:
        if mode not in ("r", "a", "x"):
            raise ValueError(f"mode must be 'r', 'a' or 'x', not {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self._lock: WriterLock | None = None
        if mode == "r":
            check_file(self.path)
            self._db = connect_readonly(self.path)
            try:
                header = read_header(self._db, self.path)
            except BaseException:
                self._db.close()
                raise
        else:
            self._db, header = self._open_writer(mode)
        #: The log schema the stored rows are written in; an older log is marked with
        #: :data:`~engine.log.header.LOG_SCHEMA` in the transaction of its first append
        #: (reading alone leaves it as it was).
        self.schema = header.schema
        self.last_seq = header.last_seq
        self._checked_from = _NEVER if header.checked_from is None else header.checked_from
        self._last_crc: int | None = None  # the checksum of row ``last_seq``, once known

    def _open_writer(self, mode: str) -> tuple[sqlite3.Connection, Header]:
        """The connection and header of the log at :attr:`path`, opened for writing under
        its lock; a file that is not a log is refused before the lock is taken."""
        path = self.path
        if mode == "x" and path.exists() and (not path.is_file() or path.stat().st_size):
            raise LogError(f"{path} exists; a new log needs a path that does not")
        if mode == "a" and path.exists():
            check_file(path)
            with contextlib.closing(connect_readonly(path)) as db:
                read_header(db, path)
        try:
            lock = WriterLock(path).acquire()
        except OSError as err:
            raise LogError(f"cannot open {path} for writing: {err.strerror or err}") from err
        try:
            if not path.exists() or (mode == "x" and path.stat().st_size == 0):
                create(path, replace=mode == "x")
            check_file(path)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                header = read_header(db, path)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                db.close()
                raise
        except sqlite3.DatabaseError as err:
            lock.release()
            raise TornLog(f"{path} is not a writable rollout-ledger log: {err}") from err
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        return db, header

    @property
    def lock(self) -> WriterLock | None:
        """The writer lock this log holds (``None`` when opened for reading)."""
        return self._lock

    def _meta(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def append(self, events: Sequence[Event], *, checked: bool = False) -> int:
        """Write ``events`` in one transaction; returns the last sequence number.

        Each event's values are checked first (:func:`engine.log.values.check_events`,
        :class:`~engine.log.values.InvalidValue`), unless ``checked`` says the caller
        has; nothing is written when one is refused."""
        if self._lock is None:
            raise LogError(f"{self.path} is open for reading only")
        if not events:
            return self.last_seq
        if not checked:
            check_events(events)
        first = self.last_seq + 1
        encode = ENCODE
        rows = _stored([encode[type(event)](seq, event) for seq, event in zip(itertools.count(first), events)])
        last = first + len(rows) - 1
        upgrade = self._checked_from == _NEVER
        db = self._db
        db.execute("BEGIN")
        try:
            if upgrade:
                for statement in UPGRADE:
                    db.execute(statement)
            sealed, last_crc = seal(rows, 0 if upgrade else self._crc_before(first))
            _insert(db, sealed)
            if upgrade:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", header_rows(last, first))
            else:
                db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(last),))
                if self.schema < LOG_SCHEMA:
                    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(LOG_SCHEMA),))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.last_seq, self._last_crc, self.schema = last, last_crc, LOG_SCHEMA
        if upgrade:
            self._checked_from = first
        return last

    def _crc_before(self, seq: int) -> int:
        """The checksum row ``seq``'s chains from: row ``seq - 1``'s (0 before the first checked row)."""
        if seq <= self._checked_from:
            return 0
        if seq == self.last_seq + 1 and self._last_crc is not None:
            return self._last_crc
        row = self._db.execute("SELECT crc FROM events WHERE seq = ?", (seq - 1,)).fetchone()
        return row[0] if row is not None and type(row[0]) is int else 0

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

    @property
    def _columns(self) -> str:
        """The columns a read selects: a log without checksums has ``NULL`` for ``crc``."""
        return "seq, type, rollout, version, tokens, t, data, " + ("crc" if self._checked_from != _NEVER else "NULL")

    def _history(self, start: int, rollout: str) -> Iterator[tuple[int, Event]]:
        """The records that name ``rollout`` (the row's column, or the rollouts a batch
        event lists), each checked with the checksum of the row before it."""
        before = "(SELECT b.crc FROM events b WHERE b.seq = events.seq - 1)" if self._checked_from != _NEVER else "NULL"
        query = (
            f"SELECT {self._columns}, {before} FROM events WHERE seq >= ? "
            f"AND (rollout = ? OR (type IN {_BATCH_TYPES} AND data LIKE ?)) ORDER BY seq"
        )
        for *row, previous in self._db.execute(query, (start, rollout, f"%{json.dumps(rollout)}%")):
            seq = row[0]
            event = self._check_row(tuple(row), 0 if seq == self._checked_from or type(previous) is not int else previous)
            if rollout == getattr(event, "rollout", None) or rollout in getattr(event, "rollouts", ()):
                yield seq, event

    def chunks(self, start: int = 1) -> Iterator[tuple[int, list[Event]]]:
        """The events from ``start`` on as ``(first seq, events)`` chunks of up to
        :data:`READ_CHUNK`, each checked and decoded in one pass: the fastest way to
        read a log.

        Raises :class:`TornLog` naming the first bad event: at a gap in the sequence, at
        a row whose checksum does not match (or, in rows written without one, whose
        values do not fit their fields), at a row the database cannot read (after the
        events before it) or at a tail that does not match the committed last sequence
        number.  Events committed by another writer after the read began are left for
        the next read."""
        expected = start
        checked_from = self._checked_from
        try:
            # Read the committed tail first, then only rows up to it: rows appended by a
            # writer while we read are not ours, and rows missing below it are damage.
            committed = int(self._meta("last_seq", "0"))
            cursor = self._db.execute(f"SELECT {self._columns} FROM events WHERE seq >= ? AND seq <= ? ORDER BY seq", (start, committed))
            previous = self._crc_before(start)
            decode = DECODE
            while True:
                try:
                    rows = cursor.fetchmany(READ_CHUNK)
                except sqlite3.DatabaseError as err:  # an unreadable page: find the first row it hides
                    yield from self._locate(expected, committed, previous, err)
                    return
                if not rows:
                    break
                events = None
                # seq is the primary key, so the rows are distinct and ascending: the
                # chunk is contiguous exactly when its first and last rows are in place.
                if rows[0][0] == expected and rows[-1][0] == expected + len(rows) - 1:
                    intact = chunk_intact(rows, previous) if expected >= checked_from else expected + len(rows) <= checked_from
                    if intact:
                        try:
                            events = [decode[kind](r, v, n, t, d) for _, kind, r, v, n, t, d, _ in rows]
                        except Exception:  # a damaged row: found and named below
                            events = None
                        if events is not None and expected < checked_from and first_misfit(events) >= 0:
                            events = None  # a row without a checksum holding a value of the wrong kind
                if events is None:  # look row by row: a chunk of old and checked rows, or damage
                    events, error = self._salvage(rows, expected, previous)
                    if error is not None:
                        if events:
                            yield expected, events
                        raise error
                yield expected, events
                expected += len(rows)
                previous = 0 if expected == checked_from else rows[-1][7]
        except sqlite3.DatabaseError as err:
            raise TornLog(f"{self.path}: damaged after event {expected - 1}: {err}", expected) from err
        if expected <= committed:
            raise TornLog(f"{self.path}: the log ends at event {expected - 1} but {committed} were committed", expected)

    def _check_row(self, row: tuple[Any, ...], previous: int) -> Event:
        """The event of one row read with its checksum (``previous``: the row before's);
        raises :class:`TornLog` naming what is wrong with it."""
        seq, kind, rollout = row[0], row[1], row[2]
        event = _decode_row(*row[:7])
        if seq >= self._checked_from:
            if not row_intact(row, previous):
                why = problem(event) or "its values are not the ones written (checksum mismatch)"
                raise TornLog(f"{self.path}: {_where(seq, kind, rollout)} is damaged: {why}", seq)
        else:
            problem_ = problem(event)
            if problem_ is not None:
                raise TornLog(f"{self.path}: {_where(seq, kind, rollout)} is damaged: {problem_}", seq)
        return event

    def _salvage(self, rows: list[Any], expected: int, previous: int) -> tuple[list[Event], TornLog | None]:
        """The events of ``rows`` before the first missing or damaged one, and the error
        naming it (``None``: all are intact)."""
        good: list[Event] = []
        for row in rows:
            seq = row[0]
            if seq != expected:
                return good, TornLog(f"{self.path}: event {expected} is missing (next stored is {seq})", expected)
            try:
                good.append(self._check_row(row, 0 if seq == self._checked_from else previous))
            except TornLog as error:
                return good, error
            previous = row[7]
            expected += 1
        return good, None

    def _locate(self, expected: int, committed: int, previous: int, err: sqlite3.DatabaseError) -> Iterator[tuple[int, list[Event]]]:
        """After a read failed in the chunk from ``expected`` on: the rows before the first
        one the database cannot give, one by one, then the error naming it.  (If every
        row reads alone, they are all yielded and the read ends normally.)"""
        query = f"SELECT {self._columns} FROM events WHERE seq = ?"
        for seq in range(expected, committed + 1):
            try:
                row = self._db.execute(query, (seq,)).fetchone()
            except sqlite3.DatabaseError as failure:
                raise TornLog(f"{self.path}: event {seq} is damaged: the database cannot read it ({failure})", seq) from err
            if row is None:
                raise TornLog(f"{self.path}: event {seq} is missing", seq) from err
            try:
                event = self._check_row(row, 0 if seq == self._checked_from else previous)
            except TornLog as error:
                raise error from err
            yield seq, [event]
            previous = row[7]

    def close(self) -> None:
        """Close the database and release the writer lock."""
        try:
            self._db.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LogError(f"no log at {path}")
    return path
