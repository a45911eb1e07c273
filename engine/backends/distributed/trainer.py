"""Data-parallel training: the trainer's steps on every trainer rank in lockstep.

Rank 0 runs the one update path (the reinforcement workflow's stages) with a
:class:`DataParallelTrainer`; each of its steps first tells the other trainer ranks
to take the same step (:func:`follow` is their loop).  ``prepare_update`` splits
every minibatch's rows among the ranks (rank ``r`` takes rows ``r, r+N, ...`` of each
minibatch) and sends each rank its shard of the samples and advantages; every rank
pads its shard and, when the trainer's rule asks for it, recomputes its proximal
log-probs.  ``forward_backward`` backpropagates each rank's shard and weighs its
gradients by the shard's share of the minibatch; ``optim_step`` sums the gradients
over the ranks (one all-reduce of a flat buffer, which is what DDP does, without its
bucketing) so that every rank clips and steps the same gradients and the weights
stay equal.  The step's statistics are the ranks' weighted mean.  With one trainer
rank the shard is the whole batch and the update equals the single-process one.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from engine.backends.distributed.group import Group
from engine.backends.local.model import PolicyModule
from engine.backends.local.trainer import PreparedUpdate, Trainer, TrainerConfig
from engine.runtime.ports import Sample


def shard(
    samples: Sequence[Sample], advantages: torch.Tensor, rows: list[list[int]], rank: int, ranks: int
) -> tuple[list[Sample], torch.Tensor, list[list[int]], list[float]]:
    """Rank ``rank``'s share of an update of ``samples`` split into minibatches ``rows``:
    its samples (in batch order), their advantages, its rows of each minibatch
    (indices into its samples) and each minibatch's share it holds."""
    parts = [part[rank::ranks] for part in rows]
    indices = sorted({i for part in parts for i in part})
    position = {index: local for local, index in enumerate(indices)}
    local_rows = [[position[i] for i in part] for part in parts]
    shares = [len(mine) / len(part) for mine, part in zip(parts, rows)]
    return [samples[i] for i in indices], advantages[indices], local_rows, shares


class DataParallelTrainer(Trainer):
    """A :class:`Trainer` whose RL steps run on every trainer rank of ``group``."""

    def __init__(self, model: PolicyModule, config: TrainerConfig, *, pad_id: int, device: torch.device | str, group: Group) -> None:
        super().__init__(model, config, pad_id=pad_id, device=device)
        self.group = group
        self._shares: list[float] = []

    @property
    def leader(self) -> bool:
        return self.group.rank == 0

    def share_state(self) -> None:
        """Rank 0's weights, optimiser state, version and KL reference to every trainer rank."""
        if self.group.layout.trainers == 1:
            return
        reference = None if self.reference is None else _cpu(self.reference.state_dict())
        self.group.command(("state", _cpu(self.state_dict()), reference))

    def prepare_update(
        self, samples: Sequence[Sample], advantages: torch.Tensor, *, epochs: int = 1, rows: list[list[int]] | None = None
    ) -> PreparedUpdate:
        ranks = self.group.layout.trainers
        rows = self.minibatch_rows(len(samples)) if rows is None else rows
        small = [len(part) for part in rows if len(part) < ranks]
        if small:
            raise ValueError(f"a minibatch of {small[0]} samples cannot be split among {ranks} trainer ranks "
                             "(batch size x group size / minibatches must be at least the number of trainer ranks)")
        advantages = advantages.detach().cpu()
        shares = [shard(samples, advantages, rows, rank, ranks) for rank in range(ranks)]
        self.group.command(("prepare",))
        self.group.scatter([(self.version, epochs, *share) for share in shares])
        return self._prepare(self.version, epochs, *shares[0])

    def _prepare(
        self, version: int, epochs: int, samples: list[Sample], advantages: torch.Tensor, rows: list[list[int]], shares: list[float]
    ) -> PreparedUpdate:
        self.version, self._shares = version, shares
        return super().prepare_update(samples, advantages, epochs=epochs, rows=rows)

    def forward_backward(self, update: PreparedUpdate, epoch: int, part: int) -> dict[str, float]:
        if self.leader:
            self.group.command(("forward_backward", epoch, part))
        stats = super().forward_backward(update, epoch, part)
        share = self._shares[part]
        for parameter in self.model.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(share)
        keys = sorted(stats)
        values = torch.tensor([stats[key] * share for key in keys], dtype=torch.float64, device=self.group.device)
        self.group.all_reduce([values])
        return dict(zip(keys, values.tolist()))

    def optim_step(self) -> float:
        if self.leader:
            self.group.command(("optim_step",))
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for parameter in self.model.parameters():
            if not parameter.requires_grad:
                continue
            if parameter.grad is None:  # a weight this shard did not reach still takes part in the sum
                parameter.grad = torch.zeros_like(parameter)
            by_dtype.setdefault(parameter.grad.dtype, []).append(parameter.grad)
        for grads in by_dtype.values():
            self.group.all_reduce(grads)
        return super().optim_step()

    def close(self) -> None:
        """Tell the other trainer ranks that the run is over."""
        if self.leader:
            self.group.command(("stop",))


def follow(trainer: DataParallelTrainer) -> int:
    """The loop of a trainer rank other than 0: take rank 0's steps until it stops the
    run; returns the number of optimiser steps taken."""
    group, update, steps = trainer.group, None, 0
    while True:
        message = group.command()
        kind = message[0]
        if kind == "stop":
            return steps
        if kind == "prepare":
            update = trainer._prepare(*group.scatter())
        elif kind == "state":
            trainer.load_state_dict(message[1])
            if message[2] is not None:
                trainer.set_reference(message[2])
        elif kind == "forward_backward":
            assert update is not None, "forward_backward before prepare"
            trainer.forward_backward(update, message[1], message[2])
        elif kind == "optim_step":
            trainer.optim_step()
            steps += 1
        else:
            raise RuntimeError(f"unknown command from rank 0: {kind!r}")


def _cpu(state: Any) -> Any:
    """``state`` with every tensor on the CPU (what a control message carries)."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: _cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu(value) for value in state)
    return state
