"""The one TOML writer: every TOML document the product writes (a scenario file, the
``simulate --show-config`` output) is made here, with tomlkit, so that what is
written reads back (with stdlib ``tomllib``) as the values that were written.

Values and their TOML form:

- ``bool``, ``str`` (newlines, quotes, control characters and any unicode are
  escaped by tomlkit), ``float`` (``inf``, ``-inf`` and ``nan`` included) as
  themselves;
- ``int`` within TOML's 64-bit range; a larger one is refused (TOML readers must
  reject it, so the file would not read back);
- a ``tuple`` or ``list`` as an array (it reads back as a list: the reader of the
  config turns it into what its field expects);
- a mapping as a table at the top level, an inline table below it;
- ``None`` is refused: TOML has no null, and leaving the key out would read back
  as the field's default, not as ``None``.  A config with an optional field gives
  its ``None`` a value of its own before writing (the scenario writes an unbounded
  ``max_staleness`` as ``"inf"``).

A refused value raises :class:`TomlValueError` naming its dotted key.  A file is
written by its owner with :func:`engine.log.files.write_atomic` (a scenario by
:func:`sim.config.save`), so a reader sees the old file or the whole new one.
"""

from __future__ import annotations

from typing import Any, Mapping

import tomlkit
from tomlkit.items import Array, InlineTable, Item

#: TOML's integers are 64-bit signed.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class TomlValueError(ValueError):
    """A value with no TOML form that reads back equal; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"cannot write {key!r} as TOML: {message}")
        self.key = key
        self.message = message


def dumps(tables: Mapping[str, Mapping[str, Any]], comments: Mapping[str, str] | None = None) -> str:
    """``tables`` (section name to its keys and values) as a TOML document; a key whose
    dotted name (``section.key``) is in ``comments`` is preceded by that text as comment lines."""
    comments = comments or {}
    document = tomlkit.document()
    for section, values in tables.items():
        if not isinstance(values, Mapping):
            raise TomlValueError(section, f"a section must be a table, got {values!r}")
        table = tomlkit.table()
        for key, value in values.items():
            name = f"{section}.{key}"
            for line in comments.get(name, "").splitlines():
                table.add(tomlkit.comment(line))
            table.add(key, _item(name, value))
        document.add(section, table)
    return tomlkit.dumps(document)


def _item(key: str, value: Any) -> Item:
    """The tomlkit item of ``value`` (module docstring), or :class:`TomlValueError`."""
    if value is None:
        raise TomlValueError(key, "TOML has no null; give the field a value (or leave it out so its default applies)")
    if isinstance(value, (bool, str, float)):
        return tomlkit.item(value)
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise TomlValueError(key, f"{value} is outside TOML's 64-bit integer range")
        return tomlkit.item(value)
    if isinstance(value, (tuple, list)):
        array: Array = tomlkit.array()
        for index, element in enumerate(value):
            array.append(_item(f"{key}[{index}]", element))
        return array
    if isinstance(value, Mapping):
        table: InlineTable = tomlkit.inline_table()
        for name, element in value.items():
            if not isinstance(name, str):
                raise TomlValueError(f"{key}.{name}", "a TOML key must be a string")
            table.append(name, _item(f"{key}.{name}", element))
        return table
    raise TomlValueError(key, f"no TOML form for a {type(value).__name__} ({value!r})")
