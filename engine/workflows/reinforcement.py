"""Asynchronous RL as a workflow, on the steps of :class:`engine.workflows.rl_run.RLRun`.

Rollouts come from the async executor through the run's ledger (``collect``);
the update is spelled out as stages: GRPO group advantages, then ``ppo_epochs``
passes over minibatches of forward-backward and optimiser steps with the trainer's
objective and settings (the decoupled objective, its proximal log-probs by the
trainer's rule from a recomputation under the pre-update weights, or plain PPO),
then the version bump that hands the weights to the generation engine.  A run killed mid-way resumes from its workflow checkpoint: the
``setup`` stage reopens the RL run from its own log and checkpoint.  :func:`train`
runs it for the ``train`` command.

With ``reward = "model"`` the rollouts are scored by the ``reward_model`` in the
state (RLHF) instead of the task's verifier; evaluation always uses the verifier.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from engine.backends.local.checkpoint import save_checkpoint
from engine.backends.local.objectives import decoupled_loss, group_advantages, ppo_loss
from engine.backends.local.tasks import Problem, Task
from engine.backends.local.trainer import pad_samples
from engine.core.events import Checkpoint, Stage
from engine.log import EventLog
from engine.workflow import Context, conditional, loop, stage, workflow
from engine.workflows.common import SaveCheckpoint, every
from engine.workflows.rl_run import RLRun, RunConfig, refuse_existing_run

_RUN_FIELDS = {f.name for f in fields(RunConfig)}

DEFAULTS: dict[str, Any] = {
    **{name: getattr(RunConfig(), name) for name in sorted(_RUN_FIELDS)},
    "steps": 4, "batch_size": 4, "group_size": 4, "max_staleness": 1, "warmup_steps": 60, "warmup_batch": 32,
    "ppo_epochs": 1, "eval_size": 0, "run_dir": None, "reward": "task", "resume_run": False, "progress": True,
}


@dataclass(frozen=True)
class LearnedRewardTask(Task):
    """A task whose rollouts are scored by a learned reward model instead of its verifier."""

    scorer: Callable[[str, str], float] | None = None
    verifier: Task | None = None

    def reward(self, problem: Problem, completion: str) -> float:
        return self.scorer(problem.prompt, completion)  # type: ignore[misc]


@contextlib.contextmanager
def verified(rl: RLRun) -> Iterator[RLRun]:
    """Temporarily score with the task's verifier (for evaluation under a learned reward)."""
    task = rl.task
    rl.task = getattr(task, "verifier", None) or task
    try:
        yield rl
    finally:
        rl.task = task


class SetupRun:
    """Open the RL run (model, warm-up or the ``model`` in the state, ledger, engine,
    executor) in ``run_dir`` (default: under the workflow's artifacts), and its
    progress bar (step, reward, staleness, trained tokens/s; shown when ``progress``).
    With ``resume_run`` a fresh workflow run continues the RL run already in
    ``run_dir`` from its own log and checkpoint."""

    blocking = True
    transient = ("rl_run", "progress_bar")
    provides = ("rl_run", "progress_bar")

    def _open(self, ctx: Context, resume: bool) -> Context:
        settings = {k: v for k, v in ctx.config.items() if k in _RUN_FIELDS}
        run_dir = Path(ctx.setting("run_dir") or ctx.artifacts / ctx.path.rsplit("/", 1)[0].replace("/", "."))
        policy = ctx.get("model", None)
        if policy is not None and settings.get("init") is None:  # start RL from the policy trained before (RLHF)
            run_dir.mkdir(parents=True, exist_ok=True)
            settings["init"] = str(run_dir / "init.pt")
            if not resume:
                torch.save(policy.state_dict(), settings["init"])
        rl = RLRun(RunConfig.from_json(settings), run_dir, resume=resume)
        if ctx.setting("reward") == "model":
            scorer, tokenizer = ctx.get("reward_model"), ctx.get("tokenizer")
            base = rl.task
            rl.task = LearnedRewardTask(base.name, base.make, base.max_prompt, base.max_answer, f"{base.description} (learned reward)",
                                        scorer=lambda prompt, completion: scorer.score(tokenizer, prompt, completion), verifier=base)
        elif ctx.setting("reward") != "task":
            raise ValueError(f"config 'reward' must be 'task' or 'model', got {ctx.setting('reward')!r}")
        rl.setup()
        bar = tqdm(total=rl.config.steps, initial=rl.ledger.state.version, desc="train", disable=not ctx.setting("progress"),
                   file=sys.stderr)
        return ctx.put(rl_run=rl, progress_bar=bar)

    def execute(self, ctx: Context) -> Context:
        return self._open(ctx, resume=ctx.setting("resume_run"))

    def resume(self, ctx: Context) -> Context:
        return self._open(ctx, resume=True)

    def rollback(self, ctx: Context, error: BaseException) -> Context:
        return ctx


