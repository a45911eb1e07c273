"""The local torch :class:`~engine.backends.local.trainer.Trainer` behind the
:class:`~engine.runtime.ports.TrainingClient` port.

One worker thread runs the calls in submission order, so a caller that submits the
next ``forward_backward`` before awaiting this ``optim_step`` overlaps its own work
(preparing the next batch, a transfer) with the trainer's compute.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

import torch

from engine.backends.local.checkpoint import read_state, write_state
from engine.backends.local.trainer import Trainer
from engine.runtime.ports import Sample


class LocalTrainingClient:
    """A :class:`Trainer` as a :class:`~engine.runtime.ports.TrainingClient`."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer")

    @property
    def version(self) -> int:
        return self.trainer.version

    def forward_backward(self, samples: Sequence[Sample], advantages: Sequence[float]) -> Future[dict[str, float]]:
        samples, advantages = list(samples), [float(a) for a in advantages]
        return self._worker.submit(self._forward_backward, samples, advantages)

    def _forward_backward(self, samples: list[Sample], advantages: list[float]) -> dict[str, float]:
        if not samples:
            raise ValueError("forward_backward needs at least one sample")
        if len(advantages) != len(samples):
            raise ValueError(f"forward_backward needs one advantage per sample: {len(samples)} samples, {len(advantages)} advantages")
        update = self.trainer.prepare_update(samples, torch.tensor(advantages, dtype=torch.float32))
        update.rows = [list(range(len(samples)))]  # one call is one minibatch: the caller splits
        return self.trainer.forward_backward(update, 0, 0)

    def optim_step(self) -> Future[dict[str, float]]:
        return self._worker.submit(self._optim_step)

    def _optim_step(self) -> dict[str, float]:
        norm = self.trainer.optim_step()
        self.trainer.version += 1
        return {"grad_norm": norm, "version": float(self.trainer.version)}

    def save_weights(self, path: str) -> Future[str]:
        return self._worker.submit(self._save, path)

    def _save(self, path: str) -> str:
        write_state(path, self.trainer.state_dict())
        return path

    def load_weights(self, path: str) -> Future[int]:
        return self._worker.submit(self._load, path)

    def _load(self, path: str) -> int:
        try:
            state = read_state(path, self.trainer.device)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        self.trainer.load_state_dict(state)
        return self.trainer.version

    def close(self) -> None:
        self._worker.shutdown(wait=True)
