"""Counterexamples to the lifecycle's rules in the ledger core, found while building
the property suite (the reference model keeps every id it has seen), kept as tests.

Each is marked ``xfail(strict=True)`` until the core is fixed: the test then passes,
the strict xfail turns red, and the mark comes off.
"""

from __future__ import annotations

import pytest

from engine import policies, reducer
from engine.config import Config
from engine.events import Enqueued, Rejected, RunStarted, Submitted, Version
from engine.ledger import Ledger
from engine.reducer import fold

REQUEUE = Config(max_concurrent=4, batch_size=2, max_staleness=0, policy="strict", on_stale="requeue")


@pytest.mark.xfail(
    strict=True,
    raises=reducer.IllegalTransition,
    reason="policies.retry names a new attempt '<prompt>#<attempt>', so two rollouts of one prompt "
    "requeue under the same id and the reducer refuses the second as a duplicate",
)
def test_stale_rollouts_sharing_a_prompt_are_both_requeued() -> None:
    state = fold([RunStarted(REQUEUE), Enqueued("a", "q"), Enqueued("b", "q"), Submitted("a", 0), Submitted("b", 0), Version(1)])
    state = fold(policies.on_complete(state, "a"), state)
    state = fold(policies.on_complete(state, "b"), state)  # IllegalTransition: duplicate rollout id 'q#2'
    assert state.pending == 2


@pytest.mark.xfail(
    strict=True,
    raises=reducer.IllegalTransition,
    reason="Ledger.resume(requeue=True) requeues every lost rollout through policies.retry; two in "
    "flight with one prompt collide on '<prompt>#2' and the resume itself fails",
)
def test_resume_requeues_every_lost_rollout_of_a_shared_prompt(tmp_path) -> None:
    path = tmp_path / "run.sqlite"
    with Ledger(REQUEUE, path=path) as ledger:
        ledger.append(Enqueued("a", "q"), Enqueued("b", "q"), Submitted("a", 0), Submitted("b", 0))
    resumed = Ledger.resume(path, requeue=True)
    resumed.close()
    assert (resumed.state.rejected, resumed.state.pending) == (2, 2)


@pytest.mark.xfail(
    strict=True,
    raises=pytest.fail.Exception,
    reason="the reducer forgets finished rollouts, so an 'enqueued' of a finished id is taken and the "
    "id is then counted in two statuses (rejected and pending)",
)
def test_a_finished_rollout_id_is_not_enqueued_again() -> None:
    state = fold([RunStarted(REQUEUE), Enqueued("r1"), Submitted("r1", 0), Rejected("r1", "error")])
    with pytest.raises(reducer.IllegalTransition, match="'r1'"):
        reducer.apply(state, Enqueued("r1"))
