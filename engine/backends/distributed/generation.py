"""Disaggregated generation: generator ranks serve the run's prompts; rank 0 drives them.

:class:`RemoteEngine` is the :class:`~engine.runtime.ports.GenerationEngine` port on
rank 0, so the executor is unchanged.  It hands each submitted prompt to the least
loaded generator and, while there is work and generation is not paused, runs
*ticks*: one message to every generator with work (new prompts, cancellations), each
generator decodes until a sequence ends or ``TICK_STEPS`` steps have passed and
answers with the tokens sampled since its last answer (id, log-prob and version of
each) and the sequences that ended; rank 0 feeds them to the handles.  Between two
ticks the generators wait, so rank 0's handles hold every token generated so far
when the executor pauses: a pause interrupts each rollout at a known length.

:meth:`RemoteEngine.load_weights` is the weight sync of a version bump (generation
paused): a ``sync`` message with the tensors' names, shapes and dtypes, one broadcast
per dtype over the ``sync`` group (NCCL on GPUs, gloo on the CPU), and each
generator's answer once its engine holds the weights; sequences in flight go on as
a new segment under the new version (partial rollouts).  ``on_sync(phase, version)``
is called before (``started``) and after (``finished``): the run logs both.

:func:`serve` is a generator rank's loop around its own engine (the built-in
:class:`~engine.backends.local.generation.TorchEngine` or the Hugging Face one).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable, Mapping

import torch

from engine.backends.distributed.group import Group, RankFailed
from engine.runtime.ports import GenerationHandle, check_request

#: Decode steps a generator takes per tick at most (it answers sooner when a sequence ends).
TICK_STEPS = 8


class RemoteEngine:
    """The generation port over the generator ranks of ``group`` (see the module docstring)."""

    def __init__(
        self, group: Group, *, slots: int, eos_id: int, pad_id: int, temperature: float, seed: int, max_len: int,
        on_sync: Callable[[str, int], None] | None = None,
    ) -> None:
        layout = group.layout
        self.group, self.max_len, self.on_sync = group, max_len, on_sync
        self.generators = list(range(layout.trainers, layout.world))
        self.version = 0
        self.steps = 0
        self.decoded_tokens = 0
        self._ids = itertools.count()
        self._handles: dict[int, tuple[int, GenerationHandle]] = {}  # id -> (generator rank, handle)
        self._outbox: dict[int, list[tuple[int, list[int], int]]] = {rank: [] for rank in self.generators}
        self._paused = False
        self._closed = False
        self._wake: asyncio.Event | None = None
        for index, rank in enumerate(self.generators):
            settings = dict(slots=slots, eos_id=eos_id, pad_id=pad_id, temperature=temperature, seed=seed + 7919 * index)
            group.send(("init", settings), rank)

    # -- the port -------------------------------------------------------------------
    def submit(self, prompt: list[int], max_new_tokens: int, *, stream: bool = False) -> GenerationHandle:
        check_request(prompt, max_new_tokens, self.max_len)
        handle = GenerationHandle(prompt, max_new_tokens, stream)
        load = {rank: 0 for rank in self.generators}
        for rank, _ in self._handles.values():
            load[rank] += 1
        rank = min(self.generators, key=lambda r: load[r])
        key = next(self._ids)
        self._handles[key] = (rank, handle)
        self._outbox[rank].append((key, list(prompt), max_new_tokens))
        self._notify()
        return handle

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._notify()

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """The weight sync: ``state_dict`` to every generator as ``version``."""
        if self.on_sync is not None:
            self.on_sync("started", version)
        names = list(state_dict)
        tensors = [state_dict[name].detach().contiguous() for name in names]
        meta = [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in zip(names, tensors)]
        for rank in self.generators:
            self.group.send(("sync", version, meta), rank)
        self.group.broadcast_weights(tensors)
        for rank in self.generators:
            answer = self.group.answer(rank)
            if answer != ("synced", version):
                raise RankFailed(f"{self.group.layout.name(rank)} answered {answer!r} to the weight sync of version {version}")
        self.version = version
        if self.on_sync is not None:
            self.on_sync("finished", version)

    async def run(self) -> None:
        """Tick while there is work and generation is not paused; returns after :meth:`close`."""
        self._wake = asyncio.Event()
        while not self._closed:
            if self._paused or not self._handles:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._tick()
            await asyncio.sleep(0)

    def close(self) -> None:
        """Stop the generators; sequences in flight fail with ``CancelledError``."""
        if self._closed:
            return
        self._closed = True
        for rank in self.generators:
            self.group.send(("close",), rank)
        for _, handle in self._handles.values():
            handle._fail(asyncio.CancelledError("generation engine closed"))
        self._handles.clear()
        self._notify()

    @property
    def busy(self) -> int:
        """Sequences handed to the generators and not ended yet."""
        return len(self._handles)

    # -- internals --------------------------------------------------------------------
    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _tick(self) -> None:
        cancelled: dict[int, list[int]] = {rank: [] for rank in self.generators}
        for key, (rank, handle) in list(self._handles.items()):
            if handle.cancelled:
                cancelled[rank].append(key)
                handle._fail(asyncio.CancelledError("generation cancelled"))
                del self._handles[key]
        working = [rank for rank in self.generators if self._outbox[rank] or cancelled[rank]
                   or any(r == rank for r, _ in self._handles.values())]
        for rank in working:
            self.group.send(("step", self._outbox[rank], cancelled[rank]), rank)
            self._outbox[rank] = []
        for rank in working:
            self._apply(self.group.answer(rank))

    def _apply(self, answer: tuple[Any, ...]) -> None:
        _, tokens, ended, failed, steps, decoded = answer
        self.steps += steps
        self.decoded_tokens += decoded
        for key, ids, logprobs, versions, interruptions in tokens:
            entry = self._handles.get(key)
            if entry is None:
                continue
            handle = entry[1]
            handle.generation.interruptions = interruptions
            for token, logprob, version in zip(ids, logprobs, versions):
                handle._emit(token, logprob, version)
        for key in ended:
            entry = self._handles.pop(key, None)
            if entry is not None:
                entry[1]._finish()
        for key, message in failed:
            entry = self._handles.pop(key, None)
            if entry is not None:
                entry[1]._fail(RuntimeError(message))


def serve(group: Group, build: Callable[[dict[str, Any]], Any]) -> int:
    """A generator rank's loop: ``build(settings)`` makes its engine from rank 0's
    ``init``; then it answers ticks and weight syncs until rank 0 closes the run.
    Returns the number of decode steps taken."""
    return asyncio.run(_serve(group, build))


async def _serve(group: Group, build: Callable[[dict[str, Any]], Any]) -> int:
    message = group.recv(0)
    if message[0] != "init":
        raise RuntimeError(f"{group.layout.name()} expected init from rank 0, got {message[0]!r}")
    engine = build(message[1])
    handles: dict[int, GenerationHandle] = {}
    sent: dict[int, int] = {}
    while True:
        message = group.recv(0)
        kind = message[0]
        if kind == "close":
            engine.close()
            return int(engine.steps)
        if kind == "sync":
            _, version, meta = message
            buffers = [torch.empty(shape, dtype=getattr(torch, dtype), device=group.device) for _, shape, dtype in meta]
            group.broadcast_weights(buffers)
            engine.load_weights({name: buffer for (name, _, _), buffer in zip(meta, buffers)}, version)
            group.send(("synced", version), 0)
            continue
        if kind != "step":
            raise RuntimeError(f"{group.layout.name()} got an unknown message from rank 0: {kind!r}")
        _, submitted, cancelled = message
        for key, prompt, max_new_tokens in submitted:
            handles[key], sent[key] = engine.submit(prompt, max_new_tokens), 0
        for key in cancelled:
            handle = handles.pop(key, None)
            sent.pop(key, None)
            if handle is not None:
                handle.cancel()
        steps, decoded = engine.steps, engine.decoded_tokens
        _decode(engine, handles)
        group.send(_answer(handles, sent, engine.steps - steps, engine.decoded_tokens - decoded), 0)


def _decode(engine: Any, handles: dict[int, GenerationHandle]) -> None:
    """Step ``engine`` until a sequence ends, nothing is left, or ``TICK_STEPS`` steps."""
    for _ in range(TICK_STEPS):
        if all(handle.done.done() for handle in handles.values()) and not engine.busy:
            return
        try:
            engine.step()
        except Exception as error:  # a failed step fails the sequences in it (as the engine's own loop does)
            for handle in handles.values():
                if not handle.done.done():
                    handle._fail(error)
                    handle.cancel()  # the engine frees its slot at the next step
            return
        if any(handle.done.done() for handle in handles.values()):
            return


def _answer(handles: dict[int, GenerationHandle], sent: dict[int, int], steps: int, decoded: int) -> tuple[Any, ...]:
    """What rank 0 learns from a tick: new tokens, ended and failed sequences (which are forgotten)."""
    tokens, ended, failed = [], [], []
    for key, handle in list(handles.items()):
        generation, start = handle.generation, sent[key]
        if len(generation.tokens) > start:
            tokens.append((key, generation.tokens[start:], generation.logprobs[start:], generation.versions[start:], generation.interruptions))
            sent[key] = len(generation.tokens)
        if handle.done.done():
            if handle.done.cancelled():
                failed.append((key, "generation cancelled"))
            elif handle.done.exception() is not None:
                failed.append((key, str(handle.done.exception())))
            else:
                ended.append(key)
            del handles[key], sent[key]
    return ("tokens", tokens, ended, failed, steps, decoded)
