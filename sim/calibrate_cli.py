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
            "Fit decode-step, training-step and weight-sync costs and the response-length "
            "distribution to LOGs (run directories or event logs with times); print R-squared "
            "and residual percentiles; write a scenario TOML for simulate."
        ),
    )
    parser.add_argument("logs", nargs="+", metavar="LOG", help="a run directory, events.sqlite, or a .jsonl/.db log")
    parser.add_argument("-o", "--out", required=True, metavar="SCENARIO", help="scenario TOML to write")
    parser.add_argument("--servers", type=int, default=1, help="generation servers of the calibrated cluster (default 1)")
    parser.add_argument("--empirical", action="store_true", help="response lengths resampled from the log instead of the lognormal fit")
    parser.add_argument("--base", metavar="SCENARIO", help="scenario whose other fields the fit keeps (default: the embedded one)")
    parser.set_defaults(run=run_calibrate, inputs=())  # every error names its log itself


def run_calibrate(args: argparse.Namespace) -> int:
    from sim.calibrate import calibrate
    from sim.config import load, save

    if args.servers < 1:
        raise ValueError(f"--servers: {args.servers} must be at least 1")
    inputs = [Path(p) for p in args.logs]
    out = check_output(args.out, *inputs, *[p / "events.sqlite" for p in inputs if p.is_dir()])
    base = load(args.base) if args.base else None
    result = calibrate(list(args.logs), base=base, servers=args.servers, empirical=args.empirical)
    print(result.report())
    save(result.scenario, out)
    print(f"wrote {out}")
    return 0
