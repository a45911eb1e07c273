"""Counterexamples to the lifecycle's rules found by the property suite (whose
reference model keeps every id it has seen), kept as regression tests."""

from __future__ import annotations

import pytest

from engine.core import policies, reducer
from engine.core.config import Config
from engine.core.events import Enqueued, Rejected, RunStarted, Submitted, Version
from engine.core.reducer import fold
from engine.ledger import Ledger

REQUEUE = Config(max_concurrent=4, batch_size=2, max_staleness=0, policy="strict", on_stale="requeue")


def test_stale_rollouts_sharing_a_prompt_are_both_requeued() -> None:
    state = fold([RunStarted(REQUEUE), Enqueued("a", "q"), Enqueued("b", "q"), Submitted("a", 0), Submitted("b", 0), Version(1)])
    state = fold(policies.on_complete(state, "a"), state)
    state = fold(policies.on_complete(state, "b"), state)
    assert state.pending == 2


def test_resume_requeues_every_lost_rollout_of_a_shared_prompt(tmp_path) -> None:
    path = tmp_path / "run.sqlite"
    with Ledger(REQUEUE, path=path) as ledger:
        ledger.append(Enqueued("a", "q"), Enqueued("b", "q"), Submitted("a", 0), Submitted("b", 0))
    resumed = Ledger.resume(path, requeue=True)
    resumed.close()
    assert (resumed.state.rejected, resumed.state.pending) == (2, 2)


def test_a_finished_rollout_id_is_not_enqueued_again(tmp_path) -> None:
    """The folded state forgets finished rollouts to keep its memory flat; the log
    remembers every id, so a ledger with a log refuses the reuse."""
    with Ledger(REQUEUE, path=tmp_path / "run.sqlite") as ledger:
        ledger.append(Enqueued("r1"), Submitted("r1", 0), Rejected("r1", "error"))
        with pytest.raises(reducer.IllegalTransition, match="'r1'"):
            ledger.append(Enqueued("r1"))
        assert ledger.state.counts == fold([RunStarted(REQUEUE), Enqueued("r1"), Submitted("r1", 0), Rejected("r1", "error")]).counts


def test_a_first_attempt_named_like_a_retry_is_requeued_under_a_fresh_id() -> None:
    state = fold([RunStarted(REQUEUE), Enqueued("q#1", "q"), Enqueued("q", "q"), Submitted("q#1", 0), Version(1)])
    state = fold(policies.on_complete(state, "q#1"), state)  # requeued as 'q#1#2', apart from any retry of 'q'
    assert state.filtered == 1 and state.pending == 2 and state.status_of("q#1#2") == "pending"
    with pytest.raises(reducer.IllegalTransition, match="reserved for retries"):
        reducer.apply(state, Enqueued("q#2", "q"))  # a first attempt may not take a retry's name
