"""The SimPy model of an asynchronous RL cluster, driven through the ledger.

Generation servers (:mod:`sim.servers`) and the trainer only wait (SimPy timeouts)
and ask the :class:`~engine.ledger.Ledger` to append what a step is made of; every
lifecycle decision and every event sequence comes from the core: admission from the
capacity rule, accept-or-filter, failures, batches and the weight update from
:mod:`engine.core.protocol` (the order is documented there).  The ledger folds the
events and writes them to the same SQLite log a real run writes, with the simulated
time as ``t``.

This module owns the run and its generation side: dispatching rollouts to servers and
finishing them (the trainer's loop and the weight updates are :mod:`sim.training`'s,
the servers' arithmetic and timers :mod:`sim.servers`').  Options: a scripted workload
(:mod:`sim.script`) instead of drawn prompts and lengths, and ``resume`` to continue
the run of an existing log after a crash (:meth:`engine.ledger.Ledger.resume`).
"""

from __future__ import annotations

import gc
import math
import random
from collections import deque
from functools import partial
from pathlib import Path
from typing import Callable, Generator

import simpy

from engine.core import policies
from engine.core.events import Accepted, Enqueued, Event, Filtered, Rejected
from engine.core.reducer import INTERRUPTED, PENDING, READY, RUNNING, State
from engine.ledger import Ledger
from engine.log import EventLog
from sim.config import Scenario
from sim.script import Script
from sim.servers import LiveRollout, Pool, Server
from sim.summary import Summary, SummaryBuilder
from sim.training import Training
from sim.workload import Phases, Replay, group_sampler, paired_samplers, sampler

#: A debug-mode check run after every event: ``check(state, event)``.
Check = Callable[[State, Event], None]


class SimulationStalled(RuntimeError):
    """Nothing can happen any more (no event scheduled) before the run's goal was reached."""


