import json
import shutil
import sqlite3
from pathlib import Path
from typing import Annotated, NamedTuple

import pytest

from benchmarks.mixed_log import mixed_log
from engine.core.events import (
    EVENT_TYPES,
    LEGACY,
    SCHEMA_VERSION,
    Accepted,
    Enqueued,
    Paused,
    Resumed,
    Segment,
    Unpaused,
    from_json,
    to_json,
)
from engine.core.reducer import fold
from engine.core.schema import Column
from engine.log.codec import BATCH_TYPES, DECODE, ENCODE, RowCodec
from engine.log.doc import documented_table, event_table
from engine.log.header import LOG_SCHEMA
from engine.log import (
    BadLine,
    EventLog,
    InvalidValue,
    LogError,
    SchemaTooNew,
    TornLog,
    read_jsonl,
    replay,
    write_jsonl,
)


@pytest.fixture(scope="module")
def events():
    return mixed_log(3000, seed=1)


def tamper(path, sql, *params):
    db = sqlite3.connect(path)
    db.execute(sql, params)
    db.commit()
    db.close()


def as_old(path, schema):
    """Make the log at ``path`` one the code before log schema 4 wrote: no checksum
    column and no header but ``schema`` and ``last_seq``."""
    db = sqlite3.connect(path)
    with db:
        db.execute("DROP INDEX enqueued_once")
        db.execute("ALTER TABLE events DROP COLUMN crc")
        db.execute("CREATE UNIQUE INDEX enqueued_once ON events (rollout) WHERE type = 'enqueued'")
        db.execute("DELETE FROM meta WHERE key NOT IN ('schema', 'last_seq')")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(schema),))
    db.close()


def write(path, events, batch=500):
    with EventLog(path) as log:
        for i in range(0, len(events), batch):
            log.append(events[i : i + batch])


def test_replay_equals_live_state(tmp_log, events):
    write(tmp_log, events)
    assert replay(tmp_log) == fold(events)


def test_sequence_numbers_increase_by_one_across_batches(tmp_log, events):
    write(tmp_log, events[:1000])
    with EventLog(tmp_log) as log:
        assert log.last_seq == 1000
        assert log.append(events[1000:1010]) == 1010
        seqs = [seq for seq, _ in log.records()]
    assert seqs == list(range(1, 1011))


def test_records_of_one_rollout(tmp_log, events):
    write(tmp_log, events)
    with EventLog(tmp_log) as log:
        history = [event for _, event in log.records(rollout="r1")]
    assert history[0] == Enqueued("r1") and all("r1" in (getattr(e, "rollout", None), *getattr(e, "rollouts", ())) for e in history)


def test_lost_tail_is_reported_not_folded(tmp_log, events):
    write(tmp_log, events[:200])
    tamper(tmp_log, "DELETE FROM events WHERE seq > 190")
    with pytest.raises(TornLog, match="ends at event 190 but 200 were committed"):
        replay(tmp_log)


def test_gap_is_reported(tmp_log, events):
    write(tmp_log, events[:200])
    tamper(tmp_log, "DELETE FROM events WHERE seq = 50")
    with pytest.raises(TornLog, match="event 50 is missing") as info:
        replay(tmp_log)
    assert info.value.position == 50


def test_damaged_row_is_reported(tmp_log, events):
    write(tmp_log, events[:20])
    tamper(tmp_log, "UPDATE events SET type = 'garbled' WHERE seq = 7")
    with pytest.raises(TornLog, match="event 7"):
        replay(tmp_log)


def test_truncated_file_is_reported(tmp_path, events):
    path = tmp_path / "big.sqlite"
    write(path, events)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(LogError):
        replay(path)


def test_the_mixed_log_has_both_forms_of_interruption(events):
    kinds = {event.type for event in events}
    assert {"interrupted", "resumed", "interrupted_batch", "resumed_batch"} <= kinds


def test_records_of_one_rollout_include_the_batch_events_that_name_it(tmp_log, events):
    batch = next(e for e in events if e.type == "interrupted_batch")
    rollout = batch.rollouts[-1]
    write(tmp_log, events)
    with EventLog(tmp_log) as log:
        history = [event for _, event in log.records(rollout=rollout)]
    assert batch in history and any(e.type == "resumed_batch" for e in history)
    assert history == [e for e in events if rollout in (getattr(e, "rollout", None), *getattr(e, "rollouts", ()))]


def test_a_schema_1_log_is_read_and_marked_current_at_its_first_append(tmp_log, events):
    old = [e for e in events[:400] if e.type not in ("interrupted_batch", "resumed_batch")]
    legal = fold(old)  # the schema 1 events alone
    write(tmp_log, old)
    as_old(tmp_log, 1)
    with EventLog(tmp_log, mode="r") as log:
        assert log.schema == 1 and list(log.events()) == old
    assert replay(tmp_log) == legal
    assert sqlite3.connect(tmp_log).execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("1",)  # reading changes nothing
    with EventLog(tmp_log) as log:
        log.append([Accepted("r-new")])
    assert sqlite3.connect(tmp_log).execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(LOG_SCHEMA),)
    with EventLog(tmp_log, mode="r") as log:  # the old rows read as before, the new one with its checksum
        assert log.schema == LOG_SCHEMA and list(log.events()) == [*old, Accepted("r-new")]


