"""One contract suite per port, run against every adapter: the local torch and the
Hugging Face trainers and generators (and, with the [remote] extra, the trainer served
over loopback HTTP), the built-in environments, the metric sinks."""

from __future__ import annotations

import asyncio
import copy
import json
import math
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from engine.backends.local.client import LocalTrainingClient
from engine.backends.local.generation import TorchEngine
from engine.backends.local.model import ModelConfig, Policy
from engine.backends.local.trainer import Trainer, TrainerConfig, completion_logprobs
from engine.runtime.environments import EpisodeOver, GuessEnvironment, TaskEnvironment
from engine.runtime.ports import Environment, GenerationEngine, MetricsSink, Sample, TrainingClient, generate
from engine.runtime.sinks import JsonLinesSink

VOCAB = 12


def _local_policy() -> Policy:
    torch.manual_seed(0)
    return Policy(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=40))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from engine.cli import main

    out = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    assert main(["init-model", "--arch", "qwen2", "--layers", "1", "--hidden", "32", str(out)]) == 0
    return out


def _local_client() -> LocalTrainingClient:
    return LocalTrainingClient(Trainer(_local_policy(), TrainerConfig(lr=1e-2), pad_id=0, device="cpu"))


def _hf_client(hf_dir: Path) -> LocalTrainingClient:
    from engine.backends.hf.client import hf_training_client

    return hf_training_client(hf_dir, TrainerConfig(lr=1e-2))


def _remote_client() -> TrainingClient:
    pytest.importorskip("uvicorn")
    from engine.backends.remote.client import RemoteTrainingClient
    from engine.backends.remote.server import serve_in_thread

    server = serve_in_thread(_local_client())
    client = RemoteTrainingClient(server.url)
    client.on_close = server.stop  # type: ignore[attr-defined]
    return client


TRAINERS = ["local", "hf", "remote"]


@pytest.fixture(params=TRAINERS)
def client(request) -> TrainingClient:
    name = request.param
    made: TrainingClient
    if name == "local":
        made = _local_client()
    elif name == "hf":
        made = _hf_client(request.getfixturevalue("hf_dir"))
    else:
        made = _remote_client()
    yield made
    made.close()


def _samples() -> list[Sample]:
    # completions whose behaviour log-probs are those of the starting policy's forward pass
    return [
        Sample([1, 3, 4], [5, 6, 7], [-2.0] * 3, [0] * 3, 1.0),
        Sample([1, 4, 3], [8, 9, 2], [-2.0] * 3, [0] * 3, 0.0),
    ]


def test_training_client_calls_return_futures_at_once_and_run_in_order(client, tmp_path):
    assert isinstance(client, TrainingClient)
    samples = _samples()
    first = client.forward_backward(samples, [1.0, -1.0])
    step = client.optim_step()
    second = client.forward_backward(samples, [1.0, -1.0])  # submitted ahead of the step's result
    saved = client.save_weights(str(tmp_path / "weights.safetensors"))
    for future in (first, step, second, saved):
        assert isinstance(future, Future)
    stats = first.result(timeout=60)
    assert math.isfinite(stats["loss"]) and {"policy_loss", "entropy", "lr"} <= set(stats)
    assert step.result(timeout=60)["version"] == 1 and step.result()["grad_norm"] > 0
    assert math.isfinite(second.result(timeout=60)["loss"])
    assert Path(saved.result(timeout=60)).is_file()


def test_training_client_steps_move_the_policy_toward_high_advantage_completions_and_weights_round_trip(client, tmp_path):
    samples = _samples()
    path = str(tmp_path / "start.safetensors")
    assert Path(client.save_weights(path).result(timeout=60)) == Path(path)
    losses = []
    for _ in range(4):
        losses.append(client.forward_backward(samples, [1.0, -1.0]).result(timeout=60)["policy_loss"])
        client.optim_step().result(timeout=60)
    assert losses[-1] < losses[0]  # the surrogate falls as the good completion gets likelier
    assert client.load_weights(path).result(timeout=60) == 0
    again = client.forward_backward(samples, [1.0, -1.0]).result(timeout=60)["policy_loss"]
    assert again == pytest.approx(losses[0], abs=1e-4)  # the saved weights came back


def test_training_client_failures_are_the_futures_one_line_exception(client, tmp_path):
    future = client.forward_backward(_samples(), [1.0])
    with pytest.raises(Exception) as caught:
        future.result(timeout=60)
    assert "one advantage per sample" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(Exception) as missing:
        client.load_weights(str(tmp_path / "absent.safetensors")).result(timeout=60)
    assert "absent.safetensors" in str(missing.value)
    # the client still works after a failed call
    assert math.isfinite(client.forward_backward(_samples(), [1.0, 0.0]).result(timeout=60)["loss"])


# -- GenerationEngine -----------------------------------------------------------------------

ENGINES = ["local", "hf"]


