"""Hypothesis state machines that drive random interleavings of a run through the
real reducer and the real policies, checking every invariant after every event.

:class:`LedgerMachine` starts a run with a random config (every policy,
max_staleness 0..3 or unbounded, dp_size up to 3) and then, in any order:
enqueues, submits while capacity allows (and checks a submission without capacity
is refused), streams segments, interrupts and resumes across version bumps,
completes through the policy (accept, or filter and maybe requeue), rejects for
every reason, consumes a batch, advances the version (recompute, bump, purge, as
``Ledger.advance_version`` does), pauses for the weight sync and resumes, crashes and
replays (through the fold, a real SQLite log, ``Ledger.resume`` and a JSON Lines
round trip).

After every event: the state invariants, the transition invariants, purity of
``apply``, JSON round trip, capacity recovery against the history without the
finished rollout, and the differential check against both accounting schemes of
:class:`~properties.reference.ReferenceLedger`.  Every group of events also goes
through a ``Ledger`` in debug mode (``check=InvariantChecker()``), whose state must
stay the machine's.  After every step: the ready queue holds nothing stale, every
event the reference model finds illegal is refused (for every live rollout), and a
full batch can still be formed (liveness).

``machine_for(policy)`` gives a machine whose runs all use one policy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from engine.core import policies, reducer
from engine.core.config import POLICIES, Config
from engine.core.events import (
    Accepted,
    Consumed,
    Enqueued,
    Event,
    Filtered,
    Interrupted,
    InterruptedBatch,
    Paused,
    REJECT_REASONS,
    Recomputed,
    Rejected,
    Resumed,
    ResumedBatch,
    RunStarted,
    Segment,
    Submitted,
    Unpaused,
    Version,
)
from engine.core.reducer import (
    EMPTY,
    INTERRUPTED,
    PENDING,
    RUNNING,
    STATUS_NAMES,
    IllegalTransition,
    State,
)
from engine.ledger import Ledger
from engine.log import EventLog, read_jsonl, replay, write_jsonl
from properties import invariants
from properties.invariants import InvariantChecker, InvariantViolation
from properties.liveness import form_batch
from properties.reference import SCHEMES, ReferenceLedger, ReferenceRefusal
from properties.strategies import configs, picks

#: Crashes per run at most (each writes and replays a SQLite log).
MAX_CRASHES = 2

#: Prompts the machine keeps waiting at most (the policy may allow fewer).
PENDING_CAP = 4

#: Distinct prompts the machine's rollouts share.
SHARED_PROMPTS = 3

#: What ``generate`` does with an in-flight rollout (completion twice as likely).
GENERATION_ACTIONS = ("complete", "segment", "complete", "interrupt", "reject")

#: Statuses of rollouts still in the ledger's state, as the reference model names them.
LIVE_NAMES = frozenset({"pending", "running", "interrupted", "ready"})


def _statistic(label: str) -> None:
    """Count ``label`` in ``--hypothesis-show-statistics`` (when run by Hypothesis)."""
    if currently_in_test_context():
        hypothesis_event(label)


def _scratch() -> str | None:
    """Memory-backed scratch space for the crash logs when there is one (no fsync cost)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class LedgerMachine(RuleBasedStateMachine):
    """A random run through the real reducer and policies, checked at every event."""

    def __init__(self) -> None:
        super().__init__()
        self.state: State = EMPTY
        self.history: list[Event] = []
        self.references = {scheme: ReferenceLedger(scheme) for scheme in SCHEMES}
        self.training = False  # a batch was consumed and its version bump is due
        self.next_id = 0
        self.crashes = 0
        self.directory: Path | None = None
        # A Ledger shell in debug mode, fed the same groups: its checker must never fire
        # on a legal run, and its state must stay the machine's.
        self.shell = Ledger(check=InvariantChecker())

    # --- the one way events get in ----------------------------------------------------

    def commit(self, *events: Event) -> None:
        """Fold ``events`` (one atomic group, as ``Ledger.append``) and check everything."""
        for event in events:
            self._commit_one(event)
        if events:
            self.shell.append(*events)
            if self.shell.state != self.state:
                raise InvariantViolation("replay_equals_live", f"the Ledger shell's state differs after {events!r}")

    def _commit_one(self, event: Event) -> None:
        before = self.state
        try:
            after = invariants.apply_is_pure(before, event)
        except IllegalTransition as err:
            legal = self.references["never_count"].is_legal(event)
            raise InvariantViolation(
                "differential", f"the reducer refused {event!r} ({err}); the reference model {'takes' if legal else 'refuses'} it"
            ) from err
        invariants.json_round_trip(event)
        invariants.check_state(after, event)
        invariants.consumed_within_staleness(before, event)
        invariants.consumed_in_order(before, event)
        invariants.capacity_recovered(before, event, after)
        invariants.nothing_lost(before, event, after)
        for reference in self.references.values():
            try:
                reference.observe(event)
            except ReferenceRefusal as err:
                raise InvariantViolation("differential", f"the reference model refused {event!r}: {err}") from err
        self.history.append(event)
        self.state = after
        self._compare(event)
        if isinstance(event, (Filtered, Rejected)):
            invariants.capacity_recovery(self.history, after, event.rollout)

    def _compare(self, event: Event) -> None:
        """The reducer agrees with the reference model under both accounting schemes."""
        state = self.state
        capacity = reducer.capacity(state)
        for scheme, reference in self.references.items():
            mine = (state.version, state.paused, state.running, state.accepted, state.rejected, state.filtered, capacity)
            theirs = (
                reference.version,
                reference.paused,
                reference.running,
                reference.accepted,
                reference.rejected,
                reference.filtered,
                reference.get_capacity(),
            )
            if mine != theirs:
                names = ("version", "paused", "running", "accepted", "rejected", "filtered", "capacity")
                diff = {n: (a, b) for n, a, b in zip(names, mine, theirs) if a != b}
                raise InvariantViolation("differential", f"after {event!r}, reducer vs reference ({scheme}): {diff}")
            if min(reference.enqueued, reference.running, reference.accepted) < 0:
                raise InvariantViolation("differential", f"reference ({scheme}) counter went negative after {event!r}")
            for status, name in enumerate(STATUS_NAMES):
                if state.counts[status] != reference.count(name):
                    raise InvariantViolation(
                        "differential",
                        f"after {event!r}: {state.counts[status]} {name} in the reducer, {reference.count(name)} in the reference",
                    )
        first, second = (reference.get_capacity() for reference in self.references.values())
        if first != second:
            raise InvariantViolation("accounting_schemes_agree", f"capacities {first} and {second} after {event!r}")

    # --- helpers -------------------------------------------------------------------------

    def _with(self, status: int) -> list[str]:
        """Live rollouts with ``status``, oldest first."""
        items = [(record.order, rollout) for rollout, record in self.state.rollouts.items() if record.status == status]
        return [rollout for _, rollout in sorted(items)]

    def _pick(self, status: int, pick: int) -> str:
        candidates = self._with(status)
        return candidates[pick % len(candidates)]

    @property
    def config(self) -> Config:
        assert self.state.config is not None
        return self.state.config

    # --- rules ------------------------------------------------------------------------

    @initialize(config=configs())
    def start(self, config: Config) -> None:
        """The run starts with a random config."""
        _statistic(f"policy={config.policy}")
        _statistic(f"max_staleness={config.max_staleness}")
        _statistic(f"dp_size={config.dp_size}")
        _statistic(f"in_order={config.in_order}")
        self.commit(RunStarted(config))

    @precondition(
        lambda self: self.state.config is not None
        and self.state.pending < PENDING_CAP
        and policies.enqueue_room(self.state) != 0
    )
    @rule()
    def enqueue(self) -> None:
        """A new rollout while the policy lets prompts wait; rollouts share prompts
        (as epochs over a dataset do), so requeued attempts must still get distinct ids."""
        self.next_id += 1
        self.commit(Enqueued(f"r{self.next_id}", f"p{self.next_id % SHARED_PROMPTS}"))

    @precondition(lambda self: self.state.counts[PENDING] > 0)
    @rule(pick=picks)
    def submit(self, pick: int) -> None:
        """Admit a pending rollout if capacity allows; otherwise check it is refused."""
        event = Submitted(self._pick(PENDING, pick), self.state.version)
        if reducer.capacity(self.state) > 0:
            self.commit(event)
        else:
            _statistic("submission refused without capacity")
            self.refuse(event)

    @precondition(lambda self: self.state.running > 0)
    @rule(pick=picks, action=st.sampled_from(GENERATION_ACTIONS), reason=st.sampled_from(REJECT_REASONS))
    def generate(self, pick: int, action: str, reason: str) -> None:
        """One step of an in-flight rollout: a segment, an interruption (or a resume,
        if it is interrupted), completion through the policy, or a rejection."""
        in_flight = self._with(RUNNING) + self._with(INTERRUPTED)
        rollout = in_flight[pick % len(in_flight)]
        record = self.state.rollouts[rollout]
        interrupted = record.status == INTERRUPTED
        if action == "reject":
            _statistic(f"rejected ({reason})")
            self.commit(Rejected(rollout, reason))
        elif interrupted:
            if record.tail_version < self.state.version:
                _statistic("resumed across a version bump")
            self.commit(Resumed(rollout, self.state.version))
        elif action == "segment":
            if record.tail_version < self.state.version:
                _statistic("new segment across a version bump")
            self.commit(Segment(rollout, self.state.version, 1 + pick % 64))
        elif action == "interrupt":
            self.commit(Interrupted(rollout))
        else:
            events = policies.on_complete(self.state, rollout)
            if isinstance(events[0], Filtered):
                _statistic("filtered at completion")
            self.commit(*events)

    @precondition(lambda self: self.training or self.state.running + self.state.ready > 0)
    @rule(pause=st.booleans(), interrupt=st.booleans())
    def train(self, pause: bool, interrupt: bool) -> None:
        """The trainer: with a batch in training, the weight update (as
        ``Ledger.advance_version``: recompute, bump, purge), pausing generation for the
        weight sync if ``pause`` (until ``resume_generation``) and, if ``interrupt``,
        with the running rollouts interrupted around it in one event each way, as the
        executor's ``set_version`` does; otherwise consume a full
        batch if there is one, else move the version while rollouts are in flight (an
        update this rank did not consume for; at most two versions ahead of the batches
        consumed, so the staleness budget stays about as tight as a trainer keeps it)."""
        if self.training:
            if pause and not self.state.paused:
                _statistic("paused for a weight sync")
                self.commit(Paused())
            self.advance_version(interrupt)
            return
        batch = policies.select_batch(self.state, self.config.rank_batch_size)
        if len(batch) == self.config.rank_batch_size:
            _statistic("batch consumed")
            self.commit(Consumed(batch))
            self.training = True
        elif (self.state.version - 1) * self.config.rank_batch_size <= self.state.consumed:
            self.advance_version(interrupt)

    def advance_version(self, interrupt: bool = False) -> None:
        """Recompute, bump, purge: the steps of ``Ledger.advance_version``; with
        ``interrupt``, between an ``interrupted_batch`` of the running rollouts (each
        closing a segment) and the ``resumed_batch`` that continues them."""
        running = tuple(self._with(RUNNING)) if interrupt else ()
        if running:
            _statistic("interrupted and resumed in one event each")
            self.commit(InterruptedBatch(running, tuple(i % 3 for i in range(len(running))), self.state.version))
        requests = policies.recompute_requests(self.state)
        if requests:
            _statistic("recomputed before a version bump")
        self.commit(*requests, Version(self.state.version + 1))
        purge = policies.on_version(self.state)
        if purge:
            _statistic("purged at a version bump")
        self.commit(*purge)
        if running:
            self.commit(ResumedBatch(running, self.state.version))
        self.training = False

    @precondition(lambda self: self.state.paused)
    @rule()
    def resume_generation(self) -> None:
        """Generation resumes after a weight sync."""
        self.commit(Unpaused())

    @precondition(lambda self: self.crashes < MAX_CRASHES and self.state.running + self.state.ready > 0)
    @rule(requeue=st.booleans())
    def crash_and_replay(self, requeue: bool) -> None:
        """The process dies: replay the fold, the SQLite log and its JSON Lines export,
        then resume through ``Ledger.resume`` (which must refuse to reuse a finished
        rollout's id) and continue from the replayed state."""
        self.state = invariants.replay_equals_live(self.history, self.state)  # the process restarts from its log
        self.shell = Ledger(check=InvariantChecker())
        self.shell.append(*self.history)
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="ledger-machine-", dir=_scratch()))
        self.crashes += 1
        path = self.directory / f"run{self.crashes}.sqlite"
        with EventLog(path) as log:
            log.append(self.history)
        if replay(path) != self.state:
            raise InvariantViolation("replay_equals_live", f"replaying the SQLite log {path} differs from the live state")
        exported = self.directory / f"run{self.crashes}.jsonl"
        write_jsonl(self.history, exported)
        if list(read_jsonl(exported)) != self.history:
            raise InvariantViolation("json_round_trip", f"the JSON Lines export {exported} does not read back the same events")
        try:
            ledger = Ledger.resume(path, requeue=requeue)
        except IllegalTransition as err:
            raise InvariantViolation("crash_recovery", f"Ledger.resume(requeue={requeue}) was refused: {err}") from err
        try:
            resumed_state = ledger.state
            self._reuse_is_refused(ledger)
        finally:
            ledger.close()
        with EventLog(path, mode="r") as log:
            closing = list(log.events(len(self.history) + 1))
        if any(isinstance(event, Rejected) for event in closing):
            _statistic("in-flight rollouts closed by a crash")
        self.commit(*closing)
        if resumed_state != self.state:
            raise InvariantViolation("replay_equals_live", "Ledger.resume's state differs from folding its log")

    def _reuse_is_refused(self, ledger: Ledger) -> None:
        """A ledger with a log refuses to enqueue the id of a finished rollout (the
        folded state has forgotten it; the log has not)."""
        reference = self.references["never_count"]
        finished = [r for r, status in reference.status.items() if status not in LIVE_NAMES]
        if not finished:
            return
        try:
            ledger.append(Enqueued(finished[-1]))
        except IllegalTransition as err:
            if repr(finished[-1]) not in str(err):
                raise InvariantViolation("crash_recovery", f"the refusal does not name {finished[-1]!r}: {err}") from err
            _statistic("reuse of a finished id refused after a crash")
            return
        raise InvariantViolation("crash_recovery", f"a ledger with a log took the reused id {finished[-1]!r}")

    def refuse(self, event: Event) -> None:
        """``event`` is illegal: both the reference model and the reducer refuse it, and
        the reducer's error names the rollout.  (The state is immutable, so a refusal
        cannot have changed it.)"""
        if self.references["never_count"].is_legal(event):
            raise InvariantViolation("differential", f"the reference model takes {event!r}, expected a refusal")
        self._refused(event)

    def _refused(self, event: Event) -> None:
        try:
            reducer.apply(self.state, event)
        except IllegalTransition as err:
            rollout = getattr(event, "rollout", None)
            if rollout is not None and repr(rollout) not in str(err):
                raise InvariantViolation("differential", f"the refusal of {event!r} does not name the rollout: {err}") from err
            return
        raise InvariantViolation("differential", f"the reducer took {event!r}, which the reference model refuses")

    # --- checked after every step ----------------------------------------------------

    @invariant()
    def ready_queue_fresh(self) -> None:
        """After every step the ready queue holds nothing stale."""
        invariants.ready_queue_fresh(self.state)

    @invariant()
    def illegal_events_are_refused(self) -> None:
        """Every event the reference model finds illegal now, for every live rollout,
        the two most recently finished ones and an unknown id, is refused."""
        if self.state.config is None:
            return
        reference = self.references["never_count"]
        finished = [r for r, status in reference.status.items() if status not in LIVE_NAMES]
        version = self.state.version
        event: Event
        for rollout in [*self.state.rollouts, *finished[-2:], "never-enqueued"]:
            for event in (
                Submitted(rollout, version),
                Segment(rollout, version, 1),
                Interrupted(rollout),
                Resumed(rollout, version),
                Accepted(rollout),
                Rejected(rollout, "error"),
                Filtered(rollout),
                Recomputed(rollout, version),
                Consumed((rollout,)),
                InterruptedBatch((rollout,), (1,), version),
                ResumedBatch((rollout,), version),
            ):
                if not reference.is_legal(event):
                    self._refused(event)
        for event in (Version(version), Paused(), Unpaused()):
            if not reference.is_legal(event):
                self._refused(event)

    @invariant()
    def liveness(self) -> None:
        """After every step a full batch can still be formed."""
        if self.state.config is not None:
            form_batch(self.state, self.training)

    def teardown(self) -> None:
        """Remove the crash logs."""
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def machine_for(policy: str) -> type[LedgerMachine]:
    """A :class:`LedgerMachine` whose random configs all use ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")

    class PolicyMachine(LedgerMachine):
        @initialize(config=configs((policy,)))
        def start(self, config: Config) -> None:
            LedgerMachine.start(self, config)

    PolicyMachine.__name__ = PolicyMachine.__qualname__ = f"LedgerMachine_{policy}"
    return PolicyMachine
