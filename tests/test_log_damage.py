"""Damage is found and located: every row carries a checksum chained over the rows, so
a changed value, a wrong type or a NULL, and every flipped byte of a row in the file,
is reported at that exact event; ``rollout-ledger verify`` names it and salvages the
events before it into a log that replays."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from benchmarks.mixed_log import mixed_log
from engine.cli import main
from engine.core.config import Config
from engine.core.events import Accepted, Enqueued, Rejected, RunStarted, Segment, Submitted
from engine.core.reducer import fold
from engine.ledger import Ledger
from engine.log import EventLog, TornLog, read_jsonl, replay, write_jsonl
from engine.log.store import READ_CHUNK

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def events():
    return mixed_log(1200, seed=3)


@pytest.fixture
def log(tmp_path, events):
    path = tmp_path / "run.sqlite"
    with EventLog(path) as store:
        for start in range(0, len(events), 300):
            store.append(events[start : start + 300])
    return path


def tamper(path, sql, *params):
    db = sqlite3.connect(path)
    db.execute(sql, params)
    db.commit()
    db.close()


def row(path, seq):
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT seq, type, rollout, version, tokens, t, data, crc FROM events WHERE seq = ?", (seq,)).fetchone()
    finally:
        db.close()


def first_bad(path) -> tuple[int | None, str]:
    with pytest.raises(TornLog) as info:
        replay(path)
    return info.value.position, str(info.value)


#: Rows to damage: the first, one mid-chunk, the last and first of a chunk, the last row.
SEQS = (1, 100, READ_CHUNK, READ_CHUNK + 1, 777)


def _changes(values):
    """Each column's value changed, keeping SQLite's type where it can, as SQL assignments."""
    seq, kind, rollout, version, tokens, t, data, crc = values
    other_kind = "accepted" if kind != "accepted" else "interrupted"
    return [
        ("type", other_kind),
        ("rollout", "r-forged" if rollout is not None else "r-new"),
        ("version", (version or 0) + 1),
        ("tokens", (tokens or 0) + 1),
        ("t", (t or 0.0) + 0.5),
        ("data", (data or "") + " "),
        ("crc", crc ^ 1),
    ]


@pytest.mark.parametrize("seq", SEQS)
def test_every_changed_column_is_found_at_its_event(log, events, seq):
    values = row(log, seq)
    for column, value in _changes(values):
        damaged = log.with_name(f"damaged-{column}.sqlite")
        shutil.copyfile(log, damaged)
        tamper(damaged, f"UPDATE events SET {column} = ? WHERE seq = ?", value, seq)
        position, message = first_bad(damaged)
        assert position == seq and f"event {seq} " in message, f"{column}: {message}"
        with EventLog(damaged, mode="r") as store:  # the events before it still read
            assert [e for _, e in zip(range(seq - 1), store.events())] == events[: seq - 1]


@pytest.mark.parametrize(
    "column, value, why",
    [
        ("version", 8.5, "field 'version' must be an integer .* got 8.5"),
        ("version", "eight", "field 'version' must be an integer .* got 'eight'"),
        ("rollout", None, "field 'rollout' must be a string .* got None"),
        ("tokens", None, "field 'tokens' must be an integer .* got None"),
        ("t", "noon", "field 't' must be a finite number"),
    ],
)
def test_wrong_types_and_nulls_are_damage_at_their_event_with_or_without_a_checksum(tmp_path, column, value, why):
    for checked in (True, False):
        path = tmp_path / f"{column}-{checked}.sqlite"
        with EventLog(path) as store:
            store.append([RunStarted(Config(4, 2)), *[Enqueued(f"r{i}") for i in range(300)], Submitted("r7", 0), Segment("r7", 0, 12, t=1.0)])
        if not checked:  # a log of the code before checksums: no crc column
            tamper(path, "ALTER TABLE events DROP COLUMN crc")
            tamper(path, "DELETE FROM meta WHERE key NOT IN ('schema', 'last_seq')")
        tamper(path, f"UPDATE events SET {column} = ? WHERE seq = 303", value)  # the segment
        position, message = first_bad(path)
        assert position == 303, message
        assert re.search(why, message), message


def _record_span(data: bytes, marker: bytes) -> tuple[int, int]:
    """Where a row's cell lies in the file: its payload size, rowid and record header
    before ``marker`` (its type then its rollout), and its body from there."""
    at = data.index(marker)
    assert data.count(marker) == 1
    return at - 12, at + 28


def test_every_flipped_byte_of_a_row_in_the_file_is_found_at_that_row(tmp_path):
    path = tmp_path / "run.sqlite"
    with Ledger(Config(4, 2), path=path, flush_every=10_000) as ledger:
        for i in range(150):
            ledger.append(Enqueued(f"r{i}"), Submitted(f"r{i}", 0), Segment(f"r{i}", 0, 7, t=float(i)))
            ledger.append(Rejected(f"r{i}", "error" if i == 70 else "timeout", t=3.25 if i == 70 else None))
    seq = 1 + 4 * 70 + 4  # run_started, then four events per rollout
    assert row(path, seq)[1:3] == ("rejected", "r70")
    data = path.read_bytes()
    # payload size (1 byte), rowid (2), record header (9); body: type, rollout, t (8), data, crc (4)
    start, end = _record_span(data, b"rejectedr70")
    damaged = tmp_path / "flipped.sqlite"
    for offset in range(start, end):
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        damaged.write_bytes(bytes(flipped))
        position, message = first_bad(damaged)
        assert position == seq, f"byte {offset - start} of the cell: {message}"
        assert main(["verify", str(damaged)]) == 2


def test_verify_prints_ok_or_the_first_bad_event(log, events, capsys):
    assert main(["verify", str(log)]) == 0
    assert capsys.readouterr().out.strip() == f"OK: {len(events)} events"
    tamper(log, "UPDATE events SET version = 8.5 WHERE seq = 500 AND version IS NOT NULL")
    tamper(log, "UPDATE events SET tokens = tokens + 1 WHERE seq = 400")
    assert main(["verify", str(log)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(f"rollout-ledger: {log}: event 400 ")
    assert "(the 399 events before it are intact)" in out.err and len(out.err.strip().splitlines()) == 1


def test_salvage_writes_the_valid_prefix_atomically_and_it_replays(log, events, tmp_path, capsys):
    tamper(log, "UPDATE events SET rollout = 'forged' WHERE seq = 600")
    out = tmp_path / "salvaged.sqlite"
    out.write_text("an older file here is replaced whole")
    assert main(["verify", str(log), "--salvage", str(out)]) == 2
    assert f"wrote the 599 events before the first bad one to {out}" in capsys.readouterr().out
    assert replay(out) == fold(events[:599])
    assert main(["verify", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.sqlite", "salvaged.sqlite"]  # no partial file, no lock
    as_jsonl = tmp_path / "salvaged.jsonl"
    assert main(["verify", str(log), "--salvage", str(as_jsonl)]) == 2
    assert list(read_jsonl(as_jsonl)) == events[:599]


def test_salvage_refuses_the_input_as_output_and_writes_nothing_for_a_file_that_is_no_log(log, tmp_path, capsys):
    before = log.read_bytes()
    assert main(["verify", str(log), "--salvage", str(log)]) == 2
    assert "is also an input" in capsys.readouterr().err and log.read_bytes() == before
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    assert main(["verify", str(empty)]) == 2
    assert "empty file (0 bytes)" in capsys.readouterr().err
    assert main(["verify", str(empty), "--salvage", str(tmp_path / "out.sqlite")]) == 2
    assert not (tmp_path / "out.sqlite").exists() and empty.read_bytes() == b""


def test_verify_reports_an_illegal_event_and_a_lost_tail(tmp_path, capsys):
    path = tmp_path / "illegal.sqlite"
    with EventLog(path) as store:  # the store writes what it is given; only a fold judges it
        store.append([RunStarted(Config(4, 2)), Enqueued("a"), Accepted("a"), Enqueued("b")])
    assert main(["verify", str(path), "--salvage", str(tmp_path / "ok.sqlite")]) == 2
    assert "event 3 is illegal here" in capsys.readouterr().err
    with EventLog(tmp_path / "ok.sqlite", mode="r") as salvaged:
        assert list(salvaged.events()) == [RunStarted(Config(4, 2)), Enqueued("a")]
    torn = tmp_path / "torn.sqlite"
    with EventLog(torn) as store:
        store.append([RunStarted(Config(4, 2)), *[Enqueued(f"r{i}") for i in range(9)]])
    tamper(torn, "DELETE FROM events WHERE seq > 7")
    assert main(["verify", str(torn)]) == 2
    assert "the log ends at event 7 but 10 were committed" in capsys.readouterr().err


def test_verify_reads_json_lines_too(tmp_path, events, capsys):
    path = tmp_path / "run.jsonl"
    write_jsonl(events[:50], path)
    assert main(["verify", str(path)]) == 0 and capsys.readouterr().out.strip() == "OK: 50 events"
    lines = path.read_text().splitlines()
    lines[20] = '{"type": "segment", "rollout": 3}'
    path.write_text("\n".join(lines) + "\n")
    assert main(["verify", str(path), "--salvage", str(tmp_path / "prefix.sqlite")]) == 2
    assert "line 21" in capsys.readouterr().err
    assert replay(tmp_path / "prefix.sqlite") == fold(events[:19])


def test_old_logs_verify_and_read_as_before(capsys):
    path = FIXTURES / "schema2.sqlite"
    assert main(["verify", str(path)]) == 0
    with EventLog(path, mode="r") as store:
        count = len(list(store.events()))
    assert capsys.readouterr().out.strip() == f"OK: {count} events"
