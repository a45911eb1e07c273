"""The frozen baseline: engine/core/reducer.py as it was before the transition table
and its guards moved to engine/core/table.py and the state gained a ready queue (commit
10d5a40), kept unchanged so that benchmarks/bench_ledger.py can fold the same log with
it and with today's reducer in one run and compare their rates.  Imported only by
that benchmark; do not edit.
"""

from __future__ import annotations

import itertools
from typing import Iterable, NamedTuple

import immutables

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
    Stage,
    Submitted,
    Version,
)

# Rollout statuses.  NEW is the pseudo-status of an id the ledger has not seen;
# the finished statuses (consumed, rejected, filtered) are numbered last.
NEW, PENDING, RUNNING, INTERRUPTED, READY, CONSUMED, REJECTED, FILTERED = -1, 0, 1, 2, 3, 4, 5, 6
STATUS_NAMES = ("pending", "running", "interrupted", "ready", "consumed", "rejected", "filtered")
LIVE = frozenset({PENDING, RUNNING, INTERRUPTED, READY})
TERMINAL = frozenset({CONSUMED, REJECTED, FILTERED})

# The lifecycle: for each event type, the statuses it may start from and where it leads.
TRANSITIONS: dict[str, dict[int, int]] = {
    "enqueued": {NEW: PENDING},
    "submitted": {PENDING: RUNNING},
    "segment": {RUNNING: RUNNING},
    "interrupted": {RUNNING: INTERRUPTED},
    "resumed": {INTERRUPTED: RUNNING},
    "interrupted_batch": {RUNNING: INTERRUPTED},  # segment + interrupted, for each rollout named
    "resumed_batch": {INTERRUPTED: RUNNING},  # resumed, for each rollout named
    "accepted": {RUNNING: READY},
    "rejected": {RUNNING: REJECTED, INTERRUPTED: REJECTED},
    "filtered": {RUNNING: FILTERED, READY: FILTERED},
    "recomputed": {READY: READY},
    "consumed": {READY: CONSUMED},
}


def status_name(status: int) -> str:
    """``'running'`` for ``RUNNING``; ``'unknown'`` for an id never seen."""
    return "unknown" if status == NEW else STATUS_NAMES[status]


class IllegalTransition(Exception):
    """An event the lifecycle does not allow; names the rollout, its status and the event."""

    def __init__(self, event: Event, reason: str, rollout: str | None = None, status: str | None = None) -> None:
        self.event = event
        self.rollout = rollout
        self.status = status
        self.reason = reason
        where = f"rollout {rollout!r} ({status})" if rollout is not None else "ledger"
        super().__init__(f"illegal {event.type!r} for {where}: {reason}")


class Rollout(NamedTuple):
    """What the ledger knows of one live rollout."""

    status: int
    prompt: str
    attempt: int
    head_version: int  # policy version the rollout started under (first segment)
    tail_version: int  # policy version of its newest segment
    recomputed_version: int | None  # version of recomputed proximal log-probs, if any
    tokens: int
    order: int  # event count when it was enqueued or accepted: orders the ready queue


class State(NamedTuple):
    """An immutable snapshot of the ledger.  ``counts`` is indexed by status."""

    config: Config | None
    version: int
    paused: bool
    rollouts: immutables.Map  # rollout id -> Rollout, live rollouts only
    counts: tuple[int, ...]
    events: int
    checkpoint: Checkpoint | None

    @property
    def pending(self) -> int:
        return self.counts[PENDING]

    @property
    def running(self) -> int:
        """In flight: running or interrupted (both hold a generation slot)."""
        return self.counts[RUNNING] + self.counts[INTERRUPTED]

    @property
    def interrupted(self) -> int:
        return self.counts[INTERRUPTED]

    @property
    def ready(self) -> int:
        return self.counts[READY]

    @property
    def consumed(self) -> int:
        return self.counts[CONSUMED]

    @property
    def rejected(self) -> int:
        return self.counts[REJECTED]

    @property
    def filtered(self) -> int:
        return self.counts[FILTERED]

    @property
    def accepted(self) -> int:
        """Accepted and not filtered afterwards; consumed ones still count (AReaL's ``accepted``)."""
        return self.counts[READY] + self.counts[CONSUMED]

    @property
    def submitted(self) -> int:
        """Every rollout that ever left ``pending``."""
        return sum(self.counts) - self.counts[PENDING]

    def status_of(self, rollout: str) -> str:
        """Status name of a live rollout, ``'unknown'`` otherwise."""
        record = self.rollouts.get(rollout)
        return status_name(NEW if record is None else record.status)


