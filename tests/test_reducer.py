import itertools

import pytest
from conftest import admitted, started

from benchmarks.mixed_log import mixed_log
from engine.core.config import Config
from engine.core.events import (
    EVENT_TYPES,
    Accepted,
    Checkpoint,
    Consumed,
    Enqueued,
    Filtered,
    Interrupted,
    InterruptedBatch,
    Paused,
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
    GUARDS,
    READY,
    STATUS_NAMES,
    TRANSITIONS,
    Folder,
    IllegalTransition,
    apply,
    capacity,
    fold,
    ready_rollouts,
    status_name,
)
from engine.core.state import in_flight_of, queue_of

# --- AReaL StalenessManager's documented examples -------------------------------------------------


def test_concurrency_limit_five_with_three_running_gives_two():
    state = admitted(started(max_concurrent=5, batch_size=4), "a", "b", "c")
    assert capacity(state) == 2


def test_staleness_two_version_zero_batch_four_gives_twelve():
    assert capacity(started(max_concurrent=100, batch_size=4, max_staleness=2)) == 12


def test_staleness_two_version_five_batch_four_gives_thirty_two():
    state = apply(started(max_concurrent=100, batch_size=4, max_staleness=2), Version(5))
    assert capacity(state) == 32


def test_staleness_counts_accepted_and_running():
    state = admitted(started(max_concurrent=100, batch_size=4, max_staleness=2), *"abcde")
    state = fold([Accepted("a"), Accepted("b")], state)
    assert capacity(state) == 12 - 5
    state = apply(state, Consumed(("a", "b")))  # consumed still counts until the version moves
    assert capacity(state) == 12 - 5


def test_all_rejected_restores_full_capacity():
    base = started(max_concurrent=6, batch_size=2, max_staleness=1)
    state = admitted(base, *"abcd")
    assert capacity(state) == 0
    state = fold([Rejected(r, "error") for r in "abcd"], state)
    assert capacity(state) == capacity(base) == 4


def test_unbounded_staleness_drops_the_second_term():
    state = admitted(started(max_concurrent=3, batch_size=1), "a")
    state = fold([Accepted("a")], state)
    assert capacity(state) == 3


def test_pause_means_zero_and_refuses_submissions():
    state = fold([Paused(), Enqueued("a")], started())
    assert capacity(state) == 0
    with pytest.raises(IllegalTransition, match="paused"):
        apply(state, Submitted("a", 0))
    assert capacity(apply(state, Unpaused())) == 8


