"""Staleness policies: pure functions from a ledger state to the events to emit.

Shells (the executor, the simulator) ask these functions what to do and append
what they return; nothing here changes a state.

- ``admission`` (AReaL): the bound applies when a rollout starts, through the
  capacity rule only; a rollout is never filtered afterwards.
- ``strict``: admission, plus a rollout whose ``version - head_version >
  max_staleness`` is filtered at completion and from the ready queue whenever the
  version moves.
- ``segment_wise``: staleness is measured from the newest (tail) segment and may be
  at most 1, until the rollout's proximal log-probs are recomputed; after that it is
  measured from the oldest (head) segment and may be ``max(1, max_staleness)``.
  Before each weight update, ready rollouts of version ``v - 1`` are recomputed
  (so they survive the bump); the ready queue is purged when the version moves.

``on_stale = requeue`` turns a filtered rollout's prompt into a new attempt (:func:`retry`).

Ready rollouts are read from the state's ready queue (oldest first), never by
scanning every live rollout: a batch of ``k`` costs O(k log n).  With ``in_order``
(:class:`~engine.core.config.Config`) a batch stops at the first ready rollout that
started under a newer version than the oldest rollout in flight (the state counts
those by head version).
"""

from __future__ import annotations

from itertools import islice, takewhile

from engine.core.config import Config
from engine.core.events import Accepted, Enqueued, Event, Filtered, Recomputed
from engine.core.state import Rollout, State, ready_rollouts


def _config(state: State) -> Config:
    return _started(state.config)


def _started(config: Config | None) -> Config:
    if config is None:
        raise ValueError("the run has not started: the state has no config")
    return config


def reference_version(config: Config, record: Rollout) -> int:
    """The version a rollout's staleness is measured from under ``config.policy``."""
    if config.policy == "segment_wise" and record.recomputed_version is None:
        return record.tail_version
    return record.head_version


def allowed_staleness(config: Config, record: Rollout) -> int | None:
    """The largest staleness the policy lets a rollout keep; ``None`` for no bound."""
    if config.policy == "admission":
        return None
    if config.policy == "strict":
        return config.max_staleness
    if record.recomputed_version is None:
        return 1
    return None if config.max_staleness is None else max(1, config.max_staleness)


def staleness(state: State, record: Rollout) -> int:
    """How many versions behind the current one the rollout is, by the policy's measure."""
    return state.version - reference_version(_config(state), record)


def is_stale(state: State, record: Rollout) -> bool:
    """Whether the policy would filter this rollout now."""
    return _is_stale(_config(state), state.version, record)


def _is_stale(config: Config, version: int, record: Rollout) -> bool:
    allowed = allowed_staleness(config, record)
    return allowed is not None and version - reference_version(config, record) > allowed


def retry(rollout: str, record: Rollout) -> Enqueued:
    """A new attempt at ``rollout``'s prompt, named ``<root>#<attempt>`` where ``root``
    is the first attempt's id: attempts of distinct rollouts never share an id, even
    when the rollouts share a prompt.  Ids ending in ``#<n>`` with ``n >= 2`` are
    reserved for these retries."""
    suffix = f"#{record.attempt}"
    root = rollout[: -len(suffix)] if record.attempt > 1 and rollout.endswith(suffix) else rollout
    attempt = record.attempt + 1
    return Enqueued(f"{root}#{attempt}", record.prompt, attempt)


def _filter(config: Config, rollout: str, record: Rollout) -> tuple[Event, ...]:
    events: tuple[Event, ...] = (Filtered(rollout, "stale"),)
    if config.on_stale == "requeue":
        events += (retry(rollout, record),)
    return events


def on_complete(state: State, rollout: str) -> tuple[Event, ...]:
    """A running rollout finished generating and its workflow accepted it: accept it,
    or filter it (and maybe requeue its prompt) if the policy finds it stale."""
    return completion(state.config, state.version, rollout, state.rollouts.get(rollout))


def completion(config: Config | None, version: int, rollout: str, record: Rollout | None) -> tuple[Event, ...]:
    """:func:`on_complete` from the parts of the state it reads: the run's ``config``, the
    current ``version`` and the rollout's ``record`` (``None`` if it is not live), for a
    shell that holds these without a state snapshot."""
    if record is None:
        raise KeyError(f"rollout {rollout!r} is not live in this ledger")
    config = _started(config)
    if _is_stale(config, version, record):
        return _filter(config, rollout, record)
    return (Accepted(rollout),)


def on_version(state: State) -> tuple[Event, ...]:
    """After the version moved: purge the ready rollouts the policy finds stale."""
    config = _config(state)
    if config.policy == "admission":  # no bound after admission (allowed_staleness is None)
        return ()
    version = state.version
    events: list[Event] = []
    for rollout, record in ready_rollouts(state):
        if _is_stale(config, version, record):
            events += _filter(config, rollout, record)
        elif config.policy == "strict":  # measured from the head: every later rollout is fresh too
            break
    return tuple(events)


def recompute_requests(state: State) -> tuple[Recomputed, ...]:
    """Before a weight update (``segment_wise`` only): the ready rollouts whose tail is
    one version behind, to have their proximal log-probs recomputed under the
    current weights.  The shell recomputes, then appends these events."""
    config = _config(state)
    if config.policy != "segment_wise":
        return ()
    return tuple(
        Recomputed(rollout, state.version)
        for rollout, record in ready_rollouts(state)
        if record.recomputed_version is None and record.tail_version == state.version - 1
    )


def select_batch(state: State, size: int) -> tuple[str, ...]:
    """Up to ``size`` ready rollouts, oldest first, that the policy would not filter;
    with ``in_order``, none that started under a newer version than a rollout still in
    flight (the queue is ordered by head version: it stops at the first such one)."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    config, version = _config(state), state.version
    oldest = state.oldest_in_flight if config.in_order else None
    if config.policy == "admission" and oldest is None:  # never stale after admission (allowed_staleness is None)
        return tuple(islice(state.queue.rollouts(), size))
    usable = ready_rollouts(state)
    if oldest is not None:
        usable = takewhile(lambda item: item[1].head_version <= oldest, usable)
    fresh = (rollout for rollout, record in usable if not _is_stale(config, version, record))
    return tuple(islice(fresh, size))


def pending_limit(config: Config) -> int | None:
    """How many rollouts may wait in ``pending``: ``(max_staleness + 1) * batch_size``
    per rank; ``None`` when staleness is unbounded."""
    if config.max_staleness is None:
        return None
    return (config.max_staleness + 1) * config.rank_batch_size


def enqueue_room(state: State) -> int | None:
    """How many more prompts may be enqueued now; ``None`` for no limit."""
    return room_to_enqueue(_config(state), state.pending)


def room_to_enqueue(config: Config, pending: int) -> int | None:
    """:func:`enqueue_room` of a run with ``config`` and ``pending`` rollouts waiting."""
    limit = pending_limit(config)
    return None if limit is None else max(0, limit - pending)