EMPTY = State(None, 0, False, immutables.Map(), (0,) * len(STATUS_NAMES), 0, None)


def capacity(state: State) -> int:
    """How many more rollouts may start now (DESIGN.md's rule; never negative).

    ``min(max_concurrent - running, (max_staleness + version + 1) * batch_size -
    (accepted + running))`` with per-rank limits, 0 while paused or before the run.
    """
    config = state.config
    if config is None or state.paused:
        return 0
    running = state.counts[RUNNING] + state.counts[INTERRUPTED]
    room = config.rank_max_concurrent - running
    if config.max_staleness is not None:
        accepted = state.counts[READY] + state.counts[CONSUMED]
        staleness_room = (config.max_staleness + state.version + 1) * config.rank_batch_size - (accepted + running)
        room = min(room, staleness_room)
    return max(0, room)


_new_record = tuple.__new__  # builds a Rollout or a State from a plain tuple, skipping NamedTuple's slower paths


class _Draft:
    """A private, mutable working copy used while folding; never escapes this module."""

    __slots__ = ("config", "version", "paused", "rollouts", "counts", "events", "checkpoint")

    def __init__(self, state: State) -> None:
        self.config = state.config
        self.version = state.version
        self.paused = state.paused
        self.rollouts = state.rollouts.mutate()
        self.counts = list(state.counts)
        self.events = state.events
        self.checkpoint = state.checkpoint

    def freeze(self) -> State:
        fields = (self.config, self.version, self.paused, self.rollouts.finish(), tuple(self.counts), self.events, self.checkpoint)
        return _new_record(State, fields)

    def snapshot(self) -> State:
        """Freeze, then keep drafting on top of the frozen copy (O(1))."""
        state = self.freeze()
        self.rollouts = state.rollouts.mutate()
        return state


def _lookup(draft: _Draft, rollout: str, event: Event) -> tuple[Rollout, int]:
    """The rollout's record and the status the table says ``event`` moves it to."""
    record = draft.rollouts.get(rollout)
    if record is not None:
        target = TRANSITIONS[event.type].get(record[0])
        if target is not None:
            return record, target
    raise _refusal(event, rollout, NEW if record is None else record[0])


def _refusal(event: Event, rollout: str, status: int) -> IllegalTransition:
    if status == NEW:
        reason = "unknown rollout (never enqueued, or already finished)"
    elif event.type == "enqueued":
        reason = "duplicate rollout id"
    else:
        reason = "allowed only from " + ", ".join(status_name(s) for s in TRANSITIONS[event.type])
    return IllegalTransition(event, reason, rollout, status_name(status))


def _move(draft: _Draft, rollout: str, status: int, record: tuple) -> None:
    """Count the rollout's move from ``status`` to ``record[0]`` and store ``record``
    (the new :class:`Rollout`'s fields, as a plain tuple), or drop it for a finished
    status: only the counters remember a finished rollout."""
    target = record[0]
    counts = draft.counts
    counts[status] -= 1
    counts[target] += 1
    if target >= CONSUMED:
        del draft.rollouts[rollout]
    else:
        draft.rollouts[rollout] = _new_record(Rollout, record)


def _not_started(event: Event) -> IllegalTransition:
    """The refusal of an event that needs a started run (steps check ``draft.config is None``)."""
    return IllegalTransition(event, "the run has not started (no run_started event yet)")


def _run_started(draft: _Draft, event: RunStarted) -> None:
    if draft.config is not None:
        raise IllegalTransition(event, "the run has already started")
    if not isinstance(event.config, Config):
        raise IllegalTransition(event, f"config must be a Config, got {event.config!r}")
    draft.config = event.config


