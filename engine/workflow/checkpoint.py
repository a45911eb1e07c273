"""Workflow checkpoints on disk: the pickled state, metrics and position of a run
after a checkpoint stage, and how a resume finds the last good one in the log.

A checkpoint file ``ckpt-<events>.pkl`` holds ``format``, ``workflow``, ``run_id``,
``path`` (the checkpointed stage), ``state`` (live resources and pending futures
left out: a finished future is saved as its value) and ``metrics``; it is written to
a temporary file and renamed, then logged as a ``Checkpoint`` event.  Only the
newest :data:`KEEP_CHECKPOINTS` files are kept.  The file is written whole or not at
all (:func:`engine.log.files.atomic_output`).
"""

from __future__ import annotations

import json
import pickle
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import immutables

from engine.core.events import Checkpoint, Stage
from engine.log import EventLog
from engine.log.files import atomic_output
from engine.workflow.errors import ResumeError

CHECKPOINT_FORMAT = 1
#: Workflow checkpoints kept on disk (older ones are deleted once a newer one is logged).
KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class _DoneFuture:
    """A finished future as saved in a checkpoint."""

    value: Any


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: right after stage ``path``, with ``state`` and ``metrics``."""

    path: str
    state: Mapping[str, Any]
    metrics: tuple[Mapping[str, Any], ...]
    checkpoint: str


def saved_state(state: Mapping[str, Any], transient: set[str], path: str) -> dict[str, Any]:
    """The part of ``state`` a checkpoint keeps: live resources (``transient`` keys)
    left out, finished futures replaced by their values; a pending future is an error."""
    kept: dict[str, Any] = {}
    for key, value in state.items():
        if key in transient:
            continue
        if isinstance(value, Future):
            if not value.done():
                raise RuntimeError(f"stage {path!r}: cannot checkpoint while future {key!r} is pending; await it first")
            value = _DoneFuture(value.result())
        kept[key] = value
    return kept


def write_checkpoint(directory: Path, name: str, payload: dict[str, Any], path: str) -> Path:
    """Pickle ``payload`` to ``directory/name`` whole or not at all (temporary file,
    fsync, rename); a state that cannot be pickled raises naming its keys."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    try:
        with atomic_output(target, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        bad = [k for k, v in payload["state"].items() if not _picklable(v)]
        raise RuntimeError(f"stage {path!r}: cannot checkpoint state key(s) {', '.join(bad) or '?'}: {err}") from err
    return target


def prune(directory: Path) -> None:
    """Delete all but the newest :data:`KEEP_CHECKPOINTS` checkpoint files."""
    for old in sorted(directory.glob("ckpt-*.pkl"))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def read_resume_point(log: str | Path, workflow: str) -> tuple[dict[str, Any], ResumePoint | None]:
    """The stored run header (``run_id``, ``config``) and the last checkpoint of ``workflow`` in ``log``."""
    if not Path(log).exists():
        raise ResumeError(f"no log to resume at {log}")
    header: dict[str, Any] | None = None
    checkpoints: list[str] = []
    with EventLog(log, mode="r") as events:
        for event in events.events():
            if isinstance(event, Stage) and event.path == workflow and event.phase == "started" and header is None:
                header = json.loads(event.detail or "{}")
            elif isinstance(event, Checkpoint):
                checkpoints.append(event.path)
    if header is None:
        raise ResumeError(f"the log at {log} holds no run of workflow {workflow!r}")
    for file in reversed(checkpoints):
        try:
            with open(file, "rb") as handle:
                payload = pickle.load(handle)
        except (OSError, pickle.UnpicklingError, EOFError):
            continue
        if isinstance(payload, dict) and payload.get("workflow") == workflow and payload.get("format") == CHECKPOINT_FORMAT:
            state = {k: _restore(v) for k, v in payload["state"].items()}
            point = ResumePoint(payload["path"], state, tuple(immutables.Map(m) for m in payload["metrics"]), file)
            return header, point
    return header, None


def _restore(value: Any) -> Any:
    if isinstance(value, _DoneFuture):
        future: Future = Future()
        future.set_result(value.value)
        return future
    return value


