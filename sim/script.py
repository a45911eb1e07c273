"""Scripted workloads: the prompts of a run, and each attempt's length and outcome, given
instead of drawn, so a scenario can be replayed exactly by the simulator and by the
real executor (``tests/test_differential.py`` drives one through both and compares
the event sequences).

With a :class:`Script`, the simulator enqueues ``prompts`` at the start, in order, and
no other prompt; the attempt named ``rollout`` (``p0``, then ``p0#2`` for its retry, as
:mod:`engine.core.protocol` names attempts) generates ``attempts[rollout].tokens``
tokens per sample, then ends as its ``outcome`` says: ``accept`` (the policy accepts or
filters it), ``error`` or ``timeout`` (rejected with that reason, retried while its
attempt number is at most ``max_retries``).  Every prompt is ``prompt_tokens`` long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

#: How a scripted attempt ends.
OUTCOMES = ("accept", "error", "timeout")


@dataclass(frozen=True)
class Attempt:
    """One attempt's response length (tokens per sample) and how it ends."""

    tokens: int
    outcome: str = "accept"

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"an attempt generates at least 1 token, got {self.tokens}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {self.outcome!r}")


@dataclass(frozen=True)
class Script:
    """A scripted workload (see the module docstring)."""

    prompts: tuple[str, ...]
    attempts: Mapping[str, Attempt] = field(default_factory=dict)
    max_retries: int = 0
    prompt_tokens: int = 1

    def attempt(self, rollout: str) -> Attempt:
        """The scripted attempt ``rollout``; a missing one is an error that names it."""
        try:
            return self.attempts[rollout]
        except KeyError:
            raise KeyError(f"the script has no attempt {rollout!r}") from None
