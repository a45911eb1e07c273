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
   ``predictions.json`` *before* any of those runs starts, each the mean of its
   simulations, whose least and greatest figures go to ``predicted_ranges.json``;
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

``--profile-rows N,N,...`` times the trainer's update alone at those batch sizes (in
samples) after the calibration runs (``rollout-ledger profile-step`` on the first; its
``step_profile.csv`` in the study's folder) and calibrates with ``--step-profile``: the
runs' own steps saw one or two batch shapes, and on an H100 the ``large`` model's step
took the same 85-90 ms at 32 and 64 samples (the host's launches) but 120 ms at 128,
which a line through the runs' steps put at 84 ms (round 18).

``--seed-per-round`` gives calibration run K and the runs of round K the seed ``--seed``
+ K - 1.  A run's answers are its own RL trajectory's: on an H100 the calibration
setting's answers averaged 28.0 tokens and the other settings' 25.2-25.9 (round 13),
on an H200 25.4-25.7 and 26.1-27.0 (round 12), so a study of one seed measures one
trajectory of each setting and fits the lengths of one.  With it, the fitted lengths
pool as many trajectories as calibration runs, a setting's mean as many as rounds, and
round K's control is calibration run K again, seed and all, where that run exists
(``same_seed_as``: the two differ by the machine alone).

Before each run the machine is probed (``host.json`` in the run's folder, ``host`` in
``summaries.json``): microseconds per tiny tensor operation (on a GPU, a kernel launch)
and per 1,000 Python loop turns, which is what a small model's decode step is made of,
and, from ``/proc/stat``, the CPU that other processes used beside the run on its own
cores and on the machine, and the time stolen from it.

After the runs each one is simulated again with its own decode step (``own_step`` in
``results.json``; ``--own-step DIR`` for an earlier study): the calibrated step's fixed
part moved by how far the run's step stood from the fitted runs'.  On one H100 the
decode step of a small model had a fast and a slow mode (``benchmarks/step_spells.py``)
and a run's mean step was its share of the slow one, which moved between runs minutes
apart; what remains of an error with the run's own step is the model's.

``--resume`` goes on with the study in ``--out``: its warm-up, its complete runs and its
``predictions.json`` (read, never rewritten) are kept and what is missing runs, so a
study can take more rounds (a larger ``--repeats``) than one sitting allows.

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
``DIR``), with the study's own settings (its steps, batch sizes, bounds, seeds, from its
``results.json``) wherever the command line leaves a flag at its default.  Those predictions come *after* the runs, so they show how the model as it is
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
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from sim.replay import FIGURES as METRICS  # noqa: E402
from sim.replay import consumed_staleness, measured, metrics_lines, replay  # noqa: E402,F401 - the study's figures, as calibrate's
from sim.replay import error_pct as error  # noqa: E402
from sim.replay import simulated as predict_one  # noqa: E402


def train(args: argparse.Namespace, run_dir: Path, staleness: int, batch: int, steps: int, extra: list[str],
          concurrency: int | None = None, seed: int | None = None) -> None:
    """One ``train`` run into ``run_dir`` (replaced), the machine's state beside it in
    ``host.json``: the probe just before the run and the others' CPU while it ran.
    With ``--resume``, a run whose log is already complete is kept as it is."""
    if args.resume and complete(run_dir, steps):
        print(f"  {run_dir.name}: kept (complete)", flush=True)
        return
    command = [
        sys.executable, "-m", "engine.cli", "train", "--task", args.task, "--model", args.model_size, *shlex.split(args.train_flags),
        "--device", args.device, "--steps", str(steps), "--batch-size", str(batch),
        "--group-size", str(args.group_size), "--max-concurrent", str((concurrency or args.concurrency) * batch),
        "--max-staleness", str(staleness), "--seed", str(args.seed if seed is None else seed), "--run-dir", str(run_dir),
        "--no-progress", *extra,
    ]
    shutil.rmtree(run_dir, ignore_errors=True)  # only the run directories this script names
    probe = host_probe(args.device)
    before = cpu_use()
    traces = {name: run_dir.with_name(f".{run_dir.name}.{name}.part") for name in ("gpu_trace.csv", "host_trace.csv")}
    samplers = {"gpu_trace.csv": gpu_sampler(args.device, traces["gpu_trace.csv"]),
                "host_trace.csv": host_sampler(traces["host_trace.csv"])}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    finally:
        for running in samplers.values():
            if running is not None:
                running.terminate()
                running.wait()
    elapsed = time.perf_counter() - started
    for name, part in traces.items():
        if samplers[name] is not None and done.returncode == 0 and run_dir.is_dir():
            part.replace(run_dir / name)  # (a rename: whole or not at all)
        part.unlink(missing_ok=True)
    if done.returncode != 0:
        sys.exit(f"fidelity: {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    host = probe | others_cpu(before, cpu_use(), elapsed) | {"started": time.time() - elapsed}
    from engine.log.files import write_atomic

    write_atomic(run_dir / "host.json", json.dumps(host, indent=1))  # the mark of a finished run (``complete``)
    print(f"  {run_dir.name}: {elapsed:.1f}s  (launch {host['launch_us']:.1f} us, python {host['python_us']:.1f} us"
          + (f", others' CPU on its cores {host['others_on_cores']:.2f}" if host.get("others_on_cores") is not None else "") + ")",
          flush=True)


#: What the GPU sampler records beside each run, every half second (nvidia-smi's names).
GPU_FIELDS = ("timestamp", "clocks.sm", "clocks.mem", "utilization.gpu", "power.draw", "temperature.gpu", "pstate")


def spare_cores() -> tuple[set[int], set[int]]:
    """The cores this process may not run on (where its runs are bound with ``taskset``),
    split in two: one for the host sampler, the rest for ``nvidia-smi``; both empty where
    the process may run anywhere (the samplers then share the run's cores)."""
    import os

    spare = sorted(set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0))
    if not spare:
        return set(), set()
    return {spare[-1]}, set(spare[:-1]) or {spare[-1]}