class Evaluate:
    """Mean verifier reward of the current weights on ``eval_size`` held-out problems,
    recorded as option ``metric``."""

    blocking = True
    options = {"metric": str}
    requires = ("rl_run",)

    def execute(self, ctx: Context) -> Context:
        with verified(ctx.get("rl_run")) as rl:
            reward = rl.evaluate(ctx.setting("eval_size"))
        return ctx.record(**{ctx.stage_opts.get("metric", "eval_reward"): reward, "step": rl.ledger.state.version})


class Collect:
    """Run rollouts through the async executor until a batch is usable; consume it."""

    blocking = True
    requires = ("rl_run",)
    provides = ("rl_batch",)

    def execute(self, ctx: Context) -> Context:
        return ctx.put(rl_batch=ctx.get("rl_run").collect_batch(), update_started=time.perf_counter())


class ComputeAdvantages:
    """GRPO advantages: each sample's reward against its group's mean and spread."""

    requires = ("rl_batch",)
    provides = ("advantages", "rewards")

    def execute(self, ctx: Context) -> Context:
        groups = ctx.get("rl_batch").groups
        rewards = torch.tensor([[s.reward for s in group] for group in groups], dtype=torch.float32)
        return ctx.put(advantages=group_advantages(rewards).flatten(), rewards=rewards)


class PrepareUpdate:
    """Pause generation, pad the batch, recompute proximal log-probs under the weights
    before the update when the trainer's rule uses them and the update takes more than
    one pass (a single pass's own forward pass is that recomputation), and split the
    rows into ``minibatches``."""

    blocking = True
    requires = ("rl_run", "rl_batch", "advantages")
    provides = ("update_batch", "proximal", "minibatch_rows", "update_stats")

    def execute(self, ctx: Context) -> Context:
        rl = ctx.get("rl_run")
        trainer = rl.trainer
        rl.executor.pause()
        samples = [s for group in ctx.get("rl_batch").groups for s in group]
        batch = pad_samples(samples, trainer.pad_id, trainer.device, trainer.model.config.max_seq_len)
        batch.advantages = ctx.get("advantages").to(trainer.device)
        trainer.model.train()
        parts = min(ctx.setting("minibatches"), len(samples))
        proximal = None
        config = trainer.config
        if config.objective == "decoupled" and config.proximal in ("recompute", "segment") and parts * ctx.setting("ppo_epochs") > 1:
            with torch.no_grad(), trainer.autocast():
                proximal = trainer.model.logprobs(batch.tokens).float()
        rows = [list(range(part, len(samples), parts)) for part in range(parts)]
        return ctx.put(update_batch=batch, proximal=proximal, minibatch_rows=rows, update_stats=())


class ForwardBackwardPPO:
    """The trainer's objective on one minibatch, backpropagated.  Proximal log-probs come
    from the trainer's own rule (``TrainerConfig.proximal``), given the recomputation
    under the pre-update weights and how far through the update this pass is."""

    blocking = True
    requires = ("rl_run", "update_batch", "proximal", "minibatch_rows", "ppo_epochs_index", "minibatches_index")
    provides = ("fb_stats",)

    def execute(self, ctx: Context) -> Context:
        trainer = ctx.get("rl_run").trainer
        config = trainer.config
        batch, parts = ctx.get("update_batch"), len(ctx.get("minibatch_rows"))
        rows = ctx.get("minibatch_rows")[ctx.get("minibatches_index")]
        with trainer.autocast():
            logprobs = trainer.model.logprobs(batch.tokens[rows]).float()
        mask, behaviour, advantages = batch.mask[rows], batch.behaviour[rows], batch.advantages[rows]
        if config.objective == "ppo":
            loss, info = ppo_loss(logprobs, behaviour, advantages, mask, config.clip_eps)
        else:
            progress = (ctx.get("ppo_epochs_index") * parts + ctx.get("minibatches_index")) / (ctx.setting("ppo_epochs") * parts)
            proximal = trainer._proximal(batch, rows, logprobs, ctx.get("proximal"), progress)
            loss, info = decoupled_loss(logprobs, proximal, behaviour, advantages, mask, config.clip_eps, config.behaviour_cap)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return ctx.put(fb_stats={**info, "loss": float(loss.detach())})


