"""Trained tokens/s of one run, single-process and through the distributed code path.

Runs the same ``rollout-ledger train`` command line (same task, model, seeds and
warm-up) as one process, and with ``--nproc 1`` (torchrun, one trainer rank: the
data-parallel trainer, its all-reduces and the process groups, gloo on the CPU and
NCCL on a GPU), and with ``--generators K`` also with K generator ranks apart (the
weights synced to them at each version bump).  Each setting runs ``--repeats``
times, interleaved, and the fastest run is kept.  Trained tokens/s is the run's own
figure (its summary: tokens trained over the training loop's wall time, setup and
warm-up excluded).  Prints one markdown table with each setting's ratio to the
single-process run.

    python benchmarks/bench_dist.py                                   # CPU, tiny model
    python benchmarks/bench_dist.py --device cuda --model-size small --task reverse \\
        --steps 60 --batch-size 16 --group-size 8 --max-concurrent 64 --max-staleness 4 --repeats 3

``--overlap`` adds the single process and (with ``--generators``) the generator ranks
with ``train --overlap``: generation that goes on while the trainer trains.  Two ranks
cannot share one GPU under NCCL, so ``--generators`` on a one-GPU machine needs
``--device cpu``; on two GPUs::

    python benchmarks/bench_dist.py --device cuda --model-size small --task reverse --steps 150 --batch-size 16 \
        --group-size 8 --max-concurrent 64 --max-staleness 4 --warmup-steps 100 --checkpoint-every 100 --repeats 2 \
        --generators 1 --overlap
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace, run_dir: Path, extra: list[str]) -> dict[str, float]:
    """One ``train`` run's summary."""
    command = [
        sys.executable, "-m", "engine.cli", "train", "--task", args.task, "--model-size", args.model_size, "--device", args.device,
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--group-size", str(args.group_size),
        "--max-concurrent", str(args.max_concurrent or args.batch_size), "--max-staleness", str(args.max_staleness),
        "--warmup-steps", str(args.warmup_steps), "--checkpoint-every", str(args.checkpoint_every), "--seed", str(args.seed),
        "--no-progress", "--run-dir", str(run_dir), *extra,
    ]
    env = {**os.environ, "ROLLOUT_LEDGER_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"bench_dist: {' '.join(extra) or 'single process'} failed:\n{done.stderr[-3000:]}")
    summary: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--task", default="copy")
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument("--max-staleness", type=int, default=1)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generators", type=int, default=0, help="also run with this many generator ranks (0: not)")
    parser.add_argument("--overlap", action="store_true",
                        help="also run the single process and the generator ranks (with --generators) with train --overlap")
    args = parser.parse_args()

    settings = {"single process": [], "distributed, 1 trainer rank": ["--nproc", "1"]}
    if args.overlap:
        settings["single process, --overlap"] = ["--overlap"]
    if args.generators:
        apart = ["--nproc", "1", "--generators", str(args.generators)]
        settings[f"distributed, 1 trainer rank + {args.generators} generator(s)"] = apart
        if args.overlap:
            settings[f"distributed, 1 trainer rank + {args.generators} generator(s), --overlap"] = [*apart, "--overlap"]
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for index, (name, extra) in enumerate(settings.items()):
                summary = run(args, Path(scratch) / f"r{repeat}-{index}", extra)
                print(f"{name} #{repeat + 1}: {summary['trained_tokens_per_s']} trained tokens/s", file=sys.stderr)
                if name not in best or summary["trained_tokens_per_s"] > best[name]["trained_tokens_per_s"]:
                    best[name] = summary
    base = best["single process"]["trained_tokens_per_s"]
    print(f"device {args.device}, model {args.model_size}, task {args.task}, {args.steps} updates of {args.batch_size} x "
          f"{args.group_size}, max_staleness {args.max_staleness}; best of {args.repeats}; {platform.node()}\n")
    print("| run | trained tokens/s | ratio to single process | steps | trained tokens | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, summary in best.items():
        rate = summary["trained_tokens_per_s"]
        print(f"| {name} | {rate:.1f} | {rate / base:.3f} | {summary['steps']} | {summary['trained_tokens']} | {summary['wall_s']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
