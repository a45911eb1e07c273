"""Ledger core benchmarks: fold rate against the frozen baseline reducer
(benchmarks/baseline_reducer.py) and SimPy's raw event rate, SQLite append and
replay, and folded-state memory as rollouts finish.

    python benchmarks/bench_ledger.py [--events 1000000]

Prints one table; every figure is measured in this run, on one core.  The fold and
the baseline fold are timed in turns (best of five each), so a busy machine slows both.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import simpy  # noqa: E402

from benchmarks import baseline_reducer  # noqa: E402
from benchmarks.mixed_log import _generate, mixed_log  # noqa: E402
from engine.core.reducer import EMPTY, Folder, apply, fold  # noqa: E402
from engine.log import EventLog, replay  # noqa: E402


def best_of(runs: int, work: Callable[[], object]) -> float:
    """Fastest of ``runs`` timings, in seconds."""
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def in_turns(runs: int, first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float]:
    """Fastest of ``runs`` timings of each, in seconds, the two run in turns."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for work, spent in ((first, times[0]), (second, times[1])):
            gc.collect()
            start = time.perf_counter()
            work()
            spent.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def simpy_timeouts(n: int) -> float:
    """SimPy events/s for one process yielding ``n`` timeouts (SimPy's floor cost)."""
    env = simpy.Environment()

    def ticker(env: simpy.Environment):
        for _ in range(n):
            yield env.timeout(1)

    env.process(ticker(env))
    return n / best_of(1, env.run)


def simpy_cluster(n_workers: int = 256, steps: int = 400) -> float:
    """SimPy events/s for a generation-like model: ``n_workers`` processes contend for
    64 slots, hold them for a random time and hand results to a trainer through a store."""
    env = simpy.Environment()
    slots = simpy.Resource(env, capacity=64)
    results = simpy.Store(env)
    rng = random.Random(0)

    def worker(env: simpy.Environment):
        for step in range(steps):
            with slots.request() as request:
                yield request
                yield env.timeout(rng.random())
            yield results.put(step)

    def trainer(env: simpy.Environment):
        while True:
            yield results.get()

    for _ in range(n_workers):
        env.process(worker(env))
    env.process(trainer(env))
    processed = 0
    start = time.perf_counter()
    try:
        while True:
            env.step()
            processed += 1
    except simpy.core.EmptySchedule:
        pass
    return processed / (time.perf_counter() - start)


def state_memory(n_events: int) -> tuple[int, int]:
    """(live rollouts, peak traced bytes) while streaming ``n_events`` through a fold."""
    tracemalloc.start()
    state = fold(_generate(n_events, 3, 256, 64))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return len(state.rollouts), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []

    events = mixed_log(args.events)
    n = len(events)
    fold_s, baseline_s = in_turns(5, lambda: fold(events), lambda: baseline_reducer.fold(events))
    fold_rate, baseline_rate = n / fold_s, n / baseline_s
    new, old = fold(events), baseline_reducer.fold(events)
    assert (new.counts, new.version, new.events, dict(new.rollouts)) == (old.counts, old.version, old.events, dict(old.rollouts))
    rows.append(("fold (mixed log, 256 in flight)", f"{fold_rate:,.0f} events/s", ">= 1,000,000"))
    rows.append(("baseline fold (benchmarks/baseline_reducer.py)", f"{baseline_rate:,.0f} events/s", ""))
    rows.append(("fold vs baseline fold", f"{fold_rate / baseline_rate:.2f}x", ">= 1.5x"))
    ordered = mixed_log(args.events, in_order=True)  # the same run with batches in order: the flight count is kept
    ordered_s, plain_s = in_turns(5, lambda: fold(ordered), lambda: fold(events))
    rows.append(("fold, batches in order (in flight counted)", f"{len(ordered) / ordered_s:,.0f} events/s", ""))
    rows.append(("  the same vs batches as they finish", f"{(len(ordered) / ordered_s) / (n / plain_s):.2f}x", ""))

    folder_s, baseline_folder_s = in_turns(3, lambda: _fold_with_folder(events, Folder), lambda: _fold_with_folder(events, baseline_reducer.Folder))
    rows.append(("Folder.apply, one event at a time", f"{n / folder_s:,.0f} events/s", ""))
    rows.append(("Folder.apply vs baseline Folder.apply", f"{baseline_folder_s / folder_s:.2f}x", ""))
    snapshots_s, baseline_snapshots_s = in_turns(
        3, lambda: _fold_with_folder(events, Folder, snapshot=True), lambda: _fold_with_folder(events, baseline_reducer.Folder, snapshot=True)
    )
    rows.append(("Folder.apply + Folder.state after each event", f"{n / snapshots_s:,.0f} events/s", ""))
    rows.append(("  the same vs baseline", f"{baseline_snapshots_s / snapshots_s:.2f}x", ""))

    sample = events[: min(n, 200_000)]
    apply_s, baseline_apply_s = in_turns(1, lambda: _apply_each(sample, apply, EMPTY), lambda: _apply_each(sample, baseline_reducer.apply, baseline_reducer.EMPTY))
    rows.append(("apply (new immutable state per event)", f"{len(sample) / apply_s:,.0f} events/s", ""))
    rows.append(("apply vs baseline apply", f"{baseline_apply_s / apply_s:.2f}x", ""))

    cluster = simpy_cluster()
    bare = simpy_timeouts(1_000_000)
    rows.append(("SimPy raw rate, 256-process cluster model", f"{cluster:,.0f} events/s", ""))
    rows.append(("SimPy raw rate, bare timeouts (floor)", f"{bare:,.0f} events/s", ""))
    rows.append(("fold / SimPy cluster model", f"{fold_rate / cluster:.2f}x", ">= 1.2x"))
    rows.append(("fold / SimPy bare timeouts", f"{fold_rate / bare:.2f}x", ""))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"

        def write() -> None:
            if path.exists():
                os.remove(path)
            with EventLog(path) as log:
                for start in range(0, n, 10_000):
                    log.append(events[start : start + 10_000])

        append_rate = n / best_of(1, write)
        rows.append(("SQLite append, batches of 10,000", f"{append_rate:,.0f} events/s", ">= 200,000"))
        replay_s = best_of(3, lambda: replay(path))
        rows.append((f"replay of a {n:,}-event SQLite log", f"{replay_s:.2f} s", "< 3 s"))
        assert replay(path) == fold(events), "replay differs from the live fold"
        rows.append(("log size", f"{path.stat().st_size / n:.0f} bytes/event", ""))

    for count in (n // 10, n):
        live, peak = state_memory(count)
        rows.append((f"fold streaming {count:,} events", f"{live} live rollouts, peak {peak / 2**20:.1f} MiB", "flat"))

    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"{'benchmark':<{width}}  {'measured':>{value_width}}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {target}")


def _fold_with_folder(events: list, folder_class: Callable[[], Any], snapshot: bool = False) -> None:
    folder = folder_class()
    if snapshot:
        for event in events:
            folder.apply(event)
            folder.state  # noqa: B018  (a shell that reads the state after every event)
    else:
        for event in events:
            folder.apply(event)


def _apply_each(events: list, apply_one: Callable[[Any, Any], Any], empty: Any) -> None:
    state = empty
    for event in events:
        state = apply_one(state, event)


if __name__ == "__main__":
    main()
