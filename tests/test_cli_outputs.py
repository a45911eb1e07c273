"""Every file a command writes is written whole or not at all, after its inputs are
checked, and never over one of its inputs (engine.log.files)."""

from __future__ import annotations

import json
import os

import pytest

from engine.cli import main
from engine.log import EventLog
from tests.test_ledger_cli import DESIGN_LOG

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


def test_outputs_get_the_usual_file_mode(log, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["export", str(log), "--jsonl", str(out)]) == 0
    mask = os.umask(0o022)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
