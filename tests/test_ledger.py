import pytest

from engine.core.config import Config
from engine.core.events import (
    Accepted,
    Consumed,
    Enqueued,
    Interrupted,
    Segment,
    Submitted,
)
from engine.core.reducer import IllegalTransition
from engine.ledger import Ledger
from engine.log import replay

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
    ledger.flush()
    ledger._close_log()  # the process dies here without closing: the system lets go of its lock
    resumed = Ledger.resume(tmp_log)
    assert resumed.state.running == 0 and resumed.state.ready == 1 and resumed.state.rejected == 1
    assert resumed.capacity == Ledger(CONFIG).capacity - 1  # only the accepted one still counts
    resumed.close()


def test_resume_can_requeue(tmp_log):
    ledger = Ledger(CONFIG, path=tmp_log, flush_every=1)
    admit(ledger, "a")
    ledger.flush()
    ledger._close_log()  # the process dies
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
    from engine.core.events import Rejected

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


def test_an_id_finished_and_enqueued_again_within_one_append_is_refused(tmp_log):
    from engine.core.events import Rejected

    with Ledger(CONFIG, path=tmp_log) as ledger:
        with pytest.raises(IllegalTransition, match="finished rollout already used it"):
            ledger.append(Enqueued("a"), Submitted("a", 0), Rejected("a", "error"), Enqueued("a"))
        assert ledger.state.pending == ledger.state.rejected == 0
        ledger.append(Enqueued("b"), Submitted("b", 0), Rejected("b", "error"), Enqueued("c"))  # distinct ids go in
        assert ledger.state.rejected == 1 and ledger.state.pending == 1


def test_requeued_attempts_of_a_shared_prompt_do_not_collide(tmp_log):
    config = Config(max_concurrent=4, batch_size=2, max_staleness=0, policy="strict", on_stale="requeue")
    with Ledger(config, path=tmp_log) as ledger:
        ledger.append(Enqueued("a", "q"), Enqueued("b", "q"), Submitted("a", 0), Submitted("b", 0))
    resumed = Ledger.resume(tmp_log, requeue=True)
    assert sorted(r for r, rec in resumed.state.rollouts.items()) == ["a#2", "b#2"]
    assert {rec.prompt for rec in resumed.state.rollouts.values()} == {"q"}
    resumed.close()


def finish(ledger, *rollouts):
    """Admit ``rollouts`` and reject them at once: their ids are finished (forgotten by the state)."""
    from engine.core.events import Rejected

    for rollout in rollouts:
        admit(ledger, rollout)
        ledger.append(Rejected(rollout, "error"))


def test_reused_ids_are_refused_after_the_log_is_reopened(tmp_log):
    with Ledger(CONFIG, path=tmp_log) as ledger:
        finish(ledger, "a", "b")
    for reopen in (lambda: Ledger(path=tmp_log), lambda: Ledger.resume(tmp_log)):
        with reopen() as ledger:
            for used in ("a", "b"):
                with pytest.raises(IllegalTransition, match="finished rollout already used it"):
                    ledger.append(Enqueued(used))
            assert ledger.state.pending == 0
    with Ledger(path=tmp_log) as ledger:
        ledger.append(Enqueued("c"))  # a fresh id still goes in, and then counts as used
        ledger.append(Submitted("c", 0), Accepted("c"))
        ledger.append(Consumed(("c",)))
        with pytest.raises(IllegalTransition, match="finished rollout already used it"):  # not yet flushed
            ledger.append(Enqueued("c"))
    with Ledger(path=tmp_log) as ledger, pytest.raises(IllegalTransition, match="finished rollout already used it"):
        ledger.append(Enqueued("d"), Enqueued("c"))
    assert replay(tmp_log).pending == 0


def test_fresh_ids_are_not_looked_up_in_the_log(tmp_log, monkeypatch):
    from engine.log import EventLog

    asked: list[list[str]] = []
    lookup = EventLog.enqueued_among
    monkeypatch.setattr(EventLog, "enqueued_among", lambda log, ids: asked.append(list(ids)) or lookup(log, ids))
    with Ledger(CONFIG, path=tmp_log) as ledger:
        finish(ledger, "a")
        ledger.flush()
        ledger.append(*(Enqueued(f"n{i}") for i in range(3)))
        assert asked == []  # the filter proves these ids unused
        with pytest.raises(IllegalTransition, match="finished rollout already used it"):
            ledger.append(Enqueued("a"))
        assert asked == [["a"]]  # a used id is settled by the log


