"""A generation engine for a Hugging Face causal LM: batched, KV-cached, in process
(CPU or GPU), implementing the runtime's :class:`~engine.runtime.ports.GenerationEngine`.

The engine holds a batch of up to ``slots`` sequences in one key/value cache (left
padded, with an attention mask and explicit positions).  Each step decodes one token
for every row at the run's temperature and records, per token, its id, its behaviour
log-probability (``log_softmax(logits / temperature)``, the trainer's formula) and the
policy version that sampled it.  The batch is rebuilt (every live sequence's prompt and
tokens prefilled again) when a waiting prompt can take a slot and after new weights
(``load_weights``); when half the rows have finished it shrinks instead, the finished
rows dropped from the key/value cache without a pass over the model.  After new
weights a sequence in flight is interrupted at a token boundary and goes on under the
new version as a new segment (partial rollout), its earlier tokens keeping the
versions that sampled them.
"""

from __future__ import annotations

import asyncio
import inspect
import time

import torch

from engine.backends.hf.model import HFPolicy
from engine.backends.local.generation import LoopEngine
from engine.runtime.ports import GenerationHandle


class HFEngine(LoopEngine):
    """Batched generation over ``slots`` rows for an :class:`HFPolicy` (module docstring)."""

    model: HFPolicy

    def __init__(
        self, model: HFPolicy, *, slots: int, eos_id: int, pad_id: int = 0, temperature: float = 1.0, seed: int = 0,
    ) -> None:
        super().__init__(model, slots=slots, eos_id=eos_id, pad_id=pad_id, temperature=temperature, seed=seed,
                         max_len=model.max_seq_len)
        self.slots = slots
        self._rows: list[GenerationHandle | None] = []  # the cached batch; None: a finished row
        self._cache: object | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._last = torch.zeros(0, dtype=torch.long)
        self._rebuild = False
        self.compactions = 0  # batches shrunk by dropping finished rows from the cache (no prefill pass)
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

    def _record(self, tokens: list[int], logprobs: list[float]) -> None:
        for row, (token, logprob) in enumerate(zip(tokens, logprobs)):
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
        return bool(self._waiting) and self.busy < self.slots

    def _compact(self) -> None:
        """Drop the finished rows from the batch and its key/value cache, keeping the
        live rows' cached keys and values (no pass over the model)."""
        keep = [row for row, handle in enumerate(self._rows) if handle is not None]
        index = torch.tensor(keep, dtype=torch.long, device=self._last.device)
        self._cache.batch_select_indices(index)  # type: ignore[union-attr]
        self._mask, self._last = self._mask[index], self._last[index]
        self._rows = [self._rows[row] for row in keep]
        self.compactions += 1

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
        self._prefilled(contexts, began)  # a pass, not a decode step, as the torch engine counts it


def left_padded(contexts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``contexts`` as one left-padded batch of ids and its attention mask (1 on every
    context token), built in one conversion rather than row by row: a rebuild after new
    weights holds every sequence in flight, hundreds of rows."""
    width = max(len(c) for c in contexts)
    ids = torch.tensor([[pad_id] * (width - len(c)) + c for c in contexts], dtype=torch.long)
    starts = torch.tensor([width - len(c) for c in contexts], dtype=torch.long)
    mask = (torch.arange(width)[None, :] >= starts[:, None]).long()
    return ids, mask


def _cache_of(output: object) -> object:
    """The key/value cache a forward pass returned (``cache`` or ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values")
