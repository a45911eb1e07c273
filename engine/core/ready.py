"""The ready queue: the ready rollouts of a state in the order batches take them,
lowest start (head) version first, then earliest accepted.

A :class:`ReadyQueue` is immutable and persistent: one doubly linked list per head
version, kept in two persistent maps, so adding or removing a rollout touches O(1)
entries (O(log n) each) and taking a batch of ``k`` costs O(k log n), however many
rollouts are live.  The reducer keeps it (:mod:`engine.core.reducer`); the policies
read it (:mod:`engine.core.policies`).

A shell that takes a state snapshot after every event would pay for a map update
per snapshot although it reads the queue only now and then (once per batch), so
:meth:`ReadyQueue.edited` records the edits as a layer over the previous queue and
the maps are brought up to date when the queue is first read (or every
``MAX_LAYERS`` layers): a cache, invisible to readers, since a queue's contents
never change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import immutables

from engine.core.overlay import Overlay

#: Pending layers a queue may stack before they are applied.
MAX_LAYERS = 32

_NO_GROUPS: immutables.Map[int, tuple[str, str]] = immutables.Map()
#: The marker of a removed rollout in a links map.
_UNLINKED: Any = object()
_NO_LINKS: Overlay[str, tuple[str | None, str | None]] = Overlay(gone=_UNLINKED)
_MISSING: Any = object()
_NO_EDITS: Mapping[str, int] = {}


class ReadyQueue:
    """The ready rollouts in batch order (see the module's docstring).

    ``heads`` are the head versions with a ready rollout (ascending); ``groups`` maps
    each to the (first, last) rollout of its group; ``links`` maps each ready rollout
    to the (previous, next) one in its group, in acceptance order.
    """

    __slots__ = ("_added", "_groups", "_heads", "_layers", "_links", "_parent", "_removed")

    def __init__(
        self,
        heads: tuple[int, ...] = (),
        groups: immutables.Map[int, tuple[str, str]] = _NO_GROUPS,
        links: Mapping[str, tuple[str | None, str | None]] = _NO_LINKS,
    ) -> None:
        if not isinstance(links, Overlay):
            links = Overlay(links, gone=_UNLINKED)
        self._heads, self._groups, self._links = heads, groups, links
        self._parent: ReadyQueue | None = None  # the queue this one's pending edits apply to
        self._removed: Mapping[str, int] = _NO_EDITS
        self._added: Mapping[str, int] = _NO_EDITS
        self._layers = 0

    # -- reading -------------------------------------------------------------------

    @property
    def heads(self) -> tuple[int, ...]:
        self._settle()
        return self._heads

    @property
    def groups(self) -> immutables.Map[int, tuple[str, str]]:
        self._settle()
        return self._groups

    @property
    def links(self) -> Overlay[str, tuple[str | None, str | None]]:
        self._settle()
        return self._links

    def __len__(self) -> int:
        return len(self.links)

    def rollouts(self) -> Iterator[str]:
        """The ready rollouts, oldest first, lazily."""
        for head in self.heads:
            yield from self.group(head)

    def group(self, head: int) -> Iterator[str]:
        """The ready rollouts that started under version ``head``, earliest accepted first."""
        links = self.links
        rollout: str | None = self.groups[head][0]
        while rollout is not None:
            yield rollout
            rollout = links[rollout][1]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReadyQueue):
            return NotImplemented
        return (self.heads, self.groups, self.links) == (other.heads, other.groups, other.links)

    def __hash__(self) -> int:
        return hash((self.heads, self.groups, self.links))

    def __repr__(self) -> str:
        return f"ReadyQueue({list(self.rollouts())!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ReadyQueue, (self.heads, self.groups, self.links))

    # -- editing -------------------------------------------------------------------

    def edited(self, removed: Mapping[str, int], added: Mapping[str, int]) -> ReadyQueue:
        """The queue without the ``removed`` rollouts and with the ``added`` ones put at
        the end of their head version's group, in the order given (rollout -> head
        version in both).  ``self`` is left as it is."""
        return layered(self, dict(removed), dict(added))

    def _settle(self) -> None:
        """Apply the pending layers (oldest first) to the nearest settled queue's maps."""
        if self._parent is None:
            return
        layers: list[ReadyQueue] = []
        queue = self
        while queue._parent is not None:
            layers.append(queue)
            queue = queue._parent
        heads = queue._heads
        groups, links = queue._groups.mutate(), _Edits(queue._links)
        for layer in reversed(layers):
            heads = _apply(heads, groups, links, layer._removed, layer._added)
        self._heads, self._groups, self._links = heads, groups.finish(), queue._links.updated(links.changes)
        self._parent, self._removed, self._added, self._layers = None, _NO_EDITS, _NO_EDITS, 0


def layered(queue: ReadyQueue, removed: Mapping[str, int], added: Mapping[str, int]) -> ReadyQueue:
    """:meth:`ReadyQueue.edited` that keeps ``removed`` and ``added`` themselves rather
    than copies (for the reducer's draft, which never changes them afterwards)."""
    edited = ReadyQueue.__new__(ReadyQueue)
    edited._parent, edited._removed, edited._added = queue, removed, added
    edited._layers = layers = queue._layers + 1
    if layers >= MAX_LAYERS:
        edited._settle()
    return edited


class _Edits:
    """Changes to a links map, read through to the map (the map itself is immutable)."""

    __slots__ = ("changes", "links")

    def __init__(self, links: Overlay[str, tuple[str | None, str | None]]) -> None:
        self.links = links
        self.changes: dict[str, tuple[str | None, str | None]] = {}

    def __getitem__(self, rollout: str) -> tuple[str | None, str | None]:
        link = self.changes.get(rollout, _MISSING)
        if link is _MISSING:
            return self.links[rollout]
        if link is _UNLINKED:
            raise KeyError(rollout)
        found: tuple[str | None, str | None] = link
        return found

    def __setitem__(self, rollout: str, link: tuple[str | None, str | None]) -> None:
        self.changes[rollout] = link

    def pop(self, rollout: str) -> tuple[str | None, str | None]:
        link = self[rollout]
        self.changes[rollout] = _UNLINKED
        return link


def _apply(
    heads: tuple[int, ...],
    groups: immutables.MapMutation[int, tuple[str, str]],
    links: _Edits,
    removed: Mapping[str, int],
    added: Mapping[str, int],
) -> tuple[int, ...]:
    """Unlink ``removed`` and append ``added`` (rollout -> head version) in the maps;
    returns the new ``heads``."""
    for rollout, head in removed.items():
        previous, following = links.pop(rollout)
        if previous is not None:
            links[previous] = (links[previous][0], following)
        if following is not None:
            links[following] = (previous, links[following][1])
        if previous is None:
            if following is None:  # it was alone in its group
                del groups[head]
                heads = tuple(h for h in heads if h != head)
            else:  # it was the first
                groups[head] = (following, groups[head][1])
        elif following is None:  # it was the last
            groups[head] = (groups[head][0], previous)
    for rollout, head in added.items():
        group = groups.get(head)
        if group is None:  # a new group, in head order
            groups[head] = (rollout, rollout)
            links[rollout] = (None, None)
            heads = tuple(sorted((*heads, head))) if heads and heads[-1] > head else (*heads, head)
        else:
            first, last = group
            links[last] = (links[last][0], rollout)
            links[rollout] = (last, None)
            groups[head] = (first, rollout)
    return heads


EMPTY_QUEUE = ReadyQueue()
