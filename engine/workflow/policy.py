"""Error policies: what the runner does when a stage fails.

``halt`` stops the workflow (the default); ``skip`` records the stage as skipped
and goes on with the context it had; ``retry(max_attempts, backoff)`` runs it
again, waiting ``backoff * factor ** (attempt - 1)`` seconds between attempts, and
halts when the attempts are spent.  The stage's ``rollback`` runs after every
failed attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorPolicy:
    """One of ``halt``, ``skip`` or ``retry`` (with its attempts and backoff)."""

    kind: str
    max_attempts: int = 1
    backoff: float = 0.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return self.backoff * self.factor ** (attempt - 1)

    def __str__(self) -> str:
        if self.kind == "retry":
            return f"retry(max_attempts={self.max_attempts}, backoff={self.backoff:g})"
        return self.kind


halt = ErrorPolicy("halt")
skip = ErrorPolicy("skip")


def retry(max_attempts: int = 3, backoff: float = 0.0, factor: float = 2.0) -> ErrorPolicy:
    """Retry a failing stage up to ``max_attempts`` times in all, with exponential backoff."""
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise ValueError(f"retry: max_attempts must be an integer of at least 1, got {max_attempts!r}")
    if not isinstance(backoff, (int, float)) or isinstance(backoff, bool) or backoff < 0:
        raise ValueError(f"retry: backoff must be a number of seconds >= 0, got {backoff!r}")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"retry: factor must be a number >= 1, got {factor!r}")
    return ErrorPolicy("retry", max_attempts, float(backoff), float(factor))


def parse_policy(value: Any) -> ErrorPolicy:
    """An :class:`ErrorPolicy` from a policy, ``'halt'``, ``'skip'``, ``'retry'`` or
    ``'retry(3, 0.5)'``; anything else raises ``ValueError`` naming the value."""
    if isinstance(value, ErrorPolicy):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text == "halt":
            return halt
        if text == "skip":
            return skip
        if text == "retry":
            return retry()
        if text.startswith("retry(") and text.endswith(")"):
            parts = [p.strip() for p in text[6:-1].split(",") if p.strip()]
            try:
                numbers = [float(p.split("=")[-1]) for p in parts]
            except ValueError:
                raise ValueError(f"bad error policy {value!r}: retry arguments must be numbers") from None
            if not numbers or len(numbers) > 3 or numbers[0] != int(numbers[0]):
                raise ValueError(f"bad error policy {value!r}: expected retry(max_attempts[, backoff[, factor]])")
            return retry(int(numbers[0]), *numbers[1:])
    raise ValueError(f"bad error policy {value!r}: expected halt, skip or retry(max_attempts, backoff)")
