"""Evidence that the property suite bites: plant known bugs in the real reducer and
policies one at a time and check that the state machine finds each, with a shrunk
counterexample naming the broken invariant."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

import properties.profiles  # noqa: F401  (registers and loads the Hypothesis profile)
from engine.core import policies, reducer, table
from engine.core.events import Accepted, Enqueued
from engine.core.reducer import PENDING, READY, REJECTED, RUNNING, State
from properties import invariants
from properties.invariants import InvariantViolation
from properties.mutations import FILTERED_KEEP_CAPACITY, shrunk_counterexample
from properties.mutations import capacity_with as _capacity_with
from properties.stateful import LedgerMachine, machine_for

#: Examples the machine gets to find a planted bug; steps of a shrunk counterexample at most.
EXAMPLES = 300
MAX_SHRUNK_STEPS = 20
#: Mutations whose shortest counterexample is longer: batches out of order need a
#: rollout in flight across a version bump and a newer one completed beside it, and
#: the shrinker leaves 19-21 steps (which, depending on the hash seed).
SHRUNK_STEPS = {"batches that do not wait in order": 30}


def _plant_capacity(mp: pytest.MonkeyPatch, rule: Callable) -> None:
    """Replace the capacity rule wherever it is looked up by name at run time: the
    reducer's admission guard (engine.core.table) and the reducer module, whose
    ``capacity`` the invariants, the liveness check and ``Folder.capacity`` call."""
    mp.setattr(table, "capacity", rule)
    mp.setattr(reducer, "capacity", rule)


def _double_decrement_on_reject(original: Callable) -> Callable:
    def move(draft, rollout, status, record):
        original(draft, rollout, status, record)
        if record[0] == REJECTED:
            draft.counts[status] -= 1

    return move


def _in_flight_after_reject(original: Callable) -> Callable:
    def move(draft, rollout, status, record):
        original(draft, rollout, status, record)
        if record[0] == REJECTED and status == RUNNING:
            draft.fly(record[3], 1)  # put back: the rejected rollout still counts as in flight

    return move


#: name -> (plant(monkeypatch), invariants allowed to catch it, policy whose machine hunts it)
MUTATIONS: dict[str, tuple[Callable, set[str], str | None]] = {
    "filter without capacity recovery": (
        lambda mp: _plant_capacity(mp, FILTERED_KEEP_CAPACITY),
        {"capacity_rule", "capacity_recovered", "capacity_recovery", "differential", "liveness"},
        "strict",
    ),
    "filter without capacity recovery, formula check off": (
        lambda mp: (
            _plant_capacity(mp, FILTERED_KEEP_CAPACITY),
            mp.setattr(invariants, "capacity_rule", lambda state: None),
        ),
        {"capacity_recovered", "capacity_recovery", "differential", "liveness"},
        "strict",
    ),
    "accept without running": (
        lambda mp: mp.setitem(reducer.TRANSITIONS, "accepted", {RUNNING: READY, PENDING: READY}),
        {"differential"},
        None,
    ),
    "double decrement on reject": (
        lambda mp: mp.setattr(reducer, "_move", _double_decrement_on_reject(reducer._move)),
        {"conservation", "bounds", "differential", "capacity_recovered", "capacity_recovery"},
        None,
    ),
    "version recovery off by one": (
        lambda mp: _plant_capacity(mp, _capacity_with(lambda counts: 0, version_shift=-1)),
        {"capacity_rule", "differential", "liveness", "capacity_recovery"},
        None,
    ),
    "version recovery off by one, formula check off": (
        lambda mp: (
            _plant_capacity(mp, _capacity_with(lambda counts: 0, version_shift=-1)),
            mp.setattr(invariants, "capacity_rule", lambda state: None),
        ),
        {"differential", "liveness", "capacity_recovery"},
        None,
    ),
    "batches that do not wait in order": (
        lambda mp: mp.setattr(State, "oldest_in_flight", property(lambda state: None)),
        {"consumed_in_order"},
        "admission",
    ),
    "rejections left in flight": (
        lambda mp: mp.setattr(reducer, "_move", _in_flight_after_reject(reducer._move)),
        {"conservation", "differential"},
        None,
    ),
    "purge that skips the ready queue": (
        lambda mp: mp.setattr(policies, "on_version", lambda state: ()),
        {"ready_queue_fresh", "consumed_within_staleness", "liveness"},
        "strict",
    ),
    "completion never filters": (
        lambda mp: mp.setattr(policies, "on_complete", lambda state, rollout: (Accepted(rollout),)),
        {"ready_queue_fresh", "consumed_within_staleness", "liveness"},
        "strict",
    ),
    "requeued attempts named after the prompt": (
        lambda mp: mp.setattr(
            policies,
            "retry",
            lambda rollout, record: Enqueued(f"{record.prompt}#{record.attempt + 1}", record.prompt, record.attempt + 1),
        ),
        # A colliding retry id is refused by the reducer, so the machine also stops
        # reaching a batch: liveness may report it first, depending on the example tried.
        {"differential", "crash_recovery", "liveness"},
        "strict",
    ),
}


def find_counterexample(policy: str | None) -> tuple[InvariantViolation, list[str]]:
    """Run the state machine (of one ``policy``, or of all) until it fails; the
    violation and the rule steps of the shrunk counterexample."""
    found = shrunk_counterexample(LedgerMachine if policy is None else machine_for(policy), EXAMPLES)
    assert found is not None, "the state machine found no counterexample"
    violation, steps = found
    assert isinstance(violation, InvariantViolation)
    return violation, steps


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_planted_bug_is_caught_with_a_minimal_example(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plant, catchers, policy = MUTATIONS[name]
    plant(monkeypatch)
    violation, steps = find_counterexample(policy)
    print(f"\n{name}: {violation}\n  " + "\n  ".join(steps))
    assert violation.invariant in catchers, f"{name} was caught by {violation.invariant!r}: {violation}"
    assert 0 < len(steps) <= SHRUNK_STEPS.get(name, MAX_SHRUNK_STEPS), f"{name}: counterexample of {len(steps)} steps: {steps}"


def test_the_unmutated_suite_passes_the_same_budget() -> None:
    """The same machine and budget find nothing in the real code (so the catches above are the planted bugs)."""
    run_state_machine_as_test(
        LedgerMachine, settings=settings(max_examples=EXAMPLES // 3, derandomize=True, database=None)
    )
