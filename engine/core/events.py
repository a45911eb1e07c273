"""Ledger events: immutable records of everything that happens in a run, and the one
declaration of the event schema.

Every event is a small immutable tuple type (fast to build, cheap to fold) whose last
field is ``t`` (seconds, stamped by the shell that emits it; the core never reads a
clock).  Each field is declared once, here, with its JSON kind and the SQLite column
that stores it (see :mod:`engine.core.schema`); ``to_json``/``from_json`` (the JSON
Lines exchange format of DESIGN.md, lossless both ways), the SQLite codec
(:mod:`engine.log.codec`) and the event table of ``docs/ledger.md`` are all derived
from these classes.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Mapping, NamedTuple, Union, get_args

from engine.core.config import Config
from engine.core.schema import Column, OneOf, build_json_codec
from engine.core.schema import EventError as EventError

#: Version of the event format.  Logs written by a newer format are refused.  Schema 2
#: added the batch forms ``interrupted_batch`` and ``resumed_batch``; schema 3 split
#: the un-pause (``unpaused``) from ``resumed``, which now always names a rollout.
#: Logs of schemas 1 and 2 read unchanged (see :data:`LEGACY`).
SCHEMA_VERSION = 3

#: Reasons a running rollout can be rejected.
REJECT_REASONS = ("none", "should_accept", "error", "timeout", "lost")
#: Reasons a rollout can be filtered.
FILTER_REASONS = ("stale",)
#: Phases of a workflow stage event.
STAGE_PHASES = ("started", "finished", "failed", "skipped")

ROLLOUT, VERSION, TOKENS, DATA = Column.ROLLOUT, Column.VERSION, Column.TOKENS, Column.DATA
#: The time stamp every event ends with: seconds, optional, in column ``t``.
Time = Annotated[float | None, Column.T]


class _Event(tuple[Any, ...]):
    """What every event class adds to its fields: its ``type`` name, and equality that
    includes the type (a NamedTuple alone compares as a plain tuple)."""

    __slots__ = ()
    type: ClassVar[str]

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(self)))


class _RunStartedFields(NamedTuple):
    config: Annotated[Config, DATA]
    t: Time = None


class RunStarted(_Event, _RunStartedFields):
    """The run starts with ``config`` (the first event of a log, once)."""

    __slots__ = ()
    type = "run_started"


class _EnqueuedFields(NamedTuple):
    rollout: Annotated[str, ROLLOUT]
    prompt: Annotated[str | None, DATA] = None
    attempt: Annotated[int, TOKENS] = 1
    t: Time = None


class Enqueued(_Event, _EnqueuedFields):
    """Rollout ``rollout`` joins the queue: attempt ``attempt`` of prompt ``prompt``."""

    __slots__ = ()
    type = "enqueued"


class _SubmittedFields(NamedTuple):
    rollout: Annotated[str, ROLLOUT]
    version: Annotated[int, VERSION]
    t: Time = None


class Submitted(_Event, _SubmittedFields):
    """A pending rollout starts generating under weights ``version``."""

    __slots__ = ()
    type = "submitted"


class _SegmentFields(NamedTuple):
    rollout: Annotated[str, ROLLOUT]
    version: Annotated[int, VERSION]
    tokens: Annotated[int, TOKENS]
    t: Time = None


class Segment(_Event, _SegmentFields):
    """A running rollout generated ``tokens`` tokens under weights ``version``."""

    __slots__ = ()
    type = "segment"


class _InterruptedFields(NamedTuple):
    rollout: Annotated[str, ROLLOUT]
    t: Time = None


class Interrupted(_Event, _InterruptedFields):
    """A running rollout stops at a weight update (it may be resumed)."""

    __slots__ = ()
    type = "interrupted"


class _AcceptedFields(NamedTuple):
    rollout: Annotated[str, ROLLOUT]
    t: Time = None


class Accepted(_Event, _AcceptedFields):
    """A finished rollout joins the ready queue."""

    __slots__ = ()
    type = "accepted"


class _RejectedFields(NamedTuple):
    rollout: Annotated[str, ROLLOUT]
    reason: Annotated[str, DATA, OneOf(REJECT_REASONS)] = "none"
    t: Time = None


class Rejected(_Event, _RejectedFields):
    """A running or interrupted rollout ends without a sample, for ``reason``."""

    __slots__ = ()
    type = "rejected"


class _FilteredFields(NamedTuple):
    rollout: Annotated[str, ROLLOUT]
    reason: Annotated[str, DATA, OneOf(FILTER_REASONS)] = "stale"
    t: Time = None


class Filtered(_Event, _FilteredFields):
    """A running or ready rollout is dropped as too stale."""

    __slots__ = ()
    type = "filtered"


class _ConsumedFields(NamedTuple):
    rollouts: Annotated[tuple[str, ...], DATA]
    t: Time = None


class Consumed(_Event, _ConsumedFields):
    """The trainer takes the ready ``rollouts`` as one batch."""

    __slots__ = ()
    type = "consumed"


class _VersionFields(NamedTuple):
    version: Annotated[int, VERSION]
    t: Time = None


class Version(_Event, _VersionFields):
    """The policy's weights move to ``version``."""

    __slots__ = ()
    type = "version"


class _PausedFields(NamedTuple):
    t: Time = None


