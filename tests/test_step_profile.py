"""The training step's shape from a profile: ``profile-step`` times a run's update alone
at several batch sizes, ``calibrate --step-profile`` fits a floor then a line to it and
places it at the runs' own steps, and the simulator charges ``max(floor, line)``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sim.calibrate import CalibrationError, profiled_step, read_step_profile
from sim.config import Scenario
from sim.fitting import floor_line
from sim.simulator import simulate
from tests.test_sim_checkpoint import SYNC as CHECKPOINT_SYNC


def test_a_floor_then_a_line_is_recovered_and_a_line_alone_has_no_floor() -> None:
    xs = [100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0, 6400.0]
    shaped = floor_line(xs, [max(0.08, 0.02 + 3e-5 * x) for x in xs])
    assert (shaped.floor, shaped.base, shaped.slope) == pytest.approx((0.08, 0.02, 3e-5))
    assert shaped.knee == pytest.approx(2000.0) and shaped.r2 == pytest.approx(1.0)
    straight = floor_line(xs, [0.01 + 2e-5 * x for x in xs])
    assert straight.floor == 0 and (straight.base, straight.slope) == pytest.approx((0.01, 2e-5)) and straight.knee == 0
    # flat throughout: a floor with no slope past it, or a line of no slope: the same step everywhere
    flat = floor_line(xs, [0.05] * len(xs))
    assert all(flat.at(x) == pytest.approx(0.05) for x in xs)
    with pytest.raises(ValueError, match="two points"):
        floor_line([1.0], [1.0])


#: ten synchronous, colocated updates of 4 rows of 14 tokens (56 padded), a step of 0.1 s + 1 ms a padded token
SYNC = CHECKPOINT_SYNC + ["training.step_base_s=0.1", "training.step_per_padded_token_s=0.001", "training.weight_sync_s=0",
                          "training.update_overhead_s=0"]


def test_the_simulator_charges_the_floor_where_it_is_longer_than_the_line() -> None:
    """Ten synchronous updates of 4 rows of 14 tokens (56 padded): the line is 0.156 s;
    a floor of 0.5 s adds 0.344 s to each, a floor below the line nothing."""
    base = simulate(Scenario().with_overrides(SYNC))
    floored = simulate(Scenario().with_overrides(SYNC + ["training.step_floor_s=0.5"]))
    low = simulate(Scenario().with_overrides(SYNC + ["training.step_floor_s=0.1"]))
    assert base.versions == floored.versions == 10
    assert floored.sim_time_s - base.sim_time_s == pytest.approx(10 * (0.5 - 0.156))
    assert low.sim_time_s == pytest.approx(base.sim_time_s)


def test_the_profile_is_placed_at_the_runs_steps() -> None:
    """A profile flat at 80 ms to 2,000 padded tokens, then 20 ms + 30 us a token; the
    runs' steps took 5 ms longer than it at their shapes: the scenario's step is the
    profile's moved up by 5 ms, per padded token alone."""
    profile = [(x, max(0.08, 0.02 + 3e-5 * x)) for x in (250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)]
    updates = [SimpleNamespace(padded_tokens=900.0, step_s=0.084), SimpleNamespace(padded_tokens=1100.0, step_s=0.086)]
    training, notes = profiled_step(Scenario().training, profile, updates)
    assert training.step_floor_s == pytest.approx(0.085) and training.step_base_s == pytest.approx(0.025)
    assert training.step_per_padded_token_s == pytest.approx(3e-5)
    assert training.step_per_token_s == 0 and training.step_per_seq_s == 0
    assert "floor 0.08 s up to 2000 padded tokens" in notes[0] and "+5.00 ms" in notes[1]
    with pytest.raises(CalibrationError, match="padded_tokens"):
        profiled_step(Scenario().training, profile, [SimpleNamespace(padded_tokens=None, step_s=0.1)])


@pytest.mark.parametrize(("text", "named"), [
    ("rows,seconds\n4,0.1\n8,0.2\n", "header must name padded_tokens and seconds"),
    ("padded_tokens,seconds\n40,0.1\n80,fast\n", "line 3"),
    ("padded_tokens,seconds\n40,0.1\n80,-1\n", "line 3: padded_tokens and seconds must be positive"),
    ("padded_tokens,seconds\n40,0.1\n", "at least two batch shapes"),
])
def test_a_bad_step_profile_is_refused_naming_the_file(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "profile.csv"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=named) as refused:
        read_step_profile(path)
    assert str(path) in str(refused.value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig

    run = tmp_path_factory.mktemp("profile") / "run"
    config = RunConfig(task="reverse", model_size="tiny", steps=5, batch_size=4, group_size=2, max_concurrent=8, max_staleness=2,
                       warmup_steps=3, device="cpu", checkpoint_every=0)
    train(config, run, eval_size=0, progress=False)
    return run


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_profile_step_times_the_runs_update_by_rows_and_calibrate_fits_it(tiny_run: Path, tmp_path: Path, capsys) -> None:
    from engine.cli import main

    before = _digest(tiny_run)
    out = tmp_path / "profile.csv"
    assert main(["profile-step", str(tiny_run), "-o", str(out), "--rows", "2,8,32", "--iterations", "2", "--warmup", "1"]) == 0
    assert "| 32 |" in capsys.readouterr().out
    assert _digest(tiny_run) == before  # the run is only read
    lines = out.read_text().splitlines()
    assert lines[0] == "rows,width,padded_tokens,seconds,p10_s,p90_s" and [int(line.split(",")[0]) for line in lines[1:]] == [2, 8, 32]
    for line in lines[1:]:
        rows, width, padded, seconds, p10, p90 = line.split(",")
        assert abs(int(padded) - int(rows) * int(width)) <= int(rows) and 0 < float(p10) <= float(seconds) <= float(p90)
    scenario = tmp_path / "calibrated.toml"
    assert main(["calibrate", str(tiny_run), "-o", str(scenario), "--step-profile", str(out)]) == 0
    report = capsys.readouterr().out
    assert "step profile" in report and "in place of the runs' own fit" in report
    fitted = Scenario.from_toml(scenario.read_text()) if hasattr(Scenario, "from_toml") else None
    if fitted is None:
        from sim.config import load

        fitted = load(scenario)
    shape = floor_line(*zip(*[(float(line.split(",")[2]), float(line.split(",")[3])) for line in lines[1:]]))
    assert fitted.training.step_per_padded_token_s == pytest.approx(shape.slope)
    assert fitted.training.step_per_token_s == 0 and fitted.training.step_per_seq_s == 0
    assert json.loads((tiny_run / "run.json").read_text())["checkpoint_every"] == 0


def test_profile_step_refuses_rows_off_the_group_and_a_folder_that_is_no_run(tiny_run: Path, tmp_path: Path, capsys) -> None:
    from engine.cli import main

    assert main(["profile-step", str(tiny_run), "-o", str(tmp_path / "p.csv"), "--rows", "3"]) == 2
    assert "rows 3: each must be a positive multiple of the run's group size 2" in capsys.readouterr().err
    assert main(["profile-step", str(tmp_path), "-o", str(tmp_path / "p.csv")]) == 2
    assert f"{tmp_path}: not a train run directory (no run.json)" in capsys.readouterr().err
    assert main(["profile-step", str(tiny_run), "-o", str(tmp_path / "p.csv"), "--rows", "two"]) == 2
    assert not (tmp_path / "p.csv").exists()
