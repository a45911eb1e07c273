"""Each invariant catches the bad state it is about, names itself, and passes on real runs."""

from __future__ import annotations

import pytest

from engine.core import policies, reducer
from engine.core.config import Config
from engine.core.events import (
    Accepted,
    Consumed,
    Enqueued,
    Filtered,
    Recomputed,
    Rejected,
    RunStarted,
    Segment,
    Submitted,
    Version,
)
from engine.core.reducer import EMPTY, FILTERED, READY, fold
from engine.ledger import Ledger
from properties import invariants
from properties.invariants import InvariantChecker, InvariantViolation, check_state


def run(config: Config, *events) -> tuple[list, reducer.State]:
    history = [RunStarted(config), *events]
    return history, fold(history)


def strict(**values: object) -> Config:
    return Config(**{"max_concurrent": 4, "batch_size": 2, "max_staleness": 1, "policy": "strict", **values})


def with_counts(state: reducer.State, **changes: int) -> reducer.State:
    counts = list(state.counts)
    for name, value in changes.items():
        counts[reducer.STATUS_NAMES.index(name)] = value
    return state._replace(counts=tuple(counts))


def violated(name: str):
    """Expect an :class:`InvariantViolation` of invariant ``name``."""
    return pytest.raises(InvariantViolation, match=f"invariant '{name}' violated")


def test_a_violation_names_its_invariant() -> None:
    _, state = run(strict(), Enqueued("r1"), Enqueued("r2"), Submitted("r2", 0))
    with violated("conservation") as caught:
        invariants.conservation(with_counts(state, pending=2, running=0))
    assert caught.value.invariant == "conservation"
    assert "2 counted pending but 1 rollouts have that status" in str(caught.value)


def test_conservation_catches_a_lost_record() -> None:
    _, state = run(strict(), Enqueued("r1"))
    with violated("conservation") as caught:
        invariants.conservation(with_counts(state, pending=2))
    assert "2 rollouts counted live but 1 live records" in str(caught.value)


def test_conservation_catches_a_negative_finished_counter() -> None:
    _, state = run(strict())
    with violated("conservation"):
        invariants.conservation(with_counts(state, rejected=-1))


def test_bounds_catches_running_over_max_concurrent() -> None:
    _, state = run(strict(max_concurrent=1, max_staleness=None))
    with violated("bounds") as caught:
        invariants.bounds(with_counts(state, running=2))
    assert "running 2 exceeds max_concurrent 1" in str(caught.value)


def test_bounds_catches_accepted_plus_running_over_the_staleness_budget() -> None:
    _, state = run(strict(max_concurrent=100, batch_size=2, max_staleness=0))
    with violated("bounds") as caught:
        invariants.bounds(with_counts(state, consumed=2, running=1))
    assert "(max_staleness 0 + version 0 + 1) * batch_size 2 = 2" in str(caught.value)


def test_bounds_use_per_rank_limits() -> None:
    _, state = run(strict(max_concurrent=4, batch_size=4, max_staleness=None, dp_size=2))
    invariants.bounds(with_counts(state, running=2))
    with violated("bounds"):
        invariants.bounds(with_counts(state, running=3))


def test_bounds_catch_versions_out_of_order() -> None:
    _, state = run(strict(), Enqueued("r1"), Submitted("r1", 0))
    record = state.rollouts["r1"]._replace(head_version=1)
    with violated("bounds") as caught:
        invariants.bounds(state._replace(rollouts=state.rollouts.set("r1", record)))
    assert "'r1'" in str(caught.value)


def test_capacity_rule_catches_a_capacity_off_the_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    _, state = run(strict())
    invariants.capacity_rule(state)
    monkeypatch.setattr(reducer, "capacity", lambda state: 0)
    with violated("capacity_rule"):
        invariants.capacity_rule(state)


def test_capacity_is_zero_while_paused_and_per_rank() -> None:
    _, state = run(strict(max_concurrent=6, batch_size=4, max_staleness=None, dp_size=2))
    assert reducer.capacity(state) == invariants._plain_capacity(state) == 3
    assert invariants._plain_capacity(state._replace(paused=True)) == 0