def sampler(command: list[str], trace: Path, cores: set[int]) -> subprocess.Popen[bytes] | None:
    """``command`` started on ``cores`` (anywhere where empty), its output into ``trace``;
    None where it cannot start: a trace is a help, not the study, which goes on without one."""
    import os

    try:
        with trace.open("wb") as out:  # (the child keeps its own handle)
            return subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL,
                                    preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    except OSError:
        return None


def gpu_sampler(device: str, trace: Path) -> subprocess.Popen[bytes] | None:
    """``nvidia-smi`` sampling the GPU's clocks, load and power every half second into
    ``trace`` (CSV, :data:`GPU_FIELDS`), on cores the run does not use where there are
    any; None on a CPU or without ``nvidia-smi``.  It shows whether a run's slow decode
    steps are the GPU's clocks or its host (``benchmarks/step_spells.py``)."""
    found = shutil.which("nvidia-smi")
    if device != "cuda" or found is None:
        return None
    return sampler([found, f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader,nounits", "-lms", "500"],
                   trace, spare_cores()[1])


def host_sampler(trace: Path) -> subprocess.Popen[bytes] | None:
    """``benchmarks/host_trace.py`` on a core the run does not use (where there is one),
    tracing that core's speed and the run's cores' load and clock every half second into
    ``trace``; a run whose decode steps slow down while the spare core slows too ran on a
    slower machine, not a slower model."""
    import os

    watched = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    command = [sys.executable, str(ROOT / "benchmarks" / "host_trace.py"), "trace", "--cores", watched, "--every", "0.5", "-"]
    return sampler(command, trace, spare_cores()[0])


def complete(run_dir: Path, steps: int) -> bool:
    """Whether ``run_dir`` holds a finished run of ``steps`` updates (its last metrics line
    and the ``host.json`` written after it)."""
    try:
        return len(metrics_lines(run_dir)) >= steps and (run_dir / "host.json").is_file()
    except (OSError, ValueError):  # no log, or one cut off mid-line: not finished
        return False


def host_probe(device: str) -> dict[str, float]:
    """How fast the machine is right now at what a small model's decode step is made of:
    microseconds per tiny tensor operation (on a GPU, one kernel launch and its Python
    around it) and per 1,000 turns of a plain Python loop, each the median of five
    timings.  The study's decode steps are mostly launches, so a run whose probe is
    slower than the calibration run's ran on a slower machine, whatever the model says."""
    import statistics

    import torch

    x = torch.zeros(1, device=device)

    def launches(n: int = 1000) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(n):
            x.add_(1)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / n * 1e6

    def turns(n: int = 100_000) -> float:
        started = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        return (time.perf_counter() - started) / n * 1e9  # us per 1,000 turns

    launches()  # the first launches set up the kernel
    return {"launch_us": statistics.median(launches() for _ in range(5)), "python_us": statistics.median(turns() for _ in range(5))}


def cpu_use() -> dict[str, Any]:
    """The CPU seconds this machine has spent so far (``/proc/stat``, busy and stolen), on
    all its cores and on the cores this process may run on, and what this process's
    finished children used; empty where there is no ``/proc/stat``."""
    import os
    import resource

    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    mine = {f"cpu{c}" for c in os.sched_getaffinity(0)}
    busy: dict[str, float] = {}
    steal = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu"):
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy[name] = (sum(values) - values[3] - values[4]) / tick
        if name == "cpu":
            steal = values[7] / tick
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"all": busy.get("cpu", 0.0), "cores": sum(v for k, v in busy.items() if k in mine), "steal": steal,
            "children": children.ru_utime + children.ru_stime}


def others_cpu(before: dict[str, Any], after: dict[str, Any], elapsed: float) -> dict[str, float | None]:
    """What ran beside a run, in cores busy on average over it: on the machine and on the
    run's own cores, less the run's own CPU time (the run's own is counted on its cores
    only, where it is bound; unbound, the second figure is the machine's), and the time
    the hypervisor stole."""
    if not before or not after or elapsed <= 0:
        return {"others_on_cores": None, "others_on_host": None, "steal": None}
    own = after["children"] - before["children"]
    return {"others_on_cores": max(0.0, (after["cores"] - before["cores"] - own) / elapsed),
            "others_on_host": max(0.0, (after["all"] - before["all"] - own) / elapsed),
            "steal": (after["steal"] - before["steal"]) / elapsed}


#: the spans of a run's policy versions that its answers' lengths are averaged over
SPANS = 6


