"""The reducer's private working copy of a state while it folds events.

A :class:`Draft` starts from a frozen :class:`~engine.core.state.State` and records
what the events change on top of it, in plain dicts (cheaper to read and write than
a persistent map's mutation); :meth:`Draft.freeze` builds the next immutable state
from the frozen one and those changes, in time proportional to the changes, and
goes on from it.  The ready queue is edited the same way: the rollouts accepted and
the rollouts gone since the last freeze become one layer of edits over the frozen
queue (see :mod:`engine.core.ready`), so a rollout accepted and consumed between
two freezes never touches the persistent queue at all.

Only :mod:`engine.core.reducer` uses drafts; nothing here checks a rule.
"""

from __future__ import annotations

from typing import cast

from engine.core.config import Config
from engine.core.events import Checkpoint
from engine.core.overlay import Overlay
from engine.core.ready import ReadyQueue, layered
from engine.core.state import ABSENT, Record, Rollout, State

_new_record = tuple.__new__  # builds a State or a Rollout from a plain tuple, skipping NamedTuple's slower paths


class Draft:
    """A mutable copy of a state: the fields of :class:`State` that events change
    (``config``, ``version``, ``paused``, ``counts`` as a list, ``events``,
    ``checkpoint``), and the live rollouts and the ready queue as a frozen part plus
    the changes since."""

    __slots__ = ("added", "base", "checkpoint", "config", "counting", "counts", "delta", "events", "flying", "in_flight", "paused",
                 "queue", "removed", "rollouts", "top", "version")

    def __init__(self, state: State) -> None:
        self.config: Config | None = state.config
        self.version: int = state.version
        self.paused: bool = state.paused
        self.counts: list[int] = list(state.counts)
        self.events: int = state.events
        self.checkpoint: Checkpoint | None = state.checkpoint
        #: the live rollouts as of the last freeze, and its two dicts (read directly:
        #: ``top``, then ``delta``, then ``base``; ``delta`` maps a removed one to ABSENT)
        self.rollouts: Overlay[str, Rollout] = state.rollouts
        self.base: dict[str, Rollout] = state.rollouts.base
        self.delta: dict[str, Rollout] = state.rollouts.delta
        #: rollout -> its record now (a Rollout's fields as a plain tuple), or ABSENT
        #: for one of ``base`` that finished since
        self.top: dict[str, Record] = {}
        #: the ready queue as of the last freeze
        self.queue: ReadyQueue = state.queue
        #: rollout -> head version: accepted since ``queue``, in acceptance order
        self.added: dict[str, int] = {}
        #: rollout -> head version: in ``queue`` and no longer ready
        self.removed: dict[str, int] = {}
        #: whether rollouts in flight are counted (only a run whose batches are in order
        #: reads the count: the others do not pay for it on this hot path)
        self.counting: bool = state.config is not None and state.config.in_order
        #: the state's ``in_flight`` as of the last freeze, and as a dict (head version ->
        #: count) once an event moved a rollout into or out of flight since
        self.in_flight: tuple[tuple[int, int], ...] = state.in_flight
        self.flying: dict[int, int] | None = None

    def fly(self, head: int, change: int) -> None:
        """A rollout of head version ``head`` went into flight (``change`` 1) or out of it (-1)."""
        flying = self.flying
        if flying is None:
            self.flying = flying = dict(self.in_flight)
        count = flying.get(head, 0) + change
        if count:
            flying[head] = count
        else:
            del flying[head]

    def get(self, rollout: str) -> Record:
        """The live record of ``rollout`` (a Rollout's fields), or :data:`ABSENT`."""
        return self.top.get(rollout) or self.delta.get(rollout) or self.base.get(rollout) or ABSENT

    def freeze(self) -> State:
        """The immutable state this draft holds now; the draft then goes on from it
        (the changes folded so far now live in the frozen state, not in the draft)."""
        rollouts, top = self.rollouts, self.top
        if top:
            for rollout, record in top.items():
                if record is not ABSENT:
                    top[rollout] = _new_record(Rollout, record)
            # every record of ``top`` is now a Rollout, or ABSENT (the map's gone marker)
            self.rollouts = rollouts = rollouts.updated(cast("dict[str, Rollout]", top))
            self.base, self.delta, self.top = rollouts.base, rollouts.delta, {}
        queue = self.queue
        if self.added or self.removed:  # one layer of edits; the queue keeps the two dicts
            self.queue = queue = layered(queue, self.removed, self.added)
            self.added, self.removed = {}, {}
        if self.flying is not None:
            self.in_flight, self.flying = tuple(sorted(self.flying.items())), None
        return _new_record(State, (self.config, self.version, self.paused, rollouts, tuple(self.counts), self.events, self.checkpoint, queue,
                                   self.in_flight))
