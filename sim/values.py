"""What a scenario's fields may hold, beneath :mod:`sim.config` (which re-exports these
names): the errors that name a refused field, the length distribution table, and how a
raw value (read from TOML, or an override's text) becomes a field's value or is refused.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields
from typing import Any, Mapping

#: Names of the length distributions.
DISTRIBUTIONS = ("fixed", "lognormal", "empirical", "paired")
#: The most tokens a length may be (a fixed value, a cap, a median).
MAX_LENGTH = 2**40


class ScenarioError(ValueError):
    """A scenario field is unknown or has a bad value; ``field`` is its dotted name."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"scenario field {field_name!r}: {message}")
        self.field = field_name
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickle by (field, message), so the error crosses from a sweep's worker process."""
        return (type(self), (self.field, self.message))


class ScenarioFileError(ScenarioError):
    """A scenario file that cannot be read as TOML; ``field`` is its path."""

    def __init__(self, path: str, message: str) -> None:
        ValueError.__init__(self, f"{path}: {message}")
        self.field = str(path)
        self.message = message


@dataclass(frozen=True)
class Distribution:
    """A named length distribution.

    ``fixed`` always gives ``value``; ``lognormal`` has median ``median`` and log
    standard deviation ``sigma``, rounded up and clipped to ``[1, cap]``;
    ``empirical`` resamples the lengths found in ``path`` (an event log's
    rollouts, or the rows of a CSV); ``paired`` (a prompt length only) draws a
    row's prompt length from the response lengths' CSV, whose rows lead with it.
    """

    kind: str = "fixed"
    value: int = 256
    median: float = 256.0
    sigma: float = 1.0
    cap: int = 4096
    path: str = ""


def parse_value(raw: str) -> Any:
    """A TOML value (``4``, ``0.5``, ``true``, ``"x"``), or the bare string itself."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the field's default; ints widen to floats."""
    if name == "ledger.max_staleness":
        if value is None or (isinstance(value, str) and value.lower() in ("inf", "none", "null", "unbounded")):
            return None
        if isinstance(value, float) and math.isinf(value):
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ScenarioError(name, f'must be an integer or "inf", got {value!r}')
        return value
    if isinstance(default, Distribution):
        return _distribution(name, value)
    if isinstance(default, tuple):  # written as a TOML array, read back as a list
        if not isinstance(value, (list, tuple)):
            raise ScenarioError(name, f"must be an array, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ScenarioError(name, f"must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ScenarioError(name, f"must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str) and value.lower() in ("inf", "infinity"):
            return math.inf
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ScenarioError(name, f"must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ScenarioError(name, f"must be a string, got {value!r}")
    return value


def _distribution(name: str, value: Any) -> Distribution:
    """The distribution table ``value`` of the field ``name``, each key coerced like a field."""
    if not isinstance(value, Mapping):
        raise ScenarioError(name, f'must be a table like {{kind = "fixed", value = 256}}, got {value!r}')
    known = {f.name: f.default for f in fields(Distribution)}
    values: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise ScenarioError(f"{name}.{key}", f"unknown key; known keys are {', '.join(known)}")
        values[key] = _coerce(f"{name}.{key}", item, known[key])
    return Distribution(**values)


def _validate_distribution(name: str, dist: Distribution, least: int = 1) -> None:
    """Range checks of the distribution field ``name`` (a length at least ``least``)."""
    if dist.kind not in DISTRIBUTIONS:
        raise ScenarioError(f"{name}.kind", f"must be one of {', '.join(DISTRIBUTIONS)}, got {dist.kind!r}")
    if dist.kind == "fixed" and not least <= dist.value <= MAX_LENGTH:
        raise ScenarioError(f"{name}.value", f"must be between {least} and {MAX_LENGTH} tokens, got {dist.value}")
    if dist.kind == "lognormal":
        if not 1 <= dist.median <= MAX_LENGTH:
            raise ScenarioError(f"{name}.median", f"must be between 1 and {MAX_LENGTH} tokens, got {dist.median}")
        if not (dist.sigma >= 0 and math.isfinite(dist.sigma)):
            raise ScenarioError(f"{name}.sigma", f"must be a finite number at least 0, got {dist.sigma}")
        if not 1 <= dist.cap <= MAX_LENGTH:
            raise ScenarioError(f"{name}.cap", f"must be between 1 and {MAX_LENGTH} tokens, got {dist.cap}")
    if dist.kind == "empirical" and not dist.path:
        raise ScenarioError(f"{name}.path", "an empirical distribution needs the path of an event log or a CSV")
