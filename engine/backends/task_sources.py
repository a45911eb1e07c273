"""Tasks beyond the built-in character tasks, and user rewards.

- ``rg:NAME[:key=value,...]``: problems drawn from ``reasoning-gym``'s procedural
  dataset ``NAME`` (offline; e.g. ``basic_arithmetic``, ``chain_sum``), configured by the
  options (``rg:chain_sum:max_terms=2,max_digits=2``), scored by its verifier
  (``dataset.score_answer``).  Problem ``i`` of a run seeded ``s`` is the dataset's
  entry ``i`` under seed ``s``: the same after a resume.
- ``jsonl:FILE``: one JSON object per line with ``prompt`` and ``answer`` (strings);
  problem ``i`` is line ``i`` modulo the file's length, scored by exact match of the
  stripped completion (1.0 or 0.0).
- ``--reward module:function``: a user's reward replaces the task's (the module is
  imported from ``sys.path`` and the current directory).  Signature::

      def reward(prompt: str, completion: str, answer: str) -> float

  called with the problem's prompt, the decoded completion and the reference answer;
  it must return a number (used as the rollout's reward).

A task spec that is neither these nor a built-in name is left to
:func:`engine.backends.local.tasks.get_task`, which names the known ones.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.backends.local.tasks import Problem, Task, get_task

#: Tokens a completion of an external task may take unless the run says otherwise.
DEFAULT_MAX_NEW_TOKENS = 32
#: Characters of prompt an external task allows for (sequence length bound only).
MAX_PROMPT = 1024
#: The seed of the problems the supervised warm-up draws (apart from a run's own and its
#: held-out problems; one procedural dataset serves every warm-up batch).
SUPERVISED_SEED = 7_777_777


@dataclass(frozen=True)
class ScoredProblem:
    """A problem of an external task: prompt, reference answer, and what its verifier needs."""

    prompt: str
    answer: str
    entry: Any = field(default=None, compare=False)


class ExternalTask:
    """A task whose problems come from outside the built-ins (module docstring); it has
    the built-in :class:`~engine.backends.local.tasks.Task`'s interface."""

    def __init__(self, name: str, problem: Callable[[int, int], ScoredProblem], score: Callable[[ScoredProblem, str], float],
                 max_new_tokens: int, description: str) -> None:
        self.name = name
        self._problem = problem
        self._score = score
        self._max_new_tokens = max_new_tokens
        self.description = description
        self.max_answer = max_new_tokens - 1
        self.max_prompt = MAX_PROMPT

    def problem(self, seed: int, index: int) -> ScoredProblem:
        return self._problem(seed, index)

    def sample(self, rng: random.Random) -> ScoredProblem:
        return self._problem(SUPERVISED_SEED, rng.randrange(1 << 30))

    def reward(self, problem: ScoredProblem, completion: str) -> float:
        return self._score(problem, completion)

    @property
    def max_new_tokens(self) -> int:
        return self._max_new_tokens

    @property
    def max_seq_len(self) -> int:
        return self.max_prompt + self._max_new_tokens + 2

    def supervised(self, rng: random.Random, count: int) -> list[ScoredProblem]:
        return [self.sample(rng) for _ in range(count)]


