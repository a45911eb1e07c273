"""An independent reference model of the ledger, written plainly with mutable counters.

It follows AReaL's ``StalenessManager`` (counters ``enqueued``, ``running``,
``accepted``, ``rejected``; ``get_capacity`` from them and the version), extended
with what the ledger adds (statuses per rollout, interruption, filtering, pause,
per-rank limits).  It shares no code with ``engine.core.reducer`` or
``engine.core.policies``: the state machines feed both the same events and compare.

``scheme`` picks one of the two ways the seeds account for a sample filtered at
completion:

- ``"decrement"``: count it as accepted first, then take it back (``accepted -= 1``);
- ``"never_count"``: never count it as accepted, only free its running slot.

Both must give the same capacity after every event.
"""

from __future__ import annotations

from engine.core.config import Config
from engine.core.events import (
    Accepted,
    Checkpoint,
    Consumed,
    Enqueued,
    Event,
    Filtered,
    Interrupted,
    InterruptedBatch,
    Paused,
    Recomputed,
    Rejected,
    Resumed,
    ResumedBatch,
    RunStarted,
    Segment,
    Submitted,
    Unpaused,
    Version,
)

SCHEMES = ("decrement", "never_count")


class ReferenceRefusal(Exception):
    """The reference model finds an event illegal; the message says why."""


