"""``rollout-ledger calibrate LOG [LOG ...] -o scenario.toml``: fit the simulator to
timed logs (a run directory, its ``events.sqlite``, or a simulated log), print the
fit quality and write a scenario that ``simulate`` takes as is."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.log.files import check_output


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` command."""
    parser = subparsers.add_parser(
        "calibrate",
        help="fit the simulator's cost model and length distributions to timed logs",
        description=(
            "Fit decode-step, prefill, training-step, recompute, weight-sync and per-update costs and the "
            "response-length distribution to LOGs (run directories or event logs with times); print R-squared "
            "and residual percentiles; write a scenario TOML for simulate."
        ),
    )
    parser.add_argument("logs", nargs="+", metavar="LOG", help="a run directory, events.sqlite, or a .jsonl/.db log")
    parser.add_argument("-o", "--out", required=True, metavar="SCENARIO", help="scenario TOML to write")
    parser.add_argument("--servers", type=int, default=1, help="generation servers of the calibrated cluster (default 1)")
    parser.add_argument(
        "--lengths", choices=("empirical", "lognormal"), default="empirical",
        help="response lengths: the observed ones, written beside SCENARIO as SCENARIO_STEM.lengths.csv (default), or the lognormal fit",
    )
    parser.add_argument("--base", metavar="SCENARIO", help="scenario whose other fields the fit keeps (default: the embedded one)")
    parser.add_argument(
        "--step-profile", metavar="CSV",
        help="the trainer's update timed alone at several batch sizes (rollout-ledger profile-step): the training step is "
             "fitted as a floor then a line in padded tokens, placed at the runs' own steps, for batches the runs never had",
    )
    parser.add_argument(
        "--replay", action="store_true",
        help="then simulate each real run again under its own settings with its own groups, in the order it submitted them, and "
             "print simulated against measured tokens/s, staleness and trainer idle: the cost model's error apart from the lengths'",
    )
    parser.set_defaults(run=run_calibrate, inputs=())  # every error names its log itself


def run_calibrate(args: argparse.Namespace) -> int:
    from sim.calibrate import calibrate
    from sim.config import load, save

    if args.servers < 1:
        raise ValueError(f"--servers: {args.servers} must be at least 1")
    inputs = [Path(p) for p in args.logs]
    logs = [*inputs, *[p / "events.sqlite" for p in inputs if p.is_dir()]]
    out = check_output(args.out, *logs)
    lengths = check_output(out.with_name(out.stem + ".lengths.csv"), *logs, out) if args.lengths == "empirical" else None
    base = load(args.base) if args.base else None
    profile = None
    if args.step_profile:
        from sim.calibrate import read_step_profile

        profile = read_step_profile(args.step_profile)
    result = calibrate(list(args.logs), base=base, servers=args.servers, lengths_file=lengths, step_profile=profile)
    print(result.report())
    save(result.scenario, out)
    print(f"wrote {out}" + (f" and {lengths}" if lengths is not None else ""))
    if args.replay:
        from sim.replay import replay_table

        runs = [p if p.is_dir() else p.parent for p in inputs]
        real = [run for run in runs if (run / "run.json").is_file() and (run / "metrics.jsonl").is_file()]
        if not real:
            print("replay: no real run among the logs (a train run directory with run.json and metrics.jsonl)")
            return 0
        _, table = replay_table(result.scenario, real)
        print("replayed (simulated/measured, error; each run's own settings and groups, in the order it submitted them):")
        print(table)
    return 0