class Simulation(Training):
    """One simulated run of ``scenario``; :meth:`run` returns its :class:`Summary`.

    ``log`` names the SQLite event log to write (none when ``None``); ``progress``
    is called with the number of rollouts trained at each training step; ``check``
    runs after every event (debug mode).  ``script`` replaces the drawn workload by a
    scripted one (:mod:`sim.script`).  ``resume`` continues the run in the existing
    ``log``: rollouts in flight at the crash are rejected as lost and requeued, the
    clock starts at the log's last time, and the summary covers the continuation.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        log: str | Path | None = None,
        flush_every: int = 4096,
        progress: Callable[[int], None] | None = None,
        check: Check | None = None,
        script: Script | None = None,
        resume: bool = False,
    ) -> None:
        self.scenario = scenario
        self.config = scenario.ledger_config()
        start, prompts = 0.0, 0
        if resume:
            if log is None or not Path(log).exists():
                raise FileNotFoundError(f"cannot resume: no event log at {log}")
            start, prompts = _position(log)
            self.ledger = Ledger.resume(log, requeue=True, flush_every=flush_every, check=check)
            if self.ledger.config != self.config:
                self.ledger.close()
                raise ValueError(f"the log at {log} was started with {self.ledger.config}, not this scenario's {self.config}")
        else:
            if log is not None and Path(log).exists():
                raise FileExistsError(f"{log} already exists: a simulation writes a new event log")
            self.ledger = Ledger(path=log, flush_every=flush_every, check=check)
        self._resumed = resume
        self.env = simpy.Environment(initial_time=start)
        self.rng = random.Random(scenario.run.seed)
        self._progress = progress
        self._script = script
        workload = scenario.workload
        # a group's response lengths, given its prompt's length (paired) or drawn apart from it
        self._group_lengths: Callable[[int], list[int]]
        if workload.phase_versions or workload.replay:  # whole rows, in phases (sim.workload.Phases) or in order (Replay)
            phases = (Replay(workload.response_len, workload.group_size, scenario.run.seed, scenario.ledger.batch_size) if workload.replay
                      else Phases(workload.response_len, workload.group_size, workload.phase_versions, workload.phase_rows))
            if workload.prompt_len.kind == "paired":
                self._prompt_len = lambda rng: phases.prompt(rng, self.ledger.state.version)
            else:
                self._prompt_len = sampler(workload.prompt_len, "workload.prompt_len")
            self._group_lengths = lambda prompt: phases.lengths(self.rng, self.ledger.state.version, prompt)
        elif workload.prompt_len.kind == "paired":
            self._prompt_len, given = paired_samplers(workload.response_len, workload.group_size)
            self._group_lengths = partial(given, self.rng)
        else:
            self._prompt_len = sampler(workload.prompt_len, "workload.prompt_len")
            drawn = group_sampler(workload.response_len, workload.group_size, "workload.response_len")
            self._group_lengths = lambda _prompt: drawn(self.rng)
        self._group = workload.group_size
        generation = scenario.generation
        self._pool = Pool(generation, self.env, self._finished)
        self._on_update = generation.on_update
        self._interrupted: tuple[str, ...] = ()
        self._pending: deque[str] = deque()
        self._pending_prompt: dict[str, int] = {}
        self._live: dict[str, LiveRollout] = {}
        self._prompts = prompts  # drawn prompts so far, named p1, p2, ...
        self._batch_wanted: simpy.Event | None = None
        self._drained: simpy.Event | None = None
        self._done = self.env.event()
        self._failure: Exception | None = None  # an error of the trainer process, raised by run()
        self.stats = SummaryBuilder(scenario, generation.servers)
        # at the end of each update, the prefill passes opened so far and the tokens they
        # ran, padding included (generation.prefill_pad_to): an update's are the difference
        self.passes_by_update: list[tuple[int, int]] = []

    @property
    def state(self) -> State:
        """The ledger's current state."""
        return self.ledger.state

    def _books(self, events: tuple[Event, ...], prompt: int = 0) -> None:
        """Keep the shell's books on events the ledger appended for the protocol: an
        accepted rollout may complete a batch, a filtered or rejected one's work is
        wasted, an enqueued attempt joins the pending queue with the prompt length of
        the rollout it replaces (``prompt`` when none does)."""
        stats = self.stats
        for event in events:
            if type(event) is Accepted:
                stats.accepted += 1
                self._wake_trainer()
            elif type(event) is Filtered or type(event) is Rejected:
                live = self._live.pop(event.rollout)
                prompt = live.prompt
                stats.wasted_tokens += live.done
                if type(event) is Filtered:
                    stats.filtered += 1
            elif type(event) is Enqueued:
                self._pending.append(event.rollout)
                self._pending_prompt[event.rollout] = prompt

    # -- generation ------------------------------------------------------------------

    def _finished(self, server: Server, now: float, done: list[tuple[str, int]]) -> None:
        """Sequences finished on ``server`` (the pool re-plans it afterwards): complete the
        rollouts whose last sample this was, then refill free slots."""
        finished: list[str] = []
        live_of = self._live
        for rollout, tokens in done:
            live = live_of[rollout]
            live.done += tokens
            if tokens > live.longest:
                live.longest = tokens
            live.left -= 1
            if live.left == 0:
                finished.append(rollout)
        for rollout in finished:
            self._complete(rollout, now)
        if self._drained is not None and self.ledger.count(RUNNING) + self.ledger.count(INTERRUPTED) == 0:
            self._drained.succeed()
            self._drained = None
        self._dispatch(now, server)

    def _complete(self, rollout: str, now: float) -> None:
        """A rollout's last sample finished: it closes its segment and the policy decides
        (a scripted failure is rejected instead, and maybe retried)."""
        live = self._live[rollout]
        stats = self.stats
        stats.generated_tokens += live.done
        stats.latency_sum += now - live.start
        stats.latency_count += 1
        script = self._script
        if script is not None and (outcome := script.attempt(rollout).outcome) != "accept":
            self._books(self.ledger.fail(rollout, outcome, max_retries=script.max_retries, t=now))
            return
        events = self.ledger.complete(rollout, tokens=live.done - live.segmented, t=now)
        live.segmented = live.done
        self._books(events)

    def _dispatch(self, now: float, planning: Server | None = None) -> None:
        """Start as many rollouts as the capacity rule and the free slots allow.

        ``planning`` is a server whose caller re-plans it anyway (it is up to date)."""
        pool = self._pool
        if pool.paused:
            return
        ledger = self.ledger
        room = ledger.capacity
        if room <= 0:
            return
        # Each prompt enqueued here is submitted at once, so the pending queue's room
        # (policies.room_to_enqueue) stays what it is now for the whole dispatch.
        enqueue_room = 0 if self._script is not None else policies.room_to_enqueue(ledger.config, ledger.count(PENDING))  # type: ignore[arg-type]
        group = self._group
        slots = pool.slots
        pending = self._pending
        version = ledger.version
        touched: dict[Server, None] = {}
        while room > 0:
            server = pool.least_loaded()
            if slots - server.active < group:
                break
            if pending:
                rollout = pending.popleft()
                prompt = self._pending_prompt.pop(rollout)
                ledger.submit((rollout,), t=now)
            else:  # a fresh prompt, enqueued and started at once
                if enqueue_room == 0:
                    break
                self._prompts += 1
                rollout = f"p{self._prompts}"
                prompt = self._prompt_len(self.rng)
                ledger.admit(rollout, t=now)
            room -= 1
            if server is not planning and server not in touched:
                pool.advance(server, now)
                touched[server] = None
            self._start(server, rollout, prompt, version, now)
        for server in touched:
            pool.plan(server)

    def _start(self, server: Server, rollout: str, prompt: int, version: int, now: float) -> None:
        """Put a rollout's samples on ``server`` (already advanced to ``now``), submitted under ``version``."""
        self._live[rollout] = LiveRollout(self._group, prompt, version, now)
        if self._script is not None:
            tokens = self._script.attempt(rollout).tokens
            self._pool.start(server, rollout, prompt, lambda: tokens, self._group)
        else:
            self._pool.start(server, rollout, prompt, iter(self._group_lengths(prompt)).__next__, self._group)

    # -- running -------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Start the run (or pick up a resumed one) and fill the pending queue."""
        ledger, now = self.ledger, self.env.now
        if not self._resumed:
            ledger.start(self.config, t=now)
        else:
            if ledger.paused:  # died during a weight update: it is abandoned
                ledger.end_pause(t=now)
            state = ledger.state
            for _, rollout, record in sorted((record.order, rollout, record) for rollout, record in state.rollouts.items()):
                prompt = self._script.prompt_tokens if self._script is not None else self._prompt_len(self.rng)
                if record.status == PENDING:
                    self._pending.append(rollout)
                    self._pending_prompt[rollout] = prompt
                elif record.status == READY:
                    live = self._live[rollout] = LiveRollout(0, prompt, record.head_version, now)
                    live.done = live.segmented = record.tokens
                    live.longest = -(-record.tokens // max(1, self._group))  # the log keeps the group's sum: its mean
        if self._script is not None and not self._resumed:
            keys = self._script.prompts
            ledger.enqueue(*keys, t=now)
            self._pending.extend(keys)
            self._pending_prompt.update((key, self._script.prompt_tokens) for key in keys)

    def _surfacing(self, process: Generator[simpy.Event, object, None]) -> Generator[simpy.Event, object, None]:
        """``process``, whose error ends the run and is raised by :meth:`run` as itself
        (SimPy would raise a copy built from the error's arguments, which an
        ``IllegalTransition`` cannot be built from)."""
        try:
            yield from process
        except Exception as err:  # noqa: BLE001 - re-raised by run()
            self._failure = err
            if not self._done.triggered:
                self._done.succeed()

    def _stop(self, _event: simpy.Event) -> None:
        """The clock passed ``run.max_time_s``: the run ends (unless its goal ended it first)."""
        if not self._done.triggered:
            self._done.succeed()

    def run(self) -> Summary:
        """Simulate until the scenario's goal (trained rollouts or time); returns the summary.

        Python's cyclic garbage collector is off while the clock runs; a weight update
        collects the young generations instead, once enough objects piled up
        (``sim.training.YOUNG_OBJECTS``): on its own schedule the collector would walk
        every rollout in flight again and again (each lives through many collections
        when thousands are in flight), a cost per event that grows with the number in
        flight.  The simulation makes almost no reference cycles, so memory does not
        grow meanwhile; the collector is restored after."""
        env = self.env
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._prepare()
            env.process(self._surfacing(self._trainer()))
            self._dispatch(env.now)
            max_time = self.scenario.run.max_time_s
            if math.isfinite(max_time):
                stop = env.timeout(max(0.0, max_time - env.now))
                stop.callbacks.append(self._stop)
            try:
                env.run(until=self._done)
                if self._failure is not None:
                    raise self._failure
            except RuntimeError as err:
                if self._done.triggered:
                    raise
                ledger = self.ledger
                raise SimulationStalled(
                    f"the simulation stalled at t={env.now:.3f}s after {self.stats.consumed} trained rollouts: "
                    f"capacity {ledger.capacity}, running {ledger.count(RUNNING) + ledger.count(INTERRUPTED)}, "
                    f"ready {ledger.count(READY)}, version {ledger.version}"
                ) from err
        finally:
            if collecting:
                gc.enable()
            self.ledger.close()
        for server in self._pool:
            self._pool.advance(server, env.now)
        self.stats.generator_busy_s = sum(server.busy for server in self._pool)
        self.stats.prefill_passes = self._pool.passes
        self.stats.decode_steps = sum(server.steps for server in self._pool)
        return self.stats.build(env.now, self.ledger.state)


def _position(log: str | Path) -> tuple[float, int]:
    """Where a resumed run picks up: the time of the log's last stamped event (its clock
    starts there) and the number of the last drawn prompt (``p<n>``; the next is n+1)."""
    last, prompts = 0.0, 0
    with EventLog(log, mode="r") as events:
        for event in events.events():
            if event.t is not None:
                last = max(last, event.t)
            if type(event) is Enqueued and event.attempt == 1 and event.rollout[:1] == "p" and event.rollout[1:].isdigit():
                prompts = max(prompts, int(event.rollout[1:]))
    return last, prompts


def simulate(
    scenario: Scenario, *, log: str | Path | None = None, progress: Callable[[int], None] | None = None
) -> Summary:
    """Run ``scenario`` once; writes the event log to ``log`` when given."""
    return Simulation(scenario, log=log, progress=progress).run()
