"""A realistic mixed event log for benchmarks: 256 rollouts in flight, partial
rollouts across version bumps, rejections, stale filtering and batch consumption."""

from __future__ import annotations

import random
from typing import Iterator

from engine import policies
from engine.config import Config
from engine.events import (
    Consumed,
    Enqueued,
    Event,
    Interrupted,
    Rejected,
    Resumed,
    RunStarted,
    Segment,
    Submitted,
    Version,
)
from engine.reducer import Folder


def mixed_log(n_events: int, seed: int = 0, in_flight: int = 256, batch_size: int = 64) -> list[Event]:
    """At least ``n_events`` legal events from a deterministic pseudo-random run."""
    return list(_generate(n_events, seed, in_flight, batch_size))


def _generate(n_events: int, seed: int, in_flight: int, batch_size: int) -> Iterator[Event]:
    rng = random.Random(seed)
    config = Config(max_concurrent=in_flight, batch_size=batch_size, max_staleness=4, policy="strict", on_stale="requeue")
    folder = Folder()
    count = 0
    next_id = 0
    running: list[str] = []
    interrupted: list[str] = []

    def emit(event: Event) -> Event:
        nonlocal count
        folder.apply(event)
        count += 1
        return event

    yield emit(RunStarted(config, t=0.0))
    while count < n_events:
        state = folder.state
        room = policies.capacity_room(state) if hasattr(policies, "capacity_room") else None
        from engine.reducer import capacity

        for _ in range(capacity(state)):
            rollout = f"r{next_id}"
            next_id += 1
            yield emit(Enqueued(rollout))
            yield emit(Submitted(rollout, folder.state.version))
            yield emit(Segment(rollout, folder.state.version, rng.randint(16, 512)))
            running.append(rollout)
        rng.shuffle(running)
        finishing, running = running[: len(running) // 4 + 1], running[len(running) // 4 + 1 :]
        for rollout in finishing:
            if rng.random() < 0.03:
                yield emit(Rejected(rollout, "error"))
                continue
            for event in policies.on_complete(folder.state, rollout):
                yield emit(event)
                if isinstance(event, Enqueued):
                    yield emit(Submitted(event.rollout, folder.state.version)) if capacity(folder.state) else None
        batch = policies.select_batch(folder.state, batch_size)
        if len(batch) == batch_size:
            yield emit(Consumed(batch))
            for rollout in running[:8]:
                yield emit(Interrupted(rollout))
                interrupted.append(rollout)
            yield emit(Version(folder.state.version + 1))
            for event in policies.on_version(folder.state):
                yield emit(event)
            for rollout in interrupted:
                yield emit(Resumed(rollout, folder.state.version))
                yield emit(Segment(rollout, folder.state.version, rng.randint(8, 128)))
            interrupted.clear()
