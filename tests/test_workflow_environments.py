"""The ``environments`` workflow: RL on a single- or multi-turn environment through the
ports, the trainer and environment adapters named by the run's TOML config; an unknown
adapter is refused in one line listing the known ones; the cleanup stage closes the
client after a failure too."""

from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.log import EventLog
from engine.core.events import Segment, Stage
from engine.log import replay
from engine.workflow import StageFailed, run
from engine.workflows.environments import WORKFLOW


def test_a_multi_turn_run_trains_through_the_local_trainer_and_logs_each_step(tmp_log):
    result = run(WORKFLOW, {"env": "guess", "turns": 3, "steps": 2, "group_size": 4}, log=str(tmp_log))
    assert result.state["version"] == 2
    steps = [m for m in result.context.metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    # a multi-turn episode is several samples, one per turn: at least one per episode, at most turns
    assert all(4 <= m["turns"] <= 12 for m in steps)
    with EventLog(tmp_log) as log:
        names = [e.path for e in log.events() if isinstance(e, Stage) and e.phase == "finished"]
    assert names[:2] == ["environments/init_session", "environments/load_envs"] and names[-2:] == ["environments/cleanup", "environments"]
    # the ledger holds each group (group_size episodes of one problem) as a rollout, each
    # round of turns one segment under the version that sampled it
    ledger_path = next(tmp_log.parent.rglob("events.sqlite"))
    with EventLog(ledger_path) as log:
        events = list(log.events())
    segments = [e for e in events if isinstance(e, Segment)]
    # the last step trained group g1: its segments hold exactly its turns' tokens
    assert sum(e.tokens for e in segments if e.rollout == "g1") == sum(len(t.completion) for t in result.state["samples"])
    assert sorted({(e.rollout, e.version) for e in segments}) == [("g0", 0), ("g1", 1)]
    by_rollout = {}
    for e in segments:
        by_rollout.setdefault(e.rollout, []).append(e)
    assert max(len(v) for v in by_rollout.values()) > 1  # some group took several rounds of turns
    state = replay(ledger_path)
    assert state.version == 2 and state.consumed == 2 and state.accepted == 2


def test_a_single_turn_task_environment_runs(tmp_log):
    result = run(WORKFLOW, {"env": "task", "task": "copy", "steps": 1, "group_size": 3}, log=str(tmp_log))
    assert result.state["version"] == 1 and result.state["turns"] == 3


def test_the_remote_trainer_adapter_trains_the_served_policy(tmp_log):
    pytest.importorskip("uvicorn")
    from engine.backends.local.client import LocalTrainingClient
    from engine.backends.local.model import Policy, preset
    from engine.backends.local.tasks import Tokenizer
    from engine.backends.local.trainer import Trainer, TrainerConfig
    from engine.backends.remote.server import serve_in_thread

    tokenizer = Tokenizer()
    served = LocalTrainingClient(Trainer(Policy(preset("tiny", tokenizer.vocab_size, 64)), TrainerConfig(), pad_id=0, device="cpu"))
    server = serve_in_thread(served)
    try:
        result = run(WORKFLOW, {"trainer": "remote", "trainer_url": server.url, "steps": 2, "group_size": 2}, log=str(tmp_log))
        assert result.state["version"] == 2 and served.version == 2
    finally:
        server.stop()


def test_cleanup_closes_the_client_after_a_failure(tmp_log, monkeypatch):
    from engine.backends.local import client as local_client
    from engine.workflows import environments

    closed = []
    monkeypatch.setattr(local_client.LocalTrainingClient, "close", lambda self: closed.append(True))

    def broken(*args, **kwargs):
        raise RuntimeError("trainer exploded")

    monkeypatch.setattr(environments.SubmitOptimStep, "execute", broken)
    with pytest.raises(StageFailed, match="trainer exploded"):
        run(WORKFLOW, {"steps": 1, "group_size": 2}, log=str(tmp_log))
    assert closed == [True]


def test_the_config_names_the_adapters_and_an_unknown_one_is_refused_listing_the_known(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('trainer = "local"\nenv = "guess"\nsteps = 1\ngroup_size = 2\n')
    assert main(["describe", "environments", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "trainer" in out and "guess" in out
    assert main(["run", "environments", "--config", str(config), "--set", "trainer=gpu-farm", "--log", str(tmp_path / "x.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'trainer' must be one of local, remote, got 'gpu-farm'" in err
    assert main(["run", "environments", "--config", str(config), "--set", "env=chess", "--log", str(tmp_path / "y.sqlite")]) == 2
    assert "'env' must be one of guess, task" in capsys.readouterr().err
    assert main(["run", "environments", "--config", str(config), "--log", str(tmp_path / "z.sqlite")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])
