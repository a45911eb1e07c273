"""Time ``rollout-ledger report`` on a large simulated log and print a table.

    python benchmarks/bench_report.py [--events 1000000]

The log is the mixed workload of :mod:`benchmarks.mixed_log` (the one ``bench_replay``
uses), written to a temporary SQLite file; the command runs in a fresh interpreter,
so the time includes start-up, reading every event once, drawing and writing the page."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.mixed_log import mixed_log, write_log  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "mixed.sqlite"
        events = mixed_log(args.events)
        write_log(log, events)
        n = len(events)
        del events
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "engine.cli", "report", str(log), "--out", str(Path(tmp) / "out"), "--no-progress"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
        seconds = time.perf_counter() - started
        size = (Path(tmp) / "out" / "report.html").stat().st_size
    print(f"{'what':<40} {'wall s':>8} {'page KiB':>9}")
    print(f"{f'report of {n:,} events (SQLite)':<40} {seconds:>8.1f} {size / 1024:>9.0f}")


if __name__ == "__main__":
    main()