def _option_value(text: str) -> Any:
    """A dataset option's value: a JSON number, ``true``/``false``, or else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (bool, int, float)) else text


def parse_rg_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,key=value`` (the part after ``rg:``) as the dataset's
    name and its configuration options; a malformed option raises ``ValueError``."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier() or not value.strip():
            raise ValueError(f"rg:{spec}: dataset options are key=value pairs separated by commas, got {item!r}")
        options[key.strip()] = _option_value(value.strip())
    if not name:
        raise ValueError(f"rg:{spec}: name a reasoning-gym dataset, e.g. rg:chain_sum")
    return name, options


def reasoning_gym_task(spec: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> ExternalTask:
    """``rg:NAME[:key=value,...]`` (the options go to the dataset's configuration, e.g.
    ``rg:chain_sum:max_terms=2,max_digits=2``); an unknown name or option (or
    reasoning-gym not installed) raises ``ValueError``."""
    name, options = parse_rg_spec(spec)
    try:
        import reasoning_gym
    except ImportError:
        raise ValueError("task rg:... needs the reasoning-gym package (pip install 'rollout-ledger[hf]')") from None
    try:
        reasoning_gym.create_dataset(name, seed=0, size=1, **options)
    except Exception as err:  # reasoning-gym raises its own kinds for an unknown name or option
        what = "not a reasoning-gym dataset" if not options else "not a reasoning-gym dataset with these options"
        raise ValueError(f"rg:{spec}: {what} ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None
    datasets: dict[int, Any] = {}

    def dataset(seed: int) -> Any:
        if seed not in datasets:
            datasets[seed] = reasoning_gym.create_dataset(name, seed=seed, size=1 << 31, **options)
        return datasets[seed]

    def problem(seed: int, index: int) -> ScoredProblem:
        entry = dataset(seed)[index]
        return ScoredProblem(str(entry["question"]), str(entry["answer"]), entry)

    def score(item: ScoredProblem, completion: str) -> float:
        return float(dataset(0).score_answer(completion.strip(), item.entry))

    return ExternalTask(f"rg:{spec}", problem, score, max_new_tokens, f"reasoning-gym {name}, scored by its verifier")


def jsonl_task(path: str | Path, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> ExternalTask:
    """``jsonl:FILE``; a file that is missing, empty or has a line without string
    ``prompt`` and ``answer`` raises ``ValueError`` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file of prompt/answer lines")
    problems = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number}: not JSON ({err.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("answer"), str):
            raise ValueError(f"{path}: line {number}: expected an object with string 'prompt' and 'answer'")
        problems.append(ScoredProblem(obj["prompt"], obj["answer"]))
    if not problems:
        raise ValueError(f"{path}: holds no prompt/answer line")

    def problem(seed: int, index: int) -> ScoredProblem:
        return problems[index % len(problems)]

    def score(item: ScoredProblem, completion: str) -> float:
        return 1.0 if completion.strip() == item.answer.strip() else 0.0

    return ExternalTask(f"jsonl:{path}", problem, score, max_new_tokens, f"{len(problems)} prompt/answer pairs from {path}")


def load_reward(spec: str) -> Callable[[str, str, str], float]:
    """The user's reward ``module:function`` (module docstring for the signature); a bad
    spec, a failed import or a wrong signature raises ``ValueError`` naming it."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"--reward {spec}: expected module:function")
    if os.getcwd() not in sys.path and "" not in sys.path:  # the console script's path lacks it
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may raise anything as it loads
        raise ValueError(f"--reward {spec}: cannot import {module_name} ({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"--reward {spec}: {module_name} has no function {function_name}")
    try:
        inspect.signature(function).bind("prompt", "completion", "answer")
    except TypeError:
        raise ValueError(f"--reward {spec}: must take (prompt, completion, answer), it takes {inspect.signature(function)}") from None
    except ValueError:  # a builtin without a signature: called as documented
        pass
    return function


def with_reward(task: Any, reward: Callable[[str, str, str], float], spec: str) -> Any:
    """``task`` scored by the user's ``reward`` instead of its own; a reward that is not a
    finite number raises ``ValueError`` naming ``spec``."""

    def score(problem: Any, completion: str) -> float:
        value = reward(problem.prompt, completion, problem.answer)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"--reward {spec}: returned {value!r}, not a finite number")
        return float(value)

    if isinstance(task, ExternalTask):
        return ExternalTask(task.name, task.problem, score, task.max_new_tokens, task.description)
    return _RewardedTask(task, score)


class _RewardedTask:
    """A built-in task with its verifier replaced."""

    def __init__(self, task: Task, score: Callable[[Any, str], float]) -> None:
        self._task, self._score = task, score
        self.name, self.max_prompt, self.max_answer, self.description = task.name, task.max_prompt, task.max_answer, task.description

    def problem(self, seed: int, index: int) -> Problem:
        return self._task.problem(seed, index)

    def sample(self, rng: random.Random) -> Problem:
        return self._task.sample(rng)

    def reward(self, problem: Problem, completion: str) -> float:
        return self._score(problem, completion)

    @property
    def max_new_tokens(self) -> int:
        return self._task.max_new_tokens

    @property
    def max_seq_len(self) -> int:
        return self._task.max_seq_len

    def supervised(self, rng: random.Random, count: int) -> list[Problem]:
        return self._task.supervised(rng, count)


def is_external(spec: str) -> bool:
    """Whether ``spec`` names an external task (``rg:`` or ``jsonl:``)."""
    return spec.startswith(("rg:", "jsonl:"))


def resolve_task(spec: str, *, reward: str | None = None, max_new_tokens: int | None = None) -> Any:
    """The task ``spec`` names (a built-in name, ``rg:NAME`` or ``jsonl:FILE``), scored by
    ``reward`` (``module:function``) when given."""
    if spec.startswith("rg:"):
        task: Any = reasoning_gym_task(spec[3:], max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
    elif spec.startswith("jsonl:"):
        task = jsonl_task(spec[6:], max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
    else:
        task = get_task(spec)
    if reward:
        task = with_reward(task, load_reward(reward), reward)
    return task
