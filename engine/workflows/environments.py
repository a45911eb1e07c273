"""``environments``: RL on an :class:`~engine.runtime.ports.Environment` through the
ports alone, with the adapters named by the run's config.

- ``trainer``: ``local`` (the torch trainer in this process) or ``remote`` (the trainer
  ``rollout-ledger serve-trainer`` serves at ``trainer_url``, of the same
  ``model_size`` and ``seq_len``).
- ``env``: ``guess`` (multi-turn: guess a digit in ``turns`` turns) or ``task``
  (single-turn: a problem of the built-in ``task``).

Stages, as the seed's lifecycle has them: ``init_session`` (the training client, the
generator's policy, the tokenizer, the generator synced to the trainer's weights),
``load_envs`` (``group_size`` environments), then per step ``get_batch`` (one episode
per environment, every turn one sample of its own, sampled under the version it
carries; the episode's GRPO advantage on each of its turns; each episode is a rollout
of the run's ledger, ``events.sqlite`` in the artifacts, with one ``Segment`` per turn
under that turn's version, then consumed by the update, whose version bump the
ledger records too), ``forward_backward`` and
``optim_step`` submitted as futures and awaited, ``sync_weights`` (the trainer's
weights to the generator through ``save_weights``), and ``cleanup`` (closes the
client; it runs after a failure too).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable, Mapping

import torch

from engine.core.config import Config
from engine.core.events import Enqueued, Segment, Submitted
from engine.ledger import Ledger
from engine.backends.local.checkpoint import read_state
from engine.backends.local.client import LocalTrainingClient
from engine.backends.local.generation import TorchEngine
from engine.backends.local.model import SIZES, Policy, preset
from engine.backends.local.tasks import TASKS, Tokenizer, get_task
from engine.backends.local.trainer import Trainer, TrainerConfig
from engine.runtime.environments import GuessEnvironment, TaskEnvironment
from engine.runtime.ports import Environment, Sample, TrainingClient
from engine.workflow import AwaitFuture, Context, loop, stage, workflow
from engine.workflows.common import problems

TRAINERS = ("local", "remote")
ENVIRONMENTS = ("guess", "task")

DEFAULTS: dict[str, Any] = {
    "trainer": "local", "trainer_url": "", "env": "guess", "task": "copy", "turns": 3,
    "model_size": "tiny", "seq_len": 64, "lr": 1e-3, "seed": 0, "steps": 2, "group_size": 4, "temperature": 1.0,
}


def check(settings: Mapping[str, Any]) -> None:
    """Refuse an unknown adapter (listing the known ones) and values no run can use."""
    if settings["trainer"] not in TRAINERS:
        raise ValueError(f"'trainer' must be one of {', '.join(TRAINERS)}, got {settings['trainer']!r}")
    if settings["env"] not in ENVIRONMENTS:
        raise ValueError(f"'env' must be one of {', '.join(ENVIRONMENTS)}, got {settings['env']!r}")
    if settings["trainer"] == "remote" and not str(settings["trainer_url"]).startswith("http://"):
        raise ValueError(f"'trainer_url' must be the http:// URL serve-trainer printed, got {settings['trainer_url']!r}")
    if settings["model_size"] not in SIZES:
        raise ValueError(f"'model_size' must be one of {', '.join(SIZES)}, got {settings['model_size']!r}")
    if settings["env"] == "task" and settings["task"] not in TASKS:
        raise ValueError(f"'task' must be one of {', '.join(TASKS)}, got {settings['task']!r}")
    for name in ("turns", "steps", "group_size", "seq_len"):
        value = settings[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name!r} must be a whole number of at least 1, got {value!r}")


def _client(ctx: Context, tokenizer: Tokenizer) -> TrainingClient:
    if ctx.setting("trainer") == "remote":
        from engine.backends.remote.client import RemoteTrainingClient

        return RemoteTrainingClient(ctx.setting("trainer_url"))
    torch.manual_seed(ctx.setting("seed"))
    policy = Policy(preset(ctx.setting("model_size"), tokenizer.vocab_size, ctx.setting("seq_len")))
    return LocalTrainingClient(Trainer(policy, TrainerConfig(lr=ctx.setting("lr")), pad_id=tokenizer.pad_id, device="cpu"))


def _sync(ctx: Context, client: TrainingClient, generator: Policy) -> int:
    """The trainer's weights into the generator's policy; the version they are."""
    path = ctx.artifacts / "weights.safetensors"
    client.save_weights(str(path)).result()
    state = read_state(path)
    generator.load_state_dict(state["model"])
    return int(state["version"])


class InitSession:
    provides = ("client", "generator", "tokenizer", "version")

    def execute(self, ctx: Context) -> Context:
        tokenizer = Tokenizer()
        client = _client(ctx, tokenizer)
        generator = Policy(preset(ctx.setting("model_size"), tokenizer.vocab_size, ctx.setting("seq_len")))
        try:
            version = _sync(ctx, client, generator)
        except Exception:
            client.close()
            raise
        return ctx.put(client=client, generator=generator, tokenizer=tokenizer, version=version)


class LoadEnvs:
    provides = ("envs", "ledger")

    def execute(self, ctx: Context) -> Context:
        make: Callable[[], Environment]
        if ctx.setting("env") == "guess":
            make = lambda: GuessEnvironment(turns=ctx.setting("turns"))  # noqa: E731
        else:
            task = get_task(ctx.setting("task"))
            pool = problems(task, ctx.setting("seed"), 0, 64)
            make = lambda: TaskEnvironment(task, pool)  # noqa: E731
        size = ctx.setting("group_size")
        ledger = Ledger(Config(max_concurrent=size, batch_size=size), path=ctx.artifacts / "events.sqlite")
        return ctx.put(envs=[make() for _ in range(size)], ledger=ledger)


async def _episode(engine: TorchEngine, env: Environment, tokenizer: Tokenizer, seed: int, limit: int) -> tuple[list[Sample], float]:
    observation, transcript, turns = env.reset(seed), "", []
    while True:
        transcript += observation
        prompt = tokenizer.prompt_ids(transcript)[-(limit - env.max_new_tokens) :]
        generation = await engine.submit(prompt, env.max_new_tokens).result()
        action = tokenizer.decode(generation.tokens)
        turns.append(Sample(prompt, generation.tokens, generation.logprobs, generation.versions, 0.0))
        result = env.step(action)
        transcript += action + " "
        if result.done:
            break
        observation = result.observation
    episode_return = env.reward()
    for sample in turns:
        sample.reward = episode_return
    return turns, episode_return


class GetBatch:
    """One episode per environment, all from the same seed (a GRPO group)."""

    requires = ("generator", "tokenizer", "envs", "version", "ledger")
    provides = ("samples", "advantages", "mean_return", "turns")

    async def execute(self, ctx: Context) -> Context:
        generator, tokenizer, envs = ctx.get("generator"), ctx.get("tokenizer"), ctx.get("envs")
        seed = random.Random(f"{ctx.setting('seed')}:{ctx.get('steps_index')}").randrange(1 << 30)
        engine = TorchEngine(generator, slots=len(envs), eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                             temperature=ctx.setting("temperature"), seed=seed)
        engine.version = ctx.get("version")
        runner = asyncio.create_task(engine.run())
        try:
            episodes = await asyncio.gather(*(_episode(engine, env, tokenizer, seed, ctx.setting("seq_len")) for env in envs))
        finally:
            engine.close()
            await runner
        ledger, step = ctx.get("ledger"), ctx.get("steps_index")
        for index, (turns, _) in enumerate(episodes):
            rollout = f"s{step}e{index}"
            ledger.append(Enqueued(rollout), Submitted(rollout, ledger.state.version))
            ledger.append(*(Segment(rollout, turn.versions[0], len(turn.completion)) for turn in turns if turn.completion))
            ledger.complete(rollout)
        if ledger.prepare_batch(len(episodes)) is None:
            raise RuntimeError(f"the ledger holds no batch of {len(episodes)} after step {step}'s episodes")
        returns = [r for _, r in episodes]
        mean = sum(returns) / len(returns)
        samples, advantages = [], []
        for turns, episode_return in episodes:
            samples.extend(turns)
            advantages.extend([episode_return - mean] * len(turns))
        return ctx.put(samples=samples, advantages=advantages, mean_return=mean, turns=len(samples))


class SubmitForwardBackward:
    requires = ("client", "samples", "advantages")
    provides = ("fb_future",)

    def execute(self, ctx: Context) -> Context:
        return ctx.put(fb_future=ctx.get("client").forward_backward(ctx.get("samples"), ctx.get("advantages")))


class SubmitOptimStep:
    requires = ("client",)
    provides = ("optim_future",)

    def execute(self, ctx: Context) -> Context:
        return ctx.put(optim_future=ctx.get("client").optim_step())


class SyncWeights:
    requires = ("client", "generator", "fb_future_result", "optim_future_result", "mean_return", "turns", "ledger")
    provides = ("version",)

    def execute(self, ctx: Context) -> Context:
        version = _sync(ctx, ctx.get("client"), ctx.get("generator"))
        ctx.get("ledger").advance_version()
        return ctx.put(version=version).record(step=version, loss=ctx.get("fb_future_result")["loss"],
                                               grad_norm=ctx.get("optim_future_result")["grad_norm"],
                                               mean_return=ctx.get("mean_return"), turns=ctx.get("turns"))


class Cleanup:
    def execute(self, ctx: Context) -> Context:
        client, ledger = ctx.get("client", None), ctx.get("ledger", None)
        if client is not None:
            client.close()
        if ledger is not None:
            ledger.close()
        return ctx


WORKFLOW = workflow(
    "environments",
    stage("init_session", InitSession()),
    stage("load_envs", LoadEnvs()),
    loop(
        "steps",
        stage("get_batch", GetBatch()),
        stage("forward_backward", SubmitForwardBackward()),
        stage("await_fb", AwaitFuture(), key="fb_future"),
        stage("optim_step", SubmitOptimStep()),
        stage("await_optim", AwaitFuture(), key="optim_future"),
        stage("sync_weights", SyncWeights()),
        over=lambda ctx: range(ctx.setting("steps")),
    ),
    stage("cleanup", Cleanup(), always=True),
    defaults=DEFAULTS,
    check=check,
    description="RL on an environment through the ports; the trainer and environment adapters come from the config",
)
