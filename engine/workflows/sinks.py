"""Where a training run's metrics go besides its ``metrics.jsonl`` (``train --metrics``).

``metrics.jsonl`` is always written: it is what a resume reads back.  A run may
also send each update's numeric metrics to TensorBoard (an event file under
``RUN_DIR/tensorboard``, read by ``tensorboard --logdir RUN_DIR/tensorboard``) and to
Weights & Biases in offline mode (under ``RUN_DIR/wandb``; ``wandb sync`` uploads it
later).  Each needs its library (the ``[metrics]`` extra); a missing one is refused
before the run starts (:func:`check_sinks`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

#: The library each sink imports, and the pip name that provides it.
LIBRARIES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class MissingLibrary(RuntimeError):
    """A sink's library is not installed: the message says what to install."""


class Sink(Protocol):
    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics line (``step`` is the x axis, not a series)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


class TensorBoardSink:
    """One scalar series per metric, at the update's ``step``, in ``RUN_DIR/tensorboard``."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: Mapping[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=int(record["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run in offline mode under ``RUN_DIR/wandb`` (no network)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            mode="offline", dir=str(run_dir), project="rollout-ledger", name=run_dir.name, config=dict(config), reinit="create_new"
        )

    def write(self, record: Mapping[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """The run's sinks, written and closed together."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)

    def write(self, record: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def check_sinks(names: Iterable[str]) -> None:
    """Raise :class:`MissingLibrary` naming what to install when a sink's library is missing."""
    import importlib.util

    for name in names:
        module, package = LIBRARIES[name]
        if importlib.util.find_spec(module) is None:
            raise MissingLibrary(f"--metrics {name} needs {package}: pip install 'rollout-ledger[metrics]'")


def open_sinks(names: Iterable[str], run_dir: Path, config: Mapping[str, Any]) -> Sinks:
    """The sinks ``names`` (``tensorboard``, ``wandb``) of the run in ``run_dir``."""
    names = list(names)
    check_sinks(names)
    made: list[Sink] = []
    for name in names:
        made.append(TensorBoardSink(run_dir) if name == "tensorboard" else WandbSink(run_dir, config))
    return Sinks(made)
