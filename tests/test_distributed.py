"""Distributed runs on the CPU (gloo, 2-3 processes, the tiny model, a few steps):
``train --nproc N [--generators K]`` keeps the ledger's invariants, with one rank it
matches the single-process run's counts exactly, each weight sync to the generators
is logged, and a killed rank stops the run with a line naming it; the resume loses
and double-counts nothing."""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine.backends.distributed.group import Layout, describe
from engine.backends.distributed.launch import cause, how
from engine.backends.distributed.trainer import shard
from engine.core.events import Rejected, Stage, Version
from engine.core.reducer import apply
from engine.core.state import EMPTY
from engine.log import EventLog, replay
from engine.runtime.ports import Sample
from properties.invariants import InvariantChecker
from tests.test_train_crash import assert_each_attempt_started_and_ended_once

ARGS = ["--task", "copy", "--device", "cpu", "--model-size", "tiny", "--batch-size", "4", "--group-size", "2",
        "--max-staleness", "1", "--warmup-steps", "3", "--no-progress", "--dist-timeout", "20"]


def _env():
    return {**os.environ, "ROLLOUT_LEDGER_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1"}


def _train(run_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "train", *ARGS, "--run-dir", str(run_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)


def _finish(process, timeout=240):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def checked_log(path):
    """The log's events, folded one by one under every invariant of the properties."""
    with EventLog(path, mode="r") as log:
        events = list(log.events())
    state, checker = EMPTY, InvariantChecker(full_every=1)
    for event in events:
        state = apply(state, event)
        checker(state, event)
    assert replay(path) == state  # and the replay of the file gives the same state
    return events, state


def _kinds(events):
    return collections.Counter(event.type for event in events)


# -- without processes -------------------------------------------------------------------
def test_each_minibatch_row_goes_to_exactly_one_rank_and_the_shares_add_up():
    samples = [Sample([1], [2, 3], [0.0, 0.0], [0, 0], float(i)) for i in range(10)]
    advantages = torch.arange(10, dtype=torch.float32)
    rows = [list(range(0, 10, 2)), list(range(1, 10, 2))]
    shards = [shard(samples, advantages, rows, rank, 3) for rank in range(3)]
    for part, part_rows in enumerate(rows):
        taken = [mine[int(local)].reward for mine, _, local_rows, _ in shards for local in local_rows[part]]
        assert sorted(taken) == sorted(float(i) for i in part_rows)  # every row once, by one rank
        assert sum(shares[part] for *_, shares in shards) == pytest.approx(1.0)
    for mine, mine_advantages, _, _ in shards:
        assert [s.reward for s in mine] == mine_advantages.tolist()  # advantages follow their samples
    whole = shard(samples, advantages, rows, 0, 1)  # one rank: the whole batch, in its order
    assert whole[0] == samples and whole[2] == rows and whole[3] == [1.0, 1.0]


def test_the_layout_names_ranks_and_refuses_a_world_without_trainers():
    layout = Layout.from_env(1, {"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "2"})
    assert (layout.trainers, layout.generators, layout.is_trainer) == (2, 1, False)
    assert layout.name() == "generator 0 (rank 2)" and describe(1, 2) == "trainer rank 1"
    with pytest.raises(ValueError, match="no trainer rank"):
        Layout.from_env(2, {"RANK": "0", "WORLD_SIZE": "2"})
    assert how(-signal.SIGKILL) == "was killed by SIGKILL" and how(3) == "exited with status 3"
    # the rank killed is the cause, not rank 0 whose collective failed at once, nor one the launcher stopped
    assert cause({0: 1, 1: -signal.SIGKILL, 2: -signal.SIGTERM}, first=0) == (1, -signal.SIGKILL)
    assert cause({0: 1, 2: -signal.SIGTERM}, first=0) == (0, 1)


def test_a_batch_too_small_to_split_among_the_ranks_is_refused_before_any_rank_starts(tmp_path, capsys):
    from engine.cli import main

    assert main(["train", "--batch-size", "3", "--group-size", "2", "--minibatches", "3", "--nproc", "3",
                 "--run-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "rollout-ledger: --nproc 3: a minibatch of 2 samples (batch size x group size / minibatches) cannot give each of 3 trainer ranks a sample"]
    # the per-rank limits max(1, x // ranks) add up to the global ones only for multiples of the ranks
    assert main(["train", "--batch-size", "4", "--nproc", "3", "--run-dir", str(tmp_path / "run")]) == 2
    assert "--batch-size 4 does not split evenly among 3 trainer ranks" in capsys.readouterr().err
    assert main(["train", "--batch-size", "6", "--max-concurrent", "8", "--nproc", "3", "--run-dir", str(tmp_path / "run")]) == 2
    assert "--max-concurrent 8 does not split evenly among 3 trainer ranks" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# -- real runs ------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_rank_matches_the_single_process_run_exactly(tmp_path):
    single = _finish(_train(tmp_path / "single", "--steps", "3"))
    ranked = _finish(_train(tmp_path / "ranked", "--steps", "3", "--nproc", "1"))
    single_events, single_state = checked_log(tmp_path / "single" / "events.sqlite")
    ranked_events, ranked_state = checked_log(tmp_path / "ranked" / "events.sqlite")
    assert _kinds(ranked_events) == _kinds(single_events)
    assert [e.version for e in ranked_events if isinstance(e, Version)] == [1, 2, 3]
    for key in ("steps", "trained_tokens", "consumed", "rejected", "filtered", "running", "ready", "pending"):
        assert ranked[key] == single[key], key
    assert ranked_state.consumed == single_state.consumed == 3 * 4
    metrics = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] for name in ("single", "ranked")]
    for key in ("trained_tokens", "reward", "generated_tokens"):  # the same rollouts, the same updates
        assert [m[key] for m in metrics[0]] == [m[key] for m in metrics[1]], key
    assert [m["loss"] for m in metrics[1]] == pytest.approx([m["loss"] for m in metrics[0]], rel=1e-5)


@pytest.mark.slow
def test_two_trainer_ranks_and_a_generator_keep_the_invariants_and_log_each_weight_sync(tmp_path):
    summary = _finish(_train(tmp_path / "run", "--steps", "3", "--nproc", "2", "--generators", "1"))
    events, state = checked_log(tmp_path / "run" / "events.sqlite")
    assert summary["steps"] == state.version == 3 and state.consumed == 3 * 4  # one batch per version
    syncs = [(e.phase, json.loads(e.detail)["version"]) for e in events if isinstance(e, Stage) and e.path == "weight_sync"]
    assert syncs == [(phase, v) for v in range(4) for phase in ("started", "finished")]  # the first weights, then each bump
    for version in (1, 2, 3):  # each sync follows its version bump and precedes the un-pause, while generation is paused
        bump = next(i for i, e in enumerate(events) if isinstance(e, Version) and e.version == version)
        start = next(i for i, e in enumerate(events) if isinstance(e, Stage) and json.loads(e.detail)["version"] == version)
        unpause = next(i for i, e in enumerate(events) if i > bump and e.type == "unpaused")
        assert bump < start < unpause and events[start].phase == "started" and events[start + 1].phase == "finished"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert [json.loads(line)["overlap_steps"] for line in lines] == [0, 0, 0]  # paused while rank 0 trains (no --overlap)


@pytest.mark.slow
def test_a_generator_rank_decodes_while_rank_0_trains_under_overlap(tmp_path):
    """``--overlap`` with a generator rank: the generator's decode steps go on while rank
    0 trains (``overlap_steps``), each weight sync still runs between the version bump
    and the un-pause, and the log keeps every invariant."""
    summary = _finish(_train(tmp_path / "run", "--steps", "5", "--nproc", "1", "--generators", "1", "--overlap"))
    events, state = checked_log(tmp_path / "run" / "events.sqlite")
    assert summary["steps"] == state.version == 5 and state.consumed == 5 * 4
    for version in range(1, 6):
        bump = next(i for i, e in enumerate(events) if isinstance(e, Version) and e.version == version)
        start = next(i for i, e in enumerate(events) if isinstance(e, Stage) and json.loads(e.detail)["version"] == version)
        unpause = next(i for i, e in enumerate(events) if i > bump and e.type == "unpaused")
        assert bump < start < unpause and events[start + 1].phase == "finished"
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert sum(m["overlap_steps"] for m in metrics) > 0  # without --overlap the generator waits while rank 0 trains: 0


def _rank_pid(launcher_pid, rank):
    """The pid of the worker with ``RANK=rank`` among the launcher's children."""
    for child in subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout.split():
        try:
            environ = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("rank, name, generators", [(1, "trainer rank 1", "0"), (2, "generator 0 (rank 2)", "1")])
def test_a_killed_rank_stops_the_run_naming_it_and_the_resume_loses_nothing(tmp_path, rank, name, generators):
    run_dir = tmp_path / "run"
    process = _train(run_dir, "--steps", "400", "--nproc", "2", "--generators", generators)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()[1][-2000:]}"
    pid = _rank_pid(process.pid, rank)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - killed < 20  # well within --dist-timeout
    assert process.returncode == 1
    assert f"rollout-ledger: {name} was killed by SIGKILL; the run stopped" in err.splitlines()[-1]

    _, at_crash = checked_log(run_dir / "events.sqlite")  # the log replays
    assert 3 <= at_crash.version < 400
    if rank != 2:
        return
    in_flight = at_crash.running
    summary = _finish(_train(run_dir, "--resume", "--requeue-lost", "--steps", str(at_crash.version + 3), "--nproc", "2", "--generators", "1"))
    events, final = checked_log(run_dir / "events.sqlite")
    assert summary["steps"] == final.version == at_crash.version + 3
    assert final.consumed == 4 * final.version  # one batch per version, none trained twice or skipped
    assert_each_attempt_started_and_ended_once(events)
    assert len([e for e in events if isinstance(e, Rejected) and e.reason == "lost"]) == in_flight
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]
    assert len(steps) == len(set(steps))  # no update recorded twice (one the kill cut short has no line, as in one process)


@pytest.mark.slow
def test_a_rank_that_stops_answering_stops_the_run_after_the_timeout_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    process = _train(run_dir, "--steps", "400", "--nproc", "1", "--generators", "1", "--dist-timeout", "3")
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 2) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    pid = _rank_pid(process.pid, 1)
    assert process.poll() is None and pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive, but taking part in nothing
    stopped = time.monotonic()
    try:
        while time.monotonic() - stopped < 20 and process.poll() is None and _rank_pid(process.pid, 0) is not None:
            time.sleep(0.05)
        gone = time.monotonic() - stopped  # rank 0 gave up on the generator
    finally:
        os.kill(pid, signal.SIGCONT)  # so that the launcher's SIGTERM can end it
    _, err = process.communicate(timeout=60)
    assert 3 <= gone < 12
    assert process.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("rollout-ledger: ")]
    assert "generator 0 (rank 1) did not" in lines[0] and "within 3 s" in lines[0]  # rank 0's line names it
    assert "trainer rank 0 exited with status 1; the run stopped" in lines[-1]
    checked_log(run_dir / "events.sqlite")  # and the log replays