class Paused(_Event, _PausedFields):
    """Generation pauses: no rollout is admitted until :class:`Unpaused`."""

    __slots__ = ()
    type = "paused"


class _UnpausedFields(NamedTuple):
    t: Time = None


class Unpaused(_Event, _UnpausedFields):
    """Generation resumes after a pause (schemas 1 and 2 wrote it as a ``resumed``
    without a rollout, which still reads as this event)."""

    __slots__ = ()
    type = "unpaused"


class _ResumedFields(NamedTuple):
    rollout: Annotated[str, ROLLOUT]
    version: Annotated[int | None, VERSION] = None
    t: Time = None


class Resumed(_Event, _ResumedFields):
    """Interrupted rollout ``rollout`` continues as a new segment under weights
    ``version`` (the current version when not given)."""

    __slots__ = ()
    type = "resumed"


class _InterruptedBatchFields(NamedTuple):
    rollouts: Annotated[tuple[str, ...], DATA]
    tokens: Annotated[tuple[int, ...], DATA]
    version: Annotated[int, VERSION]
    t: Time = None


class InterruptedBatch(_Event, _InterruptedBatchFields):
    """The rollouts generating at a weight update, interrupted at once: rollout
    ``rollouts[i]`` closes a segment of ``tokens[i]`` tokens under ``version`` and is
    interrupted.  The same as a ``segment`` then an ``interrupted`` for each, in one
    event (all or nothing)."""

    __slots__ = ()
    type = "interrupted_batch"


class _ResumedBatchFields(NamedTuple):
    rollouts: Annotated[tuple[str, ...], DATA]
    version: Annotated[int, VERSION]
    t: Time = None


class ResumedBatch(_Event, _ResumedBatchFields):
    """Interrupted rollouts continuing under weights ``version`` as a new segment: the
    same as a ``resumed`` with ``rollout`` and ``version`` for each, in one event (all
    or nothing)."""

    __slots__ = ()
    type = "resumed_batch"


class _RecomputedFields(NamedTuple):
    rollout: Annotated[str, ROLLOUT]
    version: Annotated[int, VERSION]
    t: Time = None


class Recomputed(_Event, _RecomputedFields):
    """A ready rollout's proximal log-probabilities were recomputed under ``version``."""

    __slots__ = ()
    type = "recomputed"


class _CheckpointFields(NamedTuple):
    version: Annotated[int, VERSION]
    path: Annotated[str, DATA]
    t: Time = None


class Checkpoint(_Event, _CheckpointFields):
    """The trainer saved its weights for ``version`` at ``path``."""

    __slots__ = ()
    type = "checkpoint"


class _StageFields(NamedTuple):
    path: Annotated[str, DATA]
    phase: Annotated[str, DATA, OneOf(STAGE_PHASES)]
    detail: Annotated[str | None, DATA] = None
    t: Time = None


class Stage(_Event, _StageFields):
    """A workflow stage (``path`` like ``rlhf/sft/epochs[0]/train``) changed phase."""

    __slots__ = ()
    type = "stage"


Event = Union[
    RunStarted,
    Enqueued,
    Submitted,
    Segment,
    Interrupted,
    Accepted,
    Rejected,
    Filtered,
    Consumed,
    Version,
    Paused,
    Unpaused,
    Resumed,
    Recomputed,
    Checkpoint,
    Stage,
    InterruptedBatch,
    ResumedBatch,
]

EVENT_TYPES: tuple[type[Event], ...] = get_args(Event)

BY_TYPE: dict[str, type[Event]] = {cls.type: cls for cls in EVENT_TYPES}

#: Old spellings that still read: a stored event of type ``key`` without the field
#: ``value[0]`` is the event ``value[1]``.  Schemas 1 and 2 wrote the un-pause as a
#: ``resumed`` without a rollout.  These forms are read (JSON Lines and SQLite), never written.
LEGACY: dict[str, tuple[str, type[Event]]] = {"resumed": ("rollout", Unpaused)}

_JSON = build_json_codec(EVENT_TYPES, LEGACY)
_WRITE = _JSON.writers
_READ = _JSON.readers


def to_json(event: Event) -> dict[str, Any]:
    """The JSON object of ``event``: ``type`` first, optional fields left out when unset."""
    return _WRITE[type(event)](event)


def from_json(obj: Mapping[str, Any]) -> Event:
    """Build an event from its JSON object; raises :class:`EventError` naming the bad field
    (a bad ``config`` raises :class:`engine.core.config.ConfigError` naming its key)."""
    if not isinstance(obj, Mapping):
        raise EventError(f"an event must be a JSON object, got {obj!r}")
    kind = obj.get("type")
    read = _READ.get(kind) if isinstance(kind, str) else None
    if read is None:
        raise EventError(f"unknown event type {kind!r}; expected one of {', '.join(BY_TYPE)}")
    event: Event = read(obj)
    return event


def stamped(event: Event, t: float) -> Event:
    """``event`` with time stamp ``t`` (``t`` is every event type's last field; this
    skips ``NamedTuple._replace``, which costs a few times more on a hot path)."""
    return tuple.__new__(type(event), (*event[:-1], t))


def rollout_of(event: Event) -> str | None:
    """The rollout an event is about, if it is about exactly one."""
    return getattr(event, "rollout", None)
