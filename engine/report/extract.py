"""One pass over an event log into the data the report's figures draw.

:func:`extract` folds the log with the ledger's own :class:`~engine.core.reducer.Folder`
(the same reader as ``replay``) and records, on the way, each rollout's life and the
ledger's gauges over time.  Nothing here imports matplotlib."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from engine.core.events import Accepted, Consumed, Event, Filtered, Paused, Rejected, Segment, Submitted, Unpaused, Version
from engine.core.reducer import Folder, State
from engine.core.state import INTERRUPTED, READY, RUNNING
from engine.log.jsonl import read_jsonl
from engine.log.store import EventLog, existing

#: Most points kept of the gauges (capacity bound, in flight, ready) over time.
GAUGE_POINTS = 20_000


@dataclass
class Life:
    """One rollout: when it was submitted, its segments ``(t, version)``, and how and when it ended."""

    start: float
    segments: list[tuple[float, int]] = field(default_factory=list)
    outcome: str = "running"
    tokens: int = 0
    end: float | None = None


@dataclass
class LogData:
    """What the figures of one log need; ``label`` names it in legends."""

    label: str
    state: State
    lives: dict[str, Life]
    gauges: list[tuple[float, int, int, int]]  # (t, capacity bound = in flight + free capacity, in flight, ready)
    versions: list[tuple[float, int]]  # weight updates (t, new version)
    pauses: list[tuple[float, float]]  # (from, to)
    staleness: list[int]  # per consumed rollout: version at consumption - submit version
    consumed_at: list[tuple[float, int, int]]  # (t, rollouts, tokens) per Consumed
    metrics: list[dict[str, Any]]  # metrics.jsonl of a train run, else empty
    config: dict[str, Any]
    clock: str = "time (s)"  # or "event number" for a log whose events carry no time

    @property
    def end(self) -> float:
        return self.gauges[-1][0] if self.gauges else 0.0


def locate(path: Path) -> tuple[Path, Path | None]:
    """``(events log, metrics file or None)`` of a log file or a train run directory."""
    if path.is_dir():
        metrics = path / "metrics.jsonl"
        return path / "events.sqlite", metrics if metrics.is_file() else None
    return path, None


def _events(path: Path) -> Iterator[Event]:
    if path.suffix == ".jsonl":
        yield from read_jsonl(path)
        return
    with EventLog(existing(path), mode="r") as log:
        for _, events in log.chunks():
            yield from events


def extract(path: Path, label: str | None = None) -> LogData:
    """Read the log (file or train run directory) at ``path`` once."""
    events_path, metrics_path = locate(path)
    folder = Folder()
    lives: dict[str, Life] = {}
    gauges: list[tuple[float, int, int, int]] = []
    versions: list[tuple[float, int]] = []
    pauses: list[tuple[float, float]] = []
    staleness: list[int] = []
    consumed_at: list[tuple[float, int, int]] = []
    paused_at: float | None = None
    t = 0.0

    stride, changes = 1, 0
    last: tuple[int, int, int] | None = None

    def sample() -> None:
        # the gauges when they change; past GAUGE_POINTS, every other point is dropped
        # and only every stride-th change kept, so a long log keeps a bounded series
        nonlocal stride, changes, last
        running = folder.count(RUNNING) + folder.count(INTERRUPTED)
        now = (running + folder.capacity, running, folder.count(READY))
        if now == last:
            return
        last = now
        changes += 1
        if changes % stride == 0:
            gauges.append((t, *now))
            if len(gauges) > GAUGE_POINTS:
                del gauges[1::2]
                stride *= 2

    timed = False
    for position, event in enumerate(_events(events_path), 1):
        if event.t is not None:
            t, timed = event.t, True
        elif not timed:
            t = float(position)  # a log without times (a train run's): the event number is the clock
        if isinstance(event, Submitted):
            lives[event.rollout] = Life(t, [(t, event.version)])
        elif isinstance(event, Segment):
            life = lives.get(event.rollout)
            if life is not None:
                life.segments.append((t, event.version))
                life.tokens += event.tokens
        elif isinstance(event, (Accepted, Rejected, Filtered)):
            life = lives.get(event.rollout)
            if life is not None:
                life.outcome, life.end = event.type, t
        elif isinstance(event, Consumed):
            folder.apply(event)
            sample()
            now = folder.version
            tokens = 0
            for rid in event.rollouts:
                life = lives.get(rid)
                if life is not None:
                    life.outcome, life.end = "consumed", t
                    staleness.append(now - life.segments[0][1])
                    tokens += life.tokens
            consumed_at.append((t, len(event.rollouts), tokens))
            continue
        elif isinstance(event, Version):
            versions.append((t, event.version))
        elif isinstance(event, Paused):
            paused_at = t
        elif isinstance(event, Unpaused) and paused_at is not None:
            pauses.append((paused_at, t))
            paused_at = None
        folder.apply(event)
        sample()
    gauges.append((t, *(last or (0, 0, 0))))
    if paused_at is not None:
        pauses.append((paused_at, t))
    metrics: list[dict[str, Any]] = []
    if metrics_path is not None:
        for line in metrics_path.read_text().splitlines():
            try:
                metrics.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line
    state = folder.state
    config = asdict(state.config) if state.config is not None else {}
    return LogData(label or str(path), state, lives, gauges, versions, pauses, staleness, consumed_at, metrics, config, "time (s)" if timed else "event number")
