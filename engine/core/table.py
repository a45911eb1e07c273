"""The lifecycle on one screen: the transition table and every guard beside it.

``TRANSITIONS`` says, for each event about a rollout, the statuses it may start
from and the status it leads to.  ``GUARDS`` holds every other rule, per event
type: the ledger guards, checked first (the run has started, the version
increases, ...), and the rollout guard, checked once the table allows the move
(versions within the rollout's window, capacity, retry ids, ...).  An event that
breaks a rule raises :class:`IllegalTransition`; the reducer
(:mod:`engine.core.reducer`) checks a whole event here before it changes
anything, and its steps only apply moves.  The reducer reads both tables once,
when it is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from engine.core.config import Config
from engine.core.events import (
    Checkpoint,
    Consumed,
    Enqueued,
    Event,
    InterruptedBatch,
    Paused,
    ResumedBatch,
    RunStarted,
    Submitted,
    Unpaused,
    Version,
)
from engine.core.state import (
    CONSUMED,
    FILTERED,
    INTERRUPTED,
    NEW,
    PENDING,
    READY,
    REJECTED,
    RUNNING,
    Record,
    RunView,
    capacity,
    status_name,
)

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

# --- the guards ---------------------------------------------------------------------
# Each returns why the event is refused, or None when its rule holds.  A ledger guard
# sees the ledger (``run``: a State, or the reducer's working copy) and the event.  A
# rollout guard also sees the rollout's record (for ``enqueued``, the pseudo-record of
# an unknown id, status NEW) and the ``version`` and ``tokens`` the event gives that
# rollout (a batch event gives each rollout it names its own).

#: A ledger guard: ``(run, event) -> reason | None`` (each takes the events of its rows).
LedgerGuard = Callable[..., "str | None"]
#: A rollout guard: ``(run, event, record, version, tokens) -> reason | None``.
RolloutGuard = Callable[..., "str | None"]


def first_start(run: RunView, event: RunStarted) -> str | None:
    return "the run has already started" if run.config is not None else None


def config_is_a_config(run: RunView, event: RunStarted) -> str | None:
    return None if isinstance(event.config, Config) else f"config must be a Config, got {event.config!r}"


def started(run: RunView, event: Event) -> str | None:
    return None if run.config is not None else "the run has not started (no run_started event yet)"


def unpause_only_when_paused(run: RunView, event: Unpaused) -> str | None:
    return None if run.paused else "generation is not paused"


def not_paused_yet(run: RunView, event: Paused) -> str | None:
    return "generation is already paused" if run.paused else None


def version_increases(run: RunView, event: Version) -> str | None:
    return None if event.version > run.version else f"version must increase: {event.version} after {run.version}"


def checkpoint_not_ahead(run: RunView, event: Checkpoint) -> str | None:
    if event.version < 0:
        return f"checkpoint version {event.version} is negative"
    if event.version <= run.version:
        return None
    return f"checkpoint version {event.version} is ahead of the current version {run.version}"


_BATCH_NAMES = {"interrupted_batch": "batch interruption", "resumed_batch": "batch resumption", "consumed": "consumed batch"}


def names_each_once(run: RunView, event: InterruptedBatch | ResumedBatch | Consumed) -> str | None:
    if not event.rollouts:
        return f"a {_BATCH_NAMES[event.type]} must name at least one rollout"
    return f"a {_BATCH_NAMES[event.type]} names a rollout twice" if len(set(event.rollouts)) != len(event.rollouts) else None


def one_count_per_rollout(run: RunView, event: InterruptedBatch) -> str | None:
    rollouts, tokens = event.rollouts, event.tokens
    return None if len(tokens) == len(rollouts) else f"{len(rollouts)} rollouts but {len(tokens)} token counts"


def retry_ids(run: RunView, event: Enqueued, record: Record, version: int, tokens: int) -> str | None:
    """Ids ending in ``#<n>`` (n >= 2) are reserved for retries; attempt n is ``<root>#<n>``."""
    rollout, attempt = event.rollout, event.attempt
    if attempt == 1:
        if "#" not in rollout:
            return None
        _, _, number = rollout.rpartition("#")
        return "ids ending in '#<n>' (n >= 2) are reserved for retries" if number.isdigit() and int(number) >= 2 else None
    if attempt < 1:
        return f"attempt must be at least 1, got {attempt}"
    return None if rollout.endswith(f"#{attempt}") else f"attempt {attempt} must be named '<root>#{attempt}'"


