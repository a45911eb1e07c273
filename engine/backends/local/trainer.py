"""The trainer: supervised warm-up and RL updates of a :class:`Policy`.

An RL update takes GRPO groups of samples (one group per rollout), computes group
advantages and minimises the chosen objective with AdamW and gradient clipping,
under bf16 autocast on a GPU; optionally with a KL penalty to a frozen reference
policy and an entropy bonus, at a learning rate with linear warm-up and constant or
cosine decay (``TrainerConfig``).  Every step reports the entropy, the KL to the
behaviour policy (and to the reference when there is one), the clip fraction and
the learning rate.  Its steps are public (:meth:`Trainer.prepare_update`,
:meth:`Trainer.forward_backward`, :meth:`Trainer.optim_step`) so that the
reinforcement workflow can run each as a stage; :meth:`Trainer.rl_step` takes them
in order.  Proximal log-probs for the decoupled objective come
from one of three sources (``TrainerConfig.proximal``):

- ``recompute``: a forward pass of the weights before the update;
- ``interpolate``: log-linear interpolation between behaviour and current log-probs
  by version (no extra pass);
- ``segment``: the segment-wise variant: tokens sampled under the current version
  use their behaviour log-probs (that policy *is* the proximal one), tokens of a
  rollout recomputed before the last version bump use the stored recomputation,
  and the remaining tokens are recomputed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch

from engine.backends.local.model import PolicyModule
from engine.backends.local.objectives import (
    decoupled_loss,
    group_advantages,
    interpolate_proximal,
    kl_estimate,
    masked_mean,
    ppo_loss,
    second_moment_mask,
)
from engine.backends.local.schedule import LR_SCHEDULES, adapt_to_kl, learning_rate
from engine.runtime.ports import Sample

class ProblemWithAnswer(Protocol):
    @property
    def prompt(self) -> str: ...

    @property
    def answer(self) -> str: ...


class SupervisedTokenizer(Protocol):
    def prompt_ids(self, prompt: str) -> list[int]: ...

    def answer_ids(self, answer: str) -> list[int]: ...


OBJECTIVES = ("decoupled", "ppo")
PROXIMAL = ("recompute", "interpolate", "segment")


@dataclass(frozen=True)
class TrainerConfig:
    """Optimiser and objective settings."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_eps: float = 0.2
    behaviour_cap: float = 5.0
    objective: str = "decoupled"
    proximal: str = "recompute"
    minibatches: int = 1
    sft_lr: float = 3e-3
    #: Weight of ``KL(pi || pi_ref)`` in the loss, against a frozen copy of the weights
    #: the RL phase started from (:meth:`Trainer.set_reference`); 0: no reference kept.
    kl_coef: float = 0.0
    #: Weight of the entropy bonus (subtracted from the loss); 0: entropy only measured.
    entropy_coef: float = 0.0
    #: RL updates of linear learning-rate warm-up, then ``lr_schedule`` until ``total_updates``.
    lr_warmup: int = 0
    lr_schedule: str = "constant"
    total_updates: int = 0
    #: Keep each update's mean ``kl_behaviour`` near this by scaling the rate down (and
    #: back up to the schedule's) between updates (:func:`adapt_to_kl`); 0: off.
    kl_target: float = 0.0
    #: Drop the tokens furthest from the behaviour policy until the mean squared
    #: log-ratio between the current and the behaviour policy of a minibatch's tokens is
    #: at most this (:func:`second_moment_mask`); 0: every token kept.
    behaviour_m2: float = 0.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.proximal not in PROXIMAL:
            raise ValueError(f"proximal must be one of {', '.join(PROXIMAL)}, got {self.proximal!r}")
        if self.minibatches < 1:
            raise ValueError(f"minibatches must be at least 1, got {self.minibatches}")
        for name in ("lr", "sft_lr", "grad_clip", "clip_eps", "behaviour_cap"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("kl_coef", "entropy_coef", "kl_target", "behaviour_m2"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number of at least 0, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        for name in ("lr_warmup", "total_updates"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")


@dataclass
class Batch:
    """Padded tensors of a list of samples (targets shifted by one)."""

    tokens: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T-1]: 1 where the target is a completion token
    behaviour: torch.Tensor  # [B, T-1]
    versions: torch.Tensor  # [B, T-1]
    stored_proximal: torch.Tensor  # [B, T-1]
    has_stored: torch.Tensor  # [B, T-1]: 1 where stored_proximal holds a value
    advantages: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


#: With a model's maximum length, a padded batch's width is rounded up to a multiple of
#: this (at most the maximum) so that kernels see few shapes.
PAD_TO = 16


def pad_multiple(max_width: int | None) -> int:
    """The multiple :func:`padded_width` rounds a batch's width up to (1: none)."""
    return PAD_TO if max_width else 1


def padded_width(samples: Sequence[Sample], max_width: int | None = None) -> int:
    """The width (tokens per row) of ``samples`` padded into one batch: the longest
    prompt and completion, rounded up to :func:`pad_multiple` (at most ``max_width``)."""
    longest = max(len(s.prompt) + len(s.completion) for s in samples)
    multiple = pad_multiple(max_width)
    return max(longest, min(max_width, -(-longest // multiple) * multiple)) if max_width else longest


def pad_samples(
    samples: Sequence[Sample], pad_id: int, device: torch.device | str, max_width: int | None = None, *, version: int | None = None
) -> Batch:
    """Right-pad ``samples`` into one :class:`Batch` of :func:`padded_width`'s width.
    With ``version`` (the update's starting version), a stored proximal recomputation
    counts only when it was made under that version's weights (else it is stale and
    the update recomputes those tokens)."""
    width = padded_width(samples, max_width)
    size = (len(samples), width - 1)
    tokens = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask, behaviour, stored, has_stored = torch.zeros(size), torch.zeros(size), torch.zeros(size), torch.zeros(size)
    versions = torch.zeros(size, dtype=torch.long)
    for row, sample in enumerate(samples):
        sequence = sample.prompt + sample.completion
        tokens[row, : len(sequence)] = torch.tensor(sequence)
        start, end = len(sample.prompt) - 1, len(sequence) - 1  # target positions of the completion
        mask[row, start:end] = 1
        behaviour[row, start:end] = torch.tensor(sample.behaviour)
        versions[row, start:end] = torch.tensor(sample.versions)
        if sample.proximal is not None and (version is None or sample.proximal_version == version):
            stored[row, start:end] = torch.tensor(sample.proximal)
            has_stored[row, start:end] = 1
    return Batch(*(t.to(device) for t in (tokens, mask, behaviour, versions, stored, has_stored)))


@dataclass
class PreparedUpdate:
    """One RL update ready to run: the padded ``batch`` (advantages set), the proximal
    log-probs recomputed under the pre-update weights (``None`` when not needed), the
    rows of each minibatch and the number of passes (``epochs``) over them."""

    batch: Batch
    proximal: torch.Tensor | None
    rows: list[list[int]]
    epochs: int = 1


def mean_stats(steps: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-step statistics of an update averaged over its steps (key by key)."""
    return {key: sum(step[key] for step in steps) / len(steps) for key in steps[0]}


class Trainer:
    """Owns the trainable policy and its optimiser; ``version`` counts RL updates."""

    def __init__(self, model: PolicyModule, config: TrainerConfig, *, pad_id: int, device: torch.device | str) -> None:
        self.model = model
        self.config = config
        self.pad_id = pad_id
        self.device = torch.device(device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.version = 0
        self.sft_steps = 0
        self.lr_scale = 1.0  # the rate's scale under kl_target (end_update)
        self.recompute_seconds = 0.0  # the proximal recomputations' time, summed (calibration reads it)
        #: The frozen policy of the KL penalty (``config.kl_coef > 0``), set by :meth:`set_reference`.
        self.reference: PolicyModule | None = None

    def set_reference(self, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Keep a frozen copy of the policy (with ``weights``, else the current ones) as
        the KL penalty's reference; nothing when ``config.kl_coef`` is 0."""
        if self.config.kl_coef == 0:
            return
        reference = copy.deepcopy(self.model)
        if weights is not None:
            reference.load_state_dict(weights)
        reference.eval()
        reference.requires_grad_(False)
        self.reference = reference

    def rl_lr(self) -> float:
        """The learning rate of the update from ``version`` (warm-up, then the schedule)."""
        config = self.config
        return self.lr_scale * learning_rate(config.lr, self.version, warmup=config.lr_warmup, schedule=config.lr_schedule,
                                             total=config.total_updates)

    def end_update(self, steps: Sequence[dict[str, float]]) -> None:
        """After an update's steps (their statistics): with ``kl_target``, move the
        rate's scale by the update's mean ``kl_behaviour`` (:func:`adapt_to_kl`)."""
        kls = [step["kl_behaviour"] for step in steps if "kl_behaviour" in step]
        if self.config.kl_target and kls:
            self.lr_scale = adapt_to_kl(self.lr_scale, sum(kls) / len(kls), self.config.kl_target)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on a GPU, nothing on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model.logprobs(tokens)

    def _token_stats(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logprobs, entropy = self.model.token_stats(tokens)
        assert entropy is not None
        return logprobs.float(), entropy.float()

    def _optimise(self, loss: torch.Tensor, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return float(norm)

    def sft_step(self, problems: Sequence[ProblemWithAnswer], tokenizer: SupervisedTokenizer) -> float:
        """One supervised step on ``problems`` (cross-entropy of the answers); returns the loss."""
        samples = []
        for problem in problems:
            answer = tokenizer.answer_ids(problem.answer)
            samples.append(Sample(tokenizer.prompt_ids(problem.prompt), answer, [0.0] * len(answer), [0] * len(answer), 0.0))
        batch = pad_samples(samples, self.pad_id, self.device, self.model.max_seq_len)
        self.model.train()
        loss = -(self._logprobs(batch.tokens) * batch.mask).sum() / batch.mask.sum()
        self._optimise(loss, self.config.sft_lr)
        self.sft_steps += 1
        return float(loss.detach())

    def minibatch_rows(self, count: int) -> list[list[int]]:
        """Rows of a batch of ``count`` samples for each of ``config.minibatches``
        minibatches (at most ``count``), interleaved so that each sees every group."""
        parts = min(self.config.minibatches, count)
        return [list(range(part, count, parts)) for part in range(parts)]

    def needs_recompute(self, passes: int) -> bool:
        """Whether an update of ``passes`` optimiser steps needs the proximal log-probs
        recomputed by a forward pass of the pre-update weights before its first step.

        Only the decoupled objective with the ``recompute`` or ``segment`` rule reads
        them, and only when the update takes more than one step (minibatches times
        epochs): a single step's own forward pass runs under the pre-update weights, so
        it *is* that recomputation and a second pass would give the same numbers.  The
        count is of steps actually taken (``minibatch_rows`` caps the minibatches at the
        batch's size), so neither a surplus of minibatches nor the epochs are missed."""
        config = self.config
        return config.objective == "decoupled" and config.proximal in ("recompute", "segment") and passes > 1

    def prepare_update(
        self, samples: Sequence[Sample], advantages: torch.Tensor, *, epochs: int = 1, rows: list[list[int]] | None = None
    ) -> PreparedUpdate:
        """The padded batch of one RL update (with ``advantages``, one per sample), the
        proximal recomputation when :meth:`needs_recompute` asks for it, and the rows of
        each minibatch (:meth:`minibatch_rows` unless ``rows`` gives them: a data-parallel
        rank's share of every minibatch); puts the model in training mode."""
        batch = pad_samples(samples, self.pad_id, self.device, self.model.max_seq_len, version=self.version)
        batch.advantages = advantages.to(self.device)
        self.model.train()
        rows = self.minibatch_rows(len(samples)) if rows is None else rows
        proximal = None
        if self.needs_recompute(len(rows) * epochs):
            began = time.perf_counter()
            with torch.no_grad():
                proximal = self._logprobs(batch.tokens).float()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.recompute_seconds += time.perf_counter() - began
        return PreparedUpdate(batch, proximal, rows, epochs)

    def forward_backward(self, update: PreparedUpdate, epoch: int, part: int) -> dict[str, float]:
        """The objective on minibatch ``part`` of pass ``epoch``, backpropagated into
        fresh gradients; returns its statistics with ``loss``."""
        config, batch = self.config, update.batch
        rows = update.rows[part]
        tokens = batch.tokens[rows]
        logprobs, entropy_per_token = self._token_stats(tokens)
        mask, behaviour, advantages = batch.mask[rows], batch.behaviour[rows], batch.advantages[rows]
        measured = mask  # kl_behaviour and the entropy are of every completion token
        gap = logprobs.detach() - behaviour  # the log-ratio to the policies that sampled the tokens
        if config.behaviour_m2:
            mask = mask * second_moment_mask(gap, mask, config.behaviour_m2)
        if config.objective == "ppo":
            loss, info = ppo_loss(logprobs, behaviour, advantages, mask, config.clip_eps)
        else:
            progress = (epoch * len(update.rows) + part) / (update.epochs * len(update.rows))
            proximal = self.proximal_logprobs(batch, rows, logprobs, update.proximal, progress)
            loss, info = decoupled_loss(logprobs, proximal, behaviour, advantages, mask, config.clip_eps, config.behaviour_cap)
        info["policy_loss"] = float(loss.detach())
        if config.behaviour_m2:
            info["m2_dropped"] = 1.0 - float(mask.sum() / measured.sum().clamp(min=1))
        entropy = masked_mean(entropy_per_token if config.entropy_coef else entropy_per_token.detach(), measured)
        info["entropy"] = float(entropy.detach())
        if config.entropy_coef:
            loss = loss - config.entropy_coef * entropy
        info["kl_behaviour"] = float(kl_estimate(logprobs.detach(), behaviour, measured))
        # the mean squared log-ratio to the behaviour policy (M2PO's second moment): it grows
        # with a token's gap squared where the KL estimate grows with its exponential, so one
        # token that the policy has left far behind moves it little
        info["m2_behaviour"] = float(masked_mean(gap ** 2, measured))
        if self.reference is not None:
            with torch.no_grad(), self.autocast():
                reference = self.reference.logprobs(tokens).float()
            kl = kl_estimate(logprobs, reference, measured)
            info["kl_ref"] = float(kl.detach())
            loss = loss + config.kl_coef * kl
        info["lr"] = self.rl_lr()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return {**info, "loss": float(loss.detach())}

    def optim_step(self) -> float:
        """Clip the gradients and step the optimiser at the RL learning rate of this
        update (:meth:`rl_lr`); returns the gradient norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.rl_lr()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return float(norm)

    def rl_step(self, groups: Sequence[Sequence[Sample]], *, epochs: int = 1) -> dict[str, float]:
        """One RL update (version ``v`` to ``v + 1``) on GRPO groups, ``epochs`` passes over
        its minibatches; returns the statistics averaged over the steps, and the reward.
        The reinforcement workflow takes the same steps one stage at a time."""
        rewards = torch.tensor([[s.reward for s in group] for group in groups], dtype=torch.float32)
        update = self.prepare_update([s for group in groups for s in group], group_advantages(rewards).flatten(), epochs=epochs)
        steps = []
        for epoch in range(epochs):
            for part in range(len(update.rows)):
                info = self.forward_backward(update, epoch, part)
                steps.append({**info, "grad_norm": self.optim_step()})
        self.end_update(steps)
        self.version += 1
        return {**mean_stats(steps), "reward": float(rewards.mean())}

    def proximal_logprobs(
        self, batch: Batch, rows: list[int], logprobs: torch.Tensor, recomputed: torch.Tensor | None, progress: float
    ) -> torch.Tensor:
        """Proximal log-probs of the rows of this minibatch (see the module docstring),
        ``progress`` of the way (0 to 1) through the update's steps.  Without a
        recomputation the weights before the update are the current ones (one step), so
        the forward pass of the update is itself the recomputation."""
        current = recomputed[rows] if recomputed is not None else logprobs.detach()
        proximal_source = self.config.proximal
        if proximal_source == "interpolate":
            return interpolate_proximal(batch.behaviour[rows], logprobs, batch.versions[rows], self.version, self.version + progress)
        if proximal_source == "segment":
            fresh = (batch.versions[rows] == self.version).float()
            stored = batch.has_stored[rows]
            current = stored * batch.stored_proximal[rows] + (1 - stored) * current
            return fresh * batch.behaviour[rows] + (1 - fresh) * current
        return current

    def close(self) -> None:
        """Nothing to release (a data-parallel trainer tells its other ranks to stop)."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "sft_steps": self.sft_steps,
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = state["version"]
        self.sft_steps = state["sft_steps"]
        self.lr_scale = float(state.get("lr_scale", 1.0))  # (checkpoints before kl_target have none)


@torch.no_grad()
def completion_logprobs(model: PolicyModule, samples: Sequence[Sample], pad_id: int) -> list[list[float]]:
    """Log-probs of each sample's completion under ``model`` (a recomputation)."""
    device = next(model.parameters()).device
    batch = pad_samples(samples, pad_id, device)
    logprobs = model.logprobs(batch.tokens).float()
    return [logprobs[row, len(s.prompt) - 1 : len(s.prompt) - 1 + len(s.completion)].tolist() for row, s in enumerate(samples)]
