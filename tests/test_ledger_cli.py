import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.core.events import to_json
from engine.ledger import Ledger
from engine.log import EventLog

DESIGN_LOG = """\
{"type": "run_started", "config": {"max_concurrent": 8, "batch_size": 4, "max_staleness": 2, "policy": "admission"}}
{"type": "enqueued",  "rollout": "r1"}
{"type": "submitted", "rollout": "r1", "version": 0}
{"type": "segment",   "rollout": "r1", "version": 0, "tokens": 37}
{"type": "accepted",  "rollout": "r1"}
{"type": "enqueued",  "rollout": "r2"}
{"type": "submitted", "rollout": "r2", "version": 0}
{"type": "rejected",  "rollout": "r2", "reason": "error"}
{"type": "consumed",  "rollouts": ["r1"]}
{"type": "version",   "version": 1}
{"type": "paused"}
{"type": "resumed"}
"""


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "design.jsonl"
    path.write_text(DESIGN_LOG)
    return path


def test_replay_json_prints_the_counters(jsonl, capsys):
    assert main(["replay", "--format", "json", str(jsonl)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "version": 1, "pending": 0, "running": 0, "ready": 0, "accepted": 1, "rejected": 1,
        "filtered": 0, "consumed": 1, "submitted": 2, "capacity": 8, "events": 12,
    }


def test_replay_table(jsonl, capsys):
    assert main(["replay", str(jsonl)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["version", "1"] and lines[-1].split() == ["events", "12"]


def test_bad_line_exits_2_naming_line_and_rollout(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(DESIGN_LOG + '{"type": "accepted", "rollout": "r1"}\n')
    assert main(["replay", "--jsonl", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 13" in err and "'r1'" in err and "already finished" in err


def test_malformed_line_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(DESIGN_LOG.replace('"tokens": 37', '"tokens": "many"'))
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 4" in err and "'r1'" in err and "tokens" in err


def test_import_inspect_export_round_trip(jsonl, tmp_path, capsys):
    sqlite = tmp_path / "run.sqlite"
    assert main(["import", str(jsonl), str(sqlite)]) == 0
    assert main(["inspect", str(sqlite), "r1"]) == 0
    history = capsys.readouterr().out.splitlines()[1:]
    assert [json.loads(line.split(None, 1)[1])["type"] for line in history] == ["enqueued", "submitted", "segment", "accepted", "consumed"]
    out = tmp_path / "out.jsonl"
    assert main(["export", str(sqlite), "--jsonl", str(out)]) == 0
    with EventLog(sqlite) as log:
        exported = [json.loads(line) for line in out.read_text().splitlines()[1:]]
        assert exported == [to_json(e) for e in log.events()]


def test_inspect_unknown_rollout(jsonl, capsys):
    assert main(["inspect", str(jsonl), "nobody"]) == 2
    assert "no rollout 'nobody'" in capsys.readouterr().err


def test_import_refuses_an_illegal_history_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(DESIGN_LOG + '{"type": "accepted", "rollout": "ghost"}\n')
    assert main(["import", str(path), str(tmp_path / "x.sqlite")]) == 2
    assert not (tmp_path / "x.sqlite").exists()


def test_replay_of_a_sqlite_log_written_by_the_ledger(tmp_path, capsys):
    from engine.core.config import Config
    from engine.core.events import Enqueued, Submitted

    path = tmp_path / "run.sqlite"
    with Ledger(Config(4, 2), path=path) as ledger:
        ledger.append(Enqueued("a"), Submitted("a", 0))
    assert main(["replay", "--format", "json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["running"] == 1


def test_console_script_runs(jsonl):
    done = subprocess.run([sys.executable, "-m", "engine.cli", "replay", "--format", "json", str(jsonl)], capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["events"] == 12


# -- logs written by the code before schema 3 (tests/fixtures/make_schema2_log.py, run at 10d5a40)

FIXTURES = Path(__file__).parent / "fixtures"
#: What ``rollout-ledger replay --format json`` printed for both fixtures with that code.
SCHEMA2_COUNTERS = {
    "version": 7, "pending": 0, "running": 0, "ready": 1, "accepted": 25, "rejected": 8,
    "filtered": 1, "consumed": 24, "submitted": 34, "capacity": 8, "events": 176,
}


@pytest.fixture
def old_logs(tmp_path):
    for name in ("schema2.sqlite", "schema2.jsonl"):
        shutil.copyfile(FIXTURES / name, tmp_path / name)
    return tmp_path / "schema2.sqlite", tmp_path / "schema2.jsonl"


def replayed(path, capsys):
    capsys.readouterr()
    assert main(["replay", "--format", "json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_schema_2_logs_replay_to_the_counters_the_old_code_printed(old_logs, capsys):
    sqlite, jsonl = old_logs
    assert replayed(sqlite, capsys) == SCHEMA2_COUNTERS
    assert replayed(jsonl, capsys) == SCHEMA2_COUNTERS


def test_schema_2_logs_convert_to_the_current_schema(old_logs, tmp_path, capsys):
    """Export and import convert an old log: the un-pause is written as ``unpaused``,
    everything else as it was, and the converted logs replay to the same counters."""
    sqlite, jsonl = old_logs
    exported = tmp_path / "exported.jsonl"
    assert main(["export", str(sqlite), "--jsonl", str(exported)]) == 0
    old_lines = jsonl.read_text().splitlines()
    new_lines = exported.read_text().splitlines()
    assert json.loads(new_lines[0]) == {"schema": 3}
    converted = [line.replace('"type": "resumed"', '"type": "unpaused"') if '"rollout"' not in line else line for line in old_lines[1:]]
    assert new_lines[1:] == converted and sum('"unpaused"' in line for line in new_lines) == 7
    assert replayed(exported, capsys) == SCHEMA2_COUNTERS

    imported = tmp_path / "imported.sqlite"
    assert main(["import", str(jsonl), str(imported)]) == 0
    capsys.readouterr()
    assert replayed(imported, capsys) == SCHEMA2_COUNTERS
    again = tmp_path / "again.jsonl"
    assert main(["export", str(imported), "--jsonl", str(again)]) == 0
    assert again.read_text() == exported.read_text()
    capsys.readouterr()
    assert main(["inspect", str(imported), "x1"]) == 0
    history = [json.loads(line[line.index("{"):])["type"] for line in capsys.readouterr().out.splitlines()]
    assert history == ["enqueued", "submitted", "segment", "interrupted", "resumed", "segment", "accepted"]


@pytest.mark.parametrize("form", ["sqlite", "jsonl"])
def test_an_illegal_event_beyond_the_first_chunk_is_named_by_its_position(form, tmp_path, capsys):
    """Logs are folded in chunks of thousands of events; the refusal still names the exact event."""
    from benchmarks.mixed_log import mixed_log
    from engine.core.events import Accepted
    from engine.log import write_jsonl

    events = mixed_log(6000, seed=2)
    events.insert(5000, Accepted("ghost"))  # the 5001st event
    if form == "sqlite":
        path = tmp_path / "bad.sqlite"
        with EventLog(path) as log:
            log.append(events)
        where = "event 5001"
    else:
        path = tmp_path / "bad.jsonl"
        write_jsonl(events, path)
        where = "line 5002"  # after the schema header
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{where}: " in err and "'ghost'" in err
