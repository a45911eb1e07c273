"""The report: one pass over a log into the figures' data, checked against the
ledger's own replay and the simulator's summary; the ``report`` command's page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.log.replay import replay
from engine.report.extract import extract
from engine.report.plots import idle_fraction, quantile

ROOT = Path(__file__).resolve().parent.parent
GPU_RUN = ROOT / "docs" / "runs" / "gpu-reverse-s0"
SMALL = ["--no-progress", "--set", "run.rollouts=256", "--set", "ledger.batch_size=16", "--set", "generation.servers=2", "--set", "generation.slots=32", "--set", "ledger.max_staleness=2"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("sim") / "run.sqlite"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["simulate", *SMALL, "--compare", "none", "--format", "json", "--log", str(path)]) == 0
    summary = json.loads(out.getvalue())
    return path, summary[0] if isinstance(summary, list) else summary


def test_timeline_outcomes_equal_the_replayed_counters(simulated) -> None:
    path, _ = simulated
    data, state = extract(path), replay(path)
    outcomes = [life.outcome for life in data.lives.values()]
    assert data.state.counts == state.counts and data.state.events == state.events
    assert outcomes.count("consumed") == state.consumed
    assert outcomes.count("rejected") == state.rejected
    assert outcomes.count("filtered") == state.filtered
    assert len(data.staleness) == state.consumed == sum(row[1] for row in data.consumed_at)
    assert data.versions and data.versions[-1][1] == state.version


def test_staleness_mean_and_p99_equal_the_summary(simulated) -> None:
    path, summary = simulated
    data = extract(path)
    assert sum(data.staleness) / len(data.staleness) == pytest.approx(summary["staleness_mean"], abs=1e-3)
    assert quantile(data.staleness, 0.99) == summary["staleness_p99"]


def test_gauges_never_exceed_the_capacity_bound_and_idle_is_a_fraction(simulated) -> None:
    data = extract(simulated[0])
    limit = data.state.config.max_concurrent
    assert all(in_flight <= bound <= limit for _, bound, in_flight, _ in data.gauges)
    assert max(in_flight for _, _, in_flight, _ in data.gauges) > 0
    assert [g[0] for g in data.gauges] == sorted(g[0] for g in data.gauges)
    assert 0.0 <= idle_fraction(data) <= 1.0


def test_report_of_train_runs_writes_every_figure(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert main(["report", str(GPU_RUN), str(GPU_RUN.parent / "gpu-reverse-s4"), "--out", str(out), "--no-progress"]) == 0
    page = (out / "report.html").read_text()
    for name in ("timeline-0", "timeline-1", "gauges", "staleness", "throughput", "metrics-step", "metrics-wall_s"):
        assert f'id="{name}"' in page
    assert page.count("<svg") == 7 and "src=\"http" not in page and "<script" not in page  # self-contained


def test_report_names_a_bad_input_before_writing(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "missing.sqlite"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.sqlite" in err
    assert not out.exists()


def test_a_damaged_log_is_one_line_and_leaves_no_output(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    out = tmp_path / "out"
    assert main(["report", str(bad), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl" in err and "line 1" in err
    assert not out.exists()
