"""The ledger shell, the one writer of a run: it folds events through the pure reducer,
writes them to the durable log and logs them.

The executor and the simulator drive runs through it, so both share one reducer, one
capacity rule, one set of policies and one codec.  Its verbs (``complete``, ``fail``,
``prepare_batch``, ``begin_update``, ``advance``, ``unpause``, ``resume`` ...) append
what :mod:`engine.core.protocol` says a step is made of; ``append`` takes any events,
all or nothing.  A shell with a clock of its own (the simulator) passes ``t`` to the
verbs; ``clock`` stamps the events of a shell that has none.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Mapping

from engine.core import protocol
from engine.core.config import Config
from engine.core.events import (
    Consumed,
    Enqueued,
    Event,
    Segment,
    stamped,
    to_json,
)
from engine.core.reducer import (
    EMPTY,
    Folder,
    IllegalTransition,
    Rollout,
    State,
    fold,
)
from engine.log import EventLog
from engine.log.values import check_events
from engine.logconfig import get_logger

#: A debug-mode check run after every event (e.g. ``properties.invariants.check_state``).
Check = Callable[[State, Event], None]


_FILTER_BITS = 1 << 23  # 1 MiB
_FILTER_MASK = _FILTER_BITS - 1


class _IdFilter:
    """A fixed-size Bloom filter of rollout ids (1 MiB, two bits per id).

    ``rollout in filter`` is false only for an id never added, so a miss proves that an
    id is unused without asking the log; a hit may be false (about one in 2,000 after
    100,000 ids, one in 20 after a million: the memory stays flat, only the share of
    ids checked against the log grows) and is settled by the log.  The bits come from
    Python's ``hash`` of the id, which is salted per process: a filter lives in memory
    only and is rebuilt from the log by each process that opens it.
    """

    __slots__ = ("_bits",)

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._bits = bytearray(_FILTER_BITS >> 3)
        for rollout in ids:
            self.add(rollout)

    def add(self, rollout: str) -> bool:
        """Add ``rollout``; returns whether it may have been added before (``False``: never)."""
        h = hash(rollout)
        a, b = h & _FILTER_MASK, (h >> 32) & _FILTER_MASK
        bits = self._bits
        seen = bits[a >> 3] >> (a & 7) & 1 and bits[b >> 3] >> (b & 7) & 1
        bits[a >> 3] |= 1 << (a & 7)
        bits[b >> 3] |= 1 << (b & 7)
        return bool(seen)

    def __contains__(self, rollout: object) -> bool:
        h = hash(rollout)
        a, b = h & _FILTER_MASK, (h >> 32) & _FILTER_MASK
        bits = self._bits
        return bool(bits[a >> 3] >> (a & 7) & 1 and bits[b >> 3] >> (b & 7) & 1)


class Ledger:
    """One run's ledger.

    ``path`` names the SQLite log; an existing log is replayed first (its config
    must match ``config`` when both are given).  Events are written in batches of
    ``flush_every``; ``clock``, when given, stamps events that carry no ``t``;
    ``check`` (debug mode) runs after every event and may refuse it by raising.

    The ledger is its log's one writer: it holds the log's lock until :meth:`close`,
    and a second writer of the same log is refused (:class:`~engine.log.LogLocked`,
    naming this process).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        path: str | Path | None = None,
        flush_every: int = 256,
        clock: Callable[[], float] | None = None,
        check: Check | None = None,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be at least 1, got {flush_every}")
        self._log = EventLog(path) if path is not None else None
        self._flush_every = flush_every
        self._clock = clock
        self._check = check
        # Events appended since ``_mark`` (the state they were folded onto): the log's
        # next batch, and the way back when an append is refused halfway (fold them
        # onto the mark again), so an append never takes a snapshot to be atomic.
        self._unwritten: list[Event] = []
        self._unwritten_ids: set[str] | None = None  # ids enqueued since the last flush, gathered when first needed
        self._used_ids: _IdFilter | None = None  # ids the log may hold: built on the first enqueue
        self._logger = get_logger("rollout_ledger.ledger", log=str(path) if path else None)
        self._debug = self._logger.is_enabled_for(logging.DEBUG)  # a bound logger's level is fixed
        try:
            self._open(config, path)
        except BaseException:  # a damaged log or another run's config: let go of the log and its lock
            if self._log is not None:
                self._log.close()
            raise

    def _open(self, config: Config | None, path: str | Path | None) -> None:
        """Replay the log (if any), then start the run with ``config`` or check it against the log's."""
        lock = self._log.lock if self._log is not None else None
        if lock is not None and lock.stale:
            stale = {f"dead_{key}": value for key, value in lock.stale.items()}
            self._logger.warning("took over the lock of a writer that died", lock=str(lock.path), **stale)
        replayed = fold(self._log.events()) if self._log is not None and self._log.last_seq else EMPTY
        self._mark = replayed
        self._folder = Folder(replayed)
        if config is not None:
            if replayed.config is None:
                self.start(config)
            elif replayed.config != config:
                raise ValueError(
                    f"the log at {path} was started with {replayed.config}, not {config}; "
                    "resume it without a config or start a new log"
                )

    @classmethod
    def resume(cls, path: str | Path, *, requeue: bool = False, **options: object) -> "Ledger":
        """Reopen a run's log after a crash: replay it, then close every rollout that was
        in flight as ``rejected(reason=lost)`` (and, with ``requeue``, enqueue its
        prompt again as a new attempt), so that nothing is lost or counted twice
        (:func:`engine.core.protocol.recover`)."""
        ledger = cls(path=path, **options)  # type: ignore[arg-type]
        try:
            if ledger.config is None:
                raise ValueError(f"the log at {path} has no run to resume (no run_started event)")
            ledger.append(*protocol.recover(ledger.state, requeue))
            ledger.flush()
        except BaseException:
            ledger._close_log()
            raise
        return ledger

    @property
    def state(self) -> State:
        """The current (immutable) state."""
        return self._folder.state

    # The state's scalars and one rollout's record, read without a snapshot (the hot
    # paths of the executor and the simulator read these between events; :attr:`state`
    # for the rest).
    @property
    def capacity(self) -> int:
        """How many more rollouts may start now."""
        return self._folder.capacity

    @property
    def config(self) -> Config | None:
        """The run's config (``state.config``)."""
        return self._folder.config

    @property
    def version(self) -> int:
        """The current policy version (``state.version``)."""
        return self._folder.version

    @property
    def paused(self) -> bool:
        """Whether generation is paused (``state.paused``)."""
        return self._folder.paused

    def count(self, status: int) -> int:
        """How many rollouts have ``status`` (``state.counts[status]``, e.g. ``count(PENDING)``)."""
        return self._folder.count(status)

    def record(self, rollout: str) -> Rollout | None:
        """A live rollout's record (``state.rollouts.get(rollout)``)."""
        return self._folder.record(rollout)

    # -- appending -----------------------------------------------------------------
    def append(self, *events: Event) -> None:
        """Fold ``events`` and queue them for the log, all or nothing (read :attr:`state`
        afterwards; taking a snapshot costs time, so ``append`` does not).

        An illegal event raises :class:`IllegalTransition` (logged as a warning), and an
        event holding a value the log cannot store faithfully (an integer beyond 64
        bits, text that is not UTF-8, a NaN time ...) raises
        :class:`~engine.log.values.InvalidValue` naming the event and the field; either
        way none of ``events`` is folded or written."""
        self._append(events)

    def _append(self, events: tuple[Event, ...]) -> None:
        """:meth:`append` of a tuple (the verbs' path: no arguments to pack again)."""
        if self._clock is not None:
            now = self._clock()
            events = tuple([e if e[-1] is not None else stamped(e, now) for e in events])  # ``t`` is every event's last field
        check_events(events)  # before the fold: a value the log cannot hold changes nothing
        log = self._log
        if log is not None and Enqueued in map(type, events):
            self._refuse_reused_ids(events)
        folder, check = self._folder, self._check
        try:
            if check is None:
                folder.extend(events)
            else:
                for event in events:
                    folder.apply(event)
                    check(folder.state, event)
        except IllegalTransition as err:
            if len(events) > 1 or check is not None:
                self._roll_back()
            self._logger.warning("refused", ledger_event=to_json(err.event), reason=err.reason, rollout=err.rollout, status=err.status)
            raise
        except BaseException:
            self._roll_back()
            raise
        if self._debug:
            for event in events:
                self._logger.debug("applied", type=event.type, rollout=getattr(event, "rollout", None))
        unwritten = self._unwritten
        unwritten.extend(events)
        if self._unwritten_ids is not None:
            self._unwritten_ids.update([event.rollout for event in events if type(event) is Enqueued])
        if len(unwritten) >= self._flush_every:
            self.flush()

    def _roll_back(self) -> None:
        """Undo a refused append: fold the events appended since the mark onto it again
        (each step checks before it changes anything, so only an append of several
        events, or one a check refused, needs this)."""
        self._folder = Folder(fold(self._unwritten, self._mark))

    def _add(self, events: tuple[Event, ...], t: float | None) -> tuple[Event, ...]:
        """Append ``events``, stamped with ``t`` when given; returns them as appended."""
        if t is not None:  # ``t`` is every event's last field (engine.core.events.stamped, inlined)
            new, stamped_events = tuple.__new__, []
            for event in events:
                stamped_events.append(new(type(event), (*event[:-1], t)))
            events = tuple(stamped_events)
        if events:
            self._append(events)
        return events

    def _refuse_reused_ids(self, events: tuple[Event, ...]) -> None:
        """The folded state forgets finished rollouts (its memory stays flat); the log
        does not, so a ledger with a log refuses to enqueue an id it has seen before.

        :attr:`_used_ids` holds every id of the log when the ledger first enqueues and
        every id it was asked to enqueue since (the ledger is its log's only writer):
        an id it has not seen was never used, and the log is not asked about it; the
        others are looked up in the unwritten batch (its ids gathered at the first such
        lookup since the last flush, then kept up to date) and the log.  (An id of a
        refused append stays in the filter: it only costs that id a lookup later.)"""
        log = self._log
        if log is None:  # without a log the folded state is the whole record: its own check suffices
            return
        if self._used_ids is None:
            self._used_ids = _IdFilter(log.enqueued_ids())
        seen, live = self._used_ids.add, self._folder.is_live
        maybe: list[tuple[int, Enqueued]] = []
        for index, event in enumerate(events):  # a loop, not a comprehension: the common case finds nothing
            if type(event) is Enqueued and seen(event.rollout) and not live(event.rollout):
                maybe.append((index, event))
        if not maybe:
            return
        if self._unwritten_ids is None:
            self._unwritten_ids = {event.rollout for event in self._unwritten if type(event) is Enqueued}
        unwritten = self._unwritten_ids
        logged = log.enqueued_among([e.rollout for _, e in maybe if e.rollout not in unwritten])
        for index, event in maybe:
            earlier = any(type(e) is Enqueued and e.rollout == event.rollout for e in events[:index])  # reused within this append
            if event.rollout in unwritten or event.rollout in logged or earlier:
                reason = "duplicate rollout id (a finished rollout already used it)"
                self._logger.warning("refused", ledger_event=to_json(event), reason=reason, rollout=event.rollout)
                raise IllegalTransition(event, reason, event.rollout, "finished")

    # -- the protocol's steps ----------------------------------------------------------
    def start(self, config: Config, *, t: float | None = None) -> None:
        """Start the run with ``config`` (``run_started``; a ledger given a config at
        construction has done this already)."""
        self._append(protocol.start(config, t))

    def enqueue(self, *keys: str, t: float | None = None) -> tuple[Event, ...]:
        """First attempts at the prompts ``keys``, named by the keys (:func:`~engine.core.protocol.enqueue`)."""
        events = protocol.enqueue(keys, t)
        self._append(events)
        return events

    def submit(self, rollouts: Iterable[str], *, t: float | None = None) -> tuple[Event, ...]:
        """Start pending ``rollouts`` under the current version."""
        events = protocol.submit(rollouts, self._folder.version, t)
        if events:
            self._append(events)
        return events

    def admit(self, *keys: str, t: float | None = None) -> tuple[Event, ...]:
        """First attempts at the prompts ``keys``, started at once under the current
        version (:func:`~engine.core.protocol.admit`)."""
        events = protocol.admit(keys, self._folder.version, t)
        self._append(events)
        return events

    def complete(
        self, rollout: str, last_segment: Segment | None = None, *, tokens: int | None = None, t: float | None = None
    ) -> tuple[Event, ...]:
        """A rollout finished and its workflow accepted it: the policy accepts or
        filters it (maybe requeueing its prompt).  ``tokens``, when given, closes the
        segment it was generating (under its tail version) in the same append;
        ``last_segment``, when given, is its final segment, appended first (the policy
        measures its version).  Returns the policy's events, which are appended."""
        if last_segment is not None:
            self.append(last_segment)
        folder = self._folder
        events = self._add(protocol.complete(folder.config, folder.version, rollout, folder.record(rollout), tokens), t)
        return events if tokens is None else events[1:]

    def segments(self, rollout: str, tokens_by_version: Mapping[int, int], *, t: float | None = None) -> tuple[Event, ...]:
        """The running ``rollout`` generated tokens under the versions given (version ->
        tokens): one segment each, oldest first (:func:`~engine.core.protocol.segments`),
        as a multi-turn episode records each turn.  Returns the events."""
        return self._add(protocol.segments(rollout, tokens_by_version), t)

    def fail(self, rollout: str, reason: str, *, max_retries: int, t: float | None = None) -> tuple[Event, ...]:
        """A running or interrupted rollout ended without a result: rejected with
        ``reason``, then a new attempt at its prompt while its attempt number is at most
        ``max_retries`` (:func:`~engine.core.protocol.fail_within`).  Returns the events."""
        record = self._folder.record(rollout)
        if record is None:
            raise KeyError(f"rollout {rollout!r} is not live in this ledger")
        return self._add(protocol.fail_within(rollout, record, reason, max_retries), t)

    def prepare_batch(self, size: int, *, t: float | None = None) -> tuple[str, ...] | None:
        """Consume ``size`` ready rollouts, oldest first, if that many are usable now."""
        events = self._add(protocol.consume(self.state, size), t)
        return next((event.rollouts for event in events if isinstance(event, Consumed)), None)

    def begin_update(
        self, generating: Mapping[str, int] | None = None, interrupt: str = "partial", *, t: float | None = None
    ) -> tuple[Event, ...]:
        """The first events of a weight update (:func:`~engine.core.protocol.begin_update`):
        paused, then the rollouts still ``generating`` interrupted (or restarted).  Returns them."""
        return self._add(protocol.begin_update(self.state, generating, interrupt), t)

    def recompute(self, recompute: Callable[[tuple[str, ...]], None] | None = None, *, t: float | None = None) -> tuple[Event, ...]:
        """Under ``segment_wise``, before a version bump: call ``recompute(rollout_ids)`` for
        the ready rollouts the policy wants recomputed, then append their ``recomputed``
        events.  Returns them.  Without a ``recompute`` nothing was recomputed, so
        nothing is logged as if it had been (the update recomputes those tokens itself)."""
        requests = protocol.recompute_requests(self.state)
        if not requests or recompute is None:
            return ()
        recompute(tuple(event.rollout for event in requests))
        return self._add(requests, t)

    def advance(self, interrupted: Iterable[str] = (), *, t: float | None = None) -> tuple[Event, ...]:
        """The version bump, the policy's purge and the ``interrupted`` rollouts resumed
        under the new version (:func:`~engine.core.protocol.advance`).  Returns the events."""
        return self._add(protocol.advance(self.state, interrupted), t)

    def finish_update(self, interrupted: Iterable[str] = (), *, t: float | None = None) -> tuple[Event, ...]:
        """:meth:`advance`, then :meth:`unpause`, in one append."""
        return self._add(protocol.finish_update(self.state, interrupted), t)

    def end_pause(self, interrupted: Iterable[str] = (), *, t: float | None = None) -> tuple[Event, ...]:
        """End a pause without a version bump: the ``interrupted`` rollouts continue under
        the current version, then the un-pause (:func:`~engine.core.protocol.end_pause`)."""
        return self._add(protocol.end_pause(self.state, interrupted), t)

    def advance_version(self, recompute: Callable[[tuple[str, ...]], None] | None = None) -> tuple[Event, ...]:
        """Move to the next policy version with nothing in flight to interrupt:
        :meth:`recompute`, then :meth:`advance`.  Returns the events appended."""
        return (*self.recompute(recompute), *self.advance())

    def pause(self, *, t: float | None = None) -> None:
        """Stop admissions (capacity 0) until :meth:`unpause`: a weight update's first
        event, with nothing to interrupt."""
        self.begin_update(None, "none", t=t)

    def unpause(self, *, t: float | None = None) -> None:
        """Admit again after :meth:`pause` (:func:`~engine.core.protocol.unpause`)."""
        self._add(protocol.unpause(self.state), t)

    def resume_generation(self) -> None:
        """:meth:`unpause` (the older name)."""
        self.unpause()

    # -- the log ---------------------------------------------------------------------
    def flush(self) -> None:
        """Write the queued events to the log in one transaction."""
        if self._unwritten:
            if self._log is not None:
                self._log.append(self._unwritten, checked=True)  # checked by :meth:`_append`
            self._unwritten = []
            self._unwritten_ids = None
            self._mark = self._folder.state

    def close(self) -> None:
        """Flush and close the log (which releases its writer lock)."""
        try:
            self.flush()
        finally:
            self._close_log()

    def _close_log(self) -> None:
        """Close the log without writing what is queued (what a crash would leave)."""
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
