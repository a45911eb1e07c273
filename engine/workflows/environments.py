"""``environments``: RL on an :class:`~engine.runtime.ports.Environment` through the
ports alone, with the adapters named by the run's config.

- ``trainer``: ``local`` (the torch trainer in this process) or ``remote`` (the trainer
  ``rollout-ledger serve-trainer`` serves at ``trainer_url``, of the same
  ``model_size`` and ``seq_len``).
- ``env``: ``guess`` (multi-turn: guess a digit in ``turns`` turns) or ``task``
  (single-turn: a problem of the built-in ``task``).

Stages, as the seed's lifecycle has them: ``init_session`` (the training client, the
generator's policy, the tokenizer, the generator synced to the trainer's weights),
``load_envs`` (the run's ledger, ``events.sqlite`` in the artifacts, and the rollout
pool, :class:`~engine.runtime.episodes.EpisodeGroups`), then per step ``get_batch``
(``groups_per_step`` groups of ``group_size`` episodes of one problem, up to
``rollout_parallelism`` groups in flight at once; each group a rollout of the ledger,
each round of turns its segments under the versions that sampled them, accepted or
filtered by the run's staleness ``policy``; consumed by the update),
``forward_backward`` and ``optim_step`` submitted as futures and awaited,
``sync_weights`` (the trainer's weights to the generator and the groups in flight
through ``save_weights``, the ledger's version bump), a ``checkpoint`` every
``save_every`` steps, and ``cleanup`` (closes the pool, the ledger and the client; it
runs after a failure too).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable, Mapping

import torch

from engine.backends.local.checkpoint import read_state
from engine.backends.local.client import LocalTrainingClient
from engine.backends.local.generation import TorchEngine
from engine.backends.local.model import SIZES, Policy, preset
from engine.backends.local.tasks import TASKS, Tokenizer, get_task
from engine.backends.local.trainer import Trainer, TrainerConfig
from engine.core.config import ON_STALE, POLICIES, Config
from engine.ledger import Ledger
from engine.runtime.environments import GuessEnvironment, TaskEnvironment
from engine.runtime.episodes import EpisodeGroups
from engine.runtime.ports import Environment, TrainingClient
from engine.workflow import AwaitFuture, Context, conditional, loop, stage, workflow
from engine.workflows.common import SaveCheckpoint, every, problems

TRAINERS = ("local", "remote")
ENVIRONMENTS = ("guess", "task")

DEFAULTS: dict[str, Any] = {
    "trainer": "local", "trainer_url": "", "env": "guess", "task": "copy", "turns": 3,
    "model_size": "tiny", "seq_len": 64, "lr": 1e-3, "seed": 0, "steps": 2, "group_size": 4, "temperature": 1.0,
    "groups_per_step": 1, "rollout_parallelism": 1, "policy": "admission", "max_staleness": 0, "on_stale": "drop",
    "save_every": 1,
}

_WHOLE = {"turns": 1, "steps": 1, "group_size": 1, "seq_len": 1, "groups_per_step": 1, "rollout_parallelism": 1,
          "max_staleness": 0, "save_every": 0}


def check(settings: Mapping[str, Any]) -> None:
    """Refuse an unknown adapter or policy (listing the known ones) and values no run can use."""
    for name, known in (("trainer", TRAINERS), ("env", ENVIRONMENTS), ("policy", POLICIES), ("on_stale", ON_STALE)):
        if settings[name] not in known:
            raise ValueError(f"{name!r} must be one of {', '.join(known)}, got {settings[name]!r}")
    if settings["trainer"] == "remote" and not str(settings["trainer_url"]).startswith("http://"):
        raise ValueError(f"'trainer_url' must be the http:// URL serve-trainer printed, got {settings['trainer_url']!r}")
    if settings["model_size"] not in SIZES:
        raise ValueError(f"'model_size' must be one of {', '.join(SIZES)}, got {settings['model_size']!r}")
    if settings["env"] == "task" and settings["task"] not in TASKS:
        raise ValueError(f"'task' must be one of {', '.join(TASKS)}, got {settings['task']!r}")
    for name, least in _WHOLE.items():
        value = settings[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name!r} must be a whole number of at least {least}, got {value!r}")


def _client(ctx: Context, tokenizer: Tokenizer) -> TrainingClient:
    if ctx.setting("trainer") == "remote":
        from engine.backends.remote.client import RemoteTrainingClient

        return RemoteTrainingClient(ctx.setting("trainer_url"))
    torch.manual_seed(ctx.setting("seed"))
    policy = Policy(preset(ctx.setting("model_size"), tokenizer.vocab_size, ctx.setting("seq_len")))
    return LocalTrainingClient(Trainer(policy, TrainerConfig(lr=ctx.setting("lr")), pad_id=tokenizer.pad_id, device="cpu"))


async def _save(ctx: Context, client: TrainingClient) -> tuple[str, Any]:
    """The trainer's state saved under the artifacts, one file per version; its path and contents."""
    path = ctx.artifacts / "weights.safetensors"
    await asyncio.wrap_future(client.save_weights(str(path)))
    state = read_state(path)
    kept = ctx.artifacts / f"weights-{int(state['version'])}.safetensors"
    path.replace(kept)
    return str(kept), state