def test_strict_consumption_of_a_stale_rollout_is_caught() -> None:
    history, state = run(strict(max_staleness=1), Enqueued("r1"), Submitted("r1", 0), Accepted("r1"), Version(1))
    invariants.consumed_within_staleness(state, Consumed(("r1",)))
    state = reducer.apply(state, Version(2))
    with violated("consumed_within_staleness") as caught:
        invariants.consumed_within_staleness(state, Consumed(("r1",)))
    assert "'r1'" in str(caught.value)


def test_segment_wise_rule_measures_from_the_tail_until_recomputed() -> None:
    config = strict(policy="segment_wise", max_staleness=3)
    _, state = run(config, Enqueued("r1"), Submitted("r1", 0), Version(1), Version(2), Segment("r1", 2, 5), Accepted("r1"))
    later = fold([Version(3), Version(4)], state)
    with violated("consumed_within_staleness"):  # tail 2, version 4, not recomputed: 2 > 1
        invariants.consumed_within_staleness(later, Consumed(("r1",)))
    recomputed = fold([Recomputed("r1", 2), Version(3)], state)
    invariants.consumed_within_staleness(recomputed, Consumed(("r1",)))  # head 0, version 3 <= max(1, 3)
    with violated("consumed_within_staleness"):
        invariants.consumed_within_staleness(reducer.apply(recomputed, Version(4)), Consumed(("r1",)))


def test_admission_puts_no_bound_on_consumption() -> None:
    _, state = run(strict(policy="admission"), Enqueued("r1"), Submitted("r1", 0), Accepted("r1"), Version(5))
    invariants.consumed_within_staleness(state, Consumed(("r1",)))


def test_capacity_recovered_holds_for_the_real_rule_and_catches_a_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    _, before = run(strict(max_staleness=0, batch_size=1), Enqueued("r1"), Submitted("r1", 0), Version(1))
    event = Filtered("r1")
    after = reducer.apply(before, event)
    invariants.capacity_recovered(before, event, after)
    leaky = reducer.capacity

    def capacity_counting_filtered(state):  # the shipped bug: filtered samples keep counting
        counts = list(state.counts)
        counts[READY] += counts[FILTERED]
        return leaky(state._replace(counts=tuple(counts)))

    monkeypatch.setattr(reducer, "capacity", capacity_counting_filtered)
    with violated("capacity_recovered") as caught:
        invariants.capacity_recovered(before, event, after)
    assert "filtered 'r1'" in str(caught.value)


def test_capacity_recovery_compares_with_the_history_without_the_rollout() -> None:
    history, state = run(
        strict(max_staleness=0, batch_size=1, max_concurrent=2),
        Enqueued("r1"),
        Enqueued("r2"),
        Submitted("r1", 0),
        Version(1),
        Submitted("r2", 1),
        Filtered("r1"),
        Accepted("r2"),
    )
    invariants.capacity_recovery(history, state, "r1")
    assert invariants.history_without(history, "r1") == [e for e in history if getattr(e, "rollout", None) != "r1"]
    with violated("capacity_recovery"):
        invariants.capacity_recovery(history, with_counts(state, consumed=1), "r1")


def test_history_without_drops_the_rollout_from_batches() -> None:
    events = [Consumed(("a", "b")), Consumed(("a",))]
    assert invariants.history_without(events, "a") == [Consumed(("b",))]


def test_nothing_lost_counts_one_new_rollout_per_enqueue() -> None:
    _, before = run(strict())
    after = reducer.apply(before, Enqueued("r1"))
    invariants.nothing_lost(before, Enqueued("r1"), after)
    with violated("nothing_lost"):
        invariants.nothing_lost(before, Version(1), after)


def test_ready_queue_fresh_catches_a_stale_ready_rollout() -> None:
    _, state = run(strict(max_staleness=0), Enqueued("r1"), Submitted("r1", 0), Accepted("r1"), Version(1))
    with violated("ready_queue_fresh") as caught:
        invariants.ready_queue_fresh(state)
    assert "'r1'" in str(caught.value)
    invariants.ready_queue_fresh(fold(policies.on_version(state), state))
    invariants.ready_queue_fresh(state._replace(config=strict(policy="admission")))


