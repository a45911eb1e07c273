import inspect
import re
from pathlib import Path
from typing import Annotated, NamedTuple

import pytest

import engine.core.events as events_module
from engine.core.config import Config
from engine.core.events import (
    BY_TYPE,
    EVENT_TYPES,
    Accepted,
    Checkpoint,
    Consumed,
    Enqueued,
    EventError,
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
    Stage,
    Submitted,
    Unpaused,
    Version,
    from_json,
    to_json,
)
from engine.core.schema import Column, SchemaError, field_specs

ONE_OF_EACH = [
    RunStarted(Config(8, 4, 2, "strict", "requeue", 2), t=0.5),
    Enqueued("r1"),
    Enqueued("p#2", "p", 2, t=1.0),
    Submitted("r1", 0),
    Segment("r1", 0, 37, t=2.25),
    Interrupted("r1"),
    Resumed("r1", 1),
    Resumed("r1"),
    Unpaused(t=4.0),
    Accepted("r1"),
    Rejected("r2", "timeout"),
    Filtered("r3"),
    Consumed(("r1", "r4")),
    Version(1),
    Paused(),
    Recomputed("r4", 1),
    Checkpoint(1, "ckpt/1.pt"),
    Stage("rlhf/sft", "finished", "loss=0.1"),
    InterruptedBatch(("r5", "r6"), (12, 0), 1, t=3.0),
    ResumedBatch(("r5", "r6"), 2),
]


def documented_types() -> list[str]:
    """The event types the event table of docs/ledger.md lists (its first column)."""
    text = (Path(__file__).parents[1] / "docs" / "ledger.md").read_text()
    table = text.split("| event | JSON fields | SQLite columns |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)


def declared_event_classes() -> set[type]:
    """Every class of engine.core.events that declares an event (a tuple type with a type name)."""
    return {
        cls for cls in vars(events_module).values()
        if inspect.isclass(cls) and issubclass(cls, tuple) and isinstance(getattr(cls, "type", None), str)
    }


def test_every_type_is_covered():
    """ONE_OF_EACH holds one event of each documented type, and every class declared in
    engine.core.events is in the Event union that the codecs are built from."""
    covered = [e.type for e in ONE_OF_EACH]
    assert sorted(set(covered)) == sorted(documented_types())
    assert declared_event_classes() == set(EVENT_TYPES) == {type(e) for e in ONE_OF_EACH}
    assert list(BY_TYPE) == documented_types()


def test_the_coverage_check_sees_a_missing_type():
    """The check above is not circular: dropping a type from ONE_OF_EACH breaks it."""
    without_stage = {e.type for e in ONE_OF_EACH if e.type != "stage"}
    assert without_stage != set(documented_types())


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: e.type)
def test_json_round_trip_is_lossless(event):
    assert from_json(to_json(event)) == event


def test_design_examples_parse():
    assert from_json({"type": "segment", "rollout": "r1", "version": 0, "tokens": 37}) == Segment("r1", 0, 37)
    assert from_json({"type": "filtered", "rollout": "r3", "reason": "stale"}) == Filtered("r3", "stale")
    assert from_json({"type": "unpaused"}) == Unpaused()
    batch = {"type": "interrupted_batch", "rollouts": ["r1", "r2"], "tokens": [37, 5], "version": 0}
    assert from_json(batch) == InterruptedBatch(("r1", "r2"), (37, 5), 0)
    assert to_json(ResumedBatch(("r1", "r2"), 1)) == {"type": "resumed_batch", "rollouts": ["r1", "r2"], "version": 1}


def test_equality_includes_the_type():
    assert Accepted("r1") != Interrupted("r1")
    assert len({Accepted("r1"), Interrupted("r1")}) == 2


def test_events_are_immutable():
    with pytest.raises(AttributeError):
        Accepted("r1").rollout = "r2"  # type: ignore[misc]


