"""Invariants of the ledger, each a named function that raises
:class:`InvariantViolation` naming itself.

They are written plainly from DESIGN.md, not by calling the policies, so that a bug
in the reducer or a policy cannot hide behind the same bug here.  Three kinds:

- state invariants (``conservation``, ``bounds``, ``capacity_rule``): hold after every event;
  :func:`check_state` runs them and is cheap enough for a shell's debug mode
  (``Ledger(check=check_state)``), O(live rollouts) per event;
- transition invariants (``consumed_within_staleness``, ``consumed_in_order``, ``capacity_recovered``,
  ``nothing_lost``): compare the state before and after one event;
  :class:`InvariantChecker` remembers the previous state and runs them too, with
  O(1) state checks per event and the full sweep every ``full_every`` events;
- whole-run invariants (``ready_queue_fresh`` at rest, ``capacity_recovery``
  against the history without a rollout, ``replay_equals_live``, ``apply_is_pure``,
  ``json_round_trip``) used by the state machines in :mod:`properties.stateful`.

The liveness invariant lives in :mod:`properties.liveness`.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

from engine.core import reducer
from engine.core.events import (
    Consumed,
    Enqueued,
    Event,
    Filtered,
    InterruptedBatch,
    Rejected,
    ResumedBatch,
    from_json,
    to_json,
)
from engine.core.reducer import (
    CONSUMED,
    FILTERED,
    INTERRUPTED,
    LIVE,
    PENDING,
    READY,
    REJECTED,
    RUNNING,
    STATUS_NAMES,
    IllegalTransition,
    Rollout,
    State,
)


class InvariantViolation(AssertionError):
    """An invariant does not hold; ``invariant`` names it, the message says how."""

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(f"invariant {invariant!r} violated: {message}")
        self.invariant = invariant


def _fail(invariant: str, message: str) -> None:
    raise InvariantViolation(invariant, message)


# --- state invariants: hold after every event --------------------------------------


def conservation(state: State) -> None:
    """Every rollout is in exactly one status: the counters of live statuses equal the
    live records by status, and no counter is negative; in a run whose batches are
    in order the rollouts in flight are counted by head version as their records say
    (in the others not at all)."""
    _conserved_counts(state)
    by_status = [0] * len(STATUS_NAMES)
    for rollout, record in state.rollouts.items():
        if record.status not in LIVE:
            _fail("conservation", f"rollout {rollout!r} is kept as live with status {record.status!r}")
        by_status[record.status] += 1
    for status in LIVE:
        if by_status[status] != state.counts[status]:
            _fail(
                "conservation",
                f"{state.counts[status]} counted {STATUS_NAMES[status]} but {by_status[status]} rollouts have that status",
            )
    counted = state.config is not None and state.config.in_order  # only in-order runs count them
    flying = tuple(sorted(_in_flight_by_head(state).items())) if counted else ()
    if state.in_flight != flying:
        _fail("conservation", f"in flight by head version {state.in_flight}, but the live records give {flying}")


def _in_flight_by_head(state: State) -> dict[int, int]:
    """Head version -> how many live records are running or interrupted, by a scan."""
    heads: dict[int, int] = {}
    for record in state.rollouts.values():
        if record.status in (RUNNING, INTERRUPTED):
            heads[record.head_version] = heads.get(record.head_version, 0) + 1
    return heads


def _conserved_counts(state: State) -> None:
    """The O(1) part of :func:`conservation`: counters well formed, none negative, and
    as many live records as live counts."""
    counts = state.counts
    if len(counts) != len(STATUS_NAMES):
        _fail("conservation", f"{len(counts)} counters for {len(STATUS_NAMES)} statuses")
    if min(counts) < 0:
        status = min(range(len(counts)), key=counts.__getitem__)
        _fail("conservation", f"counter {STATUS_NAMES[status]} is negative ({counts[status]})")
    live = counts[PENDING] + counts[RUNNING] + counts[INTERRUPTED] + counts[READY]
    if live != len(state.rollouts):
        _fail("conservation", f"{live} rollouts counted live but {len(state.rollouts)} live records")


def _plain_capacity(state: State) -> int:
    """DESIGN.md's capacity rule, written out independently of ``engine.core.reducer.capacity``."""
    config = state.config
    if config is None or state.paused:
        return 0
    rank_concurrent = max(1, config.max_concurrent // config.dp_size)
    rank_batch = max(1, config.batch_size // config.dp_size)
    running = state.counts[RUNNING] + state.counts[INTERRUPTED]
    accepted = state.counts[READY] + state.counts[CONSUMED]
    room = rank_concurrent - running
    if config.max_staleness is not None:
        room = min(room, (config.max_staleness + state.version + 1) * rank_batch - (accepted + running))
    return max(0, room)


def bounds(state: State) -> None:
    """Nothing negative; running <= max_concurrent; accepted + running <=
    (max_staleness + version + 1) * batch_size when staleness is bounded (per rank);
    versions of every live rollout ordered head <= tail <= current."""
    _counter_bounds(state)
    for rollout, record in state.rollouts.items():
        _record_bounds(state, rollout, record)


def _counter_bounds(state: State) -> None:
    """The O(1) part of :func:`bounds`: the counters, the version and the capacity."""
    if state.version < 0:
        _fail("bounds", f"version is negative ({state.version})")
    for status, count in enumerate(state.counts):
        if count < 0:
            _fail("bounds", f"{STATUS_NAMES[status]} is negative ({count})")
    capacity = reducer.capacity(state)
    if capacity < 0:
        _fail("bounds", f"capacity is negative ({capacity})")
    config = state.config
    if config is None:
        return
    rank_concurrent = max(1, config.max_concurrent // config.dp_size)
    rank_batch = max(1, config.batch_size // config.dp_size)
    running = state.counts[RUNNING] + state.counts[INTERRUPTED]
    if running > rank_concurrent:
        _fail("bounds", f"running {running} exceeds max_concurrent {rank_concurrent} (per rank)")
    if config.max_staleness is not None:
        accepted = state.counts[READY] + state.counts[CONSUMED]
        limit = (config.max_staleness + state.version + 1) * rank_batch
        if accepted + running > limit:
            _fail(
                "bounds",
                f"accepted {accepted} + running {running} exceeds (max_staleness {config.max_staleness} + "
                f"version {state.version} + 1) * batch_size {rank_batch} = {limit}",
            )


def _record_bounds(state: State, rollout: str, record: Rollout) -> None:
    """The per-rollout part of :func:`bounds`."""
    if record.status == PENDING:
        return
    if not 0 <= record.head_version <= record.tail_version <= state.version:
        _fail(
            "bounds",
            f"rollout {rollout!r} has versions head {record.head_version}, tail {record.tail_version} "
            f"at version {state.version}",
        )
    if record.tokens < 0:
        _fail("bounds", f"rollout {rollout!r} has {record.tokens} tokens")


def capacity_rule(state: State) -> None:
    """``engine.core.reducer.capacity`` follows DESIGN.md's formula (with per-rank limits,
    0 while paused, never negative)."""
    actual, expected = reducer.capacity(state), _plain_capacity(state)
    if actual != expected:
        _fail("capacity_rule", f"capacity is {actual}, the rule gives {expected} ({_summary(state)})")


def check_state(state: State, event: Event | None = None) -> None:
    """The state invariants (conservation, bounds, capacity_rule); usable as
    ``Ledger(check=check_state)``."""
    conservation(state)
    bounds(state)
    capacity_rule(state)


# --- transition invariants: the state before and after one event -----------------


def consumed_within_staleness(before: State, event: Event) -> None:
    """Under ``strict`` no consumed rollout is staler than max_staleness (measured from
    its first segment); under ``segment_wise`` the seeds' rule holds: at most 1 version
    behind its newest segment, or, once recomputed, at most max(1, max_staleness)
    behind its first segment."""
    config = before.config
    if not isinstance(event, Consumed) or config is None or config.policy == "admission":
        return
    for rollout in event.rollouts:
        record = before.rollouts.get(rollout)
        if record is None:
            continue  # the reducer refuses the event
        if config.policy == "strict":
            if config.max_staleness is not None and before.version - record.head_version > config.max_staleness:
                _fail(
                    "consumed_within_staleness",
                    f"strict: rollout {rollout!r} started at version {record.head_version} consumed at version "
                    f"{before.version} (max_staleness {config.max_staleness})",
                )
        elif record.recomputed_version is None:
            if before.version - record.tail_version > 1:
                _fail(
                    "consumed_within_staleness",
                    f"segment_wise: rollout {rollout!r} with newest segment at version {record.tail_version} "
                    f"consumed at version {before.version} without recomputation",
                )
        elif config.max_staleness is not None and before.version - record.head_version > max(1, config.max_staleness):
            _fail(
                "consumed_within_staleness",
                f"segment_wise: recomputed rollout {rollout!r} started at version {record.head_version} consumed "
                f"at version {before.version} (allowed {max(1, config.max_staleness)})",
            )


def consumed_in_order(before: State, event: Event) -> None:
    """With ``in_order`` no batch takes a rollout that started under a newer version
    than a rollout still in flight."""
    config = before.config
    if not isinstance(event, Consumed) or config is None or not config.in_order:
        return
    flying = _in_flight_by_head(before)
    if not flying:
        return
    oldest = min(flying)
    for rollout in event.rollouts:
        record = before.rollouts.get(rollout)
        if record is not None and record.head_version > oldest:
            _fail(
                "consumed_in_order",
                f"rollout {rollout!r} started at version {record.head_version} consumed while a rollout started at "
                f"version {oldest} is in flight",
            )


def without_rollout(state: State, rollout: str) -> State:
    """``state`` as if the live ``rollout`` had never been enqueued."""
    record = state.rollouts[rollout]
    counts = list(state.counts)
    counts[record.status] -= 1
    return state._replace(rollouts=state.rollouts.delete(rollout), counts=tuple(counts))


def capacity_recovered(before: State, event: Event, after: State) -> None:
    """A rollout that is filtered or rejected leaves capacity exactly as if it had
    never been admitted (the local form of :func:`capacity_recovery`)."""
    if not isinstance(event, (Filtered, Rejected)) or event.rollout not in before.rollouts:
        return
    expected = reducer.capacity(without_rollout(before, event.rollout))
    actual = reducer.capacity(after)
    if actual != expected:
        _fail(
            "capacity_recovered",
            f"after {event.type} {event.rollout!r} capacity is {actual}; without that rollout it would be {expected}",
        )


def nothing_lost(before: State, event: Event, after: State) -> None:
    """The number of rollouts ever enqueued (the sum of all counters) grows by one per
    ``enqueued`` event and by nothing else."""
    grown = sum(after.counts) - sum(before.counts)
    expected = 1 if isinstance(event, Enqueued) else 0
    if grown != expected:
        _fail("nothing_lost", f"a {event.type!r} event changed the number of rollouts by {grown}, expected {expected}")


class InvariantChecker:
    """A debug-mode check for ``Ledger(check=...)`` that stays cheap on large runs.

    After every event: the O(1) parts of the state invariants (counters, bounds,
    capacity rule), the records of the rollouts the event names, and the transition
    invariants against the previous state it remembers.  Every ``full_every`` events
    (and on the first): the full :func:`check_state` over all live rollouts.
    """

    def __init__(self, state: State | None = None, full_every: int = 1024) -> None:
        if full_every < 1:
            raise ValueError(f"full_every must be at least 1, got {full_every}")
        self.previous = state
        self.full_every = full_every
        self.checked = 0

    def __call__(self, state: State, event: Event | None = None) -> None:
        if self.checked % self.full_every == 0:
            check_state(state, event)
        else:
            _conserved_counts(state)
            _counter_bounds(state)
            capacity_rule(state)
            for rollout in _named(event):
                record = state.rollouts.get(rollout)
                if record is not None:
                    if record.status not in LIVE:
                        _fail("conservation", f"rollout {rollout!r} is kept as live with status {record.status!r}")
                    _record_bounds(state, rollout, record)
        self.checked += 1
        before = self.previous
        if before is not None and event is not None and state.events == before.events + 1:
            consumed_within_staleness(before, event)
            consumed_in_order(before, event)
            capacity_recovered(before, event, state)
            nothing_lost(before, event, state)
        self.previous = state


def _named(event: Event | None) -> tuple[str, ...]:
    """The rollouts an event names."""
    if event is None:
        return ()
    rollout = getattr(event, "rollout", None)
    return (rollout,) if rollout is not None else getattr(event, "rollouts", ())


# --- whole-run invariants -----------------------------------------------------------


def ready_queue_fresh(state: State) -> None:
    """At rest (after the version moved and the purge was appended), no ready rollout is
    one the policy must filter: strict and segment_wise keep only fresh samples, so
    stale ones never hold capacity."""
    config = state.config
    if config is None or config.policy == "admission":
        return
    for rollout, record in state.rollouts.items():
        if record.status != READY:
            continue
        if config.policy == "strict":
            allowed, since = config.max_staleness, record.head_version
        elif record.recomputed_version is None:
            allowed, since = 1, record.tail_version
        else:
            allowed = None if config.max_staleness is None else max(1, config.max_staleness)
            since = record.head_version
        if allowed is not None and state.version - since > allowed:
            _fail(
                "ready_queue_fresh",
                f"{config.policy}: ready rollout {rollout!r} is {state.version - since} versions old "
                f"(allowed {allowed}) after the purge",
            )


def history_without(events: Iterable[Event], rollout: str) -> list[Event]:
    """The events of a run with every event about ``rollout`` left out."""
    kept: list[Event] = []
    for event in events:
        if getattr(event, "rollout", None) == rollout:
            continue
        if isinstance(event, (Consumed, InterruptedBatch, ResumedBatch)) and rollout in event.rollouts:
            at = event.rollouts.index(rollout)
            rest = event.rollouts[:at] + event.rollouts[at + 1 :]
            if not rest:
                continue
            if isinstance(event, InterruptedBatch):
                event = event._replace(rollouts=rest, tokens=event.tokens[:at] + event.tokens[at + 1 :])
            else:
                event = event._replace(rollouts=rest)
        kept.append(event)
    return kept


def capacity_recovery(events: Sequence[Event], state: State, rollout: str) -> None:
    """After ``rollout`` was filtered or rejected, the capacity (and every counter but
    the one it ended in) equals that of the same history without the rollout."""
    try:
        alone = reducer.fold(history_without(events, rollout))
    except IllegalTransition as err:
        _fail("capacity_recovery", f"the history without {rollout!r} is refused: {err}")
    if reducer.capacity(alone) != reducer.capacity(state):
        _fail(
            "capacity_recovery",
            f"capacity is {reducer.capacity(state)} after {rollout!r} finished; without it, {reducer.capacity(alone)}",
        )
    differ = [
        STATUS_NAMES[s]
        for s in range(len(STATUS_NAMES))
        if state.counts[s] != alone.counts[s] and s not in (FILTERED, REJECTED)
    ]
    if differ or abs(sum(state.counts) - sum(alone.counts)) != 1:
        _fail(
            "capacity_recovery",
            f"counters {dict(zip(STATUS_NAMES, state.counts))} vs {dict(zip(STATUS_NAMES, alone.counts))} "
            f"without {rollout!r}",
        )


def replay_equals_live(events: Iterable[Event], live: State) -> State:
    """Folding the run's events again gives exactly the live state; returns it."""
    replayed = reducer.fold(events)
    if replayed != live:
        _fail("replay_equals_live", f"replay gives {_summary(replayed)}, live is {_summary(live)}")
    return replayed


def _summary(state: State) -> str:
    return (
        f"version {state.version}, paused {state.paused}, events {state.events}, "
        f"counts {dict(zip(STATUS_NAMES, state.counts))}, {len(state.rollouts)} live"
    )


def _snapshot(state: State) -> tuple[object, ...]:
    """Every field of ``state`` as plain values, for comparing before and after a call."""
    return (state.config, state.version, state.paused, dict(state.rollouts.items()), tuple(state.counts), state.events, state.checkpoint)


def apply_is_pure(state: State, event: Event) -> State:
    """``apply`` leaves its inputs as they were and gives the same result twice;
    returns the new state (``IllegalTransition`` propagates, after the same check)."""
    state_before, event_before = _snapshot(state), tuple(event)
    try:
        first = reducer.apply(state, event)
    finally:
        if _snapshot(state) != state_before or tuple(event) != event_before:
            _fail("apply_is_pure", f"apply changed its input while folding {event!r}")
    second = reducer.apply(state, event)
    if first != second:
        _fail("apply_is_pure", f"apply gave two different states for {event!r}")
    return first


def json_round_trip(event: Event) -> None:
    """``from_json(json.loads(json.dumps(to_json(event))))`` is ``event`` again."""
    back = from_json(json.loads(json.dumps(to_json(event))))
    if back != event:
        _fail("json_round_trip", f"{event!r} came back as {back!r}")
