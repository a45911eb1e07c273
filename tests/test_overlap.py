"""``train --overlap``: generation goes on in a thread of its own while the trainer
trains, under the same ledger rules.

The engine's decode steps taken between the start of an update and its version bump
(``overlap_steps`` in each metrics line) say whether generation overlapped training:
always 0 without ``--overlap`` (the update pauses the engine), above 0 with it once
the trainer takes long enough for the engine to step (a trainer slowed by a sleep).
Every event of an overlapped run folds under every invariant of the properties, the
capacity recovers after every filtered or rejected rollout, and a resume continues it."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from engine.backends.local.trainer import Trainer
from engine.cli import main
from engine.core.events import Consumed, Filtered, InterruptedBatch, Rejected, Submitted, Version
from engine.core.reducer import apply
from engine.core.state import EMPTY
from engine.log import EventLog
from engine.workflows.rl_loop import RunLoop
from properties.invariants import InvariantChecker, capacity_recovery

ARGS = ["train", "--task", "reverse", "--batch-size", "4", "--group-size", "2", "--max-concurrent", "12",
        "--max-staleness", "2", "--warmup-steps", "3", "--no-progress", "--checkpoint-every", "3"]


@pytest.fixture
def slow_trainer(monkeypatch):
    """Each optimiser step takes 20 ms longer: time in which an overlapping engine steps."""
    step = Trainer.optim_step

    def slowed(self, *args, **kwargs):
        time.sleep(0.02)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "optim_step", slowed)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _checked(path):
    """The log's events folded one by one under every invariant, with capacity recovery
    after each rollout that ended filtered or rejected."""
    with EventLog(path, mode="r") as log:
        events = list(log.events())
    state, checker = EMPTY, InvariantChecker(full_every=1)
    for index, event in enumerate(events):
        state = apply(state, event)
        checker(state, event)
        if isinstance(event, (Filtered, Rejected)):
            capacity_recovery(events[: index + 1], state, event.rollout)
    return events, state


@pytest.mark.parametrize("overlap", [False, True])
def test_the_engine_steps_during_training_only_with_overlap(tmp_path, slow_trainer, overlap):
    run_dir = tmp_path / "run"
    assert main([*ARGS, "--steps", "8", "--run-dir", str(run_dir), *(["--overlap"] if overlap else [])]) == 0
    lines = _metrics(run_dir)
    assert len(lines) == 8
    overlapped = [m["overlap_steps"] for m in lines]
    if overlap:
        assert sum(overlapped) > 0, overlapped
        assert json.loads((run_dir / "run.json").read_text())["overlap"] is True
    else:
        assert overlapped == [0] * 8
    events, state = _checked(run_dir / "events.sqlite")
    assert [e.version for e in events if isinstance(e, Version)] == list(range(1, 9))
    assert state.consumed == 8 * 4 == sum(len(e.rollouts) for e in events if isinstance(e, Consumed))


@pytest.mark.parametrize("overlap", [False, True])
def test_keep_cache_prefills_each_sample_once_and_keeps_the_segments_and_invariants(tmp_path, overlap):
    """``--keep-cache``: after each version's weights the engine decodes on over its cache,
    so a sample's prompt is prefilled once, when it starts (without it, every sample in
    flight at a bump is prefilled again); the log still splits each rollout in flight
    into segments at every bump and folds under every invariant."""
    prefilled, submitted = {}, {}
    for keep in (False, True):
        run_dir = tmp_path / f"keep-{keep}"
        flags = [*(["--keep-cache"] if keep else []), *(["--overlap"] if overlap else [])]
        assert main([*ARGS, "--steps", "6", "--run-dir", str(run_dir), *flags]) == 0
        assert json.loads((run_dir / "run.json").read_text())["keep_cache"] is keep
        events, state = _checked(run_dir / "events.sqlite")
        assert state.version == 6 and state.consumed == 6 * 4
        assert sum(len(e.rollouts) for e in events if isinstance(e, InterruptedBatch)) > 0
        prefilled[keep] = _metrics(run_dir)[-1]["prefill_rows"]
        submitted[keep] = 2 * sum(isinstance(e, Submitted) for e in events)  # --group-size 2
    assert prefilled[True] <= submitted[True] < prefilled[False]


def test_an_overlapped_run_evaluates_and_resumes_under_the_invariants(tmp_path, slow_trainer, capsys):
    run_dir = tmp_path / "run"
    assert main([*ARGS, "--steps", "4", "--run-dir", str(run_dir), "--overlap", "--eval-size", "8", "--eval-every", "2"]) == 0
    assert [m["step"] for m in _metrics(run_dir) if "eval_reward" in m] == [2, 4]
    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--steps", "7", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 7
    assert [m["step"] for m in _metrics(run_dir)] == list(range(1, 8))
    _, state = _checked(run_dir / "events.sqlite")
    assert state.version == 7 and state.consumed == 7 * 4


@pytest.mark.parametrize("extra, message", [
    (["--engine", "vllm", "--model", "MODEL"], "--overlap runs the in-process engines"),
    (["--nproc", "2"], "--overlap with --nproc needs generator ranks (--generators K)"),
    (["--nproc", "2", "--generators", "1"], "--overlap with --generators runs with one trainer rank, got --nproc 2"),
])
def test_overlap_with_engines_or_ranks_it_cannot_drive_is_refused(tmp_path, capsys, extra, message):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    extra = [str(model) if a == "MODEL" else a for a in extra]
    assert main([*ARGS, "--steps", "2", "--run-dir", str(tmp_path / "run"), "--overlap", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_generation_thread_that_cannot_start_or_dies_stops_the_run_instead_of_hanging(tmp_path, monkeypatch, capsys):
    """The thread's setup failing (here: asyncio refusing the loop) is the run's error,
    and a loop whose thread is gone ends the caller's wait with an error."""
    def refuse(loop):
        raise RuntimeError("no loop here")

    monkeypatch.setattr(asyncio, "set_event_loop", refuse)
    assert main([*ARGS, "--steps", "2", "--run-dir", str(tmp_path / "run"), "--overlap"]) == 2
    assert "the generation thread could not start: no loop here" in capsys.readouterr().err
    monkeypatch.undo()

    loop = RunLoop()
    loop.thread = threading.Thread(target=lambda: None)
    loop.thread.start()
    loop.thread.join()  # a thread that ended without running the loop

    async def never():
        await asyncio.sleep(3600)

    waiting = never()
    with pytest.raises(RuntimeError, match="the generation thread ended"):
        loop.run(waiting)
    waiting.close()
    loop.loop.close()


