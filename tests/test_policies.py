import random

import pytest
from conftest import admitted, started

from engine.core import policies
from engine.core.events import (
    Accepted,
    Consumed,
    Enqueued,
    Filtered,
    Interrupted,
    Recomputed,
    Rejected,
    Resumed,
    Segment,
    Submitted,
    Version,
)
from engine.core.reducer import READY, RUNNING, Folder, apply, capacity, fold


def test_admission_never_filters():
    state = admitted(started(max_staleness=0), "a")
    state = apply(state, Version(5))
    assert policies.on_complete(state, "a") == (Accepted("a"),)


def test_strict_filters_at_completion_and_requeues():
    state = admitted(started(max_staleness=1, policy="strict", on_stale="requeue"), "a")
    assert policies.on_complete(apply(state, Version(1)), "a") == (Accepted("a"),)
    late = apply(state, Version(2))
    assert policies.on_complete(late, "a") == (Filtered("a", "stale"), Enqueued("a#2", "a", 2))


def test_strict_purges_the_ready_queue_when_the_version_moves():
    state = fold([Accepted("a"), Accepted("b")], admitted(started(max_staleness=1, policy="strict"), "a", "b"))
    assert policies.on_version(apply(state, Version(1))) == ()
    assert policies.on_version(apply(state, Version(2))) == (Filtered("a"), Filtered("b"))


def test_segment_wise_measures_from_the_tail_until_recomputed():
    state = admitted(started(max_staleness=4, policy="segment_wise"), "a")
    state = fold([Interrupted("a"), Version(1), Resumed("a", 1), Segment("a", 1, 3), Accepted("a"), Version(2)], state)
    assert policies.staleness(state, state.rollouts["a"]) == 1  # tail version 1
    assert policies.on_version(state) == ()
    assert policies.recompute_requests(state) == (Recomputed("a", 2),)
    state = fold([Recomputed("a", 2), Version(3)], state)
    assert policies.staleness(state, state.rollouts["a"]) == 3  # from the head once recomputed
    assert policies.on_version(state) == ()
    assert policies.on_version(fold([Version(5)], state)) == (Filtered("a"),)


def test_segment_wise_without_recompute_allows_one_version():
    state = fold([Accepted("a"), Version(2)], admitted(started(max_staleness=8, policy="segment_wise"), "a"))
    assert policies.on_version(state) == (Filtered("a"),)


def test_select_batch_is_oldest_first_and_skips_stale():
    state = admitted(started(max_concurrent=8, max_staleness=2, policy="strict"), "old")
    state = fold([Version(1)], state)
    state = admitted(state, "new1", "new2")
    state = fold([Accepted("new1"), Accepted("old"), Accepted("new2")], state)
    assert policies.select_batch(state, 2) == ("old", "new1")
    assert policies.select_batch(apply(state, Version(3)), 3) == ("new1", "new2")


def test_in_order_batches_wait_for_the_oldest_rollout_in_flight():
    for in_order, before, after in ((False, ("new1", "new2"), ("old", "new1")), (True, (), ("old", "new1"))):
        state = admitted(started(max_concurrent=8, max_staleness=2, in_order=in_order), "old")
        state = admitted(fold([Version(1)], state), "new1", "new2")
        state = fold([Accepted("new1"), Accepted("new2")], state)
        assert state.in_flight == (((0, 1),) if in_order else ())  # counted in in-order runs only
        assert policies.select_batch(state, 2) == before
        state = fold([Segment("old", 1, 4), Accepted("old")], state)  # the straggler finishes
        assert state.oldest_in_flight is None and state.in_flight == ()
        assert policies.select_batch(state, 2) == after


def test_in_order_batches_take_ready_rollouts_as_old_as_the_oldest_in_flight():
    state = admitted(started(max_concurrent=8, max_staleness=2, in_order=True), "a", "b", "c")
    state = admitted(fold([Accepted("a"), Version(1)], state), "d")
    state = fold([Accepted("d"), Interrupted("b")], state)
    assert state.in_flight == ((0, 2),)  # b (interrupted) and c
    assert policies.select_batch(state, 2) == ("a",)  # d started under version 1; b and c (version 0) fly
    state = fold([Rejected("b", "error"), Accepted("c")], state)
    assert policies.select_batch(state, 3) == ("a", "c", "d")


def test_pending_limit():
    state = started(max_staleness=2, batch_size=4)
    assert policies.pending_limit(state.config) == 12
    assert policies.enqueue_room(fold([Enqueued("a")], state)) == 11
    assert policies.pending_limit(started().config) is None


def test_policies_need_a_started_run():
    from engine.core.reducer import EMPTY

    with pytest.raises(ValueError, match="not started"):
        policies.on_version(EMPTY)


def test_retry_ids_grow_from_the_first_attempt():
    state = admitted(started(max_staleness=0, policy="strict", on_stale="requeue"), "a")
    state = fold([Version(1)], state)
    (_, first) = policies.on_complete(state, "a")
    assert first == Enqueued("a#2", "a", 2)
    state = fold([first, Enqueued("x")], state)
    from engine.core.events import Submitted

    state = fold([Submitted("a#2", 1), Version(2)], state)
    assert policies.on_complete(state, "a#2")[1] == Enqueued("a#3", "a", 3)


