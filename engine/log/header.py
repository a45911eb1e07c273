"""What makes a file a rollout-ledger log, and opening one without changing anything.

A log is a SQLite database whose ``meta`` table carries its header: ``format`` (always
:data:`FORMAT`), ``schema`` (:data:`LOG_SCHEMA` for a log written now), ``writer``
(the rollout-ledger that created or upgraded it), ``last_seq`` (the committed tail)
and ``checked_from`` (the first row written with a checksum, see
:mod:`engine.log.checksum`).  Logs of schemas 1 to 3 have only ``schema`` and
``last_seq`` and no checksums; they read as they always did, and their first append
upgrades them (:data:`UPGRADE`).

:func:`read_header` refuses, with the path and what is wrong, an empty file, a file
that is not SQLite, a SQLite database that is not a log (no header, or another
format), a log of a newer schema and a damaged header; it only reads.
:func:`connect_readonly` opens a log for reading without writing a byte to it or
beside it (see its notes on WAL).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import NamedTuple

from engine.log.errors import LogError, NotALog, SchemaTooNew, TornLog

#: The ``format`` of every rollout-ledger log's header.
FORMAT = "rollout-ledger-events"
#: The SQLite log's schema: 4 is the rows of event schema 3
#: (:data:`engine.core.events.SCHEMA_VERSION`) with a checksum column; 1 to 3 are the
#: same rows without it (and the older event forms).  A new event schema is a new log
#: schema too.
LOG_SCHEMA = 4
_MAGIC = b"SQLite format 3\x00"
_OLD_COLUMNS = ("seq", "type", "rollout", "version", "tokens", "t", "data")

#: The tables of a new log (its header is written in the same transaction).
CREATE = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE events (
    seq     INTEGER PRIMARY KEY,
    type    TEXT NOT NULL,
    rollout TEXT,
    version INTEGER,
    tokens  INTEGER,
    t       REAL,
    data    TEXT,
    crc     INTEGER
)""",
    # an id is enqueued once per log: the durable guard against reusing a finished rollout's id
    "CREATE UNIQUE INDEX enqueued_once ON events (rollout) WHERE type = 'enqueued'",
)
#: What an older log's first append adds (in the append's transaction), with ``checked_from``.
UPGRADE = ("ALTER TABLE events ADD COLUMN crc INTEGER",)


def writer_version() -> str:
    """``rollout-ledger <version>`` of the running program (``unknown`` when not installed)."""
    import importlib.metadata  # only a writer needs it: reading commands start faster without

    try:
        return f"rollout-ledger {importlib.metadata.version('rollout-ledger')}"
    except importlib.metadata.PackageNotFoundError:
        return "rollout-ledger (version unknown)"


def header_rows(last_seq: int, checked_from: int) -> list[tuple[str, str]]:
    """The ``meta`` rows of a log written now."""
    return [
        ("format", FORMAT),
        ("schema", str(LOG_SCHEMA)),
        ("writer", writer_version()),
        ("last_seq", str(last_seq)),
        ("checked_from", str(checked_from)),
    ]


class Header(NamedTuple):
    """A log's header as read: its schema, committed tail and the first checksummed row
    (``None``: its rows have no checksum column)."""

    schema: int
    last_seq: int
    checked_from: int | None


def check_file(path: Path) -> None:
    """Refuse a path that is not a non-empty SQLite file, before SQLite opens it."""
    try:
        if not path.is_file():
            raise LogError(f"no log at {path}" if not path.exists() else f"{path} is not a file")
        size = path.stat().st_size
        with open(path, "rb") as file:
            magic = file.read(len(_MAGIC))
    except OSError as err:
        raise LogError(f"cannot read {path}: {err.strerror or err}") from err
    if size == 0:
        raise NotALog(f"{path} is an empty file (0 bytes), not a rollout-ledger log")
    if magic != _MAGIC:
        raise NotALog(f"{path} is not a rollout-ledger log: not a SQLite database")


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that only reads the log at ``path`` and creates nothing beside it.

    A read-only connection to a WAL database creates its ``-wal`` and ``-shm`` files
    when they are missing (and leaves them behind), so a log whose writer has closed it
    (no ``-wal`` file) is opened ``immutable``: read as the file is, with no locks.  A
    log with a ``-wal`` file (a writer has it open, or died) is opened read-only
    through the WAL, which holds its latest transactions."""
    wal = Path(f"{path}-wal").exists()
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro" + ("" if wal else "&immutable=1")
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


def read_header(db: sqlite3.Connection, path: Path) -> Header:
    """The header of the log open as ``db``, or the error saying why ``path`` is not a
    log this program reads.  Reads only."""
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "events"} <= tables:
            raise NotALog(f"{path} is a SQLite database but not a rollout-ledger log (it has no meta and events tables)")
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            columns = tuple(row[1] for row in db.execute("PRAGMA table_info(events)"))
        except sqlite3.OperationalError as err:
            raise NotALog(f"{path} is a SQLite database but not a rollout-ledger log ({err})") from err
    except sqlite3.DatabaseError as err:
        if isinstance(err, sqlite3.OperationalError) and "unable to open" in str(err):
            raise LogError(f"cannot read {path}: {err}") from err
        raise TornLog(f"{path} is damaged: its header cannot be read ({err})") from err
    kind = meta.get("format")
    if kind is None and not {"schema", "last_seq"} <= set(meta):
        raise NotALog(f"{path} is a SQLite database but not a rollout-ledger log (its meta table has no format)")
    if kind is not None and kind != FORMAT:
        raise NotALog(f"{path} is not a rollout-ledger log: its format is {kind!r}, not {FORMAT!r}")
    try:
        schema, last_seq = int(meta["schema"]), int(meta["last_seq"])
        checked_from = int(meta["checked_from"]) if "crc" in columns else None
    except (KeyError, ValueError) as err:
        raise TornLog(f"{path} is damaged: its header {dict(sorted(meta.items()))} is incomplete or not numbers") from err
    if schema > LOG_SCHEMA:
        raise SchemaTooNew(
            f"{path} was written with log schema {schema}; this rollout-ledger reads schema {LOG_SCHEMA} "
            "and older. Upgrade rollout-ledger to read it."
        )
    if columns[:7] != _OLD_COLUMNS or columns[7:] not in ((), ("crc",)):
        raise NotALog(f"{path} is not a rollout-ledger log: its events table has columns {', '.join(columns)}")
    return Header(schema, last_seq, checked_from)


def _create(db: sqlite3.Connection) -> None:
    """Make the connected empty database a new log: its tables and header, in one transaction."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN")
    try:
        for statement in CREATE:
            db.execute(statement)
        db.executemany("INSERT INTO meta VALUES (?, ?)", header_rows(0, 1))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def create(path: Path, replace: bool = False) -> None:
    """Create a new, empty log at ``path``, whole or not at all: it is made in a
    temporary file beside ``path`` and linked there only once complete, so a reader
    never sees a log without its tables.  An existing file at ``path`` is kept (the
    caller then opens it as what it is), unless ``replace``."""
    directory = path.parent if str(path.parent) else Path(".")
    while True:  # a new name beside ``path``, made with the usual mode (the umask applies)
        name = str(directory / f".{path.name}.{os.urandom(6).hex()}.new")
        try:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        with contextlib.closing(sqlite3.connect(name, isolation_level=None)) as db:
            _create(db)
        with open(name, "rb+") as handle:
            os.fsync(handle.fileno())
        if replace:
            os.replace(name, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(name, path)
    finally:
        for leftover in (name, f"{name}-wal", f"{name}-shm"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
    with contextlib.suppress(OSError):  # make the new name durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
