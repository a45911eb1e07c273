"""The ledger's cost per event as ready rollouts pile up: the same workload under
``max_staleness`` 4 and unbounded, with the same events in both.

Generation runs twice as fast as training: each tick the generator finishes up to
``2 * batch`` running rollouts and refills the free slots as the capacity rule allows,
and the trainer takes one batch (pause, consume, version bump, un-pause).  Under
``max_staleness`` 4 the capacity rule holds the generator back, so a few batches wait;
unbounded, the ready rollouts pile up (to about half the run) and the trainer drains
them at the end.  Every rollout is enqueued, started, completed and consumed once in
both runs, and there is one weight update per batch, so the two runs fold the same
number of events and any difference is the cost of a large ready queue.  Each run
goes through the :class:`~engine.ledger.Ledger` as a shell would (no log file).

    python benchmarks/bench_ready.py                    # 100,000 rollouts, best of 3
    python benchmarks/bench_ready.py --rollouts 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.config import Config  # noqa: E402
from engine.core.reducer import READY, RUNNING  # noqa: E402
from engine.ledger import Ledger  # noqa: E402


def workload(rollouts: int, max_staleness: int | None, batch: int = 64, max_concurrent: int = 256) -> dict[str, float]:
    """Run the workload once; returns seconds, events, the largest ready queue and updates."""
    ledger = Ledger(Config(max_concurrent=max_concurrent, batch_size=batch, max_staleness=max_staleness))
    running: list[str] = []
    admitted = consumed = updates = peak_ready = 0
    collecting = gc.isenabled()
    gc.collect()
    start = time.perf_counter()
    while consumed < rollouts:
        finished, running = running[: 2 * batch], running[2 * batch :]
        for rollout in finished:
            ledger.complete(rollout)
        room = min(ledger.capacity, rollouts - admitted)
        if room > 0:
            keys = [f"p{admitted + i}" for i in range(room)]
            ledger.admit(*keys)
            running.extend(keys)
            admitted += room
        peak_ready = max(peak_ready, ledger.count(READY))
        ledger.pause()
        taken = ledger.prepare_batch(min(batch, rollouts - consumed))
        if taken is not None:
            consumed += len(taken)
            ledger.finish_update()
            updates += 1
        else:
            ledger.unpause()
    seconds = time.perf_counter() - start
    if not collecting:
        gc.disable()
    assert ledger.count(RUNNING) == 0 and ledger.count(READY) == 0, "the workload left rollouts behind"
    return {"seconds": seconds, "events": ledger.state.events, "peak_ready": peak_ready, "updates": updates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each setting (in turns); the fastest is kept")
    args = parser.parse_args()
    settings = {"4": 4, "inf": None}
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, staleness in settings.items():
            result = workload(args.rollouts, staleness)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    print(f"{'max_staleness':>13}  {'rollouts':>9}  {'events':>9}  {'updates':>7}  {'peak ready':>10}  {'seconds':>7}  {'us/event':>8}  {'x bounded':>9}")
    print("-" * 88)
    base = best["4"]["seconds"]
    for name, r in best.items():
        print(
            f"{name:>13}  {args.rollouts:>9,}  {r['events']:>9,}  {r['updates']:>7,}  {r['peak_ready']:>10,}  "
            f"{r['seconds']:>7.2f}  {r['seconds'] / r['events'] * 1e6:>8.2f}  {r['seconds'] / base:>8.2f}x"
        )


if __name__ == "__main__":
    main()
