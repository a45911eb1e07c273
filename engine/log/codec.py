"""The SQLite row codec and the documented event table, both derived from the event
classes (:mod:`engine.core.events` declares each field's kind and column once).

A row is ``(seq, type, rollout, version, tokens, t, data)``.  A field goes to the
column its class names; ``data`` holds the rest: the text itself when the rest is one
string field, else JSON (the value of the one field, or the list of the values of
several).  One encoder and one decoder per event type are generated from the
declaration when this module is imported, each as fast as a hand-written one.

:mod:`engine.log.doc` renders the event table of ``docs/ledger.md`` from the same
declaration (``python -m engine.log.doc --source`` prints the code generated here).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from engine.core.config import Config
from engine.core.events import EVENT_TYPES, LEGACY, Event
from engine.core.schema import CONFIG, STRING, Column, FieldSpec, field_specs

#: A row's columns after ``seq`` and ``type``, as the decoders take them.
COLUMNS = ("rollout", "version", "tokens", "t", "data")
_VARS = {Column.ROLLOUT: "r", Column.VERSION: "v", Column.TOKENS: "n", Column.T: "t", Column.DATA: "d"}

Row = tuple[int, str, "str | None", "int | None", "int | None", "float | None", "str | None"]


def _data(specs: Sequence[FieldSpec]) -> list[FieldSpec]:
    return [s for s in specs if s.column is Column.DATA]


def _encoder_source(n: int, event_type: str, specs: Sequence[FieldSpec]) -> str:
    """``encode_<n>(s, e)``: the whole row of event ``e`` at sequence number ``s``."""
    columns = {column: "None" for column in _VARS}
    for s in specs:
        columns[s.column] = f"e[{s.position}]"
    data = _data(specs)
    json_value = [f"e[{s.position}].to_json()" if s.kind is CONFIG else f"e[{s.position}]" for s in data]
    if len(data) == 1:
        columns[Column.DATA] = json_value[0] if data[0].kind is STRING else f"_dumps({json_value[0]})"
    elif data:
        columns[Column.DATA] = f"_dumps([{', '.join(json_value)}])"
    row = ", ".join(columns[c] for c in _VARS)
    return f"def encode_{n}(s, e):\n    return (s, {event_type!r}, {row})\n"


def _decoder_source(n: int, specs: Sequence[FieldSpec], legacy: list[str]) -> str:
    """``decode_<n>(r, v, n, t, d)``: the event of a row's columns (``legacy``: lines
    that first decode a row in an old spelling as another type)."""
    lines = [f"def decode_{n}(r, v, n, t, d):", *legacy]
    data = _data(specs)

    def convert(s: FieldSpec, value: str) -> str:
        return f"_Config.from_json({value})" if s.kind is CONFIG else f"tuple({value})" if s.kind.items else value

    if len(data) > 1:
        lines.append(f"    {''.join(f'x{s.position}, ' for s in data)}= _loads(d)")
    args = []
    for s in specs:
        if s.column is not Column.DATA:
            args.append(_VARS[s.column])
        elif len(data) > 1:
            args.append(convert(s, f"x{s.position}"))
        else:
            args.append("d" if s.kind is STRING else convert(s, "_loads(d)"))
    lines.append(f"    return _new(_cls_{n}, ({''.join(f'{a}, ' for a in args)}))")
    return "\n".join(lines) + "\n"


def _legacy_lines(n: int, cls: type[Any], field: str, new: type[Any], decoder: int) -> list[str]:
    """Decoder lines that hand a row of ``cls`` without ``field`` to decoder ``decoder``
    (of ``new``); the fields ``new`` lacks must then be empty too, or the row is damaged."""
    by_name = {s.name: s for s in field_specs(cls)}
    for s in field_specs(new):
        if s.name not in by_name or by_name[s.name].column is not s.column:
            raise TypeError(f"{cls.__name__} without {field} reads as {new.__name__}, whose field {s.name} it does not store alike")
    lines = [f"    if {_VARS[by_name[field].column]} is None:"]
    for name in cls._fields:
        if name != field and name not in new._fields:
            message = f"{cls.type} without {field} has no {name}"
            lines += [f"        if {_VARS[by_name[name].column]} is not None:", f"            raise ValueError({message!r})"]
    return [*lines, f"        return decode_{decoder}(r, v, n, t, d)"]


class RowCodec:
    """The generated encoders (by event class) and decoders (by type name)."""

    def __init__(self, classes: Sequence[type[Any]], legacy: dict[str, tuple[str, type[Any]]]) -> None:
        namespace: dict[str, Any] = {"_new": tuple.__new__, "_dumps": json.dumps, "_loads": json.loads, "_Config": Config}
        index = {cls.type: n for n, cls in enumerate(classes)}
        parts = []
        for n, cls in enumerate(classes):
            specs = field_specs(cls)
            namespace[f"_cls_{n}"] = cls
            old = legacy.get(cls.type)
            lines = [] if old is None else _legacy_lines(n, cls, old[0], old[1], index[old[1].type])
            parts += [_encoder_source(n, cls.type, specs), _decoder_source(n, specs, lines)]
        #: The generated code (``python -m engine.log.codec --source`` prints it).
        self.source = "\n".join(parts)
        exec(compile(self.source, "<engine.log.codec: row codec>", "exec"), namespace)
        self.encode: dict[type[Any], Callable[[int, Any], Row]] = {cls: namespace[f"encode_{n}"] for n, cls in enumerate(classes)}
        self.decode: dict[str, Callable[[Any, Any, Any, Any, Any], Event]] = {
            cls.type: namespace[f"decode_{n}"] for n, cls in enumerate(classes)
        }


CODEC = RowCodec(EVENT_TYPES, LEGACY)
#: The row of an event: ``ENCODE[type(event)](seq, event)``.
ENCODE = CODEC.encode
#: The event of a row: ``DECODE[type](rollout, version, tokens, t, data)``.
DECODE = CODEC.decode
#: The event types whose ``data`` lists the rollouts they name (a rollout's history searches it).
BATCH_TYPES = tuple(cls.type for cls in EVENT_TYPES if any(s.name == "rollouts" and s.column is Column.DATA for s in field_specs(cls)))