def _enqueued(draft: _Draft, event: Enqueued) -> None:
    if draft.config is None:
        raise _not_started(event)
    record = draft.rollouts.get(event.rollout)
    if record is not None:
        raise _refusal(event, event.rollout, record[0])
    if event.attempt < 1:
        raise IllegalTransition(event, f"attempt must be at least 1, got {event.attempt}", event.rollout, "unknown")
    _, hash_sign, number = event.rollout.rpartition("#")
    retry_like = hash_sign and number.isdigit() and int(number) >= 2
    if event.attempt == 1 and retry_like:
        raise IllegalTransition(event, "ids ending in '#<n>' (n >= 2) are reserved for retries", event.rollout, "unknown")
    if event.attempt > 1 and not event.rollout.endswith(f"#{event.attempt}"):
        raise IllegalTransition(event, f"attempt {event.attempt} must be named '<root>#{event.attempt}'", event.rollout, "unknown")
    target = TRANSITIONS["enqueued"][NEW]
    prompt = event.rollout if event.prompt is None else event.prompt
    draft.rollouts[event.rollout] = _new_record(Rollout, (target, prompt, event.attempt, -1, -1, None, 0, draft.events))
    draft.counts[target] += 1


def _submitted(draft: _Draft, event: Submitted) -> None:
    if draft.config is None:
        raise _not_started(event)
    record, target = _lookup(draft, event.rollout, event)
    if draft.paused:
        raise IllegalTransition(event, "generation is paused", event.rollout, "pending")
    if not 0 <= event.version <= draft.version:
        raise IllegalTransition(
            event, f"version {event.version} is not between 0 and the current version {draft.version}", event.rollout, "pending"
        )
    if capacity(draft) <= 0:  # type: ignore[arg-type]  # _Draft has State's fields
        raise IllegalTransition(event, "no capacity (the capacity rule allows no more rollouts now)", event.rollout, "pending")
    version = event.version
    _move(draft, event.rollout, record[0], (target, record.prompt, record.attempt, version, version, None, 0, record.order))


def _segment(draft: _Draft, event: Segment) -> None:
    rollout, version = event.rollout, event.version
    record, target = _lookup(draft, rollout, event)
    status, prompt, attempt, head, tail, recomputed, tokens, order = record
    if not tail <= version <= draft.version:
        raise IllegalTransition(
            event,
            f"segment version {version} must be between the rollout's last version {tail} "
            f"and the current version {draft.version}",
            rollout,
            "running",
        )
    if event.tokens < 0:
        raise IllegalTransition(event, f"tokens must not be negative, got {event.tokens}", rollout, "running")
    _move(draft, rollout, status, (target, prompt, attempt, head, version, recomputed, tokens + event.tokens, order))


def _interrupted(draft: _Draft, event: Interrupted) -> None:
    record, target = _lookup(draft, event.rollout, event)
    _move(draft, event.rollout, record[0], (target, *record[1:]))


def _resumed(draft: _Draft, event: Resumed) -> None:
    if draft.config is None:
        raise _not_started(event)
    if event.rollout is None:  # generation resumes after a pause
        if not draft.paused:
            raise IllegalTransition(event, "generation is not paused")
        draft.paused = False
        return
    rollout = event.rollout
    record, target = _lookup(draft, rollout, event)
    status, prompt, attempt, head, tail, recomputed, tokens, order = record
    version = draft.version if event.version is None else event.version
    if not tail <= version <= draft.version:
        raise IllegalTransition(
            event,
            f"resume version {version} must be between the rollout's last version {tail} "
            f"and the current version {draft.version}",
            rollout,
            "interrupted",
        )
    _move(draft, rollout, status, (target, prompt, attempt, head, version, recomputed, tokens, order))


def _distinct(event: InterruptedBatch | ResumedBatch | Consumed, what: str) -> None:
    """A batch event names at least one rollout, each once."""
    if not event.rollouts:
        raise IllegalTransition(event, f"a {what} must name at least one rollout")
    if len(set(event.rollouts)) != len(event.rollouts):
        raise IllegalTransition(event, f"a {what} names a rollout twice")


