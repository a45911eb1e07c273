"""What an event's values must be for the log to store them faithfully, checked before
the ledger folds an event (and again before the store writes one).

SQLite stores integers in 64 signed bits, text as UTF-8 and a NaN as NULL, and JSON
Lines must read back what was written, so a field declared an integer must be an
``int`` (not a ``bool``) in ``[-2**63, 2**63)``, a string a ``str`` that encodes as
UTF-8 (no lone surrogate), a number (``t``) a finite ``float`` or an ``int`` in range,
a list a ``tuple`` or ``list`` of those, a config a :class:`~engine.core.config.Config`,
an enumerated string one of its choices; an optional field may also be ``None``.
One check function per event type is generated from the event classes' declarations
(as the codec is), so a valid event costs a few type tests; a refused one raises
:class:`InvalidValue` naming the event and the field.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from engine.core.config import Config
from engine.core.events import EVENT_TYPES, Event
from engine.core.schema import CONFIG, INTEGER, INTEGERS, NUMBER, STRING, STRINGS, FieldSpec, Kind, field_specs

_LOW, _HIGH = -(1 << 63), (1 << 63) - 1


class InvalidValue(ValueError):
    """An event holding a value the log cannot store faithfully; names the event and the field."""

    def __init__(self, message: str, event: object = None, field: str | None = None) -> None:
        super().__init__(message)
        self.event = event
        self.field = field


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _strings(values: Sequence[Any]) -> bool:
    try:
        text = "".join(values)  # refuses any item that is not a str
    except TypeError:
        return False
    return text.isascii() or _utf8(text)


def _integers(values: Sequence[Any]) -> bool:
    return all(type(v) is int and _LOW <= v <= _HIGH for v in values)


#: Each kind's test of a value ``{v}`` and what the message says it must be.
_TESTS: dict[Kind, tuple[str, str]] = {
    STRING: ("type({v}) is str and ({v}.isascii() or _utf8({v}))", "a string of valid UTF-8 text"),
    INTEGER: (f"type({{v}}) is int and {_LOW} <= {{v}} <= {_HIGH}", "an integer in SQLite's signed 64-bit range"),
    NUMBER: (
        f"(type({{v}}) is float and {{v}} - {{v}} == 0.0) or (type({{v}}) is int and {_LOW} <= {{v}} <= {_HIGH})",
        "a finite number (not NaN or infinite)",
    ),
    STRINGS: ("type({v}) in _LISTS and _strings({v})", "a list of strings of valid UTF-8 text"),
    INTEGERS: ("type({v}) in _LISTS and _integers({v})", "a list of integers in SQLite's signed 64-bit range"),
    CONFIG: ("type({v}) is _Config", "a Config"),
}


def _none_allowed(s: FieldSpec) -> bool:
    return s.optional and s.default is None


def _source(n: int, specs: Sequence[FieldSpec]) -> str:
    """``fits_<n>(e)``: -1 when every field of ``e`` fits the log, else the first bad field's position."""
    lines = [f"def fits_{n}(e):"]
    for s in specs:
        v = f"e[{s.position}]"
        test = _TESTS[s.kind][0].format(v=v)
        if s.choices:
            test = f"type({v}) is str and {v} in {s.choices!r}"
        if _none_allowed(s):
            test = f"{v} is None or ({test})"
        lines += [f"    if not ({test}):", f"        return {s.position}"]
    lines.append("    return -1")
    return "\n".join(lines) + "\n"


def _build(classes: Sequence[type[Any]]) -> tuple[dict[type[Any], Callable[[Any], int]], str]:
    namespace: dict[str, Any] = {"_utf8": _utf8, "_strings": _strings, "_integers": _integers, "_LISTS": (tuple, list), "_Config": Config}
    source = "\n".join(_source(n, field_specs(cls)) for n, cls in enumerate(classes))
    exec(compile(source, "<engine.log.values: checks>", "exec"), namespace)
    return {cls: namespace[f"fits_{n}"] for n, cls in enumerate(classes)}, source


_FITS, SOURCE = _build(EVENT_TYPES)


def problem(event: Any) -> str | None:
    """What is wrong with ``event`` for the log (``field 'x' must be ..., got ...``), or ``None``."""
    fits = _FITS.get(type(event))
    if fits is None:
        return f"not an event: {event!r:.200}"
    position = fits(event)
    if position < 0:
        return None
    s = field_specs(type(event))[position]
    what = f"one of {', '.join(s.choices)}" if s.choices else _TESTS[s.kind][1]
    if _none_allowed(s):
        what += " or null"
    return f"field {s.name!r} must be {what}, got {event[position]!r:.200}"


def check_events(events: Iterable[Event]) -> None:
    """Raise :class:`InvalidValue` for the first of ``events`` the log cannot store faithfully."""
    fits = _FITS
    for event in events:
        check = fits.get(type(event))
        if check is None:
            raise InvalidValue(f"not an event: {event!r:.200}", event)
        position = check(event)
        if position >= 0:
            rollout = getattr(event, "rollout", None)
            where = f"event {event.type!r}" + (f" (rollout {rollout!r})" if isinstance(rollout, str) and _utf8(rollout) else "")
            raise InvalidValue(f"{where}: {problem(event)}", event, field_specs(type(event))[position].name)


def first_misfit(events: Sequence[Event]) -> int:
    """The index of the first of ``events`` the log cannot store faithfully, or -1 (the
    check of rows read without a checksum)."""
    fits = _FITS
    for index, event in enumerate(events):
        check = fits.get(type(event))
        if check is None or check(event) >= 0:
            return index
    return -1
