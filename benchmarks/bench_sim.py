"""Simulator speed and memory: rollouts simulated per second, with and without the
SQLite event log, on one core; and partial mode's cost per event by rollouts in flight.

Each row runs in its own process (so its peak resident memory is its own) and
prints: rollouts, seconds, rollouts/s, events/s, and memory (peak RSS, and its
growth over the process's size after imports).  Memory that stays flat from
100,000 to 1,000,000 rollouts shows nothing grows with finished rollouts.

The second table runs partial mode (every rollout in flight interrupted and resumed
at each weight update) with N = 64, 256, 1,024 and 4,096 rollouts in flight: N
concurrent rollouts on N / 64 servers of 64 slots, batches of N / 4 (so a rollout
lives through about four updates whatever N), a trainer that keeps up (1 s a step,
0.5 s weight sync), 20,480 rollouts (80 updates at N = 4,096, 5,120 at N = 64: about
the same number of events in every row).  The cost per event should not grow with N;
the last column is each row's cost over the first row's.

``--inflight-batch 64`` runs that table with batches of 64 whatever N instead (staleness
bound N / 64 + 1, so capacity does not bind; no prefill cost, else re-prefilling N
sequences at every update stalls generation; a 0.1 s trainer step and 0.05 s sync).
Then every update still names all N rollouts in flight twice (``interrupted_batch``,
``resumed_batch``), for a number of other events that does not grow with N, so the
cost per event grows with N by construction; the table adds the cost per event and
rollout named in a batch event, which is the work that does not.

``--against DIR`` runs every row a second time with the code of another checkout
(e.g. ``git archive <commit> | tar -x -C /tmp/before``), alternating, so the two are compared in
one run on one machine; ``--repeats`` keeps the fastest of several runs of each row.

    python benchmarks/bench_sim.py                          # the full tables (1,000,000 rollouts)
    python benchmarks/bench_sim.py --sizes 100000           # quicker
    python benchmarks/bench_sim.py --sizes 100000 --against /tmp/before --repeats 3
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
#: weight update, or split into segments (partial rollouts: an interrupted_batch and a
#: resumed_batch per update naming every rollout in flight).
WORKLOADS = {
    "run_on": ["generation.on_update=run_on"],
    "partial": ["generation.on_update=partial"],
}

#: Rollouts simulated per in-flight row.
INFLIGHT_ROLLOUTS = 20_480


def inflight_overrides(in_flight: int, batch: int | None = None) -> list[str]:
    """The partial-mode scenario with ``in_flight`` rollouts in flight, in batches of
    ``in_flight / 4`` or of ``batch`` (see the module docstring)."""
    common = [
        "generation.on_update=partial",
        f"ledger.max_concurrent={in_flight}",
        f"generation.servers={max(1, in_flight // 64)}",
        "generation.slots=64",
        "training.step_per_token_s=0",
    ]
    if batch is None:
        batch = max(1, in_flight // 4)
        return [*common, f"ledger.batch_size={batch}", f"run.rollouts={max(INFLIGHT_ROLLOUTS, 20 * batch)}",
                "training.step_base_s=1.0", "training.weight_sync_s=0.5"]  # fmt: skip
    return [*common, f"ledger.batch_size={batch}", f"ledger.max_staleness={in_flight // batch + 1}", f"run.rollouts={INFLIGHT_ROLLOUTS}",
            "generation.prefill_per_token_s=0", "training.step_base_s=0.1", "training.weight_sync_s=0.05"]  # fmt: skip


def child(overrides: list[str], with_log: bool, count: bool = False) -> dict[str, float]:
    """Run one simulation in this process and measure it; with ``count``, run it again
    with a log (not timed) to count the rollouts its batch events name."""
    from engine.log import EventLog
    from sim.config import Scenario
    from sim.simulator import Simulation

    scenario = Scenario().with_overrides(overrides)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "bench.db" if with_log else None
        start = time.perf_counter()
        summary = Simulation(scenario, log=log).run()
        seconds = time.perf_counter() - start
        log_mb = log.stat().st_size / 2**20 if log is not None else 0.0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    named = 0  # rollouts named in interrupted_batch and resumed_batch events, beyond one per event
    if count:
        with tempfile.TemporaryDirectory() as folder:
            Simulation(scenario, log=Path(folder) / "count.db").run()
            with EventLog(Path(folder) / "count.db") as log:
                named = sum(len(e.rollouts) - 1 for e in log.events() if e.type in ("interrupted_batch", "resumed_batch"))
    return {
        "named": named,
        "rollouts": summary.trained_rollouts,
        "seconds": seconds,
        "events": summary.events,
        "peak_mb": peak_kb / 1024,
        "growth_mb": (peak_kb - baseline_kb) / 1024,
        "log_mb": log_mb,
    }


def measure(root: str, overrides: list[str], mode: str, repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` runs, each in a fresh process on one core, of the code
    under ``root``; ``mode`` is ``log``, ``none`` or ``count`` (no log, then count)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(overrides), mode]
    if sys.platform.startswith("linux"):
        command = ["taskset", "-c", "0", *command]  # one core
    runs = []
    for _ in range(repeats):
        out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="rollout counts (comma-separated); 'none' skips the table")
    parser.add_argument("--workloads", default="run_on,partial", help=f"of {', '.join(WORKLOADS)}")
    parser.add_argument("--inflight", default="64,256,1024,4096", help="rollouts in flight of the partial-mode table; 'none' skips it")
    parser.add_argument("--inflight-batch", type=int, metavar="SIZE", help="batch size of the in-flight table (default: in flight / 4)")
    parser.add_argument("--against", metavar="DIR", help="another checkout to compare with, row by row")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the fastest counts (default 1)")
    parser.add_argument("--child", nargs=2, metavar=("OVERRIDES", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        overrides, mode = args.child
        print(json.dumps(child(json.loads(overrides), mode == "log", mode == "count")))
        return
    workloads = args.workloads.split(",")
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; known are {', '.join(WORKLOADS)}")
    sizes = [] if args.sizes == "none" else [int(s) for s in args.sizes.split(",")]
    inflight = [] if args.inflight == "none" else [int(n) for n in args.inflight.split(",")]
    here = str(Path(__file__).resolve().parent.parent)
    trees = [("this", here)] + ([("against", str(Path(args.against).resolve()))] if args.against else [])
    rows = [("size", w, n, log) for w in workloads for log in ("log", "no log") for n in sizes]
    rows += [("inflight", "partial", n, "no log") for n in inflight]
    results: dict[tuple[str, str, str, int, str], dict[str, float]] = {}
    for kind, workload, n, log in tqdm(rows, desc="benchmark rows", unit="row"):
        if kind == "size":
            overrides, mode = [*WORKLOADS[workload], f"run.rollouts={n}"], "log" if log == "log" else "none"
        else:
            overrides, mode = inflight_overrides(n, args.inflight_batch), "none" if args.inflight_batch is None else "count"
        for label, root in trees:
            results[(label, kind, workload, n, log)] = measure(root, overrides, mode, args.repeats)
    if sizes:
        header = f"{'code':>7}  {'workload':>8}  {'event log':>9}  {'rollouts':>9}  {'seconds':>8}  {'rollouts/s':>10}  {'events/s':>9}  {'peak MB':>8}  {'growth MB':>9}  {'log MB':>7}"
        if args.against:
            header += f"  {'this/against':>12}"
        print(header)
        print("-" * len(header))
        for _, workload, n, log in (row for row in rows if row[0] == "size"):
            for label, _ in trees:
                r = results[(label, "size", workload, n, log)]
                line = (
                    f"{label:>7}  {workload:>8}  {log:>9}  {r['rollouts']:>9,}  {r['seconds']:>8.2f}  {r['rollouts'] / r['seconds']:>10,.0f}  "
                    f"{r['events'] / r['seconds']:>9,.0f}  {r['peak_mb']:>8.1f}  {r['growth_mb']:>9.1f}  {r['log_mb']:>7.0f}"
                )
                if args.against and label == "against":
                    this = results[("this", "size", workload, n, log)]
                    line += f"  {this['seconds'] / r['seconds']:>11.2f}x"
                print(line)
        print()
    if inflight:
        counted = args.inflight_batch is not None
        header = f"{'code':>7}  {'in flight':>9}  {'events':>8}  {'seconds':>8}  {'us/event':>8}  {'x first':>7}"
        if counted:
            header += f"  {'named/event':>11}  {'us/(event+named)':>16}  {'x first':>7}"
        batch = "in flight / 4" if not counted else str(args.inflight_batch)
        print(f"partial mode: cost per event by rollouts in flight (batches of {batch})")
        print(header)
        print("-" * len(header))
        for label, _ in trees:
            first = first_work = None
            for n in inflight:
                r = results[(label, "inflight", "partial", n, "no log")]
                per_event = 1e6 * r["seconds"] / r["events"]
                first = first or per_event
                line = f"{label:>7}  {n:>9,}  {r['events']:>8,}  {r['seconds']:>8.2f}  {per_event:>8.2f}  {per_event / first:>6.2f}x"
                if counted:
                    per_work = 1e6 * r["seconds"] / (r["events"] + r["named"])
                    first_work = first_work or per_work
                    line += f"  {r['named'] / r['events']:>11.1f}  {per_work:>16.2f}  {per_work / first_work:>6.2f}x"
                print(line)


if __name__ == "__main__":
    main()
