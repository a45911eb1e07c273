"""A machine of two speeds: the engine's decode step update by update, split into a fast
and a slow mode, and each run's share of updates in the slow one.

For each run directory, from its ``metrics.jsonl`` counters: every update's mean decode
step (its decode seconds over its decode steps; the first ``--skip`` updates left out).
All runs' updates pooled are split in two at the threshold that minimises the spread
within the two groups (one-dimensional two-means); each run's row gives its mean step,
its updates' mean in each mode, the share of its updates in the slow mode and its
spells (runs of consecutive updates in one mode).  A run's mean step is then its slow
share's draw: where that share moves from run to run, so does every figure that rests on
the decode step, whatever the model.  Round 15 (docs/simulator.md)::

    python3 benchmarks/step_spells.py runs/qfid5/calibration runs/qfid5/calibration-2 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def update_steps(run_dir: Path, skip: int) -> list[float]:
    """Each update's mean decode step in seconds (updates with no decode step left out)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if rows and "decode_s" not in rows[-1]:
        raise SystemExit(f"{run_dir}: its engine did not time its decode steps (no decode_s)")
    out, steps, seconds = [], 0, 0.0
    for number, row in enumerate(rows):
        d_steps, d_seconds = row["decode_steps"] - steps, row["decode_s"] - seconds
        steps, seconds = row["decode_steps"], row["decode_s"]
        if number >= skip and d_steps > 0:
            out.append(d_seconds / d_steps)
    return out


def two_means(values: list[float]) -> float:
    """The threshold that splits ``values`` in two with the least squared spread within
    the two groups (the midpoint between the last of the low group and the first of the high)."""
    ordered = sorted(values)
    if len(ordered) < 2:
        raise ValueError("two values at least are needed to split them")
    total, total2, n = sum(ordered), sum(v * v for v in ordered), len(ordered)
    best, cut, low, low2 = float("inf"), 1, 0.0, 0.0
    for k in range(1, n):
        low, low2 = low + ordered[k - 1], low2 + ordered[k - 1] ** 2
        high, high2 = total - low, total2 - low2
        spread = (low2 - low * low / k) + (high2 - high * high / (n - k))
        if spread < best:
            best, cut = spread, k
    return (ordered[cut - 1] + ordered[cut]) / 2


def spells(values: list[float], threshold: float) -> int:
    """Runs of consecutive values on one side of ``threshold``."""
    sides = [v > threshold for v in values]
    return sum(1 for k, side in enumerate(sides) if k == 0 or side != sides[k - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (each with a metrics.jsonl)")
    parser.add_argument("--skip", type=int, default=1, help="leave out the first updates (default 1: the engine's first shapes)")
    args = parser.parse_args()
    found = {}
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            parser.error(f"{run}: no metrics.jsonl (not a train run's directory)")
        found[run] = update_steps(run, args.skip)
    pooled = [v for values in found.values() for v in values]
    if len(pooled) < 2:
        parser.error("fewer than two timed updates in all the runs")
    threshold = two_means(pooled)
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    fast, slow = [v for v in pooled if v <= threshold], [v for v in pooled if v > threshold]
    print(f"{len(pooled)} updates in {len(found)} runs: fast mode {1e3 * mean(fast):.1f} ms a step ({len(fast)} updates), "
          f"slow mode {1e3 * mean(slow):.1f} ms ({len(slow)}), split at {1e3 * threshold:.1f} ms")
    print("| run | updates | mean step ms | fast ms | slow ms | slow share | spells |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run, values in found.items():
        low, high = [v for v in values if v <= threshold], [v for v in values if v > threshold]
        print(f"| {run.name} | {len(values)} | {1e3 * mean(values):.1f} | {1e3 * mean(low):.1f} | {1e3 * mean(high):.1f} | "
              f"{len(high) / max(1, len(values)):.2f} | {spells(values, threshold)} |")


if __name__ == "__main__":
    main()
