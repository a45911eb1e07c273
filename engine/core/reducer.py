"""The pure reducer: the moves each event makes, and folding events into states.

``apply(state, event) -> state`` folds one event; ``fold(events)`` folds many;
:class:`Folder` folds one at a time for a shell that reads the state between
events.  None of them reads a clock, draws a random number, does I/O or mutates
its inputs.  Which moves are legal is not decided here: every rule (the
transition table and the guards beside it) is in :mod:`engine.core.table`, and
each step below checks its event against that module before it changes anything,
so an illegal event raises :class:`IllegalTransition` and leaves the state as it
was.  The steps only apply moves.

States hold live rollouts only (pending, running, interrupted, ready); finished
ones (consumed, rejected, filtered) survive as counters, so the folded state's
memory does not grow with the number of rollouts that finished.  The names of
:mod:`engine.core.state` and :mod:`engine.core.table` are importable from here too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from engine.core.config import Config
from engine.core.draft import Draft
from engine.core.events import (
    BY_TYPE,
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
    Unpaused,
    Version,
)
from engine.core.ready import ReadyQueue
from engine.core.state import (
    ABSENT,
    CONSUMED,
    EMPTY,
    FILTERED,
    IN_FLIGHT,
    INTERRUPTED,
    LIVE,
    NEW,
    PENDING,
    READY,
    REJECTED,
    RUNNING,
    STATUS_NAMES,
    TERMINAL,
    Record,
    Rollout,
    State,
    capacity,
    ready_rollouts,
    status_name,
)
from engine.core.table import (
    GUARDS,
    TRANSITIONS,
    Guards,
    IllegalTransition,
    RolloutGuard,
    refusal,
)

# The names callers import from here: the reducer's own and those of engine.core.state
# and engine.core.table.
__all__ = [
    "CONSUMED", "EMPTY", "FILTERED", "GUARDS", "INTERRUPTED", "LIVE", "NEW", "PENDING", "READY",
    "REJECTED", "RUNNING", "STATUS_NAMES", "TERMINAL", "TRANSITIONS", "Folder", "Guards",
    "IllegalTransition", "ReadyQueue", "Record", "Rollout", "State", "apply", "capacity", "fold",
    "ready_rollouts", "status_name",
]  # fmt: skip

_new_record = tuple.__new__  # builds a Rollout from a plain tuple, skipping NamedTuple's slower paths

#: event type -> its rollout guard, for the event types that have one
_GUARD: dict[str, RolloutGuard] = {kind: guards.rollout for kind, guards in GUARDS.items() if guards.rollout is not None}


def _refused(draft: Draft, event: Any, rollout: str, record: Record, version: int, tokens: int) -> IllegalTransition:
    """Why the table or the rollout guard refuses ``event`` for ``rollout`` (whose
    record is ``record``; ``version`` and ``tokens`` are what the event gives it)."""
    status = record[0]
    if TRANSITIONS[event.type].get(status) is None:
        return refusal(event, rollout, status)
    guard = _GUARD.get(event.type)
    reason = guard(draft, event, record, version, tokens) if guard is not None else None
    return IllegalTransition(event, str(reason), rollout, status_name(status))


def _move(draft: Draft, rollout: str, status: int, record: Record) -> None:
    """Count the rollout's move from ``status`` to another, ``record[0]`` (and, in a run
    whose batches are in order, whether it went into or out of flight, by its head
    version), and store
    ``record`` (the new :class:`Rollout`'s fields, as a plain tuple), or drop it for a
    finished status: only the counters remember a finished rollout.  Keeps the ready
    queue.  (A step whose move keeps the status stores the new record itself.)"""
    target = record[0]
    counts = draft.counts
    counts[status] -= 1
    counts[target] += 1
    if draft.counting and (target in IN_FLIGHT) is not (status in IN_FLIGHT):  # into or out of flight
        draft.fly(record[3], 1 if target in IN_FLIGHT else -1)
    if target < CONSUMED:
        draft.top[rollout] = record
    elif rollout in draft.delta or rollout in draft.base:
        draft.top[rollout] = ABSENT
    else:
        del draft.top[rollout]
    if target == READY:
        draft.added[rollout] = record[3]  # joins the end of its head version's group
    elif status == READY and draft.added.pop(rollout, None) is None:
        draft.removed[rollout] = record[3]


# --- the steps: one per event type, each applying the moves its event makes ----------
# Each rollout step asks the table (TRANSITIONS) for the status its event leads to and
# the event's rollout guard (GUARDS) whether the move is allowed, then moves; a batch
# step asks for every rollout it names before it moves any.


def _run_started(draft: Draft, event: RunStarted) -> None:
    draft.config = event.config
    draft.counting = event.config.in_order


def _enqueued(draft: Draft, event: Enqueued) -> None:
    rollout = event.rollout
    record = draft.top.get(rollout) or draft.delta.get(rollout) or draft.base.get(rollout) or ABSENT
    target = TRANSITIONS["enqueued"].get(record[0])
    if target is None or _GUARD["enqueued"](draft, event, record, 0, 0):
        raise _refused(draft, event, rollout, record, 0, 0)
    prompt = rollout if event.prompt is None else event.prompt
    draft.top[rollout] = (target, prompt, event.attempt, -1, -1, None, 0, draft.events)
    draft.counts[target] += 1


def _submitted(draft: Draft, event: Submitted) -> None:
    rollout, version = event.rollout, event.version
    record = draft.top.get(rollout) or draft.delta.get(rollout) or draft.base.get(rollout) or ABSENT
    target = TRANSITIONS["submitted"].get(record[0])
    if target is None or _GUARD["submitted"](draft, event, record, version, 0):
        raise _refused(draft, event, rollout, record, version, 0)
    _move(draft, rollout, record[0], (target, record[1], record[2], version, version, None, 0, record[7]))


def _segment(draft: Draft, event: Segment) -> None:
    rollout, version, tokens = event.rollout, event.version, event.tokens
    record = draft.top.get(rollout) or draft.delta.get(rollout) or draft.base.get(rollout) or ABSENT
    target = TRANSITIONS["segment"].get(record[0])
    if target is None or _GUARD["segment"](draft, event, record, version, tokens):
        raise _refused(draft, event, rollout, record, version, tokens)
    moved = (target, record[1], record[2], record[3], version, record[5], record[6] + tokens, record[7])
    if target == record[0]:  # the table keeps the status: only the record changes
        draft.top[rollout] = moved
    else:
        _move(draft, rollout, record[0], moved)


def _status_only(draft: Draft, event: Interrupted | Rejected | Filtered) -> None:
    """``interrupted``, ``rejected``, ``filtered`` (no rollout guard): the status changes, nothing else."""
    rollout = event.rollout
    record = draft.top.get(rollout) or draft.delta.get(rollout) or draft.base.get(rollout) or ABSENT
    target = TRANSITIONS[event.type].get(record[0])
    if target is None:
        raise refusal(event, rollout, record[0])
    _move(draft, rollout, record[0], (target, *record[1:]))


def _resumed(draft: Draft, event: Resumed) -> None:
    rollout = event.rollout
    version = draft.version if event.version is None else event.version
    record = draft.top.get(rollout) or draft.delta.get(rollout) or draft.base.get(rollout) or ABSENT
    target = TRANSITIONS["resumed"].get(record[0])
    if target is None or _GUARD["resumed"](draft, event, record, version, 0):
        raise _refused(draft, event, rollout, record, version, 0)
    _move(draft, rollout, record[0], (target, record[1], record[2], record[3], version, record[5], record[6], record[7]))


def _accepted(draft: Draft, event: Accepted) -> None:
    rollout = event.rollout
    record = draft.top.get(rollout) or draft.delta.get(rollout) or draft.base.get(rollout) or ABSENT
    target = TRANSITIONS["accepted"].get(record[0])
    if target is None:
        raise refusal(event, rollout, record[0])
    _move(draft, rollout, record[0], (target, record[1], record[2], record[3], record[4], record[5], record[6], draft.events))  # events: its place in the ready queue


def _recomputed(draft: Draft, event: Recomputed) -> None:
    rollout, version = event.rollout, event.version
    record = draft.top.get(rollout) or draft.delta.get(rollout) or draft.base.get(rollout) or ABSENT
    target = TRANSITIONS["recomputed"].get(record[0])
    if target is None or _GUARD["recomputed"](draft, event, record, version, 0):
        raise _refused(draft, event, rollout, record, version, 0)
    moved = (target, record[1], record[2], record[3], record[4], version, record[6], record[7])
    if target == record[0]:  # the table keeps the status: only the record changes
        draft.top[rollout] = moved
    else:
        _move(draft, rollout, record[0], moved)


def _checked(draft: Draft, event: Consumed | InterruptedBatch | ResumedBatch, tokens: Iterable[int]) -> list[tuple[str, Record, int, int]]:
    """(rollout, record, target, tokens) for each rollout a batch event names, once the
    table and the rollout guard allow every move (all or nothing)."""
    row, guard, version = TRANSITIONS[event.type], _GUARD.get(event.type), getattr(event, "version", 0)
    get, delta_get, base_get = draft.top.get, draft.delta.get, draft.base.get
    checked = []
    for rollout, added in zip(event.rollouts, tokens):
        record = get(rollout) or delta_get(rollout) or base_get(rollout) or ABSENT
        target = row.get(record[0])
        if target is None or guard is not None and guard(draft, event, record, version, added):
            raise _refused(draft, event, rollout, record, version, added)
        checked.append((rollout, record, target, added))
    return checked


def _consumed(draft: Draft, event: Consumed) -> None:
    for rollout, record, target, _ in _checked(draft, event, itertools.repeat(0)):
        _move(draft, rollout, record[0], (target, *record[1:]))


def _interrupted_batch(draft: Draft, event: InterruptedBatch) -> None:
    """A ``segment`` of ``tokens[i]`` under ``version``, then ``interrupted``, for each rollout."""
    version = event.version
    for rollout, record, target, added in _checked(draft, event, event.tokens):
        _move(draft, rollout, record[0], (target, record[1], record[2], record[3], version, record[5], record[6] + added, record[7]))


def _resumed_batch(draft: Draft, event: ResumedBatch) -> None:
    """A ``resumed`` under ``version`` for each rollout."""
    version = event.version
    for rollout, record, target, _ in _checked(draft, event, itertools.repeat(0)):
        _move(draft, rollout, record[0], (target, record[1], record[2], record[3], version, record[5], record[6], record[7]))


def _version(draft: Draft, event: Version) -> None:
    draft.version = event.version


def _paused(draft: Draft, event: Paused) -> None:
    draft.paused = True


def _unpaused(draft: Draft, event: Unpaused) -> None:
    draft.paused = False


def _checkpoint(draft: Draft, event: Checkpoint) -> None:
    draft.checkpoint = event


def _stage(draft: Draft, event: Stage) -> None:
    """Workflow progress lives in the log (see engine.workflow); the ledger only counts it."""


_STEPS: dict[type, Callable[[Draft, Any], None]] = {
    RunStarted: _run_started,
    Enqueued: _enqueued,
    Submitted: _submitted,
    Segment: _segment,
    Interrupted: _status_only,
    Resumed: _resumed,
    Accepted: _accepted,
    Rejected: _status_only,
    Filtered: _status_only,
    Recomputed: _recomputed,
    Consumed: _consumed,
    Version: _version,
    Paused: _paused,
    Unpaused: _unpaused,
    Checkpoint: _checkpoint,
    Stage: _stage,
    InterruptedBatch: _interrupted_batch,
    ResumedBatch: _resumed_batch,
}

#: event class -> (its step, its ledger guards from the table)
_PLAN = {cls: (_STEPS[cls], GUARDS[kind].ledger) for kind, cls in BY_TYPE.items()}


def _step(draft: Draft, event: Event) -> None:
    """Fold one event into ``draft``: the event's ledger guards, then its step (which
    checks the table and the rollout guard before it moves anything), so a raised
    :class:`IllegalTransition` leaves the draft as it was."""
    try:
        step, guards = _PLAN[type(event)]
    except KeyError:
        raise TypeError(f"not a ledger event: {event!r}") from None
    for guard in guards:
        reason = guard(draft, event)
        if reason is not None:
            raise IllegalTransition(event, reason)
    step(draft, event)
    draft.events += 1


def apply(state: State, event: Event) -> State:
    """The state after ``event``; raises :class:`IllegalTransition` (``state`` untouched)."""
    draft = Draft(state)
    _step(draft, event)
    return draft.freeze()


def fold(events: Iterable[Event], state: State = EMPTY) -> State:
    """Fold ``events`` onto ``state`` (the empty ledger by default)."""
    draft = Draft(state)
    plan = _PLAN
    for event in events:
        try:
            step, guards = plan[type(event)]
        except KeyError:
            raise TypeError(f"not a ledger event: {event!r}") from None
        if guards:
            for guard in guards:
                reason = guard(draft, event)
                if reason is not None:
                    raise IllegalTransition(event, reason)
        step(draft, event)
        draft.events += 1
    return draft.freeze()


class Folder:
    """Folds events one at a time for a shell (executor, simulator) that needs the
    state after each: the same steps as :func:`apply`, without rebuilding a draft
    per event.  An illegal event leaves :attr:`state` as it was."""

    __slots__ = ("_draft", "_state")

    def __init__(self, state: State = EMPTY) -> None:
        self._state: State | None = state
        self._draft = Draft(state)

    @property
    def state(self) -> State:
        """The current state (cached until the next event; costs the changes since the last one)."""
        if self._state is None:
            self._state = self._draft.freeze()
        return self._state

    # Reads of the current state that take no snapshot.
    @property
    def capacity(self) -> int:
        """:func:`capacity` of the current state (no snapshot taken)."""
        return capacity(self._draft)

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
        record = self._draft.get(rollout)
        return None if record is ABSENT else _new_record(Rollout, record)

    def is_live(self, rollout: str) -> bool:
        """Whether ``rollout`` is pending, running, interrupted or ready (no snapshot taken)."""
        return self._draft.get(rollout) is not ABSENT

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
