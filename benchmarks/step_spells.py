"""A machine of two speeds: the engine's decode step update by update, split into a fast
and a slow mode, and each run's share of updates in the slow one.

For each run directory, from its ``metrics.jsonl`` counters: every update's mean decode
step (its decode seconds over its decode steps; the first ``--skip`` updates left out).
All runs' updates pooled are split in two at the threshold that minimises the spread
within the two groups (one-dimensional two-means); each run's row gives its mean step,
its updates' mean in each mode, the share of its updates in the slow mode and its
spells (runs of consecutive updates in one mode).  A run's mean step is then its slow
share's draw: where that share moves from run to run, so does every figure that rests on
the decode step, whatever the model.  Where a run holds a ``gpu_trace.csv`` (the
fidelity study samples the GPU beside each run) and its metrics lines their ``time``,
each update is also given the GPU's mean SM clock and load over it, and each mode its
mean of them: the same clock in both modes says the slow steps are the host's.  Where
it holds a ``host_trace.csv`` (``benchmarks/host_trace.py``, run by the study on a core
its runs do not use), each mode also gets that spare core's speed (microseconds per
1,000 turns of a Python loop) and how busy the run's own cores were: a spare core slower
in the slow mode says the whole host slowed down.
Round 15 (docs/simulator.md)::

    python3 benchmarks/step_spells.py runs/qfid5/calibration runs/qfid5/calibration-2 ...
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # (run as a script: benchmarks/ is a package of the repository)
    sys.path.insert(0, str(ROOT))

from benchmarks.host_trace import correlation, read_trace, two_means  # noqa: E402


def timed_updates(run_dir: Path, skip: int) -> list[tuple[float, tuple[float, float] | None]]:
    """Each update's mean decode step in seconds (updates with no decode step, and the
    first ``skip``, left out), with its span in seconds since the epoch (its metrics
    line's ``time`` and the one before; None where a line has no ``time``)."""
    from benchmarks.fidelity import metrics_lines

    rows = metrics_lines(run_dir)
    if rows and "decode_s" not in rows[-1]:
        raise SystemExit(f"{run_dir}: its engine did not time its decode steps (no decode_s)")
    out: list[tuple[float, tuple[float, float] | None]] = []
    steps, seconds = 0, 0.0
    for number, row in enumerate(rows):
        d_steps, d_seconds = row["decode_steps"] - steps, row["decode_s"] - seconds
        steps, seconds = row["decode_steps"], row["decode_s"]
        if number >= skip and d_steps > 0:
            before = rows[number - 1].get("time") if number > 0 else None
            out.append((d_seconds / d_steps, (before, row["time"]) if before is not None and "time" in row else None))
    return out


def gpu_trace(run_dir: Path) -> list[tuple[float, float, float]]:
    """The run's GPU samples (``gpu_trace.csv``: nvidia-smi's local timestamp, SM clock,
    memory clock, load, ...) as (seconds since the epoch, SM MHz, load %); empty where
    there is none.  Unreadable rows (a field the driver does not report) are skipped."""
    path = run_dir / "gpu_trace.csv"
    if not path.is_file():
        return []
    out = []
    for row in csv.reader(path.read_text().splitlines()):
        try:
            when = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((when, float(row[1]), float(row[3])))
        except (IndexError, ValueError):
            continue
    return out


def host_trace(run_dir: Path) -> list[tuple[float, float, float]]:
    """The run's host samples (``host_trace.csv``) as (seconds since the epoch, a spare
    core's microseconds per 1,000 loop turns, the run's cores' busy share); empty where
    there is none."""
    nan = float("nan")
    return [(r["time"], r["loop_us"], nan if r["busy"] is None else r["busy"])
            for r in read_trace(run_dir / "host_trace.csv") if r["time"] is not None and r["loop_us"] is not None]


def over(trace: list[tuple[float, float, float]], span: tuple[float, float] | None) -> tuple[float, float] | None:
    """The means of the two sampled figures (SM clock and load; loop time and busy share)
    of the samples within ``span``; None where none fall in it."""
    if span is None:
        return None
    inside = [(mhz, load) for when, mhz, load in trace if span[0] <= when <= span[1]]
    if not inside:
        return None
    return sum(m for m, _ in inside) / len(inside), sum(u for _, u in inside) / len(inside)


def spells(values: list[float], threshold: float) -> int:
    """Runs of consecutive values on one side of ``threshold``."""
    sides = [v > threshold for v in values]
    return sum(1 for k, side in enumerate(sides) if k == 0 or side != sides[k - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (each with a metrics.jsonl)")
    parser.add_argument("--skip", type=int, default=1, help="leave out the first updates (default 1: the engine's first shapes)")
    args = parser.parse_args()
    found, gpu, host = {}, {}, {}
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            parser.error(f"{run}: no metrics.jsonl (not a train run's directory)")
        updates = timed_updates(run, args.skip)
        found[run] = [step for step, _ in updates]
        trace = gpu_trace(run)
        gpu[run] = [over(trace, span) for _, span in updates] if trace else []
        samples = host_trace(run)
        host[run] = [over(samples, span) for _, span in updates] if samples else []
    pooled = [v for values in found.values() for v in values]
    if len(pooled) < 2:
        parser.error("fewer than two timed updates in all the runs")
    threshold = two_means(pooled)
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    fast, slow = [v for v in pooled if v <= threshold], [v for v in pooled if v > threshold]
    print(f"{len(pooled)} updates in {len(found)} run{'s' if len(found) > 1 else ''}: fast mode {1e3 * mean(fast):.1f} ms a step ({len(fast)} updates), "
          f"slow mode {1e3 * mean(slow):.1f} ms ({len(slow)}), split at {1e3 * threshold:.1f} ms")
    print("| run | updates | mean step ms | fast ms | slow ms | slow share | spells | SM MHz fast / slow | GPU load % fast / slow "
          "| spare core us fast / slow | run cores busy fast / slow |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---|---|")
    pairs: dict[str, list[tuple[float, float]]] = {"the GPU's SM clock": [], "a spare core's loop time": []}
    for run, values in found.items():
        low, high = [v for v in values if v <= threshold], [v for v in values if v > threshold]
        cells = []
        for name, sampled_over, formats in (("the GPU's SM clock", gpu[run], ("{:.0f}", "{:.0f}")),
                                             ("a spare core's loop time", host[run], ("{:.1f}", "{:.2f}"))):
            sampled = [(v, g) for v, g in zip(values, sampled_over) if g is not None]
            pairs[name] += [(v, g[0]) for v, g in sampled]
            by_mode = lambda slow, k: mean([g[k] for v, g in sampled if (v > threshold) == slow])  # noqa: E731
            cells += [f"{formats[k].format(by_mode(False, k))} / {formats[k].format(by_mode(True, k))}" if sampled else "-"
                      for k in (0, 1)]
        print(f"| {run.name} | {len(values)} | {1e3 * mean(values):.1f} | {1e3 * mean(low):.1f} | {1e3 * mean(high):.1f} | "
              f"{len(high) / max(1, len(values)):.2f} | {spells(values, threshold)} | {' | '.join(cells)} |")
    for name, found_pairs in pairs.items():
        if len(found_pairs) > 2:
            r = correlation(found_pairs)
            said = f"{r:+.2f}" if r == r else f"none ({name} did not change)"
            print(f"correlation of an update's decode step with {name} over it: {said} ({len(found_pairs)} updates)")


if __name__ == "__main__":
    main()