def _prune(ctx: Context, version: int) -> None:
    """Drop the weight files no resume can need: the last version's unless a checkpoint
    was taken with it, and the checkpointed one before the two newest checkpoints."""
    period = ctx.setting("save_every")
    stale = [version - 1] if not period or (version - 1) % period else []
    if period and version % period == 0:
        stale.append(version - 2 * period)
    for old in stale:
        (ctx.artifacts / f"weights-{old}.safetensors").unlink(missing_ok=True)


class InitSession:
    """The training client, the generator's policy and the tokenizer; the generator synced
    to the trainer's weights.  On resume the trainer loads the checkpoint's weights."""

    provides = ("client", "generator", "tokenizer", "version", "weights_file")
    transient = ("client", "generator", "tokenizer")

    async def execute(self, ctx: Context) -> Context:
        tokenizer = Tokenizer()
        client = _client(ctx, tokenizer)
        generator = Policy(preset(ctx.setting("model_size"), tokenizer.vocab_size, ctx.setting("seq_len")))
        try:
            path, state = await _save(ctx, client)
        except BaseException:
            client.close()
            raise
        generator.load_state_dict(state["model"])
        return ctx.put(client=client, generator=generator, tokenizer=tokenizer, version=int(state["version"]), weights_file=path)

    async def resume(self, ctx: Context) -> Context:
        tokenizer = Tokenizer()
        client = _client(ctx, tokenizer)
        generator = Policy(preset(ctx.setting("model_size"), tokenizer.vocab_size, ctx.setting("seq_len")))
        try:
            await asyncio.wrap_future(client.load_weights(ctx.get("weights_file")))
        except BaseException:
            client.close()
            raise
        generator.load_state_dict(read_state(ctx.get("weights_file"))["model"])
        return ctx.put(client=client, generator=generator, tokenizer=tokenizer)


