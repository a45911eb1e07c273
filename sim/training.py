"""The simulated trainer and weight updates: a mixin of :class:`sim.simulator.Simulation`.

The trainer process waits for a batch, trains, recomputes what the policy asks for and
updates the weights; the update follows :mod:`engine.core.protocol`'s order, and this
module does what it means for the servers: freeze them, interrupt the rollouts in
flight (``partial``: their segment closes, they re-prefill afterwards), restart them
(``restart``: their work is wasted, their prompts go first), let them run on
(``run_on``), or let them finish first (``drain``).  ``colocated`` begins the update
before training (generation and training share the devices), otherwise after it.
A step costs ``base + per_token * tokens + per_seq * sequences``; then the recompute,
the sync and the per-update overhead (inside the pause when colocated, after it
otherwise); the trainer is idle only while it waits for a batch.
"""

from __future__ import annotations

import gc
from collections import deque
from typing import Callable, Generator

import simpy

from engine.core import protocol
from engine.core.config import Config
from engine.core.events import Enqueued, Event, stamped
from engine.core.reducer import CONSUMED, INTERRUPTED, READY, RUNNING
from engine.ledger import Ledger
from sim.config import Scenario
from sim.servers import LiveRollout, Pool, Server
from sim.summary import SummaryBuilder

#: A weight update collects the young generations once this many more container objects
#: were allocated than freed since the last collection (see ``Simulation.run``).
YOUNG_OBJECTS = 10_000