def _interrupted_batch(draft: _Draft, event: InterruptedBatch) -> None:
    _distinct(event, "batch interruption")
    if len(event.tokens) != len(event.rollouts):
        raise IllegalTransition(event, f"{len(event.rollouts)} rollouts but {len(event.tokens)} token counts")
    _fold_batch(draft, event, event.tokens, "segment")


def _resumed_batch(draft: _Draft, event: ResumedBatch) -> None:
    _distinct(event, "batch resumption")
    _fold_batch(draft, event, itertools.repeat(0), "resume")


def _fold_batch(draft: _Draft, event: InterruptedBatch | ResumedBatch, added: Iterable[int], word: str) -> None:
    """Move every rollout a batch event names along the event's one row of the table,
    its tail version set to ``event.version`` and ``added`` tokens counted; all or
    nothing: every rollout is checked (status, version range, tokens) before any moves.
    ``word`` names the version in a refusal."""
    ((source, target),) = TRANSITIONS[event.type].items()
    version, current, get = event.version, draft.version, draft.rollouts.get
    records = []
    for rollout, tokens in zip(event.rollouts, added):
        record = get(rollout)
        if record is None or record[0] != source:
            raise _refusal(event, rollout, NEW if record is None else record[0])
        _, prompt, attempt, head, tail, recomputed, total, order = record
        if not tail <= version <= current:
            raise IllegalTransition(
                event,
                f"{word} version {version} must be between the rollout's last version {tail} and the current version {current}",
                rollout,
                status_name(source),
            )
        if tokens < 0:
            raise IllegalTransition(event, f"tokens must not be negative, got {tokens}", rollout, status_name(source))
        records.append((target, prompt, attempt, head, version, recomputed, total + tokens, order))
    store = draft.rollouts.set
    for rollout, record in zip(event.rollouts, records):
        store(rollout, _new_record(Rollout, record))
    draft.counts[source] -= len(records)
    draft.counts[target] += len(records)


def _accepted(draft: _Draft, event: Accepted) -> None:
    record, target = _lookup(draft, event.rollout, event)
    _move(draft, event.rollout, record[0], (target, *record[1:7], draft.events))


def _rejected(draft: _Draft, event: Rejected) -> None:
    record, target = _lookup(draft, event.rollout, event)
    _move(draft, event.rollout, record[0], (target, *record[1:]))


def _filtered(draft: _Draft, event: Filtered) -> None:
    record, target = _lookup(draft, event.rollout, event)
    _move(draft, event.rollout, record[0], (target, *record[1:]))


def _recomputed(draft: _Draft, event: Recomputed) -> None:
    record, target = _lookup(draft, event.rollout, event)
    if not record.tail_version <= event.version <= draft.version:
        raise IllegalTransition(
            event,
            f"recomputed version {event.version} must be between the rollout's version {record.tail_version} "
            f"and the current version {draft.version}",
            event.rollout,
            "ready",
        )
    status, prompt, attempt, head, tail, _, tokens, order = record
    _move(draft, event.rollout, status, (target, prompt, attempt, head, tail, event.version, tokens, order))


def _consumed(draft: _Draft, event: Consumed) -> None:
    _distinct(event, "consumed batch")
    checked = [(rollout, *_lookup(draft, rollout, event)) for rollout in event.rollouts]  # all or nothing
    for rollout, record, target in checked:
        _move(draft, rollout, record[0], (target, *record[1:]))


def _version(draft: _Draft, event: Version) -> None:
    if draft.config is None:
        raise _not_started(event)
    if event.version <= draft.version:
        raise IllegalTransition(event, f"version must increase: {event.version} after {draft.version}")
    draft.version = event.version


def _paused(draft: _Draft, event: Paused) -> None:
    if draft.config is None:
        raise _not_started(event)
    if draft.paused:
        raise IllegalTransition(event, "generation is already paused")
    draft.paused = True


