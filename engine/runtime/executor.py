"""The asyncio rollout executor: AReaL's verbs, every lifecycle change through the ledger.

``submit`` enqueues a prompt; a dispatcher starts pending rollouts only while the
ledger's capacity allows; each rollout samples a GRPO group of completions from a
:class:`~engine.runtime.ports.GenerationEngine`, scores them with the
task's verifier and asks the staleness policy to accept or filter it.  A rollout
that raises or times out is ``rejected(reason=error|timeout)`` (capacity comes back
through the reducer) and retried up to ``max_retries`` times as a new attempt.
``prepare_batch`` returns the oldest usable rollouts; ``pause``, ``set_version`` and
``resume`` are a weight update: ``pause`` interrupts the rollouts still generating,
``set_version`` bumps the version and resumes them as a new segment under the new
weights, ``resume`` admits again.

The executor keeps no lifecycle rule and spells no event sequence of its own:
capacity, staleness, batch selection and retries are the reducer's and
:mod:`engine.core.policies`', and every step goes through a ledger verb that appends
what :mod:`engine.core.protocol` says it is made of.  A prompt's first attempt is
named by its key, retries ``<key>#<n>``.  Completed
samples go to a :class:`TrajectoryStore` before the ledger accepts them, so that a
resumed run finds the data of every ready rollout.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from engine.core import policies, protocol
from engine.core.events import Enqueued, Event
from engine.core.reducer import PENDING, READY
from engine.ledger import Ledger
from engine.logconfig import get_logger
from engine.runtime.ports import (
    Generation,
    GenerationEngine,
    GenerationHandle,
    ProblemLike,
    Sample,
    TaskLike,
    TokenizerLike,
)
from engine.runtime.store import TrajectoryStore


@dataclass
class _Flight:
    """A rollout whose completions are being generated (its versions are in the ledger's record)."""

    rollout: str
    handles: list[GenerationHandle] = field(default_factory=list)
    segment_start: int = 0  # tokens generated before the current segment began

    def tokens(self) -> int:
        return sum(len(h.generation.tokens) for h in self.handles)

    def generating(self) -> bool:
        """Not every completion is done yet (a flight whose task has not submitted them yet is generating)."""
        return not self.handles or any(not h.done.done() for h in self.handles)


class RolloutExecutor:
    """Runs rollouts on ``engine`` for prompts of ``task``, driven by ``ledger``.

    Prompts are named by keys (``p<index>``) that ``problem_of`` turns back into a
    :class:`ProblemLike`, so a resumed run rebuilds any prompt from the log alone.
    ``timeout_s`` bounds one rollout; ``max_retries`` bounds new attempts after an
    error or a timeout.  ``ledger_seconds`` accumulates the time spent in the ledger,
    its log and the policies (the engine's overhead), ``store_seconds`` the time spent
    in the trajectory store.
    """

    def __init__(
        self,
        ledger: Ledger,
        engine: GenerationEngine,
        task: TaskLike,
        tokenizer: TokenizerLike,
        problem_of: Callable[[str], ProblemLike],
        *,
        group_size: int,
        store: TrajectoryStore | None = None,
        timeout_s: float | None = None,
        max_retries: int = 0,
    ) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {max_retries}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.ledger = ledger
        self.engine = engine
        self.task = task
        self.tokenizer = tokenizer
        self.problem_of = problem_of
        self.group_size = group_size
        self.store = store if store is not None else TrajectoryStore()
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.ledger_seconds = 0.0
        self.store_seconds = 0.0
        self._timing = False
        self._flights: dict[str, _Flight] = {}
        self._pending: collections.deque[str] = collections.deque()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None  # how the engine loop or the dispatcher ended, if with an error
        self._updating = False  # between pause() and resume()
        self._interrupted: tuple[str, ...] = ()  # interrupted by pause(), not yet resumed
        self._logger = get_logger("rollout_ledger.executor")

    # -- plumbing --------------------------------------------------------------
    def timed(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call into the ledger (or the store), timing it as engine overhead."""
        if self._timing:  # nested: the outer call counts the time
            return function(*args)
        self._timing = True
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.ledger_seconds += time.perf_counter() - start
            self._timing = False

    def _untimed(self, function: Callable[..., None]) -> Callable[..., None]:
        """``function``, its time taken back out of ``ledger_seconds`` (model work, not overhead)."""

        def call(*args: Any) -> None:
            start = time.perf_counter()
            try:
                function(*args)
            finally:
                self.ledger_seconds -= time.perf_counter() - start

        return call

    def _notify(self) -> None:
        self._changed.set()

    async def _changes(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def start(self) -> None:
        """Start the engine loop and the dispatcher (inside a running event loop)."""
        if self._background:
            return
        self._background = [asyncio.create_task(self.engine.run()), asyncio.create_task(self._dispatch())]
        for task in self._background:
            task.add_done_callback(self._stopped)

    def _stopped(self, task: "asyncio.Task[None]") -> None:
        """The engine loop or the dispatcher ended with an error: waiting for a batch
        raises it instead of waiting forever."""
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()
            self._notify()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"the executor stopped: {self._failure}") from self._failure

    async def close(self) -> None:
        """Stop the dispatcher, the rollouts in flight and the engine (the ledger stays open)."""
        self.engine.close()
        for task in [*self._background, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._background, *self._tasks, return_exceptions=True)
        self._background.clear()
        self._tasks.clear()

    # -- AReaL's verbs ---------------------------------------------------------
    def submit(self, key: str) -> str:
        """Enqueue the prompt ``key`` as a new rollout (attempt 1, named ``key``); returns its id."""
        (event,) = self.timed(self._enqueue, key)
        self._notify()
        return event.rollout

    async def drain(self) -> None:
        """Return once none of the rollouts in flight is generating (each one's samples
        have finished, or it failed); a failure of the engine loop or the dispatcher is
        raised instead of waiting forever.  Rollouts that start meanwhile are waited for
        too: pause the dispatcher's starts first (a full ledger does) to drain a fixed set."""
        while any(flight.generating() for flight in self._flights.values()):
            self._raise_failure()
            await self._changes()
        self._raise_failure()

    def ready(self) -> int:
        """Ready rollouts the policy would let a batch use now."""
        state = self.ledger.state
        return len(policies.select_batch(state, max(1, state.ready))) if state.ready else 0

    async def wait(self, count: int, timeout: float | None = None) -> int:
        """Wait until ``count`` usable rollouts are ready; returns how many are.  Raises
        ``TimeoutError`` after ``timeout`` seconds."""

        async def until_ready() -> int:
            while (ready := self.ready()) < count:
                self._raise_failure()
                self._check_progress(count)
                await self._changes()
            return ready

        return await asyncio.wait_for(until_ready(), timeout)

    async def prepare_batch(self, batch_size: int, prompts: Iterator[str]) -> tuple[tuple[str, ...], list[list[Sample]]]:
        """Keep the pending queue topped up from ``prompts`` (as far as the policy's
        ``enqueue_room`` allows) until ``batch_size`` usable rollouts are ready; consume
        them, oldest first, and return their ids and sample groups."""
        while True:
            self._raise_failure()
            found = self.timed(self._try_batch, batch_size, prompts)
            if found is not None:
                return found
            await self._changes()

    def _try_batch(self, batch_size: int, prompts: Iterator[str]) -> tuple[tuple[str, ...], list[list[Sample]]] | None:
        self._top_up(prompts)
        # the ready count bounds what select_batch can find: skip the scan while it is short
        batch = self.ledger.prepare_batch(batch_size) if self.ledger.count(READY) >= batch_size else None
        if batch is not None:
            start = time.perf_counter()
            groups = [self.store.get(rollout) for rollout in batch]
            self.store_seconds += time.perf_counter() - start
            self.ledger_seconds -= time.perf_counter() - start  # counted by the store, not the ledger
            return batch, groups
        self._check_progress(batch_size)
        return None

    def pause(self) -> None:
        """Begin a weight update: stop admissions and generation, and interrupt the
        rollouts still generating (each closes its segment under the current version)."""
        generating = {flight.rollout: flight.tokens() for flight in self._flights.values() if flight.generating()}
        segments = {rollout: tokens - self._flights[rollout].segment_start for rollout, tokens in generating.items()}
        events = self.timed(self.ledger.begin_update, segments)
        for rollout, tokens in generating.items():
            self._flights[rollout].segment_start = tokens
        self._updating = True
        self._interrupted = protocol.interrupted(events)
        self.engine.pause()

    def resume(self) -> None:
        """End the weight update: admit and generate again.  (Rollouts that
        :meth:`pause` interrupted and no :meth:`set_version` resumed continue under the
        current version.)"""
        if self._interrupted:
            self._note(self.timed(self.ledger.end_pause, self._interrupted))
        else:
            self.timed(self.ledger.unpause)
        self._updating, self._interrupted = False, ()
        self.engine.resume()
        self._notify()

    def set_version(self, weights: dict[str, Any], recompute: Callable[[tuple[str, ...]], None] | None = None) -> int:
        """Move to the next policy version with ``weights``: under ``segment_wise``,
        ``recompute`` first computes the proximal log-probs the policy asks for; then the
        ledger bumps the version and purges, the rollouts :meth:`pause` interrupted
        resume under the new version as a new segment, and the engine loads the
        weights.  Without a :meth:`pause` first, the whole update (pause to resume)
        happens here.  Returns the new version."""
        implicit = not self._updating
        if implicit:
            self.pause()
        self.timed(self.ledger.recompute, None if recompute is None else self._untimed(recompute))
        self._note(self.timed(self.ledger.advance, self._interrupted))
        self._interrupted = ()
        version = self.ledger.version
        self.engine.load_weights(weights, version)
        if implicit:
            self.resume()
        self._notify()
        return version

    # -- internals ---------------------------------------------------------------
    def _top_up(self, prompts: Iterator[str]) -> None:
        config, pending = self.ledger.config, self.ledger.count(PENDING)
        # Keep one round of slots waiting, within what the policy lets wait.
        room = max(0, config.rank_max_concurrent - pending)  # type: ignore[union-attr]
        allowed = policies.room_to_enqueue(config, pending)  # type: ignore[arg-type]
        if allowed is not None:
            room = min(room, allowed)
        if not room:
            return
        keys = list(itertools.islice(prompts, room))
        if keys:
            self._enqueue(*keys)
            self._notify()

    def _check_progress(self, wanted: int) -> None:
        """Fail loudly instead of waiting forever when nothing can change any more."""
        if self._flights or self.ledger.count(PENDING) or self.ledger.paused:
            return
        if self.ready() < wanted:
            raise RuntimeError(
                f"no progress possible: {self.ready()} usable ready rollouts, {wanted} wanted, nothing pending or "
                f"running, capacity {self.ledger.capacity}"
            )

    async def _dispatch(self) -> None:
        """Start pending rollouts, oldest first, while the capacity rule allows."""
        while True:
            started = False
            if not self.ledger.count(PENDING) or self.ledger.capacity <= 0:
                await self._changes()
                continue
            for flight in self.timed(self._start_pending):
                task = asyncio.create_task(self._run(flight))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                started = True
            if not started:
                await self._changes()
            else:
                await asyncio.sleep(0)

    def _enqueue(self, *keys: str) -> tuple[Event, ...]:
        events = self.ledger.enqueue(*keys)
        self._note(events)
        return events

    def _note(self, events: Sequence[Event]) -> None:
        """Remember enqueued rollouts in order: a cache of the ledger's pending queue."""
        if Enqueued in map(type, events):
            self._pending.extend([event.rollout for event in events if type(event) is Enqueued])

    def _start_pending(self) -> list[_Flight]:
        """Submit pending rollouts, oldest first, while there is capacity."""
        ledger = self.ledger
        queue = self._pending
        if len(queue) < ledger.count(PENDING):  # enqueued by someone else (a resume, a caller): rebuild from the ledger
            state = ledger.state
            queue.clear()
            queue.extend(rollout for _, rollout in sorted((r.order, k) for k, r in state.rollouts.items() if r.status == PENDING))
        chosen: list[str] = []
        room = ledger.capacity  # each start takes one unit of capacity
        while queue and len(chosen) < room:
            rollout = queue.popleft()
            record = ledger.record(rollout)
            if record is not None and record.status == PENDING:
                chosen.append(rollout)
        ledger.submit(chosen)
        started = [_Flight(rollout) for rollout in chosen]
        for flight in started:
            self._flights[flight.rollout] = flight
        return started

    async def _run(self, flight: _Flight) -> None:
        rollout = flight.rollout
        record = self.ledger.record(rollout)
        if record is None:
            raise KeyError(f"rollout {rollout!r} is not live in the ledger")
        try:
            problem = self.problem_of(record.prompt)
            prompt = self.tokenizer.prompt_ids(problem.prompt)
            flight.handles = [self.engine.submit(prompt, self.task.max_new_tokens) for _ in range(self.group_size)]
            generations = await self._group(flight.handles)
            samples = []
            for generation in generations:
                completion = self.tokenizer.decode(generation.tokens)
                samples.append(
                    Sample(prompt, generation.tokens, generation.logprobs, generation.versions, self.task.reward(problem, completion))
                )
        except asyncio.CancelledError:
            for handle in flight.handles:
                handle.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - any failure of one rollout becomes its rejection
            for handle in flight.handles:
                handle.cancel()
            reason = "timeout" if isinstance(error, TimeoutError) else "error"
            self._logger.warning("rollout failed", rollout=rollout, reason=reason, error=repr(error))
            del self._flights[rollout]
            self._note(self.timed(self._fail, rollout, reason))
            self._notify()
            return
        del self._flights[rollout]
        start = time.perf_counter()
        self.store.put(rollout, samples)
        self.store_seconds += time.perf_counter() - start
        self._note(self.timed(self._complete, rollout, flight.tokens() - flight.segment_start))
        self._notify()

    def _group(self, handles: list[GenerationHandle]) -> asyncio.Future[list[Generation]]:
        """One future for a rollout's samples, set by the handles' own callbacks: the
        rollout's task wakes one turn of the event loop after its last sample finished
        (a task per sample under ``gather`` and ``wait_for`` took several turns, and an
        engine steps once per turn, so a finished rollout waited steps to be accepted).
        It fails with the first sample that fails, is cancelled with one that is, and
        fails with ``TimeoutError`` after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        group: asyncio.Future[list[Generation]] = loop.create_future()
        left = len(handles)

        def one(done: asyncio.Future[Generation]) -> None:
            nonlocal left
            if group.done():
                return
            if done.cancelled():
                group.cancel()
            elif (error := done.exception()) is not None:
                group.set_exception(error)
            else:
                left -= 1
                if left == 0:
                    group.set_result([handle.done.result() for handle in handles])

        def expire() -> None:
            if not group.done():
                group.set_exception(TimeoutError())

        for handle in handles:
            handle.done.add_done_callback(one)
        if self.timeout_s is not None:
            timer = loop.call_later(self.timeout_s, expire)
            group.add_done_callback(lambda _: timer.cancel())
        return group

    def _fail(self, rollout: str, reason: str) -> tuple[Event, ...]:
        return self.ledger.fail(rollout, reason, max_retries=self.max_retries)

    def _complete(self, rollout: str, tokens: int) -> tuple[Event, ...]:
        """Close the rollout's last segment; the policy accepts or filters it."""
        return self.ledger.complete(rollout, tokens=tokens)
