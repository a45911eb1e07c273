"""The ledger shell: folds events through the pure reducer, writes them to the
durable log and logs them.  The executor and the simulator drive runs through it,
so both share one reducer, one capacity rule and one set of policies.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

from engine.core import policies
from engine.core.config import Config
from engine.core.events import (
    Consumed,
    Enqueued,
    Event,
    Paused,
    Rejected,
    Resumed,
    RunStarted,
    Segment,
    Version,
    stamped,
    to_json,
)
from engine.core.reducer import (
    EMPTY,
    INTERRUPTED,
    RUNNING,
    Folder,
    IllegalTransition,
    Rollout,
    State,
    fold,
)
from engine.log import EventLog
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
    ``flush_every``; ``clock``, when given, stamps events that carry no ``t``.
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
        self._unwritten: list[Event] = []
        self._unwritten_ids: set[str] = set()  # ids enqueued since the last flush
        self._used_ids: _IdFilter | None = None  # ids the log may hold: built on the first enqueue
        self._logger = get_logger("rollout_ledger.ledger", log=str(path) if path else None)
        self._debug = self._logger.is_enabled_for(logging.DEBUG)  # a bound logger's level is fixed
        replayed = fold(self._log.events()) if self._log is not None and self._log.last_seq else EMPTY
        self._folder = Folder(replayed)
        if config is not None:
            if replayed.config is None:
                self.append(RunStarted(config))
            elif replayed.config != config:
                raise ValueError(
                    f"the log at {path} was started with {replayed.config}, not {config}; "
                    "resume it without a config or start a new log"
                )

    @classmethod
    def resume(cls, path: str | Path, *, requeue: bool = False, **options: object) -> "Ledger":
        """Reopen a run's log after a crash: replay it, then close every rollout that was
        in flight as ``rejected(reason=lost)`` (and, with ``requeue``, enqueue its
        prompt again as a new attempt), so that nothing is lost or counted twice."""
        ledger = cls(path=path, **options)  # type: ignore[arg-type]
        if ledger.state.config is None:
            raise ValueError(f"the log at {path} has no run to resume (no run_started event)")
        for rollout, record in sorted(ledger.state.rollouts.items()):
            if record.status in (RUNNING, INTERRUPTED):
                events: tuple[Event, ...] = (Rejected(rollout, "lost"),)
                if requeue:
                    events += (policies.retry(rollout, record),)
                ledger.append(*events)
        ledger.flush()
        return ledger

    @property
    def state(self) -> State:
        """The current (immutable) state."""
        return self._folder.state

    # The state's scalars and one rollout's record, read without a snapshot (the hot
    # paths of the executor read these between events; :attr:`state` for the rest).
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

    def append(self, *events: Event) -> None:
        """Fold ``events`` and queue them for the log, all or nothing (read :attr:`state`
        afterwards; taking a snapshot costs time, so ``append`` does not).

        An illegal event raises :class:`IllegalTransition` (logged as a warning), and
        none of ``events`` is folded or written."""
        if self._clock is not None:
            now = self._clock()
            events = tuple([e if e[-1] is not None else stamped(e, now) for e in events])  # ``t`` is every event's last field
        log = self._log
        enqueued = [e for e in events if type(e) is Enqueued] if log is not None and Enqueued in map(type, events) else None
        if enqueued:
            self._refuse_reused_ids(enqueued)
        folder, check = self._folder, self._check
        before = folder.state if len(events) > 1 or check else None
        try:
            if check is None:
                folder.extend(events)
            else:
                for event in events:
                    folder.apply(event)
                    check(folder.state, event)
        except IllegalTransition as err:
            if before is not None:
                self._folder = Folder(before)
            self._logger.warning("refused", ledger_event=to_json(err.event), reason=err.reason, rollout=err.rollout, status=err.status)
            raise
        except BaseException:
            if before is not None:
                self._folder = Folder(before)
            raise
        if self._debug:
            for event in events:
                self._logger.debug("applied", type=event.type, rollout=getattr(event, "rollout", None))
        if log is not None:
            self._unwritten.extend(events)
            if enqueued:
                self._unwritten_ids.update([event.rollout for event in enqueued])
            if len(self._unwritten) >= self._flush_every:
                self.flush()

    def _refuse_reused_ids(self, enqueued: list[Enqueued]) -> None:
        """The folded state forgets finished rollouts (its memory stays flat); the log
        does not, so a ledger with a log refuses to enqueue an id it has seen before.

        :attr:`_used_ids` holds every id of the log when the ledger first enqueues and
        every id it was asked to enqueue since (the ledger is its log's only writer):
        an id it has not seen was never used, and the log is not asked about it; the
        others are looked up in the unwritten batch and the log.  (An id of a refused
        append stays in the filter: it only costs that id a lookup later.)"""
        if self._used_ids is None:
            self._used_ids = _IdFilter(self._log.enqueued_ids())  # type: ignore[union-attr]
        seen, live = self._used_ids.add, self._folder.is_live
        maybe = [e for e in enqueued if seen(e.rollout) and not live(e.rollout)]
        if not maybe:
            return
        unwritten = self._unwritten_ids
        logged = self._log.enqueued_among([e.rollout for e in maybe if e.rollout not in unwritten])  # type: ignore[union-attr]
        for event in maybe:
            if event.rollout in unwritten or event.rollout in logged:
                reason = "duplicate rollout id (a finished rollout already used it)"
                self._logger.warning("refused", ledger_event=to_json(event), reason=reason, rollout=event.rollout)
                raise IllegalTransition(event, reason, event.rollout, "finished")

    def complete(self, rollout: str, last_segment: Segment | None = None) -> tuple[Event, ...]:
        """A rollout finished and its workflow accepted it: the policy accepts or
        filters it (maybe requeueing its prompt).  ``last_segment``, when given, is the
        rollout's final segment, appended first (the policy measures its version).
        Returns the policy's events, which are appended."""
        if last_segment is not None:
            self.append(last_segment)
        folder = self._folder
        events = policies.completion(folder.config, folder.version, rollout, folder.record(rollout))
        self.append(*events)
        return events

    def prepare_batch(self, size: int) -> tuple[str, ...] | None:
        """Consume ``size`` ready rollouts, oldest first, if that many are usable now."""
        batch = policies.select_batch(self.state, size)
        if len(batch) < size:
            return None
        self.append(Consumed(batch))
        return batch

    def advance_version(self, recompute: Callable[[tuple[str, ...]], None] | None = None) -> tuple[Event, ...]:
        """Move to the next policy version.  Under ``segment_wise`` first calls
        ``recompute(rollout_ids)`` for the rollouts the policy wants recomputed; then
        appends the version and the policy's purge.  Returns the events appended."""
        requests = policies.recompute_requests(self.state)
        if requests and recompute is not None:
            recompute(tuple(event.rollout for event in requests))
        bump = (*requests, Version(self._folder.version + 1))
        self.append(*bump)
        purge = policies.on_version(self.state)
        if purge:
            self.append(*purge)
        return (*bump, *purge)

    def pause(self) -> None:
        """Stop admissions (capacity 0) until :meth:`resume`."""
        self.append(Paused())

    def resume_generation(self) -> None:
        """Admit again after :meth:`pause`."""
        self.append(Resumed())

    def flush(self) -> None:
        """Write the queued events to the log in one transaction."""
        if self._log is not None and self._unwritten:
            self._log.append(self._unwritten)
            self._unwritten = []
            self._unwritten_ids.clear()

    def close(self) -> None:
        """Flush and close the log."""
        self.flush()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

