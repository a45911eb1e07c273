"""What an RL run builds and measures apart from its bookkeeping: the trainable
policy (a Hugging Face model or the built-in one), the generation engine for it (in
process, or vLLM), the held-out reward of a set of problems on a private event loop,
an update's metrics line and the run's summary figures.  :class:`engine.workflows.rl_run.RLRun` calls these."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

import torch

from engine.backends.local.generation import TorchEngine
from engine.backends.local.model import Policy, PolicyModule, preset
from engine.backends.local.tasks import Tokenizer
from engine.backends.local.trainer import mean_stats, pad_multiple, padded_width
from engine.workflows.rl_config import RunConfig


def prepare_device(config: RunConfig) -> torch.device:
    """The run's device, refused when it is CUDA and torch sees none; on a GPU, cuDNN's
    attention is turned off for the process (it plans a kernel per new shape: costly
    for generation's changing widths), so that a step is timed with the kernels a run uses."""
    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
        torch.backends.cuda.enable_cudnn_sdp(False)
    return torch.device(config.device)


def build_tokenizer(config: RunConfig) -> Any:
    """The run's tokenizer: its model directory's, or the built-in character one."""
    if config.model_dir is not None:
        from engine.backends.hf.model import load_tokenizer

        return load_tokenizer(config.model_dir)
    return Tokenizer()


def build_policy(config: RunConfig, tokenizer: Any, task: Any, device: torch.device) -> PolicyModule:
    """The trainable policy on ``device``: the Hugging Face model in ``config.model_dir``,
    or the built-in one of ``config.model_size``; either computes log-probs at the run's
    temperature, the one generation samples at."""
    policy: PolicyModule
    if config.model_dir is not None:
        from engine.backends.hf.model import load_policy

        policy = load_policy(config.model_dir, device, config.temperature)
    else:
        policy = Policy(preset(config.model_size, tokenizer.vocab_size, task.max_seq_len)).to(device)
        policy.temperature = config.temperature
    return policy


def build_engine(config: RunConfig, tokenizer: Any, model: PolicyModule, slots: int, seed: int,
                 temperature: float | None = None) -> Any:
    """An in-process generation engine for ``model``: batched KV-cached Hugging Face
    generation, or the built-in continuous-batching one (held-out evaluation uses one of
    these under ``--engine vllm`` too: the same sampling formula, no second vLLM), sampling
    at ``temperature`` when given (an evaluation's), else at the run's."""
    temperature = config.temperature if temperature is None else temperature
    common = dict(slots=slots, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, temperature=temperature, seed=seed,
                  keep_cache=config.keep_cache)
    if config.model_dir is not None:
        from engine.backends.hf.generation import HFEngine
        from engine.backends.hf.model import HFPolicy

        assert isinstance(model, HFPolicy)  # config.model_dir makes the policy an HFPolicy
        return HFEngine(model, **common)
    assert isinstance(model, Policy)
    return TorchEngine(model, **common, graphs=config.cuda_graphs)


def vllm_engine(config: RunConfig, tokenizer: Any, device: torch.device, max_seq_len: int, slots: int, seed: int) -> Any:
    """vLLM serving the run's Hugging Face model (``--engine vllm``): bf16 on a GPU,
    float32 on the CPU, with the trainer's temperature, end token and length limit."""
    from engine.backends.vllm.engine import VLLMEngine

    assert config.model_dir is not None  # RunConfig refuses --engine vllm without a model directory
    cuda = device.type == "cuda"
    return VLLMEngine(
        config.model_dir, slots=slots, eos_id=tokenizer.eos_id, temperature=config.temperature, seed=seed,
        dtype="bfloat16" if cuda else "float32", max_model_len=max_seq_len,
        memory_fraction=config.vllm_memory if config.vllm_memory is not None else (0.3 if cuda else 0.05),
    )


def held_out_reward(engine: Any, model: PolicyModule, task: Any, tokenizer: Any, problems: Sequence[Any]) -> float:
    """Mean reward of ``engine``'s completions of ``problems`` (generated on a private
    event loop; ``model``'s training mode is restored after)."""

    async def generate() -> list[Any]:
        loop_task = asyncio.create_task(engine.run())
        handles = [engine.submit(tokenizer.prompt_ids(p.prompt), task.max_new_tokens) for p in problems]
        results = await asyncio.gather(*(h.result() for h in handles))
        engine.close()
        await loop_task
        return results

    training = model.training
    loop = asyncio.new_event_loop()
    try:
        results = loop.run_until_complete(generate())
    finally:
        loop.close()
    model.train(training)
    rewards = [task.reward(p, tokenizer.decode(r.tokens)) for p, r in zip(problems, results)]
    return sum(rewards) / len(rewards)


def summary(state: Any, metrics: Sequence[dict[str, Any]], wall: float, executor: Any, gc_seconds: float) -> dict[str, Any]:
    """Throughput, reward, staleness and the ledger's counters of a run whose ledger
    state is ``state``, per-update ``metrics`` lines and training wall time ``wall``."""
    trained = sum(m["trained_tokens"] for m in metrics)
    tail = metrics[-max(1, len(metrics) // 5):] if metrics else []
    return {
        "steps": state.version,
        "wall_s": round(wall, 3),
        "trained_tokens": trained,
        "trained_tokens_per_s": round(trained / wall, 1) if wall > 0 else 0.0,
        "final_reward": round(sum(m["reward"] for m in tail) / len(tail), 4) if tail else None,
        "staleness_mean": round(sum(m["staleness_mean"] for m in metrics) / len(metrics), 3) if metrics else None,
        "engine_overhead": round(executor.ledger_seconds / wall, 5) if wall > 0 else 0.0,
        "store_overhead": round(executor.store_seconds / wall, 5) if wall > 0 else 0.0,
        "gc_overhead": round(gc_seconds / wall, 5) if wall > 0 else 0.0,
        "checkpoint_overhead": round(sum(m.get("checkpoint_s", 0.0) for m in metrics) / wall, 5) if wall > 0 else 0.0,
        "consumed": state.consumed,
        "rejected": state.rejected,
        "filtered": state.filtered,
        "running": state.running,
        "ready": state.ready,
        "pending": state.pending,
    }


#: The engine's counters a metrics line carries when the engine keeps them (calibration reads them).
ENGINE_COUNTERS = ("prefills", "prefill_rows", "prefill_tokens", "prefill_padded_tokens", "prefill_s", "decode_s", "decode_busy_s", "decode_busy2",
                   "after_pass_steps", "after_pass_s", "after_pass_busy", "after_pass_busy_s", "after_pass_busy2",
                   # not counters: whether a decode step runs over every slot or the live rows only,
                   # and how a prefill pass pads its rows and its width
                   "decodes_every_slot", "prefill_pad_to", "prefill_pow2_rows")


def update_record(
    state: Any, batch: Any, reward: float, version: int, *, executor: Any, engine: Any, steps: Sequence[dict[str, float]],
    wall_s: float, gc_s: float, slots: int, sync_s: float, step_s: float, recompute_s: float, max_width: int | None = None,
) -> dict[str, Any]:
    """The metrics line of the update that trained ``batch`` at ``version`` (the ledger's
    ``state`` after it; ``reward`` the batch's mean; ``steps`` the trainer's statistics;
    ``max_width`` the model's maximum length, which sets how the trainer pads the batch)."""
    staleness = [version - min(s.versions) for s in batch.samples if s.versions]
    exact = [s.reward == 1.0 for s in batch.samples]
    # groups whose rewards differ: the only ones with a non-zero GRPO advantage
    signal = [len({s.reward for s in group}) > 1 for group in batch.groups]
    return {
        "step": state.version,
        "reward": reward,
        "exact": sum(exact) / max(1, len(exact)),
        "signal_groups": sum(signal) / max(1, len(signal)),
        "staleness_mean": sum(staleness) / max(1, len(staleness)),
        "staleness_max": max(staleness, default=0),
        "trained_tokens": batch.tokens,
        "wait_s": batch.wait_s,
        "train_s": time.perf_counter() - batch.collected_at,
        "wall_s": wall_s,
        # the time of day at the line (seconds since the epoch): lines a run up with traces
        # of its machine taken beside it (benchmarks/step_spells.py)
        "time": time.time(),
        "ledger_s": executor.ledger_seconds,
        "store_s": executor.store_seconds,
        "gc_s": gc_s,
        # what calibration needs (docs/simulator.md#calibration): the update's parts (the
        # rest of the wall time between two updates is neither training nor waiting) and
        # the engine's counters so far
        "sequences": len(batch.samples),
        # the trainer's padded batch (rows times width), which the step's cost follows, and
        # the multiple its width is rounded up to
        "padded_tokens": len(batch.samples) * padded_width(batch.samples, max_width) if batch.samples else 0,
        "pad_to": pad_multiple(max_width),
        "step_s": step_s,
        "recompute_s": recompute_s,
        "sync_s": sync_s,
        "slots": slots,
        "generated_tokens": engine.decoded_tokens,
        "decode_steps": engine.steps,
        # (an engine that does not count or time its passes leaves them out)
        **{key: getattr(engine, key) for key in ENGINE_COUNTERS if hasattr(engine, key)},
        "rejected": state.rejected,
        "filtered": state.filtered,
        **mean_stats(steps),
    }
