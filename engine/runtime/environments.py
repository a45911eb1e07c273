"""The built-in :class:`~engine.runtime.ports.Environment` adapters.

- :class:`TaskEnvironment` (single-turn): one problem of a task per episode; the
  policy's one completion is scored by the task's reward and the episode ends.
- :class:`GuessEnvironment` (multi-turn): the environment holds a secret digit; each
  turn the policy names a digit and hears ``higher``, ``lower`` or ``correct``.  A
  correct guess earns 1 and ends the episode; ``turns`` wrong guesses end it with 0.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Sequence

from engine.runtime.ports import StepResult, TaskLike


class EpisodeOver(RuntimeError):
    """``step`` after the episode ended, or before ``reset``."""


class TaskEnvironment:
    """A task as a single-turn environment: ``reset(seed)`` picks problem ``seed`` (modulo
    the number of problems)."""

    def __init__(self, task: TaskLike, problems: Sequence[Any]) -> None:
        if not problems:
            raise ValueError("a task environment needs at least one problem")
        self.task, self.problems = task, list(problems)
        self._problem: Any = None
        self._return = 0.0
        self._done = True

    @property
    def max_new_tokens(self) -> int:
        return self.task.max_new_tokens

    def reset(self, seed: int) -> str:
        self._problem = self.problems[seed % len(self.problems)]
        self._return, self._done = 0.0, False
        return str(self._problem.prompt)

    def step(self, action: str) -> StepResult:
        if self._done:
            raise EpisodeOver("step on an episode that is over (call reset first)")
        reward = float(self.task.reward(self._problem, action))
        self._return += reward
        self._done = True
        return StepResult("", reward, True)

    def reward(self) -> float:
        return self._return


_DIGIT = re.compile(r"\d")


class GuessEnvironment:
    """Guess a secret digit in at most ``turns`` turns (multi-turn)."""

    def __init__(self, turns: int = 3, max_new_tokens: int = 4) -> None:
        if turns < 1:
            raise ValueError(f"turns must be at least 1, got {turns}")
        self.turns, self._max_new_tokens = turns, max_new_tokens
        self._secret = 0
        self._taken = 0
        self._return = 0.0
        self._done = True

    @property
    def max_new_tokens(self) -> int:
        return self._max_new_tokens

    def reset(self, seed: int) -> str:
        self._secret = random.Random(seed).randrange(10)
        self._taken, self._return, self._done = 0, 0.0, False
        return "guess a digit:"

    def step(self, action: str) -> StepResult:
        if self._done:
            raise EpisodeOver("step on an episode that is over (call reset first)")
        self._taken += 1
        found = _DIGIT.search(action)
        guess = int(found.group()) if found else None
        if guess == self._secret:
            self._return += 1.0
            self._done = True
            return StepResult("", 1.0, True)
        if self._taken >= self.turns:
            self._done = True
            return StepResult("", 0.0, True)
        hint = "none" if guess is None else ("higher" if guess < self._secret else "lower")
        return StepResult(f"{hint}; guess again:", 0.0, False)

    def reward(self) -> float:
        return self._return


#: The built-in environments by name, as ``load_envs`` and a run's TOML name them.
BUILTIN: dict[str, Callable[..., Any]] = {"guess": GuessEnvironment}