class LoadEnvs:
    """The environments and the rollout pool over the run's ledger (``events.sqlite`` in
    the artifacts; ``max_concurrent = rollout_parallelism``, a batch of
    ``groups_per_step`` groups, the run's ``policy``, ``max_staleness`` and
    ``on_stale``).  On resume the ledger is reopened: groups that were in flight are
    rejected as lost and their prompts requeued."""

    requires = ("generator", "tokenizer", "version")
    provides = ("ledger", "rollouts")
    transient = ("ledger", "rollouts")

    def _open(self, ctx: Context, ledger: Ledger) -> Context:
        make: Callable[[], Environment]
        if ctx.setting("env") == "guess":
            make = lambda: GuessEnvironment(turns=ctx.setting("turns"))  # noqa: E731
        else:
            task = get_task(ctx.setting("task"))
            pool = problems(task, ctx.setting("seed"), 0, 64)
            make = lambda: TaskEnvironment(task, pool)  # noqa: E731
        generator, tokenizer, base = ctx.get("generator"), ctx.get("tokenizer"), ctx.setting("seed")

        def engine(seed: int, slots: int) -> TorchEngine:
            return TorchEngine(generator, slots=slots, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                               temperature=ctx.setting("temperature"), seed=seed)

        rollouts = EpisodeGroups(
            ledger, make_env=make, make_engine=engine, tokenizer=tokenizer, group_size=ctx.setting("group_size"),
            parallelism=ctx.setting("rollout_parallelism"), total=ctx.setting("steps") * ctx.setting("groups_per_step"),
            limit=ctx.setting("seq_len"), seed_of=lambda key: random.Random(f"{base}:{key}").randrange(1 << 30),
            version=ctx.get("version"), first_key=sum(ledger.state.counts),
        )
        return ctx.put(ledger=ledger, rollouts=rollouts)

    def execute(self, ctx: Context) -> Context:
        config = Config(max_concurrent=ctx.setting("rollout_parallelism"), batch_size=ctx.setting("groups_per_step"),
                        max_staleness=ctx.setting("max_staleness"), policy=ctx.setting("policy"), on_stale=ctx.setting("on_stale"))
        return self._open(ctx, Ledger(config, path=ctx.artifacts / "events.sqlite"))

    def resume(self, ctx: Context) -> Context:
        return self._open(ctx, Ledger.resume(ctx.artifacts / "events.sqlite", requeue=True))


class GetBatch:
    """The step's batch: ``groups_per_step`` groups consumed through the ledger, run
    concurrently up to ``rollout_parallelism`` (with ``max_staleness`` above 0 the pool
    runs groups for later steps while this one trains).  Every turn is a sample of its
    own with the versions that sampled it; its advantage is its episode's return less
    its group's mean."""

    requires = ("rollouts",)
    provides = ("samples", "advantages", "mean_return", "turns")

    async def execute(self, ctx: Context) -> Context:
        groups = await ctx.get("rollouts").take(ctx.setting("groups_per_step"))
        samples = [turn for group in groups for turn in group.samples]
        advantages = [a for group in groups for a in group.advantages()]
        returns = [r for group in groups for r in group.returns]
        return ctx.put(samples=samples, advantages=advantages, mean_return=sum(returns) / len(returns), turns=len(samples))


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
    """The trainer's weights to the generator and to the groups in flight (their next
    tokens carry the new version), then the ledger's version bump (its policy purges
    the ready groups it finds stale), written to its log before the step's checkpoint."""

    requires = ("client", "generator", "rollouts", "ledger", "fb_future_result", "optim_future_result", "mean_return", "turns")
    provides = ("version", "weights_file")

    async def execute(self, ctx: Context) -> Context:
        path, state = await _save(ctx, ctx.get("client"))
        version = int(state["version"])
        ctx.get("generator").load_state_dict(state["model"])
        rollouts, ledger = ctx.get("rollouts"), ctx.get("ledger")
        rollouts.load_weights(state["model"], version)
        ledger.advance_version()
        ledger.flush()
        rollouts.advanced()
        _prune(ctx, version)
        return ctx.put(version=version, weights_file=path).record(
            step=version, loss=ctx.get("fb_future_result")["loss"], grad_norm=ctx.get("optim_future_result")["grad_norm"],
            mean_return=ctx.get("mean_return"), turns=ctx.get("turns"))


class Cleanup:
    """Close the pool (groups in flight are cancelled; a resume recovers their rollouts),
    the ledger and the client; after a failure too."""

    transient = ("rollouts", "ledger", "client")

    async def execute(self, ctx: Context) -> Context:
        rollouts, client, ledger = ctx.get("rollouts", None), ctx.get("client", None), ctx.get("ledger", None)
        try:
            if rollouts is not None:
                await rollouts.aclose()
        finally:
            if client is not None:
                client.close()
            if ledger is not None:
                ledger.close()
        return ctx.put(rollouts=None, ledger=None, client=None)


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
        conditional(every("save_every", "steps_index"), stage("checkpoint", SaveCheckpoint()), name="should_checkpoint"),
        over=lambda ctx: range(ctx.setting("steps")),
    ),
    stage("cleanup", Cleanup(), always=True),
    defaults=DEFAULTS,
    check=check,
    description="RL on an environment through the ports; the trainer and environment adapters come from the config",
)
