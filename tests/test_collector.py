"""The garbage collector run between updates (engine.runtime.collector) and the run's use of it."""

import gc
import weakref

import pytest

from engine.runtime.collector import Collector
from engine.workflows.rl_config import RunConfig


class _Node:
    def __init__(self) -> None:
        self.other = self


def _cycle() -> weakref.ref:
    """A reference cycle nothing else holds: only the cyclic collector frees it."""
    return weakref.ref(_Node())


@pytest.fixture
def collector():
    enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    made = Collector("update", full_every=3)
    yield made
    made.stop()
    assert gc.isenabled() == enabled and gc.get_freeze_count() == frozen


def test_cycles_wait_for_collect_and_go_with_it(collector):
    collector.start()
    assert not gc.isenabled() and gc.get_freeze_count() > 0  # what existed at start is frozen
    garbage = _cycle()
    held = [[] for _ in range(20_000)]  # far past generation 0's threshold: nothing collects on its own
    assert garbage() is not None
    del held
    collector.collect()
    assert garbage() is None and collector.collections == 1 and collector.seconds > 0  # timed as it ran


def test_every_full_every_th_collection_is_a_full_one(collector):
    generations = []

    def note(phase, info):
        if phase == "stop":
            generations.append(info["generation"])

    collector.start()
    gc.callbacks.append(note)
    try:
        for _ in range(6):
            collector.collect()
    finally:
        gc.callbacks.remove(note)
    assert generations == [1, 1, 2, 1, 1, 2]


def test_stop_restores_the_collector_as_it_was(collector):
    gc.disable()
    try:
        collector.start()
        collector.stop()
        assert not gc.isenabled()  # it was off before start: it stays off
    finally:
        gc.enable()
    collector.start()
    collector.stop()
    assert gc.isenabled()
    collector.collect()  # not started: nothing happens
    assert collector.collections == 0


def test_auto_mode_leaves_collection_to_python_and_times_it():
    enabled, callbacks = gc.isenabled(), list(gc.callbacks)
    collector = Collector("auto")
    collector.start()
    try:
        assert gc.isenabled() == enabled and gc.get_freeze_count() == 0
        garbage = _cycle()
        held = [[] for _ in range(20_000)]  # generation 0 fills over and over: Python collects on its own
        collector.collect()  # nothing to do in this mode
        assert garbage() is None and collector.collections == 0 and collector.seconds > 0
        del held
    finally:
        collector.stop()
    assert gc.callbacks == callbacks and gc.isenabled() == enabled


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="full_every"):
        Collector(full_every=0)
    with pytest.raises(ValueError, match="sometimes"):
        Collector("sometimes")
    with pytest.raises(ValueError, match="'gc'"):
        RunConfig(gc="sometimes")
