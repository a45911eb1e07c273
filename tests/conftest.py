"""Shared fixtures."""

from __future__ import annotations

import pytest

from engine.core.config import Config
from engine.core.events import Enqueued, RunStarted, Submitted
from engine.core.reducer import EMPTY, State, apply, fold


@pytest.fixture
def hf_offline(monkeypatch):
    """Hugging Face libraries never reach a hub: models load from local folders only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def started(**config: object) -> State:
    """A ledger whose run has started with ``config`` (max_concurrent 8, batch 4 by default)."""
    values = {"max_concurrent": 8, "batch_size": 4, **config}
    return apply(EMPTY, RunStarted(Config(**values)))  # type: ignore[arg-type]


def admitted(state: State, *rollouts: str) -> State:
    """``state`` with ``rollouts`` enqueued and submitted at the current version."""
    return fold([e for r in rollouts for e in (Enqueued(r), Submitted(r, state.version))], state)


@pytest.fixture
def tmp_log(tmp_path):
    return tmp_path / "run.sqlite"


def copy_pair(trainer, tokenizer) -> list:
    """Two samples of the built-in ``copy`` prompt ``ab``: the right answer (reward 1)
    and the wrong one (reward 0), each with ``trainer``'s own log-probs as its behaviour
    (on-policy, version 0)."""
    from engine.backends.local.trainer import Sample, completion_logprobs

    prompt = tokenizer.prompt_ids("cp:ab=")
    samples = []
    for completion, reward in ((tokenizer.answer_ids("ab"), 1.0), (tokenizer.answer_ids("ba"), 0.0)):
        sample = Sample(prompt, completion, [0.0] * len(completion), [0] * len(completion), reward)
        sample.behaviour = completion_logprobs(trainer.model, [sample], 0)[0]
        samples.append(sample)
    return samples
