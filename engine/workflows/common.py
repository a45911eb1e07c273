"""Stages and helpers shared by the built-in workflows: the check of their config, the
task, the tokenizer, a fresh or inherited policy, padded sequence batches and the
optimiser step."""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Mapping, Sequence

import torch

from engine.backends.local.checkpoint import save_weights
from engine.backends.local.model import SIZES, Policy, preset
from engine.backends.local.tasks import TASKS, Problem, Task, Tokenizer, get_task
from engine.backends.local.trainer import pad_samples
from engine.runtime.ports import Sample
from engine.workflow import Context
from engine.workflows.rl_config import MAX_SEED

#: Config every torch workflow understands.
MODEL_DEFAULTS: dict[str, Any] = {"task": "copy", "model_size": "tiny", "seed": 0, "lr": 3e-3, "grad_clip": 1.0}
#: Config of a workflow that also trains a Hugging Face model (``model_dir``; then
#: ``task`` may be ``rg:NAME[:options]`` or ``jsonl:FILE``) on a ``device``.
HF_DEFAULTS: dict[str, Any] = {"model_dir": None, "device": "cpu", "max_new_tokens": None}
#: Devices a workflow's ``device`` may name.
DEVICES = ("cpu", "cuda")


def _whole(name: str, value: Any, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name!r} must be a whole number of at least {least}, got {value!r}")


def settings_check(least: Mapping[str, int] | None = None, positive: Sequence[str] = ()) -> Callable[[Mapping[str, Any]], None]:
    """A built-in workflow's ``check``: the model settings it has (a known ``task`` and
    ``model_size``, a ``seed`` in ``[0, MAX_SEED]``, finite ``lr`` and ``grad_clip``
    above 0), each of ``least``'s settings a whole number of at least its value, and
    each of ``positive`` a finite number above 0."""
    least = dict(least or {})
    rates = ("lr", "grad_clip", *positive)

    def check(settings: Mapping[str, Any]) -> None:
        external = settings.get("model_dir") is not None and str(settings.get("task", "")).startswith(("rg:", "jsonl:"))
        if "task" in settings and settings["task"] not in TASKS and not external:
            hint = " (rg:NAME and jsonl:FILE with a model_dir)" if "model_dir" in settings else ""
            raise ValueError(f"'task' must be one of {', '.join(TASKS)}{hint}, got {settings['task']!r}")
        if "model_dir" in settings and settings["model_dir"] is not None and not isinstance(settings["model_dir"], str):
            raise ValueError(f"'model_dir' must be a model directory's path, got {settings['model_dir']!r}")
        if "device" in settings and settings["device"] not in DEVICES:
            raise ValueError(f"'device' must be one of {', '.join(DEVICES)}, got {settings['device']!r}")
        if settings.get("max_new_tokens") is not None:
            _whole("max_new_tokens", settings["max_new_tokens"], 1)
        if "model_size" in settings and settings["model_size"] not in SIZES:
            raise ValueError(f"'model_size' must be one of {', '.join(SIZES)}, got {settings['model_size']!r}")
        if "seed" in settings:
            _whole("seed", settings["seed"], 0)
            if settings["seed"] > MAX_SEED:
                raise ValueError(f"'seed' must be at most {MAX_SEED}, got {settings['seed']}")
        for name, minimum in least.items():
            _whole(name, settings.get(name), minimum)
        for name in (r for r in rates if r in settings):
            value = settings[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name!r} must be a finite number above 0, got {value!r}")

    return check


def sequences(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], max_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``<bos> prompt answer <eos>`` tokens ``[B, T]`` and the mask ``[B, T-1]``
    of the answer's target positions, for ``(prompt, answer)`` pairs."""
    samples = []
    for prompt, answer in pairs:
        ids = tokenizer.answer_ids(answer)  # the answer's tokens and its end token: as many as the string has characters only for a character tokenizer
        samples.append(Sample(tokenizer.prompt_ids(prompt), ids, [0.0] * len(ids), [0] * len(ids), 0.0))
    batch = pad_samples(samples, tokenizer.pad_id, "cpu", max_width)
    return batch.tokens, batch.mask


