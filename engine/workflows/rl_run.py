"""One asynchronous RL run in its directory: the resources (model and trainer, the
ledger, the generation engine, the executor, the sample store, the garbage
collector), the resume after a crash, and the steps of an update (the pause and the
bookkeeping after the trainer's steps are :mod:`engine.workflows.rl_update`'s).

The update itself has one path: the stages of the reinforcement workflow
(:mod:`engine.workflows.rl_stages`), which the ``train`` command and the GPU
benchmarks run through :func:`engine.workflows.reinforcement.train`.  They call
:class:`RLRun`'s public steps in this order::

    run.setup()                  # model, warm-up or resume, ledger, engine, executor
    batch = run.collect_batch()  # asynchronous rollouts until a batch is usable (consumed)
    run.begin_update()           # generation pauses
    ...                          # the trainer's steps (Trainer.prepare_update, forward_backward, optim_step)
    run.finish_update(batch, steps, reward)   # version bump, checkpoint, weights to the engine, metrics
    run.evaluate(); run.summary(); run.close()

What a resume reads back is :mod:`engine.workflows.rl_resume`'s.  A run directory holds ``run.json`` (the config), ``events.sqlite`` (the ledger's
log), ``samples.sqlite`` (completed rollouts' samples), ``metrics.jsonl`` (one line
per update) and ``checkpoints/``.  Generation and training share one device: the
trainer's weights become the engine's at each version bump.  By default the engine
steps only while the trainer waits for a batch (one thread).  With ``overlap`` the
run's event loop (the ledger, the executor and the engine) runs in a thread of its
own for the run's whole life, its engine on its own copy of the weights (and its own
CUDA stream on a GPU), so generation goes on while the trainer trains and pauses
only for the weights of each version bump; every other call into the ledger, the
executor or the sample store goes through that loop (:meth:`~engine.workflows.rl_loop.RunLoop.call`), so they
are only ever touched from its thread.  In a distributed run
(:mod:`engine.workflows.rl_dist`) this is rank 0's run: its trainer is data-parallel
over the trainer ranks and, with generator ranks, its engine is the
:class:`~engine.backends.distributed.generation.RemoteEngine` over them, each weight sync a
pair of ``weight_sync`` stage events in the log.  ``run.json``, the
checkpoints and saved weights are written whole or not at all
(:mod:`engine.log.files`); the two SQLite logs and ``metrics.jsonl`` are appended to
as the run goes (a torn last metrics line is skipped by a resume, which rewrites the
file whole).
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch

from engine.backends.local.checkpoint import read_weights, save_checkpoint
from engine.backends.local.checkpoint import save_weights as write_weights
from engine.backends.local.model import PolicyModule
from engine.backends.task_sources import resolve_task
from engine.backends.local.trainer import Trainer
from engine.backends.distributed import group as dist_group
from engine.backends.distributed.generation import RemoteEngine
from engine.backends.distributed.trainer import DataParallelTrainer
from engine.core.events import Checkpoint, Stage
from engine.ledger import Ledger
from engine.log.files import write_atomic
from engine.log.lock import check_unlocked
from engine.logconfig import get_logger
from engine.runtime.collector import Collector
from engine.runtime.executor import RolloutExecutor
from engine.runtime.store import TrajectoryStore
from engine.workflows import rl_models, rl_resume
from engine.workflows.rl_loop import RunLoop
from engine.workflows.rl_update import CollectedBatch, RunUpdates
from engine.workflows.sinks import open_sinks
from engine.workflows.rl_config import RunConfig, refuse_existing_run

#: The run writes the log itself, with each checkpoint (after committing the sample
#: store), so the ledger never flushes on its own.
FLUSH_EVERY = 1 << 62

#: The path of the ``stage`` events that open and close a weight sync to generator ranks.
WEIGHT_SYNC = "weight_sync"

#: The KL penalty's reference weights in a run directory (with ``kl_coef`` > 0).
REFERENCE_FILE = "reference.safetensors"


class RLRun(RunUpdates):
    """One asynchronous RL run in ``run_dir``; ``resume=True`` continues a killed one."""

    def __init__(self, config: RunConfig, run_dir: str | Path, *, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.config = config
        config.ledger_config()  # validate early: a bad policy or size raises ConfigError naming it
        config.trainer_config()
        # the task (a built-in, rg:NAME or jsonl:FILE, with the user's reward if any) and the
        # tokenizer (the model directory's, or the built-in character one)
        self.task: Any = resolve_task(config.task, reward=config.reward_fn, max_new_tokens=config.max_new_tokens)
        self.tokenizer: Any = rl_models.build_tokenizer(config)
        self.device = torch.device(config.device)
        self.loop = RunLoop()  # the ledger's, the executor's and the engine's (rl_loop)
        self.metrics: list[dict[str, Any]] = []
        self._logger = get_logger("rollout_ledger.train", run=str(self.run_dir))
        self._retrain: tuple[str, ...] = ()
        self._next_prompt = 0
        self._started = 0.0
        self._wall_offset = 0.0
        self._evaluation_s = 0.0
        self._update_began = 0.0  # perf_counter at begin_update
        self._steps_at_update = 0  # the engine's decode steps at begin_update
        self._recompute_s = 0.0  # this update's segment-wise recomputation
        self._recompute_before = 0.0  # the trainer's recomputation seconds at begin_update
        self.collector = Collector(config.gc)  # started by setup(), stopped by close()

    @classmethod
    def resumed(
        cls, run_dir: str | Path, *, steps: int | None = None, device: str | None = None, requeue_lost: bool | None = None
    ) -> "RLRun":
        """The run saved in ``run_dir`` (its ``run.json``), to continue after a crash;
        ``steps``, ``device`` and ``requeue_lost`` may change, nothing else."""
        return cls(RunConfig.saved(run_dir, steps=steps, device=device, requeue_lost=requeue_lost), run_dir, resume=True)

    # -- setup ---------------------------------------------------------------------
    def setup(self) -> None:
        """Build the model and trainer, warm up (or resume), open the ledger and start the executor."""
        config = self.config
        rl_models.prepare_device(config)
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        events_path = self.run_dir / "events.sqlite"
        if self.resume:  # a run another process is writing is refused before anything else is read
            check_unlocked(events_path)
        if self.resume and rl_resume.killed_before_start(self.run_dir):  # nothing was logged: warm up again from the seed
            self._logger.warning("resume_restarts_warmup", reason="killed before its first checkpoint (in warm-up), the run starts again")
            self.resume = False
        if self.resume:
            # The log's writer lock first: a second resume of this run is refused before
            # the log advances, a model is built or a checkpoint is loaded.
            if not events_path.exists():
                raise FileNotFoundError(f"cannot resume: {events_path} does not exist")
            self.ledger = Ledger.resume(events_path, requeue=config.requeue_lost, flush_every=FLUSH_EVERY, clock=self._log_clock)
            found = rl_resume.scan(events_path, self.run_dir / "metrics.jsonl")
        group = dist_group.current()  # a distributed run's processes (None in a single process)
        if group is None:
            self.trainer = Trainer(self.build_policy(), config.trainer_config(), pad_id=self.tokenizer.pad_id, device=self.device)
        else:
            self.trainer = DataParallelTrainer(self.build_policy(), config.trainer_config(), pad_id=self.tokenizer.pad_id,
                                               device=self.device, group=group)
        self.ckpt_dir = self.run_dir / "checkpoints"
        reference_path = self.run_dir / REFERENCE_FILE
        if self.resume:
            if config.kl_coef:
                if not reference_path.exists():
                    raise FileNotFoundError(f"cannot resume: {reference_path} (the KL penalty's reference weights) is missing")
                self.trainer.set_reference(read_weights(reference_path, self.device))
            loaded = rl_resume.restore(self.ledger, self.trainer, self.ckpt_dir, found, self.run_dir / "metrics.jsonl", self.device)
            self._next_prompt, self._retrain, self.metrics = found.prompts, found.retrain, found.metrics
            self._wall_offset = self.metrics[-1]["wall_s"] if self.metrics else 0.0
            self._logger.info("resumed", version=self.ledger.state.version, checkpoint=loaded, retrain=len(self._retrain))
        else:
            refuse_existing_run(self.run_dir)
            write_atomic(self.run_dir / "run.json", json.dumps(asdict(config), indent=2) + "\n")
            if config.init:
                self.load_weights(config.init)
            else:
                self.warmup(config.warmup_steps)
            if config.kl_coef:  # the policy RL starts from, kept for the KL penalty (and a resume)
                self.trainer.set_reference()
                write_weights(reference_path, self.trainer.model.state_dict())
            self.ledger = Ledger(config.ledger_config(), path=events_path, flush_every=FLUSH_EVERY, clock=self._log_clock)
            self.save_checkpoint()
        if isinstance(self.trainer, DataParallelTrainer):  # the other trainer ranks start from rank 0's state
            self.trainer.share_state()
        slots = self.ledger.state.config.rank_max_concurrent * config.group_size  # type: ignore[union-attr]
        self._slots = slots
        seed = config.seed + 1000 * self.ledger.state.version
        if group is not None and group.layout.generators:  # disaggregated: the generator ranks generate
            self.engine = RemoteEngine(group, slots=slots, eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                                       temperature=config.temperature, seed=seed, max_len=self.trainer.model.max_seq_len,
                                       on_sync=self._weight_sync)
            self.engine.load_weights(self.trainer.model.state_dict(), self.ledger.state.version)
        elif config.engine == "vllm":  # vLLM loads the model directory; the trainer's weights replace it first
            self.engine = rl_models.vllm_engine(self.config, self.tokenizer, self.device, self.trainer.model.max_seq_len, slots, seed)
            self.engine.load_weights(self.trainer.model.state_dict(), self.ledger.state.version)
        else:
            generator_model = copy.deepcopy(self.trainer.model)
            if self.device.type == "cuda":
                generator_model = generator_model.to(torch.bfloat16)
            self.engine = self.build_engine(generator_model, slots, seed)
            self.engine.version = self.ledger.state.version
        self.executor = RolloutExecutor(
            self.ledger, self.engine, self.task, self.tokenizer, self.problem_of, group_size=config.group_size,
            store=TrajectoryStore(self.run_dir / "samples.sqlite"), timeout_s=config.timeout_s, max_retries=config.max_retries,
        )
        self.sinks = open_sinks(self.config.metrics, self.run_dir, asdict(config))
        if config.overlap:  # (a distributed run allows it with generator ranks and one trainer: rl_dist.check_split)
            self.loop.start_thread(self.device)
        self.loop.run(self._start())
        self.collector.start()
        self._started = time.perf_counter()

    def build_policy(self) -> PolicyModule:
        """The trainable policy on the run's device (:func:`rl_models.build_policy`)."""
        return rl_models.build_policy(self.config, self.tokenizer, self.task, self.device)

    def build_engine(self, model: PolicyModule, slots: int, seed: int, temperature: float | None = None) -> Any:
        """An in-process generation engine for ``model`` (:func:`rl_models.build_engine`)."""
        return rl_models.build_engine(self.config, self.tokenizer, model, slots, seed, temperature)

    def _weight_sync(self, phase: str, version: int) -> None:
        """Log a weight sync to the generator ranks starting or finishing (a ``stage``
        event of path ``weight_sync``, its version in the detail)."""
        event = Stage(WEIGHT_SYNC, phase, json.dumps({"version": version}))
        executor = getattr(self, "executor", None)
        if executor is None:
            self.ledger.append(event)
        else:
            executor.timed(self.ledger.append, event)

    async def _start(self) -> None:
        self.executor.start()

    def load_weights(self, path: str | Path) -> None:
        """Start from the model weights at ``path`` (a ``--init`` file, as :meth:`save_weights`
        writes); a file that does not hold this model's weights raises ValueError naming it."""
        weights = read_weights(path, self.device)
        try:
            self.trainer.model.load_state_dict(weights)
        except RuntimeError as err:  # other shapes or names: another model's weights
            detail = " ".join(line.strip() for line in str(err).splitlines()[1:])
            raise ValueError(f"{path}: holds another model's weights ({detail[:200] or err})") from err

    def warmup(self, steps: int) -> list[float]:
        """Supervised warm-up on fresh problems, so RL starts from a non-trivial reward."""
        rng = random.Random(f"warmup:{self.config.seed}")
        self._logger.info("warmup", steps=steps)
        losses = []
        for _ in range(steps):
            losses.append(self.trainer.sft_step(self.task.supervised(rng, self.config.warmup_batch), self.tokenizer))
        return losses

    def problem_of(self, key: str) -> Any:
        """The problem a prompt key (``p<index>``) names."""
        if not key.startswith("p") or not key[1:].isdigit():
            raise ValueError(f"not a prompt key: {key!r} (expected p<index>)")
        return self.task.problem(self.config.seed, int(key[1:]))

    def _prompts(self) -> Iterator[str]:
        while True:
            key = f"p{self._next_prompt}"
            self._next_prompt += 1
            yield key

    # -- an update's steps ----------------------------------------------------------
    @property
    def version(self) -> int:
        """The ledger's policy version: the number of updates made."""
        return self.ledger.state.version

    def done(self) -> bool:
        """Whether the run has made ``config.steps`` updates."""
        return self.version >= self.config.steps

    def collect_batch(self) -> CollectedBatch:
        """The batch of the next update: after a resume, the one the log shows consumed
        but never trained (from the sample store); else rollouts run until
        ``batch_size`` usable ones are ready, which are consumed."""
        if self._retrain:
            rollouts, self._retrain = self._retrain, ()
            return CollectedBatch(rollouts, self.loop.call(lambda: [self.executor.store.get(r) for r in rollouts]))
        start = time.perf_counter()
        rollouts, groups = self.loop.run(self.executor.prepare_batch(self.config.batch_size, self._prompts()))
        return CollectedBatch(rollouts, groups, time.perf_counter() - start)

    # -- evaluation, files and figures ------------------------------------------------
    def _log_clock(self) -> float:
        """The ``t`` of the run's events: :meth:`elapsed` once the loop's clock runs (the
        run's start before that), so ``calibrate`` can time segments, steps and syncs."""
        return self.elapsed() if self._started else self._wall_offset

    def elapsed(self) -> float:
        """Seconds of training so far: since setup, plus the time before a resume, less
        the time spent evaluating (throughput is counted over the training loop)."""
        return self._wall_offset + time.perf_counter() - self._started - self._evaluation_s

    def evaluate(self, count: int = 64) -> float:
        """Mean reward of the current weights on ``count`` held-out problems (sampled at
        ``eval_temperature``, 0 greedy, or else the run's temperature; on a private
        engine and event loop: the run's rollouts do not advance meanwhile, and the
        time is left out of :meth:`elapsed`).  The
        engine has as many slots as the run's (at least 64): the problems decode in as
        few waves as the run's memory allows (a latency-bound model decodes a wide step
        in about the time of a narrow one)."""
        start = time.perf_counter()
        problems = [self.task.problem(self.config.seed + 10_000_019, i) for i in range(count)]
        engine = self.build_engine(self.trainer.model, min(count, max(64, self._slots)), self.config.seed,
                                   self.config.eval_temperature)
        generating = self.loop.threaded  # (overlap) the run's engine stops after its current step
        if generating:
            self.loop.call(self.engine.pause)
        try:
            reward = rl_models.held_out_reward(engine, self.trainer.model, self.task, self.tokenizer, problems)
        finally:
            if generating:
                self.loop.call(self.engine.resume)
        if self._started:
            self._evaluation_s += time.perf_counter() - start
        return reward

    def save_checkpoint(self) -> Path:
        """Checkpoint the trainer at the current version, log it and write the log."""
        version = self.ledger.state.version
        path = save_checkpoint(self.ckpt_dir, version, self.trainer.state_dict())
        self.ledger.append(Checkpoint(version, str(path)))
        self._write()
        return path

    def _write(self) -> None:
        """Commit the sample store, then write the log (timed as the executor's)."""
        executor = getattr(self, "executor", None)
        if executor is None:
            self.ledger.flush()
            return
        start = time.perf_counter()
        executor.store.commit()
        executor.store_seconds += time.perf_counter() - start
        executor.timed(self.ledger.flush)

    def save_weights(self, path: str | Path) -> None:
        """The model's weights alone (a ``--init`` file for other runs)."""
        write_weights(path, self.trainer.model.state_dict())

    def summary(self) -> dict[str, Any]:
        """Throughput, reward, staleness and the ledger's counters of the run so far."""
        return self.loop.call(rl_models.summary, self.ledger.state, self.metrics, self.elapsed(), self.executor, self.collector.seconds)

    def close(self) -> None:
        """Stop the executor and the engine, flush and close the ledger (once: closing
        a closed run does nothing)."""
        if self.loop.is_closed():
            return
        if hasattr(self, "executor"):
            self.loop.run(self.executor.close())
            self.loop.call(self.executor.store.close)  # commits before the log is written below
        self.loop.stop_thread()  # the ledger is this thread's again
        if hasattr(self, "trainer"):
            self.trainer.close()
        if hasattr(self, "ledger"):
            self.ledger.close()
        if hasattr(self, "sinks"):
            self.sinks.close()
        self.loop.close()
        self.collector.stop()
