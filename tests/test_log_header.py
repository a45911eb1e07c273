"""A log knows what it is: its header, the files it refuses (and leaves as they were),
and reading that writes nothing, to the log or beside it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import sqlite3
from pathlib import Path

import pytest

from engine.cli import main
from engine.core.config import Config
from engine.core.events import Enqueued, Submitted
from engine.ledger import Ledger
from engine.log import EventLog, LogError, NotALog, SchemaTooNew, replay
from engine.log.header import FORMAT, LOG_SCHEMA

FIXTURES = Path(__file__).parent / "fixtures"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def meta(path: Path) -> dict[str, str]:
    db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return dict(db.execute("SELECT key, value FROM meta"))
    finally:
        db.close()


def small_log(path: Path) -> Path:
    with Ledger(Config(4, 2), path=path) as ledger:
        ledger.append(Enqueued("a"), Submitted("a", 0))
    return path


def test_a_new_log_carries_its_header(tmp_path):
    path = small_log(tmp_path / "run.sqlite")
    header = meta(path)
    assert header["format"] == FORMAT == "rollout-ledger-events"
    assert header["schema"] == str(LOG_SCHEMA) == "4"
    assert header["writer"] == f"rollout-ledger {importlib.metadata.version('rollout-ledger')}"
    assert header["last_seq"] == "3" and header["checked_from"] == "1"
    assert listing(tmp_path) == ["run.sqlite"]  # no temporary file, no lock once closed


def _refusals(tmp_path: Path) -> dict[str, tuple[Path, type, str]]:
    """Files that are not logs this program reads: (path, the error, what it must say)."""
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    text = tmp_path / "notes.sqlite"
    text.write_text("shopping list: eggs, milk\n" * 20)
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users VALUES (1, 'ada')")
    db.commit()
    db.close()
    foreign_wal = tmp_path / "foreign-wal.sqlite"
    db = sqlite3.connect(foreign_wal)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE events (x)")
    db.commit()
    db.close()
    other = tmp_path / "other-format.sqlite"
    shutil.copyfile(small_log(tmp_path / "base.sqlite"), other)
    db = sqlite3.connect(other)
    db.execute("UPDATE meta SET value = 'someone-elses-events' WHERE key = 'format'")
    db.commit()
    db.close()
    newer = tmp_path / "newer.sqlite"
    shutil.copyfile(tmp_path / "base.sqlite", newer)
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(LOG_SCHEMA + 1),))
    db.commit()
    db.close()
    (tmp_path / "base.sqlite").unlink()
    return {
        "empty": (empty, NotALog, r"is an empty file \(0 bytes\)"),
        "text": (text, NotALog, "not a SQLite database"),
        "foreign": (foreign, NotALog, "SQLite database but not a rollout-ledger log"),
        "foreign-wal": (foreign_wal, NotALog, "its meta table has no format"),
        "other-format": (other, NotALog, "its format is 'someone-elses-events'"),
        "newer": (newer, SchemaTooNew, f"log schema {LOG_SCHEMA + 1}.*Upgrade rollout-ledger"),
    }


OPENERS = {
    "replay": lambda path: replay(path),
    "read": lambda path: EventLog(path, mode="r"),
    "write": lambda path: EventLog(path),
    "ledger": lambda path: Ledger(path=path),
    "resume": lambda path: Ledger.resume(path),
}


@pytest.mark.parametrize("opener", OPENERS)
def test_files_that_are_not_logs_are_refused_and_left_byte_for_byte(tmp_path, opener):
    cases = _refusals(tmp_path)
    before = {name: (digest(path), listing(tmp_path)) for name, (path, _, _) in cases.items()}
    for name, (path, error, message) in cases.items():
        with pytest.raises(error, match=message) as info:
            OPENERS[opener](path)
        assert str(path) in str(info.value), f"{name}: the message does not name the file"
        assert (digest(path), listing(tmp_path)) == before[name], f"{name}: {opener} changed the file or left files beside it"


@pytest.mark.parametrize("command", [["replay"], ["inspect", "{}", "a"], ["export", "{}", "--jsonl", "{out}"], ["verify"]])
def test_commands_refuse_files_that_are_not_logs_in_one_line(tmp_path, capsys, command):
    out = tmp_path / "exported" / "out.jsonl"
    out.parent.mkdir()
    for path, _, message in _refusals(tmp_path).values():
        before = digest(path)
        argv = [part.format(path, out=out) for part in command] if len(command) > 1 else [*command, str(path)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("rollout-ledger: ") and str(path) in err
        assert digest(path) == before


def test_only_a_writer_creates_a_log(tmp_path):
    with pytest.raises(LogError, match="no log at"):
        EventLog(tmp_path / "none.sqlite", mode="r")
    assert main(["replay", str(tmp_path / "none.sqlite")]) == 2
    assert listing(tmp_path) == []
    with EventLog(tmp_path / "new.sqlite") as log:
        assert log.last_seq == 0 and log.schema == LOG_SCHEMA
    with pytest.raises(LogError, match="open for reading only"), EventLog(tmp_path / "new.sqlite", mode="r") as log:
        log.append([Enqueued("a")])


def test_a_new_log_may_replace_an_empty_file_only_when_asked(tmp_path):
    partial = tmp_path / "partial.sqlite"
    partial.write_bytes(b"")
    with pytest.raises(NotALog, match="empty file"):
        EventLog(partial)  # appending to an empty file: refused
    with EventLog(partial, mode="x") as log:  # a new log in a file made for it (atomic_path's)
        log.append([Enqueued("a")])
    assert [e for e in EventLog(partial, mode="r").events()] == [Enqueued("a")]
    with pytest.raises(LogError, match="exists; a new log needs a path that does not"):
        EventLog(partial, mode="x")


def test_reading_a_closed_log_writes_nothing_and_creates_no_file(tmp_path, capsys):
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    out.mkdir()
    path = small_log(logs / "run.sqlite")
    before = (digest(path), listing(logs))
    assert replay(path).events == 3
    with EventLog(path, mode="r") as log:
        assert len(list(log.records())) == 3 and [seq for seq, _ in log.records(rollout="a")] == [2, 3]
    for argv in (["replay", str(path)], ["inspect", str(path), "a"], ["verify", str(path)], ["export", str(path), "--jsonl", str(out / "x.jsonl")]):
        assert main(argv) == 0
    capsys.readouterr()
    assert (digest(path), listing(logs)) == before


def test_the_committed_old_format_fixture_replays_read_only(capsys):
    """tests/fixtures/schema2.sqlite (meta has schema and last_seq, no format) replays in
    place: reading it changes no byte and leaves no file beside it."""
    path = FIXTURES / "schema2.sqlite"
    before = (digest(path), listing(FIXTURES))
    assert replay(path).events > 0
    assert main(["replay", str(path)]) == 0 and main(["verify", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK: ")
    assert (digest(path), listing(FIXTURES)) == before


def test_a_reader_sees_what_a_live_writer_committed(tmp_path):
    path = tmp_path / "live.sqlite"
    with Ledger(Config(4, 2), path=path, flush_every=1) as ledger:
        ledger.append(Enqueued("a"))
        assert replay(path).events == 2  # the writer's WAL holds them: read through it
        assert main(["replay", str(path)]) == 0
    assert replay(path).events == 2


def test_an_old_log_gets_the_header_at_its_first_append(tmp_path):
    path = tmp_path / "schema2.sqlite"
    shutil.copyfile(FIXTURES / "schema2.sqlite", path)
    assert "format" not in meta(path)
    with Ledger(path=path) as ledger:
        count = ledger.state.events
        ledger.append(Enqueued("after-upgrade"))
    header = meta(path)
    assert header["format"] == FORMAT and header["schema"] == str(LOG_SCHEMA)
    assert int(header["checked_from"]) == int(header["last_seq"])  # the new event is the first with a checksum
    assert replay(path).events == count + 1
