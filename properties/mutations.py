"""Planted accounting bugs, to show what the property suite and the simulator do with
a wrong capacity rule.  ``tests/test_mutations.py`` plants the same rules through
pytest's monkeypatch; :func:`planted_capacity` is the same swap as a context manager,
for a notebook or a script.

The rule is looked up by name at run time in two places: the reducer's admission
guard (:mod:`engine.core.table`) and :mod:`engine.core.reducer`, whose ``capacity``
the invariants, the liveness check and ``Folder.capacity`` call."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from engine.core import reducer, table
from engine.core.reducer import CONSUMED, FILTERED, INTERRUPTED, READY, RUNNING

Rule = Callable[[Any], int]


def capacity_with(accepted_extra: Callable[[Any], int], version_shift: int = 0) -> Rule:
    """A capacity rule like the real one but with a planted accounting bug: ``accepted``
    also counts ``accepted_extra(counts)``, the version is shifted by ``version_shift``
    (works on the reducer's draft as well as on a State)."""

    def capacity(state: Any) -> int:
        config = state.config
        if config is None or state.paused:
            return 0
        counts = state.counts
        running = counts[RUNNING] + counts[INTERRUPTED]
        room = config.rank_max_concurrent - running
        if config.max_staleness is not None:
            accepted = counts[READY] + counts[CONSUMED] + accepted_extra(counts)
            version = state.version + version_shift
            room = min(room, (config.max_staleness + version + 1) * config.rank_batch_size - (accepted + running))
        return int(max(0, room))

    return capacity


#: The seeds' suspected bug: a filtered rollout keeps counting as accepted, so the
#: capacity it held never comes back.
FILTERED_KEEP_CAPACITY: Rule = capacity_with(lambda counts: int(counts[FILTERED]))


@contextmanager
def planted_capacity(rule: Rule = FILTERED_KEEP_CAPACITY) -> Iterator[Rule]:
    """Swap the capacity rule for ``rule`` inside the block; the real rule is back after."""
    saved = (getattr(table, "capacity"), reducer.capacity)
    setattr(table, "capacity", rule)
    setattr(reducer, "capacity", rule)
    try:
        yield rule
    finally:
        setattr(table, "capacity", saved[0])
        setattr(reducer, "capacity", saved[1])


#: Lines of a Hypothesis counterexample that are checks run after every step, not steps.
CHECKS = frozenset({"state.teardown()", "state.liveness()", "state.ready_queue_fresh()", "state.illegal_events_are_refused()"})


def shrunk_counterexample(machine: type, examples: int = 300) -> tuple[Exception, list[str]] | None:
    """Run the state machine ``machine`` (derandomized, no example database) until an
    invariant fails; the violation and the rule steps of the shrunk counterexample, or
    ``None`` if ``examples`` examples find nothing."""
    from hypothesis import Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    from properties.invariants import InvariantViolation

    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                report_multiple_bugs=False,
                phases=(Phase.generate, Phase.shrink),
            ),
        )
    except InvariantViolation as violation:
        notes = getattr(violation, "__notes__", [])
        steps = [line for note in notes for line in note.splitlines() if line.startswith("state.") and line not in CHECKS]
        return violation, steps
    return None
