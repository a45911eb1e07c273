"""The checksum of each row of a SQLite log (log schema 4): what it covers, how it is
computed when a batch is written, and how a read checks a whole chunk of rows at once.

A row is ``(seq, type, rollout, version, tokens, t, data, crc)``.  ``crc`` is a CRC-32
(stored as a signed 32-bit integer) chained over the rows::

    crc[i] = crc32(b"(" + u32(8) + enc(seq) + enc(type) + enc(rollout) + enc(version)
                   + enc(tokens) + enc(t) + enc(data),  start(crc[i - 1]))
    start(c) = crc32(b"i" + i32(c), c mod 2**32)        crc[first - 1] = 0

where ``first`` is the first row written with a checksum (1, or the first row appended
after an older log was upgraded) and ``enc`` spells each value with its type: ``None``
``b"N"``; an integer of 32 bits ``b"i" + i32``, a larger one ``b"l" + i32(±digits)``
and its 15-bit digits as ``u16``, least significant first; a float ``b"g"`` and its
IEEE 754 double; text ``b"u" + u32(length)`` and its UTF-8 (all little-endian).  So the
checksum covers every column's value and its type: a flipped byte, a real ``8.5``
where an integer was written, text in an integer column or a NULL where a value was
are all mismatches at that row.  Because the checksum of a row starts from the one
before it, the bytes of a run of rows, each followed by ``b"i" + i32(crc)``, hash to
the last row's checksum: a read checks a chunk with one ``crc32`` over one buffer,
the rows' checksums included, and looks row by row only where that fails.

``enc`` is exactly what ``marshal.dumps(value, 2)`` writes (a tuple of eight values
is ``b"(" + u32(8)`` and its values, a list the same after ``b"["``): marshal is the
fast path, used only when it writes the same bytes as the encoder here (checked on
import); otherwise the encoder here, slower, computes the same checksums.
"""

from __future__ import annotations

import marshal
import struct
import zlib
from typing import Any, Callable, Sequence

_MASK = 0xFFFFFFFF
_HEAD = b"(" + struct.pack("<I", 8)  # a row of eight values
_CRC_BYTES = 5  # b"i" + i32: how a stored checksum is spelled


def _encode(value: Any) -> bytes:
    """One value, as the module docstring spells it (the reference for the fast path)."""
    if value is None:
        return b"N"
    if type(value) is int:
        if -(1 << 31) <= value < (1 << 31):
            return b"i" + struct.pack("<i", value)
        digits, rest = [], abs(value)
        while rest:
            digits.append(rest & 0x7FFF)
            rest >>= 15
        return b"l" + struct.pack("<i", -len(digits) if value < 0 else len(digits)) + struct.pack(f"<{len(digits)}H", *digits)
    if type(value) is float:
        return b"g" + struct.pack("<d", value)
    if type(value) is str:
        text = value.encode("utf-8", "surrogatepass")
        return b"u" + struct.pack("<I", len(text)) + text
    if type(value) is bytes:  # a BLOB: never written, but a damaged row may hold one
        return b"s" + struct.pack("<I", len(value)) + value
    if type(value) in (tuple, list):
        return (b"(" if type(value) is tuple else b"[") + struct.pack("<I", len(value)) + b"".join(map(_encode, value))
    raise TypeError(f"a log row holds no {type(value).__name__}: {value!r}")


def _reference_dumps(value: Any, version: int = 2) -> bytes:
    return _encode(value)


_SAMPLE = [
    (1, "segment", "r1", 0, 37, None, None, -5),
    ((1 << 31) - 1, "ü ∑ 𝄞", None, -(1 << 31), 1 << 40, 1.5, '["a", "b"]', (1 << 31) - 1),
    (-(1 << 63), "", "x" * 300, (1 << 63) - 1, -(1 << 33), -0.25, "", 0),
]
#: ``marshal.dumps`` when it spells rows as :func:`_encode` does, else the encoder here.
_dumps: Callable[..., bytes] = marshal.dumps if marshal.dumps(_SAMPLE, 2) == _encode(_SAMPLE) else _reference_dumps


_pack_i32 = struct.Struct("<i").pack
_LEAD = struct.Struct("<bibI").pack  # a checksum, then a row's head: (b"i", crc, b"(", 8)


def _start(previous: int) -> int:
    """The CRC state the bytes after a row start from: its checksum, and that checksum spelled."""
    return zlib.crc32(b"i" + _pack_i32(previous), previous & _MASK)


def seal(rows: Sequence[tuple[Any, ...]], previous: int) -> tuple[list[tuple[Any, ...]], int]:
    """``rows`` (of seven values, as SQLite will give them back) each with its checksum
    appended, chained from ``previous`` (the checksum of the row before, 0 for none);
    and the last checksum."""
    crc32, dumps, lead = zlib.crc32, _dumps, _LEAD
    sealed: list[tuple[Any, ...]] = []
    append = sealed.append
    for row in rows:  # b"i" + i32(previous) + b"(" + u32(8), then the row's values
        crc = crc32(dumps(row, 2)[5:], crc32(lead(0x69, previous, 0x28, 8), previous & 0xFFFFFFFF))
        previous = crc if crc < 0x80000000 else crc - 0x100000000
        append(row + (previous,))
    return sealed, previous


def chunk_intact(rows: list[tuple[Any, ...]], previous: int) -> bool:
    """Whether every row of ``rows`` (of eight values, contiguous) has its checksum,
    chained from ``previous``: one ``crc32`` over the chunk's bytes."""
    last = rows[-1][7]
    if type(last) is not int or not -(1 << 31) <= last < (1 << 31):
        return False
    try:
        blob = _dumps(rows, 2)
    except (TypeError, ValueError):  # a value the encoder does not spell: found row by row
        return False
    return zlib.crc32(memoryview(blob)[5:-_CRC_BYTES], _start(previous)) == last & _MASK


def row_intact(row: tuple[Any, ...], previous: int) -> bool:
    """Whether ``row`` (of eight values) holds the checksum of its values, chained from ``previous``."""
    crc = row[7]
    if type(crc) is not int or not -(1 << 31) <= crc < (1 << 31):
        return False
    try:
        values = _dumps(row[:7], 2)
    except (TypeError, ValueError):  # a value SQLite cannot have given (never, short of a bug)
        return False
    return zlib.crc32(memoryview(values)[5:], zlib.crc32(_HEAD, _start(previous))) == crc & _MASK
