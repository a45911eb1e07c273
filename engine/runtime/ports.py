"""The runtime's ports: what the executor needs from a model backend, and the plain data
it hands back, so that the runtime never imports a backend (or torch).

- :class:`GenerationEngine`: submit a prompt and get a :class:`GenerationHandle`
  (await its :class:`Generation`, or stream its tokens, each with the policy version
  that sampled it), ``pause``, ``resume``, ``load_weights``, ``run``, ``close``.
- :class:`TaskLike`, :class:`TokenizerLike`, :class:`ProblemLike`: how a prompt key
  becomes token ids and a completion becomes a reward.
- :class:`Sample`: one scored completion with its per-token behaviour log-probs and
  versions, as the trainer consumes it and the trajectory store keeps it.
- :class:`TrainingClient`: ``forward_backward``, ``optim_step``, ``save_weights`` and
  ``load_weights``, each returning a :class:`concurrent.futures.Future` at once, so a
  caller may submit the next call before the last one finished (pipelining); calls run
  in the order they were submitted.
- :class:`Environment`: ``reset`` to a first observation, ``step`` with the policy's
  text to the next observation, its reward and whether the episode is over (one step for
  a single-turn task, several for a multi-turn one).
- :class:`MetricsSink`: where a run's metric records go (``write`` and ``close``).

A backend (``engine.backends.local``, the torch engine and trainer) implements these.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from typing import Any, AsyncIterator, Mapping, Protocol, Sequence, runtime_checkable


@dataclass
class Generation:
    """A finished (or, while running, growing) completion: per generated token its id,
    behaviour log-probability and the policy version that sampled it."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    interruptions: int = 0


class GenerationHandle:
    """One submitted prompt: ``await handle.result()`` or ``async for`` over ``stream()``."""

    def __init__(self, prompt: list[int], max_new_tokens: int, stream: bool) -> None:
        self.generation = Generation(list(prompt))
        self.max_new_tokens = max_new_tokens
        self.done: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._queue: asyncio.Queue[tuple[int, float, int] | None] | None = asyncio.Queue() if stream else None
        self.cancelled = False

    def _emit(self, token: int, logprob: float, version: int) -> None:
        generation = self.generation
        generation.tokens.append(token)
        generation.logprobs.append(logprob)
        generation.versions.append(version)
        if self._queue is not None:
            self._queue.put_nowait((token, logprob, version))

    def _finish(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)
        if not self.done.done():
            self.done.set_result(self.generation)

    def _fail(self, error: BaseException) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)
        if self.done.done():
            return
        if isinstance(error, asyncio.CancelledError):
            self.done.cancel()
        else:
            self.done.set_exception(error)

    def cancel(self) -> None:
        """Stop generating this sequence; its slot is freed at the next step."""
        self.cancelled = True

    async def result(self) -> Generation:
        return await self.done

    async def stream(self) -> AsyncIterator[tuple[int, float, int]]:
        """``(token, logprob, version)`` as they are sampled (needs ``submit(stream=True)``)."""
        if self._queue is None:
            raise RuntimeError("this handle was submitted without stream=True")
        while (item := await self._queue.get()) is not None:
            yield item


def check_request(prompt: Sequence[int], max_new_tokens: int, max_len: int) -> None:
    """What every engine's ``submit`` refuses: an empty prompt, fewer than one new
    token, or a prompt and its new tokens longer than the model's ``max_len``."""
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if len(prompt) + max_new_tokens > max_len:
        raise ValueError(f"prompt of {len(prompt)} tokens plus {max_new_tokens} new ones exceeds max_seq_len {max_len}")


@runtime_checkable
class GenerationEngine(Protocol):
    """What the rollout executor needs from a generation engine: submit prompts, pause and
    resume, take new weights (``state_dict``, in the engine's own tensor type) under a
    new policy version, run its loop, close."""

    version: int

    def submit(self, prompt: list[int], max_new_tokens: int, *, stream: bool = False) -> GenerationHandle: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def load_weights(self, state_dict: Mapping[str, Any], version: int) -> None: ...

    async def run(self) -> None: ...

    def close(self) -> None: ...


async def generate(engine: GenerationEngine, prompt: list[int], max_new_tokens: int) -> Generation:
    """Submit ``prompt`` to ``engine`` and await its completion: per generated token its id,
    behaviour log-prob and the policy version that sampled it."""
    return await engine.submit(prompt, max_new_tokens).result()


@runtime_checkable
class TrainingClient(Protocol):
    """What a workflow needs from a trainer, local or remote.  Every call returns a
    :class:`~concurrent.futures.Future` at once and the calls run in submission order,
    so ``forward_backward`` of the next batch may be submitted before the last
    ``optim_step`` finished.  A failure (a dead remote trainer included) is the
    future's exception, with a one-line message.

    - ``forward_backward(samples, advantages)``: the objective on the samples (one
      advantage each), backpropagated into fresh gradients; its statistics with ``loss``.
    - ``optim_step()``: one optimiser step on those gradients; ``grad_norm`` and the new
      policy ``version``.
    - ``save_weights(path)``: the trainer's state (weights, optimiser, version) to
      ``path`` atomically; the path written.
    - ``load_weights(path)``: the state back from ``path``; the version it holds.
    """

    def forward_backward(self, samples: Sequence[Sample], advantages: Sequence[float]) -> Future[dict[str, float]]: ...

    def optim_step(self) -> Future[dict[str, float]]: ...

    def save_weights(self, path: str) -> Future[str]: ...

    def load_weights(self, path: str) -> Future[int]: ...

    def close(self) -> None: ...


@dataclass
class StepResult:
    """What an environment answers to one action: the next observation (``""`` when
    the episode is over), the action's reward and whether the episode is over."""

    observation: str
    reward: float
    done: bool


@runtime_checkable
class Environment(Protocol):
    """An episode of one or several turns: ``reset(seed)`` gives the first prompt text,
    ``step(action)`` takes the policy's completion and answers a :class:`StepResult`.
    ``reward`` is the episode's return so far (the sum of its steps' rewards)."""

    @property
    def max_new_tokens(self) -> int: ...

    def reset(self, seed: int) -> str: ...

    def step(self, action: str) -> StepResult: ...

    def reward(self) -> float: ...


@runtime_checkable
class MetricsSink(Protocol):
    """Where metric records go: ``write`` one record (a ``step`` and named numbers);
    ``close`` flushes and releases the sink."""

    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class ProblemLike(Protocol):
    """A task's problem: the prompt text the tokenizer encodes."""

    @property
    def prompt(self) -> str: ...


class TaskLike(Protocol):
    """A task: how long a completion may be and how it is scored."""

    @property
    def max_new_tokens(self) -> int: ...

    def reward(self, problem: Any, completion: str) -> float: ...


class TokenizerLike(Protocol):
    """Text to prompt ids and generated ids back to text."""

    def prompt_ids(self, prompt: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class Sample:
    """One sampled completion of a prompt, with what the objectives need per token."""

    prompt: list[int]
    completion: list[int]
    behaviour: list[float]
    versions: list[int]
    reward: float
    proximal: list[float] | None = None  # stored recomputation (segment-wise), if any
    proximal_version: int | None = None

    @property
    def tokens(self) -> int:
        return len(self.completion)

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _SAMPLE_FIELDS}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Sample":
        return cls(**obj)


_SAMPLE_FIELDS = tuple(f.name for f in fields(Sample))
