"""How far a colocated engine runs ahead of its trainer: decode steps per update,
sequences busy per decode step and wall time per update of one small ``train`` run, with
the engine letting the event loop turn once after each step (the baseline: a finished
rollout then reaches the trainer a few steps late) and with
:data:`engine.backends.local.generation.SETTLE_TURNS` turns after a step that finished
a sequence (the engine as it is).  Both rows in one process, one after the other, on
the same seed; the first ``--skip`` updates (the warm-up of the engine) are left out.

    python benchmarks/bench_settle.py                 # tiny model, CPU, about a minute
    python benchmarks/bench_settle.py --steps 80 --device cuda --model-size small
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path


def measure(args: argparse.Namespace, turns: int, out: Path) -> dict[str, float]:
    from engine.backends.local import generation
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig

    kept = generation.SETTLE_TURNS
    generation.SETTLE_TURNS = turns
    try:
        config = RunConfig(task=args.task, model_size=args.model_size, steps=args.steps, batch_size=args.batch_size,
                           group_size=args.group_size, max_concurrent=args.max_concurrent, max_staleness=args.max_staleness,
                           warmup_steps=args.warmup_steps, device=args.device, seed=args.seed)
        shutil.rmtree(out, ignore_errors=True)
        train(config, out, eval_size=0, progress=False)
    finally:
        generation.SETTLE_TURNS = kept
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[args.skip - 1], rows[-1]
    updates = len(rows) - args.skip
    steps = last["decode_steps"] - first["decode_steps"]
    return {"steps": steps / updates, "busy": (last["generated_tokens"] - first["generated_tokens"]) / max(1, steps),
            "wall_ms": 1e3 * (last["wall_s"] - first["wall_s"]) / updates}


def main() -> None:
    from engine.backends.local.generation import SETTLE_TURNS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="reverse")
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=10, help="first updates left out")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-concurrent", type=int, default=64)
    parser.add_argument("--max-staleness", type=int, default=2)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.skip < args.steps:
        parser.error(f"--skip must be between 1 and --steps - 1, got {args.skip}")
    with tempfile.TemporaryDirectory() as scratch:
        rows = [("1 turn after every step (baseline)", measure(args, 1, Path(scratch) / "one")),
                (f"{SETTLE_TURNS} turns after a finishing step", measure(args, SETTLE_TURNS, Path(scratch) / "settle"))]
    print("| engine | decode steps per update | busy sequences per step | wall ms per update |")
    print("|---|---|---|---|")
    for name, row in rows:
        print(f"| {name} | {row['steps']:.2f} | {row['busy']:.1f} | {row['wall_ms']:.1f} |")


if __name__ == "__main__":
    main()
