"""Where a run's update goes: its wall time split into the engine's passes, the training
step and the rest, per update, from the run's ``metrics.jsonl``.

For each run directory: the mean over its updates (the first ``--skip`` left out: the
engine's first passes compile shapes) of the update's wall time, the time the trainer
waited for its batch split into the engine's decode steps, its prefill passes and the
rest (the executor, scoring, the log), and the training step, the weight sync and
what is left (advantages, checkpoint, the sample store, the metrics line). An engine
that does not time its passes (``decode_s``, ``prefill_s``) leaves those columns
empty. The H200 profile of the Hugging Face proof (docs/training.md) is::

    python3 benchmarks/update_parts.py runs/prof/sync runs/prof/async-4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parts(run_dir: Path, skip: int) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if len(rows) <= skip + 1:
        raise SystemExit(f"{run_dir}: {len(rows)} updates, too few to leave out the first {skip}")
    first, last = rows[skip], rows[-1]
    used = rows[skip + 1:]
    n = len(used)
    delta = lambda key: (last.get(key, 0) - first.get(key, 0)) / n  # noqa: E731  (counters: per update)
    mean = lambda key: sum(r.get(key, 0.0) for r in used) / n  # noqa: E731
    timed = "decode_s" in last and "prefill_s" in last
    steps, passes = delta("decode_steps"), delta("prefills")
    out = {
        "updates": n, "wall_s": delta("wall_s"), "collect_s": mean("wait_s"),
        "decode_steps": steps, "rows_per_step": delta("generated_tokens") / steps if steps else 0.0,
        "prefill_passes": passes, "prefill_rows": delta("prefill_rows") if "prefill_rows" in last else float("nan"),
        "prefill_tokens": delta("prefill_tokens") if "prefill_tokens" in last else float("nan"),
        "step_s": mean("step_s"), "sync_s": mean("sync_s"),
    }
    out["decode_s"] = delta("decode_s") if timed else float("nan")
    out["prefill_s"] = delta("prefill_s") if timed else float("nan")
    out["collect_other_s"] = out["collect_s"] - out["decode_s"] - out["prefill_s"]
    out["update_other_s"] = out["wall_s"] - out["collect_s"] - out["step_s"] - out["sync_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (each with a metrics.jsonl)")
    parser.add_argument("--skip", type=int, default=5, help="leave out the first updates (default 5)")
    args = parser.parse_args()
    ms = lambda s: f"{1000 * s:.1f}"  # noqa: E731
    print("| run | updates | update ms | waiting for the batch ms | decode steps: ms (steps x ms, rows) | prefill passes: ms "
          "(passes, rows, tokens) | rest of waiting ms | training step ms | weight sync ms | rest ms |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            parser.error(f"{run}: no metrics.jsonl (not a train run's directory)")
        p = parts(run, args.skip)
        per_step = p["decode_s"] / p["decode_steps"] if p["decode_steps"] else 0.0
        print(f"| {run.name} | {p['updates']} | {ms(p['wall_s'])} | {ms(p['collect_s'])} | "
              f"{ms(p['decode_s'])} ({p['decode_steps']:.1f} x {ms(per_step)}, {p['rows_per_step']:.0f}) | "
              f"{ms(p['prefill_s'])} ({p['prefill_passes']:.2f}, {p['prefill_rows']:.0f}, {p['prefill_tokens']:.0f}) | "
              f"{ms(p['collect_other_s'])} | {ms(p['step_s'])} | {ms(p['sync_s'])} | {ms(p['update_other_s'])} |")


if __name__ == "__main__":
    main()
