"""Calibration: recover known parameters from a simulated log; refuse logs too short."""

from __future__ import annotations

import pytest

from engine.cli import main
from sim.calibrate import CalibrationError, calibrate
from sim.config import Scenario, load
from sim.simulator import simulate

TRUTH = [
    "run.rollouts=1500", "ledger.max_concurrent=64", "ledger.batch_size=16", "ledger.max_staleness=2",
    "workload.prompt_len.value=1", "generation.servers=1", "generation.slots=64",
    "generation.step_base_s=0.02", "generation.step_per_seq_s=0.0005", "generation.step_per_kv_token_s=0",
    "generation.prefill_per_token_s=0", "workload.response_len.median=200", "workload.response_len.sigma=0.6",
    "workload.response_len.cap=4000", "training.step_base_s=3.0", "training.step_per_token_s=0.001",
    "training.weight_sync_s=0.5",
]


def _close(got: float, want: float, tol: float = 0.05) -> bool:
    return abs(got - want) <= tol * abs(want)


def test_calibration_recovers_the_true_parameters_within_5_percent(tmp_path):
    truth = Scenario().with_overrides(TRUTH)
    measured = simulate(truth, log=tmp_path / "true.db")
    fit = calibrate([tmp_path / "true.db"], base=Scenario().with_overrides(["generation.prefill_per_token_s=0"]))
    gen, train, resp = fit.scenario.generation, fit.scenario.training, fit.scenario.workload.response_len
    assert _close(gen.step_base_s, 0.02), gen
    assert _close(gen.step_per_seq_s, 0.0005), gen
    assert _close(train.step_base_s, 3.0), train
    assert _close(train.step_per_token_s, 0.001), train
    assert _close(train.weight_sync_s, 0.5), train
    assert _close(resp.median, 200) and _close(resp.sigma, 0.6), resp
    # and the calibrated scenario predicts the run it was fitted on
    predicted = simulate(fit.scenario.with_overrides(["run.rollouts=1500", "workload.prompt_len.value=1"]))
    assert _close(predicted.trained_tokens_per_s, measured.trained_tokens_per_s, 0.10)


def test_calibrate_writes_a_scenario_simulate_takes(tmp_path, capsys):
    simulate(Scenario().with_overrides(TRUTH + ["run.rollouts=300"]), log=tmp_path / "true.db")
    out = tmp_path / "cal.toml"
    assert main(["calibrate", str(tmp_path / "true.db"), "-o", str(out)]) == 0
    assert "R^2" in capsys.readouterr().out
    assert load(out).training.weight_sync_s == pytest.approx(0.5)
    assert main(["simulate", str(out), "--compare", "none", "--set", "run.rollouts=100"]) == 0


def test_a_too_short_log_says_what_is_missing(tmp_path, capsys):
    simulate(Scenario().with_overrides(TRUTH + ["run.rollouts=32"]), log=tmp_path / "short.db")
    with pytest.raises(CalibrationError, match="timed training steps"):
        calibrate([tmp_path / "short.db"])
    before = (tmp_path / "short.db").read_bytes()
    assert main(["calibrate", str(tmp_path / "short.db"), "-o", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "short.db" in err and "need" in err
    assert (tmp_path / "short.db").read_bytes() == before and not (tmp_path / "x.toml").exists()
    assert main(["calibrate", str(tmp_path / "missing"), "-o", str(tmp_path / "x.toml")]) == 2
