"""Every file a command writes is written whole or not at all, after its inputs are
checked, and never over one of its inputs (engine.log.files)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from engine.cli import main
from engine.log import EventLog
from tests.test_ledger_cli import DESIGN_LOG

SMALL = ["--no-progress", "--set", "run.rollouts=16", "--set", "ledger.batch_size=4", "--set", "generation.servers=1"]


def status(argv: list[str]) -> int:
    """``main``'s exit status, also when the parser exits (bad arguments)."""
    try:
        return main(argv)
    except SystemExit as exit:
        return int(exit.code or 0)


def one_line(capsys) -> str:
    """The one line a refused command printed on stderr."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rollout-ledger: "), err
    return lines[0]


def files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def log(tmp_path):
    """A SQLite log made by ``import`` from the design log."""
    source = tmp_path / "design.jsonl"
    source.write_text(DESIGN_LOG)
    path = tmp_path / "x.db"
    assert main(["import", str(source), str(path)]) == 0
    source.unlink()
    return path


def test_export_of_a_missing_log_leaves_the_output_untouched(tmp_path, capsys):
    keep = tmp_path / "keep.jsonl"
    keep.write_text("precious\n")
    assert main(["export", str(tmp_path / "missing.db"), "--jsonl", str(keep)]) == 2
    assert "missing.db" in one_line(capsys)
    assert keep.read_text() == "precious\n"
    assert files(tmp_path) == ["keep.jsonl"]


def test_export_onto_its_own_input_is_refused_and_the_log_is_unchanged(log, tmp_path, capsys):
    before = log.read_bytes()
    assert main(["export", str(log), "--jsonl", str(log)]) == 2
    assert "also an input" in one_line(capsys)
    assert log.read_bytes() == before
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(log)
    assert main(["export", str(log), "--jsonl", str(alias)]) == 2
    assert "also an input" in one_line(capsys)
    assert log.read_bytes() == before


@pytest.mark.parametrize("where", ["missing/out.jsonl", "x.db/out.jsonl", "."])
def test_export_to_an_unwritable_place_exits_2_with_one_line(log, tmp_path, capsys, where):
    assert main(["export", str(log), "--jsonl", str(tmp_path / where)]) == 2
    one_line(capsys)
    assert files(tmp_path) == ["x.db"]


def test_a_failed_export_leaves_no_partial_file(log, tmp_path, capsys):
    db = EventLog(log)  # damage the log's last row: export fails after writing some lines
    db._db.execute("UPDATE events SET type = 'nonsense' WHERE seq = (SELECT MAX(seq) FROM events)")
    db.close()
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    assert main(["export", str(log), "--jsonl", str(out)]) == 2
    assert "nonsense" in one_line(capsys)
    assert out.read_text() == "old\n"
    assert files(tmp_path) == ["out.jsonl", "x.db"]


def test_export_replaces_the_output_whole(log, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n" * 1000)
    assert main(["export", str(log), "--jsonl", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"schema": json.loads(lines[0])["schema"]} and len(lines) == 13
    assert files(tmp_path) == ["out.jsonl", "x.db"]


STORED_BADLY = {
    "id enqueued twice": (
        '{"type": "run_started", "config": {"max_concurrent": 8, "batch_size": 1}}\n'
        '{"type": "enqueued", "rollout": "a"}\n{"type": "submitted", "rollout": "a", "version": 0}\n'
        '{"type": "accepted", "rollout": "a"}\n{"type": "consumed", "rollouts": ["a"]}\n'
        '{"type": "enqueued", "rollout": "a"}\n'
    ),
    "integer out of range": (
        '{"type": "run_started", "config": {"max_concurrent": 8, "batch_size": 1}}\n'
        '{"type": "enqueued", "rollout": "a"}\n{"type": "submitted", "rollout": "a", "version": 0}\n'
        '{"type": "segment", "rollout": "a", "version": 0, "tokens": 100000000000000000000000}\n'
    ),
    "lone surrogate": '{"type": "run_started", "config": {"max_concurrent": 8, "batch_size": 1}}\n{"type": "enqueued", "rollout": "a\\ud800"}\n',
}


@pytest.mark.parametrize("case", sorted(STORED_BADLY))
def test_import_is_every_event_or_none(tmp_path, capsys, case):
    source = tmp_path / "in.jsonl"
    source.write_text(STORED_BADLY[case])
    target = tmp_path / "out.db"
    status = main(["import", str(source), str(target)])
    line = capsys.readouterr().err.strip()
    assert status == 2 and "Traceback" not in line and len(line.splitlines()) == 1, line
    assert "in.jsonl" in line
    assert files(tmp_path) == ["in.jsonl"]


def test_import_refuses_an_existing_or_unwritable_target_before_reading(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(DESIGN_LOG)
    assert main(["import", str(source), str(source)]) == 2
    assert "exists" in one_line(capsys)
    assert main(["import", str(source), str(tmp_path / "no" / "x.db")]) == 2
    assert "does not exist" in one_line(capsys)
    assert source.read_text() == DESIGN_LOG and files(tmp_path) == ["in.jsonl"]


def test_sweep_checks_its_output_folder_before_the_first_run(tmp_path, capsys, monkeypatch):
    import sim.sweep

    def no_runs(*args, **kwargs):
        raise AssertionError("a run started before the output was checked")

    monkeypatch.setattr(sim.sweep, "run_point", no_runs)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for out in (not_a_folder, not_a_folder / "sub"):
        assert main(["sweep", "default", *SMALL, "--workers", "1", "--grid", "ledger.max_staleness=0,1", "--out", str(out)]) == 2
        assert str(out) in one_line(capsys)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summaries.csv").mkdir()
    assert main(["sweep", "default", *SMALL, "--workers", "1", "--grid", "ledger.max_staleness=0,1", "--out", str(tmp_path / "out")]) == 2
    assert "summaries.csv" in one_line(capsys)


def test_sweep_results_are_written_whole(tmp_path, capsys, monkeypatch):
    import sim.sweep

    out = tmp_path / "out"
    out.mkdir()
    (out / "summaries.csv").write_text("old\n")

    def broken_plot(*args, **kwargs):
        raise ImportError("no matplotlib")

    monkeypatch.setattr("sim.cli.plot", broken_plot)
    real_writer = csv.DictWriter

    class FailingWriter(real_writer):  # type: ignore[misc, valid-type]
        def writerows(self, rows):
            super().writerows(rows[:1])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sim.sweep.csv, "DictWriter", FailingWriter)
    with pytest.raises(OSError):
        main(["sweep", "default", *SMALL, "--workers", "1", "--grid", "ledger.max_staleness=0,1", "--out", str(out)])
    assert (out / "summaries.csv").read_text() == "old\n" and files(out) == ["summaries.csv"]


def test_simulate_refuses_an_unwritable_log_before_running(tmp_path, capsys, monkeypatch):
    import sim.cli

    monkeypatch.setattr(sim.cli, "Simulation", None)  # any run would fail with a TypeError
    for log in (tmp_path / "missing" / "run.db", tmp_path, tmp_path / "file" / "run.db"):
        (tmp_path / "file").write_text("x")
        assert main(["simulate", *SMALL, "--compare", "1", "--log", str(log)]) == 2
        assert str(log) in one_line(capsys)
    assert files(tmp_path) == ["file"]


def test_simulate_refuses_a_bound_given_twice_before_running(tmp_path, capsys):
    assert status(["simulate", *SMALL, "--compare", "1,1", "--log", str(tmp_path / "run.db")]) == 2
    assert "--compare" in one_line(capsys)
    assert files(tmp_path) == []


def test_outputs_get_the_usual_file_mode(log, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["export", str(log), "--jsonl", str(out)]) == 0
    mask = os.umask(0o022)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
