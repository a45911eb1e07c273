"""Synchronous versus asynchronous RL on one device, and decoupled versus plain PPO.

One supervised warm-up is shared by every run (same initial weights, same seeds).
Then each run trains for ``--steps`` updates on the long-tailed ``reverse`` task:

- the sweep: ``max_staleness`` 0 (synchronous), 1, 2, 4, 8 with the decoupled
  objective; every run has the same engine (``max_concurrent = 4 * batch_size``
  rollouts' worth of KV-cache slots): only the staleness bound differs, and the
  capacity rule is what keeps the synchronous run at one batch in flight;
- the ablation: plain PPO at the ``--ablation`` bounds (default 8), against the
  sweep's decoupled runs at the same bounds;
- with ``--m2-runs``, the decoupled objective again at those bounds with the
  second-moment bound on the tokens (``--behaviour-m2``, default 0.04): runs
  ``stalenessK-m2``;
- with ``--in-order-runs``, the decoupled objective again at those bounds with batches
  in order (``RunConfig.in_order``: no batch takes a rollout while one started under an
  older version is still generating): runs ``stalenessK-inorder``;
- with ``--drain-runs``, a counterfactual at those bounds: after each batch is taken
  the update waits until no rollout is generating (runs ``stalenessK-drain``), so no
  rollout is interrupted by an update and every sample comes from one policy version;
  batches are taken as in the asynchronous run (the capacity rule admits nothing new
  meanwhile once the bound binds);
- with ``--lag-runs``, a counterfactual at each lag ``L``: whole batches generated as
  the synchronous run generates them (one batch in flight, every group finished before
  the batch is taken), each trained ``L`` updates after it was generated (runs
  ``lagL``).  Every sample is then exactly ``L`` versions stale, as stale as an
  asynchronous run's at ``max_staleness = L`` on average, but the batch is the one the
  synchronous run would train, not the groups that finished first: a long answer's
  feedback waits no longer than a short one's.  The last ``L`` batches generated are
  never trained.

Each run is the ``train`` command's own function
(:func:`engine.workflows.reinforcement.train`, the reinforcement workflow) on a
:class:`RunConfig`; its figures come from what that function returns (the summary,
the held-out reward after the last update) and from the run's ``metrics.jsonl``.

Prints a table (trained tokens/s, speed-up over synchronous, final reward, held-out
reward, staleness, engine overhead, and the time the garbage collector took between
updates: ``--gc``, ``engine.runtime.collector``) and writes ``results.json`` (every run's
per-step metrics) and ``table.md`` to ``--out``.

    python benchmarks/gpu_async.py --device cuda --out $OUT
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from engine.runtime.collector import MODES as GC_MODES
from engine.workflows.reinforcement import train
from engine.workflows.rl_config import RunConfig
from engine.workflows.rl_run import RLRun
from engine.workflows.rl_update import CollectedBatch


def lagged_collect(lag: int) -> Callable[[RLRun], CollectedBatch]:
    """``RLRun.collect_batch`` for a ``lagL`` run: batches are collected as the run's
    config collects them and handed to the trainer ``lag`` collections later (the
    first update waits for ``lag + 1`` batches)."""
    collect = RLRun.collect_batch

    def lagged(run: RLRun) -> CollectedBatch:
        waiting: deque[CollectedBatch] = run.__dict__.setdefault("_lagged_batches", deque())
        while len(waiting) <= lag:
            waiting.append(collect(run))
        return waiting.popleft()

    return lagged


def drained_collect() -> Callable[[RLRun], CollectedBatch]:
    """``RLRun.collect_batch`` for a ``-drain`` run: the batch as the run collects it,
    then the run's loop turns until none of its rollouts is generating (they finish
    under the weights they started with, before the update)."""
    collect = RLRun.collect_batch

    def drained(run: RLRun) -> CollectedBatch:
        batch = collect(run)
        run.loop.run(run.executor.drain())
        return batch

    return drained


def run_one(name: str, config: RunConfig, root: Path, eval_size: int, progress: bool, eval_every: int = 0,
            lag: int | None = None, drain: bool = False) -> dict:
    """One run of ``config`` through the ``train`` command's function: its summary (with
    ``eval_reward``, the held-out reward of the final weights) and per-update metrics.
    With ``lag`` the trainer gets each batch ``lag`` updates after it was collected
    (:func:`lagged_collect`); with ``drain`` each update waits for the rollouts in
    flight to finish (:func:`drained_collect`)."""
    run_dir = root / name
    shutil.rmtree(run_dir, ignore_errors=True)
    patch: Any = nullcontext()
    if lag is not None:
        patch = mock.patch.object(RLRun, "collect_batch", lagged_collect(lag))
    elif drain:
        patch = mock.patch.object(RLRun, "collect_batch", drained_collect())
    with patch:
        summary = train(config, run_dir, eval_size=eval_size, eval_every=eval_every, progress=progress)
    summary["eval_reward"] = summary.get("eval_reward_after", float("nan"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"name": name, "config": asdict(config), "summary": summary, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_async"))
    parser.add_argument("--task", default="reverse")
    parser.add_argument("--model-size", default="small")
    parser.add_argument("--model", default=None, help="a Hugging Face model directory instead of the built-in policy")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens a completion may take (rg: and jsonl: tasks)")
    parser.add_argument("--sft-lr", type=float, default=RunConfig().sft_lr, help="learning rate of the warm-up")
    parser.add_argument("--eval-every", type=int, default=0, help="held-out reward every K updates too (needs --eval-size)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--minibatches", type=int, default=1, help="optimiser steps per update")
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--staleness", default="0,1,2,4,8", help="comma-separated sweep")
    parser.add_argument("--concurrency", type=int, default=4, help="max_concurrent in batches")
    parser.add_argument("--ablation", default="8", help="comma-separated max_staleness values also run with plain PPO")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="seed of the warm-up, the prompts and the sampling")
    parser.add_argument("--gc", default="update", choices=GC_MODES, help="when the garbage collector runs (RunConfig.gc)")
    parser.add_argument("--entropy-coef", type=float, default=0.0, help="weight of the entropy bonus (RunConfig.entropy_coef)")
    parser.add_argument("--kl-target", type=float, default=0.0, help="the rate follows the updates' kl_behaviour (RunConfig.kl_target)")
    parser.add_argument("--m2-runs", default="", metavar="K[,K...]",
                        help="max_staleness values also run with the decoupled objective and --behaviour-m2 (runs 'stalenessK-m2')")
    parser.add_argument("--behaviour-m2", type=float, default=0.04, metavar="BOUND",
                        help="the bound of the -m2 runs (RunConfig.behaviour_m2)")
    parser.add_argument("--in-order-runs", default="", metavar="K[,K...]",
                        help="max_staleness values also run with batches in order (runs 'stalenessK-inorder')")
    parser.add_argument("--drain-runs", default="", metavar="K[,K...]",
                        help="counterfactual runs 'stalenessK-drain': each update waits until no rollout is generating")
    parser.add_argument("--lag-runs", default="", metavar="L[,L...]",
                        help="counterfactual runs 'lagL': the synchronous run's batches, each trained L updates late")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "runs"
    base = RunConfig(
        task=args.task, model_size=args.model_size, model_dir=args.model, max_new_tokens=args.max_new_tokens,
        sft_lr=args.sft_lr, steps=args.steps, batch_size=args.batch_size, group_size=args.group_size,
        warmup_steps=args.warmup_steps, lr=args.lr, minibatches=args.minibatches, device=args.device,
        checkpoint_every=max(1, args.steps // 4), seed=args.seed, gc=args.gc, entropy_coef=args.entropy_coef, kl_target=args.kl_target,
    )
    start = time.perf_counter()
    # the shared warm-up: a run's setup (supervised steps), its weights saved, no update
    warm = RLRun(replace(base, steps=1), work / "warmup")
    shutil.rmtree(work / "warmup", ignore_errors=True)
    warm.setup()
    init = args.out / "init.safetensors"
    warm.save_weights(init)
    warm_reward = warm.evaluate(args.eval_size) if args.eval_size > 0 else float("nan")
    warm.close()
    print(f"warm-up: {args.warmup_steps} steps in {time.perf_counter() - start:.1f}s, held-out reward {warm_reward:.3f}", flush=True)
    base = replace(base, init=str(init))

    base = replace(base, max_concurrent=args.concurrency * args.batch_size)
    plan = [(f"staleness{k}", replace(base, max_staleness=int(k))) for k in args.staleness.split(",") if k]
    if not args.no_ablation:
        plan += [(f"staleness{k}-ppo", replace(base, max_staleness=int(k), objective="ppo")) for k in args.ablation.split(",")]
    plan += [(f"staleness{k}-m2", replace(base, max_staleness=int(k), behaviour_m2=args.behaviour_m2))
             for k in args.m2_runs.split(",") if k]
    plan += [(f"staleness{k}-inorder", replace(base, max_staleness=int(k), in_order=True)) for k in args.in_order_runs.split(",") if k]
    drains = {f"staleness{k}-drain": int(k) for k in args.drain_runs.split(",") if k}
    plan += [(name, replace(base, max_staleness=bound)) for name, bound in drains.items()]
    # one batch in flight, as synchronous; a bound of L lets L + 1 batches be collected at a version
    lags = {f"lag{k}": int(k) for k in args.lag_runs.split(",") if k}
    plan += [(name, replace(base, max_staleness=lag, max_concurrent=args.batch_size)) for name, lag in lags.items()]
    results = []
    for name, config in plan:
        result = run_one(name, config, work, args.eval_size, args.progress, args.eval_every, lag=lags.get(name),
                         drain=name in drains)
        results.append(result)
        s = result["summary"]
        print(
            f"{name}: {s['trained_tokens_per_s']:.0f} tok/s, wall {s['wall_s']:.1f}s, final reward {s['final_reward']:.3f}, "
            f"eval {s['eval_reward']:.3f}, overhead {100 * s['engine_overhead']:.2f}% (+ store {100 * s['store_overhead']:.2f}%, "
            f"gc {100 * s['gc_overhead']:.2f}%)",
            flush=True,
        )

    sync = next((r for r in results if r["config"]["max_staleness"] == 0), None)
    header = "| run | max_staleness | max_concurrent | objective | trained tok/s | vs sync | wall s | final reward | held-out reward | mean staleness | engine overhead | sample store | gc |"
    lines = [header, "|" + "---|" * 13]
    for r in results:
        s, c = r["summary"], r["config"]
        speedup = s["trained_tokens_per_s"] / sync["summary"]["trained_tokens_per_s"] if sync else float("nan")
        lines.append(
            f"| {r['name']} | {c['max_staleness']} | {c['max_concurrent']} | {c['objective']} | "
            f"{s['trained_tokens_per_s']:.0f} | {speedup:.2f}x | {s['wall_s']:.1f} | {s['final_reward']:.3f} | "
            f"{s['eval_reward']:.3f} | {s['staleness_mean']:.2f} | {100 * s['engine_overhead']:.2f}% | {100 * s['store_overhead']:.2f}% "
            f"| {100 * s['gc_overhead']:.2f}% |"
        )
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    table = "\n".join(lines)
    meta = {
        "device": device, "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
        "warmup_eval_reward": warm_reward, "total_s": time.perf_counter() - start,
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": results}))
    (args.out / "table.md").write_text(f"Device: {device}, torch {torch.__version__}\n\n{table}\n")
    print(f"\nDevice: {device}; warm-up held-out reward {warm_reward:.3f}\n{table}")


if __name__ == "__main__":
    main()
