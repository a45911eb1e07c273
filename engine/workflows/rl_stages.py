"""The stages of the reinforcement workflow: one RL update, step by step, on an
:class:`~engine.workflows.rl_run.RLRun` and its trainer.

``setup`` opens the run; each iteration collects a batch through the executor
(``collect``), computes GRPO advantages, pauses generation and prepares the update
(padding, the proximal recomputation when the trainer's rule needs one, the
minibatches), runs ``forward_backward`` and ``optim_step`` per minibatch and epoch,
and ends with ``finish_update`` (version bump, checkpoint, weights to the engine,
metrics).  Every stage goes through the public steps of the run and the trainer;
the order of an update's writes is :meth:`RLRun.finish_update`'s.  This is the only
update path: the ``train`` command and the GPU benchmarks run these stages.

With ``reward = "model"`` the rollouts are scored by the ``reward_model`` in the
state (RLHF) instead of the task's verifier; evaluation always uses the verifier.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from engine.backends.local.checkpoint import save_weights
from engine.backends.local.objectives import group_advantages
from engine.backends.local.tasks import Problem, Task
from engine.workflow import Context
from engine.workflows.rl_config import RunConfig
from engine.workflows.rl_run import RLRun

RUN_FIELDS = frozenset(f.name for f in fields(RunConfig))


@dataclass(frozen=True)
class LearnedRewardTask(Task):
    """A task whose rollouts are scored by a learned reward model instead of its verifier."""

    scorer: Callable[[str, str], float] | None = None
    verifier: Task | None = None

    def reward(self, problem: Problem, completion: str) -> float:
        if self.scorer is None:
            raise ValueError("a LearnedRewardTask needs a scorer (the reward model's scoring function)")
        return self.scorer(problem.prompt, completion)


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
        settings = {k: v for k, v in ctx.config.items() if k in RUN_FIELDS}
        run_dir = Path(ctx.setting("run_dir") or ctx.artifacts / ctx.path.rsplit("/", 1)[0].replace("/", "."))
        policy = ctx.get("model", None)
        if policy is not None and settings.get("init") is None:  # start RL from the policy trained before (RLHF)
            run_dir.mkdir(parents=True, exist_ok=True)
            settings["init"] = str(run_dir / "init.safetensors")
            if not resume:
                save_weights(settings["init"], policy.state_dict())
        rl = RLRun(RunConfig.from_json(settings), run_dir, resume=resume)
        if ctx.setting("reward") == "model":
            scorer, tokenizer = ctx.get("reward_model"), ctx.get("tokenizer")
            base = rl.task
            rl.task = LearnedRewardTask(base.name, base.make, base.max_prompt, base.max_answer, f"{base.description} (learned reward)",
                                        scorer=lambda prompt, completion: scorer.score(tokenizer, prompt, completion), verifier=base)
        elif ctx.setting("reward") != "task":
            raise ValueError(f"config 'reward' must be 'task' or 'model', got {ctx.setting('reward')!r}")
        rl.setup()
        bar = tqdm(total=rl.config.steps, initial=rl.version, desc="train", disable=not ctx.setting("progress"), file=sys.stderr)
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
        return ctx.record(**{ctx.stage_opts.get("metric", "eval_reward"): reward, "step": rl.version})


class EvaluateUpdate:
    """Every ``eval_every`` updates: the held-out reward of the weights the update just
    trained (the version it is about to become), for its metrics line (``eval_reward``);
    generation is paused meanwhile and the time is left out of the run's clock."""

    blocking = True
    requires = ("rl_run",)
    provides = ("held_out",)

    def execute(self, ctx: Context) -> Context:
        with verified(ctx.get("rl_run")) as rl:
            reward = rl.evaluate(ctx.setting("eval_size"))
        return ctx.put(held_out=reward)


def evaluation_due(ctx: Context) -> bool:
    """Whether this update's held-out reward is measured: ``eval_every`` set, ``eval_size``
    above 0, and the update's number (from 1) a multiple of ``eval_every``."""
    period = ctx.setting("eval_every")
    return bool(period) and ctx.setting("eval_size") > 0 and ctx.get("rl_run").trainer.version % period == period - 1


