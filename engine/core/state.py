"""What the ledger knows at one moment: statuses, a rollout's record, the immutable
:class:`State` (with its ready queue, :mod:`engine.core.ready`) and the capacity rule.

Nothing here changes a state: :mod:`engine.core.table` says which moves are legal,
:mod:`engine.core.reducer` makes them.  The ready queue lives in the state (kept by
the reducer, persistent like the rest) so that a policy finds the oldest ready
rollouts without scanning every live one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple, Protocol

from engine.core.config import Config
from engine.core.events import Checkpoint
from engine.core.overlay import Overlay
from engine.core.ready import EMPTY_QUEUE, ReadyQueue

# Rollout statuses.  NEW is the pseudo-status of an id the ledger has not seen;
# the finished statuses (consumed, rejected, filtered) are numbered last.
NEW, PENDING, RUNNING, INTERRUPTED, READY, CONSUMED, REJECTED, FILTERED = -1, 0, 1, 2, 3, 4, 5, 6
STATUS_NAMES = ("pending", "running", "interrupted", "ready", "consumed", "rejected", "filtered")
LIVE = frozenset({PENDING, RUNNING, INTERRUPTED, READY})
TERMINAL = frozenset({CONSUMED, REJECTED, FILTERED})
IN_FLIGHT = frozenset({RUNNING, INTERRUPTED})  # holding a generation slot


def status_name(status: int) -> str:
    """``'running'`` for ``RUNNING``; ``'unknown'`` for an id never seen."""
    return "unknown" if status == NEW else STATUS_NAMES[status]


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


#: A rollout's record as a plain tuple (the fields of :class:`Rollout`, in order): what
#: the reducer builds while it folds; a :class:`Rollout` is one too.
Record = tuple[int, str, int, int, int, int | None, int, int]


class State(NamedTuple):
    """An immutable snapshot of the ledger.  ``counts`` is indexed by status;
    ``queue`` holds the ready rollouts in batch order."""

    config: Config | None
    version: int
    paused: bool
    rollouts: Overlay[str, Rollout]  # rollout id -> Rollout, live rollouts only
    counts: tuple[int, ...]
    events: int
    checkpoint: Checkpoint | None
    queue: ReadyQueue = EMPTY_QUEUE
    #: (head version, how many) of the rollouts in flight (running or interrupted),
    #: ascending: what ``in_order`` batches wait for; counted only in a run whose config
    #: has ``in_order`` (empty in the others)
    in_flight: tuple[tuple[int, int], ...] = ()

    @property
    def pending(self) -> int:
        return self.counts[PENDING]

    @property
    def running(self) -> int:
        """In flight: running or interrupted (both hold a generation slot)."""
        return self.counts[RUNNING] + self.counts[INTERRUPTED]

    @property
    def oldest_in_flight(self) -> int | None:
        """The lowest head version of a rollout in flight; ``None`` when none is (and in a
        run whose batches are not in order, which does not count them)."""
        return self.in_flight[0][0] if self.in_flight else None

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


#: The record the reducer reads for an id that is not live (status NEW, so the table
#: refuses every event about it but ``enqueued``), and the marker of a removed rollout
#: in a state's map of live rollouts.
ABSENT = Rollout(NEW, "", 0, -1, -1, None, 0, -1)


def rollout_map(records: Mapping[str, Rollout] | Iterable[tuple[str, Rollout]] = ()) -> Overlay[str, Rollout]:
    """A state's map of live rollouts holding ``records`` (for a state made without the reducer)."""
    return Overlay(records, gone=ABSENT)


EMPTY = State(None, 0, False, rollout_map(), (0,) * len(STATUS_NAMES), 0, None, EMPTY_QUEUE, ())


def ready_rollouts(state: State) -> Iterator[tuple[str, Rollout]]:
    """The ready rollouts with their records, oldest first (lowest start version, then
    earliest accepted), lazily: taking the first ``k`` costs O(k log n)."""
    get = state.rollouts.__getitem__
    for rollout in state.queue.rollouts():
        yield rollout, get(rollout)


def queue_of(rollouts: Iterable[tuple[str, Rollout]]) -> ReadyQueue:
    """The ready queue of these live records, built from scratch (for a state made
    without the reducer, and to check the reducer's queue against)."""
    ready = sorted((record.head_version, record.order, rollout) for rollout, record in rollouts if record.status == READY)
    return EMPTY_QUEUE.edited({}, {rollout: head for head, _, rollout in ready})


def in_flight_of(rollouts: Iterable[tuple[str, Rollout]]) -> tuple[tuple[int, int], ...]:
    """:attr:`State.in_flight` of these live records in a run whose batches are in order,
    counted from scratch (for a state made without the reducer, and to check the
    reducer's count against)."""
    heads: dict[int, int] = {}
    for _, record in rollouts:
        if record.status in IN_FLIGHT:
            heads[record.head_version] = heads.get(record.head_version, 0) + 1
    return tuple(sorted(heads.items()))


class RunView(Protocol):
    """The parts of a ledger the capacity rule and the guards read: a :class:`State`,
    or the reducer's working copy while it folds."""

    @property
    def config(self) -> Config | None: ...

    @property
    def version(self) -> int: ...

    @property
    def paused(self) -> bool: ...

    @property
    def counts(self) -> tuple[int, ...] | list[int]: ...


def capacity(state: RunView) -> int:
    """How many more rollouts may start now (DESIGN.md's rule; never negative).

    ``min(max_concurrent - running, (max_staleness + version + 1) * batch_size -
    (accepted + running))`` with per-rank limits, 0 while paused or before the run.
    """
    config = state.config
    if config is None or state.paused:
        return 0
    counts = state.counts
    running = counts[RUNNING] + counts[INTERRUPTED]
    dp_size = config.dp_size
    room = (config.max_concurrent // dp_size or 1) - running  # max(1, x // n): x // n is never negative
    if config.max_staleness is not None:
        accepted = counts[READY] + counts[CONSUMED]
        staleness_room = (config.max_staleness + state.version + 1) * (config.batch_size // dp_size or 1) - (accepted + running)
        if staleness_room < room:  # noqa: PLR1730  (see below)
            room = staleness_room
    return room if room > 0 else 0  # noqa: FURB136  (min and max calls cost more on this hot path)
