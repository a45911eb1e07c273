"""What a resumed RL run takes from its directory after a crash: the prompts already
used and the batch consumed but never trained (from the ledger's log), the metrics
lines (from ``metrics.jsonl``), and the trainer checkpoint that matches the log; or,
for a run killed before its first checkpoint was logged (during warm-up), that it
has nothing to take and starts again (:func:`killed_before_start`).

The rule for a checkpoint ahead of the log: one version ahead, with the log showing
its batch consumed after the last version bump, means the process died between
saving it and logging the bump, so the update happened and the bump is logged now;
any other checkpoint ahead of the log was trained on a batch the log never recorded
as consumed and is deleted.  The update's write order that makes this rule sound is
:meth:`engine.workflows.rl_update.RunUpdates.finish_update`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.backends.local.checkpoint import (
    checkpoint_file,
    checkpoint_path,
    checkpoints,
    load_checkpoint,
)
from engine.backends.local.trainer import Trainer
from engine.core.events import Checkpoint, Consumed, Enqueued, Version
from engine.ledger import Ledger
from engine.log import EventLog
from engine.log.files import write_atomic


@dataclass
class LogScan:
    """A resume's reading of the run: prompts enqueued as first attempts, the rollouts
    consumed after the last version bump (never trained), and the metrics lines."""

    prompts: int = 0
    retrain: tuple[str, ...] = ()
    metrics: list[dict[str, Any]] = field(default_factory=list)


def scan(events_path: Path, metrics_path: Path) -> LogScan:
    """Read the log at ``events_path`` and the metrics lines (a line torn by the crash is skipped)."""
    if not events_path.exists():
        raise FileNotFoundError(f"cannot resume: {events_path} does not exist")
    found = LogScan()
    since_version: list[str] = []
    with EventLog(events_path, mode="r") as log:
        for event in log.events():
            if isinstance(event, Enqueued) and event.attempt == 1:
                found.prompts += 1
            elif isinstance(event, Consumed):
                since_version.extend(event.rollouts)
            elif isinstance(event, Version):
                since_version = []
    found.retrain = tuple(since_version)
    for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
        try:
            found.metrics.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def restore(ledger: Ledger, trainer: Trainer, ckpt_dir: Path, found: LogScan, metrics_path: Path, device: torch.device) -> int:
    """Bring ``ledger`` and ``trainer`` to one version after a crash (module docstring):
    lift a pause the crash left, roll the version forward or delete checkpoints ahead
    of the log, load the checkpoint at or before the version, drop metrics lines of
    updates the log never recorded (``found`` is updated in place) and log the
    checkpoint in use; returns that checkpoint's version."""
    if ledger.state.paused:  # died during an update: generation resumes with the run
        ledger.resume_generation()
    version = ledger.state.version
    have = checkpoints(ckpt_dir)
    if version + 1 in have and found.retrain:
        found.retrain = ()
        ledger.advance_version()
        version += 1
    for ahead in (v for v in have if v > version):
        if (stale := checkpoint_file(ckpt_dir, ahead)) is not None:
            stale.unlink()
    usable = [v for v in have if v <= version]
    if not usable:
        raise FileNotFoundError(f"cannot resume: no checkpoint at or before version {version} in {ckpt_dir}")
    trainer.load_state_dict(load_checkpoint(ckpt_dir, usable[-1], device))
    trainer.version = version
    found.metrics = [m for m in found.metrics if m["step"] <= version]
    write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in found.metrics))
    if ledger.state.checkpoint is None or ledger.state.checkpoint.version != usable[-1]:
        ledger.append(Checkpoint(usable[-1], str(checkpoint_file(ckpt_dir, usable[-1]) or checkpoint_path(ckpt_dir, usable[-1]))))
    ledger.flush()
    return usable[-1]


def killed_before_start(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` was killed before its log was first written (in
    warm-up, or writing the first checkpoint): its ``events.sqlite`` is missing or holds
    no event.  The run start, the first checkpoint and every later event are written
    after warm-up, so such a run has nothing to keep (no rollout, sample or metrics
    line) and a resume starts it again from its seed.  A missing or empty log beside
    files only a started run writes (metrics, samples, a checkpoint past version 0)
    means the log was lost, not unwritten: :class:`FileNotFoundError`, nothing touched."""
    events_path = run_dir / "events.sqlite"
    if events_path.exists() and events_path.stat().st_size:  # a zero-byte file: created, never written
        with EventLog(events_path, "r") as log:
            if log.last_seq > 0:
                return False
    later = [str(path) for path in (run_dir / "metrics.jsonl", run_dir / "samples.sqlite") if path.exists()]
    later += [str(checkpoint_file(run_dir / "checkpoints", v)) for v in checkpoints(run_dir / "checkpoints") if v > 0]
    if later:
        raise FileNotFoundError(f"cannot resume: {events_path} is missing or empty, yet the run got past its warm-up "
                                f"({', '.join(later)}); its log was lost")
    return True
