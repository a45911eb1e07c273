"""A ``rollout-ledger train`` process killed during its warm-up resumes: it has logged
nothing, so the resume warms up again from the run's seed (the same weights as a run
never killed) and trains to the end with nothing lost or counted twice."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from engine.core.events import Checkpoint, Consumed, RunStarted
from engine.log import EventLog, replay

STEPS, BATCH, WARMUP = 2, 4, 60  # a warm-up of about a second: the kill lands well inside it
ARGS = ["--task", "copy", "--device", "cpu", "--model-size", "tiny", "--batch-size", str(BATCH), "--group-size", "2",
        "--max-staleness", "1", "--warmup-steps", str(WARMUP), "--checkpoint-every", "100", "--steps", str(STEPS), "--no-progress"]


def _train(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ROLLOUT_LEDGER_LOG_LEVEL": "info", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "train", *ARGS, "--run-dir", str(run_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _warmed_up(run_dir: Path) -> dict[str, Any]:
    """The checkpoint at version 0 of the run in ``run_dir`` and of the same run never
    killed (set up here, on one thread like the command)."""
    import torch

    from engine.backends.local.checkpoint import load_checkpoint
    from engine.workflows.rl_config import RunConfig
    from engine.workflows.rl_run import RLRun

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = RLRun(RunConfig.saved(run_dir), run_dir.with_name("reference"))
        reference.setup()
        reference.close()
    finally:
        torch.set_num_threads(threads)
    return {name: load_checkpoint(path / "checkpoints", 0) for name, path in (("run", run_dir), ("reference", run_dir.with_name("reference")))}


def test_a_run_killed_during_warmup_resumes_to_the_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = _train(run_dir)
    assert process.stderr is not None
    for line in process.stderr:  # the run says when its warm-up starts
        if json.loads(line).get("event") == "warmup":
            break
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert (run_dir / "run.json").exists()
    assert not (run_dir / "events.sqlite").exists() and not (run_dir / "checkpoints").exists()  # killed before the log began

    resumed = _train(run_dir, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "resume_restarts_warmup" in err and "killed before its first checkpoint" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == STEPS and summary["consumed"] == BATCH * STEPS

    final = replay(run_dir / "events.sqlite")
    assert final.version == STEPS and final.consumed == BATCH * STEPS and final.checkpoint.version == STEPS
    with EventLog(run_dir / "events.sqlite") as log:
        events = list(log.events())
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    assert [e.version for e in events if isinstance(e, Checkpoint)] == [0, STEPS]
    consumed = collections.Counter(r for e in events if isinstance(e, Consumed) for r in e.rollouts)
    assert len(consumed) == BATCH * STEPS and max(consumed.values()) == 1  # none trained twice
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # every update recorded once

    warmed = _warmed_up(run_dir)
    assert _same(warmed["run"], warmed["reference"])  # the warm-up redone from the seed, exactly


def test_a_log_left_empty_by_the_kill_resumes_too(tmp_path: Path) -> None:
    """Killed after the log was created but before its first write (the first checkpoint)."""
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = RunConfig(task="copy", steps=1, batch_size=2, group_size=2, warmup_steps=1, max_staleness=1)
    (run_dir / "run.json").write_text(json.dumps(asdict(config)))
    EventLog(run_dir / "events.sqlite").close()
    summary = train(RunConfig.saved(run_dir), run_dir, resume=True, progress=False)
    assert summary["steps"] == 1 and summary["consumed"] == 2
    assert replay(run_dir / "events.sqlite").checkpoint.version == 1


@pytest.mark.parametrize("later", ["metrics.jsonl", "samples.sqlite", "checkpoints/ckpt-000003.pt"])
def test_a_lost_log_beside_a_started_run_is_refused_not_restarted(tmp_path: Path, later: str) -> None:
    from engine.workflows.rl_config import RunConfig
    from engine.workflows.rl_run import RLRun

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(asdict(RunConfig(task="copy", warmup_steps=1))))
    (run_dir / later).write_text("")
    run = RLRun.resumed(run_dir)
    with pytest.raises(FileNotFoundError, match="its log was lost"):
        run.setup()
    assert sorted(p.name for p in run_dir.iterdir()) == sorted({"run.json", "checkpoints", later.split("/")[0]})


def test_a_new_run_may_take_a_directory_whose_log_is_empty(tmp_path: Path) -> None:
    from engine.workflows.rl_config import refuse_existing_run

    EventLog(tmp_path / "events.sqlite").close()
    refuse_existing_run(tmp_path)  # nothing in it to overwrite
    (tmp_path / "events.sqlite").write_bytes(b"not a log" * 100)
    with pytest.raises(FileExistsError, match="pass --resume"):
        refuse_existing_run(tmp_path)
