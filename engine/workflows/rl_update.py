"""An RL run's update: the batch it trains (:class:`CollectedBatch`), the pause before
the trainer's steps and the bookkeeping after them (:class:`RunUpdates`, which
:class:`engine.workflows.rl_run.RLRun` takes its update steps from): the version bump,
the checkpoint when due, the segment-wise recomputation, the weights to the engine and
the update's metrics line, in the order a resume relies on
(:mod:`engine.workflows.rl_resume`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from engine.backends.local.checkpoint import save_checkpoint
from engine.backends.local.trainer import Sample, Trainer, completion_logprobs
from engine.core.events import Checkpoint
from engine.ledger import Ledger
from engine.runtime.collector import Collector
from engine.runtime.executor import RolloutExecutor
from engine.workflows import rl_models
from engine.workflows.rl_config import RunConfig
from engine.workflows.rl_loop import RunLoop
from engine.workflows.sinks import Sinks


@dataclass
class CollectedBatch:
    """Rollouts consumed for one update: their ids and GRPO groups of samples, how long
    collecting them took and when it ended (``time.perf_counter``)."""

    rollouts: tuple[str, ...]
    groups: list[list[Sample]]
    wait_s: float = 0.0
    collected_at: float = field(default_factory=time.perf_counter)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for group in self.groups for s in group)

    @property
    def samples(self) -> list[Sample]:
        return [s for group in self.groups for s in group]


class RunUpdates:
    """The update steps of an RL run (the attributes below are the run's, set up by
    :meth:`RLRun.setup <engine.workflows.rl_run.RLRun.setup>`; :meth:`_write` and
    :meth:`elapsed` are the run's own)."""

    config: RunConfig
    run_dir: Path
    device: torch.device
    tokenizer: Any
    loop: RunLoop
    metrics: list[dict[str, Any]]
    ledger: Ledger
    trainer: Trainer
    engine: Any
    executor: RolloutExecutor
    collector: Collector
    sinks: Sinks
    ckpt_dir: Path
    _slots: int
    _update_began: float
    _steps_at_update: int
    _recompute_s: float
    _recompute_before: float

    def _write(self) -> None:
        raise NotImplementedError

    def elapsed(self) -> float:
        raise NotImplementedError

    def begin_update(self) -> Trainer:
        """Pause generation (admissions and decoding) for the update, unless it overlaps
        training (``overlap``: the version bump pauses it for the weights alone);
        returns the trainer."""
        if not self.config.overlap:
            self.executor.pause()
        self._update_began = time.perf_counter()
        self._steps_at_update = self.engine.steps
        self._recompute_before = getattr(self.trainer, "recompute_seconds", 0.0)
        return self.trainer

    def finish_update(self, batch: CollectedBatch, steps: Sequence[dict[str, float]], reward: float, *,
                      held_out: float | None = None) -> dict[str, Any]:
        """After the trainer's steps on ``batch`` (their statistics ``steps``; ``reward``
        the batch's mean; ``held_out`` the new weights' held-out reward when it was
        measured): bump the version, checkpoint when due, hand the weights to the
        engine, resume generation, collect garbage, and append the update's metrics line
        (returned).

        Order, for a crash at any point: when the update checkpoints, samples and log
        are written first (the batch's consumption is durable), then the checkpoint
        file of the new version, then the version bump (through the executor, with
        the segment-wise recomputation), the ``checkpoint`` event and the log again.
        A resume that finds the checkpoint ahead of the log's version therefore finds
        its batch consumed and rolls the version forward instead of training the
        batch twice or losing it; one that finds no such checkpoint trains the
        consumed batch once (:meth:`collect_batch`)."""
        if self.loop.threaded and self.device.type == "cuda":
            torch.cuda.synchronize()  # the optimiser's last step is done before the loop's thread reads the weights
        return self.loop.call(self._finish_update, batch, steps, reward, held_out)

    def _finish_update(self, batch: CollectedBatch, steps: Sequence[dict[str, float]], reward: float,
                       held_out: float | None) -> dict[str, Any]:
        executor, trainer = self.executor, self.trainer
        trained_at = time.perf_counter()
        overlapped = self.engine.steps - self._steps_at_update  # decode steps while the trainer trained
        version = trainer.version
        trainer.end_update(steps)  # (kl_target) the next update's rate, checkpointed with it
        trainer.version = version + 1
        due = self.config.is_checkpoint(version + 1)
        if due:
            self._write()
        checkpoint_began = time.perf_counter()
        saved = save_checkpoint(self.ckpt_dir, version + 1, trainer.state_dict()) if due else None
        checkpoint_s = time.perf_counter() - checkpoint_began if due else 0.0
        self._recompute_s, sync_began = 0.0, time.perf_counter()
        executor.set_version(trainer.model.state_dict(), self._recompute)
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the weights are in the engine: the sync is timed whole
        sync_s = time.perf_counter() - sync_began - self._recompute_s
        if saved is not None:  # samples, then the log, are made durable with each checkpoint
            executor.timed(self.ledger.append, Checkpoint(version + 1, str(saved)))
            self._write()
        if not self.config.overlap:  # (with overlap, set_version paused and resumed it)
            executor.resume()
        self.collector.collect()
        prepare_recompute = getattr(trainer, "recompute_seconds", 0.0) - self._recompute_before
        record = rl_models.update_record(
            self.ledger.state, batch, reward, version, executor=executor, engine=self.engine, steps=steps,
            wall_s=self.elapsed(), gc_s=self.collector.seconds, slots=self._slots, sync_s=sync_s,
            step_s=trained_at - self._update_began - prepare_recompute if self._update_began else 0.0,
            recompute_s=prepare_recompute + self._recompute_s, max_width=trainer.model.max_seq_len,
        )
        record["overlap_steps"] = overlapped
        record["checkpoint_s"] = checkpoint_s  # the weights and optimiser state to disk (0 when none was due)
        if held_out is not None:
            record["eval_reward"] = held_out
        self.metrics.append(record)
        with open(self.run_dir / "metrics.jsonl", "a") as out:
            out.write(json.dumps(record) + "\n")
        self.sinks.write(record)
        return record

    def _recompute(self, rollouts: tuple[str, ...]) -> None:
        """Segment-wise, at the bump to the trainer's new version ``v+1``: store the
        proximal log-probs of ``rollouts`` (ready, to be trained by the update that
        starts at ``v+1``) under ``v+1``'s weights, the trainer's own, tagged ``v+1``.
        The proximal policy of an update is the one it starts from; the engine still
        holds ``v``'s weights at this point, which would be one version behind."""
        began = time.perf_counter()
        store, trainer = self.executor.store, self.trainer
        pad = self.tokenizer.pad_id
        was_training = trainer.model.training
        trainer.model.eval()
        try:
            for rollout in rollouts:
                samples = store.get(rollout)
                with trainer.autocast():
                    logprobs = completion_logprobs(trainer.model, samples, pad)
                for sample, values in zip(samples, logprobs):
                    sample.proximal, sample.proximal_version = values, trainer.version
                store.put(rollout, samples)
        finally:
            trainer.model.train(was_training)
            self._recompute_s += time.perf_counter() - began
