"""Built-in verifiable tasks with long-tailed answer lengths, and their tokenizer.

No download: every problem is drawn from a seeded ``random.Random``.  Answer
lengths follow a truncated power law (most answers short, a few very long), so a
synchronous batch waits on its longest sequence, which is what asynchronous
rollouts win back.  Rewards are verifiable: the fraction of answer characters
produced correctly (1.0 exactly when the completion equals the answer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

SPECIALS = ("<pad>", "<bos>", "<eos>")
CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyz+-*=:;,.|#? "


class Tokenizer:
    """Character-level tokenizer over a small fixed vocabulary (specials first)."""

    def __init__(self, characters: str = CHARACTERS) -> None:
        self.vocab: tuple[str, ...] = SPECIALS + tuple(characters)
        self._ids = {token: index for index, token in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a character outside the vocabulary raises ``ValueError``."""
        try:
            return [self._ids[char] for char in text]
        except KeyError as error:
            raise ValueError(f"character {error.args[0]!r} of {text!r} is not in the vocabulary") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` up to the first ``<eos>``; specials other than ``<eos>`` are dropped."""
        out = []
        for index in ids:
            if index == self.eos_id:
                break
            if index >= len(SPECIALS):
                out.append(self.vocab[index])
        return "".join(out)

    def prompt_ids(self, prompt: str) -> list[int]:
        """``<bos>`` followed by the prompt's ids: what generation starts from."""
        return [self.bos_id, *self.encode(prompt)]

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's ids followed by ``<eos>``: the supervised target."""
        return [*self.encode(answer), self.eos_id]


@dataclass(frozen=True)
class Problem:
    """One prompt and its verifiable answer."""

    prompt: str
    answer: str


def power_law_length(rng: random.Random, low: int, high: int, alpha: float) -> int:
    """A length in ``[low, high]`` with ``P(n) ∝ n ** -alpha``: long-tailed for small ``alpha``."""
    weights = [n ** -alpha for n in range(low, high + 1)]
    return rng.choices(range(low, high + 1), weights=weights)[0]


def char_reward(answer: str, completion: str) -> float:
    """Fraction of positions right, over the longer of answer and completion (1.0 iff equal)."""
    longest = max(len(answer), len(completion))
    if longest == 0:
        return 1.0
    return sum(a == c for a, c in zip(answer, completion)) / longest


@dataclass(frozen=True)
class Task:
    """A named problem generator with a verifier.

    ``max_answer`` bounds answer length; generation is given ``max_answer + 1``
    tokens (room for ``<eos>``) and prompts never exceed ``max_prompt`` characters.
    """

    name: str
    make: Callable[[random.Random], Problem]
    max_prompt: int
    max_answer: int
    description: str

    def sample(self, rng: random.Random) -> Problem:
        return self.make(rng)

    def problem(self, seed: int, index: int) -> Problem:
        """The ``index``-th problem of a run seeded ``seed``: the same on every machine and after a resume."""
        return self.make(random.Random(f"{self.name}:{seed}:{index}"))

    def reward(self, problem: Problem, completion: str) -> float:
        return char_reward(problem.answer, completion)

    @property
    def max_new_tokens(self) -> int:
        return self.max_answer + 1

    @property
    def max_seq_len(self) -> int:
        """Tokens a full sequence may need: ``<bos>``, prompt, answer, ``<eos>``."""
        return self.max_prompt + self.max_answer + 2

    def supervised(self, rng: random.Random, count: int) -> list[Problem]:
        """``count`` fresh problems with their answers, for the supervised warm-up."""
        return [self.make(rng) for _ in range(count)]


def _letters(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def reverse_task(alphabet: str = "abcdefgh", low: int = 1, high: int = 48, alpha: float = 1.1) -> Task:
    """``rev:abc=`` answers ``cba``; the length is long-tailed in ``[low, high]``."""

    def make(rng: random.Random) -> Problem:
        text = _letters(rng, alphabet, power_law_length(rng, low, high, alpha))
        return Problem(f"rev:{text}=", text[::-1])

    return Task("reverse", make, high + 5, high, f"reverse a string of {low}-{high} letters (power law, alpha {alpha})")


def copy_task(alphabet: str = "abcd", low: int = 1, high: int = 4) -> Task:
    """``cp:abc=`` answers ``abc``: the easy task the CPU tests train on."""

    def make(rng: random.Random) -> Problem:
        text = _letters(rng, alphabet, rng.randint(low, high))
        return Problem(f"cp:{text}=", text)

    return Task("copy", make, high + 4, high, f"copy a string of {low}-{high} letters")


def repeat_task(alphabet: str = "abc", high: int = 40, alpha: float = 1.2) -> Task:
    """``rep:ab*3=`` answers ``ababab``: short prompts, long-tailed answers up to ``high``."""

    def make(rng: random.Random) -> Problem:
        unit = _letters(rng, alphabet, rng.randint(1, 2))
        times = power_law_length(rng, 1, high // len(unit), alpha)
        return Problem(f"rep:{unit}*{times}=", unit * times)

    return Task("repeat", make, 10, high, f"repeat a 1-2 letter unit, long-tailed count up to {high} letters")


TASKS: dict[str, Callable[[], Task]] = {
    "reverse": reverse_task,
    "copy": copy_task,
    "repeat": repeat_task,
}


def get_task(name: str) -> Task:
    """The built-in task ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks are {', '.join(TASKS)}")
    return TASKS[name]()
