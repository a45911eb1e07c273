"""Run configuration: the knobs of the capacity rule and the staleness policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

POLICIES = ("admission", "strict", "segment_wise")
ON_STALE = ("drop", "requeue")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config field {field!r}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Config:
    """Capacity and staleness settings of one run (one data-parallel rank's view).

    ``max_concurrent`` and ``batch_size`` are required; ``max_staleness = None``
    means unbounded; ``policy`` defaults to ``admission`` (AReaL's behaviour);
    ``on_stale`` says what ``strict`` does with a stale rollout (``drop`` it or
    ``requeue`` its prompt as a new attempt); ``dp_size`` divides the limits per rank.
    ``in_order`` makes batches wait for older rollouts: no batch takes a rollout while
    one that started under an older policy version is still generating, so a long
    rollout is not overtaken by shorter, newer ones (every batch is then about as
    stale as the next, with the synchronous run's mix of short and long rollouts).
    """

    max_concurrent: int
    batch_size: int
    max_staleness: int | None = None
    policy: str = "admission"
    on_stale: str = "drop"
    dp_size: int = 1
    in_order: bool = False

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "batch_size", "dp_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(name, f"must be an integer, got {value!r}")
            if value < 1:
                raise ConfigError(name, f"must be at least 1, got {value}")
        if self.max_staleness is not None:
            if not isinstance(self.max_staleness, int) or isinstance(self.max_staleness, bool):
                raise ConfigError("max_staleness", f"must be an integer or null, got {self.max_staleness!r}")
            if self.max_staleness < 0:
                raise ConfigError("max_staleness", f"must be at least 0 or null, got {self.max_staleness}")
        if not isinstance(self.in_order, bool):
            raise ConfigError("in_order", f"must be true or false, got {self.in_order!r}")
        if self.policy not in POLICIES:
            raise ConfigError("policy", f"must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.on_stale not in ON_STALE:
            raise ConfigError("on_stale", f"must be one of {', '.join(ON_STALE)}, got {self.on_stale!r}")

    @property
    def rank_max_concurrent(self) -> int:
        """Concurrency limit of one data-parallel rank: ``max(1, max_concurrent // dp_size)``."""
        return max(1, self.max_concurrent // self.dp_size)

    @property
    def rank_batch_size(self) -> int:
        """Batch size of one data-parallel rank: ``max(1, batch_size // dp_size)``."""
        return max(1, self.batch_size // self.dp_size)

    def to_json(self) -> dict[str, Any]:
        """All fields, defaults included, as a JSON object; ``in_order`` only when set,
        so that a run whose batches are not in order writes the log it wrote before
        the field existed (schema 2's rows and JSON lines, unchanged)."""
        data = asdict(self)
        if not self.in_order:
            del data["in_order"]
        return data

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Config:
        """Build from a JSON object; unknown keys and bad values raise :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        for key in obj:
            if key not in known:
                raise ConfigError(str(key), f"unknown key; known keys are {', '.join(sorted(known))}")
        for key in ("max_concurrent", "batch_size"):
            if key not in obj:
                raise ConfigError(key, "is required")
        return cls(**obj)