class ReferenceLedger:
    """Mutable counters and one status string per rollout ever seen."""

    def __init__(self, scheme: str = "never_count") -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        self.scheme = scheme
        self.config: Config | None = None
        self.version = 0
        self.paused = False
        # StalenessManager's counters
        self.enqueued = 0
        self.running = 0
        self.accepted = 0
        self.rejected = 0
        # what the ledger adds
        self.filtered = 0
        self.status: dict[str, str] = {}
        self.tail_version: dict[str, int] = {}

    # --- AReaL's StalenessManager -----------------------------------------------------

    def get_capacity(self) -> int:
        """``min(max_concurrent - running, (max_staleness + version + 1) * batch_size -
        (accepted + running))``, per rank, 0 while paused, never negative."""
        if self.config is None or self.paused:
            return 0
        max_concurrent = max(1, self.config.max_concurrent // self.config.dp_size)
        batch_size = max(1, self.config.batch_size // self.config.dp_size)
        concurrency_capacity = max_concurrent - self.running
        if self.config.max_staleness is None:
            return max(0, concurrency_capacity)
        sample_count = self.accepted + self.running
        staleness_capacity = (self.config.max_staleness + self.version + 1) * batch_size - sample_count
        return max(0, min(concurrency_capacity, staleness_capacity))

    def on_rollout_enqueued(self) -> None:
        """A prompt waits to start."""
        self.enqueued += 1

    def on_rollout_submitted(self) -> None:
        """A waiting prompt starts generating."""
        self.enqueued -= 1
        self.running += 1

    def on_rollout_accepted(self) -> None:
        """A rollout finished and is kept for training."""
        self.running -= 1
        self.accepted += 1

    def on_rollout_rejected(self) -> None:
        """A rollout finished (or was lost) and is not kept."""
        self.running -= 1
        self.rejected += 1

    # --- events --------------------------------------------------------------------

    def count(self, status: str) -> int:
        """How many rollouts have ``status`` now."""
        return sum(1 for value in self.status.values() if value == status)

    def is_legal(self, event: Event) -> bool:
        """Whether :meth:`observe` would take ``event`` (without taking it)."""
        try:
            self._check(event)
        except ReferenceRefusal:
            return False
        return True

    def observe(self, event: Event) -> None:
        """Take one event; raises :class:`ReferenceRefusal` (nothing changed) if illegal."""
        self._check(event)
        match event:
            case InterruptedBatch() | ResumedBatch():
                for one in self._one_by_one(event):
                    self.observe(one)
            case RunStarted():
                self.config = event.config
            case Enqueued():
                self.status[event.rollout] = "pending"
                self.on_rollout_enqueued()
            case Submitted():
                self.status[event.rollout] = "running"
                self.tail_version[event.rollout] = event.version
                self.on_rollout_submitted()
            case Segment():
                self.tail_version[event.rollout] = event.version
            case Interrupted():
                self.status[event.rollout] = "interrupted"
            case Resumed():
                self.status[event.rollout] = "running"
                self.tail_version[event.rollout] = self.version if event.version is None else event.version
            case Unpaused():
                self.paused = False
            case Paused():
                self.paused = True
            case Accepted():
                self.status[event.rollout] = "ready"
                self.on_rollout_accepted()
            case Rejected():
                self.status[event.rollout] = "rejected"
                self.on_rollout_rejected()
            case Filtered():
                self._filter(event.rollout)
            case Consumed():
                for rollout in event.rollouts:
                    self.status[rollout] = "consumed"  # consumed samples still count as accepted
            case Version():
                self.version = event.version

    def _filter(self, rollout: str) -> None:
        if self.status[rollout] == "ready":  # purged from the ready queue
            self.accepted -= 1
        elif self.scheme == "decrement":  # stale at completion: count, then take back
            self.on_rollout_accepted()
            self.accepted -= 1
        else:  # stale at completion: never counted
            self.running -= 1
        self.status[rollout] = "filtered"
        self.filtered += 1

    @staticmethod
    def _one_by_one(event: InterruptedBatch | ResumedBatch) -> list[Event]:
        """A batch event as the events it stands for, one rollout at a time."""
        if isinstance(event, InterruptedBatch):
            return [e for r, n in zip(event.rollouts, event.tokens) for e in (Segment(r, event.version, n), Interrupted(r))]
        return [Resumed(r, event.version) for r in event.rollouts]

    def _check(self, event: Event) -> None:
        if isinstance(event, (InterruptedBatch, ResumedBatch)):
            if not event.rollouts or len(set(event.rollouts)) != len(event.rollouts):
                raise ReferenceRefusal("a batch must name distinct rollouts")
            if isinstance(event, InterruptedBatch) and len(event.tokens) != len(event.rollouts):
                raise ReferenceRefusal("one token count per rollout")
            for one in self._one_by_one(event):  # distinct rollouts, and a segment leaves its rollout running:
                self._check(one)  # each event checks against the state before the batch
            return
        if isinstance(event, RunStarted):
            if self.config is not None:
                raise ReferenceRefusal("the run has already started")
            return
        if self.config is None:
            raise ReferenceRefusal("the run has not started")
        match event:
            case Enqueued():
                status = self.status.get(event.rollout)
                if status is not None:
                    raise ReferenceRefusal(f"rollout {event.rollout!r} was already enqueued (now {status})")
                if event.attempt < 1:
                    raise ReferenceRefusal("attempt must be at least 1")
            case Submitted():
                self._need(event.rollout, "pending")
                if self.paused:
                    raise ReferenceRefusal("generation is paused")
                if not 0 <= event.version <= self.version:
                    raise ReferenceRefusal(f"submitted at version {event.version}, current {self.version}")
                if self.get_capacity() <= 0:
                    raise ReferenceRefusal("no capacity")
            case Segment():
                self._need(event.rollout, "running")
                if not self.tail_version[event.rollout] <= event.version <= self.version or event.tokens < 0:
                    raise ReferenceRefusal(f"bad segment {event!r}")
            case Interrupted():
                self._need(event.rollout, "running")
            case Unpaused():
                if not self.paused:
                    raise ReferenceRefusal("generation is not paused")
            case Resumed():
                self._need(event.rollout, "interrupted")
                version = self.version if event.version is None else event.version
                if not self.tail_version[event.rollout] <= version <= self.version:
                    raise ReferenceRefusal(f"resumed at version {version}")
            case Accepted():
                self._need(event.rollout, "running")
            case Rejected():
                self._need(event.rollout, "running", "interrupted")
            case Filtered():
                self._need(event.rollout, "running", "ready")
            case Recomputed():
                self._need(event.rollout, "ready")
                if not self.tail_version[event.rollout] <= event.version <= self.version:
                    raise ReferenceRefusal(f"recomputed at version {event.version}")
            case Consumed():
                if not event.rollouts or len(set(event.rollouts)) != len(event.rollouts):
                    raise ReferenceRefusal("a batch must name distinct rollouts")
                for name in event.rollouts:
                    self._need(name, "ready")
            case Version():
                if event.version <= self.version:
                    raise ReferenceRefusal(f"version {event.version} does not increase {self.version}")
            case Paused():
                if self.paused:
                    raise ReferenceRefusal("already paused")
            case Checkpoint():
                if event.version < 0:
                    raise ReferenceRefusal("checkpoint version negative")
                if event.version > self.version:
                    raise ReferenceRefusal("checkpoint ahead of the version")

    def _need(self, rollout: str, *allowed: str) -> None:
        """Refuse unless ``rollout`` is known and its status is one of ``allowed``."""
        status = self.status.get(rollout)
        if status not in allowed:
            raise ReferenceRefusal(f"rollout {rollout!r} is {status or 'unknown'}, needs {' or '.join(allowed)}")
