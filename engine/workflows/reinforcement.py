"""The reinforcement workflow (asynchronous RL through the executor and the ledger)
and :func:`train`, which runs it for the ``train`` command and the GPU benchmarks.

The workflow's stages (:mod:`engine.workflows.rl_stages`) spell one update out:
collect a batch, GRPO group advantages, then ``ppo_epochs`` passes over minibatches
of forward-backward and optimiser steps with the trainer's objective and settings
(the decoupled objective, its proximal log-probs by the trainer's rule from a
recomputation under the pre-update weights, or plain PPO), then the version bump
that hands the weights to the generation engine.  A run killed mid-way resumes from
its workflow checkpoint: the ``setup`` stage reopens the RL run from its own log and
checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from engine.core.events import Stage
from engine.log import EventLog
from engine.workflow import conditional, loop, run, stage, workflow
from engine.workflows.common import Cleanup, SaveCheckpoint, every, settings_check
from engine.workflows.rl_config import RunConfig, refuse_existing_run
from engine.workflows.rl_stages import (
    RUN_FIELDS,
    Collect,
    ComputeAdvantages,
    Evaluate,
    EvaluateUpdate,
    FinishUpdate,
    ForwardBackwardPPO,
    LearnedRewardTask,
    LogIteration,
    OptimStepRL,
    PrepareUpdate,
    SaveFinal,
    SetupRun,
    Summarize,
    evaluating,
    evaluation_due,
    needs_update,
)

__all__ = [
    "Collect", "ComputeAdvantages", "DEFAULTS", "Evaluate", "FinishUpdate", "ForwardBackwardPPO", "LearnedRewardTask",
    "LogIteration", "OptimStepRL", "PrepareUpdate", "SaveFinal", "SetupRun", "Summarize", "WORKFLOW", "train",
]

DEFAULTS: dict[str, Any] = {
    **{name: getattr(RunConfig(), name) for name in sorted(RUN_FIELDS)},
    "steps": 4, "batch_size": 4, "group_size": 4, "max_staleness": 1, "warmup_steps": 60, "warmup_batch": 32,
    "ppo_epochs": 1, "eval_size": 0, "eval_every": 0, "run_dir": None, "reward": "task", "resume_run": False, "progress": True,
}


def check_settings(settings: Mapping[str, Any]) -> None:
    """The reinforcement workflow's ``check``: the run's fields as :class:`RunConfig`
    checks them, whole ``ppo_epochs`` (at least 1) and ``eval_size`` (at least 0),
    and a known ``reward``."""
    settings_check({"ppo_epochs": 1, "eval_size": 0, "eval_every": 0})({k: v for k, v in settings.items() if k not in RUN_FIELDS})
    RunConfig.from_json({k: v for k, v in settings.items() if k in RUN_FIELDS})
    if settings.get("reward") not in ("task", "model"):
        raise ValueError(f"'reward' must be 'task' or 'model', got {settings.get('reward')!r}")


WORKFLOW = workflow(
    "reinforcement",
    stage("init_session", SetupRun()),
    conditional(evaluating, stage("evaluate_before", Evaluate(), metric="eval_reward_before"), name="evaluate_first"),
    loop(
        "iterations",
        conditional(
            needs_update,
            stage("get_batch", Collect()),
            stage("compute_advantages", ComputeAdvantages()),
            stage("prepare_update", PrepareUpdate()),
            loop(
                "ppo_epochs",
                loop("minibatches", stage("forward_backward", ForwardBackwardPPO()), stage("optim_step", OptimStepRL()),
                     over=lambda ctx: ctx.get("minibatch_rows")),
                over=lambda ctx: range(ctx.setting("ppo_epochs")),
            ),
            conditional(evaluation_due, stage("evaluate", EvaluateUpdate()), name="evaluate_update"),
            stage("finish_update", FinishUpdate()),
            stage("log_iteration", LogIteration()),
            conditional(every("checkpoint_every", "iterations_index"), stage("checkpoint", SaveCheckpoint()), name="should_checkpoint"),
            name="pending_update",
        ),
        over=lambda ctx: range(ctx.setting("steps")),
    ),
    stage("summary", Summarize()),
    conditional(evaluating, stage("evaluate_after", Evaluate(), metric="eval_reward_after"), name="evaluate_last"),
    stage("save_final", SaveFinal()),
    stage("cleanup", Cleanup(close=("rl_run", "progress_bar"), blocking=True), always=True),
    defaults=DEFAULTS,
    check=check_settings,
    description="Asynchronous RL through the executor and the ledger, with PPO epochs over minibatches.",
)


def _latest_setting(log: Path, key: str) -> Any:
    """Config value ``key`` of the latest start or resume of the workflow recorded in ``log``."""
    value = DEFAULTS[key]
    with EventLog(log, mode="r") as events:
        for event in events.events():
            if isinstance(event, Stage) and event.path == WORKFLOW.name and event.phase == "started":
                value = json.loads(event.detail or "{}").get("config", {}).get(key, value)
    return value


def train(
    config: RunConfig, run_dir: str | Path, *, resume: bool = False, ppo_epochs: int | None = None, eval_size: int = 0,
    eval_every: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Run the reinforcement workflow for ``config`` in ``run_dir`` (the RL run's files
    plus ``workflow.sqlite``, the workflow's log) and return the RL run's summary with
    ``eval_reward_before``/``eval_reward_after`` when ``eval_size`` is set.  Per-update
    figures are in ``run_dir/metrics.jsonl``, with ``eval_reward`` (on ``eval_size``
    held-out problems) every ``eval_every`` updates when both are set.

    With ``resume`` the run continues after its last workflow checkpoint; ``config``
    is then the saved one with its allowed changes (:meth:`RunConfig.saved`), and
    ``ppo_epochs`` defaults to the run's own.  A run with no workflow checkpoint yet
    (or started without this workflow) continues from the RL run's log and checkpoint."""
    run_dir = Path(run_dir)
    log = run_dir / "workflow.sqlite"
    if not resume:
        refuse_existing_run(run_dir)
    resume_workflow = resume and log.exists()
    if ppo_epochs is None:
        ppo_epochs = _latest_setting(log, "ppo_epochs") if resume_workflow else DEFAULTS["ppo_epochs"]
    settings = {**asdict(config), "run_dir": str(run_dir), "ppo_epochs": ppo_epochs, "eval_size": eval_size,
                "eval_every": eval_every, "resume_run": resume, "progress": progress}
    result = run(WORKFLOW, settings, log=log, resume=resume_workflow)
    summary = dict(result.state["rl_summary"])
    for record in result.context.metrics:
        summary.update({k: round(v, 4) for k, v in record.items() if k in ("eval_reward_before", "eval_reward_after")})
    return summary
