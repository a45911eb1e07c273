"""The Hugging Face :class:`~engine.runtime.ports.TrainingClient`: a model directory
(``init-model``, ``import-model`` or any causal LM saved by ``transformers``) trained by
the local trainer behind the same futures as :class:`LocalTrainingClient`."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.backends.hf.model import load_policy, load_tokenizer
from engine.backends.local.client import LocalTrainingClient
from engine.backends.local.trainer import Trainer, TrainerConfig


def hf_training_client(
    model_dir: str | Path, config: TrainerConfig | None = None, *, device: torch.device | str = "cpu", temperature: float = 1.0
) -> LocalTrainingClient:
    """A training client for the Hugging Face model in ``model_dir``."""
    policy = load_policy(model_dir, device, temperature)
    tokenizer = load_tokenizer(model_dir)
    return LocalTrainingClient(Trainer(policy, config or TrainerConfig(), pad_id=tokenizer.pad_id, device=device))