def test_a_filter_hit_on_a_fresh_id_is_settled_by_the_log(tmp_log, monkeypatch):
    from engine import ledger as ledger_module

    with Ledger(CONFIG, path=tmp_log) as ledger:
        finish(ledger, "a")
    monkeypatch.setattr(ledger_module._IdFilter, "__contains__", lambda self, rollout: True)  # every id a false hit
    with Ledger(path=tmp_log, flush_every=1000) as ledger:
        ledger.append(Enqueued("b"), Enqueued("c"))
        assert ledger.state.pending == 2
        with pytest.raises(IllegalTransition, match="finished rollout already used it"):
            ledger.append(Enqueued("d"), Enqueued("a"))
        assert ledger.state.pending == 2


def test_the_id_filter_has_no_false_misses():
    from engine.ledger import _IdFilter

    ids = [f"p{i}#{attempt}" for i in range(20_000) for attempt in (1, 2)]
    seen = _IdFilter(ids[::2])
    assert all(rollout in seen for rollout in ids[::2])
    assert sum(rollout in seen for rollout in ids[1::2]) < 20  # about one false hit expected in 20,000
    assert seen.add("fresh#1") is False and seen.add("fresh#1") is True and "fresh#1" in seen


@pytest.mark.parametrize("seed", range(5))
def test_a_ledger_refuses_exactly_the_ids_used_before_across_reopens(tmp_path, seed):
    import random

    rng = random.Random(seed)
    path = tmp_path / f"run{seed}.sqlite"
    used: set[str] = set()
    ledger = Ledger(CONFIG, path=path, flush_every=rng.choice([1, 3, 1000]))
    for _ in range(60):
        action = rng.random()
        if action < 0.1:
            ledger.close()
            ledger = Ledger(path=path, flush_every=rng.choice([1, 3, 1000]))
        elif action < 0.2:
            ledger.flush()
        else:
            rollout = rng.choice("abcdefghijklmnopqrstuvwxyz")
            if rollout in used:
                with pytest.raises(IllegalTransition, match="finished rollout already used it"):
                    ledger.append(Enqueued(rollout))
            else:
                finish(ledger, rollout)
                used.add(rollout)
    ledger.close()
    assert replay(path).rejected == len(used)


def test_scalar_reads_match_the_state(tmp_log):
    from engine.core.reducer import PENDING, READY, STATUS_NAMES

    with Ledger(CONFIG, path=tmp_log) as ledger:
        admit(ledger, "a", "b")
        ledger.complete("a")
        ledger.append(Enqueued("c"))
        ledger.pause()
        state = ledger.state
        assert (ledger.config, ledger.version, ledger.paused) == (state.config, state.version, state.paused) == (CONFIG, 0, True)
        assert [ledger.count(s) for s in range(len(STATUS_NAMES))] == list(state.counts)
        assert ledger.count(PENDING) == 1 and ledger.count(READY) == 1
        assert ledger.record("a") == state.rollouts["a"] and ledger.record("zzz") is None


def test_complete_appends_the_last_segment_first():
    from engine.core.events import Resumed, Version

    config = Config(max_concurrent=4, batch_size=2, max_staleness=4, policy="segment_wise")
    one_call, two_calls = Ledger(config), Ledger(config)
    for ledger in (one_call, two_calls):
        admit(ledger, "a", "b")
        ledger.append(Segment("a", 0, 3), Interrupted("a"), Version(1), Version(2), Resumed("a", 2))
    assert one_call.complete("a", Segment("a", 2, 4)) == (Accepted("a"),)
    two_calls.append(Segment("a", 2, 4))
    assert two_calls.complete("a") == (Accepted("a"),)
    assert one_call.state == two_calls.state and one_call.state.rollouts["a"].tokens == 7
    with pytest.raises(IllegalTransition):  # an illegal last segment: nothing is appended
        one_call.complete("b", Segment("b", 3, 1))
    assert one_call.state.status_of("b") == "running"
