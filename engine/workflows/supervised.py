"""Supervised fine-tuning (SFT) on a task's problems, pipelined: each batch's
forward-backward and optimiser step are submitted to the run's work queue, and with
``submit_ahead=1`` batch k+1 is submitted before batch k's results are awaited.

The model is the built-in policy of ``model_size``, or with ``model_dir`` a local
Hugging Face model (then ``task`` may also be ``rg:NAME[:options]`` or ``jsonl:FILE``),
trained on ``device`` (``cuda``: in bfloat16 autocast); the final weights
(``supervised-model.safetensors`` in the artifacts) are a ``train --init`` file for
an RL run of the same model."""

from __future__ import annotations

import random

import torch

from engine.workflow import AwaitFuture, Context, conditional, loop, stage, workflow
from engine.workflows.common import (
    HF_DEFAULTS,
    MODEL_DEFAULTS,
    settings_check,
    InitPolicy,
    Cleanup,
    InitSession,
    SaveCheckpoint,
    SaveWeights,
    answer_logprob,
    chunks,
    every,
    problems,
    sequences,
)


class BuildDataset:
    """``num_examples`` training problems and ``eval_size`` held-out ones."""

    requires = ("task",)
    provides = ("dataset", "eval_set")

    def execute(self, ctx: Context) -> Context:
        task, seed = ctx.get("task"), ctx.setting("seed")
        dataset = task.supervised(random.Random(f"sft:{seed}"), ctx.setting("num_examples"))
        return ctx.put(dataset=dataset, eval_set=problems(task, seed + 7919, 0, ctx.setting("eval_size")))


class SetEpoch:
    """Shuffle the dataset into this epoch's batches."""

    requires = ("dataset", "epochs_index")
    provides = ("batches",)

    def execute(self, ctx: Context) -> Context:
        batches = chunks(ctx.get("dataset"), ctx.setting("batch_size"), f"{ctx.setting('seed')}:{ctx.get('epochs_index')}")
        return ctx.put(batches=batches)


class GetBatch:
    """This batch's padded ``<bos> prompt answer <eos>`` tokens and answer mask (``sft_batch``)."""

    requires = ("model", "tokenizer", "batches_current")
    provides = ("sft_batch",)

    def execute(self, ctx: Context) -> Context:
        pairs = [(p.prompt, p.answer) for p in ctx.get("batches_current")]
        return ctx.put(sft_batch=sequences(ctx.get("tokenizer"), pairs, ctx.get("model").max_seq_len))


class ForwardBackward:
    """Submit the cross-entropy forward-backward of this batch; its future is ``fb_future``."""

    requires = ("model", "sft_batch")
    provides = ("fb_future",)

    def execute(self, ctx: Context) -> Context:
        model = ctx.get("model")
        tokens, mask = ctx.get("sft_batch")

        def forward_backward() -> float:
            model.train()
            loss = -answer_logprob(model, tokens, mask).sum() / mask.sum()
            loss.backward()
            return float(loss.detach())

        return ctx.put(fb_future=ctx.submit(forward_backward))


class SubmitOptimStep:
    """Submit the clipped AdamW step after this batch's backward; its future is ``optim_future``."""

    requires = ("model", "optimizer")
    provides = ("optim_future",)

    def execute(self, ctx: Context) -> Context:
        model, optimizer, clip = ctx.get("model"), ctx.get("optimizer"), ctx.setting("grad_clip")

        def step() -> float:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(norm)

        return ctx.put(optim_future=ctx.submit(step))


class LogStepMetrics:
    """Record this step's loss and gradient norm; count the step."""

    requires = ("fb_future_result", "optim_future_result", "global_step", "epochs_index")
    provides = ("global_step",)

    def execute(self, ctx: Context) -> Context:
        step = ctx.get("global_step") + 1
        return ctx.put(global_step=step).record(step=step, epoch=ctx.get("epochs_index"), loss=ctx.get("fb_future_result"),
                                                 grad_norm=ctx.get("optim_future_result"))


class LogEpochMetrics:
    """Record the mean training loss of the epoch."""

    requires = ("epochs_index",)

    def execute(self, ctx: Context) -> Context:
        epoch = ctx.get("epochs_index")
        losses = [m["loss"] for m in ctx.metrics if m.get("epoch") == epoch and "loss" in m and "step" in m]
        return ctx.record(epoch=epoch, epoch_loss=sum(losses) / max(1, len(losses)))


class Evaluate:
    """Held-out loss (mean answer cross-entropy per token) of the current model."""

    requires = ("model", "tokenizer", "eval_set")
    provides = ("eval_loss",)

    def execute(self, ctx: Context) -> Context:
        model, tokenizer = ctx.get("model"), ctx.get("tokenizer")
        eval_set = ctx.get("eval_set")
        if not eval_set:
            return ctx.put(eval_loss=None)
        tokens, mask = sequences(tokenizer, [(p.prompt, p.answer) for p in eval_set], model.max_seq_len)
        model.eval()
        with torch.no_grad():
            loss = float(-answer_logprob(model, tokens, mask).sum() / mask.sum())
        model.train()
        return ctx.put(eval_loss=loss).record(eval_loss=loss, step=ctx.get("global_step", 0))


WORKFLOW = workflow(
    "supervised",
    stage("init_session", InitSession()),
    stage("build_dataset", BuildDataset()),
    stage("init_policy", InitPolicy()),
    loop(
        "epochs",
        stage("set_epoch", SetEpoch()),
        loop(
            "batches",
            stage("get_batch", GetBatch()),
            stage("forward_backward", ForwardBackward()),
            stage("optim_step", SubmitOptimStep()),
            stage("await_fb", AwaitFuture(), key="fb_future"),
            stage("await_optim", AwaitFuture(), key="optim_future"),
            stage("log_step_metrics", LogStepMetrics()),
            over=lambda ctx: ctx.get("batches"),
            submit_ahead=1,
        ),
        stage("log_epoch_metrics", LogEpochMetrics()),
        conditional(every("save_every", "epochs_index"), stage("checkpoint", SaveCheckpoint()), name="should_checkpoint"),
        conditional(every("eval_every", "epochs_index"), stage("evaluate", Evaluate()), name="should_evaluate"),
        over=lambda ctx: range(ctx.setting("num_epochs")),
        progress=True,
    ),
    stage("save_final", SaveWeights()),
    stage("cleanup", Cleanup(), always=True),
    defaults={**MODEL_DEFAULTS, **HF_DEFAULTS, "num_examples": 256, "batch_size": 32, "num_epochs": 2, "save_every": 1, "eval_every": 1, "eval_size": 64},
    check=settings_check({"num_examples": 1, "batch_size": 1, "num_epochs": 1, "save_every": 0, "eval_every": 0, "eval_size": 0}),
    description="Supervised fine-tuning with pipelined forward-backward and optimiser steps.",
)
