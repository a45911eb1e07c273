"""A realistic mixed event log for benchmarks and tests: up to 256 rollouts in
flight, partial rollouts interrupted at version bumps (one event per rollout at
even versions, the batch events at odd ones), errors, stale filtering with
requeue, and batch consumption, all driven through the real policies."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

from engine.core import policies
from engine.core.config import Config
from engine.core.events import (
    Consumed,
    Enqueued,
    Event,
    Interrupted,
    InterruptedBatch,
    Rejected,
    Resumed,
    ResumedBatch,
    RunStarted,
    Segment,
    Submitted,
    Version,
)
from engine.core.reducer import PENDING, Folder, capacity
from engine.log import EventLog


def mixed_log(n_events: int, seed: int = 0, in_flight: int = 256, batch_size: int = 64, in_order: bool = False) -> list[Event]:
    """At least ``n_events`` legal events of a deterministic pseudo-random run (whose
    config takes batches in order with ``in_order``)."""
    return list(_generate(n_events, seed, in_flight, batch_size, in_order))


def write_log(path: str | Path, events: list[Event], batch: int = 10_000) -> None:
    """Write ``events`` as a SQLite event log at ``path``, ``batch`` events per append."""
    with EventLog(path) as store:
        for start in range(0, len(events), batch):
            store.append(events[start : start + batch])


def _generate(n_events: int, seed: int, in_flight: int, batch_size: int, in_order: bool = False) -> Iterator[Event]:
    rng = random.Random(seed)
    config = Config(max_concurrent=in_flight, batch_size=batch_size, max_staleness=4, policy="strict", on_stale="requeue",
                    in_order=in_order)
    folder = Folder()
    emitted = 0
    next_id = 0
    running: list[str] = []

    def emit(event: Event) -> Event:
        nonlocal emitted
        folder.apply(event)
        emitted += 1
        return event

    yield emit(RunStarted(config, t=0.0))
    while emitted < n_events:
        state = folder.state
        waiting = [rollout for rollout, record in state.rollouts.items() if record.status == PENDING]
        for _ in range(capacity(state)):
            if waiting:
                rollout = waiting.pop()
            else:
                rollout = f"r{next_id}"
                next_id += 1
                yield emit(Enqueued(rollout))
            yield emit(Submitted(rollout, folder.state.version))
            yield emit(Segment(rollout, folder.state.version, rng.randint(16, 512)))
            running.append(rollout)
        rng.shuffle(running)
        cut = len(running) // 4 + 1
        finishing, running = running[:cut], running[cut:]
        for rollout in finishing:
            if rng.random() < 0.03:
                yield emit(Rejected(rollout, "error"))
            else:
                for event in policies.on_complete(folder.state, rollout):
                    yield emit(event)
        batch = policies.select_batch(folder.state, batch_size)
        if len(batch) < batch_size:
            continue
        yield emit(Consumed(batch))
        interrupted = running[:8]
        batched = folder.state.version % 2 == 1 and interrupted
        if batched:
            yield emit(InterruptedBatch(tuple(interrupted), tuple(rng.randint(0, 64) for _ in interrupted), folder.state.version))
        else:
            for rollout in interrupted:
                yield emit(Interrupted(rollout))
        yield emit(Version(folder.state.version + 1))
        for event in policies.on_version(folder.state):
            yield emit(event)
        if batched:
            yield emit(ResumedBatch(tuple(interrupted), folder.state.version))
        for rollout in interrupted:
            if not batched:
                yield emit(Resumed(rollout, folder.state.version))
            yield emit(Segment(rollout, folder.state.version, rng.randint(8, 128)))