def answer_logprob(model: Policy, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's answer ``[B]``, on the model's device (in
    bfloat16 autocast on a GPU)."""
    device = next(model.parameters()).device
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logprobs = model.logprobs(tokens.to(device)).float()
    return (logprobs * mask.to(device)).sum(-1)


def new_policy(task: Task, tokenizer: Tokenizer, size: str, seed: int) -> Policy:
    """A freshly initialised policy, seeded without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Policy(preset(size, tokenizer.vocab_size, task.max_seq_len))


def chunks(items: Sequence[Any], size: int, seed: str) -> list[list[Any]]:
    """``items`` shuffled (deterministically by ``seed``) into batches of ``size``."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


class InitSession:
    """The seed's ``init_session``: the task and tokenizer named by the config (rebuilt
    on resume, not checkpointed: a task holds its generator function)."""

    provides = ("task", "tokenizer")
    transient = ("task", "tokenizer")

    def execute(self, ctx: Context) -> Context:
        model_dir = ctx.setting("model_dir", None)
        if model_dir is None:
            return ctx.put(task=get_task(ctx.setting("task")), tokenizer=Tokenizer())
        from engine.backends.hf.model import load_tokenizer
        from engine.backends.task_sources import resolve_task

        task = resolve_task(ctx.setting("task"), max_new_tokens=ctx.setting("max_new_tokens", None))
        return ctx.put(task=task, tokenizer=load_tokenizer(model_dir))

    resume = execute


class InitPolicy:
    """The policy to train and its AdamW optimiser: the ``model`` already in the state
    (e.g. from a supervised phase) when there is one, else a fresh one."""

    requires = ("task", "tokenizer")
    provides = ("model", "optimizer", "global_step")

    def execute(self, ctx: Context) -> Context:
        model = ctx.get("model", None)
        if model is None and ctx.setting("model_dir", None) is not None:
            from engine.backends.hf.model import load_policy

            model = load_policy(ctx.setting("model_dir"), ctx.setting("device", "cpu"))
        elif model is None:
            model = new_policy(ctx.get("task"), ctx.get("tokenizer"), ctx.setting("model_size"), ctx.setting("seed"))
        model.to(ctx.setting("device", "cpu"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=ctx.setting("lr"))
        return ctx.put(model=model, optimizer=optimizer, global_step=0)


class OptimStep:
    """Clip the gradients of option ``model`` (default ``model``) and step its optimiser
    (option ``optimizer``); records the gradient norm as ``grad_norm``."""

    options = {"model": str, "optimizer": str}

    @staticmethod
    def requires(options: Any) -> tuple[str, ...]:
        return (options.get("model", "model"), options.get("optimizer", "optimizer"))

    provides = ("grad_norm",)

    def execute(self, ctx: Context) -> Context:
        model = ctx.get(ctx.stage_opts.get("model", "model"))
        optimizer = ctx.get(ctx.stage_opts.get("optimizer", "optimizer"))
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.setting("grad_clip"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return ctx.put(grad_norm=float(norm))


class Cleanup:
    """The seed's ``cleanup`` stage (run it with ``always=True``: it runs after a failure
    too): waits until the run's work queue is empty, so no step submitted ahead of a
    failed one still runs on the model after the run ends, then closes the live
    resources named by ``close`` (state keys whose values have a ``close()``; closing
    twice is harmless).  ``blocking`` runs it on the stage thread, beside resources
    made there (an RL run drives its own event loop)."""

    def __init__(self, close: tuple[str, ...] = (), blocking: bool = False) -> None:
        self.close, self.blocking = close, blocking

    def execute(self, ctx: Context) -> Context:
        ctx.submit(lambda: None).result()  # the queue is FIFO with one worker: all before it is done
        for key in self.close:
            resource = ctx.get(key, None)
            if resource is not None:
                resource.close()
        return ctx


class SaveCheckpoint:
    """Marks where the runner saves a resumable checkpoint of the workflow state."""

    checkpoint = True

    def execute(self, ctx: Context) -> Context:
        return ctx


class SaveWeights:
    """Save option ``key``'s (default ``model``) weights under the run's artifacts as
    ``<workflow>-<key>.safetensors`` and put the path in ``<key>_weights``."""

    options = {"key": str}

    @staticmethod
    def requires(options: Any) -> tuple[str, ...]:
        return (options.get("key", "model"),)

    @staticmethod
    def provides(options: Any) -> tuple[str, ...]:
        return (f"{options.get('key', 'model')}_weights",)

    def execute(self, ctx: Context) -> Context:
        key = ctx.stage_opts.get("key", "model")
        path = ctx.artifacts / f"{ctx.path.split('/')[-2] if '/' in ctx.path else 'run'}-{key}.safetensors"
        save_weights(path, ctx.get(key).state_dict())
        return ctx.put_all({f"{key}_weights": str(path)}).record(saved=str(path))


def every(config_key: str, step_key: str) -> Callable[[Context], bool]:
    """A predicate: true when ``config[config_key]`` is set and ``state[step_key] + 1`` is a multiple of it."""

    def predicate(ctx: Context) -> bool:
        period = ctx.setting(config_key)
        return bool(period) and (ctx.get(step_key) + 1) % period == 0

    predicate.__name__ = predicate.__qualname__ = f"every_{config_key}"
    return predicate


def problems(task: Task, seed: int, start: int, count: int) -> list[Problem]:
    """``count`` problems of ``task`` numbered from ``start`` (deterministic)."""
    return [task.problem(seed, start + i) for i in range(count)]


class LogStepStats:
    """Count the step and record the statistics the step's loss stage left under ``key``."""

    provides = ("global_step",)

    def __init__(self, key: str) -> None:
        self.key = key
        self.requires = (key, "global_step")

    def execute(self, ctx: Context) -> Context:
        step = ctx.get("global_step") + 1
        return ctx.put(global_step=step).record(step=step, **ctx.get(self.key))