def test_dp_size_divides_the_limits():
    state = started(max_concurrent=10, batch_size=8, max_staleness=0, dp_size=4)
    assert capacity(state) == min(10 // 4, (0 + 0 + 1) * (8 // 4))


def test_submission_beyond_capacity_is_refused():
    state = admitted(started(max_concurrent=2, batch_size=4), "a", "b")
    state = apply(state, Enqueued("c"))
    with pytest.raises(IllegalTransition, match="no capacity"):
        apply(state, Submitted("c", 0))


# --- capacity recovery ----------------------------------------------------------------------------


@pytest.mark.parametrize("end", [Rejected("x", "error"), Rejected("x", "lost"), Filtered("x")])
def test_a_closed_rollout_leaves_capacity_as_if_never_admitted(end):
    base = admitted(started(max_concurrent=4, batch_size=2, max_staleness=1), "a")
    with_x = apply(admitted(base, "x"), end)
    assert capacity(with_x) == capacity(base)


def test_filtering_a_ready_rollout_gives_its_capacity_back():
    base = admitted(started(max_concurrent=4, batch_size=2, max_staleness=0), "a")
    state = fold([Accepted("a"), Enqueued("x"), Submitted("x", 0), Accepted("x")], base)
    assert capacity(state) == 0
    assert capacity(apply(state, Filtered("x"))) == capacity(apply(base, Accepted("a")))


# --- the table ------------------------------------------------------------------------------------

EVENT_FOR = {
    "enqueued": lambda r: Enqueued(r),
    "submitted": lambda r: Submitted(r, 0),
    "segment": lambda r: Segment(r, 0, 5),
    "interrupted": lambda r: Interrupted(r),
    "resumed": lambda r: Resumed(r, 0),
    "accepted": lambda r: Accepted(r),
    "rejected": lambda r: Rejected(r, "error"),
    "filtered": lambda r: Filtered(r),
    "recomputed": lambda r: Recomputed(r, 0),
    "consumed": lambda r: Consumed((r,)),
    "interrupted_batch": lambda r: InterruptedBatch((r,), (5,), 0),
    "resumed_batch": lambda r: ResumedBatch((r,), 0),
}

REACH = {  # events that bring a fresh rollout "x" to each live status
    "unknown": [],
    "pending": [Enqueued("x")],
    "running": [Enqueued("x"), Submitted("x", 0)],
    "interrupted": [Enqueued("x"), Submitted("x", 0), Interrupted("x")],
    "ready": [Enqueued("x"), Submitted("x", 0), Accepted("x")],
}

# The lifecycle of DESIGN.md and docs/ledger.md, written out here by status name and
# independently of engine.core.table: event -> {from: to} ("unknown" is an id not live).
LIFECYCLE = {
    "enqueued": {"unknown": "pending"},
    "submitted": {"pending": "running"},
    "segment": {"running": "running"},
    "interrupted": {"running": "interrupted"},
    "resumed": {"interrupted": "running"},
    "interrupted_batch": {"running": "interrupted"},
    "resumed_batch": {"interrupted": "running"},
    "accepted": {"running": "ready"},
    "rejected": {"running": "rejected", "interrupted": "rejected"},
    "filtered": {"running": "filtered", "ready": "filtered"},
    "recomputed": {"ready": "ready"},
    "consumed": {"ready": "consumed"},
}


def test_the_table_is_the_documented_lifecycle():
    table = {kind: {status_name(s): STATUS_NAMES[t] for s, t in row.items()} for kind, row in TRANSITIONS.items()}
    assert table == LIFECYCLE


def test_the_table_has_a_row_for_every_event_about_rollouts_and_guards_for_every_event():
    about_rollouts = {cls.type for cls in EVENT_TYPES if {"rollout", "rollouts"} & set(cls._fields)}
    assert set(TRANSITIONS) == about_rollouts == set(EVENT_FOR)
    assert set(GUARDS) == {cls.type for cls in EVENT_TYPES}


@pytest.mark.parametrize("status, kind", list(itertools.product(REACH, EVENT_FOR)))
def test_every_pair_follows_the_lifecycle(status, kind):
    state = fold(REACH[status], started())
    event = EVENT_FOR[kind]("x")
    target = LIFECYCLE[kind].get(status)
    if target is None:
        with pytest.raises(IllegalTransition) as info:
            apply(state, event)
        assert "'x'" in str(info.value) and f"({status})" in str(info.value) and repr(kind) in str(info.value)
    else:
        after = apply(state, event)
        assert after.status_of("x") == (target if target in ("pending", "running", "interrupted", "ready") else "unknown")
        index = STATUS_NAMES.index(target)
        assert after.counts[index] == state.counts[index] + (0 if target == status else 1)


def _at(*events, **config):
    """A started run (``config``) after ``events``, with "a" running and "b" interrupted."""
    return fold([*events], fold([Enqueued("a"), Enqueued("b"), Submitted("a", 0), Submitted("b", 0), Interrupted("b")], started(**config)))


# Every guard of engine.core.table's GUARDS, tripped once: (guard, state, event, the
# refusal's reason, the rollout it names or None for the ledger, that rollout's status).
GUARD_CASES = [
    ("first_start", started(), RunStarted(Config(1, 1)), "the run has already started", None, None),
    ("config_is_a_config", EMPTY, RunStarted({"max_concurrent": 1}), "config must be a Config", None, None),  # type: ignore[arg-type]
    ("started", EMPTY, Enqueued("a"), "the run has not started", None, None),
    ("started", EMPTY, Submitted("a", 0), "the run has not started", None, None),
    ("started", EMPTY, Version(1), "the run has not started", None, None),
    ("unpause_only_when_paused", _at(), Unpaused(), "generation is not paused", None, None),
    ("not_paused_yet", _at(Paused()), Paused(), "generation is already paused", None, None),
    ("version_increases", _at(Version(2)), Version(1), "version must increase: 1 after 2", None, None),
    ("checkpoint_not_ahead", _at(), Checkpoint(1, "w.pt"), "checkpoint version 1 is ahead of the current version 0", None, None),
    ("checkpoint_not_ahead", _at(), Checkpoint(-1, "w.pt"), "checkpoint version -1 is negative", None, None),
    ("names_each_once", _at(), ResumedBatch((), 0), "a batch resumption must name at least one rollout", None, None),
    ("one_count_per_rollout", _at(), InterruptedBatch(("a",), (1, 2), 0), "1 rollouts but 2 token counts", None, None),
    ("retry_ids", _at(), Enqueued("q#2"), "reserved for retries", "q#2", "unknown"),
    ("retry_ids", _at(), Enqueued("q", "q", 0), "attempt must be at least 1, got 0", "q", "unknown"),
    ("may_start", _at(Enqueued("c"), Paused()), Submitted("c", 0), "generation is paused", "c", "pending"),
    ("may_start", _at(Enqueued("c")), Submitted("c", 1), "version 1 is not between 0 and the current version 0", "c", "pending"),
    ("may_start", _at(Enqueued("c"), max_concurrent=2), Submitted("c", 0), "no capacity", "c", "pending"),
    ("segment_in_window", _at(), Segment("a", 1, 5), "segment version 1 must be between the rollout's last version 0", "a", "running"),
    ("segment_in_window", _at(), Segment("a", 0, -5), "tokens must not be negative, got -5", "a", "running"),
    ("resume_in_window", _at(), Resumed("b", 3), "resume version 3 must be between the rollout's last version 0", "b", "interrupted"),
    (
        "recomputed_in_window",
        _at(Accepted("a"), Version(1)),
        Recomputed("a", 2),
        "recomputed version 2 must be between the rollout's version 0 and the current version 1",
        "a",
        "ready",
    ),
]


@pytest.mark.parametrize("guard, state, event, reason, rollout, status", GUARD_CASES)
def test_every_guard_refuses_with_its_reason(guard, state, event, reason, rollout, status):
    with pytest.raises(IllegalTransition) as info:
        apply(state, event)
    assert reason in info.value.reason
    assert (info.value.rollout, info.value.status) == (rollout, status)
    where = "ledger" if rollout is None else f"rollout {rollout!r} ({status})"
    assert str(info.value).startswith(f"illegal {event.type!r} for {where}: ")


def test_every_guard_of_the_table_is_tripped_above():
    named = {guard.__name__ for rules in GUARDS.values() for guard in (*rules.ledger, rules.rollout) if guard is not None}
    assert named == {case[0] for case in GUARD_CASES}


def test_an_illegal_event_leaves_the_state_unchanged():
    state = admitted(started(), "a")
    frozen = (state.counts, dict(state.rollouts), state.events)
    with pytest.raises(IllegalTransition):
        apply(state, Consumed(("a",)))
    assert (state.counts, dict(state.rollouts), state.events) == frozen


def test_consumed_is_all_or_nothing():
    state = fold([Accepted("a")], admitted(started(), "a", "b"))
    with pytest.raises(IllegalTransition, match="'b'"):
        apply(state, Consumed(("a", "b")))
    with pytest.raises(IllegalTransition, match="twice"):
        apply(state, Consumed(("a", "a")))


def test_duplicate_and_unknown_rollouts():
    state = admitted(started(), "a")
    with pytest.raises(IllegalTransition, match="duplicate"):
        apply(state, Enqueued("a"))
    with pytest.raises(IllegalTransition, match="unknown rollout"):
        apply(state, Accepted("zzz"))


def test_nothing_before_the_run_starts_and_only_one_start():
    with pytest.raises(IllegalTransition, match="not started"):
        apply(EMPTY, Enqueued("a"))
    with pytest.raises(IllegalTransition, match="already started"):
        apply(started(), RunStarted(Config(1, 1)))


def test_versions_only_increase_and_segments_stay_within_them():
    state = apply(started(), Version(2))
    with pytest.raises(IllegalTransition, match="must increase"):
        apply(state, Version(2))
    state = admitted(state, "a")
    with pytest.raises(IllegalTransition, match="segment version 3"):
        apply(state, Segment("a", 3, 10))
    with pytest.raises(IllegalTransition, match="between 0 and the current version"):
        apply(apply(state, Enqueued("b")), Submitted("b", 5))


def test_partial_rollout_tracks_head_and_tail_versions():
    state = admitted(started(), "a")
    state = fold([Segment("a", 0, 10), Interrupted("a"), Version(1), Resumed("a", 1), Segment("a", 1, 7)], state)
    record = state.rollouts["a"]
    assert (record.head_version, record.tail_version, record.tokens) == (0, 1, 17)
    assert state.running == 1


def _without_event_count(state):
    """The state less what counts events (the event counter, and ``order``, which only ranks)."""
    records = {rollout: record._replace(order=0) for rollout, record in state.rollouts.items()}
    return state.counts, state.version, records


def test_a_batch_interruption_and_resumption_equal_their_events_one_rollout_at_a_time():
    state = admitted(started(max_concurrent=4, batch_size=2), "a", "b", "c")
    one_by_one = fold([Segment("a", 0, 10), Interrupted("a"), Segment("b", 0, 0), Interrupted("b"), Version(1), Resumed("a", 1), Resumed("b", 1)], state)
    batched = fold([InterruptedBatch(("a", "b"), (10, 0), 0), Version(1), ResumedBatch(("a", "b"), 1)], state)
    assert _without_event_count(batched) == _without_event_count(one_by_one)
    assert batched.events == state.events + 3
    assert batched.rollouts["a"][3:7] == (0, 1, None, 10)  # head, tail, recomputed, tokens
    assert batched.status_of("c") == "running"
    between = fold([InterruptedBatch(("a", "b"), (10, 0), 0)], state)
    assert between.interrupted == 2 and between.running == 3  # interrupted rollouts keep their slots


@pytest.mark.parametrize(
    "event, words",
    [
        (InterruptedBatch(("a", "zzz"), (1, 1), 0), "'zzz' (unknown)"),
        (InterruptedBatch(("a", "b"), (1,), 0), "2 rollouts but 1 token counts"),
        (InterruptedBatch(("a", "a"), (1, 1), 0), "names a rollout twice"),
        (InterruptedBatch((), (), 0), "at least one rollout"),
        (InterruptedBatch(("a", "b"), (1, -1), 0), "'b' (running): tokens must not be negative"),
        (InterruptedBatch(("a",), (1,), 1), "segment version 1 must be between"),
        (ResumedBatch(("a",), 0), "'a' (running): allowed only from interrupted"),
    ],
)
def test_a_batch_event_is_all_or_nothing_and_names_the_bad_rollout(event, words):
    state = admitted(started(max_concurrent=4, batch_size=2), "a", "b")
    with pytest.raises(IllegalTransition) as info:
        apply(state, event)
    assert words in str(info.value)
    folder = Folder(state)
    with pytest.raises(IllegalTransition):
        folder.apply(event)
    assert folder.state == state  # nothing of it folded, not even the rollouts before the bad one


def test_a_batch_resumption_checks_every_version_first():
    state = fold([InterruptedBatch(("a", "b"), (3, 4), 0), Version(1)], admitted(started(max_concurrent=4, batch_size=2), "a", "b"))
    with pytest.raises(IllegalTransition, match="resume version 2 must be between"):
        apply(state, ResumedBatch(("a", "b"), 2))
    assert apply(state, ResumedBatch(("b", "a"), 1)).counts == fold([Resumed("a", 1), Resumed("b", 1)], state).counts


def test_finished_rollouts_leave_only_counters():
    state = started(max_concurrent=4, batch_size=2)
    for i in range(50):
        state = fold([Enqueued(f"r{i}"), Submitted(f"r{i}", state.version), Accepted(f"r{i}"), Consumed((f"r{i}",))], state)
    assert len(state.rollouts) == 0 and state.consumed == 50 and state.accepted == 50


def test_apply_never_mutates_its_input():
    state = admitted(started(), "a")
    rollouts, counts = dict(state.rollouts), state.counts
    apply(state, Accepted("a"))
    assert dict(state.rollouts) == rollouts and state.counts == counts


def test_fold_equals_apply_one_by_one_and_folder():
    events = [RunStarted(Config(4, 2, 1)), Enqueued("a"), Submitted("a", 0), Accepted("a"), Enqueued("b"), Submitted("b", 0)]
    one_by_one = EMPTY
    folder = Folder()
    for event in events:
        one_by_one = apply(one_by_one, event)
        folder.apply(event)
        assert folder.state == one_by_one
    assert fold(events) == one_by_one


def test_folder_keeps_its_state_after_a_refusal():
    folder = Folder(admitted(started(), "a"))
    before = folder.state
    with pytest.raises(IllegalTransition):
        folder.apply(Consumed(("a",)))
    assert folder.state == before
    folder.apply(Accepted("a"))
    assert folder.state.ready == 1


def test_folder_reads_match_its_state():
    folder = Folder(admitted(started(max_staleness=1), "a", "b"))
    for event in (Accepted("a"), Enqueued("c"), Version(1), Paused()):
        folder.apply(event)
        state = folder.state
        assert (folder.config, folder.version, folder.paused) == (state.config, state.version, state.paused)
        assert [folder.count(status) for status in range(len(STATUS_NAMES))] == list(state.counts)
        assert all(folder.record(r) == state.rollouts.get(r) for r in ("a", "b", "c", "zzz"))


def test_folder_extend_folds_each_event_in_turn():
    events = [Accepted("a"), Enqueued("c"), Version(1)]
    one_by_one, extended = Folder(admitted(started(), "a", "b")), Folder(admitted(started(), "a", "b"))
    for event in events:
        one_by_one.apply(event)
    extended.extend(events)
    assert extended.state == one_by_one.state
    with pytest.raises(IllegalTransition):
        extended.extend([Accepted("b"), Accepted("zzz"), Accepted("c")])
    assert extended.state == apply(one_by_one.state, Accepted("b"))  # the events before the refused one stay


def test_non_events_are_refused():
    with pytest.raises(TypeError, match="not a ledger event"):
        apply(started(), ("accepted", "a"))  # type: ignore[arg-type]


def test_retry_ids_are_reserved():
    with pytest.raises(IllegalTransition, match="reserved for retries"):
        apply(started(), Enqueued("q#2"))
    with pytest.raises(IllegalTransition, match="must be named"):
        apply(started(), Enqueued("q", "q", 2))
    assert apply(started(), Enqueued("q#1")).pending == 1
    assert apply(started(), Enqueued("q#3", "q", 3)).pending == 1


# --- the ready queue ------------------------------------------------------------------


def _queue_by_scan(state):
    """The ready rollouts in batch order, found the slow way: every live record, sorted."""
    ready = [(record.head_version, record.order, rollout) for rollout, record in state.rollouts.items() if record.status == READY]
    return [rollout for _, _, rollout in sorted(ready)]


def test_the_ready_queue_orders_by_start_version_then_acceptance():
    state = admitted(started(max_concurrent=8), "old")
    state = fold([Version(1)], state)
    state = admitted(state, "new1", "new2", "new3")
    state = fold([Accepted("new2"), Accepted("old"), Accepted("new1"), Accepted("new3"), Filtered("new1")], state)
    assert list(state.queue.rollouts()) == ["old", "new2", "new3"] == _queue_by_scan(state)
    assert state.queue.heads == (0, 1) and list(state.queue.group(1)) == ["new2", "new3"]
    assert [rollout for rollout, _ in ready_rollouts(state)] == ["old", "new2", "new3"]
    later = fold([Consumed(("old", "new3"))], state)
    assert list(later.queue.rollouts()) == ["new2"] and later.queue.heads == (1,)
    assert list(state.queue.rollouts()) == ["old", "new2", "new3"]  # the earlier state's queue is its own


@pytest.mark.parametrize("in_order", [False, True])
def test_the_ready_queue_and_the_flight_count_match_a_scan_after_every_event_of_a_mixed_run(in_order):
    events = mixed_log(6000, seed=3, in_flight=32, batch_size=8, in_order=in_order)
    folder, state = Folder(), EMPTY
    for i, event in enumerate(events):
        folder.apply(event)
        state = apply(state, event)
        if i % 7 == 0:  # a snapshot now and then, as a shell takes them
            assert list(folder.state.queue.rollouts()) == _queue_by_scan(folder.state)
        assert list(state.queue.rollouts()) == _queue_by_scan(state)
        assert state.in_flight == (in_flight_of(state.rollouts.items()) if in_order else ())
    assert folder.state == state == fold(events)
    assert fold(events[3000:], fold(events[:3000])) == state
    assert state.queue == queue_of(state.rollouts.items())
