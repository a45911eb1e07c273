"""A generation engine for a Hugging Face causal LM: batched, KV-cached, in process
(CPU or GPU), implementing the runtime's :class:`~engine.runtime.ports.GenerationEngine`.

The engine holds a batch of up to ``slots`` sequences in one key/value cache (left
padded, with an attention mask and explicit positions).  Each step decodes one token
for every row at the run's temperature and records, per token, its id, its behaviour
log-probability (``log_softmax(logits / temperature)``, the trainer's formula) and the
policy version that sampled it.

Waiting prompts that can take a row are prefilled in a pass of their own and joined to
the batch (its cached keys and values padded on the left to a common width), the live
rows left as they are; when half the rows have finished the batch shrinks, the finished
rows dropped from the key/value cache.  Neither passes over the live rows again, and
both drop the leading columns no row attends to any more, so that a batch never rebuilt
stays as wide as its longest context.  A cache whose layers are not plain key/value
tensors (a sliding window, say) is rebuilt whole instead of joined.

After new weights (``load_weights``) a sequence in flight is interrupted at a token
boundary and goes on under the new version as a new segment (partial rollout), its
earlier tokens keeping the versions that sampled them: by default every live sequence's
prompt and tokens are prefilled again under the new weights (one pass); with
``keep_cache`` the keys and values the earlier weights cached stay, and decoding goes on
over them (no pass; the tokens sampled after still record the log-probabilities that
sampled them).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import torch

from engine.backends.hf.model import HFPolicy
from engine.backends.local.generation import LoopEngine
from engine.runtime.ports import GenerationHandle


class HFEngine(LoopEngine):
    """Batched generation over ``slots`` rows for an :class:`HFPolicy` (module docstring)."""

    model: HFPolicy
    #: a decode step runs over the live rows only (finished ones leave the batch), so its
    #: cost grows with the busy slots, not with ``slots``
    decodes_every_slot = False
    #: a prefill pass is left-padded to its longest context, its rows as many as it prefills
    prefill_pad_to = 1
    prefill_pow2_rows = False

    def __init__(
        self, model: HFPolicy, *, slots: int, eos_id: int, pad_id: int = 0, temperature: float = 1.0, seed: int = 0,
        keep_cache: bool = False,
    ) -> None:
        super().__init__(model, slots=slots, eos_id=eos_id, pad_id=pad_id, temperature=temperature, seed=seed,
                         max_len=model.max_seq_len, keep_cache=keep_cache)
        self.slots = slots
        self._rows: list[GenerationHandle | None] = []  # the cached batch; None: a finished row
        self._cache: object | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._last = torch.zeros(0, dtype=torch.long)
        self._rebuild = False
        self.compactions = 0  # batches shrunk by dropping finished rows from the cache (no prefill pass)
        self.joins = 0  # prefill passes of waiting prompts alone, joined to the live batch
        # transformers renamed ``past_key_values`` to ``cache`` (5.2x); take whichever this one has
        self._cache_arg = "cache" if "cache" in inspect.signature(model.lm.forward).parameters else "past_key_values"

    # -- its sequences in flight ------------------------------------------------
    def _live(self) -> list[GenerationHandle]:
        return [handle for handle in self._rows if handle is not None]

    def _drop_live(self) -> None:
        self._drop_batch()

    def _interrupt(self) -> None:
        self._rebuild = True

    # -- one step ----------------------------------------------------------------
    def _drop_batch(self) -> None:
        self._rows, self._cache, self._rebuild = [], None, False

    def _record(self, tokens: list[int], logprobs: list[float], first: int = 0) -> None:
        """Rows ``first`` on sampled ``tokens`` with their ``logprobs``."""
        for row, (token, logprob) in enumerate(zip(tokens, logprobs), start=first):
            handle = self._rows[row]
            if handle is None:
                continue
            handle._emit(token, logprob, self.version)
            generation = handle.generation
            if (
                token == self.eos_id
                or len(generation.tokens) >= handle.max_new_tokens
                or len(generation.prompt) + len(generation.tokens) >= self.max_len
            ):
                self._finished(handle)
                self._rows[row] = None

    def _needs_rebuild(self) -> bool:
        if self._rebuild or self._cache is None:
            return True
        return bool(self._waiting) and self.busy < self.slots and not _joinable(self._cache)

    def _compact(self) -> None:
        """Drop the finished rows from the batch and its key/value cache, keeping the
        live rows' cached keys and values (no pass over the model)."""
        self._select([row for row, handle in enumerate(self._rows) if handle is not None])
        self.compactions += 1

    def _select(self, keep: list[int]) -> None:
        """Keep rows ``keep`` of the batch and its cache, and only the columns they attend to."""
        index = torch.tensor(keep, dtype=torch.long, device=self._last.device)
        self._cache.batch_select_indices(index)  # type: ignore[union-attr]
        self._mask, self._last = self._mask[index], self._last[index]
        self._rows = [self._rows[row] for row in keep]
        self._trim()

    def _trim(self) -> None:
        """Drop the cache's leading columns that no row attends to any more (the left
        padding of rows that have left): a batch that only joins and shrinks, never
        rebuilt (``keep_cache``), would otherwise widen by a column every step."""
        if not len(self._rows) or not _joinable(self._cache):
            return
        start = int(self._mask.any(dim=0).int().argmax())  # the first column a row attends to
        if start == 0:
            return
        cache: Any = self._cache
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        self._mask = self._mask[:, start:]

    def _join(self) -> None:
        """Prefill waiting prompts (up to the free rows) in a pass of their own and join
        them to the batch: the finished rows dropped, then both caches and masks padded
        on the left to one width and stacked.  The live rows' keys and values stay."""
        began = time.perf_counter()
        if any(handle is None for handle in self._rows):
            self._select([row for row, handle in enumerate(self._rows) if handle is not None])
        joining: list[GenerationHandle] = []
        while self._waiting and len(self._rows) + len(joining) < self.slots:
            joining.append(self._waiting.pop(0))
        contexts = [handle.generation.prompt + handle.generation.tokens for handle in joining]
        ids, mask = left_padded(contexts, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = self.model.lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        width = max(self._mask.shape[1], mask.shape[1])
        cache: Any = self._cache  # (a joinable cache: transformers' dynamic one, untyped here)
        for layer, new in zip(cache.layers, getattr(_cache_of(output), "layers")):
            layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(new.keys, width)])
            layer.values = torch.cat([_pad_left(layer.values, width), _pad_left(new.values, width)])
        self._mask = torch.cat([_pad_left(self._mask, width, dim=1), _pad_left(mask, width, dim=1)])
        tokens, logprobs = self._sample(output.logits[:, -1])
        self._last = torch.cat([self._last, tokens])
        first = len(self._rows)
        self._rows.extend(joining)
        self.joins += 1
        self._record(tokens.tolist(), logprobs.tolist(), first)
        self._prefilled(contexts, began, ids.numel())

    @torch.no_grad()
    def step(self) -> None:
        """Rebuild the batch when due, else decode one token for every row."""
        for row, handle in enumerate(self._rows):
            if handle is not None and handle.cancelled:
                handle._fail(asyncio.CancelledError("generation cancelled"))
                self._rows[row] = None
        if self._needs_rebuild():
            self._prefill()
            return
        if self._waiting and self.busy < self.slots:
            if self.busy:
                self._join()
            else:  # nothing live to keep: a fresh batch
                self._prefill()
            return
        live = self.busy
        if live <= len(self._rows) // 2:  # half the rows finished: shrink the batch
            if live == 0 or not hasattr(self._cache, "batch_select_indices"):
                self._prefill()  # (a cache that cannot drop rows: prefill the live ones again)
                return
            self._compact()
        # a finished row still in the batch keeps decoding (its tokens are dropped); its
        # position is held inside the model's table
        began, busy = time.perf_counter(), live  # (a compaction keeps every live row)
        positions = self._mask.sum(-1, keepdim=True).clamp(max=self.max_len - 1)
        self._mask = torch.cat([self._mask, torch.ones_like(self._last)[:, None]], dim=1)
        output = self.model.lm(
            input_ids=self._last[:, None], attention_mask=self._mask, position_ids=positions,
            use_cache=True, **{self._cache_arg: self._cache},
        )
        self._cache = _cache_of(output)
        tokens, logprobs = self._sample(output.logits[:, -1])
        self._last = tokens
        self.steps += 1
        self.decoded_tokens += busy
        self._record(tokens.tolist(), logprobs.tolist())
        self._decoded(busy, began)

    def _prefill(self) -> None:
        """Prefill every live sequence (and waiting ones, up to ``slots``) into a fresh
        left-padded batch, and sample each one's next token."""
        began = time.perf_counter()
        live = [handle for handle in self._rows if handle is not None]
        while self._waiting and len(live) < self.slots:
            live.append(self._waiting.pop(0))
        self._rows = list(live)
        self._rebuild = False
        if not live:
            self._cache = None
            return
        contexts = [handle.generation.prompt + handle.generation.tokens for handle in live]
        ids, mask = left_padded(contexts, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = self.model.lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        self._cache, self._mask = _cache_of(output), mask
        tokens, logprobs = self._sample(output.logits[:, -1])
        self._last = tokens
        self._record(tokens.tolist(), logprobs.tolist())
        self._prefilled(contexts, began, ids.numel())  # a pass, not a decode step, as the torch engine counts it


def left_padded(contexts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``contexts`` as one left-padded batch of ids and its attention mask (1 on every
    context token), built in one conversion rather than row by row: a rebuild after new
    weights holds every sequence in flight, hundreds of rows."""
    width = max(len(c) for c in contexts)
    ids = torch.tensor([[pad_id] * (width - len(c)) + c for c in contexts], dtype=torch.long)
    starts = torch.tensor([width - len(c) for c in contexts], dtype=torch.long)
    mask = (torch.arange(width)[None, :] >= starts[:, None]).long()
    return ids, mask


def _joinable(cache: object) -> bool:
    """Whether ``cache`` holds plain key/value tensors per layer, ``[batch, heads, tokens,
    dim]`` (transformers' dynamic cache) that a join can pad and stack."""
    layers = getattr(cache, "layers", None)
    return isinstance(layers, (list, tuple)) and bool(layers) and all(
        type(layer).__name__ == "DynamicLayer" and isinstance(getattr(layer, "keys", None), torch.Tensor)
        and layer.keys.dim() == 4 for layer in layers
    )


def _pad_left(tensor: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """``tensor`` with zeros prepended along ``dim`` up to ``width`` (a cache's tokens,
    or a mask's columns: a zero column is a position no row attends to)."""
    short = width - tensor.shape[dim]
    if short == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = short
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _cache_of(output: object) -> object:
    """The key/value cache a forward pass returned (``cache`` or ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values")
