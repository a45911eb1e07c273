"""The SimPy model of an asynchronous RL cluster, driven by the ledger.

Generation servers and the trainer only wait (SimPy timeouts) and emit ledger
events; every lifecycle decision comes from the engine: admission from
``reducer.capacity``, accept-or-filter from ``policies.on_complete``, batches from
``policies.select_batch``, purges and recomputation from ``policies.on_version``
and ``policies.recompute_requests``.  Events are folded by a ``reducer.Folder``
and written in batches to the same SQLite log a real run writes.

A server does continuous batching: a decode step costs ``base + per_seq * active +
per_kv_token * kv_tokens`` and advances every active sequence by one token.
Between two events the set of sequences is fixed, so after ``n`` steps the kv
cache has grown by ``active * n`` tokens and the time taken is the closed form
``T(n) = n * c0 + per_kv_token * active * n * (n - 1) / 2``; progress is advanced
analytically with it (and its inverse), never token by token.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from functools import partial
from pathlib import Path
from typing import Callable, Generator

import simpy

from engine.core import policies
from engine.core.events import (
    Consumed,
    Enqueued,
    Event,
    InterruptedBatch,
    Paused,
    Rejected,
    Resumed,
    ResumedBatch,
    RunStarted,
    Segment,
    Submitted,
    Version,
    stamped,
)
from engine.core.reducer import Folder, State, capacity
from engine.log import EventLog
from sim.config import Scenario
from sim.summary import Summary, SummaryBuilder
from sim.workload import sampler

#: A debug-mode check run after every event: ``check(state, event)``.
Check = Callable[[State, Event], None]


class SimulationStalled(RuntimeError):
    """Nothing can happen any more (no event scheduled) before the run's goal was reached."""


class _Live:
    """What the simulator (the shell) tracks of one submitted rollout until it is trained or dropped."""

    __slots__ = ("server", "left", "prompt", "done", "segmented", "head", "tail", "start")

    def __init__(self, server: "_Server", left: int, prompt: int, head: int, start: float) -> None:
        self.server: _Server | None = server
        self.left = left  # samples still generating
        self.prompt = prompt  # prompt tokens (per sample)
        self.done = 0  # response tokens of finished samples
        self.segmented = 0  # response tokens already reported in segment events
        self.head = head  # version at submission
        self.tail = head  # version of the current segment
        self.start = start  # submission time


class _Server:
    """One generation server's analytical continuous-batching state."""

    __slots__ = ("index", "heap", "steps", "kv_offset", "active", "stall", "last", "epoch", "busy")

    def __init__(self, index: int) -> None:
        self.index = index
        # (finish step, sequence number, rollout, admission step, kv tokens at admission)
        self.heap: list[tuple[float, int, str, float, int]] = []
        self.steps = 0.0  # decode steps done since the start (fractional between events)
        self.kv_offset = 0.0  # sum of (kv0 - admission step): kv tokens = kv_offset + active * steps
        self.active = 0
        self.stall = 0.0  # prefill seconds to spend before decoding resumes
        self.last = 0.0  # simulated time up to which progress is accounted
        self.epoch = 0  # bumps on every re-plan; a timer of an older epoch is ignored
        self.busy = 0.0  # seconds spent prefilling or decoding


