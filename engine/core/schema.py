"""How an event class declares its fields, and the JSON codec derived from that declaration.

Each field of an event (a ``NamedTuple`` in :mod:`engine.core.events`) is annotated
``Annotated[type, column]``, plus ``OneOf(choices)`` for an enumerated string:

- the type gives the field's JSON kind (``str``, ``int``, ``float``, ``tuple[str, ...]``,
  ``tuple[int, ...]`` or ``Config``, each maybe ``| None``);
- the column is where the SQLite log stores it (``ROLLOUT``, ``VERSION``, ``TOKENS``,
  ``T``, or ``DATA`` for the rest);
- a default makes the field optional: it may be left out of the JSON object.

:func:`field_specs` reads that declaration.  The JSON codec here and the SQLite codec
(:mod:`engine.log.codec`) are generated from it once, when the module is imported, as
one specialised function per event type: the per-event cost is a hand-written
function's, and nothing spells a field twice.
"""

from __future__ import annotations

import enum
from typing import (
    Annotated,
    Any,
    Callable,
    Iterable,
    Mapping,
    NamedTuple,
    get_args,
    get_origin,
    get_type_hints,
)

from engine.core.config import Config


class Column(enum.Enum):
    """The SQLite column a field is stored in (``DATA``: text, or JSON when not a lone string)."""

    ROLLOUT = "rollout"
    VERSION = "version"
    TOKENS = "tokens"
    T = "t"
    DATA = "data"


class OneOf(NamedTuple):
    """A string field that takes one of ``choices``; it is always written to JSON."""

    choices: tuple[str, ...]


class Kind(NamedTuple):
    """A JSON kind: ``check`` and ``items`` are Python expressions over ``v`` (the JSON
    value, and then its items), ``convert`` builds the field's value from a valid ``v``."""

    doc: str
    what: str
    check: str
    convert: str = "v"
    items: str | None = None
    items_what: str = ""


STRING = Kind("string", "a string", "isinstance(v, str)")
INTEGER = Kind("integer", "an integer", "isinstance(v, int) and not isinstance(v, bool)")
NUMBER = Kind("number", "an integer or a number", "isinstance(v, (int, float)) and not isinstance(v, bool)", "float(v)")
STRINGS = Kind("list of strings", "a list", "isinstance(v, list)", "tuple(v)", "all([isinstance(x, str) for x in v])", "a list of strings")
INTEGERS = Kind(
    "list of integers", "a list", "isinstance(v, list)", "tuple(v)",
    "all([isinstance(x, int) and not isinstance(x, bool) for x in v])", "a list of integers",
)
CONFIG = Kind("object (the run's config)", "a JSON object", "isinstance(v, dict)", "_Config.from_json(v)")

#: The Python type of a field -> its JSON kind.
KINDS: dict[Any, Kind] = {
    str: STRING,
    int: INTEGER,
    float: NUMBER,
    tuple[str, ...]: STRINGS,
    tuple[int, ...]: INTEGERS,
    Config: CONFIG,
}
#: The kinds each column other than ``DATA`` can hold.
COLUMN_KINDS = {Column.ROLLOUT: STRING, Column.VERSION: INTEGER, Column.TOKENS: INTEGER, Column.T: NUMBER}


class FieldSpec(NamedTuple):
    """One field of an event type, as its class declares it."""

    name: str
    position: int
    kind: Kind
    column: Column
    optional: bool  # has a default: may be left out of (or null in) the JSON object
    default: Any
    choices: tuple[str, ...] | None


class SchemaError(TypeError):
    """An event class whose declaration the codecs cannot derive from."""


_SPECS: dict[type[Any], tuple[FieldSpec, ...]] = {}


def field_specs(cls: type[Any]) -> tuple[FieldSpec, ...]:
    """The declared fields of event class ``cls``, in order (read once per class); raises
    :class:`SchemaError` for a field without a kind and column, or a column given twice."""
    specs = _SPECS.get(cls)
    if specs is None:
        specs = _SPECS[cls] = _read_specs(cls)
    return specs