def answers_by_version(stored: list[tuple[str, list[dict[str, Any]]]], steps: int) -> list[dict[str, Any]] | None:
    """The mean completion tokens of a run's ``stored`` samples (its sample store's rows)
    by the policy version that started them, in ``SPANS`` equal spans of its ``steps``
    versions: how its policy's answers moved as it learned (each setting learns its own;
    round 19). The store holds the samples the run trained on, so the last span leaves
    out the long answers still in flight at the end. None for a run whose samples do not
    record their versions."""
    spans: list[list[int]] = [[] for _ in range(SPANS)]
    for _, samples in stored:
        for sample in samples:
            if not sample.get("versions"):
                return None
            spans[min(SPANS - 1, sample["versions"][0] * SPANS // max(1, steps))].append(len(sample["completion"]))
    return [{"versions": [k * steps // SPANS, (k + 1) * steps // SPANS - 1], "samples": len(lengths),
             "mean": sum(lengths) / len(lengths) if lengths else None} for k, lengths in enumerate(spans)]


def summary(run_dir: Path) -> dict[str, Any]:
    """A run's figures for the record: its measured ones, the mean parts of its updates
    (as calibration splits them) and its completion lengths, overall and by version."""
    from sim.calibrate import _stored
    from sim.calibrate_real import StepSums, updates

    config = json.loads((run_dir / "run.json").read_text())
    rows = metrics_lines(run_dir)
    size, group = config["batch_size"], config["group_size"]
    parts = updates(rows, (config["max_concurrent"] or size) * group, size * group, recompute_in_step=False)
    stored = _stored(run_dir / "samples.sqlite")  # read once: the lengths overall and by version
    lengths = sorted(len(sample["completion"]) for _, samples in stored for sample in samples)
    host = json.loads((run_dir / "host.json").read_text()) if (run_dir / "host.json").is_file() else None
    mean = lambda name: sum(getattr(u, name) for u in parts) / max(1, len(parts))  # noqa: E731
    return {
        "config": {k: config[k] for k in ("batch_size", "group_size", "max_concurrent", "max_staleness", "policy", "steps", "seed")
                   if k in config},
        # the machine just before the run and beside it (train's host.json; None for a run before it)
        "host": host,
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
        "answers_by_version": answers_by_version(stored, len(rows)),
    }


def predict(scenario_path: Path, staleness: int, batch: int, steps: int, args: argparse.Namespace) -> dict[str, float]:
    """The simulator's figures for a run, each the mean over ``--sim-seeds`` seeds: a
    run of a few thousand rollouts draws heavy-tailed lengths, and one seed's trained
    tokens per sample ranged over 6% on the H200 study's scenario."""
    return predict_with(scenario_path, staleness, batch, steps, args, [])


def predict_with(scenario_path: Path, staleness: int, batch: int, steps: int, args: argparse.Namespace,
                 more: list[str]) -> dict[str, float]:
    """:func:`predict` with ``more`` overrides of the calibrated scenario."""
    return mean_of(predict_runs(scenario_path, staleness, batch, steps, args, more))


def mean_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's mean over a prediction's simulations."""
    return {name: sum(r[name] for r in runs) / len(runs) for name in runs[0]}


def predict_runs(scenario_path: Path, staleness: int, batch: int, steps: int, args: argparse.Namespace,
                 more: list[str]) -> list[dict[str, float]]:
    """Each simulation's figures for a run. A scenario that replays its calibration runs'
    courses (``workload.replay``) is simulated over a multiple of their number of seeds,
    so that each run's course counts alike."""
    from sim.config import load
    from sim.simulator import simulate
    from sim.workload import replay_runs

    scenario = load(scenario_path, more)
    workload = scenario.workload
    courses = len(replay_runs(workload.response_len)) if workload.replay else 1
    seeds = courses * -(-args.sim_seeds // courses)
    return [predict_one(simulate(scenario.with_overrides(overrides(staleness, batch, steps, args.concurrency, args.group_size,
                                                                   args.seed + k))))
            for k in range(seeds)]


def ranges(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """The least and greatest of each figure over a prediction's simulations."""
    return {"min": {name: min(r[name] for r in runs) for name in runs[0]},
            "max": {name: max(r[name] for r in runs) for name in runs[0]}}


def print_ranges(predicted: dict[str, Any], runs: dict[str, Any]) -> None:
    """Each predicted setting's range over its simulations (the calibration runs' courses
    of answers) against each of its runs: how many came inside it."""
    lines = []
    for name, spread in predicted.items():
        row = runs.get(name)
        if row is None:
            continue
        found = row.get("repeats", [row["measured"]])
        cells = []
        for m in METRICS:
            low, high = spread["min"][m], spread["max"][m]
            inside = sum(low <= r[m] <= high for r in found)
            cells.append(f"{m} {low:.3g}-{high:.3g} [{', '.join(f'{r[m]:.3g}' for r in found)}: {inside}/{len(found)} inside]")
        lines.append(f"  {name}: " + "; ".join(cells))
    if lines:
        print("each setting's range over its simulations, predicted [each run, measured]:\n" + "\n".join(lines))


def overrides(staleness: int, batch: int, steps: int, concurrency: int, group: int, seed: int) -> list[str]:
    """The calibrated scenario's settings for a study's run: its bound, batch, rollouts in
    flight and slots (``concurrency`` batches of ``group`` samples), ``steps`` updates' rollouts, ``seed``."""
    return [f"ledger.max_staleness={staleness}", f"ledger.batch_size={batch}", f"ledger.max_concurrent={concurrency * batch}",
            f"generation.slots={concurrency * batch * group}", f"run.rollouts={steps * batch}", f"run.seed={seed}"]


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


def setting_of(run: str, plan: list[str]) -> str | None:
    """The predicted setting a study's run belongs to: ``NAME`` and ``NAME-rK`` are
    NAME's; the calibration runs (``calibration``, ``calibration-2``, ...) and the
    controls (``calibration-rK``) are the calibration setting's; a probe is none."""
    calibration = next((name for name in plan if name.endswith("-calibration")), None)
    head, _, round_ = run.rpartition("-r")
    name = head if round_.isdigit() else run
    if name == "calibration" or (name.startswith("calibration-") and name[len("calibration-"):].isdigit()):
        return calibration
    return name if name in plan else None


def summary_keys(runs: list[str], plan: list[str]) -> list[str]:
    """The keys of ``runs`` (run directories' names) in a study's summaries: the first
    calibration run's summary is kept under its setting's name, the others under their own."""
    calibration = next((name for name in plan if name.endswith("-calibration")), None)
    return [calibration if run == "calibration" and calibration is not None else run for run in runs]


def step_at_no_busy(summary_: dict[str, Any], per_busy: float) -> float | None:
    """A run's mean decode step less ``per_busy`` for each busy row (from its summary's
    line of a step's seconds on its busy rows, which passes through its mean step)."""
    line = summary_.get("decode_step_line")
    if not line:
        return None
    return float(line["s_at_no_busy"] + (line["s_per_busy"] - per_busy) * summary_["mean_batch"])


def own_step(scenario_path: Path, summaries: dict[str, Any], fitted: list[str], plan: list[tuple[str, int, int]],
             args: argparse.Namespace) -> dict[str, Any]:
    """After the runs, how much of each setting's tokens/s error is the machine's speed at
    its runs: every run simulated again with the calibrated scenario but its own decode
    step, the fitted step's fixed part moved by how far the run's step (at no busy row,
    the fit's cost per busy row taken out) stood from the fitted runs' (weighted by
    their steps).  A decode step of a small model on a GPU is mostly kernel launches and
    Python, and on one H100 the calibration setting's step took 11.2 to 17.4 ms from
    one run to another.  Not a prediction: each run's step is read from the run."""
    from sim.config import load

    scenario = load(scenario_path)
    per_busy, base = scenario.generation.step_per_seq_s, scenario.generation.step_base_s
    names = [name for name, _, _ in plan]
    weighted = [(step_at_no_busy(summaries[name], per_busy), summaries[name]["decode_steps_per_update"] * summaries[name]["updates"])
                for name in summary_keys(fitted, names) if name in summaries]
    if not weighted or any(step is None for step, _ in weighted):
        return {}
    fitted_step = sum(step * w for step, w in weighted if step is not None) / max(1e-12, sum(w for _, w in weighted))
    shapes = {name: (k, batch) for name, k, batch in plan}
    rows: dict[str, Any] = {}
    for run, found in summaries.items():
        setting, step = setting_of(run, names), step_at_no_busy(found, per_busy)
        if setting is None or step is None:
            continue
        k, batch = shapes[setting]
        moved = max(0.0, base + step - fitted_step)
        # (the predictions' own simulation seeds: a run at the fitted runs' step is its prediction again)
        with_step = predict_with(scenario_path, k, batch, args.steps, args, [f"generation.step_base_s={moved!r}"])
        row = rows.setdefault(setting, {"runs": {}})
        row["runs"][run] = {"step_shift_s": step - fitted_step, "predicted_tokens_per_s": with_step["tokens_per_s"],
                            "measured_tokens_per_s": found["measured"]["tokens_per_s"],
                            "error_pct": error(with_step["tokens_per_s"], found["measured"]["tokens_per_s"])}
    for row in rows.values():
        runs = row["runs"].values()
        row["predicted_tokens_per_s"] = sum(r["predicted_tokens_per_s"] for r in runs) / len(runs)
        row["measured_tokens_per_s"] = sum(r["measured_tokens_per_s"] for r in runs) / len(runs)
        row["error_pct"] = error(row["predicted_tokens_per_s"], row["measured_tokens_per_s"])
    return rows


def flat_step(scenario_path: Path, summaries: dict[str, Any], fitted: list[str], plan: list[tuple[str, int, int]],
              args: argparse.Namespace) -> dict[str, Any]:
    """After the runs, what the calibration's cost per busy row did to each setting's
    prediction: every setting simulated again with a decode step that is the fitted
    runs' mean step (weighted by their steps) whatever its busy rows.  On an H100 the
    runs' mean steps were flat from 75 to 570 busy rows (round 16) while the slope
    within the calibration runs read 15 microseconds a row; this tells how much of a
    setting's error that slope carries.  Not a prediction: it is read after the runs."""
    names = [name for name, _, _ in plan]
    weighted = [(summaries[name]["decode_step_line"], summaries[name]["decode_steps_per_update"] * summaries[name]["updates"],
                 summaries[name]["mean_batch"]) for name in summary_keys(fitted, names) if summaries.get(name, {}).get("decode_step_line")]
    if not weighted:
        return {}
    flat = sum((line["s_at_no_busy"] + line["s_per_busy"] * busy) * w for line, w, busy in weighted) / max(1e-12, sum(w for _, w, _ in weighted))
    rows: dict[str, Any] = {}
    for name, k, batch in plan:
        measured_runs = [found["measured"]["tokens_per_s"] for run, found in summaries.items() if setting_of(run, names) == name]
        if not measured_runs:
            continue
        predicted = predict_with(scenario_path, k, batch, args.steps, args,
                                 [f"generation.step_base_s={flat!r}", "generation.step_per_seq_s=0.0"])["tokens_per_s"]
        measured_mean = sum(measured_runs) / len(measured_runs)
        rows[name] = {"step_s": flat, "predicted_tokens_per_s": predicted, "measured_tokens_per_s": measured_mean,
                      "error_pct": error(predicted, measured_mean), "runs": len(measured_runs)}
    return rows


#: The flags that say what a study ran and predicted: a reanalysis takes the study's own
#: (from its results.json) for each of these left at its default on the command line.
STUDY_SETTINGS = ("task", "model_size", "steps", "batch_size", "other_batch_size", "group_size", "concurrency", "calibrate_at",
                  "probe_batch_size", "calibration_runs", "probe_concurrency", "probe_steps", "lengths", "staleness", "seed",
                  "seed_per_round", "repeats", "sim_seeds", "profile_rows")


def replayed(scenario_path: Path, run_dirs: dict[str, list[Path]]) -> dict[str, Any]:
    """Each setting's runs replayed through the calibrated scenario (``sim.replay``: each
    run's own settings and groups, in the order it submitted them), the mean of its runs
    against their measured mean: the cost model's error, apart from the lengths'."""
    from sim.config import load

    scenario = load(scenario_path)
    rows: dict[str, Any] = {}
    for name, dirs in run_dirs.items():
        if not dirs:
            continue
        runs = [{"run": d.name, "replayed": replay(scenario, d), "measured": measured(d)} for d in dirs]
        mean = {side: {m: sum(r[side][m] for r in runs) / len(runs) for m in runs[0][side]} for side in ("replayed", "measured")}
        rows[name] = mean | {"error_pct": {m: error(mean["replayed"][m], mean["measured"][m]) for m in mean["measured"]}, "runs": runs}
    return rows


def print_replayed(rows: dict[str, Any]) -> None:
    if not rows:
        return
    print("replayed, each run's own groups in the order it submitted them (replayed/measured, error %; the cost model alone):")
    for name, row in rows.items():
        print(f"  {name}: " + "  ".join(f"{m} {row['replayed'][m]:.4g}/{row['measured'][m]:.4g} {row['error_pct'][m]:+.1f}"
                                       for m in (*METRICS, "s_per_update", "tokens_per_update")))
    worst = max(abs(row["error_pct"][m]) for row in rows.values() for m in METRICS)
    print(f"  worst |error| of a replayed mean: {worst:.1f}%")


def study_settings(parser: argparse.ArgumentParser, args: argparse.Namespace, study: Path) -> dict[str, Any]:
    """Set on ``args`` the settings the study in ``study`` ran with (its results.json
    ``args``), each one the command line left at its default (one given there is the
    user's to change); returns those taken that differ from the default.  A folder with
    no results.json (a study stopped before its first predicted run) leaves ``args`` as
    they are."""
    try:
        recorded = json.loads((study / "results.json").read_text())["args"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as failure:
        sys.exit(f"fidelity: --reanalyse {study}: results.json: {failure}")
    taken: dict[str, Any] = {}
    for key in STUDY_SETTINGS:
        default = parser.get_default(key)
        if key not in recorded or getattr(args, key) != default:
            continue
        text = recorded[key]
        if text == "None":
            value: Any = None
        elif isinstance(default, bool):
            value = text == "True"
        elif isinstance(default, int) or (default is None and text.lstrip("-").isdigit()):
            value = int(text)
        else:
            value = text
        setattr(args, key, value)
        if value != default:
            taken[key] = value
    return taken


def study_of(study: Path, flag: str) -> tuple[Path, dict[str, Any], list[str], list[tuple[str, int, int]], argparse.Namespace]:
    """An earlier study read back for an analysis after its runs: its calibrated scenario,
    its runs' summaries, its fitted runs (from its ``calibrate`` command), its plan (from
    its predictions and runs) and its flags (from its results)."""
    try:
        predictions = json.loads((study / "predictions.json").read_text())
        summaries = json.loads((study / "summaries.json").read_text())
        flags = json.loads((study / "results.json").read_text())["args"]
        commands = (study / "commands.txt").read_text().splitlines()
    except (OSError, ValueError, KeyError) as failure:
        sys.exit(f"fidelity: {flag} {study}: {failure}")
    calibrate = next((shlex.split(line) for line in commands if line.startswith("rollout-ledger calibrate ")), None)
    if calibrate is None or "-o" not in calibrate:
        sys.exit(f"fidelity: {flag} {study}: commands.txt has no calibrate command")
    fitted = [Path(log).name for log in calibrate[2:calibrate.index("-o")]]
    plan = []
    for name in predictions:
        config = summaries.get(name, {}).get("config")
        if config is None:
            sys.exit(f"fidelity: {flag} {study}: no summary of a run of {name}")
        plan.append((name, int(config["max_staleness"]), int(config["batch_size"])))
    args = argparse.Namespace(steps=int(flags["steps"]), concurrency=int(flags["concurrency"]), group_size=int(flags["group_size"]),
                              seed=int(flags["seed"]), sim_seeds=int(flags["sim_seeds"]))
    return study / "calibrated.toml", summaries, fitted, plan, args


def own_step_of(study: Path) -> dict[str, Any]:
    """:func:`own_step` for the study in ``study``."""
    rows = own_step(*study_of(study, "--own-step"))
    if not rows:
        sys.exit(f"fidelity: --own-step {study}: its runs' summaries have no decode step line (the engine did not time its steps)")
    return rows


def flat_step_of(study: Path) -> dict[str, Any]:
    """:func:`flat_step` for the study in ``study``."""
    rows = flat_step(*study_of(study, "--flat-step"))
    if not rows:
        sys.exit(f"fidelity: --flat-step {study}: its fitted runs' summaries have no decode step line (the engine did not time its steps)")
    return rows


def print_flat_step(rows: dict[str, Any]) -> None:
    if not rows:
        return
    step = next(iter(rows.values()))["step_s"]
    print(f"tokens/s with one decode step of {1e3 * step:.2f} ms at any busy rows (the fitted runs' mean; after the runs, not a "
          "prediction), predicted / measured, mean of the setting's runs:")
    print("  " + "; ".join(f"{name} {row['predicted_tokens_per_s']:.4g} / {row['measured_tokens_per_s']:.4g} ({row['error_pct']:+.1f}%)"
                           for name, row in rows.items()))


def print_own_step(rows: dict[str, Any]) -> None:
    if not rows:
        return
    print("tokens/s with each run's own decode step (after the runs, not a prediction: the machine's speed at each run taken out),"
          " predicted / measured, mean of the setting's runs:")
    for name, row in rows.items():
        runs = ", ".join(f"{run} {r['error_pct']:+.1f}% ({1e3 * r['step_shift_s']:+.2f} ms)" for run, r in row["runs"].items())
        print(f"  {name}: {row['predicted_tokens_per_s']:.4g} / {row['measured_tokens_per_s']:.4g} ({row['error_pct']:+.1f}%); {runs}")


def print_answers(summaries: dict[str, Any], settings: dict[str, list[str]]) -> None:
    """Each setting's mean completion tokens by span of policy versions, the mean of its
    runs (``settings``: each setting's keys in ``summaries``; :func:`answers_by_version`):
    where a setting trained more or fewer tokens an update than predicted, whether its
    policy answered at another length from the start or learned to."""
    lines, bounds = [], ""
    for name, keys in settings.items():
        spans = [summaries[key].get("answers_by_version") for key in keys]
        spans = [s for s in spans if s]
        if not spans:
            continue
        bounds = bounds or " ".join(f"{span['versions'][0]}-{span['versions'][1]}" for span in spans[0])
        means = [[s[k]["mean"] for s in spans if s[k]["mean"] is not None] for k in range(SPANS)]
        lines.append(f"  {name}: " + " ".join(f"{sum(m) / len(m):5.1f}" if m else "    -" for m in means))
    if lines:
        print(f"completion tokens a trained sample by the version that started it ({bounds}), mean of the setting's runs:")
        print("\n".join(lines))


def print_hosts(summaries: dict[str, Any]) -> None:
    """Each run's machine probe and the CPU beside it, in the order the runs ran."""
    hosts = {name: s["host"] for name, s in summaries.items() if s.get("host")}
    if not hosts:
        return
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print("the machine at each run: us per launch / per 1,000 Python turns, just before it; others' CPU (cores) on its cores / on the host; steal")
    for name, host in sorted(hosts.items(), key=lambda item: item[1].get("started", 0.0)):
        print(f"  {name}: {host['launch_us']:.1f} / {host['python_us']:.1f}; {fmt(host.get('others_on_cores'), '.2f')} / "
              f"{fmt(host.get('others_on_host'), '.2f')}; {fmt(host.get('steal'), '.3f')}")


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
                        help="train's --model: a built-in size (tiny, small, base, large, xl) or a local Hugging Face model directory")
    parser.add_argument("--train-flags", default="", metavar="FLAGS",
                        help="more flags for every run's train command, as one string (e.g. \"--max-new-tokens 48 --keep-cache\")")
    parser.add_argument("--steps", type=int, default=150, help="updates per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--other-batch-size", type=int, default=32, help="batch size of the extra run (at staleness 2; 0: none)")
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
    parser.add_argument("--seed-per-round", action="store_true",
                        help="calibration run K and the runs of round K train with seed + K - 1: a setting's mean is over as many "
                             "of its RL trajectories (its answers' lengths) as it has rounds, the fitted lengths over as many as "
                             "calibration runs, and round K's control reruns calibration run K exactly where that run exists")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the study in --out: keep its warm-up, its complete runs and its predictions.json "
                             "(read, never rewritten), and run what is missing, e.g. more rounds with a larger --repeats")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each predicted setting this many times, in rounds, and measure it by their mean (the spread is printed)")
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                        help="every run writes its checkpoint every N updates (train's --checkpoint-every; 0: none, the disk out "
                             "of the timed updates; default: train's own)")
    parser.add_argument("--profile-rows", default="", metavar="N,N,...",
                        help="time the trainer's update alone at these batch sizes in samples (profile-step, after the calibration "
                             "runs) and calibrate the training step on that profile (calibrate --step-profile); default: none")
    parser.add_argument("--sim-seeds", type=int, default=8, help="simulations per prediction (seeds --seed ...), their figures averaged")
    parser.add_argument("--fit-on", default=None, metavar="RUN[,RUN...]",
                        help="with --reanalyse: calibrate on these runs of DIR (e.g. calibration,calibration-r2) instead of "
                             "the calibration runs and the probe")
    parser.add_argument("--reanalyse", type=Path, default=None, metavar="DIR",
                        help="train nothing: calibrate on and predict again the runs of an earlier study in DIR, with its own "
                             "settings (from its results.json) for every setting flag left at its default")
    parser.add_argument("--own-step", type=Path, default=None, metavar="DIR",
                        help="train and write nothing: simulate an earlier study's runs again with each run's own decode step "
                             "(its calibrated.toml, predictions.json, summaries.json, commands.txt and flags), the machine's "
                             "speed at each run taken out of the error")
    parser.add_argument("--flat-step", type=Path, default=None, metavar="DIR",
                        help="train and write nothing: predict an earlier study's settings again with one decode step, the "
                             "fitted runs' mean, at any busy rows (no cost per busy row)")
    parser.add_argument("--against-controls", type=Path, default=None, metavar="DIR",
                        help="train, fit and write nothing: print an earlier study's predicted ratios to its calibration setting "
                             "against each round's measured ratio to that round's control (DIR's predictions.json and summaries.json)")
    args = parser.parse_args()
    if args.out is None and args.against_controls is None and args.own_step is None and args.flat_step is None:
        parser.error("the following arguments are required: --out")
    if args.own_step is not None:
        print_own_step(own_step_of(args.own_step))
        return
    if args.flat_step is not None:
        print_flat_step(flat_step_of(args.flat_step))
        return
    if args.against_controls is not None:
        study: Path = args.against_controls
        try:
            predictions = json.loads((study / "predictions.json").read_text())
            recorded = json.loads((study / "summaries.json").read_text())
        except (OSError, ValueError) as failure:
            sys.exit(f"fidelity: --against-controls {study}: {failure}")
        rows = against_controls(predictions, recorded)
        if not rows:
            sys.exit(f"fidelity: --against-controls {study}: no predicted run shares a round with a control "
                     "(a study with --repeats 2 or more has them)")
        print_against_controls(rows)
        return
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be at least 0, got {args.checkpoint_every}")
    for flag in ("repeats", "sim_seeds", "calibration_runs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.resume and args.reanalyse is not None:
        parser.error("--resume goes on with a study in --out; --reanalyse trains nothing")
    if args.fit_on is not None and args.reanalyse is None:
        parser.error("--fit-on chooses the runs a reanalysis fits (--reanalyse DIR); a new study fits its calibration runs")
    if args.reanalyse is not None:
        taken = study_settings(parser, args, args.reanalyse)
        if taken:
            print(f"settings of {args.reanalyse}/results.json: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in taken.items()),
                  flush=True)
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

    seed = lambda k: args.seed + (k - 1 if args.seed_per_round else 0)  # noqa: E731  (calibration run or round k)
    init = ["--init", str(out / "warmup" / "final.safetensors"), "--warmup-steps", "0"]
    if args.checkpoint_every is not None:
        init += ["--checkpoint-every", str(args.checkpoint_every)]
    probe = runs / f"probe-batch{args.probe_batch_size}"
    if args.reanalyse is None:
        print("warm-up", flush=True)
        train(args, out / "warmup", 0, args.batch_size, 1, ["--warmup-steps", str(args.warmup_steps)])
        print(f"calibration run{'s' if args.calibration_runs > 1 else ''} at max_staleness {args.calibrate_at}", flush=True)
        for k, name in enumerate(calibrations, start=1):
            train(args, out / name, args.calibrate_at, args.batch_size, args.steps, init, seed=seed(k))
        if args.probe_batch_size:
            print(f"probe run at max_staleness {args.calibrate_at}, batch {args.probe_batch_size}", flush=True)
            train(args, probe, args.calibrate_at, args.probe_batch_size, args.probe_steps or max(4, args.steps // 2), init,
                  args.probe_concurrency)
    profile = runs / "step_profile.csv"
    written = out / "predictions.json"
    if args.reanalyse is None and args.profile_rows and not (args.resume and written.is_file()):
        # the trainer's update alone at batch shapes the calibration runs never had
        print(f"step profile of {calibrations[0]} at {args.profile_rows} rows", flush=True)
        profiled = subprocess.run([sys.executable, "-m", "engine.cli", "profile-step", str(runs / calibrations[0]), "-o", str(profile),
                                   "--rows", args.profile_rows, "--device", args.device], cwd=ROOT, capture_output=True, text=True)
        if profiled.returncode != 0:
            sys.exit(f"fidelity: profile-step failed: {profiled.stderr[-3000:]}")
        print(profiled.stdout, flush=True)
    logs = [str(runs / name) for name in calibrations] + ([str(probe)] if args.probe_batch_size else [])
    if args.fit_on is not None:
        logs = [str(runs / name) for name in args.fit_on.split(",")]
    scenario = out / "calibrated.toml"
    command = [sys.executable, "-m", "engine.cli", "calibrate", *logs, "-o", str(scenario), "--lengths", args.lengths]
    if args.profile_rows and profile.is_file():
        command += ["--step-profile", str(profile)]
    plan = [(f"staleness{k}", int(k), args.batch_size) for k in args.staleness.split(",")]
    if args.other_batch_size:
        plan.append((f"staleness{args.calibrate_at}-batch{args.other_batch_size}", args.calibrate_at, args.other_batch_size))
    plan.insert(0, (f"staleness{args.calibrate_at}-calibration", args.calibrate_at, args.batch_size))
    from engine.log.files import write_atomic

    if args.resume and written.is_file():  # the study's own predictions, made before its first predicted run
        predictions = json.loads(written.read_text())
        if set(predictions) != {name for name, _, _ in plan}:
            sys.exit(f"fidelity: --resume: {written} predicts {', '.join(predictions)}, not this plan's "
                     f"{', '.join(name for name, _, _ in plan)} (the study's --staleness and --other-batch-size are its own)")
        commands = out / "commands.txt"
        write_atomic(commands, (commands.read_text() if commands.is_file() else "") + shlex.join(["python", *sys.argv]) + "\n")
        print(f"predictions read from {written} (written before the study's first predicted run)", flush=True)
    else:
        write_atomic(out / "commands.txt", shlex.join(["python", *sys.argv]) + "\n" + shlex.join(["rollout-ledger", *command[3:]]) + "\n")
        fit = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if fit.returncode != 0:
            sys.exit(f"fidelity: calibrate failed: {fit.stderr}")
        print(fit.stdout, flush=True)
        write_atomic(out / "calibration_fit.txt", fit.stdout)
        simulated = {name: predict_runs(scenario, k, batch, args.steps, args, []) for name, k, batch in plan}
        predictions = {name: mean_of(runs) for name, runs in simulated.items()}
        write_atomic(out / "predicted_ranges.json", json.dumps({name: ranges(runs) for name, runs in simulated.items()}, indent=1))
        write_atomic(written, json.dumps(predictions, indent=1))  # before any predicted run starts
        print(f"predictions written to {written}" + (" (after the runs: a reanalysis)" if args.reanalyse else ""), flush=True)

    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": {}}
    summaries: dict[str, Any] = {}
    measured_runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in plan}
    run_dirs: dict[str, list[Path]] = {name: [] for name, _, _ in plan}  # each setting's measured runs, for the replay
    keys: dict[str, list[str]] = {name: [] for name, _, _ in plan}  # and their keys in summaries
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
                train(args, run_dir, k, batch, args.steps, init, seed=seed(repeat))
            key = name if repeat == 1 else run_dir.name
            summaries[key] = summary(run_dir)
            if calibration and repeat > 1:  # a control: the fit's own setting again, how far the machine drifted
                controls.append({"run": run_dir.name, "tokens_per_s": summaries[key]["measured"]["tokens_per_s"],
                                 "s_per_update": summaries[key]["measured"]["s_per_update"]})
                continue
            measured_runs[name].append(summaries[key]["measured"])
            run_dirs[name].append(run_dir)
            keys[name].append(key)
            if calibration and repeat == 1 and len(calibrations) > 1:  # the fit's other runs: the row is their mean
                for other in calibrations[1:]:
                    summaries[other] = summary(runs / other)
                    measured_runs[name].append(summaries[other]["measured"])
                    run_dirs[name].append(runs / other)
                    keys[name].append(other)
    for name, found in measured_runs.items():
        if found:  # a setting run several times is measured by the mean of its runs
            mean = {m: sum(r[m] for r in found) / len(found) for m in found[0]}
            results["runs"][name] = {"predicted": predictions[name], "measured": mean} | ({"repeats": found} if len(found) > 1 else {})
    if controls:
        base = results["runs"][plan[0][0]]["measured"]  # the calibration run (the mean of several)
        for control in controls:
            control["tokens_per_s_change_pct"] = error(control["tokens_per_s"], base["tokens_per_s"])
            control["s_per_update_change_pct"] = error(control["s_per_update"], base["s_per_update"])
            round_ = int(control["run"].rpartition("-r")[2])
            twin = calibrations[round_ - 1] if args.seed_per_round and round_ <= len(calibrations) else None
            if twin is not None:  # the same run again, seed and all: the two differ by the machine alone
                same = summaries[twin]["measured"]
                control["same_seed_as"] = twin
                control["tokens_per_s_change_from_it_pct"] = error(control["tokens_per_s"], same["tokens_per_s"])
        results["controls"] = controls
    results["against_controls"] = against_controls(predictions, summaries)
    if args.probe_batch_size:
        summaries[probe.name] = summary(probe)
    fitted = [Path(log).name for log in logs]
    results["own_step"] = own_step(scenario, summaries, fitted, plan, args)
    results["replay"] = replayed(scenario, run_dirs)
    results["flat_step"] = flat_step(scenario, summaries, fitted, plan, args)
    write_atomic(out / "summaries.json", json.dumps(summaries, indent=1))

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
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    write_atomic(out / "table.md", table + "\n")
    print(table)
    passes = "  ".join(f"{name} {row['predicted']['prefill_passes_per_update']:.2f}/{row['measured']['prefill_passes_per_update']:.2f}"
                       for name, row in results["runs"].items())
    print(f"prefill passes per update, predicted/measured: {passes}")
    steps = "  ".join(f"{name} {row['predicted']['decode_steps_per_update']:.2f}/{row['measured']['decode_steps_per_update']:.2f}"
                      for name, row in results["runs"].items()
                      if "decode_steps_per_update" in row["predicted"] and "decode_steps_per_update" in row["measured"])
    if steps:  # (predictions written before the simulator counted its steps have none)
        print(f"decode steps per update, predicted/measured: {steps}")
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
    if (out / "predicted_ranges.json").is_file():  # (studies before it kept the means alone)
        print_ranges(json.loads((out / "predicted_ranges.json").read_text()), results["runs"])
    print_answers(summaries, keys)
    for control in controls:
        print(f"control {control['run']} (the calibration setting again, not predicted): {control['tokens_per_s']:.4g} tokens/s, "
              f"{control['tokens_per_s_change_pct']:+.1f}% from the calibration run; seconds per update "
              f"{control['s_per_update_change_pct']:+.1f}%"
              + (f"; {control['tokens_per_s_change_from_it_pct']:+.1f}% from {control['same_seed_as']} (the same seed)"
                 if "same_seed_as" in control else ""))
    print_hosts(summaries)
    print_against_controls(results["against_controls"])
    print_own_step(results["own_step"])
    print_flat_step(results["flat_step"])
    print_replayed(results["replay"])
    print(f"worst |error| (tokens/s, mean staleness, idle; predicted runs): {worst:.1f}%  total {results['total_s']:.0f}s")


if __name__ == "__main__":
    main()
