"""A fidelity study's staleness histograms: each run's measured against the simulator's.

Reads a study's directory (``benchmarks/fidelity.py --out DIR``): its calibrated
scenario and, for the calibration run and each predicted run's first repeat, the
staleness at consumption of every rollout from the run's log (as the study measures
it), and simulates the same setting (``--sim-seeds`` seeds, the study's flags).
Prints per run the share of rollouts at each staleness, measured / simulated, in
per cent: where a mean agrees and a p99 does not, this shows which versions differ.
Then, per run, how the share of groups whose longest answer reached the cap moved over
the run (groups by the version they were submitted under, in windows of
``--window`` versions), against the spread that independent draws at the run's own
share would give: the simulator draws every group's lengths from one distribution,
so a run whose share comes in phases has a tail the simulator does not draw.
On a CPU, from a study copied back from the GPU::

    python3 benchmarks/staleness_histogram.py runs/fid14
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fidelity import consumed_staleness, overrides  # noqa: E402


def measured(run_dir: Path) -> collections.Counter[int]:
    """How many of a run's rollouts were consumed at each staleness (as the study measures it)."""
    return collections.Counter(consumed_staleness(run_dir))


def capped_phases(run_dir: Path, window: int) -> tuple[float, list[float], float]:
    """The share of the run's groups whose longest sample reached the longest length any
    reached (the cap), that share in each window of ``window`` submission versions (of
    50 groups or more; not the last window, whose long groups the run's end cuts off), and the standard deviation independent draws would give a
    window of the mean size."""
    import pickle
    import sqlite3

    from engine.core.events import Submitted
    from engine.log import EventLog

    submitted: dict[str, int] = {}
    with EventLog(run_dir / "events.sqlite", mode="r") as log:
        for event in log.events():
            if isinstance(event, Submitted):
                submitted.setdefault(event.rollout, event.version)
    db = sqlite3.connect(f"file:{run_dir / 'samples.sqlite'}?mode=ro", uri=True)
    try:
        stored = db.execute("SELECT rollout, data FROM samples").fetchall()
    finally:
        db.close()
    groups = [(submitted[rollout], max(len(sample["completion"]) for sample in pickle.loads(data)))
              for rollout, data in stored if rollout in submitted]
    if not groups:
        return 0.0, [], 0.0
    cap = max(longest for _, longest in groups)
    share = sum(longest >= cap for _, longest in groups) / len(groups)
    windows: dict[int, list[bool]] = collections.defaultdict(list)
    for version, longest in groups:
        windows[version // window].append(longest >= cap)
    counts = [len(w) for w in windows.values()]
    size = sum(counts) / len(counts)
    # the last window is left out: the run's end cuts its long groups off (they never finish)
    shares = [sum(w) / len(w) for _, w in sorted(windows.items())[:-1] if len(w) >= 50]
    return share, shares, (share * (1 - share) / size) ** 0.5


def simulated(study: Path, run: tuple[int, int, int, int, int], seed: int, seeds: int) -> collections.Counter[float]:
    """The simulator's share of rollouts at each staleness for a study's ``run`` (bound,
    batch, updates, concurrency, group size: :func:`benchmarks.fidelity.overrides`), over
    ``seeds`` seeds from ``seed``, as the study predicts it."""
    from sim.config import load
    from sim.simulator import simulate

    counts: collections.Counter[float] = collections.Counter()
    for k in range(seeds):
        s = simulate(load(study / "calibrated.toml", overrides(*run, seed + k)))
        counts.update({int(a): c / seeds for a, c in s.staleness_histogram.items()})
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a fidelity study's --out directory")
    parser.add_argument("--sim-seeds", type=int, default=4)
    parser.add_argument("--window", type=int, default=10, help="versions a window of the capped share spans")
    args = parser.parse_args()
    if not (args.study / "calibrated.toml").is_file() or not (args.study / "results.json").is_file():
        parser.error(f"{args.study}: not a fidelity study's directory (no calibrated.toml or results.json)")
    flags = json.loads((args.study / "results.json").read_text())["args"]
    steps, batch, group = int(flags["steps"]), int(flags["batch_size"]), int(flags["group_size"])
    concurrency, seed = int(flags["concurrency"]), int(flags["seed"])
    runs = {"calibration": (int(flags["calibrate_at"]), batch)}
    runs |= {f"staleness{k}": (int(k), batch) for k in str(flags["staleness"]).split(",")}
    runs[f"staleness{flags['calibrate_at']}-batch{flags['other_batch_size']}"] = (int(flags["calibrate_at"]), int(flags["other_batch_size"]))
    for name, (staleness, size) in runs.items():
        if not (args.study / name / "events.sqlite").is_file():
            print(f"{name}: no log in {args.study / name}, skipped")
            continue
        real = measured(args.study / name)
        sim = simulated(args.study, (staleness, size, steps, concurrency, group), seed, args.sim_seeds)
        total_real, total_sim = sum(real.values()), sum(sim.values())
        mean = lambda c, t: sum(k * v for k, v in c.items()) / max(t, 1e-12)  # noqa: E731
        print(f"{name} (max_staleness {staleness}, batch {size}): mean {mean(real, total_real):.2f} measured, "
              f"{mean(sim, total_sim):.2f} simulated; % of rollouts at each staleness, measured / simulated:")
        print("  " + "  ".join(f"{k}: {100 * real.get(k, 0) / total_real:.1f} / {100 * sim.get(k, 0) / total_sim:.1f}"
                               for k in sorted(set(real) | set(sim))))
        share, shares, independent = capped_phases(args.study / name, args.window)
        if len(shares) > 1:
            spread = (sum((x - sum(shares) / len(shares)) ** 2 for x in shares) / len(shares)) ** 0.5
            print(f"  groups at the cap: {100 * share:.1f}%; by {args.window} versions: "
                  + " ".join(f"{100 * x:.0f}" for x in shares)
                  + f" (sd {100 * spread:.1f} points; independent draws {100 * independent:.1f})")


if __name__ == "__main__":
    main()
