"""Calibration: recover known parameters from a simulated log; refuse logs too short."""

from __future__ import annotations

import math

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
    calibrated = load(out)
    assert calibrated.training.weight_sync_s == pytest.approx(0.5)
    # the observed lengths by default, written beside the scenario; the lognormal on request
    assert calibrated.workload.response_len.kind == "empirical" and (tmp_path / "cal.lengths.csv").is_file()
    assert main(["simulate", str(out), "--compare", "none", "--set", "run.rollouts=100"]) == 0
    assert main(["calibrate", str(tmp_path / "true.db"), "-o", str(tmp_path / "ln.toml"), "--lengths", "lognormal"]) == 0
    assert load(tmp_path / "ln.toml").workload.response_len.kind == "lognormal" and not (tmp_path / "ln.lengths.csv").exists()


def test_several_logs_keep_the_first_logs_settings(tmp_path):
    simulate(Scenario().with_overrides(TRUTH + ["run.rollouts=200"]), log=tmp_path / "a.db")
    simulate(Scenario().with_overrides(TRUTH + ["run.rollouts=200", "ledger.batch_size=8", "ledger.max_concurrent=32"]), log=tmp_path / "b.db")
    fit = calibrate([tmp_path / "a.db", tmp_path / "b.db"])
    assert (fit.scenario.ledger.batch_size, fit.scenario.ledger.max_concurrent) == (16, 64)
    assert fit.counts["updates"] == -(-200 // 16) + 200 // 8  # both logs' updates (the run stops at the step reaching 200)


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


def test_calibrate_on_a_cpu_run_and_predict_a_second(tmp_path, capsys):
    """A short CPU ``train`` run calibrates the simulator, which predicts a second run's
    trained tokens/s; the error is printed, not held to a bound (a shared CI machine)."""
    pytest.importorskip("torch")
    from sim.calibrate import _sample_lengths
    from benchmarks.fidelity import measured, predict
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig

    base = RunConfig(task="reverse", model_size="tiny", steps=10, batch_size=4, group_size=2, max_concurrent=8,
                     max_staleness=2, warmup_steps=3, device="cpu")
    train(base, tmp_path / "first", eval_size=0, progress=False)
    fit = calibrate([tmp_path / "first"])
    assert fit.scenario.training.colocated and fit.scenario.workload.group_size == 2
    # the engine prefills each sample's whole prompt, a row apiece; the trainer counts completions only
    prompts: list[int] = []
    _sample_lengths(tmp_path / "first" / "samples.sqlite", prompts, keep=_fair(tmp_path / "first" / "events.sqlite"))
    assert fit.scenario.workload.prompt_len.value == round(sum(prompts) / len(prompts)) > 0
    assert not fit.scenario.training.trains_prompt and not fit.scenario.generation.shared_prompt
    training = fit.scenario.training  # the step costs something, on whichever of its terms the fit kept (often the padded tokens)
    assert training.step_base_s + training.step_per_token_s + training.step_per_seq_s + training.step_per_padded_token_s > 0
    assert fit.scenario.generation.step_base_s + fit.scenario.generation.step_per_seq_s > 0
    out = tmp_path / "cal.toml"
    from sim.config import save

    save(fit.scenario, out)
    import argparse

    predicted = predict(out, 4, 4, 10, argparse.Namespace(concurrency=2, group_size=2, seed=0, sim_seeds=4))
    train(RunConfig(**{**base.__dict__, "max_staleness": 4}), tmp_path / "second", eval_size=0, progress=False)
    actual = measured(tmp_path / "second")
    error = 100 * (predicted["tokens_per_s"] - actual["tokens_per_s"]) / actual["tokens_per_s"]
    with capsys.disabled():
        print(f"\npredicted {predicted['tokens_per_s']:.0f} tokens/s, measured {actual['tokens_per_s']:.0f}: error {error:+.1f}%")
    assert predicted["tokens_per_s"] > 0 and math.isfinite(error)


def test_a_real_runs_group_lengths_are_drawn_together_and_an_overlapped_run_is_not_colocated(tmp_path):
    """Calibrating a real run writes each rollout's samples' lengths as one row, which the
    simulator draws whole for a group (a group's samples are alike in length); a run that
    generated beside training (``overlap``) is fitted as not colocated; the engine's
    prefill samples a token (``prefill_token``)."""
    pytest.importorskip("torch")
    import random
    from collections import Counter

    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig
    from sim.calibrate import _sample_lengths
    from sim.workload import group_sampler, paired_samplers

    config = RunConfig(task="reverse", model_size="tiny", steps=8, batch_size=4, group_size=3, max_concurrent=8,
                       max_staleness=2, warmup_steps=3, device="cpu", overlap=True)
    train(config, tmp_path / "run", eval_size=0, progress=False)
    fit = calibrate([tmp_path / "run"], lengths_file=tmp_path / "lengths.csv")
    assert not fit.scenario.training.colocated and fit.scenario.generation.prefill_token
    assert fit.scenario.generation.on_update == "partial"  # its engine prefilled the rollouts in flight again
    lines = (tmp_path / "lengths.csv").read_text().splitlines()
    assert lines[0].startswith("run,trained,prompt,")  # each row leads with its run, its progress, its prompt's length
    table = [tuple(map(int, line.split(","))) for line in lines[1:]]
    assert {r[0] for r in table} == {0} and all(len(r) == 6 for r in table)  # one run, groups of 3
    assert [r[1] for r in table] == sorted(r[1] for r in table) and {r[1] % 4 for r in table} == {0}  # versions times the batch
    rows = {r[3:] for r in table}
    draw = group_sampler(fit.scenario.workload.response_len, 3)
    rng = random.Random(0)
    assert all(tuple(draw(rng)) in rows for _ in range(50))
    apart = group_sampler(fit.scenario.workload.response_len, 2)  # rows of another size: each sample apart
    assert all(len(apart(rng)) == 2 for _ in range(5))
    # the prompt length is paired: a group's lengths are drawn from the rows of its prompt's length
    assert fit.scenario.workload.prompt_len.kind == "paired"
    prompt_of, lengths_given = paired_samplers(fit.scenario.workload.response_len, 3)
    for _ in range(50):
        prompt = prompt_of(rng)
        assert (prompt, *lengths_given(rng, prompt)) in {r[2:] for r in table}
    # the rows are every group the run submitted, in the order first submitted (a replay
    # follows that order), read here from the store and the log apart from calibration's
    # reading: a stored group's lengths, and for one still unfinished another stored group's, or the longest length
    import pickle
    import sqlite3

    from engine.core.events import Submitted
    from sim.calibrate import _events

    order: dict[str, None] = {}
    for event in _events(tmp_path / "run" / "events.sqlite"):
        if isinstance(event, Submitted):
            order.setdefault(event.rollout, None)
    db = sqlite3.connect(tmp_path / "run" / "samples.sqlite")
    stored = {r: pickle.loads(d) for r, d in db.execute("SELECT rollout, data FROM samples")}
    db.close()
    assert len(table) == len(order) > len(stored) > 0
    longest = max(len(x["completion"]) for g in stored.values() for x in g)
    for row, rollout in zip(table, order):
        group = stored.get(rollout)
        if group:
            assert row[2:] == (len(group[0]["prompt"]), *(len(x["completion"]) for x in group)), rollout
        else:
            assert row[3:] in {tuple(len(x["completion"]) for x in g) for g in stored.values()} | {(longest,) * 3}, rollout
    assert fit.scenario.workload.replay and fit.scenario.workload.phase_versions == 0


def test_a_run_that_kept_its_cache_over_new_weights_is_simulated_without_re_prefills(tmp_path):
    """``train --keep-cache`` re-prefills nothing at a bump: calibrated, its scenario's
    rollouts run on over an update (``on_update = "run_on"``) and it simulates."""
    pytest.importorskip("torch")
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig

    config = RunConfig(task="reverse", model_size="tiny", steps=8, batch_size=4, group_size=2, max_concurrent=8,
                       max_staleness=2, warmup_steps=3, device="cpu", keep_cache=True)
    train(config, tmp_path / "run", eval_size=0, progress=False)
    fit = calibrate([tmp_path / "run"], lengths_file=tmp_path / "lengths.csv")
    assert fit.scenario.generation.on_update == "run_on"
    assert simulate(fit.scenario.with_overrides(["run.rollouts=40"])).trained_rollouts >= 40


def test_the_runs_at_the_calibrated_setting_are_the_courses_a_simulation_follows(tmp_path, monkeypatch):
    """Two runs at the first run's setting and one at another batch size: the lengths CSV
    holds the two runs' groups (run 0, then run 1), a replay follows one of them as the
    seed picks, and calibrate prints what it chose."""
    pytest.importorskip("torch")
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig
    from sim import servers
    from sim.calibrate import run_groups

    base = RunConfig(task="reverse", model_size="tiny", steps=8, batch_size=4, group_size=3, max_concurrent=8,
                     max_staleness=2, warmup_steps=3, device="cpu")
    for name, config in (("a", base), ("b", RunConfig(**{**base.__dict__, "seed": 1})),
                         ("other", RunConfig(**{**base.__dict__, "batch_size": 2, "max_concurrent": 4}))):
        train(config, tmp_path / name, eval_size=0, progress=False)
    fit = calibrate([tmp_path / "a", tmp_path / "b", tmp_path / "other"], lengths_file=tmp_path / "lengths.csv")
    courses = [run_groups(tmp_path / "a"), run_groups(tmp_path / "b")]
    table = [tuple(map(int, line.split(","))) for line in (tmp_path / "lengths.csv").read_text().splitlines()[1:]]
    assert table == [(k, t, p, *g) for k, course in enumerate(courses) for p, g, t in zip(course.prompts, course.groups, course.trained)]
    assert fit.scenario.workload.replay and fit.replayed == [len(courses[0].groups), len(courses[1].groups)]
    assert "replay of 2 runs' groups in the order submitted" in fit.report()
    starts: list[tuple[int, ...]] = []
    original = servers.Pool.start

    def start(self, server, rollout, prompt, lengths, group):
        drawn = tuple(lengths() for _ in range(group))
        starts.append((prompt, *drawn))
        return original(self, server, rollout, prompt, iter(drawn).__next__, group)

    monkeypatch.setattr(servers.Pool, "start", start)
    for seed in (0, 1, 2):
        starts.clear()
        assert simulate(fit.scenario.with_overrides([f"run.seed={seed}", "run.rollouts=16"])).trained_tokens_per_s > 0
        course = courses[seed % 2]
        assert starts[:10] == [(p, *g) for p, g in zip(course.prompts, course.groups)][:10]


@pytest.mark.slow
def test_the_fidelity_study_runs_small_and_can_be_reanalysed_without_touching_its_runs(tmp_path):
    """benchmarks/fidelity.py end to end on a CPU (tiny model, a few updates): predictions
    are written before the predicted runs (their file is older than those runs' logs);
    ``--reanalyse`` predicts the same runs again into another folder and changes no file
    of the study it reads."""
    pytest.importorskip("torch")
    import hashlib
    from pathlib import Path
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    flags = ["--device", "cpu", "--model-size", "tiny", "--steps", "6", "--batch-size", "4", "--concurrency", "2",
             "--warmup-steps", "2", "--other-batch-size", "8", "--probe-batch-size", "2", "--staleness", "0,4",
             "--repeats", "2", "--sim-seeds", "2", "--checkpoint-every", "0", "--profile-rows", "4,8,16,32"]
    study = tmp_path / "study"
    run = lambda *extra: subprocess.run([sys.executable, "benchmarks/fidelity.py", *flags, *extra], cwd=root,  # noqa: E731
                                        capture_output=True, text=True)
    first = run("--out", str(study))
    assert first.returncode == 0, first.stderr[-2000:]
    results = json.loads((study / "results.json").read_text())
    assert set(results["runs"]) == {"staleness2-calibration", "staleness0", "staleness4", "staleness2-batch8"}
    written = (study / "predictions.json").stat().st_mtime_ns
    # the trainer's update profiled after the calibration runs, before the predictions, and calibrated on;
    # no run wrote a checkpoint after its first, nor did the calibrated scenario charge one
    assert (study / "step_profile.csv").stat().st_mtime_ns < written
    assert "step profile" in (study / "calibration_fit.txt").read_text()
    assert not list(study.glob("staleness*/checkpoints/ckpt-000001.safetensors"))
    from sim.config import load

    assert load(study / "calibrated.toml").training.checkpoint_every == 0
    assert all((study / name / "metrics.jsonl").stat().st_mtime_ns > written
               for name in ("staleness0", "staleness4", "staleness0-r2", "staleness4-r2"))
    from benchmarks.host_trace import read_trace

    assert all(read_trace(study / name / "host_trace.csv") for name in ("calibration", "staleness0", "staleness4-r2"))
    assert not list(study.glob(".*.part"))  # every trace renamed into its run, none left half-written
    # each predicted setting ran twice and is measured by the mean of its two runs; the calibration run once
    summaries = json.loads((study / "summaries.json").read_text())
    for name in ("staleness0", "staleness4", "staleness2-batch8"):
        runs = results["runs"][name]["repeats"]
        assert runs == [summaries[name]["measured"], summaries[f"{name}-r2"]["measured"]]
        assert results["runs"][name]["measured"]["tokens_per_s"] == pytest.approx(sum(r["tokens_per_s"] for r in runs) / 2)
    # each run's answers by the version that started them are its stored samples, six spans of its 6 versions;
    # the study prints each setting's spans as the mean of its runs
    from engine.runtime.store import read_stored

    for name in ("staleness0", "staleness4-r2"):
        spans = summaries[name]["answers_by_version"]
        stored = [(s["versions"][0], len(s["completion"])) for _, samples in read_stored(study / name / "samples.sqlite")
                  for s in samples]
        assert [span["versions"] for span in spans] == [[k, k] for k in range(6)]
        assert sum(span["samples"] for span in spans) == len(stored)
        for k, span in enumerate(spans):
            these = [n for version, n in stored if version == k]
            assert span["mean"] == (pytest.approx(sum(these) / len(these)) if these else None)
    printed = first.stdout.splitlines()
    runs_of = lambda name: results["runs"][name]["repeats"]  # noqa: E731
    at = next(k for k, line in enumerate(printed) if line.startswith("completion tokens a trained sample by the version"))
    line = next(line for line in printed[at:] if line.startswith("  staleness4: "))
    means = [[s[k]["mean"] for s in (summaries["staleness4"]["answers_by_version"], summaries["staleness4-r2"]["answers_by_version"])
              if s[k]["mean"] is not None] for k in range(6)]
    assert line.split()[1:] == [f"{sum(m) / len(m):.1f}" if m else "-" for m in means]
    # each prediction's range over its simulations is written with it, before the runs, and each run is set against it
    predicted = json.loads((study / "predictions.json").read_text())
    spreads = json.loads((study / "predicted_ranges.json").read_text())
    assert (study / "predicted_ranges.json").stat().st_mtime_ns <= written and set(spreads) == set(predicted)
    for name, spread in spreads.items():
        for figure, mean in predicted[name].items():
            assert spread["min"][figure] <= mean <= spread["max"][figure]
    at = next(k for k, line in enumerate(printed) if line.startswith("each setting's range over its simulations"))
    line = next(line for line in printed[at:] if line.startswith("  staleness0: "))
    low, high, found = spreads["staleness0"]["min"]["tokens_per_s"], spreads["staleness0"]["max"]["tokens_per_s"], runs_of("staleness0")
    inside = sum(low <= r["tokens_per_s"] <= high for r in found)
    assert f"tokens_per_s {low:.3g}-{high:.3g} [{found[0]['tokens_per_s']:.3g}, {found[1]['tokens_per_s']:.3g}: {inside}/2 inside]" in line
    # the calibration row is the fit's input alone; its setting's second run is a control, drift reported
    assert "repeats" not in results["runs"]["staleness2-calibration"]
    assert results["runs"]["staleness2-calibration"]["measured"] == summaries["staleness2-calibration"]["measured"]
    (control,) = results["controls"]
    assert control["run"] == "calibration-r2"
    assert control["tokens_per_s"] == summaries["calibration-r2"]["measured"]["tokens_per_s"]
    assert (study / "calibration-r2" / "metrics.jsonl").stat().st_mtime_ns > written
    change = control["tokens_per_s"] / summaries["staleness2-calibration"]["measured"]["tokens_per_s"] - 1
    assert control["tokens_per_s_change_pct"] == pytest.approx(100 * change)
    # each setting's second run against the second round's control, and the same read back from the files
    predicted = json.loads((study / "predictions.json").read_text())
    for name in ("staleness0", "staleness4", "staleness2-batch8"):
        row = results["against_controls"][name]
        assert row["measured_ratios"] == [summaries[f"{name}-r2"]["measured"]["tokens_per_s"] / control["tokens_per_s"]]
        assert row["predicted_ratio"] == pytest.approx(predicted[name]["tokens_per_s"]
                                                       / predicted["staleness2-calibration"]["tokens_per_s"])
    printed = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--against-controls", str(study)], cwd=root,
                             capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert f"staleness4: {results['against_controls']['staleness4']['predicted_ratio']:.3f}" in printed.stdout
    # every run of a predicted setting, and the calibration setting's (the controls too), again with its own decode step
    own = results["own_step"]
    assert set(own["staleness4"]["runs"]) == {"staleness4", "staleness4-r2"}
    assert set(own["staleness2-calibration"]["runs"]) == {"staleness2-calibration", "calibration-r2"}
    printed = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--own-step", str(study)], cwd=root,
                             capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert f"staleness4: {own['staleness4']['predicted_tokens_per_s']:.4g}" in printed.stdout
    # every setting again with the fitted runs' mean decode step at any busy rows; the
    # first calibration run (kept under its setting's name) is one of the fitted runs
    from benchmarks.fidelity import summary_keys

    assert summary_keys(["calibration", "probe-batch2"], list(results["runs"])) == ["staleness2-calibration", "probe-batch2"]
    flat = results["flat_step"]
    assert set(flat) == set(results["runs"]) and len({row["step_s"] for row in flat.values()}) == 1
    fitted = [summaries[name] for name in ("staleness2-calibration", "probe-batch2")]
    steps = [f["decode_steps_per_update"] * f["updates"] for f in fitted]
    means = [f["decode_step_line"]["s_at_no_busy"] + f["decode_step_line"]["s_per_busy"] * f["mean_batch"] for f in fitted]
    assert flat["staleness4"]["step_s"] == pytest.approx(sum(m * w for m, w in zip(means, steps)) / sum(steps))
    printed = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--flat-step", str(study)], cwd=root,
                             capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert f"staleness4 {flat['staleness4']['predicted_tokens_per_s']:.4g}" in printed.stdout

    # the study's tools read it back: each run's staleness histogram has the table's mean,
    # and an update's parts add up to its collect time and its wall time
    from benchmarks.staleness_histogram import measured as histogram
    from benchmarks.update_parts import parts

    for name, directory in (("staleness2-calibration", "calibration"), ("staleness4", "staleness4")):
        counts = histogram(study / directory)
        mean = sum(k * v for k, v in counts.items()) / sum(counts.values())
        assert mean == pytest.approx(summaries[name]["measured"]["staleness_mean"])
    shown = subprocess.run([sys.executable, "benchmarks/staleness_histogram.py", str(study), "--sim-seeds", "1"], cwd=root,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "calibration (max_staleness 2, batch 4)" in shown.stdout, shown.stderr[-2000:]
    split = parts(study / "calibration", skip=1)
    assert split["decode_s"] > 0 and split["prefill_s"] > 0
    assert split["decode_s"] + split["prefill_s"] + split["collect_other_s"] == pytest.approx(split["collect_s"])
    assert split["collect_s"] + split["step_s"] + split["sync_s"] + split["update_other_s"] == pytest.approx(split["wall_s"])

    fingerprint = lambda: {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(study.rglob("*")) if p.is_file()}  # noqa: E731
    before = fingerprint()
    again = run("--out", str(tmp_path / "again"), "--reanalyse", str(study))
    assert again.returncode == 0, again.stderr[-2000:]
    assert fingerprint() == before
    redone = json.loads((tmp_path / "again" / "results.json").read_text())
    assert redone["reanalysis_of"] == str(study)
    assert "AFTER" in (tmp_path / "again" / "table.md").read_text()
    assert redone["controls"] == results["controls"]
    for name, row in results["runs"].items():  # the same runs measured the same way
        assert redone["runs"][name]["measured"] == row["measured"]
        assert redone["runs"][name]["predicted"] == row["predicted"]  # same model, same data: same prediction
    # with no setting flags, the study's own settings (its results.json): the same predictions
    bare = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--out", str(tmp_path / "bare"), "--reanalyse", str(study)],
                          cwd=root, capture_output=True, text=True)
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert "--steps 6" in bare.stdout and "--repeats 2" in bare.stdout and "--staleness 0,4" in bare.stdout
    assert (json.loads((tmp_path / "bare" / "predictions.json").read_text())
            == json.loads((tmp_path / "again" / "predictions.json").read_text()))
    refused = run("--out", str(study), "--reanalyse", str(study))
    assert refused.returncode != 0 and "must differ" in refused.stderr


def test_a_setting_is_compared_with_the_control_of_its_own_round():
    """The machine speeds up by half from round 2 to round 3: the rounds' ratios to their
    controls are unchanged by it, and the error is the predicted ratio over their mean.
    The first round (no control beside it) and settings never run beside one are left out."""
    from benchmarks.fidelity import against_controls

    def run(tokens_per_s):
        return {"measured": {"tokens_per_s": tokens_per_s}}

    predictions = {"staleness2-calibration": {"tokens_per_s": 100.0}, "staleness0": {"tokens_per_s": 25.0},
                   "staleness8": {"tokens_per_s": 110.0}}
    summaries = {"staleness2-calibration": run(90.0), "staleness0": run(50.0), "staleness8": run(99.0),
                 "calibration-r2": run(100.0), "staleness0-r2": run(30.0),
                 "calibration-r3": run(150.0), "staleness0-r3": run(45.0)}
    rows = against_controls(predictions, summaries)
    assert set(rows) == {"staleness0"}
    assert rows["staleness0"]["measured_ratios"] == [pytest.approx(0.3), pytest.approx(0.3)]
    assert rows["staleness0"]["predicted_ratio"] == 0.25
    assert rows["staleness0"]["error_pct"] == pytest.approx(100 * (0.25 / 0.3 - 1))
    assert against_controls({"staleness0": {"tokens_per_s": 1.0}}, summaries) == {}


def test_each_run_is_simulated_again_with_its_own_decode_step(tmp_path):
    """A run whose decode step (at no busy row) is the fitted runs' mean is its prediction
    again; one whose step is 5 ms slower is the scenario with a 5 ms dearer fixed step,
    and slower.  Calibration runs and controls count as the calibration setting's, a
    probe as none."""
    import argparse

    from benchmarks.fidelity import own_step, predict, predict_with, setting_of
    from sim.config import Scenario, save

    per_busy = 2e-5
    scenario = save(Scenario().with_overrides(["generation.step_base_s=0.01", f"generation.step_per_seq_s={per_busy}"]),
                    tmp_path / "calibrated.toml")

    def run(at_no_busy, busy=100.0, staleness=2, batch=4):
        # its line of a step on its busy rows is steeper than the fit's: only its mean step counts
        return {"decode_step_line": {"s_at_no_busy": at_no_busy - per_busy * busy, "s_per_busy": 2 * per_busy},
                "mean_batch": busy, "decode_steps_per_update": 10.0, "updates": 5, "measured": {"tokens_per_s": 1000.0},
                "config": {"max_staleness": staleness, "batch_size": batch}}

    summaries = {"staleness2-calibration": run(0.012), "calibration-2": run(0.008, busy=50.0), "probe-batch2": run(0.010),
                 "staleness0": run(0.010, staleness=0), "staleness0-r2": run(0.015, staleness=0), "calibration-r2": run(0.010)}
    plan = [("staleness2-calibration", 2, 4), ("staleness0", 0, 4)]
    args = argparse.Namespace(steps=6, concurrency=2, group_size=2, seed=0, sim_seeds=2)
    rows = own_step(scenario, summaries, ["staleness2-calibration", "calibration-2", "probe-batch2"], plan, args)
    assert set(rows) == {"staleness2-calibration", "staleness0"}
    assert set(rows["staleness2-calibration"]["runs"]) == {"staleness2-calibration", "calibration-2", "calibration-r2"}
    again = rows["staleness0"]["runs"]
    assert again["staleness0"]["step_shift_s"] == pytest.approx(0.0)
    assert again["staleness0"]["predicted_tokens_per_s"] == pytest.approx(predict(scenario, 0, 4, 6, args)["tokens_per_s"])
    assert again["staleness0-r2"]["step_shift_s"] == pytest.approx(0.005)
    slower = predict_with(scenario, 0, 4, 6, args, ["generation.step_base_s=0.015"])["tokens_per_s"]
    assert again["staleness0-r2"]["predicted_tokens_per_s"] == pytest.approx(slower)
    assert slower < again["staleness0"]["predicted_tokens_per_s"]
    assert again["staleness0-r2"]["error_pct"] == pytest.approx(100 * (slower / 1000.0 - 1))
    names = [name for name, _, _ in plan]
    assert [setting_of(run, names) for run in ("calibration-3", "calibration-r4", "staleness0-r3", "probe-batch2")] == [
        "staleness2-calibration", "staleness2-calibration", "staleness0", None]


@pytest.mark.slow
def test_the_fidelity_study_calibrates_on_several_runs_of_its_setting(tmp_path):
    """``--calibration-runs 2 --probe-batch-size 0``: the calibration setting runs twice
    before any prediction, the fit reads both runs (and no probe), and the table's
    calibration row is the mean of the two; ``--other-batch-size 0`` runs no other batch."""
    pytest.importorskip("torch")
    from pathlib import Path
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    study = tmp_path / "study"
    flags = ["--device", "cpu", "--model-size", "tiny", "--steps", "5", "--batch-size", "4", "--concurrency", "2",
             "--warmup-steps", "2", "--other-batch-size", "0", "--probe-batch-size", "0", "--staleness", "4",
             "--calibration-runs", "2", "--sim-seeds", "1", "--out", str(study)]
    done = subprocess.run([sys.executable, "benchmarks/fidelity.py", *flags], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    written = (study / "predictions.json").stat().st_mtime_ns
    assert all((study / name / "metrics.jsonl").stat().st_mtime_ns < written for name in ("calibration", "calibration-2"))
    assert (study / "staleness4" / "metrics.jsonl").stat().st_mtime_ns > written
    fit_command = (study / "commands.txt").read_text().splitlines()[1]
    assert f"{study / 'calibration'} {study / 'calibration-2'} -o" in fit_command and "probe" not in fit_command
    assert not any(study.glob("probe-*"))
    summaries = json.loads((study / "summaries.json").read_text())
    assert set(json.loads((study / "results.json").read_text())["runs"]) == {"staleness2-calibration", "staleness4"}
    assert not any(study.glob("staleness2-batch*"))
    row = json.loads((study / "results.json").read_text())["runs"]["staleness2-calibration"]
    assert row["repeats"] == [summaries["staleness2-calibration"]["measured"], summaries["calibration-2"]["measured"]]
    assert row["measured"]["tokens_per_s"] == pytest.approx(sum(r["tokens_per_s"] for r in row["repeats"]) / 2)


@pytest.mark.slow
def test_a_study_draws_a_seed_per_round_and_goes_on_where_it_stopped(tmp_path):
    """``--seed-per-round``: calibration run K and round K train with seed K - 1, so the
    second round's control is the second calibration run again (the same answers, the
    same tokens) and is compared with it.  ``--resume`` with more rounds keeps the
    study's runs and its predictions (the same bytes), runs the missing round only and
    refuses a plan its predictions do not cover.  Every run has the machine's probe."""
    pytest.importorskip("torch")
    from pathlib import Path
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    study = tmp_path / "study"
    flags = ["--device", "cpu", "--model-size", "tiny", "--steps", "5", "--batch-size", "4", "--concurrency", "2",
             "--warmup-steps", "2", "--other-batch-size", "8", "--probe-batch-size", "0", "--staleness", "4",
             "--calibration-runs", "2", "--seed-per-round", "--sim-seeds", "1", "--out", str(study)]
    run = lambda *extra: subprocess.run([sys.executable, "benchmarks/fidelity.py", *flags, *extra], cwd=root,  # noqa: E731
                                        capture_output=True, text=True)
    first = run("--repeats", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    seed = lambda name: json.loads((study / name / "run.json").read_text())["seed"]  # noqa: E731
    assert [seed(n) for n in ("calibration", "calibration-2", "staleness4", "staleness2-batch8")] == [0, 1, 0, 0]
    assert not (study / "staleness4-r2").exists()
    predicted = (study / "predictions.json").read_bytes()
    kept = {n: (study / n / "metrics.jsonl").stat().st_mtime_ns for n in ("warmup", "calibration", "calibration-2", "staleness4")}

    commands = (study / "commands.txt").read_bytes()
    refused = run("--repeats", "2", "--resume", "--staleness", "0")
    assert refused.returncode != 0 and "--resume" in refused.stderr and "staleness0" in refused.stderr
    assert (study / "commands.txt").read_bytes() == commands  # a refused resume writes nothing
    again = run("--repeats", "2", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (study / "predictions.json").read_bytes() == predicted
    assert {n: (study / n / "metrics.jsonl").stat().st_mtime_ns for n in kept} == kept
    assert [seed(n) for n in ("calibration-r2", "staleness4-r2", "staleness2-batch8-r2")] == [1, 1, 1]
    assert "--resume" in (study / "commands.txt").read_text().splitlines()[-1]

    summaries = json.loads((study / "summaries.json").read_text())
    results = json.loads((study / "results.json").read_text())
    assert results["runs"]["staleness4"]["repeats"] == [summaries["staleness4"]["measured"], summaries["staleness4-r2"]["measured"]]
    (control,) = results["controls"]
    assert control["same_seed_as"] == "calibration-2"
    twin, other, again_ = summaries["calibration-2"], summaries["staleness2-calibration"], summaries["calibration-r2"]
    assert again_["completion_tokens"] == twin["completion_tokens"] != other["completion_tokens"]
    assert again_["measured"]["tokens_per_update"] == twin["measured"]["tokens_per_update"]
    assert control["tokens_per_s_change_from_it_pct"] == pytest.approx(
        100 * (again_["measured"]["tokens_per_s"] / twin["measured"]["tokens_per_s"] - 1))
    for name in ("calibration", "calibration-2", "staleness4", "calibration-r2", "staleness4-r2"):
        host = summaries["staleness2-calibration" if name == "calibration" else name]["host"]
        assert host["launch_us"] > 0 and host["python_us"] > 0
        assert host["others_on_cores"] is None or host["others_on_cores"] >= 0
    assert "the machine at each run" in again.stdout


def test_lengths_leave_out_what_the_runs_end_censors():
    """A run stops with rollouts in flight, the long ones of their time: only rollouts
    first submitted before the oldest unfinished one are a fair sample of lengths."""
    from sim.calibrate import uncensored

    first = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0, "e": 4.0}
    keep = uncensored(first, ["e", "c"])
    assert [r for r in first if keep(r)] == ["a", "b"]
    assert all(map(uncensored(first, []), first))  # nothing in flight: every rollout counts


def _fair(log):
    """Rollouts first submitted before the oldest one the log leaves unfinished (read
    here from the events, apart from calibration's own reading), and the accepted ones."""
    from engine.core.events import Accepted, Filtered, Rejected, Submitted
    from sim.calibrate import _events

    first: dict[str, float] = {}
    unfinished: set[str] = set()
    accepted: list[str] = []
    for event in _events(log):
        if isinstance(event, Submitted):
            first.setdefault(event.rollout, event.t)
            unfinished.add(event.rollout)
        elif isinstance(event, (Accepted, Rejected, Filtered)):
            unfinished.discard(event.rollout)
            if isinstance(event, Accepted):
                accepted.append(event.rollout)
    horizon = min((first[r] for r in unfinished), default=math.inf)
    keep = lambda rollout: first.get(rollout, -math.inf) < horizon  # noqa: E731
    keep.unfinished, keep.accepted = unfinished, accepted
    return keep


def test_a_logs_lengths_are_the_rollouts_started_before_the_oldest_unfinished(tmp_path):
    from sim.calibrate import observe

    simulate(Scenario().with_overrides(TRUTH + ["run.rollouts=300"]), log=tmp_path / "run.db")
    keep = _fair(tmp_path / "run.db")
    assert keep.unfinished  # the run ended with rollouts in flight
    fair = [r for r in keep.accepted if keep(r)]
    assert 0 < len(fair) < len(keep.accepted)
    assert len(observe(tmp_path / "run.db").lengths) == len(fair)  # one sample per rollout here


@pytest.mark.parametrize(("flag", "value", "least"), [("--repeats", "0", 1), ("--sim-seeds", "0", 1), ("--calibration-runs", "0", 1),
                                                      ("--checkpoint-every", "-1", 0)])
def test_the_fidelity_study_refuses_a_count_below_its_least_by_name(tmp_path, flag, value, least):
    """Before anything runs or is written: no empty table from zero repeats, no
    prediction averaged over zero simulations (``--checkpoint-every 0`` is train's
    "none")."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--device", "cpu", "--out", str(tmp_path / "study"), flag, value],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 2 and f"{flag} must be at least {least}, got {value}" in done.stderr
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("flags, named", [
    (["--fit-on", "calibration,probe-batch9"], "--fit-on: no run probe-batch9"),
    (["--calibration-runs", "2"], "no calibration-2 (--calibration-runs 2)"),
])
def test_a_reanalysis_names_a_run_it_cannot_find_before_it_writes(tmp_path, flags, named):
    """The runs a reanalysis would read are checked first: a missing one is named and
    nothing is written; ``--fit-on`` without ``--reanalyse`` is refused by name."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    study = tmp_path / "study"
    (study / "calibration").mkdir(parents=True)
    (study / "calibration" / "metrics.jsonl").write_text("")
    done = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--reanalyse", str(study), "--out", str(tmp_path / "again"),
                           *flags], cwd=root, capture_output=True, text=True)
    assert done.returncode != 0 and named in done.stderr, done.stderr
    assert not (tmp_path / "again").exists()
    alone = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--out", str(tmp_path / "new"), "--fit-on", "calibration"],
                           cwd=root, capture_output=True, text=True)
    assert alone.returncode == 2 and "--fit-on chooses the runs a reanalysis fits" in alone.stderr
    assert not (tmp_path / "new").exists()


