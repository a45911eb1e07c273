"""The services of one workflow run, reachable from every context it makes: its id
and logger, its ledger (stage events and checkpoints), its artifacts directory, the
thread that runs blocking stages and the queue that runs submitted work, and the
live resources to release after a halt.

The runner builds one :class:`Runtime` per run; a :class:`~engine.workflow.context.Context`
sees it through the small interface it declares (:class:`~engine.workflow.context.Services`),
so the context does not depend on this module.
"""

from __future__ import annotations

import contextvars
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from engine.core.events import Checkpoint, Stage
from engine.ledger import Ledger
from engine.workflow.checkpoint import (
    CHECKPOINT_FORMAT,
    prune,
    saved_state,
    write_checkpoint,
)
from engine.workflow.context import Context

#: Set inside a parallel branch (checkpoints are refused there; sync stages run in threads).
IN_PARALLEL: contextvars.ContextVar[bool] = contextvars.ContextVar("workflow_in_parallel", default=False)


class Runtime:
    """The services of one run, reachable from every context it makes."""

    def __init__(self, run_id: str, logger: Any, ledger: Ledger | None, log: Path | None, workflow: str) -> None:
        self.run_id = run_id
        self.logger = logger
        self.ledger = ledger
        self.checkpoint_dir = Path(f"{log}.checkpoints") if log is not None else None
        self._artifacts = Path(f"{log}.artifacts") if log is not None else None
        self.workflow = workflow
        self.transient: set[str] = set()  # state keys of live resources, never checkpointed
        self.live: dict[str, Any] = {}  # the latest value of each transient key
        self._executor: ThreadPoolExecutor | None = None
        self._stage_thread: ThreadPoolExecutor | None = None

    @property
    def artifacts(self) -> Path:
        """A directory for the run's files (weights, sub-run logs); a fresh temporary one without a log."""
        if self._artifacts is None:
            self._artifacts = Path(tempfile.mkdtemp(prefix=f"{self.workflow}-{self.run_id}-"))
        self._artifacts.mkdir(parents=True, exist_ok=True)
        return self._artifacts

    def stage_thread(self) -> ThreadPoolExecutor:
        """The one thread that runs every ``blocking`` stage (their resources stay on one thread)."""
        if self._stage_thread is None:
            self._stage_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workflow-stage")
        return self._stage_thread

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn`` on the run's single work thread (FIFO, like a training server's queue)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workflow-work")
        return self._executor.submit(fn, *args, **kwargs)

    def emit(self, path: str, phase: str, detail: str | None = None, *, durable: bool = True) -> None:
        """Log one stage event.  ``durable`` writes it (and any queued before it) at once,
        so a run killed inside the stage that follows shows where; otherwise it is
        written with the next durable event (a stage's start, a checkpoint, the run's
        end), which saves a log transaction per stage.  A resume reads only the run's
        start and its checkpoints, which are always durable."""
        if self.ledger is not None:
            self.ledger.append(Stage(path, phase, detail, t=time.time()))
            if durable:
                self.ledger.flush()

    def save_checkpoint(self, ctx: Context, path: str) -> str | None:
        """Pickle the workflow state after stage ``path`` and log a ``Checkpoint``."""
        if IN_PARALLEL.get():
            raise RuntimeError(f"stage {path!r}: checkpoints cannot be taken inside a parallel branch")
        if self.checkpoint_dir is None or self.ledger is None:
            self.logger.info("checkpoint_not_written", path=path, reason="the run has no log")
            return None
        state = saved_state(ctx.state, self.transient, path)
        payload = {"format": CHECKPOINT_FORMAT, "workflow": self.workflow, "run_id": self.run_id, "path": path,
                   "state": state, "metrics": [dict(m) for m in ctx.metrics]}
        target = write_checkpoint(self.checkpoint_dir, f"ckpt-{self.ledger.state.events:09d}.pkl", payload, path)
        self.ledger.append(Checkpoint(self.ledger.state.version, str(target), t=time.time()))
        self.ledger.flush()
        prune(self.checkpoint_dir)
        self.logger.debug("checkpoint", path=path, file=str(target))
        return str(target)

    def release(self) -> None:
        """After a halt: close the live resources stages made (those with a ``close()``)."""
        for key, value in self.live.items():
            close = getattr(value, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as err:  # a resource broken by the failure: report, keep closing
                    self.logger.warning("release_failed", key=key, error=f"{type(err).__name__}: {err}")
        self.live.clear()

    def close(self, wait: bool = True) -> None:
        """Stop the work thread: after queued work when ``wait``, else drop queued work at once."""
        for pool in (self._executor, self._stage_thread):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=True)
        self._executor = self._stage_thread = None