def test_newer_schema_is_refused(tmp_log):
    EventLog(tmp_log).close()
    tamper(tmp_log, "UPDATE meta SET value = ? WHERE key = 'schema'", str(LOG_SCHEMA + 1))
    with pytest.raises(SchemaTooNew, match=f"schema {LOG_SCHEMA + 1}.*Upgrade"):
        EventLog(tmp_log)
    with pytest.raises(SchemaTooNew, match=f"{tmp_log} .*schema {LOG_SCHEMA + 1}"):
        EventLog(tmp_log, mode="r")


def test_jsonl_round_trip(tmp_path, events):
    path = tmp_path / "log.jsonl"
    assert write_jsonl(events, path) == len(events)
    assert list(read_jsonl(path)) == events


def test_jsonl_bad_line_names_line_and_rollout(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"schema": 1}\n{"type": "enqueued", "rollout": "r1"}\n{"type": "accepted", "rollout": "r7", "x": 1}\n')
    with pytest.raises(BadLine) as info:
        list(read_jsonl(path))
    assert info.value.line == 3 and info.value.rollout == "r7" and "line 3" in str(info.value)


def test_jsonl_torn_tail_is_reported(tmp_path):
    path = tmp_path / "torn.jsonl"
    path.write_text(json.dumps({"type": "enqueued", "rollout": "r1"}) + '\n{"type": "accep')
    with pytest.raises(TornLog, match="line 2 is a torn tail"):
        list(read_jsonl(path))