class Training:
    """The trainer and the weight updates of a simulation (the attributes below are the
    simulation's; :meth:`_books` and :meth:`_dispatch` are its generation side)."""

    env: simpy.Environment
    ledger: Ledger
    scenario: Scenario
    config: Config
    stats: SummaryBuilder
    _pool: Pool
    _on_update: str
    _group: int
    _interrupted: tuple[str, ...]
    _live: dict[str, LiveRollout]
    _pending: deque[str]
    _pending_prompt: dict[str, int]
    _batch_wanted: simpy.Event | None
    _drained: simpy.Event | None
    _done: simpy.Event
    _progress: Callable[[int], None] | None
    passes_by_update: list[tuple[int, int]]

    def _books(self, events: tuple[Event, ...], prompt: int = 0) -> None:
        raise NotImplementedError

    def _dispatch(self, now: float, planning: Server | None = None) -> None:
        raise NotImplementedError

    # -- weight updates ----------------------------------------------------------------

    def _begin_update(self) -> Generator[simpy.Event, object, None]:
        """The protocol's first step of a weight update: generation pauses and every
        server freezes; the rollouts in flight are interrupted (``partial``), restarted
        (``restart``), left alone (``run_on``), or, in ``drain`` mode, left to finish
        (admissions stop first) before the freeze."""
        env, ledger, pool = self.env, self.ledger, self._pool
        if self._on_update == "drain":
            ledger.begin_update(t=env.now)
            while ledger.count(RUNNING) + ledger.count(INTERRUPTED):
                self._drained = env.event()
                yield self._drained
        now = env.now
        pool.freeze(now)
        if self._on_update == "partial":
            self._interrupted = protocol.interrupted(ledger.begin_update(self._segments(), "partial", t=now))
        elif self._on_update == "restart":
            self._restart(now)
        elif self._on_update == "run_on":
            ledger.begin_update(t=now)

    def _segments(self) -> dict[str, int]:
        """Partial rollouts: the tokens of every in-flight rollout's current segment (now closed)."""
        segments: dict[str, int] = {}
        for server in self._pool:
            for rollout, tokens in self._pool.generated(server).items():
                live = self._live[rollout]
                reached = live.done + tokens
                segments[rollout] = reached - live.segmented
                live.segmented = reached
        return segments

    def _restart(self, now: float) -> None:
        """Restart mode: drop every in-flight rollout's progress and requeue its prompt first."""
        pool, stats = self._pool, self.stats
        generating: dict[str, int] = {}
        prompts: dict[str, int] = {}
        for server in pool:
            if not server.heap:
                continue
            for rollout, tokens in pool.generated(server).items():
                live = self._live.pop(rollout)
                stats.wasted_tokens += live.done + tokens
                stats.generated_tokens += live.done + tokens
                stats.restarted += 1
                stats.latency_sum += now - live.start
                stats.latency_count += 1
                generating[rollout] = tokens
                prompts[rollout] = live.prompt
            pool.clear(server)
        events = self.ledger.begin_update(generating, "restart", t=now)
        retries = [event.rollout for event in events if type(event) is Enqueued]  # one per rollout, in order
        self._pending_prompt.update(zip(retries, prompts.values()))
        self._pending.extendleft(reversed(retries))

    def _finish_update(self, now: float) -> None:
        """The protocol's last step: the version moves (the policy purges), interrupted
        rollouts continue as a new segment after re-prefilling their kv cache, and
        generation resumes."""
        interrupted, self._interrupted = self._interrupted, ()
        self._books(self.ledger.finish_update(interrupted, t=now))
        if interrupted:
            self._pool.reprefill(now)
        self._pool.thaw(now, resume=True)
        if gc.get_count()[0] >= YOUNG_OBJECTS:  # the run turned automatic collection off
            gc.collect(1)

    # -- training ----------------------------------------------------------------------

    def _wake_trainer(self) -> None:
        wanted = self._batch_wanted
        if wanted is not None and self.ledger.count(READY) >= self.config.batch_size:
            self._batch_wanted = None
            wanted.succeed()

    def _trainer(self) -> Generator[simpy.Event, object, None]:
        """The trainer process: wait for a batch, train, recompute, update the weights
        (beginning the update before training when colocated, after it otherwise)."""
        env, ledger, stats = self.env, self.ledger, self.stats
        training = self.scenario.training
        size = self.config.batch_size
        group = self._group
        goal = self.scenario.run.rollouts
        turn = False  # (colocated) an update just ended: the next collect turns the engine once
        while True:
            batch: tuple[str, ...] | None = None
            if turn and ledger.count(READY) >= size:
                # the run's collect runs its event loop, whose engine task is ready since the
                # update resumed it: the engine turns once (the update's re-prefill pass, or a
                # step) before the collect finds the batch that was ready all along (a CPU
                # run whose generation outpaced its training opened 0.97 passes an update,
                # where with no turn the simulator opened 0.40)
                idle_from = env.now
                yield env.timeout(self._pool.turn_s())
                stats.trainer_idle_s += env.now - idle_from
            turn = False
            while True:
                if ledger.count(READY) >= size:
                    batch = ledger.prepare_batch(size, t=env.now)
                    if batch is not None:
                        break
                self._batch_wanted = env.event()
                waited_from = env.now
                yield self._batch_wanted
                stats.trainer_idle_s += env.now - waited_from
            version = ledger.version
            prompted = group if training.trains_prompt else 0  # prompt tokens a sample's trained tokens count, per prompt token
            tokens = width = 0
            for rollout in batch:
                live = self._live.pop(rollout)
                tokens += prompted * live.prompt + live.done
                width = max(width, live.prompt + live.longest)
                stats.staleness(version - live.head)
            pad_to = training.pad_to
            padded = size * group * -(-width // pad_to) * pad_to  # the trainer's padded batch
            stats.consumed += size
            stats.trained_tokens += tokens
            if training.colocated:
                yield from self._begin_update()
            busy_from = env.now
            yield env.timeout(max(training.step_floor_s,
                                  training.step_base_s + training.step_per_token_s * tokens + training.step_per_seq_s * size * group
                                  + training.step_per_padded_token_s * padded))
            requests = protocol.recompute_requests(ledger.state)
            if requests:
                recompute_tokens = sum(prompted * self._live[r.rollout].prompt + self._live[r.rollout].done for r in requests)
                yield env.timeout(training.recompute_per_token_s * recompute_tokens)
            stats.trainer_busy_s += env.now - busy_from
            if not training.colocated:
                yield from self._begin_update()
            if requests:
                ledger.append(*[stamped(request, env.now) for request in requests])
            yield env.timeout(training.weight_sync_s)
            # the update's bookkeeping, and its checkpoint when one is due: a version the
            # interval divides, and the run's last, as `train --checkpoint-every` writes them
            # (none with an interval of 0)
            last = ledger.count(CONSUMED) >= goal
            due = training.checkpoint_every > 0 and ((version + 1) % training.checkpoint_every == 0 or last)
            overhead = (training.update_overhead_s + training.update_overhead_per_seq_s * size * group
                        + (training.checkpoint_s if due else 0.0))
            if training.colocated and overhead:  # the run's one process: generation waits too
                yield env.timeout(overhead)
            now = env.now
            self.passes_by_update.append((self._pool.passes, self._pool.padded_tokens))
            self._finish_update(now)
            self._dispatch(now)
            turn = training.colocated
            if not training.colocated and overhead:  # the trainer's own
                yield env.timeout(overhead)
            if self._progress is not None:
                self._progress(stats.consumed)
            if last:
                self._done.succeed()
                return