class Collect:
    """The batch of the next update (rollouts through the async executor until one is
    usable, or after a resume the batch consumed but never trained); consumed."""

    blocking = True
    requires = ("rl_run",)
    provides = ("rl_batch",)

    def execute(self, ctx: Context) -> Context:
        return ctx.put(rl_batch=ctx.get("rl_run").collect_batch())


class ComputeAdvantages:
    """GRPO advantages: each sample's reward against its group's mean and spread."""

    requires = ("rl_batch",)
    provides = ("advantages", "rewards")

    def execute(self, ctx: Context) -> Context:
        groups = ctx.get("rl_batch").groups
        rewards = torch.tensor([[s.reward for s in group] for group in groups], dtype=torch.float32)
        return ctx.put(advantages=group_advantages(rewards).flatten(), rewards=rewards)


class PrepareUpdate:
    """Pause generation and prepare the update (:meth:`Trainer.prepare_update`): pad
    the batch, recompute proximal log-probs under the pre-update weights when the
    trainer's rule uses them and the update takes more than one step
    (:meth:`Trainer.needs_recompute`), and split the rows into ``minibatches``."""

    blocking = True
    requires = ("rl_run", "rl_batch", "advantages")
    provides = ("prepared_update", "update_batch", "proximal", "minibatch_rows", "update_stats")

    def execute(self, ctx: Context) -> Context:
        trainer = ctx.get("rl_run").begin_update()
        prepared = trainer.prepare_update(ctx.get("rl_batch").samples, ctx.get("advantages"), epochs=ctx.setting("ppo_epochs"))
        return ctx.put(prepared_update=prepared, update_batch=prepared.batch, proximal=prepared.proximal,
                       minibatch_rows=prepared.rows, update_stats=())


class ForwardBackwardPPO:
    """The trainer's objective on one minibatch of one epoch, backpropagated
    (:meth:`Trainer.forward_backward`: proximal log-probs by the trainer's own rule)."""

    blocking = True
    requires = ("rl_run", "prepared_update", "ppo_epochs_index", "minibatches_index")
    provides = ("fb_stats",)

    def execute(self, ctx: Context) -> Context:
        trainer = ctx.get("rl_run").trainer
        stats = trainer.forward_backward(ctx.get("prepared_update"), ctx.get("ppo_epochs_index"), ctx.get("minibatches_index"))
        return ctx.put(fb_stats=stats)


class OptimStepRL:
    """Clip and step the trainer's optimiser at its learning rate (:meth:`Trainer.optim_step`)."""

    blocking = True
    requires = ("rl_run", "fb_stats", "update_stats")
    provides = ("update_stats",)

    def execute(self, ctx: Context) -> Context:
        norm = ctx.get("rl_run").trainer.optim_step()
        return ctx.put(update_stats=ctx.get("update_stats") + ({**ctx.get("fb_stats"), "grad_norm": norm},))


class FinishUpdate:
    """Bump the version and write the update down (:meth:`RLRun.finish_update`: the
    batch's consumption durable before the checkpoint a resume may roll forward to,
    then the checkpoint, the version through the executor, generation resumed, the
    metrics line)."""

    blocking = True
    requires = ("rl_run", "rl_batch", "update_stats", "rewards")
    provides = ("update_record",)

    def execute(self, ctx: Context) -> Context:
        rl = ctx.get("rl_run")
        record = rl.finish_update(ctx.get("rl_batch"), ctx.get("update_stats"), float(ctx.get("rewards").mean()),
                                  held_out=ctx.get("held_out", None))
        return ctx.put(update_record=record, held_out=None)


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
    """Save the final weights (the ``cleanup`` stage closes the RL run)."""

    blocking = True
    requires = ("rl_run",)
    provides = ("policy_weights",)

    def execute(self, ctx: Context) -> Context:
        rl = ctx.get("rl_run")
        path = rl.run_dir / "final.safetensors"
        rl.save_weights(path)
        return ctx.put(policy_weights=str(path))


def needs_update(ctx: Context) -> bool:
    """This iteration's update has not happened yet (a resumed RL run may be ahead)."""
    return ctx.get("rl_run").version == ctx.get("iterations_index")


def evaluating(ctx: Context) -> bool:
    """Whether held-out evaluation is asked for (``eval_size > 0``)."""
    return ctx.setting("eval_size") > 0
