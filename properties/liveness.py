"""Liveness: from any reachable state, if generation keeps succeeding, a full batch
forms within a bounded number of events (no deadlock), for every policy.

:func:`form_batch` plays a shell whose generation never fails: it finishes a
training step in flight (recompute, version bump, purge, like
``Ledger.advance_version``), resumes generation, resumes interrupted rollouts,
completes running ones through the policy, submits pending ones while capacity
allows and enqueues new prompts while the policy lets it, until
``select_batch`` yields a full batch.  Every event goes through the real reducer
and the real policies.
"""

from __future__ import annotations

from engine.core import policies, reducer
from engine.core.events import Consumed, Enqueued, Event, Resumed, Submitted, Unpaused, Version
from engine.core.reducer import INTERRUPTED, PENDING, RUNNING, IllegalTransition, State
from properties.invariants import InvariantViolation


def liveness_bound(state: State) -> int:
    """Events enough to form a batch from ``state``: each live rollout needs at most a
    recompute, a purge and requeue, a resume, a completion and requeue, and a fresh
    attempt (submit, complete); each missing batch slot an enqueue, a submit and a
    completion; plus the version bump, an unpause and the batch itself."""
    config = state.config
    if config is None:
        raise ValueError("the run has not started: the state has no config")
    return 8 * len(state.rollouts) + 3 * config.rank_batch_size + 4


def _next_events(state: State, prompt_id: str) -> tuple[Event, ...] | None:
    """The next step of a shell whose generation always succeeds; ``None`` when stuck."""
    running = interrupted = pending = None
    for rollout, record in sorted(state.rollouts.items(), key=lambda item: item[1].order):
        if record.status == RUNNING and running is None:
            running = rollout
        elif record.status == INTERRUPTED and interrupted is None:
            interrupted = rollout
        elif record.status == PENDING and pending is None:
            pending = rollout
    if state.paused:
        return (Unpaused(),)
    if interrupted is not None:
        return (Resumed(interrupted, state.version),)
    if running is not None:
        return policies.on_complete(state, running)
    capacity = reducer.capacity(state)
    if pending is not None and capacity > 0:
        return (Submitted(pending, state.version),)
    room = policies.enqueue_room(state)
    if pending is None and capacity > 0 and (room is None or room > 0):
        return (Enqueued(prompt_id),)
    return None


def form_batch(state: State, training: bool = False, bound: int | None = None) -> tuple[State, int]:
    """Drive ``state`` until a full batch is consumed; returns the state after it and
    the number of events it took.  ``training`` says a consumed batch is still being
    trained on (its version bump is due first).  Raises :class:`InvariantViolation`
    (``liveness``) on a deadlock or when it takes more than ``bound`` events
    (:func:`liveness_bound` by default)."""
    config = state.config
    if config is None:
        raise ValueError("the run has not started: the state has no config")
    limit = liveness_bound(state) if bound is None else bound
    batch_size = config.rank_batch_size
    steps = 0

    def emit(events: tuple[Event, ...]) -> None:
        nonlocal state, steps
        try:
            state = reducer.fold(events, state)
        except IllegalTransition as err:
            raise InvariantViolation("liveness", f"the reducer refused a step towards a batch: {err}") from err
        steps += len(events)

    if training:
        emit((*policies.recompute_requests(state), Version(state.version + 1)))
        emit(policies.on_version(state))
    fresh = 0
    while True:
        batch = policies.select_batch(state, batch_size)
        if len(batch) == batch_size:
            emit((Consumed(batch),))
            break
        if steps > limit:
            raise InvariantViolation(
                "liveness", f"no full batch of {batch_size} after {steps} events (bound {limit}); {_describe(state)}"
            )
        events = _next_events(state, f"liveness-{fresh}")
        if events is None:
            raise InvariantViolation("liveness", f"deadlock after {steps} events with no full batch: {_describe(state)}")
        fresh += any(isinstance(event, Enqueued) for event in events)
        emit(events)
    if steps > limit:
        raise InvariantViolation("liveness", f"the batch took {steps} events, more than the bound {limit}")
    return state, steps


def _describe(state: State) -> str:
    return (
        f"version {state.version}, paused {state.paused}, pending {state.pending}, running {state.running}, "
        f"ready {state.ready}, consumed {state.consumed}, capacity {reducer.capacity(state)}"
    )
