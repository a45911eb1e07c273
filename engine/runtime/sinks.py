"""A :class:`~engine.runtime.ports.MetricsSink` with no library behind it: one JSON
object a line, flushed per record (the TensorBoard and wandb sinks of
``engine.workflows.sinks`` are the other adapters)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Mapping


class JsonLinesSink:
    """Records appended to ``path`` as JSON Lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: the sink is closed")
        self._file.write(json.dumps(dict(record), sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
