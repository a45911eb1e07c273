"""Held-out reward of asynchronous against synchronous RL, at equal updates and at equal
wall time, over tasks and seeds.

For every task and seed one ``benchmarks/gpu_async.py`` command runs, from one shared
warm-up, the synchronous run (``max_staleness`` 0) and the asynchronous ones at 2 and
8 with the decoupled objective and with plain PPO, each measuring held-out reward
every ``--eval-every`` updates.  The commands run ``--parallel`` at a time (the small
models leave a GPU mostly idle); each run's wall time is its own process's, so under
``--parallel`` above 1 the wall times share the machine (all runs of one command
share it alike, since the commands start together).

Then, per task and run (means over seeds, each seed's value in brackets):

- **equal updates**: held-out reward after the last update, and its difference from
  the synchronous run of the same seed (flagged when async is more than 0.03 lower);
- **equal wall time**: at the moment the asynchronous run ended, the synchronous
  run's latest held-out reward, against the asynchronous run's final one;
- trained tokens/s relative to synchronous.

    python benchmarks/quality_study.py --device cuda --out $OUT/quality            # the full matrix
    python benchmarks/quality_study.py --summarise $OUT/quality                    # the table again, from the files
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: The tasks: the three built-in ones on the built-in tiny policy, and two
#: reasoning-gym ones on a small randomly initialised Qwen2.
TASKS = (
    "copy", "reverse", "repeat",
    "rg:chain_sum:min_terms=2,max_terms=2,max_digits=1",
    "rg:basic_arithmetic:min_terms=2,max_terms=2,max_digits=1",
)
#: Flags of every command: the ablation's setting (four minibatches, nine batches in flight).
COMMON = ["--staleness", "0,2,8", "--ablation", "2,8", "--concurrency", "9", "--minibatches", "4", "--eval-size", "256"]
#: Per kind of task: the model and its learning rates.
BUILT_IN = ["--model-size", "tiny", "--lr", "2e-3", "--warmup-steps", "40"]
EXTERNAL = ["--lr", "1e-4", "--sft-lr", "1e-3", "--warmup-steps", "300", "--max-new-tokens", "6"]
#: Async loses when its held-out reward is this much below synchronous.
LOSS = 0.03


def slug(task: str) -> str:
    return task.split(":")[0] if not task.startswith("rg:") else task.split(":")[1]


def run_matrix(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "qwen2"
    if any(t.startswith("rg:") for t in args.tasks) and not (model / "config.json").exists():
        subprocess.run([sys.executable, "-m", "engine.cli", "init-model", "--arch", "qwen2", "--layers", "4", "--hidden", "256",
                        str(model)], check=True, stdout=subprocess.DEVNULL)
    jobs = []
    for task in args.tasks:
        extra = ["--model", str(model), *EXTERNAL] if task.startswith("rg:") else list(BUILT_IN)
        lr = args.rg_lr if task.startswith("rg:") else args.lr
        if lr is not None:  # the last --lr on a command line is the one argparse keeps
            extra = [*extra, "--lr", str(lr)]
        if args.entropy_coef:
            extra = [*extra, "--entropy-coef", str(args.entropy_coef)]
        if args.kl_target:
            extra = [*extra, "--kl-target", str(args.kl_target)]
        for seed in range(args.seeds):
            out = args.out / slug(task) / f"seed{seed}"
            if args.warmup_steps is not None:
                extra = [*extra, "--warmup-steps", str(args.warmup_steps)]
            cmd = [sys.executable, "benchmarks/gpu_async.py", "--device", args.device, "--task", task, *extra, *COMMON,
                   "--steps", str(args.steps), "--eval-every", str(args.eval_every), "--seed", str(seed), "--out", str(out)]
            jobs.append((out, cmd))
    print(f"{len(jobs)} commands, {args.parallel} at a time", flush=True)
    start = time.perf_counter()

    def one(job: tuple[Path, list[str]]) -> int:
        out, cmd = job
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "command.log", "w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            status = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"{out.relative_to(args.out)}: exit {status} at {time.perf_counter() - start:.0f}s", flush=True)
        return status

    with ThreadPoolExecutor(args.parallel) as pool:
        failed = sum(1 for status in pool.map(one, jobs) if status)
    if failed:
        print(f"{failed} commands failed (their command.log says why)")


def at_time(curve: list[tuple[float, float]], wall: float) -> float | None:
    """The latest held-out reward measured at or before ``wall`` seconds."""
    seen = [reward for w, reward in curve if w <= wall + 1e-9]
    return seen[-1] if seen else None


def _fmt(values: list[float]) -> str:
    return f"{statistics.fmean(values):+.3f} ({', '.join(f'{v:+.2f}' for v in values)})" if values else "n/a"


def held_out(run: dict, tail: int) -> float:
    """The run's held-out reward at its end: with ``tail`` above 1, the mean of its
    last ``tail`` evaluations (the final weights' one included), which a single
    evaluation's sampling noise moves less."""
    if tail <= 1:
        return run["summary"]["eval_reward"]
    curve = [m["eval_reward"] for m in run["metrics"] if "eval_reward" in m]
    return statistics.fmean(curve[-(tail - 1):] + [run["summary"]["eval_reward"]]) if curve else run["summary"]["eval_reward"]


def summarise(root: Path, tail: int = 1) -> str:
    lines = ["| task | run | held-out, equal updates: mean (per seed) | async - sync, equal updates | "
             "at the async run's end: sync's held-out | async - sync, equal wall time | tokens/s vs sync |",
             "|---|---|---|---|---|---|---|"]
    flagged = []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("seed*/results.json"))):
        by_run: dict[str, list[dict]] = {}
        for path in sorted(task_dir.glob("seed*/results.json")):
            runs = {r["name"]: r for r in json.loads(path.read_text())["runs"]}
            sync = runs.get("staleness0")
            if sync is None:
                continue
            sync_curve = [(m["wall_s"], m["eval_reward"]) for m in sync["metrics"] if "eval_reward" in m]
            for name, r in runs.items():
                held = held_out(r, tail)
                wall = r["summary"]["wall_s"]
                sync_then = at_time(sync_curve, wall) if name != "staleness0" else held
                by_run.setdefault(name, []).append({
                    "held": held, "delta": held - held_out(sync, tail),
                    "sync_then": sync_then, "delta_time": None if sync_then is None else held - sync_then,
                    "speed": r["summary"]["trained_tokens_per_s"] / sync["summary"]["trained_tokens_per_s"],
                })
        for name, rows in by_run.items():
            delta = [r["delta"] for r in rows]
            delta_time = [r["delta_time"] for r in rows if r["delta_time"] is not None]
            sync_then = [r["sync_then"] for r in rows if r["sync_then"] is not None]
            held = [r["held"] for r in rows]
            lines.append(
                f"| {task_dir.name} | {name} | {statistics.fmean(held):.3f} "
                f"({', '.join(f'{v:.2f}' for v in held)}) | {_fmt(delta) if name != 'staleness0' else '-'} | "
                f"{statistics.fmean(sync_then):.3f} | {_fmt(delta_time) if name != 'staleness0' else '-'} | "
                f"{statistics.fmean(r['speed'] for r in rows):.2f}x |"
            )
            if name != "staleness0" and statistics.fmean(delta) < -LOSS:
                flagged.append(f"{task_dir.name}/{name} ({statistics.fmean(delta):+.3f})")
    lines += ["", f"Async more than {LOSS} below sync at equal updates (mean over seeds): "
              + (", ".join(flagged) if flagged else "none")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--tasks", type=lambda s: s.split(";"), default=list(TASKS), help="semicolon-separated")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=15)
    parser.add_argument("--warmup-steps", type=int, default=None, help="instead of each kind of task's own (a smoke run)")
    parser.add_argument("--lr", type=float, default=None, help="the built-in tasks' RL learning rate (default 2e-3)")
    parser.add_argument("--rg-lr", type=float, default=None, help="the reasoning-gym tasks' RL learning rate (default 1e-4)")
    parser.add_argument("--entropy-coef", type=float, default=0.0, help="every run's entropy bonus (0: none)")
    parser.add_argument("--kl-target", type=float, default=0.0, help="every run's kl_target (0: a fixed rate)")
    parser.add_argument("--tail", type=int, default=1,
                        help="held-out reward at the end as the mean of the last N evaluations (1: the final weights' alone)")
    parser.add_argument("--summarise", type=Path, default=None, help="only print the table of an earlier --out")
    args = parser.parse_args()
    if args.summarise is None:
        run_matrix(args)
    table = summarise(args.summarise or args.out, args.tail)
    print(table)
    (args.summarise or args.out).joinpath("table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