def test_a_trainer_counts_prompts_only_when_its_extra_tokens_are_nearer_the_prompt_than_nothing():
    from sim.calibrate import counts_prompt

    assert not counts_prompt(0.52, 12.0)  # a short run's sampling difference, not a prompt
    assert not counts_prompt(-3.0, 12.0)
    assert counts_prompt(11.4, 12.0) and counts_prompt(6.5, 12.0)
    assert counts_prompt(0.0, None)  # no prompts known: as a trainer that counts them


def test_against_controls_names_a_folder_it_cannot_read_or_that_has_no_rounds(tmp_path):
    import json
    from pathlib import Path
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    show = lambda folder: subprocess.run([sys.executable, "benchmarks/fidelity.py", "--against-controls", str(folder)],  # noqa: E731
                                         cwd=root, capture_output=True, text=True)
    missing = show(tmp_path / "nowhere")
    assert missing.returncode != 0 and f"--against-controls {tmp_path / 'nowhere'}" in missing.stderr
    one_round = tmp_path / "one"
    one_round.mkdir()
    (one_round / "predictions.json").write_text(json.dumps({"staleness2-calibration": {"tokens_per_s": 1.0},
                                                            "staleness0": {"tokens_per_s": 0.5}}))
    (one_round / "summaries.json").write_text(json.dumps({"staleness0": {"measured": {"tokens_per_s": 0.4}}}))
    before = {p.name: p.read_bytes() for p in one_round.iterdir()}
    refused = show(one_round)
    assert refused.returncode != 0 and "no predicted run shares a round with a control" in refused.stderr
    assert {p.name: p.read_bytes() for p in one_round.iterdir()} == before


@pytest.mark.parametrize("flag", ["--own-step", "--flat-step"])
def test_an_analysis_of_a_folder_that_is_no_study_names_what_is_missing(tmp_path, flag):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "benchmarks/fidelity.py", flag, str(tmp_path)], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode != 0 and f"{flag} {tmp_path}" in done.stderr and "predictions.json" in done.stderr
