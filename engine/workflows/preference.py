"""Direct Preference Optimisation (DPO) against a frozen reference model.

Preference pairs come from a verifiable task: the chosen answer is the correct
one, the rejected answer a corrupted copy that the verifier scores lower.  The
loss is ``-log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))``.
"""

from __future__ import annotations

import copy
import random
from typing import Sequence

import torch
import torch.nn.functional as F

from engine.backends.local.model import Policy
from engine.backends.local.tasks import Task, Tokenizer, char_reward
from engine.workflow import Context, conditional, loop, stage, workflow
from engine.workflows.common import (
    MODEL_DEFAULTS,
    settings_check,
    InitPolicy,
    Cleanup,
    InitSession,
    LogStepStats,
    OptimStep,
    SaveCheckpoint,
    SaveWeights,
    answer_logprob,
    chunks,
    every,
    problems,
    sequences,
)

CORRUPTION = "abcdefgh"


def corrupt(answer: str, rng: random.Random) -> str:
    """A worse answer than ``answer``: one character replaced, or the last one dropped."""
    if len(answer) > 1 and rng.random() < 0.3:
        return answer[:-1]
    position = rng.randrange(len(answer)) if answer else 0
    wrong = rng.choice([c for c in CORRUPTION if answer[position : position + 1] != c])
    return answer[:position] + wrong + answer[position + 1 :]


def preference_pairs(task: Task, seed: int, start: int, count: int) -> list[tuple[str, str, str]]:
    """``(prompt, chosen, rejected)`` triples where the verifier prefers ``chosen``."""
    rng = random.Random(f"pairs:{seed}:{start}")
    pairs = []
    for problem in problems(task, seed, start, count):
        rejected = corrupt(problem.answer, rng)
        assert char_reward(problem.answer, rejected) < char_reward(problem.answer, problem.answer)
        pairs.append((problem.prompt, problem.answer, rejected))
    return pairs


class LoadPreferenceData:
    """``num_pairs`` training pairs and ``eval_size`` held-out pairs."""

    requires = ("task",)
    provides = ("pairs", "eval_pairs")

    def execute(self, ctx: Context) -> Context:
        task, seed = ctx.get("task"), ctx.setting("seed")
        return ctx.put(pairs=preference_pairs(task, seed, 0, ctx.setting("num_pairs")),
                       eval_pairs=preference_pairs(task, seed + 7919, 0, ctx.setting("eval_size")))


class InitReference:
    """A frozen copy of the policy as it starts: the DPO reference."""

    requires = ("model",)
    provides = ("reference",)

    def execute(self, ctx: Context) -> Context:
        reference = copy.deepcopy(ctx.get("model")).eval()
        for parameter in reference.parameters():
            parameter.requires_grad_(False)
        return ctx.put(reference=reference)


class SetEpoch:
    """Shuffle the pairs into this epoch's batches."""

    requires = ("pairs", "epochs_index")
    provides = ("batches",)

    def execute(self, ctx: Context) -> Context:
        return ctx.put(batches=chunks(ctx.get("pairs"), ctx.setting("batch_size"), f"dpo:{ctx.setting('seed')}:{ctx.get('epochs_index')}"))


#: Padded chosen and rejected sequences of a batch of pairs, each ``(tokens, mask)``.
PairTensors = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def pair_tensors(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str, str]], width: int) -> PairTensors:
    """Chosen and rejected sequences of ``pairs`` (each ``(tokens, mask)``)."""
    chosen = sequences(tokenizer, [(p, c) for p, c, _ in pairs], width)
    rejected = sequences(tokenizer, [(p, r) for p, _, r in pairs], width)
    return chosen, rejected


class GetPreferenceBatch:
    """Padded chosen and rejected sequences of the current batch."""

    requires = ("tokenizer", "model", "batches_current")
    provides = ("preference_batch",)

    def execute(self, ctx: Context) -> Context:
        width = ctx.get("model").config.max_seq_len
        return ctx.put(preference_batch=pair_tensors(ctx.get("tokenizer"), ctx.get("batches_current"), width))


def dpo_terms(model: Policy, reference: Policy, batch: PairTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit reward margins ``(log pi - log ref)(chosen) - (...)(rejected)`` per pair, and the
    chosen-minus-rejected policy log-ratio alone (for monitoring)."""
    (chosen, chosen_mask), (rejected, rejected_mask) = batch
    with torch.no_grad():
        ref_chosen = answer_logprob(reference, chosen, chosen_mask)
        ref_rejected = answer_logprob(reference, rejected, rejected_mask)
    pi_chosen = answer_logprob(model, chosen, chosen_mask)
    pi_rejected = answer_logprob(model, rejected, rejected_mask)
    return (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected), pi_chosen - pi_rejected


class ForwardBackwardDPO:
    """The DPO loss of the batch, backpropagated."""

    requires = ("model", "reference", "preference_batch")
    provides = ("dpo_stats",)

    def execute(self, ctx: Context) -> Context:
        model = ctx.get("model")
        model.train()
        margins, _ = dpo_terms(model, ctx.get("reference"), ctx.get("preference_batch"))
        beta = ctx.setting("beta")
        loss = -F.logsigmoid(beta * margins).mean()
        loss.backward()
        stats = {"loss": float(loss.detach()), "accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean().detach() * beta)}
        return ctx.put(dpo_stats=stats)


class EvaluatePreferences:
    """Held-out preference accuracy: how often the policy's implicit reward ranks the
    verifier's choice first, and how often the policy itself finds it likelier."""

    requires = ("model", "reference", "tokenizer", "eval_pairs")

    def execute(self, ctx: Context) -> Context:
        model = ctx.get("model")
        batch = pair_tensors(ctx.get("tokenizer"), ctx.get("eval_pairs"), model.config.max_seq_len)
        model.eval()
        with torch.no_grad():
            margins, ratio = dpo_terms(model, ctx.get("reference"), batch)
        model.train()
        return ctx.record(eval_accuracy=float((margins > 0).float().mean()), eval_policy_prefers_chosen=float((ratio > 0).float().mean()),
                          step=ctx.get("global_step"))


WORKFLOW = workflow(
    "preference",
    stage("init_session", InitSession()),
    stage("load_preference_data", LoadPreferenceData()),
    stage("init_policy", InitPolicy()),
    stage("init_reference", InitReference()),
    loop(
        "epochs",
        stage("set_epoch", SetEpoch()),
        loop(
            "batches",
            stage("get_batch", GetPreferenceBatch()),
            stage("forward_backward", ForwardBackwardDPO()),
            stage("optim_step", OptimStep()),
            stage("log_dpo_metrics", LogStepStats("dpo_stats")),
            over=lambda ctx: ctx.get("batches"),
        ),
        conditional(every("save_every", "epochs_index"), stage("checkpoint", SaveCheckpoint()), name="should_checkpoint"),
        conditional(every("eval_every", "epochs_index"), stage("evaluate_preferences", EvaluatePreferences()), name="should_evaluate"),
        over=lambda ctx: range(ctx.setting("num_epochs")),
        progress=True,
    ),
    stage("save_final", SaveWeights()),
    stage("cleanup", Cleanup(), always=True),
    defaults={**MODEL_DEFAULTS, "lr": 1e-3, "beta": 0.5, "num_pairs": 128, "batch_size": 16, "num_epochs": 2, "save_every": 1, "eval_every": 1,
              "eval_size": 64},
    check=settings_check({"num_pairs": 1, "batch_size": 1, "num_epochs": 1, "save_every": 0, "eval_every": 0, "eval_size": 1},
                         positive=("beta",)),
    description="Direct Preference Optimisation against a frozen reference.",
)
