"""The reference model: AReaL's StalenessManager semantics, and the differential
check against the reducer on random event sequences, under both accounting schemes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import properties.profiles  # noqa: F401  (registers and loads the Hypothesis profile)
from engine.core import policies, reducer
from engine.core.config import Config
from engine.core.events import (
    Accepted,
    Consumed,
    Enqueued,
    Event,
    Filtered,
    Interrupted,
    Paused,
    REJECT_REASONS,
    Rejected,
    Resumed,
    RunStarted,
    Submitted,
    Unpaused,
    Version,
)
from engine.core.reducer import EMPTY, INTERRUPTED, PENDING, RUNNING
from properties.reference import SCHEMES, ReferenceLedger, ReferenceRefusal
from properties.strategies import configs


def started(scheme: str = "never_count", **values: object) -> ReferenceLedger:
    model = ReferenceLedger(scheme)
    model.observe(RunStarted(Config(**{"max_concurrent": 4, "batch_size": 2, "max_staleness": 1, **values})))
    return model


def test_capacity_follows_the_staleness_manager_formula() -> None:
    model = started(max_concurrent=8, batch_size=2, max_staleness=1)
    assert model.get_capacity() == min(8 - 0, (1 + 0 + 1) * 2 - 0) == 4
    for rollout in ("a", "b", "c"):
        model.observe(Enqueued(rollout))
        model.observe(Submitted(rollout, 0))
    model.observe(Rejected("c", "error"))
    assert (model.enqueued, model.running, model.accepted, model.rejected) == (0, 2, 0, 1)
    assert model.get_capacity() == 4 - 2
    model.observe(Version(1))
    assert model.get_capacity() == (1 + 1 + 1) * 2 - 2


def test_concurrency_limit_and_unbounded_staleness() -> None:
    model = started(max_concurrent=2, max_staleness=None)
    for rollout in ("a", "b"):
        model.observe(Enqueued(rollout))
        model.observe(Submitted(rollout, 0))
    assert model.get_capacity() == 0
    model.observe(Enqueued("c"))
    with pytest.raises(ReferenceRefusal, match="no capacity"):
        model.observe(Submitted("c", 0))


def test_pause_zeroes_capacity_and_dp_divides_the_limits() -> None:
    model = started(max_concurrent=6, batch_size=4, max_staleness=None, dp_size=2)
    assert model.get_capacity() == 3
    model.observe(Paused())
    assert model.get_capacity() == 0
    model.observe(Unpaused())
    assert model.get_capacity() == 3


def test_filtering_at_completion_frees_the_slot_under_both_schemes() -> None:
    for scheme in SCHEMES:
        model = started(scheme, max_staleness=0, batch_size=1, max_concurrent=4)
        model.observe(Enqueued("a"))
        model.observe(Submitted("a", 0))
        model.observe(Version(1))
        before = model.get_capacity()
        model.observe(Filtered("a"))
        assert (model.running, model.accepted, model.filtered) == (0, 0, 1)
        assert model.get_capacity() == before + 1


def test_purge_from_the_ready_queue_takes_the_sample_back() -> None:
    model = started(max_staleness=0, batch_size=1)
    for event in (Enqueued("a"), Submitted("a", 0)):
        model.observe(event)
    model.observe(Accepted("a"))
    assert model.accepted == 1
    model.observe(Version(1))
    model.observe(Filtered("a"))
    assert (model.accepted, model.count("filtered")) == (0, 1)


def test_an_unknown_scheme_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'sometimes'"):
        ReferenceLedger("sometimes")


def test_illegal_events_are_refused_with_a_reason() -> None:
    model = started()
    assert not model.is_legal(Submitted("ghost", 0))
    with pytest.raises(ReferenceRefusal, match="'ghost' is unknown"):
        model.observe(Submitted("ghost", 0))
    model.observe(Enqueued("a"))
    with pytest.raises(ReferenceRefusal, match="already enqueued"):
        model.observe(Enqueued("a"))
    with pytest.raises(ReferenceRefusal, match="does not increase"):
        model.observe(Version(0))
    with pytest.raises(ReferenceRefusal, match="has not started"):
        ReferenceLedger().observe(Enqueued("a"))


# --- differential: random event sequences through both ---------------------------

#: One random action of a script: what to do and to which rollout (by index).
actions = st.tuples(
    st.sampled_from(("enqueue", "submit", "complete", "reject", "interrupt", "resume", "consume", "version", "purge", "pause")),
    st.integers(0, 7),
    st.sampled_from(REJECT_REASONS),
)


def script_event(state: reducer.State, action: str, index: int, reason: str, fresh: str) -> tuple[Event, ...]:
    """The events one action stands for in ``state``: aimed at a rollout whose status
    suits it when there is one, else at any (then illegal: both must refuse)."""
    wanted = {"submit": PENDING, "complete": RUNNING, "reject": RUNNING, "interrupt": RUNNING, "resume": INTERRUPTED}
    live = sorted(state.rollouts, key=lambda r: state.rollouts[r].order)
    suited = [r for r in live if state.rollouts[r].status == wanted.get(action)] or live or [fresh]
    rollout = suited[index % len(suited)]
    if action == "enqueue":
        return (Enqueued(fresh),)
    if action == "submit":
        if state.paused and index % 2 == 0:  # generation resumes, or the submission is refused
            return (Unpaused(),)
        return (Submitted(rollout, state.version),)
    if action == "complete":
        record = state.rollouts.get(rollout)
        if record is not None and record.status == RUNNING:
            return policies.on_complete(state, rollout)
        return (Filtered(rollout),)
    if action == "reject":
        return (Rejected(rollout, reason),)
    if action == "interrupt":
        return (Interrupted(rollout),)
    if action == "resume":
        return (Resumed(rollout, state.version),)
    if action == "consume":
        size = state.config.rank_batch_size  # type: ignore[union-attr]
        return (Consumed(policies.select_batch(state, size) or (rollout,)),)
    if action == "version":
        return (*policies.recompute_requests(state), Version(state.version + 1))
    if action == "purge":
        return policies.on_version(state)
    return (Unpaused() if state.paused else Paused(),)


@given(config=configs(), script=st.lists(actions, min_size=20, max_size=80))
def test_reducer_and_reference_agree_on_random_scripts(config: Config, script: list) -> None:
    """Legal or not, every event gets the same verdict from both; after every legal one
    the counters, the capacity and each accounting scheme's capacity agree."""
    state = reducer.apply(EMPTY, RunStarted(config))
    models = {scheme: ReferenceLedger(scheme) for scheme in SCHEMES}
    for model in models.values():
        model.observe(RunStarted(config))
    capacities: dict[str, list[int]] = {scheme: [] for scheme in SCHEMES}
    for number, (action, index, reason) in enumerate(script):
        for event in script_event(state, action, index, reason, f"r{number}"):
            legal = models["never_count"].is_legal(event)
            try:
                after = reducer.apply(state, event)
            except reducer.IllegalTransition:
                assert not legal, f"the reducer refused {event!r}, the reference takes it"
                continue
            assert legal, f"the reducer took {event!r}, the reference refuses it"
            state = after
            for scheme, model in models.items():
                model.observe(event)
                capacities[scheme].append(model.get_capacity())
                assert model.get_capacity() == reducer.capacity(state)
                assert (model.running, model.accepted, model.rejected, model.filtered) == (
                    state.running,
                    state.accepted,
                    state.rejected,
                    state.filtered,
                )
                assert model.count("pending") == state.counts[PENDING]
                assert model.count("interrupted") == state.counts[INTERRUPTED]
    assert capacities["decrement"] == capacities["never_count"]
