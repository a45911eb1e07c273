"""Validate before the state advances: an event holding a value the log cannot store
faithfully is refused by ``Ledger.append`` (and every verb) before the fold, naming
the event and the field; neither the state nor the log changes, and later appends work."""

from __future__ import annotations

import math

import pytest

from engine.core.config import Config
from engine.core.events import (
    Checkpoint,
    Consumed,
    Enqueued,
    InterruptedBatch,
    Rejected,
    Segment,
    Stage,
    Submitted,
)
from engine.ledger import Ledger
from engine.log import EventLog, InvalidValue, replay, write_jsonl, read_jsonl

TOO_BIG = 1 << 63
TOO_SMALL = -(1 << 63) - 1
SURROGATE = "r\udc80"

#: (event, the field the error must name, text the error must hold)
BAD = [
    (Segment("r1", TOO_BIG, 5), "version", "64-bit"),
    (Segment("r1", 0, TOO_SMALL), "tokens", "64-bit"),
    (Segment("r1", 0, True), "tokens", "got True"),
    (Segment("r1", 0, 5.0), "tokens", "got 5.0"),
    (Segment("r1", 0, "5"), "tokens", "got '5'"),
    (Segment("r1", 0, 5, t=math.nan), "t", "finite"),
    (Segment("r1", 0, 5, t=math.inf), "t", "finite"),
    (Segment("r1", 0, 5, t=-math.inf), "t", "finite"),
    (Segment("r1", 0, 5, t="now"), "t", "finite number"),
    (Segment("r1", 0, 5, t=TOO_BIG), "t", "finite number"),
    (Segment(SURROGATE, 0, 5), "rollout", "UTF-8"),
    (Segment(None, 0, 5), "rollout", "got None"),
    (Enqueued("r2", prompt="p\ud800"), "prompt", "UTF-8"),
    (Enqueued("r2", attempt=None), "attempt", "got None"),
    (Rejected("r1", "bogus"), "reason", "one of none, should_accept"),
    (Consumed(("r1", 7)), "rollouts", "list of strings"),
    (Consumed(("r1", SURROGATE)), "rollouts", "list of strings"),
    (InterruptedBatch(("r1",), (TOO_BIG,), 0), "tokens", "list of integers"),
    (Checkpoint(0, b"/ckpt"), "path", "got b'/ckpt'"),
    (Stage("a/b", "started", detail="x\udfff"), "detail", "UTF-8"),
]


def _running(path):
    ledger = Ledger(Config(4, 2), path=path, flush_every=1)
    ledger.append(Enqueued("r1"), Submitted("r1", 0))
    return ledger


@pytest.mark.parametrize("event, field, text", BAD, ids=lambda v: repr(v)[:40] if not isinstance(v, str) else v)
def test_a_value_the_log_cannot_hold_is_refused_before_the_fold(tmp_log, event, field, text):
    ledger = _running(tmp_log)
    state, written = ledger.state, replay(tmp_log)
    with pytest.raises(InvalidValue) as info:
        ledger.append(Segment("r1", 0, 3), event)  # all or nothing: the good event before it is not folded either
    assert isinstance(info.value, ValueError)
    assert info.value.field == field and f"event {event.type!r}" in str(info.value) and f"field {field!r}" in str(info.value)
    assert text in str(info.value)
    assert ledger.state == state and replay(tmp_log) == written  # neither the state nor the log moved
    ledger.append(Segment("r1", 0, 3))  # and the ledger goes on
    ledger.close()
    assert replay(tmp_log) == ledger.state


def test_the_verbs_are_checked_too(tmp_log):
    ledger = _running(tmp_log)
    state = ledger.state
    with pytest.raises(InvalidValue, match="'tokens'"):
        ledger.complete("r1", tokens=TOO_BIG)
    with pytest.raises(InvalidValue, match="'t'"):
        ledger.complete("r1", tokens=3, t=math.nan)
    with pytest.raises(InvalidValue, match="'rollout'"):
        ledger.enqueue(SURROGATE)
    assert ledger.state == state
    ledger.complete("r1", tokens=3)
    assert ledger.state.ready == 1
    ledger.close()


def test_a_clock_giving_nan_is_refused_and_the_log_let_go(tmp_log):
    with pytest.raises(InvalidValue, match="event 'run_started': field 't'"):
        Ledger(Config(4, 2), path=tmp_log, clock=lambda: math.nan)
    with Ledger(Config(4, 2), path=tmp_log, clock=lambda: 1.5) as ledger:  # the refused ledger released the log
        ledger.append(Enqueued("r1"))
    assert [event.t for event in EventLog(tmp_log, mode="r").events()] == [1.5, 1.5]


def test_values_at_the_edges_fit_and_read_back_exactly(tmp_log, tmp_path):
    events = [
        Enqueued("r1"),
        Enqueued("ü-∑-𝄞", prompt="prompt 𝄞 ü"),
        Submitted("r1", 0, t=-0.0),
        Segment("r1", 0, (1 << 63) - 1, t=7),
        Segment("r1", 0, -(1 << 63), t=1e300),
        InterruptedBatch(("r1",), ((1 << 63) - 1,), 0, t=0.1 + 0.2),
    ]
    with EventLog(tmp_log) as log:
        log.append(events)
    with EventLog(tmp_log, mode="r") as log:
        back = list(log.events())
    assert back == [*events[:2], Submitted("r1", 0, t=0.0), Segment("r1", 0, (1 << 63) - 1, t=7.0), *events[4:]]
    assert type(back[3].t) is float
    jsonl = tmp_path / "edges.jsonl"
    write_jsonl(back, jsonl)
    assert list(read_jsonl(jsonl)) == back
