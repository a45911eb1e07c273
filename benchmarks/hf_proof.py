"""Synchronous against asynchronous RL on a Hugging Face model, end to end through the CLI.

Every step is one of the product's own commands, run as a subprocess and printed
before it runs:

1. ``init-model --arch qwen2``: a randomly initialised Qwen2 model (default 12 layers,
   width 768: about 113M parameters) with its offline tokenizer;
2. ``run supervised``: the supervised workflow warms it up on the task's reference
   answers (on the GPU in bfloat16 autocast) and writes its weights;
3. ``train --init`` those weights, the same flags but ``--max-staleness``: 0
   (synchronous) and each of ``--async-staleness`` (default 4; e.g. ``4,8``), each measuring held-out
   reward every ``--eval-every`` updates (time left out of ``wall_s``); with
   ``--overlap`` each asynchronous setting again with ``train --overlap`` (generation
   beside training); with ``--overlap-only`` each only with it.  ``--keep-cache`` passes
   ``train --keep-cache`` to every run (the synchronous one holds no rollout in flight
   at a bump, so it changes nothing there).  ``--seeds 0,1,...`` runs every setting once
   per RL seed from the one warm-up, seed by seed, each asynchronous run compared with
   its own seed's synchronous one.

After each run from the second on it reads the finished runs' ``metrics.jsonl`` and
writes (at the end, also prints) a markdown table: time to a
held-out target both runs reach (the largest multiple of ``--target-step`` both
reach, unless ``--target``), final held-out reward, trained tokens/s, engine
overhead, and the ideal overlap speedup of the synchronous run,
``(generation + training) / max(generation, training)`` from its per-update
``wait_s`` (generation while the trainer waits) and the rest of its wall time (the
update: step, sync, overhead; evaluations are left out of ``wall_s``), with
how much of it the asynchronous run achieves.  Writes ``table.md``, ``results.json``
and ``reward_vs_wall.png`` (held-out reward against training wall time) to ``--out``.

    python benchmarks/hf_proof.py --device cuda --out $OUT/proof                      # the H200 run
    python benchmarks/hf_proof.py --device cpu --layers 2 --hidden 64 --steps 4 \\
        --sft-examples 64 --eval-every 2 --eval-size 8 --out /tmp/proof              # a smoke run on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import statistics
import sys
import time
from pathlib import Path

#: A task a randomly initialised model learns in minutes: sums and differences of two
#: numbers below 100, from reasoning-gym, scored by its verifier.
TASK = "rg:chain_sum:min_terms=2,max_terms=2,max_digits=2"


def command(args: list[str], log: Path) -> float:
    """Run ``python -m engine.cli ARGS`` (printed first), its output to ``log``; the
    seconds it took.  A failure stops the script with the log's tail."""
    line = [sys.executable, "-m", "engine.cli", *args]
    print("$ rollout-ledger " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        status = subprocess.run(line, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0:
        sys.exit(f"exit {status}; the end of {log}:\n" + "\n".join(log.read_text().splitlines()[-30:]))
    return time.perf_counter() - start


def finished(log: Path) -> dict | None:
    """The summary a finished ``train`` prints last, or None when the run has not
    finished (no log, or a log cut short by a time limit)."""
    lines = log.read_text().strip().splitlines() if log.exists() else []
    try:
        summary = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return summary if isinstance(summary, dict) and "wall_s" in summary else None


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def curve(run_dir: Path) -> list[tuple[float, float, int]]:
    """(wall_s, eval_reward, step) of the updates that measured held-out reward."""
    return [(m["wall_s"], m["eval_reward"], m["step"]) for m in metrics(run_dir) if "eval_reward" in m]


def time_to(points: list[tuple[float, float, int]], target: float) -> tuple[float, int] | None:
    """Wall time and update at which held-out reward first reaches ``target``."""
    return next(((wall, step) for wall, reward, step in points if reward >= target - 1e-12), None)


def common_target(curves: list[list[tuple[float, float, int]]], step: float) -> float:
    """The largest multiple of ``step`` every curve reaches."""
    reached = min(max((r for _, r, _ in c), default=0.0) for c in curves)
    return math.floor(reached / step + 1e-9) * step


def overlap(run_dir: Path) -> tuple[float, float, float]:
    """Generation seconds, training seconds and the ideal overlap speedup of a run:
    generation is the time the trainer waited for batches (``wait_s``), training the
    rest of the run's wall time (the step, the sync, the update's overhead).  Not the
    sum of ``train_s``: that runs to the end of the update and so also holds the
    held-out evaluations, which ``wall_s`` leaves out."""
    lines = metrics(run_dir)
    generation = sum(m["wait_s"] for m in lines)
    training = max(0.0, lines[-1]["wall_s"] - generation)
    return generation, training, (generation + training) / max(generation, training, 1e-12)


def plot(curves: dict[str, list[tuple[float, float, int]]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.2f}")
    ax.set_xlabel("training wall time (s; evaluation left out)")
    ax.set_ylabel("held-out reward")
    ax.set_title("Held-out reward against wall time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--sft-examples", type=int, default=40000)
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--sft-batch", type=int, default=64)
    parser.add_argument("--sft-lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=200, help="RL updates of each run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=64, help="rollouts in flight (both runs: the same engine)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--async-staleness", default="4", help="max_staleness of the asynchronous runs (comma-separated: one run each)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--target", type=float, default=None, help="held-out reward to reach (default: see --target-step)")
    parser.add_argument("--target-step", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=None, metavar="K[,K...]",
                        help="RL seeds: every run once per seed, all from the one warm-up (default: --seed alone)")
    parser.add_argument("--overlap", action="store_true", help="also run the asynchronous setting with train --overlap")
    parser.add_argument("--overlap-only", action="store_true",
                        help="run the asynchronous settings with train --overlap only (not also without it)")
    parser.add_argument("--eval-temperature", type=float, default=None,
                        help="held-out evaluations' temperature for every run (train --eval-temperature; 0: greedy)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="every run with train --keep-cache (no re-prefill of the rollouts in flight at a bump)")
    args = parser.parse_args()
    try:  # the flags that name several runs, before any of them starts
        seeds = [int(k) for k in args.seeds.split(",")] if args.seeds else [args.seed]
        bounds = [int(k) for k in str(args.async_staleness).split(",")]
    except ValueError:
        parser.error(f"--seeds and --async-staleness take whole numbers separated by commas, got {args.seeds!r} and "
                     f"{args.async_staleness!r}")
    if len(set(seeds)) != len(seeds):
        parser.error(f"--seeds names a seed twice: {args.seeds!r}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model, sft_log = out / "model", out / "sft.sqlite"
    timings = {}
    if not (model / "config.json").exists():
        timings["init-model"] = command(["init-model", "--arch", "qwen2", "--layers", str(args.layers), "--hidden",
                                         str(args.hidden), str(model)], out / "init-model.log")
    weights = Path(f"{sft_log}.artifacts") / "supervised-model.safetensors"
    if not weights.exists():
        sets = {"model_dir": str(model), "task": args.task, "device": args.device, "num_examples": args.sft_examples,
                "num_epochs": args.sft_epochs, "batch_size": args.sft_batch, "lr": args.sft_lr, "eval_size": 256,
                "seed": args.seed, "max_new_tokens": args.max_new_tokens}
        flags = [part for key, value in sets.items() for part in ("--set", f"{key}={value}")]
        timings["supervised"] = command(["run", "supervised", "--log", str(sft_log), *flags], out / "supervised.log")
    settings: dict[str, tuple[int, list[str]]] = {"sync": (0, [])}
    if not args.overlap_only:
        settings |= {f"async-{k}": (k, []) for k in bounds}
    if args.overlap or args.overlap_only:
        settings |= {f"async-{k}-overlap": (k, ["--overlap"]) for k in bounds}
    runs: dict[str, tuple[str, int, list[str], int]] = {}  # name: (setting, staleness, flags, seed)
    for seed in seeds:  # seed by seed: a call stopped part way has whole seeds
        for setting, (staleness, extra) in settings.items():
            runs[setting if len(seeds) == 1 else f"{setting}-seed{seed}"] = (setting, staleness, extra, seed)
    common = ["--model", str(model), "--task", args.task, "--init", str(weights), "--device", args.device,
              "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--group-size", str(args.group_size),
              "--max-concurrent", str(args.max_concurrent), "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr),
              "--eval-size", str(args.eval_size), "--eval-every", str(args.eval_every), "--checkpoint-every", str(args.steps),
              "--no-progress", *(["--keep-cache"] if args.keep_cache else []),
              *(["--eval-temperature", str(args.eval_temperature)] if args.eval_temperature is not None else [])]
    summaries = {}
    for name, (_, staleness, extra, seed) in runs.items():
        run_dir, log = out / name, out / f"{name}.log"
        summaries[name] = finished(log)
        if summaries[name] is None:
            shutil.rmtree(run_dir, ignore_errors=True)  # a run stopped part way is run again whole
            timings[name] = command(["train", *common, "--seed", str(seed), "--max-staleness", str(staleness), *extra,
                                     "--run-dir", str(run_dir)], log)
            summaries[name] = finished(log)
            if summaries[name] is None:
                sys.exit(f"{log} ends without the run's summary")
        if len(summaries) > 1:  # the files as they stand after each run: a call stopped later keeps them
            report(args, out, {n: (runs[n][0], runs[n][3]) for n in summaries}, summaries, timings,
                   final=len(summaries) == len(runs))


def report(args: argparse.Namespace, out: Path, plan: dict[str, tuple[str, int]], summaries: dict[str, dict],
           timings: dict[str, float], *, final: bool) -> None:
    """Write ``table.md``, ``results.json`` and the plot for the finished runs in ``plan``
    (name: setting and seed; each seed's synchronous run first), and print the table
    when ``final``.  Each asynchronous run is compared with its own seed's synchronous
    one; with several seeds, a line per setting gives the median and the mean over them."""
    runs = list(plan)
    curves = {name: curve(out / name) for name in runs}
    target = args.target if args.target is not None else common_target(list(curves.values()), args.target_step)
    rows, reached = [], {}
    for name in runs:
        s = summaries[name]
        hit = time_to(curves[name], target)
        reached[name] = hit
        last = curves[name][-1][1] if curves[name] else float("nan")
        rows.append(f"| {name} | {s['wall_s']:.1f} | {'%.1f s (update %d)' % hit if hit else 'not reached'} | "
                    f"{s.get('eval_reward_before', float('nan')):.3f} | {last:.3f} | {s['trained_tokens_per_s']:.0f} | "
                    f"{s['staleness_mean']:.2f} | {100 * s['engine_overhead']:.2f}% |")
    overlapped = {name: sum(m.get("overlap_steps", 0) for m in metrics(out / name)) for name in runs}
    syncs = {seed: name for name, (setting, seed) in plan.items() if setting == "sync"}
    lines, speedup, tta, gap, ideals = [], {}, {}, {}, {}
    for name, (setting, seed) in plan.items():
        sync_name = syncs.get(seed)
        if sync_name is None:
            continue
        if setting == "sync":
            generation, training, ideals[name] = overlap(out / name)
            lines.append(f"- ideal overlap speedup from {name}: ({generation:.1f} s generation + {training:.1f} s training) / "
                         f"max = {ideals[name]:.2f}x")
            continue
        speedup[name] = summaries[name]["trained_tokens_per_s"] / summaries[sync_name]["trained_tokens_per_s"]
        tta[name] = reached[sync_name][0] / reached[name][0] if reached[sync_name] and reached[name] else float("nan")
        gap[name] = curves[name][-1][1] - curves[sync_name][-1][1] if curves[name] and curves[sync_name] else float("nan")
        lines.append(f"- {name}: time-to-target speedup (sync / async) {tta[name]:.2f}x; trained tokens/s {speedup[name]:.2f}x "
                     f"at equal updates, {100 * speedup[name] / ideals[sync_name]:.0f}% of the ideal overlap; final held-out "
                     f"{gap[name]:+.3f} against sync; decode steps while training {overlapped[name]}")
    if len({seed for _, seed in plan.values()}) > 1:
        for setting in dict.fromkeys(setting for setting, _ in plan.values() if setting != "sync"):
            names = [name for name in tta if plan[name][0] == setting]
            lines.append(f"- {setting} over {len(names)} seeds: time-to-target speedup median "
                         f"{statistics.median(tta[n] for n in names):.2f}x, trained tokens/s {statistics.fmean(speedup[n] for n in names):.2f}x, "
                         f"final held-out {statistics.fmean(gap[n] for n in names):+.3f} against sync (mean)")
    table = "\n".join([
        f"Task `{args.task}`, Qwen2 {args.layers} layers x {args.hidden}, {args.steps} updates of {args.batch_size} prompts x "
        f"{args.group_size} samples, {args.max_concurrent} rollouts in flight, held-out reward on {args.eval_size} problems "
        f"every {args.eval_every} updates; target {target:.2f}.",
        "",
        "| run | wall s | time to target | held-out before RL | held-out final | trained tokens/s | mean staleness | engine overhead |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *lines,
    ])
    if final:
        print(table)
    from engine.log.files import write_atomic

    write_atomic(out / "table.md", table + "\n")
    write_atomic(out / "results.json", json.dumps({"target": target, "timings": timings, "summaries": summaries, "curves": curves,
                                                   "ideal_overlap": ideals, "speedup": speedup, "time_to_target_speedup": tta,
                                                   "final_gap": gap, "plan": plan, "args": vars(args)}, default=str, indent=1))
    try:
        plot(curves, target, out / "reward_vs_wall.png")
    except ImportError:
        print("matplotlib is missing: no plot")

if __name__ == "__main__":
    main()
