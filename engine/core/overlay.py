"""A persistent mapping for many keys that change a few at a time: the live
rollouts of a state (:mod:`engine.core.state`) and the links of its ready queue
(:mod:`engine.core.ready`).

An :class:`Overlay` is a plain ``base`` dict shared by every map made from it, plus
a ``delta`` dict of the keys changed since (a removed key maps to the map's ``gone``
marker).  Neither dict is changed once a map holds it: :meth:`Overlay.updated` copies
the delta (a few entries) and, once the delta has grown to an eighth of the base,
folds both into a fresh base.  A batch of ``k`` changes therefore costs O(k) plus
an amortised O(k) share of the copies, whatever the map's size, where a hash trie
copies a path of nodes per change whose width grows with the map (with 50,000 ready
rollouts the trie made the reducer's snapshots several times slower per change).
Reading a key costs two dict lookups.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

_MISSING: Any = object()

#: The delta is folded into a fresh base once it holds more than this many keys
#: beyond an eighth of the base.
SLACK = 8


class Overlay(Mapping[K, V], Generic[K, V]):
    """An immutable mapping (see the module's docstring).  ``gone`` is the value that
    :meth:`updated` reads as "remove this key"; a map never holds it as a value."""

    __slots__ = ("_hash", "_len", "base", "delta", "gone")

    base: dict[K, V]
    delta: dict[K, V]

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = (), gone: Any = None) -> None:
        self.base = dict(items)
        self.delta = {}
        self.gone = gone
        self._len = len(self.base)
        self._hash: int | None = None

    @classmethod
    def _of(cls, base: dict[K, V], delta: dict[K, V], gone: Any, length: int) -> Overlay[K, V]:
        made = cls.__new__(cls)
        made.base, made.delta, made.gone, made._len, made._hash = base, delta, gone, length, None
        return made

    # -- reading -------------------------------------------------------------------

    def __getitem__(self, key: K) -> V:
        value = self.delta.get(key, _MISSING)
        if value is _MISSING:
            return self.base[key]
        if value is self.gone:
            raise KeyError(key)
        found: V = value
        return found

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: Any = None) -> Any:
        value = self.delta.get(key, _MISSING)
        if value is _MISSING:
            return self.base.get(key, default)
        return default if value is self.gone else value

    def __contains__(self, key: object) -> bool:
        delta: dict[Any, V] = self.delta
        value = delta.get(key, _MISSING)
        if value is _MISSING:
            return key in self.base
        return value is not self.gone

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        return iter(self._merged() if self.delta else self.base)

    def items(self) -> Any:
        return (self._merged() if self.delta else self.base).items()

    def _merged(self) -> dict[K, V]:
        merged = self.base.copy()
        gone = self.gone
        for key, value in self.delta.items():
            if value is gone:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Overlay):
            return len(self) == len(other) and (self._merged() if self.delta else self.base) == (other._merged() if other.delta else other.base)
        if isinstance(other, Mapping):
            return (self._merged() if self.delta else self.base) == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"Overlay({self._merged()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Overlay, (self._merged(), self.gone))

    # -- editing -------------------------------------------------------------------

    def updated(self, changes: Mapping[K, V]) -> Overlay[K, V]:
        """This map with ``changes`` applied: key -> new value, or key -> ``gone`` to
        remove it (a key that is not there is left out).  ``self`` is left as it is;
        ``changes`` is not kept."""
        base, delta, gone = self.base, self.delta, self.gone
        length = self._len
        fresh = delta.copy()
        for key, value in changes.items():
            before = delta.get(key, _MISSING)
            present = key in base if before is _MISSING else before is not gone
            if value is gone:
                if present:
                    length -= 1
                    fresh[key] = value
            else:
                if not present:
                    length += 1
                fresh[key] = value
        if len(fresh) > (len(base) >> 3) + SLACK:
            merged = base.copy()
            for key, value in fresh.items():
                if value is gone:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            return Overlay._of(merged, {}, gone, length)
        return Overlay._of(base, fresh, gone, length)

    def set(self, key: K, value: V) -> Overlay[K, V]:
        """This map with ``key`` mapped to ``value``."""
        return self.updated({key: value})

    def delete(self, key: K) -> Overlay[K, V]:
        """This map without ``key`` (``KeyError`` if it is not there)."""
        if key not in self:
            raise KeyError(key)
        return self.updated({key: self.gone})
