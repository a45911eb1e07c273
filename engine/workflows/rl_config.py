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

from engine.core.config import Config
from engine.log import EventLog, LogError
from engine.runtime.collector import MODES as GC_MODES

if TYPE_CHECKING:  # pragma: no cover
    from engine.backends.local.trainer import TrainerConfig


#: The largest seed a run takes (torch seeds its generators with 64-bit integers, and
#: the engine's seed grows by 1000 per version).
MAX_SEED = 2**32 - 1


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
    steps: int = 20
    batch_size: int = 8
    group_size: int = 4
    max_concurrent: int | None = None
    max_staleness: int | None = 0
    policy: str = "admission"
    on_stale: str = "drop"
    objective: str = "decoupled"
    proximal: str | None = None
    minibatches: int = 1
    lr: float = 3e-4
    sft_lr: float = 3e-3
    warmup_steps: int = 100
    warmup_batch: int = 64
    temperature: float = 1.0
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
        least = {"steps": 1, "batch_size": 1, "group_size": 1, "checkpoint_every": 1, "minibatches": 1, "warmup_batch": 1,
                 "warmup_steps": 0, "max_retries": 0, "seed": 0, "max_concurrent": 1, "max_staleness": 0}
        for name, minimum in least.items():
            value = getattr(self, name)
            if value is None and name in ("max_concurrent", "max_staleness"):
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
        for name in ("task", "model_size", "policy", "on_stale", "objective", "device"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"run config field {name!r} must be a string, got {getattr(self, name)!r}")
        if self.init is not None and not isinstance(self.init, str):
            raise ValueError(f"run config field 'init' must be a path, got {self.init!r}")
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
        )

    def trainer_config(self) -> "TrainerConfig":
        """The trainer's settings of this run (the proximal rule defaults to ``segment``
        under the ``segment_wise`` policy, else ``recompute``); imports the torch backend."""
        from engine.backends.local.trainer import TrainerConfig

        proximal = self.proximal or ("segment" if self.policy == "segment_wise" else "recompute")
        return TrainerConfig(lr=self.lr, sft_lr=self.sft_lr, objective=self.objective, proximal=proximal, minibatches=self.minibatches)

    def is_checkpoint(self, version: int) -> bool:
        """Whether the update that reaches ``version`` checkpoints the trainer (every
        ``checkpoint_every`` versions, and the last one)."""
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
