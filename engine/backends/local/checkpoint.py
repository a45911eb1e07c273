"""Trainer checkpoints: one file per policy version, written atomically; and reading a
file of model weights alone (an ``--init`` file).

A checkpoint is written to a temporary name beside it, fsynced and renamed into
place (:func:`engine.log.files.atomic_path`), so a process killed mid-write leaves
the previous checkpoint intact and never a torn one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from engine.log.files import atomic_path

_NAME = re.compile(r"^ckpt-(\d{6})\.pt$")


def checkpoint_path(directory: str | Path, version: int) -> Path:
    """Where the checkpoint of ``version`` lives in ``directory``."""
    return Path(directory) / f"ckpt-{version:06d}.pt"


def save_checkpoint(directory: str | Path, version: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``version``; keep the newest ``keep`` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if version < 0:
        raise ValueError(f"a checkpoint's version must not be negative, got {version}")
    path = checkpoint_path(directory, version)
    with atomic_path(path) as partial:
        torch.save(state, partial)
    for old in sorted(checkpoints(directory))[:-keep]:
        checkpoint_path(directory, old).unlink(missing_ok=True)
    return path


def checkpoints(directory: str | Path) -> list[int]:
    """Versions that have a complete checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for name in os.listdir(directory) if (m := _NAME.match(name)))


def load_checkpoint(directory: str | Path, version: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint of ``version``; a missing one raises ``FileNotFoundError`` naming it."""
    path = checkpoint_path(directory, version)
    if not path.exists():
        have = ", ".join(map(str, checkpoints(directory))) or "none"
        raise FileNotFoundError(f"no checkpoint for version {version} at {path} (versions present: {have})")
    saved = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(saved, dict):
        raise ValueError(f"{path} does not hold a checkpoint (a dict of state), it holds a {type(saved).__name__}")
    return saved


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(error).__name__


def read_weights(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The dict of tensors in the file of model weights at ``path`` (an ``--init`` file);
    a file that holds none raises ValueError naming it."""
    try:
        weights = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises many kinds for a file that is not its own (pickle, zip, EOF)
        raise ValueError(f"{path}: not a file of model weights ({_first_line(err)})") from err
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: not a file of model weights (it holds a {type(weights).__name__})")
    return weights