def _read_specs(cls: type[Any]) -> tuple[FieldSpec, ...]:
    hints = get_type_hints(cls, include_extras=True)
    defaults: Mapping[str, Any] = cls._field_defaults
    specs = []
    for index, name in enumerate(cls._fields):
        hint = hints[name]
        if get_origin(hint) is not Annotated:
            raise SchemaError(f"{cls.__name__}.{name}: annotate it as Annotated[type, column]")
        base, *meta = get_args(hint)
        columns = [m for m in meta if isinstance(m, Column)]
        choices = [m.choices for m in meta if isinstance(m, OneOf)]
        args = [a for a in get_args(base) if a is not type(None)] if get_origin(base) is not tuple else [base]
        kind = KINDS.get(args[0] if len(args) == 1 else base)
        if kind is None or len(columns) != 1:
            raise SchemaError(f"{cls.__name__}.{name}: needs one of the kinds {list(KINDS)} and one column")
        column = columns[0]
        if column is not Column.DATA and COLUMN_KINDS[column] is not kind:
            raise SchemaError(f"{cls.__name__}.{name}: column {column.value} holds {COLUMN_KINDS[column].doc}s")
        specs.append(FieldSpec(name, index, kind, column, name in defaults, defaults.get(name), choices[0] if choices else None))
    used = [s.column for s in specs if s.column is not Column.DATA]
    if len(used) != len(set(used)):
        raise SchemaError(f"{cls.__name__}: a column other than data holds two fields")
    if not specs or specs[-1].name != "t" or specs[-1].column is not Column.T:
        raise SchemaError(f"{cls.__name__}: the last field must be the time stamp t")
    return tuple(specs)


class EventError(ValueError):
    """A JSON object that is not a valid event; the message names the field."""


_MISSING = object()


def _where(obj: Mapping[str, Any]) -> str:
    rollout = obj.get("rollout")
    return f"event {obj.get('type')!r}" + (f" (rollout {rollout!r})" if isinstance(rollout, str) else "")


def _bad(obj: Mapping[str, Any], name: str, what: str, value: Any) -> None:
    if value is _MISSING:
        raise EventError(f"{_where(obj)}: missing field {name!r}")
    raise EventError(f"{_where(obj)}: field {name!r} must be {what}, got {value!r}")


def _bad_items(obj: Mapping[str, Any], name: str, what: str) -> None:
    raise EventError(f"{_where(obj)}: field {name!r} must be {what}")


def _bad_choice(obj: Mapping[str, Any], name: str, choices: tuple[str, ...], value: Any) -> None:
    raise EventError(f"{_where(obj)}: {name} must be one of {', '.join(choices)}, got {value!r}")


def _unknown(obj: Mapping[str, Any], known: frozenset[str]) -> None:
    raise EventError(f"{_where(obj)}: unknown field(s) {', '.join(sorted(set(obj) - known))}")


def _reader_source(n: int, specs: tuple[FieldSpec, ...]) -> str:
    """``read_<n>(obj)``: checks a JSON object field by field and builds the event."""
    lines = [f"def read_{n}(obj):", f"    if not _known_{n}.issuperset(obj):", f"        _unknown(obj, _known_{n})"]
    for s in specs:
        name, pad = repr(s.name), "    "
        if s.optional:
            lines += [f"    v = obj.get({name})", "    if v is None:", f"        f{s.position} = _default_{n}_{s.position}", "    else:"]
            pad = "        "
        else:
            lines.append(f"    v = obj.get({name}, _MISSING)")
        lines += [f"{pad}if not ({s.kind.check}):", f"{pad}    _bad(obj, {name}, {s.kind.what!r}, v)"]
        if s.kind.items:
            lines += [f"{pad}if not {s.kind.items}:", f"{pad}    _bad_items(obj, {name}, {s.kind.items_what!r})"]
        if s.choices:
            lines += [f"{pad}if v not in {s.choices!r}:", f"{pad}    _bad_choice(obj, {name}, {s.choices!r}, v)"]
        lines.append(f"{pad}f{s.position} = {s.kind.convert}")
    lines.append(f"    return _new(_cls_{n}, ({''.join(f'f{s.position}, ' for s in specs)}))")
    return "\n".join(lines) + "\n"