class OptimStepRL:
    """Clip and step the trainer's optimiser at its learning rate."""

    blocking = True
    requires = ("rl_run", "fb_stats", "update_stats")
    provides = ("update_stats",)

    def execute(self, ctx: Context) -> Context:
        trainer = ctx.get("rl_run").trainer
        for group in trainer.optimizer.param_groups:
            group["lr"] = trainer.config.lr
        norm = torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.grad_clip)
        trainer.optimizer.step()
        return ctx.put(update_stats=ctx.get("update_stats") + ({**ctx.get("fb_stats"), "grad_norm": float(norm)},))


class FinishUpdate:
    """Bump the version as :meth:`RLRun.update` does after its optimiser step: checkpoint
    the trainer when due, hand the weights to the engine through the executor (the
    ledger advances), make samples and log durable with the checkpoint, resume
    generation, and append the update's metrics to the run's.  Samples and log are
    also written just before the checkpoint file, so that a resume that rolls a
    checkpoint forward finds the batch it was trained on consumed."""

    blocking = True
    requires = ("rl_run", "rl_batch", "update_stats", "rewards")
    provides = ("update_record",)

    def execute(self, ctx: Context) -> Context:
        rl = ctx.get("rl_run")
        trainer, executor, batch = rl.trainer, rl.executor, ctx.get("rl_batch")
        version = trainer.version
        trainer.version += 1
        due = (version + 1) % rl.config.checkpoint_every == 0 or version + 1 >= rl.config.steps
        if due:  # the batch's consumption is durable before the checkpoint that a resume may roll forward to
            rl._write()
        saved = save_checkpoint(rl.ckpt_dir, version + 1, trainer.state_dict()) if due else None
        executor.set_version(trainer.model.state_dict(), rl._recompute)
        if saved is not None:
            executor.timed(rl.ledger.append, Checkpoint(version + 1, str(saved)))
            rl._write()
        executor.resume()
        rl.collector.collect()
        state, stats = rl.ledger.state, ctx.get("update_stats")
        samples = [s for group in batch.groups for s in group]
        staleness = [version - min(s.versions) for s in samples if s.versions]
        record = {
            "step": state.version,
            "reward": float(ctx.get("rewards").mean()),
            "exact": sum(s.reward == 1.0 for s in samples) / max(1, len(samples)),
            "staleness_mean": sum(staleness) / max(1, len(staleness)),
            "staleness_max": max(staleness, default=0),
            "trained_tokens": batch.tokens,
            "wait_s": batch.wait_s,
            "train_s": time.perf_counter() - ctx.get("update_started"),
            "wall_s": rl._wall_offset + time.perf_counter() - rl._started,
            "ledger_s": executor.ledger_seconds,
            "store_s": executor.store_seconds,
            "gc_s": rl.collector.seconds,
            "generated_tokens": rl.engine.decoded_tokens,
            "decode_steps": rl.engine.steps,
            "rejected": state.rejected,
            "filtered": state.filtered,
            **{key: sum(s[key] for s in stats) / len(stats) for key in stats[0]},
        }
        rl.metrics.append(record)
        with open(rl.run_dir / "metrics.jsonl", "a") as out:
            out.write(json.dumps(record) + "\n")
        return ctx.put(update_record=record)


class LogIteration:
    """Record the update's metrics and show them on the progress bar."""

    requires = ("rl_run", "update_record", "progress_bar")

    def execute(self, ctx: Context) -> Context:
        record, bar = ctx.get("update_record"), ctx.get("progress_bar")
        bar.update(record["step"] - bar.n)
        bar.set_postfix(
            reward=f"{record['reward']:.3f}",
            staleness=f"{record['staleness_mean']:.2f}",
            tok_s=f"{sum(m['trained_tokens'] for m in ctx.get('rl_run').metrics) / max(record['wall_s'], 1e-9):.0f}",
        )
        return ctx.record(**record)


