"""What defines an asynchronous RL run: :class:`RunConfig` (saved as the run's
``run.json``, reused by a resume) and the check that a new run does not overwrite
an old one.

It imports neither torch nor the run itself, so that a command can parse and check
a config (``rollout-ledger train --help``, a bad option) without loading a model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.backends.local.schedule import LR_SCHEDULES
from engine.core.config import Config
from engine.log import EventLog, LogError
from engine.runtime.collector import MODES as GC_MODES

if TYPE_CHECKING:  # pragma: no cover
    from engine.backends.local.trainer import TrainerConfig


#: The largest seed a run takes (torch seeds its generators with 64-bit integers, and
#: the engine's seed grows by 1000 per version).
MAX_SEED = 2**32 - 1
#: Where a run's metrics go besides its ``metrics.jsonl`` (``--metrics``).
METRIC_SINKS = ("tensorboard", "wandb")
#: Generation engines a run may use (``--engine``).
ENGINES = ("auto", "vllm")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines an RL run (saved as ``run.json``; a resume reuses it).

    ``batch_size`` counts rollouts (prompts) per update, each a group of
    ``group_size`` samples; ``max_concurrent`` (rollouts in flight) defaults to
    ``batch_size``; ``max_staleness = None`` is unbounded, 0 is synchronous.
    ``gc = "update"`` runs Python's garbage collector between updates only
    (:mod:`engine.runtime.collector`), ``"auto"`` leaves it to run whenever it would.
    """

    task: str = "copy"
    model_size: str = "tiny"
    model_dir: str | None = None  # a Hugging Face model directory; None: the built-in policy of ``model_size``
    reward_fn: str | None = None  # a user's reward, ``module:function``
    max_new_tokens: int | None = None  # tokens a completion may take (external tasks; default 32)
    steps: int = 20
    batch_size: int = 8
    group_size: int = 4
    max_concurrent: int | None = None
    max_staleness: int | None = 0
    policy: str = "admission"
    on_stale: str = "drop"
    in_order: bool = False  # batches wait for rollouts started under older versions (Config.in_order)
    objective: str = "decoupled"
    proximal: str | None = None
    minibatches: int = 1
    lr: float = 3e-4
    sft_lr: float = 3e-3
    kl_coef: float = 0.0  # KL penalty to the policy RL started from; 0: none
    entropy_coef: float = 0.0  # entropy bonus; 0: entropy only measured
    lr_warmup: int = 0  # RL updates of linear learning-rate warm-up
    lr_schedule: str = "constant"  # after warm-up: constant, or cosine down to a tenth by the last update
    kl_target: float = 0.0  # scale the rate down while updates' kl_behaviour exceeds twice this (0: off)
    behaviour_m2: float = 0.0  # drop the tokens furthest from their behaviour policy until the mean squared log-ratio is this (0: off)
    metrics: tuple[str, ...] = ()  # sinks beside metrics.jsonl: tensorboard, wandb (offline)
    engine: str = "auto"  # generation: auto (in process: built-in or Hugging Face), or vllm (a model directory)
    overlap: bool = False  # generate while the trainer trains (the engine in a thread of its own, on its own weights)
    keep_cache: bool = False  # after new weights, decode on over the cached keys and values (no re-prefill pass)
    cuda_graphs: bool = False  # the built-in engine's decode step captured once as a CUDA graph and replayed
    vllm_memory: float | None = None  # vLLM's share of GPU (or host) memory; default 0.3 on a GPU, 0.05 on the CPU
    warmup_steps: int = 100
    warmup_batch: int = 64
    temperature: float = 1.0
    eval_temperature: float | None = None  # held-out evaluation's sampling temperature; None: the run's, 0: greedy
    timeout_s: float | None = None
    max_retries: int = 0
    checkpoint_every: int = 1
    requeue_lost: bool = False
    init: str | None = None
    seed: int = 0
    device: str = "cpu"
    gc: str = "update"

    def __post_init__(self) -> None:
        """Refuse a value no run can use, naming its field: counts below their least
        (0 rollouts in flight, a negative number of retries), rates that are not
        finite and positive, a seed outside ``[0, MAX_SEED]``."""
        least = {"steps": 1, "batch_size": 1, "group_size": 1, "checkpoint_every": 0, "minibatches": 1, "warmup_batch": 1,
                 "warmup_steps": 0, "max_retries": 0, "seed": 0, "max_concurrent": 1, "max_staleness": 0, "max_new_tokens": 1,
                 "lr_warmup": 0}
        for name, minimum in least.items():
            value = getattr(self, name)
            if value is None and name in ("max_concurrent", "max_staleness", "max_new_tokens"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"run config field {name!r} must be a whole number of at least {minimum}, got {value!r}")
        if self.seed > MAX_SEED:
            raise ValueError(f"run config field 'seed' must be at most {MAX_SEED}, got {self.seed}")
        for name in ("lr", "sft_lr", "temperature", "timeout_s"):
            value = getattr(self, name)
            if value is None and name == "timeout_s":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
                raise ValueError(f"run config field {name!r} must be a finite number above 0, got {value!r}")
        if self.eval_temperature is not None and (
            not isinstance(self.eval_temperature, (int, float)) or isinstance(self.eval_temperature, bool)
            or not (self.eval_temperature >= 0 and math.isfinite(self.eval_temperature))
        ):
            raise ValueError(f"run config field 'eval_temperature' must be a finite number of at least 0 (0: greedy), "
                             f"got {self.eval_temperature!r}")
        for name in ("kl_coef", "entropy_coef", "kl_target", "behaviour_m2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"run config field {name!r} must be a finite number of at least 0, got {value!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"run config field 'lr_schedule' must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if isinstance(self.metrics, list):  # from run.json
            object.__setattr__(self, "metrics", tuple(self.metrics))
        unknown = [sink for sink in self.metrics if sink not in METRIC_SINKS]
        if not isinstance(self.metrics, tuple) or unknown:
            raise ValueError(f"run config field 'metrics' takes {', '.join(METRIC_SINKS)}, got {self.metrics!r}")
        for name in ("task", "model_size", "policy", "on_stale", "objective", "device"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"run config field {name!r} must be a string, got {getattr(self, name)!r}")
        for name in ("init", "model_dir", "reward_fn"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"run config field {name!r} must be a string, got {getattr(self, name)!r}")
        if self.model_dir is None and self.task.startswith(("rg:", "jsonl:")):
            raise ValueError(f"task {self.task} needs a Hugging Face model (--model DIR): the built-in policy's "
                             "character vocabulary cannot spell its prompts")
        if self.engine not in ENGINES:
            raise ValueError(f"run config field 'engine' must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "vllm" and self.model_dir is None:
            raise ValueError("--engine vllm serves a Hugging Face model: give --model DIR")
        if not isinstance(self.in_order, bool):
            raise ValueError(f"run config field 'in_order' must be true or false, got {self.in_order!r}")
        if not isinstance(self.overlap, bool):
            raise ValueError(f"run config field 'overlap' must be true or false, got {self.overlap!r}")
        if self.overlap and self.engine == "vllm":
            raise ValueError("--overlap runs the in-process engines (built-in or Hugging Face) in a thread; "
                             "vLLM generates in processes of its own: leave out --overlap or --engine vllm")
        if not isinstance(self.keep_cache, bool):
            raise ValueError(f"run config field 'keep_cache' must be true or false, got {self.keep_cache!r}")
        if self.keep_cache and self.engine == "vllm":
            raise ValueError("--keep-cache is the in-process engines' (built-in or Hugging Face); vLLM handles its own "
                             "cache: leave out --keep-cache or --engine vllm")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"run config field 'cuda_graphs' must be true or false, got {self.cuda_graphs!r}")
        if self.cuda_graphs and (self.model_dir is not None or self.device != "cuda"):
            raise ValueError("--cuda-graphs captures the built-in engine's decode step on a GPU: it needs --device cuda "
                             f"and a built-in --model size (got device {self.device!r}"
                             + (f", model directory {self.model_dir!r})" if self.model_dir is not None else ")"))
        if self.vllm_memory is not None and not (isinstance(self.vllm_memory, (int, float)) and 0 < self.vllm_memory <= 1):
            raise ValueError(f"run config field 'vllm_memory' must be a fraction in (0, 1], got {self.vllm_memory!r}")
        if self.gc not in GC_MODES:
            raise ValueError(f"run config field 'gc' must be one of {', '.join(GC_MODES)}, got {self.gc!r}")

    def ledger_config(self) -> Config:
        """The ledger's settings of this run (capacity, batch size, staleness policy)."""
        return Config(
            max_concurrent=self.max_concurrent or self.batch_size,
            batch_size=self.batch_size,
            max_staleness=self.max_staleness,
            policy=self.policy,
            on_stale=self.on_stale,
            in_order=self.in_order,
        )

    def trainer_config(self) -> "TrainerConfig":
        """The trainer's settings of this run (the proximal rule defaults to ``segment``
        under the ``segment_wise`` policy, else ``recompute``); imports the torch backend."""
        from engine.backends.local.trainer import TrainerConfig

        proximal = self.proximal or ("segment" if self.policy == "segment_wise" else "recompute")
        return TrainerConfig(
            lr=self.lr, sft_lr=self.sft_lr, objective=self.objective, proximal=proximal, minibatches=self.minibatches,
            kl_coef=self.kl_coef, entropy_coef=self.entropy_coef, lr_warmup=self.lr_warmup, lr_schedule=self.lr_schedule,
            total_updates=self.steps, kl_target=self.kl_target, behaviour_m2=self.behaviour_m2,
        )

    def is_checkpoint(self, version: int) -> bool:
        """Whether the update that reaches ``version`` checkpoints the trainer (every
        ``checkpoint_every`` versions, and the last one; never with 0, which leaves the
        run with version 0's checkpoint and its final weights)."""
        if self.checkpoint_every == 0:
            return False
        return version % self.checkpoint_every == 0 or version >= self.steps

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "RunConfig":
        """The config of a JSON object (``run.json``); an unknown key is an error."""
        if not isinstance(obj, dict):
            raise ValueError(f"a run config is a JSON object, got {type(obj).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise ValueError(f"unknown run config key(s): {', '.join(sorted(unknown))}")
        return cls(**obj)

    @classmethod
    def saved(
        cls, run_dir: str | Path, *, steps: int | None = None, device: str | None = None, requeue_lost: bool | None = None
    ) -> "RunConfig":
        """The config saved in ``run_dir`` (its ``run.json``), for a resume: ``steps``,
        ``device`` and ``requeue_lost`` may change, nothing else."""
        saved = Path(run_dir) / "run.json"
        if not saved.exists():
            raise FileNotFoundError(f"cannot resume: {saved} does not exist")
        try:
            config = cls.from_json(json.loads(saved.read_text(encoding="utf-8")))
        except ValueError as err:  # not UTF-8, not JSON, or not a run config
            raise ValueError(f"{saved}: not a run's config: {err}") from None
        return replace(
            config, steps=steps or config.steps, device=device or config.device,
            requeue_lost=config.requeue_lost if requeue_lost is None else requeue_lost,
        )


def refuse_existing_run(run_dir: str | Path) -> None:
    """Raise :class:`FileExistsError` when ``run_dir`` already holds a run's log (a new run
    would overwrite it); a log with no event, left by a run killed before its first
    checkpoint, holds nothing to overwrite."""
    events_path = Path(run_dir) / "events.sqlite"
    if events_path.exists() and not _empty_log(events_path):
        raise FileExistsError(f"{events_path} exists: pass --resume to continue that run, or use a new --run-dir")


def _empty_log(events_path: Path) -> bool:
    """Whether ``events_path`` is a log with no event (a file that is no log is not empty)."""
    try:
        with EventLog(events_path) as log:
            return log.last_seq == 0
    except LogError:
        return False
