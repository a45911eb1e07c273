"""Kill a real ``rollout-ledger train`` process mid-run and resume it: nothing lost or counted twice."""

import collections
import json
import os
import signal
import subprocess
import sys
import time

from engine.core.events import (
    Accepted,
    Consumed,
    Enqueued,
    Filtered,
    Rejected,
    Submitted,
)
from engine.log import EventLog, replay

ARGS = ["--task", "copy", "--device", "cpu", "--model-size", "tiny", "--batch-size", "4", "--group-size", "2",
        "--max-staleness", "2", "--max-concurrent", "8", "--warmup-steps", "5", "--no-progress"]


def _train(run_dir, *extra):
    env = {**os.environ, "ROLLOUT_LEDGER_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "train", *ARGS, "--run-dir", str(run_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _steps_logged(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_mid_run_then_resume_loses_and_double_counts_nothing(tmp_path):
    run_dir = tmp_path / "run"
    process = _train(run_dir, "--steps", "400")
    deadline = time.monotonic() + 120
    while _steps_logged(run_dir) < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()[1][-2000:]}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    at_crash = replay(run_dir / "events.sqlite")
    in_flight = at_crash.running
    assert 6 <= at_crash.version < 400

    resumed = _train(run_dir, "--resume", "--requeue-lost", "--steps", str(at_crash.version + 6))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == at_crash.version + 6

    final = replay(run_dir / "events.sqlite")
    assert final.version == at_crash.version + 6
    assert final.consumed == 4 * final.version  # one batch per version, none trained twice or skipped
    assert final.checkpoint.version == final.version  # the trainer went on from its checkpoint
    with EventLog(run_dir / "events.sqlite") as log:
        events = list(log.events())
    submitted, endings = assert_each_attempt_started_and_ended_once(events)
    accepted = collections.Counter(e.rollout for e in events if isinstance(e, Accepted))
    assert all(accepted[r] == 1 for e in events if isinstance(e, Consumed) for r in e.rollouts)
    lost = [e.rollout for e in events if isinstance(e, Rejected) and e.reason == "lost"]
    assert len(lost) == in_flight  # every rollout running at the kill was closed as lost ...
    requeued = {e.prompt for e in events if isinstance(e, Enqueued) and e.attempt == 2}
    assert {rollout.split("#")[0] for rollout in lost} <= requeued  # ... and its prompt enqueued again
    first_attempts = [e.prompt for e in events if isinstance(e, Enqueued) and e.attempt == 1]
    assert len(first_attempts) == len(set(first_attempts))  # no prompt enqueued twice as a first attempt
    # every rollout is either finished or still live in the final state: none vanished
    live = set(final.rollouts.keys())
    for rollout in submitted:
        assert rollout in endings or rollout in live
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    assert len(steps) == len(set(steps))  # no update recorded twice


def test_a_checkpoint_ahead_of_the_log_is_discarded_unless_the_log_consumed_its_batch(tmp_path):
    from engine.backends.local.checkpoint import (
        checkpoints,
        load_checkpoint,
        save_checkpoint,
    )
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig
    from engine.workflows.rl_run import RLRun

    run_dir = tmp_path / "run"
    train(RunConfig(task="copy", steps=2, batch_size=2, group_size=2, warmup_steps=1, max_staleness=1), run_dir, progress=False)
    state = load_checkpoint(run_dir / "checkpoints", 2)
    save_checkpoint(run_dir / "checkpoints", 3, {**state, "version": 3}, keep=5)  # trained on a batch the log never consumed

    resumed = RLRun.resumed(run_dir, steps=3)
    resumed.setup()
    try:
        assert resumed.ledger.state.version == 2 and resumed.trainer.version == 2
        assert 3 not in checkpoints(run_dir / "checkpoints")
    finally:
        resumed.close()
    summary = train(RunConfig.saved(run_dir, steps=3), run_dir, resume=True, progress=False)
    assert summary["steps"] == 3 and summary["consumed"] == 6  # the batch is consumed and trained now, once
    final = replay(run_dir / "events.sqlite")
    assert final.version == 3 and final.consumed == 6 and final.checkpoint.version == 3


def test_a_batch_consumed_but_never_trained_is_trained_once_by_the_next_update(tmp_path):
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig
    from engine.workflows.rl_run import RLRun

    run_dir = tmp_path / "run"
    train(RunConfig(task="copy", steps=1, batch_size=2, group_size=2, warmup_steps=1, max_staleness=1), run_dir, progress=False)
    run = RLRun.resumed(run_dir, steps=2)
    run.setup()
    batch = run.collect_batch()  # consumed (close writes the log), then the process stops before training it
    run.close()

    resumed = RLRun.resumed(run_dir, steps=2)
    resumed.setup()
    try:
        again = resumed.collect_batch()  # the next update's batch is the one never trained
        assert again.rollouts == batch.rollouts and again.tokens == batch.tokens
        assert resumed.ledger.state.consumed == 4  # and it is not consumed a second time
    finally:
        resumed.close()
    summary = train(RunConfig.saved(run_dir, steps=2), run_dir, resume=True, progress=False)
    assert summary["steps"] == 2 and summary["consumed"] == 4  # trained by the workflow's update, once
    final = replay(run_dir / "events.sqlite")
    assert final.version == 2 and final.consumed == 4


def assert_each_attempt_started_and_ended_once(events) -> tuple[collections.Counter, collections.Counter]:
    """Every rollout attempt in ``events`` was submitted at most once and ended (consumed,
    rejected or filtered) at most once: nothing ran twice or was counted twice.  Returns
    the counts of submissions and of endings by rollout."""
    submitted = collections.Counter(e.rollout for e in events if isinstance(e, Submitted))
    assert max(submitted.values()) == 1  # every attempt started once
    endings: collections.Counter = collections.Counter()
    for event in events:
        if isinstance(event, (Rejected, Filtered)):
            endings[event.rollout] += 1
        elif isinstance(event, Consumed):
            endings.update(event.rollouts)
    assert max(endings.values()) == 1  # no rollout ended twice (consumed twice, or consumed and rejected)
    return submitted, endings