def test_completion_from_parts_equals_on_complete():
    state = admitted(started(max_staleness=1, policy="strict", on_stale="requeue"), "a", "b")
    for version in range(4):
        now = fold([Version(v) for v in range(1, version + 1)], state)
        for rollout in ("a", "b"):
            assert policies.completion(now.config, now.version, rollout, now.rollouts.get(rollout)) == policies.on_complete(now, rollout)
    with pytest.raises(KeyError, match="not live"):
        policies.completion(state.config, 0, "zzz", None)
    with pytest.raises(ValueError, match="not started"):
        policies.completion(None, 0, "a", state.rollouts["a"])


def test_room_to_enqueue_equals_enqueue_room():
    for config in ({"max_staleness": 2, "batch_size": 4}, {"max_staleness": None}):
        state = started(**config)
        for n in range(14):
            now = fold([Enqueued(f"r{i}") for i in range(n)], state)
            assert policies.room_to_enqueue(now.config, now.pending) == policies.enqueue_room(now)


def test_admission_batches_are_oldest_first_and_never_skip():
    state = admitted(started(max_concurrent=8, max_staleness=0), "old")
    state = fold([Version(1)], state)
    state = admitted(state, "new1", "new2")
    state = fold([Accepted("new1"), Accepted("old"), Accepted("new2"), Version(9)], state)
    assert policies.select_batch(state, 2) == ("old", "new1")
    assert policies.select_batch(state, 5) == ("old", "new1", "new2")


# --- the ready queue the policies read, against a scan of every live rollout ----------


def _by_scan(state):
    """Ready rollouts and records, oldest first, found by scanning and sorting every live
    record (what the policies did before the state kept a ready queue)."""
    ready = [(rollout, record) for rollout, record in state.rollouts.items() if record.status == READY]
    return sorted(ready, key=lambda item: (item[1].head_version, item[1].order))


def _select_by_scan(state, size):
    return tuple(rollout for rollout, record in _by_scan(state) if not policies.is_stale(state, record))[:size]


def _on_version_by_scan(state):
    events = []
    for rollout, record in _by_scan(state):
        if state.config.policy != "admission" and policies.is_stale(state, record):
            events.append(Filtered(rollout, "stale"))
            if state.config.on_stale == "requeue":
                events.append(policies.retry(rollout, record))
    return tuple(events)


def _recompute_by_scan(state):
    if state.config.policy != "segment_wise":
        return ()
    v = state.version
    return tuple(Recomputed(r, v) for r, rec in _by_scan(state) if rec.recomputed_version is None and rec.tail_version == v - 1)


def _random_run(config, seed, steps):
    """States of a pseudo-random run driven by the policies, with rollouts taken out of
    the middle of the ready queue too (filtered directly, consumed out of order)."""
    rng = random.Random(seed)
    folder = Folder(started(**config))
    born = 0
    for _ in range(steps):
        state = folder.state
        yield state
        running = sorted(r for r, rec in state.rollouts.items() if rec.status == RUNNING)  # sorted: the map's order
        ready = sorted(r for r, rec in state.rollouts.items() if rec.status == READY)  # depends on string hashes
        roll = rng.random()
        if roll < 0.35 and capacity(state) > 0:
            born += 1
            folder.extend([Enqueued(f"r{born}"), Submitted(f"r{born}", rng.randint(max(0, state.version - 2), state.version))])
        elif roll < 0.7 and running:
            rollout = rng.choice(running)
            folder.apply(Segment(rollout, state.version, rng.randint(1, 9)))
            folder.extend(policies.on_complete(folder.state, rollout))
        elif roll < 0.75 and ready:
            folder.apply(Filtered(rng.choice(ready)))
        elif roll < 0.8 and ready:
            folder.apply(Consumed(tuple(rng.sample(ready, rng.randint(1, len(ready))))))
        elif roll < 0.93:
            batch = policies.select_batch(state, rng.randint(1, 4))
            if batch:
                folder.apply(Consumed(batch))
        else:
            folder.extend(policies.recompute_requests(state))
            folder.apply(Version(folder.state.version + 1))
            folder.extend(policies.on_version(folder.state))


@pytest.mark.parametrize("policy", ["admission", "strict", "segment_wise"])
@pytest.mark.parametrize("max_staleness", [0, 2, None])
def test_policies_read_the_ready_queue_in_the_order_of_a_full_scan(policy, max_staleness):
    config = {"max_concurrent": 12, "batch_size": 3, "max_staleness": max_staleness, "policy": policy, "on_stale": "requeue"}
    states = 0
    for state in _random_run(config, seed=len(policy) * 10 + (max_staleness or 7), steps=500):
        for size in (1, 3, 50):
            assert policies.select_batch(state, size) == _select_by_scan(state, size)
        assert policies.on_version(state) == _on_version_by_scan(state)
        assert policies.recompute_requests(state) == _recompute_by_scan(state)
        states += state.ready > 1
    assert states > 10  # the queue held several rollouts often enough to order them