def test_the_proofs_ideal_overlap_leaves_the_evaluations_out(tmp_path):
    """benchmarks/hf_proof.py's ideal overlap: generation is the waits, training the rest
    of the wall time; an update's ``train_s`` runs over its held-out evaluation (which
    ``wall_s`` leaves out), so summing it would count evaluations as training."""
    import json

    from benchmarks.hf_proof import overlap

    run = tmp_path / "sync"
    run.mkdir()
    lines = [  # 2 s of generation and 1 s of update each; the second also evaluated for 5 s
        {"wait_s": 2.0, "train_s": 1.0, "wall_s": 3.0},
        {"wait_s": 2.0, "train_s": 6.0, "wall_s": 6.0, "eval_reward": 0.5},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    generation, training, ideal = overlap(run)
    assert (generation, training) == (4.0, 2.0)
    assert ideal == 1.5


def test_proof_calls_read_together_pair_each_async_run_with_its_own_sync_run(tmp_path):
    """benchmarks/proof_seeds.py on two proof folders: a setting's mean curve is the mean
    over its runs at the updates all evaluated, each asynchronous run is compared with
    the synchronous run of its own folder and seed, and a mean curve's time to a target
    is interpolated between its evaluations."""
    import json

    from benchmarks.proof_seeds import crossing, gather, mean_curve, table

    def proof(name, runs):  # runs: name -> (setting, seed, [(wall, reward), ...] at updates 10, 20)
        folder = tmp_path / name
        for run, (_, _, points) in runs.items():
            (folder / run).mkdir(parents=True)
            lines = [{"step": 10 * (i + 1), "wall_s": w, "eval_reward": r} for i, (w, r) in enumerate(points)]
            (folder / run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        plan = {run: [setting, seed] for run, (setting, seed, _) in runs.items()}
        asyncs = [run for run, (setting, _, _) in runs.items() if setting != "sync"]
        (folder / "results.json").write_text(json.dumps({"plan": plan, "time_to_target_speedup": {r: 2.0 for r in asyncs},
                                                          "final_gap": {r: -0.1 for r in asyncs}}))
        return folder

    first = proof("a", {"sync-seed0": ("sync", 0, [(2.0, 0.4), (4.0, 0.6)]),
                        "async-seed0": ("async-2", 0, [(1.0, 0.3), (2.0, 0.5)])})
    second = proof("b", {"sync-seed0": ("sync", 0, [(4.0, 0.2), (8.0, 0.8)]),
                         "async-seed0": ("async-2", 0, [(1.0, 0.5), (2.0, 0.7)])})
    settings = gather([first, second])
    assert [r["name"] for r in settings["async-2"]] == ["a/async-seed0", "b/async-seed0"]
    assert settings["async-2"][1]["sync"] == [(4.0, 0.2, 10), (8.0, 0.8, 20)]  # its own folder's synchronous run
    assert mean_curve([r["curve"] for r in settings["sync"]]) == [(10, 3.0, pytest.approx(0.3)), (20, 6.0, pytest.approx(0.7))]
    assert crossing([(10, 3.0, 0.3), (20, 6.0, 0.7)], 0.5) == pytest.approx(4.5)
    assert crossing([(10, 3.0, 0.3)], 0.5) is None and crossing([(10, 3.0, 0.6)], 0.5) == 3.0
    shown = table(settings, 0.5)
    assert "against the paired synchronous runs: +0.100 / -0.100" in shown  # (0.4, 0.6) against (0.3, 0.7)
    assert "reaches 0.50 at 1.5 s, 3.00x sooner than sync's" in shown


@pytest.mark.parametrize("flags", [["--seeds", "1,a"], ["--seeds", "2,2"], ["--async-staleness", "4,x"]])
def test_the_proof_refuses_bad_seeds_or_bounds_before_any_run(tmp_path, flags):
    """benchmarks/hf_proof.py names a --seeds or --async-staleness it cannot use and
    starts nothing (no model, no warm-up written)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "benchmarks/hf_proof.py", "--device", "cpu", "--out", str(tmp_path / "proof"), *flags],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 2 and flags[1] in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "proof").exists()
