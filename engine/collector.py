"""Python's cyclic garbage collector, run between updates instead of at random.

By default CPython collects its youngest generation whenever 700 more container
objects have been allocated than freed, so a collection interrupts whichever code
allocates next: a generation step, the trainer, or a call into the ledger, which
is then charged for walking objects that torch and the generation engine made.  A
full collection walks every object of the process (hundreds of thousands once
torch is loaded) and can stall a GPU run for tens of milliseconds at a random
moment.

:class:`UpdateCollector` moves that work to the one place in an RL run where no
generation or training runs: the end of an update, while generation is paused.  At
:meth:`start` it collects once, freezes what exists (the model, torch's modules:
later full collections skip them) and turns automatic collection off; each
:meth:`collect` collects the young generations, and every ``full_every``-th one
everything; :meth:`stop` gives the process its collector back as it was.  The
time the collections between updates take is kept in :attr:`seconds`, so a run
reports it instead of hiding it in whatever the collector happened to interrupt.
Large training stacks do the same (Megatron-LM's ``manual_gc`` collects every
``manual_gc_interval`` steps).
"""

from __future__ import annotations

import gc
import time


class UpdateCollector:
    """Collects garbage when :meth:`collect` is called, and only then (between
    :meth:`start` and :meth:`stop`)."""

    def __init__(self, full_every: int = 25) -> None:
        if full_every < 1:
            raise ValueError(f"full_every must be at least 1, got {full_every}")
        self.full_every = full_every
        self.seconds = 0.0
        self.collections = 0
        self._was_enabled: bool | None = None  # None: not started

    @property
    def running(self) -> bool:
        return self._was_enabled is not None

    def start(self) -> None:
        """Collect, freeze the survivors and switch automatic collection off."""
        if self.running:
            return
        self._was_enabled = gc.isenabled()
        gc.collect()  # part of the run's setup: not counted in seconds
        gc.freeze()
        gc.disable()

    def collect(self) -> None:
        """Collect the young generations (everything on every ``full_every``-th call)."""
        if not self.running:
            return
        self.collections += 1
        start = time.perf_counter()
        gc.collect(2 if self.collections % self.full_every == 0 else 1)
        self.seconds += time.perf_counter() - start

    def stop(self) -> None:
        """Unfreeze and restore automatic collection as it was before :meth:`start`."""
        if not self.running:
            return
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None