@pytest.fixture(params=ENGINES)
def engine_and_model(request):
    if request.param == "local":
        model = _local_policy()
        return TorchEngine(model, slots=2, eos_id=99, seed=1), model, 0
    from engine.backends.hf.generation import HFEngine
    from engine.backends.hf.model import load_policy, load_tokenizer

    hf_dir = request.getfixturevalue("hf_dir")
    model = load_policy(hf_dir)
    pad = load_tokenizer(hf_dir).pad_id
    return HFEngine(model, slots=2, eos_id=-1, pad_id=pad, seed=1), model, pad


def test_generation_engine_gives_per_token_logprobs_and_versions_across_a_weight_update(engine_and_model):
    engine, model, pad = engine_and_model
    assert isinstance(engine, GenerationEngine)
    start = copy.deepcopy(model)  # the weights that sample the first completion
    new_weights = {k: v.clone() * 0.5 if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}

    async def go():
        loop = asyncio.create_task(engine.run())
        first = await generate(engine, [1, 3, 4], 4)
        handle = engine.submit([1, 4, 3], 12, stream=True)
        seen = []
        async for token, logprob, version in handle.stream():
            seen.append(version)
            if len(seen) == 3:
                engine.pause()  # interrupt mid-sequence, take new weights, go on
                engine.load_weights(new_weights, 1)
                engine.resume()
        second = await handle.result()
        engine.close()
        await loop
        return first, second

    first, second = asyncio.run(go())
    assert len(first.tokens) == len(first.logprobs) == len(first.versions) == 4 and set(first.versions) == {0}
    assert all(lp <= 0 for lp in first.logprobs)
    assert second.versions[:3] == [0, 0, 0] and second.versions[-1] == 1 and engine.version == 1
    # the behaviour log-probs are the trainer's: recomputed with the weights that sampled them
    recomputed = completion_logprobs(start, [Sample(first.prompt, first.tokens, first.logprobs, first.versions, 0.0)], pad)[0]
    assert recomputed == pytest.approx(first.logprobs, abs=2e-3)


# -- Environment ----------------------------------------------------------------------------


class _Echo:
    max_new_tokens = 4

    def reward(self, problem, completion: str) -> float:
        return 1.0 if completion.strip() == problem.answer else 0.0


class _Problem:
    def __init__(self, prompt: str, answer: str) -> None:
        self.prompt, self.answer = prompt, answer


def _task_env() -> Environment:
    return TaskEnvironment(_Echo(), [_Problem("say 7", "7"), _Problem("say 3", "3")])


def _right_answer(env, observation: str) -> str:
    if isinstance(env, TaskEnvironment):
        return observation.split()[-1]
    return str(env._secret)


@pytest.fixture(params=["task", "guess"])
def env(request) -> Environment:
    return _task_env() if request.param == "task" else GuessEnvironment(turns=3)


def test_environment_episodes_end_with_the_reward_of_their_steps(env):
    assert isinstance(env, Environment) and env.max_new_tokens > 0
    with pytest.raises(EpisodeOver):
        env.step("1")  # before reset
    observation = env.reset(seed=1)
    assert observation and env.reward() == 0.0
    result = env.step(_right_answer(env, observation))
    assert result.done and result.reward == 1.0 and env.reward() == 1.0
    with pytest.raises(EpisodeOver):
        env.step("1")
    # a wrong episode: it ends (after one turn or all of them) with no reward
    observation, turns = env.reset(seed=1), 0
    while True:
        turns += 1
        result = env.step("no digit here")
        if result.done:
            break
        assert result.observation and result.reward == 0.0
    assert env.reward() == 0.0 and turns == (1 if isinstance(env, TaskEnvironment) else 3)


def test_the_multi_turn_environment_hints_toward_the_secret():
    env = GuessEnvironment(turns=5)
    env.reset(seed=4)
    low, high = 0, 9
    for _ in range(5):
        guess = (low + high) // 2
        result = env.step(str(guess))
        if result.done:
            break
        if result.observation.startswith("higher"):
            low = guess + 1
        else:
            high = guess - 1
    assert result.done and env.reward() == 1.0


# -- MetricsSink ----------------------------------------------------------------------------


def _read_back(name: str, run_dir: Path) -> list[dict]:
    if name == "jsonl":
        return [json.loads(line) for line in (run_dir / "m.jsonl").read_text().splitlines()]
    if name == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run_dir / "tensorboard"))
        acc.Reload()
        steps = sorted({e.step for e in acc.Scalars("loss")})
        return [{"step": s, **{k: next(e.value for e in acc.Scalars(k) if e.step == s) for k in acc.Tags()["scalars"]}} for s in steps]
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["jsonl", "tensorboard"])
def test_metrics_sinks_keep_every_record(name, tmp_path):
    sink: MetricsSink
    if name == "jsonl":
        sink = JsonLinesSink(tmp_path / "m.jsonl")
    else:
        pytest.importorskip("tensorboard")
        from engine.workflows.sinks import TensorBoardSink

        sink = TensorBoardSink(tmp_path)
    assert isinstance(sink, MetricsSink)
    records = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    for record in records:
        sink.write(record)
    sink.close()
    back = _read_back(name, tmp_path)
    assert [(r["step"], r["loss"]) for r in back] == [(1, 0.5), (2, 0.25)]
