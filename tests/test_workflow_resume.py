"""Resuming a workflow from its log: a real run is killed (SIGKILL) mid-stage and
the resumed run starts at the first unfinished stage with the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.cli.workflow import load_workflow
from engine.core.events import Checkpoint, Stage
from engine.log import EventLog
from engine.workflow import ResumeError, run, stage, workflow

REPO = Path(__file__).resolve().parents[1]

WORKFLOW_FILE = textwrap.dedent(
    '''
    """A toy workflow that records every stage it executes and can hang on request."""
    import os
    import time
    from pathlib import Path

    from engine.workflow import loop, stage, workflow

    TRACE = Path(os.environ["TRACE_FILE"])

    def traced(update):
        def execute(ctx):
            with TRACE.open("a") as handle:
                handle.write(ctx.path + "\\n")
            hang_at = os.environ.get("HANG_AT")
            if hang_at == ctx.path:
                Path(os.environ["HANG_MARKER"]).touch()
                time.sleep(120)
            return update(ctx)
        return execute

    WORKFLOW = workflow(
        "toy",
        stage("init", traced(lambda c: c.put(total=1)), provides=["total"]),
        loop(
            "steps",
            stage("add", traced(lambda c: c.put(total=c.get("total") + 10)), requires=["total"], provides=["total"]),
            stage("save", traced(lambda c: c), checkpoint=True),
            stage("work", traced(lambda c: c.put(done=c.get("steps_index")).record(total=c.get("total"))), provides=["done"]),
            over=lambda c: range(c.setting("steps")),
        ),
        stage("final", traced(lambda c: c.put(final=c.get("total"))), provides=["final"]),
        defaults={"steps": 4},
    )
    '''
)


def _events(log: Path) -> list:
    with EventLog(log, mode="r") as events:
        return list(events.events())


@pytest.fixture
def toy(tmp_path, monkeypatch):
    module = tmp_path / "toy_workflow.py"
    module.write_text(WORKFLOW_FILE)
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv("TRACE_FILE", str(trace))
    return module, trace


def test_killed_run_resumes_at_first_unfinished_stage(toy, tmp_path):
    module, trace = toy
    log, marker = tmp_path / "run.sqlite", tmp_path / "hanging"
    env = {**os.environ, "HANG_AT": "toy/steps[2]/work", "HANG_MARKER": str(marker), "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", str(module), "--log", str(log), "--run-id", "first"],
                             env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the run ended before reaching the stage to kill"
            assert time.monotonic() < deadline, "the run never reached the stage to kill"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL

    before = _events(log)
    stages = [(e.path, e.phase) for e in before if isinstance(e, Stage)]
    assert stages[-1] == ("toy/steps[2]/work", "started")  # killed inside it
    assert sum(isinstance(e, Checkpoint) for e in before) == 3
    executed_before = trace.read_text().split()

    trace.write_text("")
    result = run(load_workflow(str(module)), log=log, resume=True)
    executed_after = trace.read_text().split()

    assert executed_before[-1] == "toy/steps[2]/work"
    assert result.resumed_from == "toy/steps[2]/save"
    assert executed_after == ["toy/steps[2]/work", "toy/steps[3]/add", "toy/steps[3]/save", "toy/steps[3]/work", "toy/final"]
    assert result.state["final"] == 41  # 1 + 4 * 10: nothing lost, nothing counted twice
    assert result.run_id == "first"  # the resumed run keeps its id
    assert [m["total"] for m in result.context.metrics] == [11, 21, 31, 41]  # metrics come back with the checkpoint

    after = _events(log)[len(before):]
    resumed = [(e.path, e.phase) for e in after if isinstance(e, Stage)]
    assert resumed[0] == ("toy", "started") and resumed[1] == ("toy/steps[2]/work", "started")
    assert resumed[-1] == ("toy", "finished")


def test_resume_through_the_cli_after_a_failure(toy, tmp_path):
    module, trace = toy
    log = tmp_path / "run.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(module), "--log", str(log), "--set", "steps=3"],
                          env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    again = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(module), "--log", str(log), "--resume"],
                           env=env, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    # resumed after the last checkpoint (steps[2]/save) with the stored config (steps=3)
    assert '"resumed_from": "toy/steps[2]/save"' in again.stdout
    assert len(list(tmp_path.glob("run.sqlite.checkpoints/ckpt-*.pkl"))) == 2  # older checkpoints are pruned
    assert trace.read_text().split()[-2:] == ["toy/steps[2]/work", "toy/final"]


def test_resume_without_checkpoint_starts_over_and_bad_logs_are_refused(tmp_path):
    calls = []
    wf = workflow("w", stage("a", lambda c: calls.append(1) or c.put(a=1), provides=["a"]))
    log = tmp_path / "run.sqlite"
    run(wf, log=log)
    assert run(wf, log=log, resume=True).resumed_from is None and calls == [1, 1]
    with pytest.raises(ResumeError, match="no log to resume"):
        run(wf, log=tmp_path / "missing.sqlite", resume=True)
    with pytest.raises(ResumeError, match="holds no run of workflow 'other'"):
        run(workflow("other", stage("a", lambda c: c)), log=log, resume=True)


def test_checkpoint_refuses_pending_futures_and_unpicklable_state(tmp_path):
    import threading

    from engine.workflow import StageFailed

    gate = threading.Event()
    pending = workflow("w", stage("s", lambda c: c.put(job=c.submit(gate.wait, 10)), provides=["job"], checkpoint=True))
    with pytest.raises(StageFailed, match="cannot checkpoint while future 'job' is pending"):
        try:
            run(pending, log=tmp_path / "a.sqlite")
        finally:
            gate.set()
    lock = workflow("w", stage("s", lambda c: c.put(lock=threading.Lock()), provides=["lock"], checkpoint=True))
    with pytest.raises(StageFailed, match="cannot checkpoint state key\\(s\\) lock"):
        run(lock, log=tmp_path / "b.sqlite")


def test_transient_resources_are_rebuilt_by_resume_hooks_on_their_thread(tmp_path):
    import threading

    from engine.workflow import StageFailed

    made: list[tuple[str, int]] = []

    class OpenResource:
        """Makes an unpicklable resource (a lock) on the stage thread; never checkpointed."""

        blocking = True
        transient = ("lock",)
        provides = ("lock",)

        def execute(self, ctx):
            made.append(("execute", threading.get_ident()))
            return ctx.put(lock=threading.Lock())

        def resume(self, ctx):
            made.append(("resume", threading.get_ident()))
            return ctx.put(lock=threading.Lock())

    class Use:
        blocking = True
        requires = ("lock",)

        def __init__(self, fail: list[bool]) -> None:
            self.fail = fail

        def execute(self, ctx):
            with ctx.get("lock"):
                if self.fail and self.fail.pop():
                    raise RuntimeError("crash")
            return ctx.put(used=threading.get_ident())

    fail = [True]
    wf = workflow("w", stage("open", OpenResource()), stage("count", lambda c: c.put(n=1), provides=["n"], checkpoint=True),
                  stage("use", Use(fail)))
    log = tmp_path / "run.sqlite"
    with pytest.raises(StageFailed, match="crash"):
        run(wf, log=log)
    result = run(wf, log=log, resume=True)
    assert [kind for kind, _ in made] == ["execute", "resume"]
    assert result.resumed_from == "w/count" and result.state["n"] == 1
    assert made[1][1] != threading.get_ident() and result.state["used"] == made[1][1]  # same stage thread


def _has_checkpoint(log: Path, at_least: int = 1) -> bool:
    """Whether the live log of a running process holds ``at_least`` checkpoints yet."""
    return log.exists() and sum(isinstance(e, Checkpoint) for e in _events(log)) >= at_least


def _run_builtin_until_checkpoint(tmp_path: Path, name: str, config: str, log: Path, at_least: int) -> None:
    """Start ``rollout-ledger run NAME`` and SIGKILL it once its log holds ``at_least`` checkpoints."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROLLOUT_LEDGER_LOG_LEVEL": "warning"}
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", name, "--config", config, "--log", str(log)],
                             env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _has_checkpoint(log, at_least):
            assert child.poll() is None, f"the run ended before checkpoint {at_least}"
            assert time.monotonic() < deadline, f"no checkpoint {at_least} within two minutes"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()


