import json
import sqlite3

import pytest

from benchmarks.mixed_log import mixed_log
from engine.core.events import SCHEMA_VERSION, Accepted, Enqueued
from engine.core.reducer import fold
from engine.log import (
    BadLine,
    EventLog,
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


def test_a_schema_1_log_is_read_and_marked_schema_2_at_its_first_append(tmp_log, events):
    old = [e for e in events[:400] if e.type not in ("interrupted_batch", "resumed_batch")]
    legal = fold(old)  # the schema 1 events alone
    write(tmp_log, old)
    tamper(tmp_log, "UPDATE meta SET value = '1' WHERE key = 'schema'")
    with EventLog(tmp_log) as log:
        assert log.schema == 1 and list(log.events()) == old
    assert replay(tmp_log) == legal
    assert sqlite3.connect(tmp_log).execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("1",)  # reading changes nothing
    with EventLog(tmp_log) as log:
        log.append([Accepted("r-new")])
    assert sqlite3.connect(tmp_log).execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)


def test_newer_schema_is_refused(tmp_log):
    EventLog(tmp_log).close()
    tamper(tmp_log, "UPDATE meta SET value = ? WHERE key = 'schema'", str(SCHEMA_VERSION + 1))
    with pytest.raises(SchemaTooNew, match=f"schema {SCHEMA_VERSION + 1}.*Upgrade"):
        EventLog(tmp_log)


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
        with pytest.raises(KeyError):
            log.append([Accepted("a"), ("not", "an", "event")])  # type: ignore[list-item]
        assert log.last_seq == 1
        assert [seq for seq, _ in log.records()] == [1]


def test_reading_while_another_writer_appends_sees_a_consistent_prefix(tmp_log, events):
    write(tmp_log, events[:100])
    with EventLog(tmp_log) as reader, EventLog(tmp_log) as writer:
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
    from engine.core.events import Resumed, Segment

    with EventLog(tmp_log) as log:
        log.append([Enqueued("a"), Segment("a", 0, 3), Resumed(), Segment("a", 0, 4, t=float("nan")), Segment("a", 0, 5, t=1.5)])
        assert [event.t for event in log.events()] == [None, None, None, None, 1.5]
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
