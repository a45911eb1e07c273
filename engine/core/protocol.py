"""The protocol: every step of a run that takes more than one event, as pure functions
from a ledger state to the events to append.

The shells (the :class:`~engine.ledger.Ledger`, the asyncio executor, the trainer
through the executor, the simulator) differ in their clock and in how work gets done
(a GPU, an inference engine, SimPy); they ask this module which events a step is
made of and append them, so one scripted scenario gives one event sequence in every
shell.  Functions take a :class:`~engine.core.reducer.State`, or for the steps a shell
takes on every rollout (completion, failure) the few parts of it that a shell reads
without taking a snapshot (the config, the version, one rollout's record).  Nothing
here reads a clock, draws a random number, does I/O or changes its inputs.

Rollout ids.  The first attempt at a prompt is named by the prompt's key (:func:`enqueue`);
a new attempt (a retry after an error or a timeout, a requeue after a filter, a
restart, a rollout lost in a crash) is ``<root>#<n>`` (:func:`engine.core.policies.retry`),
where ``root`` is the first attempt's id and ``n >= 2`` the attempt's number.

The weight update, in one order for every shell and mode::

    begin_update     paused
                     then, for the rollouts still generating:
                       partial   one interrupted_batch (each closes its segment under the current version)
                       restart   rejected(none) and an enqueued retry, rollout by rollout
                       none      nothing (run on; or the shell drained them first)
    (shell)          recompute the proximal log-probs that recompute_requests names,
                     then append those requests (recomputed, segment_wise only)
    finish_update    version v+1
                     the policy's purge of the state after the bump (filtered, maybe an
                     enqueued retry each)
                     resumed_batch of the interrupted rollouts (still interrupted) under v+1
                     the un-pause (unpause)

Colocated or not changes only when a shell calls :func:`begin_update`: before training
when generation and training share the devices, after it otherwise.  The executor
appends ``finish_update`` in two parts (:func:`advance` in ``set_version``,
:func:`unpause` in ``resume``), which is the same sequence.

A pause that ends without a bump (an update abandoned halfway) is :func:`end_pause`:
``resumed_batch`` under the current version for the interrupted rollouts, then the
un-pause.

The other steps: :func:`start`, :func:`enqueue`, :func:`submit` and :func:`admit` (both at once),
:func:`segments` (a turn's tokens by the version that sampled them), :func:`complete` (the last segment, then accept, or filter and maybe
requeue), :func:`fail` (rejected with a reason, then maybe a retry), :func:`consume`
(select a batch and consume it), :func:`recover` (after a crash: every rollout in flight
rejected as lost, maybe requeued).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from engine.core import policies
from engine.core.config import Config
from engine.core.events import (
    Consumed,
    Enqueued,
    Event,
    InterruptedBatch,
    Paused,
    Recomputed,
    Rejected,
    ResumedBatch,
    RunStarted,
    Segment,
    Submitted,
    Unpaused,
    Version,
)
from engine.core.reducer import INTERRUPTED, RUNNING, Rollout, State, apply

#: What a weight update does to the rollouts still generating (see :func:`begin_update`).
INTERRUPTIONS = ("partial", "restart", "none")


def start(config: Config, t: float | None = None) -> tuple[RunStarted]:
    """The run starts with ``config`` (stamped ``t``)."""
    return (RunStarted(config, t),)


def enqueue(keys: Iterable[str], t: float | None = None) -> tuple[Enqueued, ...]:
    """First attempts at the prompts ``keys``, each named by its key (its retries are
    ``<key>#2``, ``<key>#3``, ...) and naming its prompt, stamped ``t`` (the shell's
    time, if it has one)."""
    events = []
    for key in keys:  # a loop, not a comprehension: one Python frame less on a hot path
        events.append(Enqueued(key, key, 1, t))
    return tuple(events)


def submit(rollouts: Iterable[str], version: int, t: float | None = None) -> tuple[Submitted, ...]:
    """Start pending ``rollouts`` under weights ``version`` (the capacity rule is the
    reducer's), stamped ``t``."""
    events = []
    for rollout in rollouts:
        events.append(Submitted(rollout, version, t))
    return tuple(events)


def admit(keys: Iterable[str], version: int, t: float | None = None) -> tuple[Event, ...]:
    """First attempts at the prompts ``keys`` that start at once under ``version`` (a
    shell that takes a prompt only when it has room for it): ``enqueued`` then
    ``submitted`` for each, stamped ``t``."""
    events: list[Event] = []
    for key in keys:
        events.append(Enqueued(key, key, 1, t))
        events.append(Submitted(key, version, t))
    return tuple(events)


def complete(config: Config | None, version: int, rollout: str, record: Rollout | None, tokens: int | None = None) -> tuple[Event, ...]:
    """A running rollout finished generating and its workflow accepted it: with
    ``tokens``, the segment it was generating closes first (``tokens`` more, under its
    tail version); then the policy accepts it, or filters it and maybe requeues its
    prompt (:func:`engine.core.policies.completion`, given the run's ``config``, the
    current ``version`` and the rollout's ``record``).

    The segment closes under the tail version, so it leaves the versions the policy
    measures unchanged: the policy's answer is the same before and after it."""
    decision = policies.completion(config, version, rollout, record)
    if tokens is None or record is None:  # (completion refused a record that is None)
        return decision
    return (Segment(rollout, record.tail_version, tokens), *decision)


def segments(rollout: str, tokens_by_version: Mapping[int, int]) -> tuple[Segment, ...]:
    """A running rollout generated tokens under several versions (one turn of a
    multi-turn episode, or a generation call that a weight update split): one
    ``segment`` per version that sampled any, oldest version first (the reducer
    refuses a version older than the rollout's newest segment)."""
    return tuple(Segment(rollout, version, tokens) for version, tokens in sorted(tokens_by_version.items()) if tokens > 0)


def fail(rollout: str, record: Rollout, reason: str, retry: bool) -> tuple[Event, ...]:
    """A running or interrupted rollout ended without a result: ``rejected`` with
    ``reason`` (``error``, ``timeout``, ``none``, ``lost``), then, if ``retry``, a new
    attempt at its prompt."""
    if retry:
        return (Rejected(rollout, reason), policies.retry(rollout, record))
    return (Rejected(rollout, reason),)


def fail_within(rollout: str, record: Rollout, reason: str, max_retries: int) -> tuple[Event, ...]:
    """:func:`fail`, retrying while the rollout's attempt number is at most ``max_retries``
    (so a prompt gets ``max_retries`` new attempts at most)."""
    return fail(rollout, record, reason, record.attempt <= max_retries)


def consume(state: State, size: int) -> tuple[Event, ...]:
    """A training batch: ``consumed`` for ``size`` ready rollouts, oldest first, that the
    policy would use now (:func:`engine.core.policies.select_batch`); nothing if fewer
    are ready."""
    batch = policies.select_batch(state, size)
    return (Consumed(batch),) if len(batch) == size else ()


def begin_update(state: State, generating: Mapping[str, int] | None = None, interrupt: str = "partial") -> tuple[Event, ...]:
    """The first events of a weight update: ``paused``, then what ``interrupt`` does to
    the rollouts still ``generating`` (rollout id -> tokens generated in its current
    segment, in the shell's order): ``partial`` closes every segment and interrupts
    them in one ``interrupted_batch`` under the current version; ``restart`` rejects
    each (reason ``none``) and enqueues a new attempt at its prompt; ``none`` leaves
    them alone.  A rollout that is not running is the reducer's to refuse."""
    if interrupt not in INTERRUPTIONS:
        raise ValueError(f"interrupt must be one of {', '.join(INTERRUPTIONS)}, got {interrupt!r}")
    if not generating or interrupt == "none":
        return (Paused(),)
    if interrupt == "partial":
        return (Paused(), InterruptedBatch(tuple(generating), tuple(generating.values()), state.version))
    events: list[Event] = [Paused()]
    for rollout in generating:
        record = state.rollouts.get(rollout)
        if record is None:
            raise KeyError(f"rollout {rollout!r} is not live in this ledger")
        events.extend(fail(rollout, record, "none", retry=True))
    return tuple(events)


def interrupted(events: Sequence[Event]) -> tuple[str, ...]:
    """The rollouts that :func:`begin_update`'s ``events`` interrupted (to hand to
    :func:`finish_update` or :func:`advance`)."""
    return tuple(rollout for event in events if type(event) is InterruptedBatch for rollout in event.rollouts)


def recompute_requests(state: State) -> tuple[Recomputed, ...]:
    """The ``recomputed`` events a weight update needs before the bump (``segment_wise``
    only: the ready rollouts whose tail is one version behind).  The shell recomputes
    their proximal log-probs under the current weights, then appends these."""
    return policies.recompute_requests(state)


def advance(state: State, interrupted: Iterable[str] = ()) -> tuple[Event, ...]:
    """The version bump of a weight update: ``version`` v+1, the policy's purge of the
    state after it, and one ``resumed_batch`` under v+1 for the ``interrupted`` rollouts
    that are still interrupted (a timeout may have closed one meanwhile)."""
    bump = Version(state.version + 1)
    purge = policies.on_version(apply(state, bump))
    return (bump, *purge, *_resume(state, interrupted, bump.version))


def unpause(state: State) -> tuple[Event, ...]:
    """Generation resumes after a pause (the only place the un-pause event is built)."""
    return (Unpaused(),)


def finish_update(state: State, interrupted: Iterable[str] = ()) -> tuple[Event, ...]:
    """The last events of a weight update: :func:`advance`, then :func:`unpause`."""
    return (*advance(state, interrupted), *unpause(state))


def end_pause(state: State, interrupted: Iterable[str] = ()) -> tuple[Event, ...]:
    """A pause that ends without a version bump (an update abandoned after
    :func:`begin_update`): the ``interrupted`` rollouts still interrupted continue under
    the current version in one ``resumed_batch``, then :func:`unpause`."""
    return (*_resume(state, interrupted, state.version), *unpause(state))


def _resume(state: State, interrupted: Iterable[str], version: int) -> tuple[Event, ...]:
    get = state.rollouts.get
    resumed = tuple(rollout for rollout in interrupted if (record := get(rollout)) is not None and record.status == INTERRUPTED)
    return (ResumedBatch(resumed, version),) if resumed else ()


def recover(state: State, requeue: bool = False) -> tuple[Event, ...]:
    """After a crash: every rollout that was running or interrupted is ``rejected`` as
    ``lost`` (by id, so the order does not depend on the process), and with ``requeue``
    a new attempt at its prompt is enqueued, so nothing is dropped or counted twice."""
    events: list[Event] = []
    for rollout, record in sorted(state.rollouts.items()):
        if record.status in (RUNNING, INTERRUPTED):
            events.extend(fail(rollout, record, "lost", requeue))
    return tuple(events)
