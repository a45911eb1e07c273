import pytest

from engine.config import Config
from engine.events import Accepted, Enqueued, Interrupted, Segment, Submitted
from engine.ledger import Ledger
from engine.log import replay
from engine.reducer import IllegalTransition

CONFIG = Config(max_concurrent=4, batch_size=2, max_staleness=1, policy="strict")


def admit(ledger, *rollouts):
    for rollout in rollouts:
        ledger.append(Enqueued(rollout), Submitted(rollout, ledger.state.version))


def test_multi_event_append_is_atomic(tmp_log):
    with Ledger(CONFIG, path=tmp_log) as ledger:
        admit(ledger, "a")
        before = ledger.state
        with pytest.raises(IllegalTransition):
            ledger.append(Accepted("a"), Accepted("a"))
        assert ledger.state == before
    assert replay(tmp_log) == before


def test_a_run_through_the_ledger_replays_exactly(tmp_log):
    with Ledger(CONFIG, path=tmp_log, flush_every=3) as ledger:
        admit(ledger, "a", "b", "c")
        for rollout in "abc":
            ledger.complete(rollout)
        assert ledger.prepare_batch(2) == ("a", "b")
        assert ledger.prepare_batch(2) is None
        ledger.advance_version()
        ledger.advance_version()  # "c" is now two versions behind: strict purges it
        live = ledger.state
    assert live.filtered == 1 and live.consumed == 2
    assert replay(tmp_log) == live


def test_resume_closes_in_flight_rollouts_as_lost(tmp_log):
    ledger = Ledger(CONFIG, path=tmp_log, flush_every=1)
    admit(ledger, "a", "b")
    ledger.append(Segment("b", 0, 5), Interrupted("b"))
    ledger.complete("a")
    ledger.flush()  # the process dies here without closing
    resumed = Ledger.resume(tmp_log)
    assert resumed.state.running == 0 and resumed.state.ready == 1 and resumed.state.rejected == 1
    assert resumed.capacity == Ledger(CONFIG).capacity - 1  # only the accepted one still counts
    resumed.close()


def test_resume_can_requeue(tmp_log):
    ledger = Ledger(CONFIG, path=tmp_log, flush_every=1)
    admit(ledger, "a")
    ledger.flush()
    resumed = Ledger.resume(tmp_log, requeue=True)
    assert resumed.state.status_of("a#2") == "pending" and resumed.state.rejected == 1
    resumed.close()


def test_reopening_with_another_config_is_refused(tmp_log):
    Ledger(CONFIG, path=tmp_log).close()
    with pytest.raises(ValueError, match="was started with"):
        Ledger(Config(max_concurrent=9, batch_size=2), path=tmp_log)


def test_clock_stamps_events_and_check_runs_after_each(tmp_log):
    seen = []
    ledger = Ledger(CONFIG, path=tmp_log, clock=lambda: 42.0, check=lambda state, event: seen.append(event.type))
    admit(ledger, "a")
    ledger.close()
    assert seen == ["run_started", "enqueued", "submitted"]
    from engine.log import EventLog

    with EventLog(tmp_log) as log:
        assert {event.t for event in log.events()} == {42.0}


def test_check_failure_leaves_the_ledger_unchanged():
    def forbid_accept(state, event):
        if event.type == "accepted":
            raise AssertionError("no accepting")

    ledger = Ledger(CONFIG, check=forbid_accept)
    admit(ledger, "a")
    before = ledger.state
    with pytest.raises(AssertionError):
        ledger.append(Accepted("a"))
    assert ledger.state == before


def test_applied_events_log_at_debug_and_refusals_at_warning():
    from structlog.testing import capture_logs

    from engine.logconfig import configure_logging

    configure_logging("debug", force=True)
    ledger = Ledger(CONFIG)
    try:
        with capture_logs() as logs:
            admit(ledger, "a")
            with pytest.raises(IllegalTransition):
                ledger.append(Accepted("zzz"))
    finally:
        configure_logging(force=True)
    assert [(e["log_level"], e["event"]) for e in logs] == [("debug", "applied"), ("debug", "applied"), ("warning", "refused")]
    assert logs[-1]["rollout"] == "zzz" and logs[-1]["ledger_event"] == {"type": "accepted", "rollout": "zzz"}



def test_a_ledger_with_a_log_refuses_the_id_of_a_finished_rollout(tmp_log):
    from engine.events import Rejected

    with Ledger(CONFIG, path=tmp_log, flush_every=1000) as ledger:
        admit(ledger, "a")
        ledger.append(Rejected("a", "error"))
        with pytest.raises(IllegalTransition, match="finished rollout already used it"):  # not yet flushed
            ledger.append(Enqueued("a"))
        ledger.flush()
        with pytest.raises(IllegalTransition, match="finished rollout already used it"):  # from the log
            ledger.append(Enqueued("b"), Enqueued("a"))
        assert ledger.state.pending == 0
    assert Ledger.resume(tmp_log).state.rejected == 1


def test_requeued_attempts_of_a_shared_prompt_do_not_collide(tmp_log):
    config = Config(max_concurrent=4, batch_size=2, max_staleness=0, policy="strict", on_stale="requeue")
    with Ledger(config, path=tmp_log) as ledger:
        ledger.append(Enqueued("a", "q"), Enqueued("b", "q"), Submitted("a", 0), Submitted("b", 0))
    resumed = Ledger.resume(tmp_log, requeue=True)
    assert sorted(r for r, rec in resumed.state.rollouts.items()) == ["a#2", "b#2"]
    assert {rec.prompt for rec in resumed.state.rollouts.values()} == {"q"}
    resumed.close()
