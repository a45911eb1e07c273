"""Sim-to-real fidelity: calibrate the simulator on one real run, predict others, then run them.

1. a shared warm-up (``train --steps 1``), whose final weights every run starts from;
2. the calibration run: ``rollout-ledger train`` at ``max_staleness`` 2, and a shorter
   probe at the same bound, another batch size (``--probe-batch-size``; 0: none) and
   fewer rollouts in flight (``--probe-concurrency``), so that the fit sees two slot
   counts, two batch shapes and both kinds of prefill pass: the calibration run's
   capacity binds, so its starts all wait for an update and join its re-prefill pass
   (one pass per update); the probe's in-flight limit binds, so starts also arrive
   between updates, each such group in a pass of its own, as in runs at higher bounds;
3. ``rollout-ledger calibrate`` on both, then the simulator's predictions for runs at
   ``max_staleness`` 0, 4 and 8 and one at another batch size, written to
   ``predictions.json`` *before* any of those runs starts;
4. the runs themselves, and a predicted-against-measured table (trained tokens/s, mean
   and p99 staleness at consumption, trainer idle fraction, error %) printed and
   written to ``table.md`` and ``results.json``.

``--calibration-runs N`` runs the calibration setting N times back to back and calibrates
on all of them (the table's calibration row is their mean): on one H200 the speed of a
whole run moved by up to 30% from one run to the next, and a single calibration run is
one draw of it.  With ``--probe-batch-size 0`` the fit has no cost that only differs
between runs of different shapes (per slot, per trained sequence), so a batch size with
more slots is predicted at the calibration runs' step cost (on a CPU, batch 32 came out
19% fast that way: docs/simulator.md round 10); with the probe, those costs come from
two shapes, which on an H200 also differed by the machine's drift between the runs.

``--repeats N`` runs each predicted setting N times, in rounds (all settings, then all
again), and measures it by the mean of its runs, each run's tokens/s printed: on one
H200 the same setting's whole update (collecting, the step, the overhead alike) took
up to 14% longer in one run than in another.  ``--checkpoint-every N`` has every run
write its checkpoint every N updates instead of ``train``'s default (each update), for
a study that leaves the disk out of the machine's noise.  From the second round on, each
round also runs the calibration setting again (``calibration-r2``, ...), a control that is
neither predicted nor in the table: its change from the calibration run is how far the
machine itself drifted while the study ran (``controls`` in ``results.json``).  Each
predicted setting's tokens/s is also compared as a ratio to the control of its own
round, predicted against measured (``against_controls``), which takes the drift between
rounds out of the error; ``--against-controls DIR`` prints that for an earlier study.

``--model`` is ``train``'s: a built-in size or a local Hugging Face model directory
(``rollout-ledger init-model``); ``--train-flags`` adds flags to every run's ``train``
command (a Hugging Face model's ``--max-new-tokens``, ``--keep-cache``, ...).

Everything goes under ``--out``.  On an H200 (about 3-4 minutes at 100 updates)::

    python benchmarks/fidelity.py --device cuda --steps 100 --out $OUT

Tiny on a CPU (a minute or two)::

    python benchmarks/fidelity.py --device cpu --model-size tiny --steps 12 --batch-size 4 \\
        --concurrency 2 --warmup-steps 5 --other-batch-size 8 --probe-batch-size 2 --out /tmp/fidelity

Measured staleness is read from the run's log (version at ``consumed`` minus the version
the rollout was submitted under, the simulator's definition); the trainer's idle fraction
is the time it waited for a batch (``wait_s``: from the end of one update to the
consumption of the next batch) over the run's wall time, as the simulator's
``trainer_idle_s`` over its simulated time.  ``summaries.json`` holds each run's
figures and the mean parts of its updates (collect, step, recompute, sync, overhead);
``results.json`` also has each run's prefill passes per update, predicted and measured
(the engine's counter), printed under the table.

``--reanalyse DIR`` trains nothing: it calibrates the current cost model on the runs an
earlier study left in ``DIR`` and predicts them again, writing to ``--out`` (never into
``DIR``).  Those predictions come *after* the runs, so they show how the model as it is
now explains them, not that it foresaw them; the table says so.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("tokens_per_s", "staleness_mean", "staleness_p99", "trainer_idle")


def train(args: argparse.Namespace, run_dir: Path, staleness: int, batch: int, steps: int, extra: list[str],
          concurrency: int | None = None) -> None:
    command = [
        sys.executable, "-m", "engine.cli", "train", "--task", args.task, "--model", args.model_size, *shlex.split(args.train_flags),
        "--device", args.device, "--steps", str(steps), "--batch-size", str(batch),
        "--group-size", str(args.group_size), "--max-concurrent", str((concurrency or args.concurrency) * batch),
        "--max-staleness", str(staleness), "--seed", str(args.seed), "--run-dir", str(run_dir), "--no-progress", *extra,
    ]
    shutil.rmtree(run_dir, ignore_errors=True)  # only the run directories this script names
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fidelity: {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"  {run_dir.name}: {time.perf_counter() - started:.1f}s", flush=True)


def consumed_staleness(run_dir: Path) -> list[int]:
    """Each consumed rollout's staleness, from the run's log: the version it was consumed
    at less the version it was first submitted under (the simulator's definition)."""
    from engine.core.events import Consumed, Submitted, Version
    from engine.log import EventLog

    head: dict[str, int] = {}
    version = 0
    staleness: list[int] = []
    with EventLog(run_dir / "events.sqlite", mode="r") as log:
        for event in log.events():
            if isinstance(event, Submitted):
                head.setdefault(event.rollout, event.version)
            elif isinstance(event, Version):
                version = event.version
            elif isinstance(event, Consumed):
                staleness.extend(version - head.get(r, version) for r in event.rollouts)
    return staleness


def measured(run_dir: Path) -> dict[str, float]:
    """The run's figures, from its metrics.jsonl and its log."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    wall = rows[-1]["wall_s"]
    staleness = sorted(consumed_staleness(run_dir))
    last = rows[-1]
    return {
        "prefill_passes_per_update": last.get("prefills", 0) / max(1, len(rows)),
        "tokens_per_s": sum(r["trained_tokens"] for r in rows) / wall,
        "staleness_mean": sum(staleness) / max(1, len(staleness)),
        "staleness_p99": float(staleness[min(len(staleness) - 1, math.ceil(0.99 * len(staleness)) - 1)]) if staleness else 0.0,
        "trainer_idle": sum(r["wait_s"] for r in rows) / wall,
        # tokens/s split into its two factors: the cost model's (seconds) and the workload's (tokens)
        "s_per_update": wall / len(rows),
        "tokens_per_update": sum(r["trained_tokens"] for r in rows) / len(rows),
    }


def summary(run_dir: Path) -> dict[str, Any]:
    """A run's figures for the record: its measured ones, the mean parts of its updates
    (as calibration splits them) and its completion lengths."""
    from sim.calibrate import _sample_lengths
    from sim.calibrate_real import StepSums, updates

    config = json.loads((run_dir / "run.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    size, group = config["batch_size"], config["group_size"]
    parts = updates(rows, (config["max_concurrent"] or size) * group, size * group, recompute_in_step=False)
    lengths = sorted(_sample_lengths(run_dir / "samples.sqlite"))
    mean = lambda name: sum(getattr(u, name) for u in parts) / max(1, len(parts))  # noqa: E731
    return {
        "config": {k: config[k] for k in ("batch_size", "group_size", "max_concurrent", "max_staleness", "policy", "steps")},
        "measured": measured(run_dir),
        "wall_s": rows[-1]["wall_s"],
        "updates": len(rows),
        # sync and checkpoint are None for a run whose metrics lines did not time them
        "per_update_s": {name: mean(f"{name}_s") for name in ("collect", "step", "recompute", "overhead")}
        | {name: mean(f"{name}_s") if parts and getattr(parts[0], f"{name}_s") is not None else None for name in ("sync", "checkpoint")},
        "decode_steps_per_update": mean("steps"),
        # a decode step's seconds on its busy slots within this run (the engine's sums over its steps)
        "decode_step_line": dict(zip(("s_at_no_busy", "s_per_busy"), StepSums.of(parts).line()))
        if parts and all(u.decode_busy_s is not None for u in parts) else None,
        "mean_batch": sum(u.tokens for u in parts) / max(1.0, sum(u.steps for u in parts)),
        "completion_tokens": {"samples": len(lengths), "mean": sum(lengths) / max(1, len(lengths)),
                              "p50": lengths[len(lengths) // 2] if lengths else 0, "p99": lengths[int(0.99 * (len(lengths) - 1))] if lengths else 0,
                              "max": lengths[-1] if lengths else 0},
    }


def predict(scenario_path: Path, staleness: int, batch: int, steps: int, args: argparse.Namespace) -> dict[str, float]:
    """The simulator's figures for a run, each the mean over ``--sim-seeds`` seeds: a
    run of a few thousand rollouts draws heavy-tailed lengths, and one seed's trained
    tokens per sample ranged over 6% on the H200 study's scenario."""
    from sim.config import load
    from sim.simulator import simulate

    runs = [predict_one(simulate(load(scenario_path, overrides(staleness, batch, steps, args.concurrency, args.group_size, args.seed + k))))
            for k in range(args.sim_seeds)]
    return {name: sum(r[name] for r in runs) / len(runs) for name in runs[0]}


def overrides(staleness: int, batch: int, steps: int, concurrency: int, group: int, seed: int) -> list[str]:
    """The calibrated scenario's settings for a study's run: its bound, batch, rollouts in
    flight and slots (``concurrency`` batches of ``group`` samples), ``steps`` updates' rollouts, ``seed``."""
    return [f"ledger.max_staleness={staleness}", f"ledger.batch_size={batch}", f"ledger.max_concurrent={concurrency * batch}",
            f"generation.slots={concurrency * batch * group}", f"run.rollouts={steps * batch}", f"run.seed={seed}"]


def predict_one(s: Any) -> dict[str, float]:
    return {
        "prefill_passes_per_update": s.prefill_passes / max(1, s.versions),
        "tokens_per_s": s.trained_tokens_per_s,
        "staleness_mean": s.staleness_mean,
        "staleness_p99": float(s.staleness_p99),
        "trainer_idle": s.trainer_idle_s / s.sim_time_s if s.sim_time_s > 0 else 0.0,
        "s_per_update": s.sim_time_s / max(1, s.versions),
        "tokens_per_update": s.trained_tokens_per_s * s.sim_time_s / max(1, s.versions),
    }


def error(predicted: float, actual: float) -> float:
    if actual == 0:
        return 0.0 if predicted == 0 else math.inf
    return 100.0 * (predicted - actual) / abs(actual)


def against_controls(predictions: dict[str, Any], summaries: dict[str, Any]) -> dict[str, Any]:
    """Each predicted setting's tokens/s as a ratio to the calibration setting, predicted
    against measured within a round: from the second round on, every round runs the
    calibration setting again (``calibration-rK``), and the setting's run of that round
    (``NAME-rK``) is divided by it, so a machine that speeds up or slows down between
    rounds moves both.  The error is the predicted ratio over the mean of the rounds'
    ratios.  Settings without a round beside a control are left out."""
    calibration = next((name for name in predictions if name.endswith("-calibration")), None)
    if calibration is None:
        return {}
    predicted_base = predictions[calibration]["tokens_per_s"]
    rows: dict[str, Any] = {}
    for name, predicted in predictions.items():
        if name == calibration:
            continue
        ratios = []
        for key, run in summaries.items():
            head, _, round_ = key.rpartition("-r")
            control = summaries.get(f"calibration-r{round_}")
            if head == name and round_.isdigit() and control is not None:
                ratios.append(run["measured"]["tokens_per_s"] / control["measured"]["tokens_per_s"])
        if ratios:
            mean = sum(ratios) / len(ratios)
            ratio = predicted["tokens_per_s"] / predicted_base
            rows[name] = {"predicted_ratio": ratio, "measured_ratios": ratios, "measured_ratio": mean,
                          "error_pct": error(ratio, mean)}
    return rows


def print_against_controls(rows: dict[str, Any]) -> None:
    if not rows:
        return
    print("tokens/s as a ratio to the calibration setting, predicted / measured against the control of the same round:")
    for name, row in rows.items():
        rounds = ", ".join(f"{r:.3f}" for r in row["measured_ratios"])
        print(f"  {name}: {row['predicted_ratio']:.3f} / {row['measured_ratio']:.3f} ({row['error_pct']:+.1f}%; rounds {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, default=None, help="the study's folder (required, but with --against-controls)")
    parser.add_argument("--task", default="reverse")
    parser.add_argument("--model", "--model-size", dest="model_size", default="small",
                        help="train's --model: a built-in size (tiny, small, base) or a local Hugging Face model directory")
    parser.add_argument("--train-flags", default="", metavar="FLAGS",
                        help="more flags for every run's train command, as one string (e.g. \"--max-new-tokens 48 --keep-cache\")")
    parser.add_argument("--steps", type=int, default=150, help="updates per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--other-batch-size", type=int, default=32, help="batch size of the extra run (at staleness 2)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4, help="max_concurrent = concurrency * batch size")
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--calibrate-at", type=int, default=2)
    parser.add_argument("--probe-batch-size", type=int, default=8, help="batch size of the second calibration run (0: calibrate on one run)")
    parser.add_argument("--calibration-runs", type=int, default=1, metavar="N",
                        help="run the calibration setting N times back to back (calibration, calibration-2, ...) and "
                             "calibrate on all of them: one run's speed is one draw of the machine's")
    parser.add_argument("--probe-concurrency", type=int, default=2,
                        help="the probe's max_concurrent = this * its batch size; below calibrate-at + 1, its in-flight limit binds "
                             "before its capacity, so starts arrive between updates and its updates have several prefill passes")
    parser.add_argument("--probe-steps", type=int, default=None, help="updates of the probe run (default: half of --steps)")
    parser.add_argument("--lengths", choices=("empirical", "lognormal"), default="empirical", help="calibrated response lengths")
    parser.add_argument("--staleness", default="0,4,8", help="bounds to predict and run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each predicted setting this many times, in rounds, and measure it by their mean (the spread is printed)")
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                        help="every run writes its checkpoint every N updates (train's --checkpoint-every; default: train's own)")
    parser.add_argument("--sim-seeds", type=int, default=8, help="simulations per prediction (seeds --seed ...), their figures averaged")
    parser.add_argument("--fit-on", default=None, metavar="RUN[,RUN...]",
                        help="with --reanalyse: calibrate on these runs of DIR (e.g. calibration,calibration-r2) instead of "
                             "the calibration runs and the probe")
    parser.add_argument("--reanalyse", type=Path, default=None, metavar="DIR",
                        help="train nothing: calibrate on and predict again the runs of an earlier study in DIR (with the flags it ran with)")
    parser.add_argument("--against-controls", type=Path, default=None, metavar="DIR",
                        help="train, fit and write nothing: print an earlier study's predicted ratios to its calibration setting "
                             "against each round's measured ratio to that round's control (DIR's predictions.json and summaries.json)")
    args = parser.parse_args()
    if args.out is None and args.against_controls is None:
        parser.error("the following arguments are required: --out")
    if args.against_controls is not None:
        study: Path = args.against_controls
        try:
            predictions = json.loads((study / "predictions.json").read_text())
            summaries = json.loads((study / "summaries.json").read_text())
        except (OSError, ValueError) as failure:
            sys.exit(f"fidelity: --against-controls {study}: {failure}")
        rows = against_controls(predictions, summaries)
        if not rows:
            sys.exit(f"fidelity: --against-controls {study}: no predicted run shares a round with a control "
                     "(a study with --repeats 2 or more has them)")
        print_against_controls(rows)
        return
    for flag in ("repeats", "sim_seeds", "checkpoint_every", "calibration_runs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.fit_on is not None and args.reanalyse is None:
        parser.error("--fit-on chooses the runs a reanalysis fits (--reanalyse DIR); a new study fits its calibration runs")
    out: Path = args.out
    runs: Path = args.reanalyse or out
    calibrations = ["calibration"] + [f"calibration-{i}" for i in range(2, args.calibration_runs + 1)]
    if args.reanalyse is not None:  # what it reads, before anything is written
        if out.resolve() == runs.resolve():
            sys.exit("fidelity: --out must differ from --reanalyse (the earlier study's files are not changed)")
        if not (runs / "calibration" / "metrics.jsonl").is_file():
            sys.exit(f"fidelity: {runs}: no calibration/metrics.jsonl, not a fidelity study's output")
        missing = [name for name in calibrations[1:] if not (runs / name / "metrics.jsonl").is_file()]
        if missing:
            sys.exit(f"fidelity: {runs}: no {', '.join(missing)} (--calibration-runs {args.calibration_runs})")
        fit_on = args.fit_on.split(",") if args.fit_on is not None else []
        missing = [name for name in fit_on if not (runs / name / "metrics.jsonl").is_file()]
        if missing:
            sys.exit(f"fidelity: --fit-on: no run {', '.join(missing)} in {runs}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    init = ["--init", str(out / "warmup" / "final.safetensors"), "--warmup-steps", "0"]
    if args.checkpoint_every is not None:
        init += ["--checkpoint-every", str(args.checkpoint_every)]
    probe = runs / f"probe-batch{args.probe_batch_size}"
    if args.reanalyse is None:
        print("warm-up", flush=True)
        train(args, out / "warmup", 0, args.batch_size, 1, ["--warmup-steps", str(args.warmup_steps)])
        print(f"calibration run{'s' if args.calibration_runs > 1 else ''} at max_staleness {args.calibrate_at}", flush=True)
        for name in calibrations:
            train(args, out / name, args.calibrate_at, args.batch_size, args.steps, init)
        if args.probe_batch_size:
            print(f"probe run at max_staleness {args.calibrate_at}, batch {args.probe_batch_size}", flush=True)
            train(args, probe, args.calibrate_at, args.probe_batch_size, args.probe_steps or max(4, args.steps // 2), init,
                  args.probe_concurrency)
    logs = [str(runs / name) for name in calibrations] + ([str(probe)] if args.probe_batch_size else [])
    if args.fit_on is not None:
        logs = [str(runs / name) for name in args.fit_on.split(",")]
    scenario = out / "calibrated.toml"
    command = [sys.executable, "-m", "engine.cli", "calibrate", *logs, "-o", str(scenario), "--lengths", args.lengths]
    (out / "commands.txt").write_text(" ".join(["python", *sys.argv]) + "\n" + " ".join(["rollout-ledger", *command[3:]]) + "\n")
    fit = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if fit.returncode != 0:
        sys.exit(f"fidelity: calibrate failed: {fit.stderr}")
    print(fit.stdout, flush=True)
    (out / "calibration_fit.txt").write_text(fit.stdout)

    plan = [(f"staleness{k}", int(k), args.batch_size) for k in args.staleness.split(",")]
    plan.append((f"staleness{args.calibrate_at}-batch{args.other_batch_size}", args.calibrate_at, args.other_batch_size))
    plan.insert(0, (f"staleness{args.calibrate_at}-calibration", args.calibrate_at, args.batch_size))
    predictions = {name: predict(scenario, k, batch, args.steps, args) for name, k, batch in plan}
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1))  # before any predicted run starts
    print(f"predictions written to {out / 'predictions.json'}" + (" (after the runs: a reanalysis)" if args.reanalyse else ""), flush=True)

    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": {}}
    summaries: dict[str, Any] = {}
    measured_runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in plan}
    controls: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):  # in rounds: a slow spell of the machine falls on several settings
        for name, k, batch in plan:
            calibration = name.endswith("-calibration")
            run_dir = runs / (("calibration" if calibration else name) + ("" if repeat == 1 else f"-r{repeat}"))
            if args.reanalyse is not None:
                if not (run_dir / "metrics.jsonl").is_file():
                    if repeat == 1:
                        print(f"  {name}: not in {runs}, left out", flush=True)
                    continue
            elif not (calibration and repeat == 1):
                train(args, run_dir, k, batch, args.steps, init)
            key = name if repeat == 1 else run_dir.name
            summaries[key] = summary(run_dir)
            if calibration and repeat > 1:  # a control: the fit's own setting again, how far the machine drifted
                controls.append({"run": run_dir.name, "tokens_per_s": summaries[key]["measured"]["tokens_per_s"],
                                 "s_per_update": summaries[key]["measured"]["s_per_update"]})
                continue
            measured_runs[name].append(summaries[key]["measured"])
            if calibration and repeat == 1 and len(calibrations) > 1:  # the fit's other runs: the row is their mean
                for other in calibrations[1:]:
                    summaries[other] = summary(runs / other)
                    measured_runs[name].append(summaries[other]["measured"])
    for name, found in measured_runs.items():
        if found:  # a setting run several times is measured by the mean of its runs
            mean = {m: sum(r[m] for r in found) / len(found) for m in found[0]}
            results["runs"][name] = {"predicted": predictions[name], "measured": mean} | ({"repeats": found} if len(found) > 1 else {})
    if controls:
        base = results["runs"][plan[0][0]]["measured"]  # the calibration run (the mean of several)
        for control in controls:
            control["tokens_per_s_change_pct"] = error(control["tokens_per_s"], base["tokens_per_s"])
            control["s_per_update_change_pct"] = error(control["s_per_update"], base["s_per_update"])
        results["controls"] = controls
    results["against_controls"] = against_controls(predictions, summaries)
    if args.probe_batch_size:
        summaries[probe.name] = summary(probe)
    (out / "summaries.json").write_text(json.dumps(summaries, indent=1))

    header = "| run | " + " | ".join(f"{m} pred | meas | err %" for m in METRICS) + " |"
    lines = [header, "|" + "---|" * (1 + 3 * len(METRICS))]
    worst = 0.0
    for name, row in results["runs"].items():
        cells = []
        for m in METRICS:
            p, a = row["predicted"][m], row["measured"][m]
            e = error(p, a)
            if not name.endswith("-calibration") and m in ("tokens_per_s", "staleness_mean", "trainer_idle"):
                worst = max(worst, abs(e))
            cells.append(f"{p:.3g} | {a:.3g} | {e:+.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    results["worst_error_pct"] = worst
    if args.reanalyse is not None:
        results["reanalysis_of"] = str(runs)
        table = f"Reanalysis of {runs}: the current model calibrated and predicting AFTER these runs.\n\n" + table
    results["total_s"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table + "\n")
    print(table)
    passes = "  ".join(f"{name} {row['predicted']['prefill_passes_per_update']:.2f}/{row['measured']['prefill_passes_per_update']:.2f}"
                       for name, row in results["runs"].items())
    print(f"prefill passes per update, predicted/measured: {passes}")
    factors = "\n".join(f"  {name}: seconds {row['predicted']['s_per_update']:.4f}/{row['measured']['s_per_update']:.4f} "
                        f"({error(row['predicted']['s_per_update'], row['measured']['s_per_update']):+.1f}%), "
                        f"trained tokens {row['predicted']['tokens_per_update']:.1f}/{row['measured']['tokens_per_update']:.1f} "
                        f"({error(row['predicted']['tokens_per_update'], row['measured']['tokens_per_update']):+.1f}%)"
                        for name, row in results["runs"].items())
    print(f"per update, predicted/measured (tokens/s is tokens over seconds):\n{factors}")
    spread = "\n".join(f"  {name}: " + ", ".join(f"{r['tokens_per_s']:.4g}" for r in row["repeats"])
                       for name, row in results["runs"].items() if "repeats" in row)
    if spread:
        print(f"tokens/s of each repeat (the table has their mean):\n{spread}")
    for control in controls:
        print(f"control {control['run']} (the calibration setting again, not predicted): {control['tokens_per_s']:.4g} tokens/s, "
              f"{control['tokens_per_s_change_pct']:+.1f}% from the calibration run; seconds per update "
              f"{control['s_per_update_change_pct']:+.1f}%")
    print_against_controls(results["against_controls"])
    print(f"worst |error| (tokens/s, mean staleness, idle; predicted runs): {worst:.1f}%  total {results['total_s']:.0f}s")


if __name__ == "__main__":
    main()