def test_jsonl_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps({"schema": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(SchemaTooNew):
        list(read_jsonl(path))


def test_missing_log(tmp_path):
    with pytest.raises(LogError, match="no log at"):
        replay(tmp_path / "nothing.sqlite")


def test_failed_append_writes_nothing(tmp_log):
    with EventLog(tmp_log) as log:
        log.append([Enqueued("a")])
        with pytest.raises(InvalidValue, match="not an event"):
            log.append([Accepted("a"), ("not", "an", "event")])  # type: ignore[list-item]
        with pytest.raises(InvalidValue, match="'version'"):
            log.append([Accepted("a"), Segment("a", 1 << 63, 3)])
        assert log.last_seq == 1
        assert [seq for seq, _ in log.records()] == [1]


def test_reading_while_another_writer_appends_sees_a_consistent_prefix(tmp_log, events):
    write(tmp_log, events[:100])
    with EventLog(tmp_log) as writer, EventLog(tmp_log, mode="r") as reader:
        records = reader.records()
        first = [next(records) for _ in range(10)]
        writer.append(events[100:200])
        rest = list(records)
    assert [seq for seq, _ in first + rest] == list(range(1, 101))


def test_batches_of_every_size_round_trip(tmp_log, events):
    """Batches are written in statements of 64 rows and then fewer; every size lands in order."""
    sizes = [1, 2, 3, 63, 64, 65, 127, 128, 129, 200]
    with EventLog(tmp_log) as log:
        start = 0
        for size in sizes:
            assert log.append(events[start : start + size]) == start + size
            start += size
        assert list(log.records()) == list(enumerate(events[:start], start=1))


def test_enqueued_ids_lists_every_enqueued_id(tmp_log, events):
    write(tmp_log, events)
    with EventLog(tmp_log) as log:
        assert sorted(log.enqueued_ids()) == sorted(e.rollout for e in events if isinstance(e, Enqueued))


def test_empty_columns_are_stored_as_null(tmp_log):
    """Empty columns are bound as NaN, which SQLite stores as NULL: check it on this SQLite."""
    with EventLog(tmp_log) as log:
        log.append([Enqueued("a"), Segment("a", 0, 3), Unpaused(), Segment("a", 0, 4, t=None), Segment("a", 0, 5, t=1.5)])
        assert [event.t for event in log.events()] == [None, None, None, None, 1.5]
        with pytest.raises(InvalidValue, match="'t'.*nan"):  # it would read back as None
            log.append([Segment("a", 0, 4, t=float("nan"))])
    db = sqlite3.connect(tmp_log)
    rows = db.execute("SELECT typeof(rollout), typeof(version), typeof(tokens), typeof(t), typeof(data) FROM events ORDER BY seq").fetchall()
    db.close()
    assert rows == [
        ("text", "null", "integer", "null", "null"),
        ("text", "integer", "integer", "null", "null"),
        ("null", "null", "null", "null", "null"),
        ("text", "integer", "integer", "null", "null"),
        ("text", "integer", "integer", "real", "null"),
    ]


# -- the schema 2 log written by the code before schema 3 (tests/fixtures/make_schema2_log.py)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def schema2(tmp_path):
    """A copy of the schema 2 SQLite log (reading a log in WAL mode leaves files beside it)."""
    path = tmp_path / "schema2.sqlite"
    shutil.copyfile(FIXTURES / "schema2.sqlite", path)
    return path


def stored_rows(path):
    db = sqlite3.connect(path)
    rows = db.execute("SELECT * FROM events ORDER BY seq").fetchall()
    db.close()
    return rows


def is_old_unpause(row):
    return row[1] == "resumed" and row[2] is None


def test_the_schema_2_log_reads_its_old_unpause_as_unpaused(schema2):
    with EventLog(schema2) as log:
        assert log.schema == 2
        events = list(log.events())
    rows = stored_rows(schema2)
    old_unpauses = [i for i, row in enumerate(rows) if is_old_unpause(row)]
    assert len(old_unpauses) == 7 and {type(events[i]) for i in old_unpauses} == {Unpaused}
    assert [events[i].t for i in old_unpauses] == [row[5] for row in rows if is_old_unpause(row)]
    assert all(e.rollout is not None for e in events if type(e) is Resumed)
    assert {e.type for e in events} == {cls.type for cls in EVENT_TYPES}  # the fixture holds every type


def test_the_row_layout_is_unchanged_for_every_type_of_schema_2(schema2):
    """Encoding the decoded events gives back the stored rows, byte for byte, except that
    the old un-pause is now written as ``unpaused``."""
    rows = stored_rows(schema2)
    with EventLog(schema2) as log:
        events = list(log.events())
    encoded = [ENCODE[type(e)](seq, e) for seq, e in enumerate(events, start=1)]
    expected = [(row[0], "unpaused", *row[2:]) if is_old_unpause(row) else row for row in rows]
    assert encoded == expected


def test_the_json_form_is_unchanged_for_every_type_of_schema_2():
    """The schema 2 export, read and written again, gives back every line but the old un-pause."""
    lines = (FIXTURES / "schema2.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"schema": 2}
    for line in lines[1:]:
        obj = json.loads(line)
        written = json.dumps(to_json(from_json(obj)))
        if obj["type"] == "resumed" and "rollout" not in obj:
            assert json.loads(written) == {**obj, "type": "unpaused"}
        else:
            assert written == line


def test_appending_to_a_schema_2_log_marks_it_current_and_both_spellings_read(schema2):
    with EventLog(schema2) as log:
        before = list(log.events())
    assert not replay(schema2).paused
    more = [Paused(t=1.0), Unpaused(t=2.0), Enqueued("after-upgrade")]
    with EventLog(schema2) as log:
        log.append(more)
        assert log.schema == LOG_SCHEMA
        assert list(log.events()) == before + more
    assert sqlite3.connect(schema2).execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(LOG_SCHEMA),)
    assert replay(schema2) == fold(before + more)


def test_a_damaged_old_unpause_is_reported(schema2):
    seq = next(row[0] for row in stored_rows(schema2) if is_old_unpause(row))
    tamper(schema2, "UPDATE events SET version = 3 WHERE seq = ?", seq)
    with pytest.raises(TornLog, match=f"event {seq} .*resumed without rollout has no version"):
        replay(schema2)


# -- the codec is derived from the event classes


def test_the_event_table_in_the_docs_is_the_generated_one():
    """docs/ledger.md carries the table rendered from the event classes: regenerate it
    with ``python -m engine.log.doc --write`` after changing an event."""
    text = (Path(__file__).parents[1] / "docs" / "ledger.md").read_text()
    assert documented_table(text) == event_table()


def test_every_event_type_has_a_row_codec_and_batch_types_name_their_rollouts():
    assert set(ENCODE) == set(EVENT_TYPES)
    assert set(DECODE) == {cls.type for cls in EVENT_TYPES} | set(LEGACY)
    assert set(BATCH_TYPES) == {"consumed", "interrupted_batch", "resumed_batch"}


def test_a_new_event_class_gets_its_row_codec_from_its_declaration():
    class Note(NamedTuple):
        rollout: Annotated[str, Column.ROLLOUT]
        labels: Annotated[tuple[str, ...], Column.DATA]
        weight: Annotated[int, Column.TOKENS] = 1
        text: Annotated[str | None, Column.DATA] = None
        t: Annotated[float | None, Column.T] = None
        type = "note"

    codec = RowCodec([Note], {})
    note = Note("r1", ("a", "b"), 3, "hi", 2.5)
    row = codec.encode[Note](7, note)
    assert row == (7, "note", "r1", None, 3, 2.5, '[["a", "b"], "hi"]')
    decoded = codec.decode["note"](*row[2:])
    assert decoded == note and type(decoded) is Note


def test_the_row_codec_is_generated_code_not_a_loop_over_fields():
    from engine.log.codec import CODEC

    assert "def encode_3(s, e):\n    return (s, 'segment', e[0], e[1], e[2], e[3], None)" in CODEC.source
    assert "for " not in CODEC.source


def test_an_empty_json_lines_file_is_damage_not_an_empty_run(tmp_path):
    from engine.cli import main as cli_main

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(TornLog, match="empty"):
        list(read_jsonl(empty))
    assert cli_main(["replay", str(empty)]) == 2
    assert cli_main(["import", str(empty), str(tmp_path / "x.db")]) == 2
    assert not (tmp_path / "x.db").exists() and empty.read_bytes() == b""
