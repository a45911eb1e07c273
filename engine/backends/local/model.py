"""A small Llama-style decoder-only policy: RMSNorm, rotary positions, SwiGLU.

One module serves training (``forward`` over right-padded sequences with a causal
mask, ``logprobs`` of the next tokens) and generation (``prefill`` and ``decode``
against a slot-based :class:`KVCache`, so that a continuous-batching engine can
refill one slot while the others keep decoding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from engine.backends.local.sizes import SIZES


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the policy.  ``d_ff`` is the SwiGLU hidden width; ``max_seq_len``
    bounds prompt plus completion (rotary tables and the KV cache are that long)."""

    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 352
    max_seq_len: int = 128
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even width"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ModelConfig":
        return cls(**obj)


def preset(size: str, vocab_size: int, max_seq_len: int) -> ModelConfig:
    """The :data:`SIZES` entry ``size`` for a vocabulary and a sequence length."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known sizes are {', '.join(SIZES)}")
    return ModelConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, **SIZES[size])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.float().pow(2).mean(-1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * norm).type_as(x) * self.weight


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[max_len, head_dim]`` for rotary embeddings (halves layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, H, T, D]`` by position: ``cos``/``sin`` broadcast as ``[B or 1, 1, T, D]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Keys and values per layer for ``slots`` sequences of up to ``max_len`` tokens.

    A slot belongs to one sequence at a time; the generation engine hands slots out.
    """

    def __init__(self, config: ModelConfig, slots: int, max_len: int, device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (config.n_layers, slots, config.n_heads, max_len, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.slots = slots
        self.max_len = max_len


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal self-attention over ``x`` ``[B, T, d]``; also returns the rotated keys and the values."""
        q, k, v = self._split(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(x.shape)), k, v

    def decode(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        positions: torch.Tensor, mask: torch.Tensor,
    ) -> torch.Tensor:
        """One new token per slot (``x`` ``[S, 1, d]``): write its key and value at ``positions``
        in the layer's cache, attend over the slot's prefix (``mask`` ``[S, 1, 1, L]``)."""
        q, k, v = self._split(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rows = torch.arange(x.shape[0], device=x.device)
        keys[rows, :, positions] = k[:, :, 0]
        values[rows, :, positions] = v[:, :, 0]
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(x.shape))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.gate_up = nn.Linear(config.d_model, 2 * config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)  # SwiGLU


class PolicyModule(nn.Module):
    """What the trainer needs of a policy, whatever its architecture: ``logprobs`` of
    right-padded sequences at the policy's sampling ``temperature`` (the generation engine
    records behaviour log-probs at the same one) and ``max_seq_len``.  :class:`Policy` is
    the built-in one; ``engine.backends.hf.model.HFPolicy`` wraps a Hugging Face model."""

    temperature: float = 1.0

    @property
    def max_seq_len(self) -> int:
        raise NotImplementedError

    def logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, T-1]``: log-probability of each token after the first given its prefix,
        at the policy's sampling ``temperature``."""
        return self.token_stats(tokens, entropy=False)[0]

    def token_stats(self, tokens: torch.Tensor, *, entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[B, T-1]`` log-probabilities of each token after the first (as :meth:`logprobs`)
        and, with ``entropy``, ``[B, T-1]`` the entropy of the distribution each was drawn
        from, both at the sampling temperature; from one forward pass (``self(tokens)``
        is the logits ``[B, T, vocab]``)."""
        logits = self(tokens[:, :-1]).float() / self.temperature
        logp = torch.log_softmax(logits, dim=-1)
        chosen = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
        return chosen, (-(logp.exp() * logp).sum(-1) if entropy else None)


class Policy(PolicyModule):
    """The decoder: token embedding, ``n_layers`` pre-norm blocks, tied output head."""

    # rotary tables ``[max_seq_len, head_dim]``, registered as (non-persistent) buffers
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def layers(self) -> Iterator[Block]:
        """The blocks in order (``nn.ModuleList`` itself yields them as plain modules)."""
        for block in self.blocks:
            assert isinstance(block, Block)  # __init__ fills ``blocks`` with Blocks only
            yield block

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(x), self.embed.weight)  # tied embeddings

    def _check_length(self, length: int) -> None:
        if length > self.config.max_seq_len:
            raise ValueError(f"sequence of {length} tokens exceeds max_seq_len {self.config.max_seq_len}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` for right-padded ``tokens`` ``[B, T]`` (causal)."""
        self._check_length(tokens.shape[1])
        length = tokens.shape[1]
        cos, sin = self.cos[None, None, :length].to(self.embed.weight.dtype), self.sin[None, None, :length].to(self.embed.weight.dtype)
        x = self.embed(tokens)
        for block in self.layers():
            attended, _, _ = block.attn(block.attn_norm(x), cos, sin)
            x = x + attended
            x = x + block.mlp(x)
        return self._head(x)

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def prefill(self, tokens: torch.Tensor, slots: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run right-padded prefixes ``[n, T]`` and store their keys and values in ``slots``
        of ``cache``; returns the logits ``[n, T, vocab]``.  Cache rows past a prefix's
        end hold padding garbage that decoding overwrites before it can be attended."""
        self._check_length(tokens.shape[1])
        length = tokens.shape[1]
        dtype = self.embed.weight.dtype
        cos, sin = self.cos[None, None, :length].to(dtype), self.sin[None, None, :length].to(dtype)
        x = self.embed(tokens)
        for layer, block in enumerate(self.layers()):
            attended, keys, values = block.attn(block.attn_norm(x), cos, sin)
            cache.keys[layer, slots, :, :length] = keys.to(cache.keys.dtype)
            cache.values[layer, slots, :, :length] = values.to(cache.values.dtype)
            x = x + attended
            x = x + block.mlp(x)
        return self._head(x)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One step for every slot: ``tokens`` ``[S]`` at ``positions`` ``[S]``; logits ``[S, vocab]``."""
        dtype = self.embed.weight.dtype
        cos = self.cos[positions][:, None, None, :].to(dtype)
        sin = self.sin[positions][:, None, None, :].to(dtype)
        span = torch.arange(cache.max_len, device=tokens.device)
        mask = (span[None, :] <= positions[:, None])[:, None, None, :]
        x = self.embed(tokens[:, None])
        for layer, block in enumerate(self.layers()):
            x = x + block.attn.decode(block.attn_norm(x), cos, sin, cache.keys[layer], cache.values[layer], positions, mask)
            x = x + block.mlp(x)
        return self._head(x)[:, 0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
