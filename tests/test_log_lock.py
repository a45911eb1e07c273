"""One writer per log: a second writer is refused at once, naming the holder; a lock
left by a killed writer is taken over; closing releases it; readers never wait."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.core.config import Config
from engine.core.events import Enqueued, Submitted
from engine.ledger import Ledger
from engine.log import EventLog, LogLocked, replay
from engine.log.lock import lock_path

REPO = Path(__file__).resolve().parents[1]

#: Opens a Ledger on argv[1], appends, says "ready", then waits to be killed.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from engine.core.config import Config
    from engine.core.events import Enqueued
    from engine.ledger import Ledger
    ledger = Ledger(Config(4, 2), path=sys.argv[1], flush_every=1)
    ledger.append(Enqueued("held"))
    print("ready", flush=True)
    time.sleep(600)
    """
)


def _holder(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROLLOUT_LEDGER_LOG_LEVEL": "warning"}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def test_a_second_ledger_in_this_process_is_refused_naming_the_holder(tmp_log):
    first = Ledger(Config(4, 2), path=tmp_log)
    with pytest.raises(LogLocked) as info:
        Ledger(path=tmp_log)
    message = str(info.value)
    assert f"{tmp_log} is open for writing by process {os.getpid()} on host {socket.gethostname()} since " in message
    assert info.value.holder["pid"] == os.getpid()
    with pytest.raises(LogLocked):
        Ledger.resume(tmp_log)
    with pytest.raises(LogLocked):
        EventLog(tmp_log)
    assert replay(tmp_log).events == 0  # readers need no lock (run_started is not flushed yet)
    first.close()
    assert not lock_path(tmp_log).exists()  # closing releases it
    with Ledger(path=tmp_log) as second:  # and the next writer gets it
        assert second.config == Config(4, 2)


def test_a_writer_in_another_process_is_named_then_its_lock_is_taken_over_once_killed(tmp_path):
    path = tmp_path / "run.sqlite"
    child = _holder(path)
    try:
        started = time.monotonic()
        with pytest.raises(LogLocked, match=rf"open for writing by process {child.pid} on host {socket.gethostname()} since 20"):
            Ledger(path=path)
        assert time.monotonic() - started < 5  # refused at once, not after waiting
        assert replay(path).events == 2  # reading while it writes
        holder = json.loads(lock_path(path).read_text())
        assert holder["pid"] == child.pid and holder["host"] == socket.gethostname() and "since" in holder
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert json.loads(lock_path(path).read_text())["pid"] == child.pid  # a dead process's lock file stays ...
    with Ledger(path=path) as ledger:  # ... and is taken over
        assert json.loads(lock_path(path).read_text())["pid"] == os.getpid()
        ledger.append(Submitted("held", 0))
    assert not lock_path(path).exists()
    assert replay(path).running == 1


def test_a_lock_file_naming_a_dead_process_is_taken_over(tmp_log):
    with Ledger(Config(4, 2), path=tmp_log):
        pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    lock_path(tmp_log).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": "2020-01-01T00:00:00+00:00"}))
    with EventLog(tmp_log) as log:
        assert log.lock is not None and log.lock.stale["pid"] == int(dead.stdout)
        log.append([Enqueued("a")])
    assert replay(tmp_log).pending == 1


def test_a_refused_resume_changes_nothing(tmp_path):
    path = tmp_path / "run.sqlite"
    child = _holder(path)
    try:
        before = path.read_bytes(), sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(LogLocked):
            Ledger.resume(path, requeue=True)  # would append a rejected(lost) for ... nothing, but never gets that far
        assert (path.read_bytes(), sorted(p.name for p in tmp_path.iterdir())) == before
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)


def test_a_second_rl_resume_is_refused_before_a_model_is_built(tmp_path, monkeypatch):
    """RLRun takes the log's lock before it builds the model or loads a checkpoint."""
    pytest.importorskip("torch")
    from engine.workflows import rl_run
    from engine.workflows.rl_config import RunConfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = RunConfig(device="cpu", model_size="tiny", batch_size=2, group_size=2)
    holder = Ledger(config.ledger_config(), path=run_dir / "events.sqlite")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the log's lock was taken")

    monkeypatch.setattr(rl_run, "Trainer", no_model)
    try:
        with pytest.raises(LogLocked, match=f"process {os.getpid()}"):
            rl_run.RLRun(config, run_dir, resume=True).setup()
    finally:
        holder.close()


def test_a_second_train_resume_of_a_running_run_is_refused_at_once(tmp_path):
    """A real ``rollout-ledger train`` runs; a second ``train --resume`` of its directory
    exits 2 at once, naming the first (the first one's logs go on untouched)."""
    pytest.importorskip("torch")
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROLLOUT_LEDGER_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1"}
    args = ["--task", "copy", "--device", "cpu", "--model-size", "tiny", "--batch-size", "4", "--group-size", "2",
            "--warmup-steps", "2", "--no-progress", "--run-dir", str(run_dir)]
    first = subprocess.Popen([sys.executable, "-m", "engine.cli", "train", *args, "--steps", "400"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert first.poll() is None, f"the first run ended early: {first.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "the first run logged no update within two minutes"
            time.sleep(0.05)
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "engine.cli", "train", "--resume", "--run-dir", str(run_dir), "--no-progress"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is open for writing by process {first.pid} on host {socket.gethostname()} since" in lines[0]
        assert time.monotonic() - started < 60
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)


def test_train_resume_names_the_running_writer_before_it_reads_a_checkpoint(tmp_path, capsys):
    """The lock is asked first: a checkpoint the running run is replacing (here one that
    is not a checkpoint at all) is not what a refused resume reports."""
    pytest.importorskip("torch")
    from dataclasses import asdict

    from engine.cli import main
    from engine.workflows.rl_config import RunConfig

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    config = RunConfig(device="cpu", model_size="tiny", batch_size=2, group_size=2)
    (run_dir / "run.json").write_text(json.dumps(asdict(config)))
    (run_dir / "checkpoints" / "ckpt-000003.safetensors").write_bytes(b"half a file")
    holder = Ledger(config.ledger_config(), path=run_dir / "events.sqlite")
    try:
        assert main(["train", "--resume", "--run-dir", str(run_dir), "--no-progress"]) == 2
    finally:
        holder.close()
    error = capsys.readouterr().err
    assert f"is open for writing by process {os.getpid()}" in error and "not a checkpoint" not in error
    # without a writer, the same file is what a resume names
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert "ckpt-000003.safetensors: not a checkpoint" in capsys.readouterr().err
