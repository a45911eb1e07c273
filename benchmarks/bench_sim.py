"""Simulator speed and memory: rollouts simulated per second, with and without the
SQLite event log, on one core.

Each row runs in its own process (so its peak resident memory is its own) and
prints: rollouts, seconds, rollouts/s, events/s, and memory (peak RSS, and its
growth over the process's size after imports).  Memory that stays flat from
100,000 to 1,000,000 rollouts shows nothing grows with finished rollouts.

    python benchmarks/bench_sim.py                  # the full table (1,000,000 rollouts)
    python benchmarks/bench_sim.py --sizes 100000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

#: Workloads: the default scenario, with in-flight rollouts left to run on at a
#: weight update, or split into segments (partial rollouts: 3 more events per
#: in-flight rollout per version).
WORKLOADS = {
    "run_on": ["generation.on_update=run_on"],
    "partial": ["generation.on_update=partial"],
}


def child(workload: str, rollouts: int, with_log: bool) -> dict[str, float]:
    """Run one simulation in this process and measure it."""
    from sim.config import Scenario
    from sim.simulator import Simulation

    scenario = Scenario().with_overrides([*WORKLOADS[workload], f"run.rollouts={rollouts}"])
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "bench.db" if with_log else None
        start = time.perf_counter()
        summary = Simulation(scenario, log=log).run()
        seconds = time.perf_counter() - start
        log_mb = log.stat().st_size / 2**20 if log is not None else 0.0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rollouts": summary.trained_rollouts,
        "seconds": seconds,
        "events": summary.events,
        "peak_mb": peak_kb / 1024,
        "growth_mb": (peak_kb - baseline_kb) / 1024,
        "log_mb": log_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="rollout counts (comma-separated)")
    parser.add_argument("--workloads", default="run_on,partial", help=f"of {', '.join(WORKLOADS)}")
    parser.add_argument("--child", nargs=3, metavar=("WORKLOAD", "ROLLOUTS", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workload, rollouts, with_log = args.child
        print(json.dumps(child(workload, int(rollouts), with_log == "log")))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    workloads = args.workloads.split(",")
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; known are {', '.join(WORKLOADS)}")
    rows = [(w, n, log) for w in workloads for log in ("log", "no log") for n in sizes]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    results = []
    for workload, size, log in tqdm(rows, desc="benchmark runs", unit="run"):
        command = [sys.executable, __file__, "--child", workload, str(size), "log" if log == "log" else "none"]
        if sys.platform.startswith("linux"):
            command = ["taskset", "-c", "0", *command]  # one core
        out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        results.append((workload, log, json.loads(out.strip().splitlines()[-1])))
    header = f"{'workload':>8}  {'event log':>9}  {'rollouts':>9}  {'seconds':>8}  {'rollouts/s':>10}  {'events/s':>9}  {'peak MB':>8}  {'growth MB':>9}  {'log MB':>7}"
    print(header)
    print("-" * len(header))
    for workload, log, r in results:
        print(
            f"{workload:>8}  {log:>9}  {r['rollouts']:>9,}  {r['seconds']:>8.1f}  {r['rollouts'] / r['seconds']:>10,.0f}  "
            f"{r['events'] / r['seconds']:>9,.0f}  {r['peak_mb']:>8.1f}  {r['growth_mb']:>9.1f}  {r['log_mb']:>7.0f}"
        )


if __name__ == "__main__":
    main()
