"""Ledger events: immutable records of everything that happens in a run.

Every event is a small immutable tuple type (fast to build, cheap to fold) with an
optional ``t`` (seconds, stamped by the shell that emits it; the core never reads a
clock).  ``to_json``/``from_json`` give the JSON Lines exchange format of
DESIGN.md and round-trip losslessly.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Union, get_args

from engine.core.config import Config

#: Version of the event format.  Logs written by a newer format are refused.  Schema 2
#: added the batch forms ``interrupted_batch`` and ``resumed_batch``; schema 1 logs
#: read unchanged.
SCHEMA_VERSION = 2

#: Reasons a running rollout can be rejected.
REJECT_REASONS = ("none", "should_accept", "error", "timeout", "lost")
#: Reasons a rollout can be filtered.
FILTER_REASONS = ("stale",)
#: Phases of a workflow stage event.
STAGE_PHASES = ("started", "finished", "failed", "skipped")


class EventError(ValueError):
    """A JSON object that is not a valid event; the message names the field."""


def _event_eq(self: tuple, other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _event_ne(self: tuple, other: object) -> bool:
    return not _event_eq(self, other)


def _event_hash(self: tuple) -> int:
    return hash((type(self).__name__, tuple(self)))


class RunStarted(NamedTuple):
    config: Config
    t: float | None = None
    type = "run_started"


class Enqueued(NamedTuple):
    rollout: str
    prompt: str | None = None
    attempt: int = 1
    t: float | None = None
    type = "enqueued"


class Submitted(NamedTuple):
    rollout: str
    version: int
    t: float | None = None
    type = "submitted"


class Segment(NamedTuple):
    rollout: str
    version: int
    tokens: int
    t: float | None = None
    type = "segment"


class Interrupted(NamedTuple):
    rollout: str
    t: float | None = None
    type = "interrupted"


class Accepted(NamedTuple):
    rollout: str
    t: float | None = None
    type = "accepted"


class Rejected(NamedTuple):
    rollout: str
    reason: str = "none"
    t: float | None = None
    type = "rejected"


class Filtered(NamedTuple):
    rollout: str
    reason: str = "stale"
    t: float | None = None
    type = "filtered"


class Consumed(NamedTuple):
    rollouts: tuple[str, ...]
    t: float | None = None
    type = "consumed"


class Version(NamedTuple):
    version: int
    t: float | None = None
    type = "version"


class Paused(NamedTuple):
    t: float | None = None
    type = "paused"


class Resumed(NamedTuple):
    """Without ``rollout``: generation resumes after a pause.  With ``rollout``: an
    interrupted rollout continues under weights ``version`` (a new segment)."""

    rollout: str | None = None
    version: int | None = None
    t: float | None = None
    type = "resumed"


class InterruptedBatch(NamedTuple):
    """The rollouts generating at a weight update, interrupted at once: rollout
    ``rollouts[i]`` closes a segment of ``tokens[i]`` tokens under ``version`` and is
    interrupted.  The same as a ``segment`` then an ``interrupted`` for each, in one
    event (all or nothing)."""

    rollouts: tuple[str, ...]
    tokens: tuple[int, ...]
    version: int
    t: float | None = None
    type = "interrupted_batch"


class ResumedBatch(NamedTuple):
    """Interrupted rollouts continuing under weights ``version`` as a new segment: the
    same as a ``resumed`` with ``rollout`` and ``version`` for each, in one event (all
    or nothing)."""

    rollouts: tuple[str, ...]
    version: int
    t: float | None = None
    type = "resumed_batch"


class Recomputed(NamedTuple):
    rollout: str
    version: int
    t: float | None = None
    type = "recomputed"


class Checkpoint(NamedTuple):
    """The trainer saved its weights for ``version`` at ``path``."""

    version: int
    path: str
    t: float | None = None
    type = "checkpoint"


class Stage(NamedTuple):
    """A workflow stage (``path`` like ``rlhf/sft/epochs[0]/train``) changed phase."""

    path: str
    phase: str
    detail: str | None = None
    t: float | None = None
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
    Resumed,
    Recomputed,
    Checkpoint,
    Stage,
    InterruptedBatch,
    ResumedBatch,
]

EVENT_TYPES: tuple[type, ...] = get_args(Event)

# NamedTuple compares as a plain tuple; give every event type-aware equality.
for _cls in EVENT_TYPES:
    _cls.__eq__ = _event_eq  # type: ignore[method-assign,assignment]
    _cls.__ne__ = _event_ne  # type: ignore[method-assign,assignment]
    _cls.__hash__ = _event_hash  # type: ignore[method-assign,assignment]

BY_TYPE: dict[str, type] = {cls.type: cls for cls in EVENT_TYPES}


def to_json(event: Event) -> dict[str, Any]:
    """The JSON object of ``event``: ``type`` first, optional fields left out when unset."""
    out: dict[str, Any] = {"type": event.type}
    defaults = type(event)._field_defaults
    for name, value in zip(event._fields, event):
        if name in defaults and value == defaults[name] and name != "reason":
            continue
        if name == "config":
            value = value.to_json()
        elif name == "rollouts" or name == "tokens" and type(event) is InterruptedBatch:
            value = list(value)
        out[name] = value
    return out


def _require(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise EventError(f"{where}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise EventError(f"{where}: field {name!r} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", str: "a string", float: "a number", list: "a list"}.get(k, k.__name__) for k in kinds)


_FIELD_KINDS: dict[str, type | tuple[type, ...]] = {
    "rollout": str,
    "prompt": str,
    "attempt": int,
    "version": int,
    "tokens": int,
    "reason": str,
    "path": str,
    "phase": str,
    "detail": str,
    "t": (int, float),
}


def from_json(obj: Mapping[str, Any]) -> Event:
    """Build an event from its JSON object; raises :class:`EventError` naming the bad field."""
    if not isinstance(obj, Mapping):
        raise EventError(f"an event must be a JSON object, got {obj!r}")
    kind = obj.get("type")
    cls = BY_TYPE.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventError(f"unknown event type {kind!r}; expected one of {', '.join(BY_TYPE)}")
    rollout = obj.get("rollout")
    where = f"event {kind!r}" + (f" (rollout {rollout!r})" if isinstance(rollout, str) else "")
    unknown = set(obj) - set(cls._fields) - {"type"}
    if unknown:
        raise EventError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name in cls._fields:
        optional = name in cls._field_defaults
        if optional and obj.get(name) is None:
            continue
        if name == "config":
            values[name] = Config.from_json(_require(obj, name, dict, where))
        elif name == "rollouts":
            ids = _require(obj, name, list, where)
            if not all(isinstance(r, str) for r in ids):
                raise EventError(f"{where}: field 'rollouts' must be a list of strings")
            values[name] = tuple(ids)
        elif name == "tokens" and cls is InterruptedBatch:
            counts = _require(obj, name, list, where)
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
                raise EventError(f"{where}: field 'tokens' must be a list of integers")
            values[name] = tuple(counts)
        else:
            value = _require(obj, name, _FIELD_KINDS[name], where)
            values[name] = float(value) if name == "t" else value
    if kind == "rejected" and values.get("reason", "none") not in REJECT_REASONS:
        raise EventError(f"{where}: reason must be one of {', '.join(REJECT_REASONS)}, got {values['reason']!r}")
    if kind == "filtered" and values.get("reason", "stale") not in FILTER_REASONS:
        raise EventError(f"{where}: reason must be one of {', '.join(FILTER_REASONS)}, got {values['reason']!r}")
    if kind == "stage" and values["phase"] not in STAGE_PHASES:
        raise EventError(f"{where}: phase must be one of {', '.join(STAGE_PHASES)}, got {values['phase']!r}")
    return cls(**values)


def stamped(event: Event, t: float) -> Event:
    """``event`` with time stamp ``t`` (``t`` is every event type's last field; this
    skips ``NamedTuple._replace``, which costs a few times more on a hot path)."""
    return tuple.__new__(type(event), (*event[:-1], t))


def rollout_of(event: Event) -> str | None:
    """The rollout an event is about, if it is about exactly one."""
    return getattr(event, "rollout", None)