def _checkpoint(draft: _Draft, event: Checkpoint) -> None:
    if draft.config is None:
        raise _not_started(event)
    if event.version > draft.version:
        raise IllegalTransition(event, f"checkpoint version {event.version} is ahead of the current version {draft.version}")
    draft.checkpoint = event


def _stage(draft: _Draft, event: Stage) -> None:
    """Workflow progress lives in the log (see engine.workflow); the ledger only counts it."""


_STEPS = {
    RunStarted: _run_started,
    Enqueued: _enqueued,
    Submitted: _submitted,
    Segment: _segment,
    Interrupted: _interrupted,
    Resumed: _resumed,
    Accepted: _accepted,
    Rejected: _rejected,
    Filtered: _filtered,
    Recomputed: _recomputed,
    Consumed: _consumed,
    Version: _version,
    Paused: _paused,
    Checkpoint: _checkpoint,
    Stage: _stage,
    InterruptedBatch: _interrupted_batch,
    ResumedBatch: _resumed_batch,
}


def _step(draft: _Draft, event: Event) -> None:
    """Fold one event into ``draft``.  Each step validates before it changes anything,
    so a raised :class:`IllegalTransition` leaves the draft as it was."""
    try:
        step = _STEPS[type(event)]
    except KeyError:
        raise TypeError(f"not a ledger event: {event!r}") from None
    step(draft, event)
    draft.events += 1


def apply(state: State, event: Event) -> State:
    """The state after ``event``; raises :class:`IllegalTransition` (``state`` untouched)."""
    draft = _Draft(state)
    _step(draft, event)
    return draft.freeze()


def fold(events: Iterable[Event], state: State = EMPTY) -> State:
    """Fold ``events`` onto ``state`` (the empty ledger by default)."""
    draft = _Draft(state)
    for event in events:
        _step(draft, event)
    return draft.freeze()


class Folder:
    """Folds events one at a time for a shell (executor, simulator) that needs the
    state after each: the same steps as :func:`apply`, without rebuilding a draft
    per event.  An illegal event leaves :attr:`state` as it was."""

    __slots__ = ("_draft", "_state")

    def __init__(self, state: State = EMPTY) -> None:
        self._state = state
        self._draft = _Draft(state)

    @property
    def state(self) -> State:
        """The current state (cached until the next event)."""
        if self._state is None:
            self._state = self._draft.snapshot()
        return self._state

    # Reads of the current state that take no snapshot: a snapshot is cheap, but the
    # next events then copy the parts of the rollout map they change.
    @property
    def capacity(self) -> int:
        """:func:`capacity` of the current state (no snapshot taken)."""
        return capacity(self._draft)  # type: ignore[arg-type]  # a draft has the fields capacity reads

    @property
    def config(self) -> Config | None:
        """The run's config, ``None`` before ``run_started`` (no snapshot taken)."""
        return self._draft.config

    @property
    def version(self) -> int:
        """The current policy version (no snapshot taken)."""
        return self._draft.version

    @property
    def paused(self) -> bool:
        """Whether generation is paused (no snapshot taken)."""
        return self._draft.paused

    def count(self, status: int) -> int:
        """How many rollouts have ``status`` (``State.counts[status]``; no snapshot taken)."""
        return self._draft.counts[status]

    def record(self, rollout: str) -> Rollout | None:
        """The record of a live rollout, ``None`` otherwise (records are immutable; no snapshot taken)."""
        return self._draft.rollouts.get(rollout)

    def is_live(self, rollout: str) -> bool:
        """Whether ``rollout`` is pending, running, interrupted or ready (no snapshot taken)."""
        return rollout in self._draft.rollouts

    def apply(self, event: Event) -> None:
        """Fold one event, atomically (every step checks before it changes anything)."""
        _step(self._draft, event)
        self._state = None

    def extend(self, events: Iterable[Event]) -> None:
        """Fold ``events`` in order, each atomically: an illegal one raises and leaves the
        events before it folded (a shell that wants all or nothing restores a snapshot)."""
        draft = self._draft
        self._state = None
        for event in events:
            _step(draft, event)
