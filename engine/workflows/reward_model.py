"""Reward model training on preference pairs (Bradley-Terry): a scalar head on the
policy's last-token logits, initialised from the ``model`` in the state when there
is one (as RLHF does after SFT), trained so that ``r(chosen) > r(rejected)``."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from engine.backends.local.model import Policy
from engine.backends.local.tasks import Tokenizer
from engine.workflow import Context, conditional, loop, stage, workflow
from engine.workflows.common import (
    MODEL_DEFAULTS,
    settings_check,
    Cleanup,
    InitSession,
    LogStepStats,
    OptimStep,
    SaveCheckpoint,
    SaveWeights,
    every,
    new_policy,
    sequences,
)
from engine.workflows.preference import (
    LoadPreferenceData,
    PairTensors,
    SetEpoch,
    pair_tensors,
)


class RewardModel(nn.Module):
    """A policy body with a linear scalar head on the logits of each sequence's last token."""

    def __init__(self, body: Policy) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.config.vocab_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Rewards ``[B]`` of right-padded sequences; ``mask`` marks answer targets (as from
        :func:`~engine.workflows.common.sequences`): the last one is the sequence's end."""
        logits = self.body(tokens)
        last = (mask.shape[1] - 1) - mask.flip(-1).argmax(-1)  # index of the last answer target
        final = logits[torch.arange(tokens.shape[0]), last + 1]  # logits after reading the last token
        return self.head(final).squeeze(-1)

    @torch.no_grad()
    def score(self, tokenizer: Tokenizer, prompt: str, completion: str) -> float:
        """The reward of one completion (used as the RL reward in RLHF); a completion
        that ran out of room without ``<eos>`` is cut to fit the model."""
        room = self.body.config.max_seq_len - len(tokenizer.prompt_ids(prompt)) - 1
        completion = completion[: max(0, room)]
        tokens, mask = sequences(tokenizer, [(prompt, completion)], None)  # type: ignore[arg-type]
        training = self.training
        self.eval()
        value = float(self(tokens, mask)[0])
        self.train(training)
        return value


class InitRewardModel:
    """The reward model (body copied from ``model`` when the state has one) and its optimiser."""

    requires = ("task", "tokenizer")
    provides = ("reward_model", "rm_optimizer", "global_step")

    def execute(self, ctx: Context) -> Context:
        policy = ctx.get("model", None)
        body = copy.deepcopy(policy) if policy is not None else new_policy(ctx.get("task"), ctx.get("tokenizer"), ctx.setting("model_size"), ctx.setting("seed") + 1)
        model = RewardModel(body)
        return ctx.put(reward_model=model, rm_optimizer=torch.optim.AdamW(model.parameters(), lr=ctx.setting("lr")), global_step=0)


def reward_margins(model: RewardModel, batch: PairTensors) -> torch.Tensor:
    """``r(chosen) - r(rejected)`` per pair."""
    (chosen, chosen_mask), (rejected, rejected_mask) = batch
    return model(chosen, chosen_mask) - model(rejected, rejected_mask)


class GetPreferenceBatch:
    """Padded chosen and rejected sequences of the current batch."""

    requires = ("tokenizer", "reward_model", "batches_current")
    provides = ("preference_batch",)

    def execute(self, ctx: Context) -> Context:
        width = ctx.get("reward_model").body.config.max_seq_len
        return ctx.put(preference_batch=pair_tensors(ctx.get("tokenizer"), ctx.get("batches_current"), width))


class ForwardBackwardRM:
    """The Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))``, backpropagated."""

    requires = ("reward_model", "preference_batch")
    provides = ("rm_stats",)

    def execute(self, ctx: Context) -> Context:
        model = ctx.get("reward_model")
        model.train()
        margins = reward_margins(model, ctx.get("preference_batch"))
        loss = -F.logsigmoid(margins).mean()
        loss.backward()
        return ctx.put(rm_stats={"loss": float(loss.detach()), "accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean().detach())})


class EvaluateRewardModel:
    """Held-out pair accuracy of the reward model."""

    requires = ("reward_model", "tokenizer", "eval_pairs")

    def execute(self, ctx: Context) -> Context:
        model = ctx.get("reward_model")
        batch = pair_tensors(ctx.get("tokenizer"), ctx.get("eval_pairs"), model.body.config.max_seq_len)
        model.eval()
        with torch.no_grad():
            margins = reward_margins(model, batch)
        model.train()
        return ctx.record(eval_accuracy=float((margins > 0).float().mean()), step=ctx.get("global_step"))


WORKFLOW = workflow(
    "reward_model",
    stage("init_session", InitSession()),
    stage("load_preference_data", LoadPreferenceData()),
    stage("init_reward_model", InitRewardModel()),
    loop(
        "epochs",
        stage("set_epoch", SetEpoch()),
        loop(
            "batches",
            stage("get_batch", GetPreferenceBatch()),
            stage("forward_backward", ForwardBackwardRM()),
            stage("optim_step", OptimStep(), model="reward_model", optimizer="rm_optimizer"),
            stage("log_rm_metrics", LogStepStats("rm_stats")),
            over=lambda ctx: ctx.get("batches"),
        ),
        conditional(every("save_every", "epochs_index"), stage("checkpoint", SaveCheckpoint()), name="should_checkpoint"),
        conditional(every("eval_every", "epochs_index"), stage("evaluate", EvaluateRewardModel()), name="should_evaluate"),
        over=lambda ctx: range(ctx.setting("num_epochs")),
        progress=True,
    ),
    stage("save_final", SaveWeights(), key="reward_model"),
    stage("cleanup", Cleanup(), always=True),
    defaults={**MODEL_DEFAULTS, "lr": 1e-3, "num_pairs": 128, "batch_size": 16, "num_epochs": 2, "save_every": 1, "eval_every": 1, "eval_size": 64},
    check=settings_check({"num_pairs": 1, "batch_size": 1, "num_epochs": 1, "save_every": 0, "eval_every": 0, "eval_size": 1}),
    description="Bradley-Terry reward model on verifier-ranked preference pairs.",
)