def test_replay_equals_live_catches_a_diverging_state() -> None:
    history, state = run(strict(), Enqueued("r1"))
    assert invariants.replay_equals_live(history, state) == state
    with violated("replay_equals_live"):
        invariants.replay_equals_live(history, state._replace(version=3))


def test_apply_is_pure_catches_a_nondeterministic_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    _, state = run(strict())
    assert invariants.apply_is_pure(state, Enqueued("r1")).pending == 1
    calls = iter(range(10))
    real = reducer.apply
    monkeypatch.setattr(reducer, "apply", lambda s, e: real(s, e)._replace(events=next(calls)))
    with violated("apply_is_pure"):
        invariants.apply_is_pure(state, Enqueued("r1"))


def test_apply_is_pure_lets_a_refusal_through_unchanged() -> None:
    _, state = run(strict())
    with pytest.raises(reducer.IllegalTransition, match="'ghost'"):
        invariants.apply_is_pure(state, Accepted("ghost"))


def test_json_round_trip_catches_a_lossy_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    event = Submitted("r1", 3, t=1.5)
    invariants.json_round_trip(event)
    monkeypatch.setattr(invariants, "from_json", lambda obj: Submitted(obj["rollout"], obj["version"]))
    with violated("json_round_trip"):
        invariants.json_round_trip(event)


def test_check_state_runs_as_the_ledgers_debug_hook() -> None:
    config = strict(max_staleness=1, batch_size=2, on_stale="requeue")
    checker = InvariantChecker()
    ledger = Ledger(config, check=checker)
    plain = Ledger(config, check=check_state)
    for shell in (ledger, plain):
        shell.append(*(Enqueued(f"r{i}") for i in range(4)))
        shell.append(*(Submitted(f"r{i}", 0) for i in range(3)))
        shell.complete("r0")
        shell.complete("r1")
        assert shell.prepare_batch(2) == ("r0", "r1")
        shell.advance_version()
        shell.advance_version()
        shell.complete("r2")  # two versions behind: filtered and requeued
        shell.append(Submitted("r3", shell.state.version))
        assert shell.state.filtered == 1 and shell.state.pending == 1
    assert checker.previous == ledger.state


def test_the_checker_stops_a_ledger_on_a_planted_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    real_move = reducer._move

    def double_decrement(draft, rollout, status, record):
        real_move(draft, rollout, status, record)
        if record[0] == reducer.REJECTED:
            draft.counts[status] -= 1

    monkeypatch.setattr(reducer, "_move", double_decrement)
    ledger = Ledger(strict(), check=InvariantChecker())
    ledger.append(Enqueued("r1"), Submitted("r1", 0))
    with violated("conservation"):
        ledger.append(Rejected("r1", "error"))
    assert ledger.state.running == 1  # the append was rolled back


def test_the_checker_sweeps_everything_periodically_and_the_named_records_always() -> None:
    _, state = run(strict(), Enqueued("r1"), Enqueued("r2"), Submitted("r1", 0), Submitted("r2", 0))
    broken = state._replace(rollouts=state.rollouts.set("r2", state.rollouts["r2"]._replace(tail_version=5)))
    checker = InvariantChecker(full_every=4)
    checker(state, None)  # first call: full sweep, passes
    checker(broken, Segment("r1", 0, 1))  # names r1 only: the O(1) checks pass
    with violated("bounds") as caught:
        checker(broken, Segment("r2", 0, 1))  # names r2: its record is checked
    assert "'r2'" in str(caught.value)
    with pytest.raises(ValueError, match="full_every must be at least 1, got 0"):
        InvariantChecker(full_every=0)


def test_transition_checks_skip_a_gap_in_the_events() -> None:
    """The checker only compares consecutive states (a shell may install it mid-run)."""
    _, state = run(strict(), Enqueued("r1"))
    checker = InvariantChecker(EMPTY)
    checker(state, Enqueued("r1"))
    assert checker.previous is state

