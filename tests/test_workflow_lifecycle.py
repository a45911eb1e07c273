"""The seed's stage lifecycle in every built-in workflow: ``init_session``, ``get_batch``
and a ``cleanup`` that runs after a failure too; and a run that fails at the stage after
its first checkpoint resumes at that stage (not from the start) and ends with the
counts of a run that was never interrupted."""

from __future__ import annotations

import pytest

from engine.core.events import Stage
from engine.log import EventLog, replay
from engine.workflow import StageFailed, compile_workflow, run
from engine.workflow.dsl import SubworkflowNode
from engine.workflows import BUILTIN, environments, preference, reinforcement, reward_model, supervised

SFT = {"num_examples": 8, "batch_size": 4, "num_epochs": 2, "eval_size": 4}
PAIRS = {"num_pairs": 8, "batch_size": 4, "num_epochs": 2, "eval_size": 4}
RL = {"steps": 2, "batch_size": 2, "group_size": 2, "warmup_steps": 4, "max_new_tokens": 8}


def _rl_counts(result, log):
    summary = result.state["rl_summary"]
    return summary["steps"], summary["consumed"]


def _env_counts(result, log):
    state = replay(next(log.parent.rglob("events.sqlite")))
    return result.state["version"], state.version, state.consumed


def _steps(result, log):
    return result.state["global_step"], sorted(m["step"] for m in result.context.metrics if "loss" in m and "step" in m)


#: name: (config, the stage class to fail and on which call (the stage right after the
#: first checkpoint), the path it fails at, the cleanup stage's path, the counts to compare)
CASES = {
    "supervised": (SFT, supervised.Evaluate, 1, "supervised/epochs[0]/evaluate", "supervised/cleanup", _steps),
    "preference": (PAIRS, preference.EvaluatePreferences, 1, "preference/epochs[0]/evaluate_preferences", "preference/cleanup", _steps),
    "reward_model": (PAIRS, reward_model.EvaluateRewardModel, 1, "reward_model/epochs[0]/evaluate", "reward_model/cleanup", _steps),
    "reinforcement": (RL, reinforcement.Collect, 2, "reinforcement/iterations[1]/get_batch", "reinforcement/cleanup", _rl_counts),
    "rlhf": ({"sft": SFT, "reward": PAIRS, "rl": RL}, reinforcement.Collect, 2, "rlhf/rl/iterations[1]/get_batch", "rlhf/rl/cleanup",
             _rl_counts),
    "environments": ({"steps": 2, "group_size": 2, "turns": 2}, environments.GetBatch, 2, "environments/steps[1]/get_batch",
                     "environments/cleanup", _env_counts),
}


def _stages(log):
    with EventLog(log) as events:
        return [e for e in events.events() if isinstance(e, Stage)]


def _names(node):
    yield getattr(node, "name", None)
    for child in (*getattr(node, "body", ()), *getattr(node, "otherwise", ())):
        yield from _names(child)
    if getattr(node, "workflow", None) is not None:
        yield from _names(node.workflow)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_has_the_lifecycle_stages_with_cleanup_last_and_always(name):
    assert set(CASES) == set(BUILTIN)
    wf = compile_workflow(BUILTIN[name]())
    phases = [node.workflow for node in wf.body if isinstance(node, SubworkflowNode)] or [wf]  # rlhf: each of its phases
    for phase in phases:
        assert {"init_session", "get_batch", "cleanup"} <= set(_names(phase)), phase.name
        assert phase.body[0].name == "init_session"
        assert phase.body[-1].name == "cleanup" and phase.body[-1].always, phase.name


@pytest.mark.parametrize("name", list(CASES))
def test_a_failed_stage_runs_cleanup_and_the_resumed_run_starts_at_it_with_the_uninterrupted_counts(name, tmp_path, monkeypatch):
    config, stage_class, call, failed_path, cleanup_path, counts = CASES[name]
    (tmp_path / "whole").mkdir()
    (tmp_path / "broken").mkdir()
    whole_log, log = tmp_path / "whole" / "run.sqlite", tmp_path / "broken" / "run.sqlite"
    expected = counts(run(BUILTIN[name](), config, log=whole_log), whole_log)

    original, calls = stage_class.execute, []

    def failing(self, ctx):
        calls.append(ctx.path)
        if len(calls) == call:
            raise RuntimeError("injected failure")
        return original(self, ctx)

    if name == "environments":  # an async stage stays async
        async def failing_async(self, ctx):
            calls.append(ctx.path)
            if len(calls) == call:
                raise RuntimeError("injected failure")
            return await original(self, ctx)

        monkeypatch.setattr(stage_class, "execute", failing_async)
    else:
        monkeypatch.setattr(stage_class, "execute", failing)

    with pytest.raises(StageFailed, match="injected failure"):
        run(BUILTIN[name](), config, log=log)
    events = _stages(log)
    failed = next(i for i, e in enumerate(events) if (e.path, e.phase) == (failed_path, "failed"))
    after = [(e.path, e.phase) for e in events[failed:]]
    assert (cleanup_path, "finished") in after  # cleanup ran after the failure

    result = run(BUILTIN[name](), log=log, resume=True)
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint")
    resumed = [e for e in _stages(log)[len(events):] if e.phase == "started"]
    assert resumed[0].path == name  # the workflow (and the phase it is in), then straight to the unfinished stage
    first = next(e.path for e in resumed[1:] if not failed_path.startswith(e.path + "/"))
    assert first == failed_path, [e.path for e in resumed[:4]]
    assert not any(e.path.endswith("/init_session") and e.phase == "started" for e in resumed)  # not from the start
    assert counts(result, log) == expected
