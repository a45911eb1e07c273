"""Trainer checkpoints: one safetensors file per policy version, written atomically; and
reading a file of model weights alone (an ``--init`` file).

A checkpoint is written to a temporary name beside it, fsynced and renamed into
place (:func:`engine.log.files.atomic_path`), so a process killed mid-write leaves
the previous checkpoint intact and never a torn one.

Format: ``ckpt-<version>.safetensors``.  A trainer's state is a nest of dicts, lists,
tensors and plain numbers (the model's weights, the optimiser's state): its tensors are
the file's tensors (named by their place in the nest) and the rest is a JSON skeleton in
the file's metadata (``rollout_ledger``), so loading one never runs a pickle.  Files of
the older format (``ckpt-<version>.pt``, written by ``torch.save``) are still read, with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain data.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engine.log.files import atomic_path

_NAME = re.compile(r"^ckpt-(\d{6})\.(safetensors|pt)$")
#: The metadata key that marks a rollout-ledger checkpoint and holds its skeleton.
METADATA_KEY = "rollout_ledger"
FORMAT = "checkpoint/1"


# What reading a file that is not (or no longer) a safetensors file raises: safetensors maps a
# file through torch by its name, so one removed after its header was read raises RuntimeError.
_UNREADABLE = (SafetensorError, OSError, ValueError, RuntimeError)


def checkpoint_path(directory: str | Path, version: int) -> Path:
    """Where the checkpoint of ``version`` is written in ``directory``."""
    return Path(directory) / f"ckpt-{version:06d}.safetensors"


def checkpoint_file(directory: str | Path, version: int) -> Path | None:
    """The existing checkpoint file of ``version`` in ``directory`` (either format), or ``None``."""
    for path in (checkpoint_path(directory, version), Path(directory) / f"ckpt-{version:06d}.pt"):
        if path.exists():
            return path
    return None


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON skeleton of ``obj``; its tensors go into ``tensors`` (each its own copy,
    so tied weights are stored twice rather than refused as shared memory)."""
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"t": name}
    if isinstance(obj, dict):
        return {"d": [[key, _flatten(value, tensors)] for key, value in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"l": [_flatten(value, tensors) for value in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    raise TypeError(f"a checkpoint holds tensors, dicts, lists and plain values, not a {type(obj).__name__}")


def _unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if "t" in skeleton:
        return tensors[skeleton["t"]]
    if "d" in skeleton:
        return {key: _unflatten(value, tensors) for key, value in skeleton["d"]}
    if "l" in skeleton:
        return [_unflatten(value, tensors) for value in skeleton["l"]]
    return skeleton["v"]


def write_state(path: str | Path, state: Any) -> None:
    """Write ``state`` (a nest of dicts, lists, tensors and plain values) as a safetensors
    file at ``path``, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    metadata = {METADATA_KEY: json.dumps({"format": FORMAT, "state": skeleton})}
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata=metadata)


def read_state(path: str | Path, device: torch.device | str = "cpu") -> Any:
    """The state :func:`write_state` wrote at ``path``; a file that is not one raises
    ``ValueError`` naming it (a missing one ``FileNotFoundError``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        with safe_open(str(path), framework="pt") as opened:  # the header alone, before any tensor is read
            metadata = opened.metadata() or {}
    except _UNREADABLE as err:
        raise ValueError(f"{path}: not a checkpoint ({_first_line(err)})") from None
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: not a checkpoint (a safetensors file without rollout-ledger's metadata)")
    try:
        header = json.loads(metadata[METADATA_KEY])
        skeleton = header["state"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a checkpoint (its metadata is damaged: {_first_line(err)})") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: a checkpoint of format {header.get('format')!r}, this version reads {FORMAT!r}")
    return _unflatten(skeleton, load_file(str(path), device=str(device)))


def check_checkpoint(path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless it holds a checkpoint (for safetensors,
    its header alone is read; a file of the older format is read whole)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as opened:
                metadata = opened.metadata() or {}
        except _UNREADABLE as err:
            raise ValueError(f"{path}: not a checkpoint ({_first_line(err)})") from None
        if METADATA_KEY not in metadata:
            raise ValueError(f"{path}: not a checkpoint (a safetensors file without rollout-ledger's metadata)")
        return
    if not isinstance(_read_legacy(path, "cpu", "a checkpoint"), dict):
        raise ValueError(f"{path}: not a checkpoint (it holds no dict of state)")


def save_checkpoint(directory: str | Path, version: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``version``; keep the newest ``keep`` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if version < 0:
        raise ValueError(f"a checkpoint's version must not be negative, got {version}")
    path = checkpoint_path(directory, version)
    write_state(path, state)
    for old in sorted(checkpoints(directory))[:-keep]:
        for stale in (checkpoint_path(directory, old), directory / f"ckpt-{old:06d}.pt"):
            stale.unlink(missing_ok=True)
    return path


def checkpoints(directory: str | Path) -> list[int]:
    """Versions that have a complete checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted({int(m.group(1)) for name in os.listdir(directory) if (m := _NAME.match(name))})


def load_checkpoint(directory: str | Path, version: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint of ``version``; a missing one raises ``FileNotFoundError`` naming it,
    a file that holds no checkpoint ``ValueError`` naming it."""
    path = checkpoint_file(directory, version)
    if path is None:
        have = ", ".join(map(str, checkpoints(directory))) or "none"
        raise FileNotFoundError(f"no checkpoint for version {version} at {checkpoint_path(directory, version)} (versions present: {have})")
    saved = read_state(path, device) if path.suffix == ".safetensors" else _read_legacy(path, device, "a checkpoint")
    if not isinstance(saved, dict):
        raise ValueError(f"{path} does not hold a checkpoint (a dict of state), it holds a {type(saved).__name__}")
    return saved


def _read_legacy(path: Path, device: torch.device | str, what: str) -> Any:
    """A file ``torch.save`` wrote (the older format), read without running a pickle."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises many kinds for a file that is not its own (pickle, zip, EOF)
        raise ValueError(f"{path}: not {what} ({_first_line(err)})") from err


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(error).__name__


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file (a little-endian header length, then ``{``)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def save_weights(path: str | Path, weights: dict[str, torch.Tensor]) -> None:
    """Write model weights alone (an ``--init`` file) as safetensors, atomically."""
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in weights.items()}
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata={METADATA_KEY: json.dumps({"format": "weights/1"})})


def read_weights(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The dict of tensors in the file of model weights at ``path`` (an ``--init`` file:
    safetensors, or the older ``torch.save`` format read without running a pickle); a
    file that holds none raises ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if _is_safetensors(path):
        try:
            return dict(load_file(str(path), device=str(device)))
        except _UNREADABLE as err:
            raise ValueError(f"{path}: not a file of model weights ({_first_line(err)})") from None
    weights = _read_legacy(path, device, "a file of model weights")
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: not a file of model weights (it holds a {type(weights).__name__})")
    return weights
