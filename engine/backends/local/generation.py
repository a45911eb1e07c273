"""Generation behind a small interface, and a torch engine with continuous batching.

:class:`~engine.runtime.ports.GenerationEngine` (the runtime's port) is what the executor needs from any engine: ``submit`` a
prompt and get a :class:`GenerationHandle` (await its result or stream its tokens,
each with the policy version that produced it), ``pause``, ``resume`` and
``load_weights``.  :class:`TorchEngine` implements it on one device: a fixed pool
of KV-cache slots, one decode step for all busy slots at a time (on a GPU, optionally
replayed as a captured CUDA graph), and a finished sequence's slot refilled at the
next step without waiting for the others.  At a
weight load every in-flight sequence is interrupted: its prefix is prefilled again
under the new weights and it goes on as a new segment (partial rollout).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Mapping

import torch

from engine.backends.local.model import KVCache, Policy
from engine.runtime.ports import GenerationHandle, check_request


#: Turns of the event loop an in-process engine gives after a step that finished a
#: sequence, before its next step.  From a sample's end to a trainer holding its batch
#: is a chain of wake-ups, one turn each: the rollout's future, its task (which accepts
#: it and notifies), the collector's task (which takes the batch), and the caller's
#: ``run_until_complete`` stopping the loop; measured on ``train``, the engine stopped
#: stepping between a batch's end and its collection from six turns on (tests/
#: test_executor.py checks that it does not step in between).  A turn with nothing else
#: to run costs microseconds against a decode step's milliseconds.
SETTLE_TURNS = 8


class LoopEngine:
    """What the in-process engines share: the checks of their settings, the seeded
    sampler, the queue of waiting prompts, ``submit``, ``pause``, ``resume``, ``close``,
    the weight copy of ``load_weights`` and the loop that steps while there is work.
    A subclass holds its sequences in flight (:meth:`_live`, :meth:`_drop_live`), takes
    new weights (:meth:`_interrupt`) and implements ``step``."""

    def __init__(
        self, model: torch.nn.Module, *, slots: int, eos_id: int, pad_id: int, temperature: float, seed: int, max_len: int,
        keep_cache: bool = False,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be positive (or 0: greedy), got {temperature}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.max_len = max_len
        self.eos_id, self.pad_id, self.temperature = eos_id, pad_id, temperature
        # after new weights, decode on over the keys and values the earlier weights cached
        # instead of prefilling the sequences in flight again (see load_weights)
        self.keep_cache = keep_cache
        self.version = 0
        self.sampler = torch.Generator(device=self.device).manual_seed(seed)
        self._waiting: list[GenerationHandle] = []
        self._paused = False
        self._closed = False
        self._wake = asyncio.Event()
        self.steps = 0
        self.decoded_tokens = 0
        self.prefills = 0
        self.finished = 0  # sequences finished (end of sequence or length), counted by _finished
        # what calibration reads (rl_run writes them with each update), besides the decode
        # steps, tokens decoded (busy slots summed over steps) and prefill passes: the
        # prefills' rows and tokens, and the seconds of each kind of pass
        self.prefill_rows = 0
        self.prefill_tokens = 0
        # the tokens its passes ran, padding included (rows times the padded width): a
        # pass's kernels cost what they run, not what their rows hold
        self.prefill_padded_tokens = 0
        self.prefill_s = 0.0
        self.decode_s = 0.0
        # and how a decode step's time goes with its busy slots: sums of busy * seconds and
        # of busy squared over the steps (with the steps, busy slots and seconds summed
        # above, the least-squares line of a step's time on its busy slots)
        self.decode_busy_s = 0.0
        self.decode_busy2 = 0
        # the same sums over the decode steps that came straight after a prefill pass (the
        # first step after a pass ran slower on a CPU: 0.8 ms against 2.6 a step), so that
        # calibration can tell that cost from the busy slots' (a pass starts many at once)
        self.after_pass_steps = 0
        self.after_pass_s = 0.0
        self.after_pass_busy = 0
        self.after_pass_busy_s = 0.0
        self.after_pass_busy2 = 0
        self._after_pass = False

    # -- what a subclass provides -------------------------------------------------
    def _live(self) -> list[GenerationHandle]:
        """The sequences in flight (holding a slot or a row)."""
        raise NotImplementedError

    def _drop_live(self) -> None:
        """Forget every sequence in flight (they have been failed)."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """After new weights: mark the sequences in flight interrupted, to be prefilled again."""
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    # -- the port ------------------------------------------------------------------
    def submit(self, prompt: list[int], max_new_tokens: int, *, stream: bool = False) -> GenerationHandle:
        """Queue ``prompt`` for up to ``max_new_tokens`` tokens; it gets a slot as soon as one is free."""
        check_request(prompt, max_new_tokens, self.max_len)
        handle = GenerationHandle(prompt, max_new_tokens, stream)
        self._waiting.append(handle)
        self._wake.set()
        return handle

    def pause(self) -> None:
        """Stop stepping after the current step; sequences keep their slots."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Take the trainer's weights as ``version``.  Sequences in flight are interrupted
        (their next tokens are a new segment, sampled under ``version``): their prefixes
        are prefilled again under the new weights at the next step, or with
        ``keep_cache`` decoding goes on over the keys and values already cached."""
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                tensor.copy_(state_dict[name])
        self.version = version
        for handle in self._live():
            handle.generation.interruptions += 1
        if not self.keep_cache:
            self._interrupt()

    def close(self) -> None:
        """End ``run()``; sequences still in flight fail with ``CancelledError``."""
        self._closed = True
        self._wake.set()
        for handle in [*self._waiting, *self._live()]:
            handle._fail(asyncio.CancelledError("generation engine closed"))
        self._waiting.clear()
        self._drop_live()

    @property
    def busy(self) -> int:
        """Sequences in flight."""
        return len(self._live())

    def _decoded(self, busy: int, began: float) -> None:
        """Time a decode step of ``busy`` sequences that began at ``began`` (``perf_counter``),
        its tokens recorded (the step and its tokens are counted before they are recorded:
        whoever a finished sequence wakes sees the step that finished it)."""
        elapsed = time.perf_counter() - began
        self.decode_s += elapsed
        self.decode_busy_s += busy * elapsed
        self.decode_busy2 += busy * busy
        if self._after_pass:
            self._after_pass = False
            self.after_pass_steps += 1
            self.after_pass_s += elapsed
            self.after_pass_busy += busy
            self.after_pass_busy_s += busy * elapsed
            self.after_pass_busy2 += busy * busy

    def _prefilled(self, contexts: list[list[int]], began: float, padded: int) -> None:
        """Count a prefill pass over ``contexts`` that began at ``began`` and ran ``padded``
        tokens (its rows times its width, padding included)."""
        self.prefills += 1
        self.prefill_rows += len(contexts)
        self.prefill_tokens += sum(len(c) for c in contexts)
        self.prefill_padded_tokens += padded
        self.prefill_s += time.perf_counter() - began
        self._after_pass = True

    def _finished(self, handle: GenerationHandle) -> None:
        """``handle``'s sequence ended: its result is set and it is counted."""
        handle._finish()
        self.finished += 1

    async def run(self) -> None:
        """The engine loop; returns after :meth:`close`.  After a step that finished a
        sequence it lets the event loop turn :data:`SETTLE_TURNS` times before the next
        step, so that whoever waits on that sequence acts first: the executor accepts
        a finished rollout, and a trainer waiting for a batch takes it (and pauses a
        colocated engine) before another step, instead of a few steps later."""
        while not self._closed:
            if self._paused or not (self._waiting or self.busy):
                self._wake.clear()
                await self._wake.wait()
                continue
            finished = self.finished
            try:
                self.step()
            except Exception as error:  # a failed step fails the sequences in it, not the loop
                for handle in self._live():
                    handle._fail(error)
                self._drop_live()
            for _ in range(SETTLE_TURNS if self.finished != finished else 1):
                await asyncio.sleep(0)

    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row at the engine's temperature, and its behaviour log-probability;
        at temperature 0 the most likely token (greedy, for evaluation: its log-probability
        is the one at temperature 1, and nothing trains on it)."""
        if self.temperature == 0:
            logp = torch.log_softmax(logits.float(), dim=-1)
            tokens = logp.argmax(dim=-1)
        else:
            logp = torch.log_softmax(logits.float() / self.temperature, dim=-1)
            tokens = torch.multinomial(logp.exp(), 1, generator=self.sampler).squeeze(-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


class TorchEngine(LoopEngine):
    """Continuous batching over ``slots`` KV-cache slots for a :class:`Policy`.

    ``run()`` is the engine's loop (an asyncio task): each iteration prefills newly
    admitted or interrupted sequences, decodes one token for every busy slot and
    completes the sequences that ended, then yields to the event loop.  Sampling is
    at ``temperature`` from a seeded generator.

    With ``graphs`` (a CUDA device) the decode step and a prefill pass of every shape
    the engine runs are captured as CUDA graphs when it starts, over fixed buffers, the
    cache and the weights, and replayed: a pass's rows are then padded to a power of two
    (at most every slot) by repeating its last row, which writes the same keys and values
    into the same slot.  Sampling and the bookkeeping stay outside the graphs.
    """

    #: a decode step runs over every slot of the cache, busy or not (calibration reads
    #: it from the metrics line: the step's cost then grows with the slots)
    decodes_every_slot = True
    #: a prefill pass is as wide as its longest context rounded up to this multiple
    prefill_pad_to = 16

    model: Policy

    def __init__(
        self, model: Policy, *, slots: int, eos_id: int, pad_id: int = 0, temperature: float = 1.0, seed: int = 0,
        keep_cache: bool = False, graphs: bool = False,
    ) -> None:
        super().__init__(model, slots=slots, eos_id=eos_id, pad_id=pad_id, temperature=temperature, seed=seed,
                         max_len=model.config.max_seq_len, keep_cache=keep_cache)
        if graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {self.device}")
        parameter = next(model.parameters())
        self.slots = slots
        self.cache = KVCache(model.config, slots, self.max_len, self.device, parameter.dtype)
        self._slots: list[GenerationHandle | None] = [None] * slots
        self._needs_prefill: set[int] = set()  # slots holding a sequence to prefill (freeing a slot drops it)
        self._last = torch.full((slots,), pad_id, dtype=torch.long, device=self.device)
        self._positions = torch.zeros(slots, dtype=torch.long, device=self.device)
        # the decode step (and the prefill passes) captured once as CUDA graphs over the
        # buffers above, the cache and the weights (load_weights copies into them), replayed
        # each step: one launch instead of a few hundred, so that a step costs the GPU's
        # time rather than the host's
        self.graphs = graphs
        #: a prefill pass runs a power of two of rows (at most every slot): the graphs' shapes
        self.prefill_pow2_rows = graphs
        self._graph: Any = None
        self._logits = torch.zeros(0)
        # prefill passes as graphs too, one per shape: rows padded up to a power of two
        # (or to every slot), the width to the same multiple of 16 as the eager pass
        self._prefill_graphs: dict[tuple[int, int], tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if graphs:
            self._capture_all()

    # -- its sequences in flight ----------------------------------------------
    def _live(self) -> list[GenerationHandle]:
        return [handle for handle in self._slots if handle is not None]

    def _drop_live(self) -> None:
        self._slots = [None] * len(self._slots)
        self._needs_prefill.clear()

    def _interrupt(self) -> None:
        self._needs_prefill.update(slot for slot, handle in enumerate(self._slots) if handle is not None)

    # -- one step ------------------------------------------------------------
    def _admit(self) -> None:
        for slot, handle in enumerate(self._slots):
            if handle is None and self._waiting:
                self._slots[slot] = self._waiting.pop(0)
                self._needs_prefill.add(slot)

    def _release_cancelled(self) -> None:
        for slot, handle in enumerate(self._slots):
            if handle is not None and handle.cancelled:
                handle._fail(asyncio.CancelledError("generation cancelled"))
                self._slots[slot] = None
                self._needs_prefill.discard(slot)

    def _record(self, slots: list[int], tokens: list[int], logprobs: list[float]) -> None:
        for slot, token, logprob in zip(slots, tokens, logprobs):
            handle = self._slots[slot]
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
                self._slots[slot] = None
                self._needs_prefill.discard(slot)

    @torch.no_grad()
    def step(self) -> None:
        """Prefill what needs it, then decode one token for every busy slot."""
        self._release_cancelled()
        self._admit()
        if self._needs_prefill:
            self._prefill(sorted(self._needs_prefill))
            self._needs_prefill.clear()
        busy = [slot for slot, handle in enumerate(self._slots) if handle is not None]
        if not busy:
            return
        began = time.perf_counter()
        logits = self._decode()
        tokens, logprobs = self._sample(logits)
        self._last.copy_(tokens)
        self._positions.add_(1).clamp_(max=self.max_len - 1)
        tokens_list, logprobs_list = tokens.tolist(), logprobs.tolist()
        self.steps += 1
        self.decoded_tokens += len(busy)
        self._record(busy, [tokens_list[s] for s in busy], [logprobs_list[s] for s in busy])
        self._decoded(len(busy), began)

    def _decode(self) -> torch.Tensor:
        """Logits ``[slots, vocab]`` of one decode step over every slot: the captured graph
        replayed, or the model run (without ``graphs``)."""
        if not self.graphs:
            return self.model.decode(self._last, self._positions, self.cache)
        self._graph.replay()
        return self._logits

    def _width(self, longest: int) -> int:
        """The width a prefill pass of contexts up to ``longest`` tokens is padded to: few
        distinct shapes for the kernels (and the graphs)."""
        return max(longest, min(self.max_len, -(-longest // 16) * 16))

    def _rows(self, count: int) -> int:
        """The rows a graph's prefill pass of ``count`` contexts runs: a power of two, or every slot."""
        return min(1 << (count - 1).bit_length(), self.slots)

    @torch.no_grad()
    def _capture_all(self) -> None:
        """Capture the decode step and a prefill pass of every shape :meth:`_prefill` can
        ask for, the largest first, in one memory pool (they run one at a time, in one
        stream).  Nothing is in flight yet, so what their warm-up runs write into the
        cache is overwritten before anything reads it."""
        pool = torch.cuda.graph_pool_handle()
        row_counts = sorted({self._rows(count) for count in range(1, self.slots + 1)}, reverse=True)
        widths = sorted({self._width(longest) for longest in range(1, self.max_len + 1)}, reverse=True)
        for rows in row_counts:
            for width in widths:
                tokens = torch.full((rows, width), self.pad_id, dtype=torch.long, device=self.device)
                index = torch.arange(rows, device=self.device)
                graph, logits = self._capture(lambda: self.model.prefill(tokens, index, self.cache), pool)
                self._prefill_graphs[rows, width] = (graph, tokens, index, logits)
        self._graph, self._logits = self._capture(lambda: self.model.decode(self._last, self._positions, self.cache), pool)

    def _capture(self, run: Any, pool: Any) -> tuple[Any, torch.Tensor]:
        """``run`` captured as a CUDA graph, after two warm-up runs on a side stream (as
        capture needs), and the tensor it returns (refilled at each replay)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = run()
        return graph, out

    def _prefill(self, slots: list[int]) -> None:
        began = time.perf_counter()
        contexts = []
        for slot in slots:
            handle = self._slots[slot]
            assert handle is not None  # a slot awaits prefill only while it holds a sequence
            contexts.append(handle.generation.prompt + handle.generation.tokens)
        width = self._width(max(len(c) for c in contexts))
        rows, padded = len(slots), list(slots)
        if self.graphs:  # the extra rows repeat the last: the same slot, the same tokens, the same writes
            rows = self._rows(len(slots))
            contexts = contexts + [contexts[-1]] * (rows - len(slots))
            padded += [slots[-1]] * (rows - len(slots))
        batch = torch.tensor([c + [self.pad_id] * (width - len(c)) for c in contexts], dtype=torch.long)
        index = torch.tensor(padded, dtype=torch.long)
        if self.graphs:
            graph, static_tokens, static_index, logits = self._prefill_graphs[rows, width]
            static_tokens.copy_(batch)
            static_index.copy_(index)
            graph.replay()
        else:
            logits = self.model.prefill(batch.to(self.device), index.to(self.device), self.cache)
        contexts = contexts[: len(slots)]
        index = index[: len(slots)].to(self.device)
        lengths = torch.tensor([len(c) for c in contexts], device=self.device)
        last = logits[torch.arange(len(slots), device=self.device), lengths - 1]
        tokens, logprobs = self._sample(last)
        self._last[index] = tokens
        self._positions[index] = lengths
        self._record(slots, tokens.tolist(), logprobs.tolist())  # .tolist() waits for the device
        self._prefilled(contexts, began, batch.numel())
