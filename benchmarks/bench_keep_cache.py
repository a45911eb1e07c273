"""What ``train --keep-cache`` saves: the same run with and without it, side by side.

Without it, every weight update prefills every rollout in flight again under the new
weights (one pass over their prompts and tokens so far); with it the engine decodes on
over the keys and values the earlier weights cached, and the only prefills are the
starting prompts'.  Both runs start from the same random Hugging Face model (written
by ``init-model``) with the same seed and flags; the table gives, per update, the
tokens and seconds of prefill passes, the decode steps, the time waiting for a batch
and the whole update (what a kept cache does to learning, through ``kl_behaviour``, is
the GPU proof's to measure: a random model earns no reward to learn from).  Each setting runs
``--repeats`` times, alternating, and is measured by its mean::

    python benchmarks/bench_keep_cache.py                       # a 2-layer model on the CPU, about a minute
    python benchmarks/bench_keep_cache.py --device cuda --layers 12 --hidden 768 --steps 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rollout_ledger(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_keep_cache: rollout-ledger {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def per_update(run_dir: Path, skip: int) -> dict[str, float]:
    """Means per update over the updates after the first ``skip`` (the engine's start)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first, last = rows[skip - 1], rows[-1]
    n = len(rows) - skip
    return {
        "prefill tokens": (last["prefill_tokens"] - first["prefill_tokens"]) / n,
        "prefill ms": 1000 * (last["prefill_s"] - first["prefill_s"]) / n,
        "decode steps": (last["decode_steps"] - first["decode_steps"]) / n,
        "wait ms": 1000 * statistics.fmean(r["wait_s"] for r in rows[skip:]),
        "update ms": 1000 * (last["wall_s"] - first["wall_s"]) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--task", default="rg:word_sequence_reversal:min_words=4,max_words=7")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-staleness", type=int, default=2)
    parser.add_argument("--skip", type=int, default=3, help="first updates left out (the engine's start)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.steps <= args.skip:
        parser.error(f"--steps must exceed --skip ({args.skip}), got {args.steps}")
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        rollout_ledger("init-model", "--arch", "qwen2", "--layers", str(args.layers), "--hidden", str(args.hidden), str(model))
        common = ["train", "--model", str(model), "--task", args.task, "--device", args.device, "--steps", str(args.steps),
                  "--batch-size", str(args.batch_size), "--group-size", str(args.group_size),
                  "--max-concurrent", str((args.max_staleness + 1) * args.batch_size), "--max-staleness", str(args.max_staleness),
                  "--max-new-tokens", str(args.max_new_tokens), "--warmup-steps", "0", "--no-progress",
                  "--checkpoint-every", str(args.steps)]
        found: dict[str, list[dict[str, float]]] = {"re-prefill": [], "--keep-cache": []}
        for repeat in range(args.repeats):
            for name in found:  # alternating: a slow spell of the machine falls on both
                run_dir = Path(tmp) / f"{name.strip('-')}-{repeat}"
                rollout_ledger(*common, "--run-dir", str(run_dir), *(["--keep-cache"] if name == "--keep-cache" else []))
                found[name].append(per_update(run_dir, args.skip))
    columns = list(found["re-prefill"][0])
    print(f"{args.task}, Qwen2 {args.layers} x {args.hidden} on {args.device}, staleness {args.max_staleness}, "
          f"{args.batch_size} x {args.group_size}, {args.steps} updates (the first {args.skip} left out), "
          f"mean of {args.repeats} runs each\n")
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, runs in found.items():
        means = {c: statistics.fmean(r[c] for r in runs) for c in columns}
        print(f"| {name} | " + " | ".join(f"{means[c]:.4g}" for c in columns) + " |")


if __name__ == "__main__":
    main()
