"""The protocol: each multi-event step's events, in order, and that they fold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import admitted, started
from engine.core import protocol
from engine.core.events import (
    Accepted,
    Consumed,
    Enqueued,
    Filtered,
    InterruptedBatch,
    Paused,
    Recomputed,
    Rejected,
    ResumedBatch,
    Segment,
    Unpaused,
    Version,
)
from engine.core.reducer import IllegalTransition, apply, fold


def test_a_partial_update_pauses_interrupts_bumps_purges_resumes_and_unpauses_in_that_order() -> None:
    state = fold([Accepted("c")], admitted(started(policy="strict", max_staleness=0), "a", "b", "c"))
    begin = protocol.begin_update(state, {"a": 3, "b": 0})
    assert begin == (Paused(), InterruptedBatch(("a", "b"), (3, 0), 0))
    state = fold(begin, state)
    finish = protocol.finish_update(state, protocol.interrupted(begin))
    # c (ready, started at 0) is stale at version 1 under strict staleness 0: purged after the bump
    assert finish == (Version(1), Filtered("c"), ResumedBatch(("a", "b"), 1), Unpaused())
    state = fold(finish, state)
    assert not state.paused and state.version == 1 and state.filtered == 1
    assert [state.status_of(r) for r in "ab"] == ["running", "running"]
    assert [state.rollouts[r].tail_version for r in "ab"] == [1, 1] and state.rollouts["a"].tokens == 3


def test_the_purge_is_the_policys_answer_after_the_bump_not_before() -> None:
    config = {"policy": "strict", "max_staleness": 1, "on_stale": "requeue"}
    state = fold([Accepted("c"), Version(1)], admitted(started(**config), "c"))
    assert protocol.advance(state) == (Version(2), Filtered("c"), Enqueued("c#2", "c", 2))  # stale only at 2
    fresh = fold([Accepted("d")], admitted(state, "d"))
    assert protocol.advance(fresh)[:1] == (Version(2),) and Filtered("d") not in protocol.advance(fresh)


def test_a_restart_rejects_and_retries_each_rollout_still_generating() -> None:
    state = admitted(started(), "a", "b", "c")
    events = protocol.begin_update(state, {"b": 5, "a": 1}, "restart")
    assert events == (Paused(), Rejected("b", "none"), Enqueued("b#2", "b", 2), Rejected("a", "none"), Enqueued("a#2", "a", 2))
    assert fold(events, state).running == 1  # c was not generating (it finished its samples)
    assert protocol.begin_update(state, {"a": 5}, "none") == (Paused(),)
    assert protocol.begin_update(state) == (Paused(),)
    with pytest.raises(ValueError, match="interrupt must be one of"):
        protocol.begin_update(state, {"a": 5}, "drop")


def test_a_rollout_closed_during_the_update_is_not_resumed() -> None:
    state = fold(protocol.begin_update(admitted(started(), "a", "b"), {"a": 1, "b": 2}), admitted(started(), "a", "b"))
    state = apply(state, Rejected("a", "timeout"))  # timed out while interrupted
    events = protocol.finish_update(state, ("a", "b"))
    assert events == (Version(1), ResumedBatch(("b",), 1), Unpaused())
    assert fold(events, state).running == 1


def test_a_pause_ended_without_a_bump_resumes_under_the_current_version() -> None:
    begun = admitted(started(), "a")
    events = protocol.begin_update(begun, {"a": 4})
    state = fold(events, begun)
    assert protocol.end_pause(state, protocol.interrupted(events)) == (ResumedBatch(("a",), 0), Unpaused())
    assert protocol.end_pause(state) == (Unpaused(),)
    assert fold(protocol.end_pause(state, ("a",)), state).status_of("a") == "running"


def test_recompute_requests_come_from_the_policy_before_the_bump() -> None:
    state = fold([Accepted("a"), Version(1)], admitted(started(policy="segment_wise", max_staleness=2), "a"))
    assert protocol.recompute_requests(state) == (Recomputed("a", 1),)
    state = fold(protocol.recompute_requests(state), state)
    assert Filtered("a") not in protocol.advance(state)  # recomputed: it survives the bump


def test_completion_closes_the_segment_under_its_tail_version_then_asks_the_policy() -> None:
    state = admitted(started(policy="strict", max_staleness=1, on_stale="requeue"), "a")
    state = fold([Segment("a", 0, 2), Version(1), Version(2)], state)
    events = protocol.complete(state.config, state.version, "a", state.rollouts["a"], 5)
    assert events == (Segment("a", 0, 5), Filtered("a"), Enqueued("a#2", "a", 2))  # two versions behind: stale
    assert fold(events, state).filtered == 1
    state = admitted(state, "c")  # started under version 2
    assert protocol.complete(state.config, state.version, "c", state.rollouts["c"], 3) == (Segment("c", 2, 3), Accepted("c"))
    assert protocol.complete(state.config, state.version, "c", state.rollouts["c"]) == (Accepted("c"),)
    with pytest.raises(KeyError, match="'zzz' is not live"):
        protocol.complete(state.config, state.version, "zzz", None, 3)


def test_a_turn_is_one_segment_per_version_that_sampled_it_oldest_first() -> None:
    state = fold([Version(1)], admitted(started(policy="segment_wise", max_staleness=1), "g0"))
    events = protocol.segments("g0", {1: 3, 0: 0})
    assert events == (Segment("g0", 1, 3),)  # a version that sampled nothing adds no segment
    state = fold(events, fold([Version(2)], state))
    assert protocol.segments("g0", {2: 4, 1: 0}) == (Segment("g0", 2, 4),)
    assert protocol.segments("g0", {2: 1, 1: 2}) == (Segment("g0", 1, 2), Segment("g0", 2, 1))
    with pytest.raises(IllegalTransition, match="segment version 0"):
        fold(protocol.segments("g0", {0: 1}), state)  # older than the rollout's newest segment
    record = fold(protocol.segments("g0", {2: 4}), state).rollouts["g0"]
    assert (record.head_version, record.tail_version) == (0, 2)


def test_failures_retry_within_max_retries_under_one_id_scheme() -> None:
    state = admitted(started(), "p0")
    assert protocol.enqueue(["p0"]) == (Enqueued("p0", "p0", 1),)
    assert protocol.fail_within("p0", state.rollouts["p0"], "error", max_retries=1) == (Rejected("p0", "error"), Enqueued("p0#2", "p0", 2))
    assert protocol.fail_within("p0", state.rollouts["p0"], "timeout", max_retries=0) == (Rejected("p0", "timeout"),)
    state = fold(protocol.fail_within("p0", state.rollouts["p0"], "error", max_retries=1), state)
    state = fold(protocol.submit(["p0#2"], 0), state)
    assert protocol.fail_within("p0#2", state.rollouts["p0#2"], "error", max_retries=1) == (Rejected("p0#2", "error"),)
    assert protocol.fail("p0#2", state.rollouts["p0#2"], "lost", retry=True)[1] == Enqueued("p0#3", "p0", 3)


def test_admit_enqueues_and_submits_each_prompt() -> None:
    events = protocol.admit(["p0", "p1"], 0, 2.5)
    assert [(e.type, e.rollout, e.t) for e in events] == [("enqueued", "p0", 2.5), ("submitted", "p0", 2.5), ("enqueued", "p1", 2.5), ("submitted", "p1", 2.5)]
    assert fold(events, started()).running == 2


def test_consume_takes_a_full_batch_or_nothing() -> None:
    state = fold([Accepted("b"), Accepted("a")], admitted(started(batch_size=2), "a", "b", "c"))
    assert protocol.consume(state, 2) == (Consumed(("b", "a")),)  # oldest accepted first
    assert protocol.consume(state, 3) == ()


def test_recovery_closes_every_rollout_in_flight_by_id_and_may_requeue_it() -> None:
    state = fold([Segment("b", 0, 1), Accepted("c")], admitted(started(), "b", "a", "c"))
    state = fold(protocol.begin_update(state, {"b": 1}), state)  # b interrupted, a running, c ready
    state = apply(state, Enqueued("d"))
    assert protocol.recover(state) == (Rejected("a", "lost"), Rejected("b", "lost"))
    assert protocol.recover(state, requeue=True) == (Rejected("a", "lost"), Enqueued("a#2", "a", 2), Rejected("b", "lost"), Enqueued("b#2", "b", 2))
    after = fold(protocol.recover(state, requeue=True), state)
    assert after.running == 0 and after.ready == 1 and after.pending == 3


def test_the_protocol_is_checked_by_the_reducer_not_trusted() -> None:
    state = admitted(started(), "a")
    with pytest.raises(IllegalTransition):
        fold(protocol.finish_update(state), state)  # an un-pause without a pause


def test_the_protocol_imports_only_the_core() -> None:
    tree = ast.parse(Path(protocol.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported and all(name == "__future__" or name == "typing" or name.startswith("engine.core") for name in imported), imported
