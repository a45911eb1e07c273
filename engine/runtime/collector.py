"""Python's cyclic garbage collector, run between updates instead of at random.

By default CPython collects its youngest generation whenever 700 more container
objects have been allocated than freed, so a collection interrupts whichever code
allocates next: a generation step, the trainer, or a call into the ledger, which
is then charged for walking objects that torch and the generation engine made.  A
full collection walks every object of the process (hundreds of thousands once
torch is loaded) and can stall a GPU run for tens of milliseconds at a random
moment.

:class:`Collector` in ``update`` mode moves that work to the one place in an RL run where no
generation or training runs: the end of an update, while generation is paused.  At
:meth:`start` it collects once, freezes what exists (the model, torch's modules:
later full collections skip them) and turns automatic collection off; each
:meth:`collect` collects the young generations, and every ``full_every``-th one
everything; :meth:`stop` gives the process its collector back as it was.  In
either mode the time of every collection is kept in :attr:`seconds`, so a run
reports it instead of hiding it in whatever the collector happened to interrupt.
Large training stacks do the same (Megatron-LM's ``manual_gc`` collects every
``manual_gc_interval`` steps).
"""

from __future__ import annotations

import gc
import time

#: ``update``: collect between updates only; ``auto``: Python's own schedule (only measured).
MODES = ("update", "auto")


class Collector:
    """The process's garbage collector during a run, in one of :data:`MODES`; between
    :meth:`start` and :meth:`stop`, :attr:`seconds` sums the time of every collection
    (automatic or called for), so a run reports it in either mode."""

    def __init__(self, mode: str = "update", full_every: int = 25) -> None:
        if mode not in MODES:
            raise ValueError(f"collector mode must be one of {', '.join(MODES)}, got {mode!r}")
        if full_every < 1:
            raise ValueError(f"full_every must be at least 1, got {full_every}")
        self.mode = mode
        self.full_every = full_every
        self.seconds = 0.0
        self.collections = 0  # called for by collect()
        self._was_enabled: bool | None = None  # None: not started
        self._began = 0.0

    @property
    def running(self) -> bool:
        return self._was_enabled is not None

    def _time(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began

    def start(self) -> None:
        """Start timing collections; in ``update`` mode first collect, freeze the
        survivors and switch automatic collection off."""
        if self.running:
            return
        self._was_enabled = gc.isenabled()
        if self.mode == "update":
            gc.collect()  # part of the run's setup: not counted in seconds
            gc.freeze()
            gc.disable()
        gc.callbacks.append(self._time)

    def collect(self) -> None:
        """In ``update`` mode, collect the young generations (everything on every
        ``full_every``-th call); in ``auto`` mode, nothing (Python collects on its own)."""
        if not self.running or self.mode != "update":
            return
        self.collections += 1
        gc.collect(2 if self.collections % self.full_every == 0 else 1)

    def stop(self) -> None:
        """Stop timing; unfreeze and restore automatic collection as it was before :meth:`start`."""
        if not self.running:
            return
        gc.callbacks.remove(self._time)
        if self.mode == "update":
            gc.unfreeze()
            if self._was_enabled:
                gc.enable()
        self._was_enabled = None