def _writer_source(n: int, event_type: str, specs: tuple[FieldSpec, ...]) -> str:
    """``write_<n>(e)``: the JSON object of an event, ``type`` first, optional fields
    left out when they hold their default (enumerated ones are always written)."""

    def value(s: FieldSpec) -> str:
        v = f"e[{s.position}]"
        return f"{v}.to_json()" if s.kind is CONFIG else f"list({v})" if s.kind.items else v

    lines = [f"def write_{n}(e):"]
    head = [f"'type': {event_type!r}"]
    rest = list(specs)
    while rest and not (rest[0].optional and rest[0].choices is None):
        s = rest.pop(0)
        head.append(f"{s.name!r}: {value(s)}")
    lines.append(f"    out = {{{', '.join(head)}}}")
    for s in rest:
        if s.optional and s.choices is None:
            test = f"e[{s.position}] is not None" if s.default is None else f"e[{s.position}] != _default_{n}_{s.position}"
            lines += [f"    if {test}:", f"        out[{s.name!r}] = {value(s)}"]
        else:
            lines.append(f"    out[{s.name!r}] = {value(s)}")
    lines.append("    return out")
    return "\n".join(lines) + "\n"


class JsonCodec(NamedTuple):
    """The JSON functions of every event type: ``writers`` by class, ``readers`` by type name."""

    writers: dict[type[Any], Callable[[Any], dict[str, Any]]]
    readers: dict[str, Callable[[Mapping[str, Any]], Any]]
    source: str


def build_json_codec(classes: Iterable[type[Any]], legacy: Mapping[str, tuple[str, type[Any]]]) -> JsonCodec:
    """Generate the JSON writer and reader of each class in ``classes``.

    ``legacy`` maps an old type name to ``(field, class)``: an object of that type
    without ``field`` reads as ``class`` (the old type's other fields must then be
    absent too, except those ``class`` has)."""
    namespace: dict[str, Any] = {
        "_new": tuple.__new__, "_MISSING": _MISSING, "_Config": Config, "_bad": _bad,
        "_bad_items": _bad_items, "_bad_choice": _bad_choice, "_unknown": _unknown,
    }
    classes = list(classes)
    parts = []
    for n, cls in enumerate(classes):
        specs = field_specs(cls)
        namespace[f"_cls_{n}"] = cls
        namespace[f"_known_{n}"] = frozenset(["type", *cls._fields])
        namespace.update({f"_default_{n}_{s.position}": s.default for s in specs if s.optional})
        parts += [_reader_source(n, specs), _writer_source(n, cls.type, specs)]
    source = "\n".join(parts)
    exec(compile(source, "<engine.core.schema: json codec>", "exec"), namespace)
    writers = {cls: namespace[f"write_{n}"] for n, cls in enumerate(classes)}
    readers = {cls.type: namespace[f"read_{n}"] for n, cls in enumerate(classes)}
    for old, (field, new) in legacy.items():  # read, never written
        readers[old] = _legacy_reader(readers[old], old, field, _old_only(classes, old, new), new.type, readers[new.type])
    return JsonCodec(writers, readers, source)


def _old_only(classes: list[type[Any]], old: str, new: type[Any]) -> tuple[str, ...]:
    """The fields of the type named ``old`` that ``new`` lacks."""
    (cls,) = [c for c in classes if c.type == old]
    return tuple(name for name in cls._fields if name not in new._fields)


def _legacy_reader(
    current: Callable[[Mapping[str, Any]], Any],
    old: str,
    field: str,
    old_only: tuple[str, ...],
    new: str,
    read_new: Callable[[Mapping[str, Any]], Any],
) -> Callable[[Mapping[str, Any]], Any]:
    """``current``, except that an object without ``field`` is read by ``read_new``."""

    def read(obj: Mapping[str, Any]) -> Any:
        if obj.get(field) is not None:
            return current(obj)
        for name in old_only:
            if obj.get(name) is not None:
                raise EventError(f"{_where(obj)}: {old!r} without {field!r} reads as {new!r}, which has no field {name!r}")
        return read_new({key: value for key, value in obj.items() if key not in old_only})

    return read