@pytest.mark.parametrize(
    "obj, words",
    [
        ({"type": "nope"}, "unknown event type 'nope'"),
        ({"type": "submitted", "rollout": "r1"}, "missing field 'version'"),
        ({"type": "submitted", "rollout": "r1", "version": "0"}, "'version' must be an integer"),
        ({"type": "segment", "rollout": "r1", "version": 0, "tokens": True}, "'tokens' must be an integer"),
        ({"type": "rejected", "rollout": "r2", "reason": "bored"}, "reason must be one of"),
        ({"type": "accepted", "rollout": "r1", "colour": 1}, "unknown field(s) colour"),
        ({"type": "interrupted_batch", "rollouts": ["r1"], "tokens": [1.5], "version": 0}, "'tokens' must be a list of integers"),
        ({"type": "interrupted_batch", "rollouts": ["r1"], "tokens": 3, "version": 0}, "'tokens' must be a list"),
        ({"type": "resumed_batch", "rollouts": "r1", "version": 0}, "'rollouts' must be a list"),
        ({"type": "run_started", "config": {"batch_size": 4}}, "'max_concurrent': is required"),
        ({"type": "run_started", "config": [8, 4]}, "field 'config' must be a JSON object"),
        ({"type": "segment", "rollout": "r1", "version": 0}, "event 'segment' (rollout 'r1'): missing field 'tokens'"),
        ({"type": "consumed", "rollouts": ["r1", 2]}, "'rollouts' must be a list of strings"),
        ({"type": "filtered", "rollout": "r3", "reason": "old"}, "reason must be one of stale, got 'old'"),
        ({"type": "stage", "path": "a/b", "phase": "dreaming"}, "phase must be one of started, finished, failed, skipped"),
        ({"type": "resumed", "rollout": 7, "version": 1}, "field 'rollout' must be a string, got 7"),
        ({"type": "resumed", "version": 1}, "'resumed' without 'rollout' reads as 'unpaused', which has no field 'version'"),
        ({"type": "unpaused", "rollout": "r1"}, "unknown field(s) rollout"),
        ({"type": "version", "version": 2, "t": "noon"}, "field 't' must be an integer or a number, got 'noon'"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_json_names_the_field(obj, words):
    with pytest.raises((EventError, ValueError), match=None) as info:
        from_json(obj)
    assert words in str(info.value)


def test_a_resumed_without_rollout_is_the_old_spelling_of_unpaused():
    """Schemas 1 and 2 wrote the un-pause as a ``resumed`` without a rollout: it reads as
    ``unpaused`` and is written in the new spelling."""
    old = from_json({"type": "resumed", "t": 3})
    assert old == Unpaused(3.0) and type(old) is Unpaused
    assert to_json(old) == {"type": "unpaused", "t": 3.0}
    assert from_json({"type": "resumed", "rollout": None, "version": None}) == Unpaused()


def test_resumed_always_names_a_rollout():
    assert Resumed("r1") == Resumed("r1", None, None) and Resumed("r1").rollout == "r1"
    with pytest.raises(TypeError, match="rollout"):
        Resumed()  # the un-pause is Unpaused() since schema 3
    with pytest.raises(TypeError, match="rollout"):
        Resumed(version=3)
    assert [s.name for s in field_specs(Resumed) if not s.optional] == ["rollout"]


def test_json_leaves_out_defaults_but_writes_reasons():
    assert to_json(Enqueued("r1")) == {"type": "enqueued", "rollout": "r1"}
    assert to_json(Enqueued("r1", "p", 2, 1.5)) == {"type": "enqueued", "rollout": "r1", "prompt": "p", "attempt": 2, "t": 1.5}
    assert to_json(Rejected("r1")) == {"type": "rejected", "rollout": "r1", "reason": "none"}
    assert to_json(Filtered("r1")) == {"type": "filtered", "rollout": "r1", "reason": "stale"}
    assert to_json(Resumed("r1")) == {"type": "resumed", "rollout": "r1"}
    assert list(to_json(Stage("a", "started", "x", 1.0))) == ["type", "path", "phase", "detail", "t"]
    assert from_json({"type": "enqueued", "rollout": "r1", "attempt": None}) == Enqueued("r1")  # null is unset


def test_a_field_without_a_kind_and_a_column_is_refused():
    class Plain(NamedTuple):
        rollout: str
        t: Annotated[float | None, Column.T] = None
        type = "plain"

    class TwoInOneColumn(NamedTuple):
        rollout: Annotated[str, Column.ROLLOUT]
        prompt: Annotated[str, Column.ROLLOUT]
        t: Annotated[float | None, Column.T] = None
        type = "two"

    class WrongKind(NamedTuple):
        version: Annotated[str, Column.VERSION]
        t: Annotated[float | None, Column.T] = None
        type = "wrong"

    with pytest.raises(SchemaError, match="Plain.rollout: annotate it"):
        field_specs(Plain)
    with pytest.raises(SchemaError, match="holds two fields"):
        field_specs(TwoInOneColumn)
    with pytest.raises(SchemaError, match="column version holds integers"):
        field_specs(WrongKind)
