"""Liveness: a full batch forms from reachable states, and a deadlock is reported."""

from __future__ import annotations

import pytest
from hypothesis import given

import properties.profiles  # noqa: F401  (registers and loads the Hypothesis profile)
from engine.core import reducer
from engine.core.config import Config
from engine.core.events import (
    Accepted,
    Consumed,
    Enqueued,
    Paused,
    RunStarted,
    Submitted,
)
from engine.core.reducer import CONSUMED, EMPTY, INTERRUPTED, READY, RUNNING, fold
from properties.invariants import InvariantViolation
from properties.liveness import form_batch, liveness_bound
from properties.strategies import configs


@given(config=configs())
def test_a_fresh_run_forms_a_batch_within_the_bound(config: Config) -> None:
    state, steps = form_batch(reducer.apply(EMPTY, RunStarted(config)))
    assert state.consumed == config.rank_batch_size
    assert steps <= liveness_bound(reducer.apply(EMPTY, RunStarted(config)))


def test_a_paused_run_with_a_batch_in_training_moves_on() -> None:
    config = Config(max_concurrent=2, batch_size=2, max_staleness=0, policy="strict", on_stale="requeue")
    state = fold([RunStarted(config), *(e for r in ("a", "b") for e in (Enqueued(r), Submitted(r, 0), Accepted(r)))])
    state = fold([Consumed(("a", "b")), Paused()], state)
    after, steps = form_batch(state, training=True)
    assert (after.version, after.consumed, after.paused) == (1, 4, False)
    assert steps <= liveness_bound(state)


def test_a_capacity_that_never_recovers_with_the_version_is_a_deadlock(monkeypatch: pytest.MonkeyPatch) -> None:
    def capacity_ignoring_version(state) -> int:  # the staleness budget forgets that the version moved
        config = state.config
        running = state.counts[RUNNING] + state.counts[INTERRUPTED]
        accepted = state.counts[READY] + state.counts[CONSUMED]
        budget = (config.max_staleness + 1) * config.rank_batch_size - (accepted + running)
        return 0 if state.paused else max(0, min(config.rank_max_concurrent - running, budget))

    config = Config(max_concurrent=4, batch_size=1, max_staleness=0, policy="strict")
    state, _ = form_batch(reducer.apply(EMPTY, RunStarted(config)))
    monkeypatch.setattr(reducer, "capacity", capacity_ignoring_version)
    with pytest.raises(InvariantViolation, match="invariant 'liveness' violated: deadlock"):
        form_batch(state, training=True)


def test_a_batch_past_the_bound_is_reported() -> None:
    config = Config(max_concurrent=1, batch_size=3)
    with pytest.raises(InvariantViolation, match="bound 2"):
        form_batch(reducer.apply(EMPTY, RunStarted(config)), bound=2)


def test_the_bound_needs_a_started_run() -> None:
    with pytest.raises(ValueError, match="has not started"):
        liveness_bound(EMPTY)
