"""Replays (``workload.replay``, ``sim.replay``, ``calibrate --replay``): a real run
simulated again with its own groups, in the order it submitted them, under its own
settings, so that what the simulation gets wrong is the cost model's doing."""

from __future__ import annotations

import json
import pickle
import sqlite3

import pytest

from engine.core.events import Accepted, Consumed, RunStarted, Segment, Submitted, Version
from engine.core.config import Config
from sim.calibrate import CalibrationError, run_groups


def _run_dir(tmp_path, stored: dict[str, list[int]], prompts: dict[str, int], submitted: list[str], made: dict[str, int]):
    """A run directory of a group size 2: its log submits ``submitted`` in that order and
    accepts the rollouts ``stored`` holds (their samples' lengths, in the sample store)."""
    from engine.log import EventLog

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"group_size": 2, "batch_size": 2, "steps": 1, "max_concurrent": 4, "max_staleness": 1,
                                              "policy": "admission"}))
    events: list = [RunStarted(config=Config(max_concurrent=4, batch_size=2, max_staleness=1), t=0.0)]
    events += [Submitted(rollout=rollout, version=k // 2, t=1.0) for k, rollout in enumerate(submitted)]
    events += [Segment(rollout=rollout, version=0, tokens=tokens, t=2.0) for rollout, tokens in made.items()]
    events += [Accepted(rollout=rollout, t=3.0) for rollout in stored]
    events += [Consumed(rollouts=tuple(stored)[:2], t=4.0), Version(version=1, t=5.0)]
    with EventLog(run / "events.sqlite") as log:
        log.append(events)
    db = sqlite3.connect(run / "samples.sqlite")
    db.execute("CREATE TABLE samples (rollout TEXT PRIMARY KEY, data BLOB)")
    for rollout, lengths in stored.items():
        samples = [{"prompt": [1] * prompts[rollout], "completion": [2] * n} for n in lengths]
        db.execute("INSERT INTO samples VALUES (?, ?)", (rollout, pickle.dumps(samples)))
    db.commit()
    db.close()
    return run


def test_a_runs_groups_come_in_the_order_submitted_with_the_unfinished_as_a_finished_group_that_could_be_them(tmp_path) -> None:
    # accepted in another order than submitted; r3 never finished, having made 6 tokens; r4 made one token of a sample only
    run = _run_dir(tmp_path, {"r2": [5, 9], "r1": [3, 4], "r4": [1]}, {"r1": 6, "r2": 10, "r4": 8},
                   ["r1", "r2", "r3", "r4"], {"r1": 7, "r2": 14, "r3": 6, "r4": 1})
    course = run_groups(run)
    # r4: its empty sample counts one; r3: [3, 4] or [5, 9], which make 6 and 13 tokens before their last step
    # (so either could have made r3's 6 and still be running), never r4's [1, 1], which makes none
    assert course.groups[:2] == [[3, 4], [5, 9]] and course.groups[3] == [1, 1]
    assert course.groups[2] in ([3, 4], [5, 9])
    assert run_groups(run) == course  # drawn with a fixed seed
    assert course.prompts == [6, 10, 8, 8]  # r3: the median prompt of the accepted
    assert course.trained == [0, 0, 2, 2]  # submitted under versions 0, 0, 1, 1 of a run of batch 2
    (run / "samples.sqlite").unlink()
    with pytest.raises(CalibrationError, match="no sample store"):
        run_groups(run)


def test_an_unfinished_group_takes_a_finished_group_that_could_have_made_its_tokens_and_still_be_running() -> None:
    """A run's last groups are censored: they had made some tokens and not finished when
    it stopped. One that had only just started takes any finished group, as a policy's
    answers go; one that had made many, only a group whose samples make that many before
    its longest one's last token; one that no finished group could be, the longest length."""
    import random
    from collections import Counter

    from sim.calibrate import unfinished_lengths

    finished = [[2, 2, 2, 60], [10, 10, 10, 10], [1, 1, 1, 3]]
    draw = random.Random(1)
    assert set(Counter(tuple(unfinished_lengths(0, finished, 4, draw)) for _ in range(300))) == {tuple(g) for g in finished}
    # 40 tokens made: [10]*4 makes 36 before its last step, so it would have finished; [2, 2, 2, 60] makes 65
    assert {tuple(unfinished_lengths(40, finished, 4, draw)) for _ in range(50)} == {(2, 2, 2, 60)}
    assert unfinished_lengths(66, finished, 4, draw) == [60, 60, 60, 60]
    # its draws are the given generator's
    assert [unfinished_lengths(5, finished, 4, random.Random(7)) for _ in range(3)] == [unfinished_lengths(5, finished, 4, random.Random(7))] * 3


@pytest.fixture(scope="module")
def cpu_study(tmp_path_factory):
    """A short CPU ``train`` run (``calibration``) and the scenario calibrated on it, in one folder."""
    pytest.importorskip("torch")
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig
    from sim.calibrate import calibrate
    from sim.config import save

    study = tmp_path_factory.mktemp("study")
    config = RunConfig(task="reverse", model_size="tiny", steps=12, batch_size=4, group_size=2, max_concurrent=12,
                       max_staleness=2, warmup_steps=3, device="cpu")
    train(config, study / "calibration", eval_size=0, progress=False)
    fit = calibrate([study / "calibration"], lengths_file=study / "calibrated.lengths.csv")
    save(fit.scenario, study / "calibrated.toml")
    return study, fit


@pytest.mark.slow
def test_replaying_a_cpu_run_reproduces_its_schedule_exactly(cpu_study, capsys) -> None:
    """A real CPU run replayed through the scenario calibrated on it: the built-in engine's
    schedule follows its lengths, not its clock, so the replay consumes the same tokens at
    the same staleness and opens the same prefill passes, update by update; its tokens/s
    error (the cost model's on a shared machine) is printed, not held to a bound.
    ``calibrate --replay`` prints the table."""
    from engine.cli import main
    from sim.replay import measured, metrics_lines, replay, replay_passes

    study, fit = cpu_study
    run = study / "calibration"
    replayed, real = replay(fit.scenario, run), measured(run)
    for name in ("staleness_mean", "staleness_p99", "tokens_per_update", "decode_steps_per_update"):
        assert replayed[name] == pytest.approx(real[name], abs=1e-9), name
    # (a summary's passes also count the one the last update's starts open, which the engine, stopping, never runs)
    lines = metrics_lines(run)
    engine = [line["prefills"] - before["prefills"] for before, line in zip([{"prefills": 0}, *lines], lines)]
    assert [passes for passes, _ in replay_passes(fit.scenario, run)] == engine
    with capsys.disabled():
        print(f"\nreplayed {replayed['tokens_per_s']:.0f} tokens/s, measured {real['tokens_per_s']:.0f}")
    assert main(["calibrate", str(run), "-o", str(study / "again.toml"), "--replay"]) == 0
    out = capsys.readouterr().out
    assert "replayed (simulated/measured" in out and f"{real['staleness_mean']:.4g}/{real['staleness_mean']:.4g} +0.0%" in out


@pytest.mark.slow
def test_padded_replay_fits_the_passes_by_the_shapes_the_replay_opened(cpu_study, tmp_path, monkeypatch, capsys) -> None:
    """benchmarks/padded_replay.py on a study of one CPU run: every update's passes as the
    engine's, the two lines fitted, each run's prefill seconds and the replays both ways."""
    import sys

    from benchmarks import padded_replay

    study, _ = cpu_study
    monkeypatch.setattr(sys, "argv", ["padded_replay.py", str(study), "--fit-on", "calibration", "--out", str(tmp_path / "p.json")])
    padded_replay.main()
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "p.json").read_text())
    updates = len((study / "calibration" / "metrics.jsonl").read_text().splitlines())
    assert results["matched_passes"] == {"calibration": f"{updates}/{updates}"}
    assert set(results["lines"]) == {"tokens", "padded"} and results["prefill_s"]["calibration"]["engine"] > 0
    assert set(results["replay"]["calibration"]) == {"tokens", "padded", "runs"}
    assert "prefill line on the padded tokens" in out
    monkeypatch.setattr(sys, "argv", ["padded_replay.py", str(study), "--fit-on", "nowhere"])
    with pytest.raises(SystemExit):
        padded_replay.main()
    assert "--fit-on: no run at" in capsys.readouterr().err
