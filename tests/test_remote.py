"""The remote trainer: ``serve-trainer`` in a process of its own, driven over loopback
by :class:`RemoteTrainingClient` (the port's contract suite runs it too, in
tests/test_ports.py).  Killing the server in the middle of a step fails the workflow's
stage with one line naming the trainer and the call; the stage's ``on_error`` decides
what follows, and the log keeps every event before and after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from engine.backends.remote.client import RemoteCallFailed, RemoteTrainerGone, RemoteTrainingClient  # noqa: E402
from engine.cli import main  # noqa: E402
from engine.log import EventLog  # noqa: E402
from engine.core.events import Stage  # noqa: E402
from engine.runtime.ports import Sample  # noqa: E402
from engine.workflow import AwaitFuture, StageFailed, loop, run, stage, workflow  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serve(*options: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve-trainer", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip()
    assert line.startswith("serving the trainer at http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.rsplit(" ", 1)[1]


@pytest.fixture
def server():
    proc, url = _serve("--size", "small", "--seq-len", "256")
    yield proc, url
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _batch(size: int = 48, length: int = 200) -> list[Sample]:
    return [Sample([1, 5 + i % 7], [6 + (i + j) % 9 for j in range(length)], [-2.0] * length, [0] * length, float(i % 2))
            for i in range(size)]


def test_a_served_trainer_trains_in_submission_order_and_reports_a_refused_call_in_one_line(server):
    proc, url = server
    client = RemoteTrainingClient(url)
    small = _batch(4, 8)
    futures = [client.forward_backward(small, [1.0, -1.0, 1.0, -1.0]), client.optim_step(),
               client.forward_backward(small, [1.0, -1.0, 1.0, -1.0]), client.optim_step()]
    assert [f.result(timeout=60)["version"] for f in futures[1::2]] == [1, 2]
    assert client.version == 2
    with pytest.raises(RemoteCallFailed, match=r"forward_backward needs one advantage per sample: 4 samples, 1 advantages$"):
        client.forward_backward(small, [1.0]).result(timeout=60)
    client.close()


def _workflow(client: RemoteTrainingClient, proc: subprocess.Popen, on_error: str):
    batch = _batch()

    def submit(ctx):
        future = client.forward_backward(batch, [1.0 if s.reward else -1.0 for s in batch])
        if ctx.get("steps_index") == 1:
            time.sleep(0.3)  # the request is on the wire or computing
            proc.kill()
        return ctx.put(fb_future=future)

    def optim(ctx):
        return ctx.put(version=client.optim_step().result(timeout=60)["version"])

    return workflow(
        "remote",
        loop("steps",
             stage("submit", submit, provides=["fb_future"]),
             stage("await_fb", AwaitFuture(), key="fb_future", on_error=on_error),
             stage("optim", optim, provides=["version"], on_error=on_error),
             over=lambda ctx: range(3)),
    )


def _stage_events(path) -> list[tuple[str, str]]:
    with EventLog(path) as log:
        return [(e.path, e.phase) for e in log.events() if isinstance(e, Stage)]


def test_killing_the_server_mid_step_halts_the_workflow_with_one_line_and_keeps_the_log(server, tmp_log):
    proc, url = server
    client = RemoteTrainingClient(url)
    with pytest.raises(StageFailed) as failed:
        run(_workflow(client, proc, "halt"), log=str(tmp_log))
    message = str(failed.value)
    assert "\n" not in message and f"remote trainer {url} is gone (forward_backward)" in message, message
    events = _stage_events(tmp_log)
    assert events[-2:] == [("remote/steps[1]/await_fb", "failed"), ("remote", "failed")]
    # the first step is all there: nothing before the kill was lost
    first = [("remote/steps[0]/" + name, phase) for name in ("submit", "await_fb", "optim") for phase in ("started", "finished")]
    assert events[1:7] == first
    assert main(["verify", str(tmp_log)]) == 0
    client.close()


def test_with_skip_the_workflow_goes_on_past_the_dead_trainer_and_logs_each_failure(server, tmp_log):
    proc, url = server
    client = RemoteTrainingClient(url)
    result = run(_workflow(client, proc, "skip"), log=str(tmp_log))
    assert result.state["version"] == 1  # only the first step reached the trainer
    events = _stage_events(tmp_log)
    failures = [path for path, phase in events if phase == "failed"]
    assert failures == [f"remote/steps[{i}]/{name}" for i in (1, 2) for name in ("await_fb", "optim")]
    assert events[-1] == ("remote", "finished")
    client.close()


def test_serve_trainer_refuses_a_bad_model_and_a_bad_port_in_one_line(tmp_path, capsys):
    assert main(["serve-trainer", "--model", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rollout-ledger: ") and "absent" in err
    assert main(["serve-trainer", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_a_client_of_nothing_fails_in_one_line_naming_the_url():
    with pytest.raises(RemoteTrainerGone, match=r"remote trainer http://127.0.0.1:9 is gone \(connect\)"):
        RemoteTrainingClient("http://127.0.0.1:9")