class Simulation:
    """One simulated run of ``scenario``; :meth:`run` returns its :class:`Summary`.

    ``log`` names the SQLite event log to write (none when ``None``); ``progress``
    is called with the number of rollouts trained at each training step.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        log: str | Path | None = None,
        flush_every: int = 4096,
        progress: Callable[[int], None] | None = None,
        check: Check | None = None,
    ) -> None:
        self.scenario = scenario
        self.config = scenario.ledger_config()
        self.env = simpy.Environment()
        self.rng = random.Random(scenario.run.seed)
        self.folder = Folder()
        if log is not None and Path(log).exists():
            raise FileExistsError(f"{log} already exists: a simulation writes a new event log")
        self._log = EventLog(log) if log is not None else None
        self._flush_every = flush_every
        self._unwritten: list[Event] = []
        self._progress = progress
        self._check = check
        workload = scenario.workload
        self._prompt_len = sampler(workload.prompt_len, "workload.prompt_len")
        self._response_len = sampler(workload.response_len, "workload.response_len")
        self._group = workload.group_size
        generation = scenario.generation
        self._servers = [_Server(i) for i in range(generation.servers)]
        self._slots = generation.slots
        self._base = generation.step_base_s
        self._per_seq = generation.step_per_seq_s
        self._per_kv = generation.step_per_kv_token_s
        self._prefill = generation.prefill_per_token_s
        self._on_update = generation.on_update
        self._paused = False
        self._pending: deque[str] = deque()
        self._pending_prompt: dict[str, int] = {}
        self._live: dict[str, _Live] = {}
        self._prompts = 0
        self._sequences = 0
        self._batch_wanted: simpy.Event | None = None
        self._drained: simpy.Event | None = None
        self._done = self.env.event()
        self.stats = SummaryBuilder(scenario, generation.servers)
        self._emit = self._emitter()

    # -- the ledger ------------------------------------------------------------------

    def _emitter(self) -> Callable[[Event], None]:
        """The function that folds one event and queues it for the log (the hot path:
        built once, with only the steps this run needs)."""
        apply = self.folder.apply
        check = self._check
        if self._log is None and check is None:
            return apply
        unwritten = self._unwritten
        limit = self._flush_every
        folder = self.folder

        def emit(event: Event) -> None:
            apply(event)
            if check is not None:
                check(folder.state, event)
            if self._log is not None:
                unwritten.append(event)
                if len(unwritten) >= limit:
                    self._flush()

        return emit

    def _flush(self) -> None:
        if self._log is not None and self._unwritten:
            self._log.append(self._unwritten)
            self._unwritten.clear()

    def _policy_events(self, events: tuple[Event, ...], now: float) -> None:
        """Emit what a policy returned, and keep the shell's books on each event.

        A requeued prompt (``enqueued`` after ``filtered``) keeps the filtered rollout's prompt length."""
        prompt = 0
        for event in events:
            self._emit(stamped(event, now))
            kind = event.type
            if kind == "accepted":
                self.stats.accepted += 1
                self._wake_trainer()
            elif kind == "filtered":
                live = self._live.pop(event.rollout)
                prompt = live.prompt
                self.stats.filtered += 1
                self.stats.wasted_tokens += live.done
            elif kind == "enqueued":
                self._pending.append(event.rollout)
                self._pending_prompt[event.rollout] = prompt

    # -- generation ------------------------------------------------------------------

    def _advance(self, server: _Server, now: float) -> None:
        """Account the server's progress from ``server.last`` to ``now`` (same sequences)."""
        elapsed = now - server.last
        server.last = now
        if elapsed <= 0 or server.active == 0 or self._paused:
            return
        server.busy += elapsed
        if server.stall > 0:
            used = min(server.stall, elapsed)
            server.stall -= used
            elapsed -= used
            if elapsed <= 0:
                return
        active = server.active
        c0 = self._base + self._per_seq * active + self._per_kv * (server.kv_offset + active * server.steps)
        q = self._per_kv * active / 2  # T(n) = q n^2 + (c0 - q) n
        b = c0 - q
        server.steps += elapsed / c0 if q == 0 else 2 * elapsed / (b + math.sqrt(b * b + 4 * q * elapsed))

    def _plan(self, server: _Server) -> None:
        """Schedule the server's next sequence completion (cancelling any earlier timer)."""
        server.epoch += 1
        if self._paused or server.active == 0:
            return
        steps = max(0.0, server.heap[0][0] - server.steps)
        active = server.active
        c0 = self._base + self._per_seq * active + self._per_kv * (server.kv_offset + active * server.steps)
        q = self._per_kv * active / 2
        delay = server.stall + q * steps * steps + (c0 - q) * steps
        timer = self.env.timeout(delay)
        timer.callbacks.append(partial(self._on_timer, server, server.epoch))

    def _on_timer(self, server: _Server, epoch: int, _event: simpy.Event) -> None:
        """A server's timer fired: finish the sequences due now, then refill free slots."""
        if epoch != server.epoch:
            return
        now = self.env.now
        self._advance(server, now)
        heap = server.heap
        server.steps = max(server.steps, heap[0][0])  # land exactly on the finishing step
        finished: list[str] = []
        live_of = self._live
        while heap and heap[0][0] <= server.steps + 1e-9:
            finish, _, rollout, admitted, kv0 = heapq.heappop(heap)
            server.active -= 1
            server.kv_offset -= kv0 - admitted
            live = live_of[rollout]
            live.done += int(round(finish - admitted))
            live.left -= 1
            if live.left == 0:
                finished.append(rollout)
        for rollout in finished:
            self._complete(rollout, now)
        if self._drained is not None and self.folder.state.running == 0:
            self._drained.succeed()
            self._drained = None
        self._dispatch(now, server)
        self._plan(server)

    def _complete(self, rollout: str, now: float) -> None:
        """A rollout's last sample finished: report its segment, then ask the policy."""
        live = self._live[rollout]
        live.server = None
        self._emit(Segment(rollout, live.tail, live.done - live.segmented, now))
        live.segmented = live.done
        stats = self.stats
        stats.generated_tokens += live.done
        stats.latency_sum += now - live.start
        stats.latency_count += 1
        self._policy_events(policies.on_complete(self.folder.state, rollout), now)

    def _dispatch(self, now: float, planning: _Server | None = None) -> None:
        """Start as many rollouts as the capacity rule and the free slots allow.

        ``planning`` is a server whose caller re-plans it anyway (it is up to date)."""
        if self._paused:
            return
        state = self.folder.state
        room = capacity(state)
        if room <= 0:
            return
        # Each prompt enqueued here is submitted at once, so the pending queue's room
        # (policies.enqueue_room) stays what it is now for the whole dispatch.
        enqueue_room = policies.enqueue_room(state)
        group = self._group
        slots = self._slots
        servers = self._servers
        pending = self._pending
        emit = self._emit
        touched: list[_Server] = []
        version = state.version
        while room > 0:
            server = min(servers, key=_load)
            if slots - server.active < group:
                break
            if not pending:
                if enqueue_room == 0:
                    break
                self._enqueue(now)
            rollout = pending.popleft()
            prompt = self._pending_prompt.pop(rollout)
            emit(Submitted(rollout, version, now))
            room -= 1
            if server is not planning and server not in touched:
                self._advance(server, now)
                touched.append(server)
            self._start(server, rollout, prompt, version, now)
        for server in touched:
            self._plan(server)

    def _enqueue(self, now: float) -> None:
        self._prompts += 1
        rollout = f"p{self._prompts}"
        self._emit(Enqueued(rollout, None, 1, now))
        self._pending.append(rollout)
        self._pending_prompt[rollout] = self._prompt_len(self.rng)

    def _start(self, server: _Server, rollout: str, prompt: int, version: int, now: float) -> None:
        """Put a rollout's samples on ``server`` (already advanced to ``now``)."""
        self._live[rollout] = _Live(server, self._group, prompt, version, now)
        steps = server.steps
        draw = self._response_len
        rng = self.rng
        for _ in range(self._group):
            self._sequences += 1
            heapq.heappush(server.heap, (steps + draw(rng), self._sequences, rollout, steps, prompt))
            server.kv_offset += prompt - steps
        server.active += self._group
        server.stall += self._prefill * prompt  # the group shares its prompt's prefill

    # -- weight updates ----------------------------------------------------------------

    def _pause(self) -> Generator[simpy.Event, object, None]:
        """Stop generation: capacity drops to 0 and every server freezes.  In ``drain``
        mode admissions stop first and the in-flight rollouts finish before the freeze."""
        if self._on_update == "drain":
            self._emit(Paused(self.env.now))
            while self.folder.state.running:
                self._drained = self.env.event()
                yield self._drained
        now = self.env.now
        for server in self._servers:
            self._advance(server, now)
            server.epoch += 1
        self._paused = True
        if self._on_update != "drain":
            self._emit(Paused(now))

    def _resume(self, now: float) -> None:
        self._paused = False
        self._emit(Resumed(None, None, now))
        for server in self._servers:
            server.last = now
            self._plan(server)

    def _generated(self, server: _Server) -> dict[str, int]:
        """Response tokens generated so far by each unfinished rollout on ``server``."""
        tokens: dict[str, int] = {}
        steps = server.steps
        for _, _, rollout, admitted, _ in server.heap:
            tokens[rollout] = tokens.get(rollout, 0) + int(steps - admitted)
        return tokens

    def _interrupt(self, now: float) -> list[str]:
        """Partial rollouts: close every in-flight rollout's segment before the update, in
        one ``interrupted_batch`` per segment version (all share the current one)."""
        by_version: dict[int, tuple[list[str], list[int]]] = {}
        for server in self._servers:
            for rollout, tokens in self._generated(server).items():
                live = self._live[rollout]
                reached = live.done + tokens
                rollouts, segments = by_version.setdefault(live.tail, ([], []))
                rollouts.append(rollout)
                segments.append(reached - live.segmented)
                live.segmented = reached
        interrupted: list[str] = []
        for version, (rollouts, segments) in by_version.items():
            self._emit(InterruptedBatch(tuple(rollouts), tuple(segments), version, now))
            interrupted += rollouts
        return interrupted

    def _continue(self, interrupted: list[str], now: float) -> None:
        """Partial rollouts continue under the new version after re-prefilling their kv cache."""
        version = self.folder.state.version
        for rollout in interrupted:
            self._live[rollout].tail = version
        if interrupted:
            self._emit(ResumedBatch(tuple(interrupted), version, now))
        for server in self._servers:
            if server.active:
                kv_tokens = server.kv_offset + server.active * server.steps
                server.stall += self._prefill * kv_tokens

    def _restart(self, now: float) -> None:
        """Restart mode: drop every in-flight rollout's progress and requeue its prompt first."""
        state = self.folder.state
        retries: list[str] = []
        for server in self._servers:
            if not server.heap:
                continue
            for rollout, tokens in self._generated(server).items():
                live = self._live.pop(rollout)
                self.stats.wasted_tokens += live.done + tokens
                self.stats.generated_tokens += live.done + tokens
                self.stats.restarted += 1
                self.stats.latency_sum += now - live.start
                self.stats.latency_count += 1
                self._emit(Rejected(rollout, "none", now))
                retry = policies.retry(rollout, state.rollouts[rollout])
                self._emit(stamped(retry, now))
                self._pending_prompt[retry.rollout] = live.prompt
                retries.append(retry.rollout)
            server.heap.clear()
            server.active = 0
            server.kv_offset = 0.0
            server.stall = 0.0
        self._pending.extendleft(reversed(retries))

    # -- training ----------------------------------------------------------------------

    def _wake_trainer(self) -> None:
        wanted = self._batch_wanted
        if wanted is not None and self.folder.state.ready >= self.config.batch_size:
            self._batch_wanted = None
            wanted.succeed()

    def _trainer(self) -> Generator[simpy.Event, object, None]:
        """The trainer process: wait for a batch, train, recompute, update the weights."""
        env = self.env
        scenario = self.scenario
        training = scenario.training
        size = self.config.batch_size
        group = self._group
        stats = self.stats
        goal = scenario.run.rollouts
        while True:
            batch: tuple[str, ...] = ()
            while True:
                state = self.folder.state
                if state.ready >= size:
                    batch = policies.select_batch(state, size)
                    if len(batch) == size:
                        break
                self._batch_wanted = env.event()
                waited_from = env.now
                yield self._batch_wanted
                stats.trainer_idle_s += env.now - waited_from
            now = env.now
            version = state.version
            self._emit(Consumed(batch, now))
            tokens = 0
            for rollout in batch:
                live = self._live.pop(rollout)
                tokens += group * live.prompt + live.done
                stats.staleness(version - live.head)
            stats.consumed += size
            stats.trained_tokens += tokens
            if training.colocated:
                yield from self._pause()
            busy_from = env.now
            yield env.timeout(training.step_base_s + training.step_per_token_s * tokens)
            requests = policies.recompute_requests(self.folder.state)
            if requests:
                recompute_tokens = sum(group * self._live[r.rollout].prompt + self._live[r.rollout].done for r in requests)
                yield env.timeout(training.recompute_per_token_s * recompute_tokens)
                for request in requests:
                    self._emit(stamped(request, env.now))
            stats.trainer_busy_s += env.now - busy_from
            if not training.colocated:
                yield from self._pause()
            interrupted: list[str] = []
            if self._on_update == "partial":
                interrupted = self._interrupt(env.now)
            elif self._on_update == "restart":
                self._restart(env.now)
            yield env.timeout(training.weight_sync_s)
            now = env.now
            self._emit(Version(self.folder.state.version + 1, now))
            self._policy_events(policies.on_version(self.folder.state), now)
            if interrupted:
                self._continue(interrupted, now)
            self._resume(now)
            self._dispatch(now)
            if self._progress is not None:
                self._progress(stats.consumed)
            if stats.consumed >= goal:
                self._done.succeed()
                return

    # -- running -------------------------------------------------------------------------

    def run(self) -> Summary:
        """Simulate until the scenario's goal (trained rollouts or time); returns the summary."""
        env = self.env
        self._emit(RunStarted(self.config, 0.0))
        env.process(self._trainer())
        self._dispatch(0.0)
        max_time = self.scenario.run.max_time_s
        if math.isfinite(max_time):
            env.timeout(max_time).callbacks.append(lambda _: self._done.succeed() if not self._done.triggered else None)
        try:
            env.run(until=self._done)
        except RuntimeError as err:
            if self._done.triggered:
                raise
            state = self.folder.state
            raise SimulationStalled(
                f"the simulation stalled at t={env.now:.3f}s after {self.stats.consumed} trained rollouts: "
                f"capacity {capacity(state)}, running {state.running}, ready {state.ready}, version {state.version}"
            ) from err
        finally:
            self._flush()
            if self._log is not None:
                self._log.close()
        for server in self._servers:
            self._advance(server, env.now)
        self.stats.generator_busy_s = sum(server.busy for server in self._servers)
        return self.stats.build(env.now, self.folder.state)


def _load(server: _Server) -> int:
    """Active sequences: new rollouts go to the least loaded server (the first of equals)."""
    return server.active


def simulate(
    scenario: Scenario, *, log: str | Path | None = None, progress: Callable[[int], None] | None = None
) -> Summary:
    """Run ``scenario`` once; writes the event log to ``log`` when given."""
    return Simulation(scenario, log=log, progress=progress).run()
