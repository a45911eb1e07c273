"""The ``report`` command: one self-contained HTML page of one or more event logs.

Each LOG is a log file (.sqlite or .jsonl) or a ``train`` run directory (events.sqlite,
with metrics.jsonl beside it).  Every input is checked before the output is touched;
the page is written whole or not at all.  Needs the ``[plot]`` extra."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.cli import fail
from engine.log.files import atomic_output, check_output


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser("report", help="an HTML page of figures of one or more logs (extra [plot])")
    report.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="log file (.sqlite, .jsonl) or train run directory")
    report.add_argument("--out", type=Path, default=Path("report"), help="output directory (report.html is written there)")
    report.add_argument("--no-progress", action="store_true", help="no progress bar")
    report.set_defaults(run=_report, inputs=("logs",))


def _problem(path: Path) -> str | None:
    from engine.report.extract import locate

    events, _ = locate(path)
    if not path.exists():
        return "no such file or directory"
    if path.is_dir() and not events.is_file():
        return "is a directory without events.sqlite (not a train run)"
    if not events.is_file():
        return "is not a regular file"
    if not os.access(events, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def _report(args: argparse.Namespace) -> int:
    for path in args.logs:
        problem = _problem(path)
        if problem:
            return fail(f"{path}: {problem}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return fail("report needs matplotlib: pip install 'rollout-ledger[plot]'")
    from tqdm import tqdm

    from engine.log import LogError
    from engine.report.extract import extract, locate
    from engine.report.html import page

    if args.out.exists() and not args.out.is_dir():
        return fail(f"{args.out}: is not a directory")
    runs = []
    with tqdm(total=len(args.logs), unit="log", desc="reading", disable=args.no_progress, file=sys.stderr) as bar:
        for path in args.logs:
            try:
                runs.append(extract(path, label=path.name or str(path)))
            except LogError as err:
                return fail(f"{path}: {err}")
            bar.update()
    with tqdm(unit="figure", desc="drawing", disable=args.no_progress, file=sys.stderr) as bar:
        text = page(runs, progress=lambda: bar.update())
    args.out.mkdir(parents=True, exist_ok=True)  # only once every log has been read
    out = check_output(args.out / "report.html", *(locate(p)[0] for p in args.logs))
    with atomic_output(out, "w") as handle:
        handle.write(text)
    print(out)
    return 0