def may_start(run: RunView, event: Submitted, record: Record, version: int, tokens: int) -> str | None:
    if run.paused:
        return "generation is paused"
    if not 0 <= version <= run.version:
        return f"version {version} is not between 0 and the current version {run.version}"
    return None if capacity(run) > 0 else "no capacity (the capacity rule allows no more rollouts now)"


def _window(word: str, since: str) -> RolloutGuard:
    """A version in [the rollout's ``tail_version``, the current version], then tokens >= 0."""

    def guard(run: RunView, event: Event, record: Record, version: int, tokens: int) -> str | None:
        tail, current = record[4], run.version
        if not tail <= version <= current:
            return f"{word} version {version} must be between the rollout's {since} {tail} and the current version {current}"
        return None if tokens >= 0 else f"tokens must not be negative, got {tokens}"

    guard.__name__ = guard.__qualname__ = f"{word}_in_window"
    return guard


segment_in_window = _window("segment", "last version")
resume_in_window = _window("resume", "last version")
recomputed_in_window = _window("recomputed", "version")


class Guards(NamedTuple):
    """The rules of one event type besides the table (see :data:`GUARDS`)."""

    ledger: tuple[LedgerGuard, ...] = ()  # before the table; a refusal names the ledger
    rollout: RolloutGuard | None = None  # after the table; a refusal names the rollout and its status


GUARDS: dict[str, Guards] = {
    # event               ledger guards, in order                         rollout guard
    "run_started":        Guards((first_start, config_is_a_config)),
    "enqueued":           Guards((started,),                               retry_ids),
    "submitted":          Guards((started,),                               may_start),
    "segment":            Guards((),                                       segment_in_window),
    "interrupted":        Guards(),
    "resumed":            Guards((started,),                               resume_in_window),
    "interrupted_batch":  Guards((names_each_once, one_count_per_rollout), segment_in_window),
    "resumed_batch":      Guards((names_each_once,),                       resume_in_window),
    "accepted":           Guards(),
    "rejected":           Guards(),
    "filtered":           Guards(),
    "recomputed":         Guards((),                                       recomputed_in_window),
    "consumed":           Guards((names_each_once,)),
    "version":            Guards((started, version_increases)),
    "paused":             Guards((started, not_paused_yet)),
    "unpaused":           Guards((started, unpause_only_when_paused)),
    "checkpoint":         Guards((started, checkpoint_not_ahead)),
    "stage":              Guards(),  # workflow progress: counted, no rule
}  # fmt: skip


class IllegalTransition(Exception):
    """An event the lifecycle does not allow; names the rollout, its status and the event."""

    def __init__(self, event: Event, reason: str, rollout: str | None = None, status: str | None = None) -> None:
        self.event = event
        self.rollout = rollout
        self.status = status
        self.reason = reason
        where = f"rollout {rollout!r} ({status})" if rollout is not None else "ledger"
        super().__init__(f"illegal {event.type!r} for {where}: {reason}")


def refusal(event: Event, rollout: str, status: int) -> IllegalTransition:
    """The refusal of a move the table does not have: ``event`` for ``rollout`` in ``status``."""
    if status == NEW:
        reason = "unknown rollout (never enqueued, or already finished)"
    elif event.type == "enqueued":
        reason = "duplicate rollout id"
    else:
        reason = "allowed only from " + ", ".join(status_name(s) for s in TRANSITIONS[event.type])
    return IllegalTransition(event, reason, rollout, status_name(status))

