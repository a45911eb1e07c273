"""Summarise repeated ``gpu_async.py`` commands (one per seed) run by run, across seeds.

Each argument is a ``results.json`` written by ``benchmarks/gpu_async.py``; runs are
matched by name.  Prints, per run, the mean and the per-seed values of the final
training reward (last 20% of updates) and the held-out reward, the mean staleness
and the clip fraction, as a markdown table.  ``--save`` also writes the runs of every
seed in one compact JSON file (per update: reward, staleness, clip fraction), which
``notebooks/training.ipynb`` plots.

    python benchmarks/ablation_summary.py $OUT/seed*.json --save benchmarks/results/gpu_ablation.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarise(paths: list[Path]) -> str:
    """The markdown table of the runs in ``paths`` (one ``results.json`` per seed)."""
    by_name: dict[str, list[dict]] = {}
    for path in paths:
        results = json.loads(path.read_text())
        for run in results["runs"]:
            by_name.setdefault(run["name"], []).append(run)
    header = (
        "| run | max_staleness | objective | seeds | final reward, mean (per seed) | held-out reward, mean (per seed) "
        "| mean staleness | ratio outside the clip range |"
    )
    lines = [header, "|" + "---|" * 8]
    for name, runs in by_name.items():
        config = runs[0]["config"]
        final = [r["summary"]["final_reward"] for r in runs]
        held = [r["summary"]["eval_reward"] for r in runs]
        staleness = _mean([r["summary"]["staleness_mean"] for r in runs])
        clip = _mean([_mean([m.get("clip_fraction", 0.0) for m in r["metrics"]]) for r in runs])
        lines.append(
            f"| {name} | {config['max_staleness']} | {config['objective']} | {len(runs)} | "
            f"{_mean(final):.3f} ({', '.join(f'{v:.2f}' for v in final)}) | "
            f"{_mean(held):.3f} ({', '.join(f'{v:.2f}' for v in held)}) | {staleness:.2f} | {clip:.2f} |"
        )
    return "\n".join(lines)


#: Per-update metrics kept by :func:`compact`.
CURVE_KEYS = ("step", "reward", "staleness_mean", "clip_fraction", "wall_s")


def compact(paths: list[Path]) -> dict:
    """The runs of ``paths`` with their per-update curves reduced to :data:`CURVE_KEYS`."""
    seeds = []
    for path in paths:
        results = json.loads(path.read_text())
        runs = [
            {
                "name": run["name"], "config": run["config"], "summary": run["summary"],
                "curves": {key: [round(m.get(key, 0.0), 4) for m in run["metrics"]] for key in CURVE_KEYS},
            }
            for run in results["runs"]
        ]
        seeds.append({"meta": results["meta"], "runs": runs})
    return {"seeds": seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="results.json files of gpu_async.py, one per seed")
    parser.add_argument("--save", type=Path, help="also write every seed's runs, compacted, to this JSON file")
    args = parser.parse_args()
    missing = [str(p) for p in args.results if not p.exists()]
    if missing:
        parser.error(f"no such results file: {', '.join(missing)}")
    print(summarise(args.results))
    if args.save:
        args.save.write_text(json.dumps(compact(args.results)))


if __name__ == "__main__":
    main()
