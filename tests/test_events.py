import pytest

from engine.core.config import Config
from engine.core.events import (
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
    Version,
    from_json,
    to_json,
)

ONE_OF_EACH = [
    RunStarted(Config(8, 4, 2, "strict", "requeue", 2), t=0.5),
    Enqueued("r1"),
    Enqueued("p#2", "p", 2, t=1.0),
    Submitted("r1", 0),
    Segment("r1", 0, 37, t=2.25),
    Interrupted("r1"),
    Resumed("r1", 1),
    Resumed(),
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


def test_every_type_is_covered():
    assert {type(e) for e in ONE_OF_EACH} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: e.type)
def test_json_round_trip_is_lossless(event):
    assert from_json(to_json(event)) == event


def test_design_examples_parse():
    assert from_json({"type": "segment", "rollout": "r1", "version": 0, "tokens": 37}) == Segment("r1", 0, 37)
    assert from_json({"type": "filtered", "rollout": "r3", "reason": "stale"}) == Filtered("r3", "stale")
    assert from_json({"type": "resumed"}) == Resumed()
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
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_json_names_the_field(obj, words):
    with pytest.raises((EventError, ValueError), match=None) as info:
        from_json(obj)
    assert words in str(info.value)