class Summarize:
    """Record the RL run's summary (its figures up to the last update) and close the progress bar."""

    blocking = True
    requires = ("rl_run", "progress_bar")
    provides = ("rl_summary",)

    def execute(self, ctx: Context) -> Context:
        ctx.get("progress_bar").close()
        summary = ctx.get("rl_run").summary()
        return ctx.put(rl_summary=summary).record(**summary)


class SaveFinal:
    """Save the final weights and close the RL run."""

    blocking = True
    requires = ("rl_run",)
    provides = ("policy_weights",)

    def execute(self, ctx: Context) -> Context:
        rl = ctx.get("rl_run")
        path = rl.run_dir / "final.pt"
        rl.save_weights(path)
        rl.close()
        return ctx.put(policy_weights=str(path))


def _needs_update(ctx: Context) -> bool:
    """This iteration's update has not happened yet (a resumed RL run may be ahead)."""
    return ctx.get("rl_run").ledger.state.version == ctx.get("iterations_index")


def _evaluating(ctx: Context) -> bool:
    return ctx.setting("eval_size") > 0


WORKFLOW = workflow(
    "reinforcement",
    stage("setup", SetupRun()),
    conditional(_evaluating, stage("evaluate_before", Evaluate(), metric="eval_reward_before"), name="evaluate_first"),
    loop(
        "iterations",
        conditional(
            _needs_update,
            stage("collect", Collect()),
            stage("compute_advantages", ComputeAdvantages()),
            stage("prepare_update", PrepareUpdate()),
            loop(
                "ppo_epochs",
                loop("minibatches", stage("forward_backward", ForwardBackwardPPO()), stage("optim_step", OptimStepRL()),
                     over=lambda ctx: ctx.get("minibatch_rows")),
                over=lambda ctx: range(ctx.setting("ppo_epochs")),
            ),
            stage("finish_update", FinishUpdate()),
            stage("log_iteration", LogIteration()),
            conditional(every("checkpoint_every", "iterations_index"), stage("checkpoint", SaveCheckpoint()), name="should_checkpoint"),
            name="pending_update",
        ),
        over=lambda ctx: range(ctx.setting("steps")),
    ),
    stage("summary", Summarize()),
    conditional(_evaluating, stage("evaluate_after", Evaluate(), metric="eval_reward_after"), name="evaluate_last"),
    stage("save_final", SaveFinal()),
    defaults=DEFAULTS,
    description="Asynchronous RL through the executor and the ledger, with PPO epochs over minibatches.",
)


def _latest_setting(log: Path, key: str) -> Any:
    """Config value ``key`` of the latest start or resume of the workflow recorded in ``log``."""
    value = DEFAULTS[key]
    with EventLog(log) as events:
        for event in events.events():
            if isinstance(event, Stage) and event.path == WORKFLOW.name and event.phase == "started":
                value = json.loads(event.detail or "{}").get("config", {}).get(key, value)
    return value


def train(
    config: RunConfig, run_dir: str | Path, *, resume: bool = False, ppo_epochs: int | None = None, eval_size: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the reinforcement workflow for ``config`` in ``run_dir`` (the RL run's files
    plus ``workflow.sqlite``, the workflow's log) and return the RL run's summary with
    ``eval_reward_before``/``eval_reward_after`` when ``eval_size`` is set.

    With ``resume`` the run continues after its last workflow checkpoint; ``config``
    is then the saved one with its allowed changes (:meth:`RunConfig.saved`), and
    ``ppo_epochs`` defaults to the run's own.  A run with no workflow checkpoint yet
    (or started without this workflow) continues from the RL run's log and checkpoint."""
    from dataclasses import asdict

    from engine.workflow import run

    run_dir = Path(run_dir)
    log = run_dir / "workflow.sqlite"
    if not resume:
        refuse_existing_run(run_dir)
    resume_workflow = resume and log.exists()
    if ppo_epochs is None:
        ppo_epochs = _latest_setting(log, "ppo_epochs") if resume_workflow else DEFAULTS["ppo_epochs"]
    settings = {**asdict(config), "run_dir": str(run_dir), "ppo_epochs": ppo_epochs, "eval_size": eval_size,
                "resume_run": resume, "progress": progress}
    result = run(WORKFLOW, settings, log=log, resume=resume_workflow)
    summary = dict(result.state["rl_summary"])
    for record in result.context.metrics:
        summary.update({k: round(v, 4) for k, v in record.items() if k in ("eval_reward_before", "eval_reward_after")})
    return summary