def test_killed_supervised_run_resumes_from_its_epoch_checkpoint(tmp_path):
    log = tmp_path / "sft.sqlite"
    config = '{"num_examples": 64, "batch_size": 16, "num_epochs": 200, "eval_size": 16}'
    _run_builtin_until_checkpoint(tmp_path, "supervised", config, log, at_least=1)
    before = _events(log)
    assert ("supervised", "finished") not in [(e.path, e.phase) for e in before if isinstance(e, Stage)]  # killed mid-way
    epoch = sum(isinstance(e, Checkpoint) for e in before) - 1  # checkpoints are taken once per epoch

    result = run(load_workflow("supervised"), {"num_examples": 64, "batch_size": 16, "num_epochs": epoch + 2, "eval_size": 16},
                 log=log, resume=True)
    assert result.resumed_from == f"supervised/epochs[{epoch}]/checkpoint"
    resumed = [e for e in _events(log)[len(before):] if isinstance(e, Stage)]
    assert (resumed[1].path, resumed[1].phase) == (f"supervised/epochs[{epoch}]/evaluate", "started")  # first unfinished stage
    steps = [m["step"] for m in result.context.metrics if "loss" in m and "step" in m]
    assert steps == list(range(1, 4 * (epoch + 2) + 1))  # no step lost or repeated: 4 batches an epoch
    assert result.state["global_step"] == 4 * (epoch + 2)


def test_killed_reinforcement_run_resumes_without_losing_or_repeating_an_update(tmp_path):
    from engine.log import replay

    log = tmp_path / "rl.sqlite"
    config = '{"steps": 6, "batch_size": 4, "group_size": 4, "warmup_steps": 10}'
    _run_builtin_until_checkpoint(tmp_path, "reinforcement", config, log, at_least=2)
    before = _events(log)
    assert ("reinforcement", "finished") not in [(e.path, e.phase) for e in before if isinstance(e, Stage)]
    last = sum(isinstance(e, Checkpoint) for e in before) - 1  # one workflow checkpoint per update

    result = run(load_workflow("reinforcement"), log=log, resume=True)
    assert result.resumed_from == f"reinforcement/iterations[{last}]/checkpoint"
    first = [e for e in _events(log)[len(before):] if isinstance(e, Stage)][1]
    # the first unfinished stage: the next update's get_batch (a later one if the RL run had logged that update)
    assert first.path.endswith("/get_batch") and int(first.path.split("iterations[")[1].split("]")[0]) >= last + 1
    rl_state = replay(tmp_path / "rl.sqlite.artifacts" / "reinforcement" / "events.sqlite")
    assert rl_state.version == 6 and rl_state.consumed == 6 * 4  # every update once: none lost, none repeated
    assert result.state["rl_summary"]["steps"] == 6
