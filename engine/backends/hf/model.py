"""A local Hugging Face causal LM as the trainer's policy, and its tokenizer as the run's.

:class:`HFPolicy` wraps ``AutoModelForCausalLM`` loaded offline from a directory
(``local_files_only``) with the interface the trainer uses (dropout always off): ``logprobs(tokens)`` of
right-padded sequences at the run's sampling ``temperature`` (the generation engine
samples and records behaviour log-probs at the same temperature, so the two agree
token for token), ``max_seq_len``, and a ``state_dict`` the engine takes as new
weights.  :class:`HFTokenizer` turns a task's prompt into ids, through the tokenizer's
chat template when it has one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from engine.backends.local.model import PolicyModule

#: Longest sequence a policy is asked to hold, whatever its position table allows.
MAX_SEQ_LEN = 8192


def _offline() -> None:
    """No hub: every load reads the local directory only.  Without the ``[hf]`` extra,
    ``ValueError`` says which to install (the commands report it in one line)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers.utils import logging
    except ImportError:
        raise ValueError("Hugging Face models need transformers: pip install 'rollout-ledger[hf]'") from None

    logging.disable_progress_bar()


def check_model_dir(path: str | Path) -> Path:
    """``path`` as a model directory (a ``config.json`` inside); else ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a model directory (no such folder)")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a Hugging Face model directory (no config.json)")
    return path


class HFPolicy(PolicyModule):
    """A causal LM with the trainer's policy interface (see the module docstring)."""

    def __init__(self, lm: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.lm = lm
        self.temperature = temperature
        positions = getattr(getattr(lm, "config", None), "max_position_embeddings", None) or MAX_SEQ_LEN
        self._max_seq_len = int(min(positions, MAX_SEQ_LEN))

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    def train(self, mode: bool = True) -> "HFPolicy":
        """Training mode for the wrapper, never for the model inside: dropout stays off, so
        the trainer's forward pass is the one generation sampled from (gradients flow
        either way)."""
        super().train(mode)
        self.lm.eval()
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` of right-padded ``tokens`` (causal: padding after a
        sequence never reaches its positions)."""
        return self.lm(input_ids=tokens, use_cache=False).logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def load_policy(path: str | Path, device: torch.device | str = "cpu", temperature: float = 1.0) -> HFPolicy:
    """The model in the directory ``path``, offline, in float32 on ``device``."""
    _offline()
    path = check_model_dir(path)
    from transformers import AutoModelForCausalLM

    try:
        lm = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: cannot load the model ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None
    return HFPolicy(lm.to(device), temperature)


class HFTokenizer:
    """A model directory's tokenizer with the run's interface: ``prompt_ids`` (through the
    chat template when there is one), ``answer_ids`` (the answer, then end of sequence),
    ``decode`` (up to the first end of sequence, specials dropped)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the model's tokenizer has no end-of-sequence token")
        self.eos_id: int = int(eos)
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.eos_id
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.chat:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return [int(i) for i in ids] or [self.eos_id]

    def answer_ids(self, answer: str) -> list[int]:
        return [*self.tokenizer(answer, add_special_tokens=False)["input_ids"], self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def load_tokenizer(path: str | Path) -> HFTokenizer:
    """The tokenizer of the model directory ``path``, offline."""
    _offline()
    path = check_model_dir(path)
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(str(path), local_files_only=True))
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: cannot load the tokenizer ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None
