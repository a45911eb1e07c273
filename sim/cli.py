"""``rollout-ledger simulate`` and ``rollout-ledger sweep``.

``simulate`` runs a scenario (a TOML file, a built-in name, or the embedded
default) once per staleness bound in ``--compare`` and prints the runs side by
side; ``sweep`` runs a grid of overrides over worker processes and writes a CSV
and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.log import LogError
from engine.log.files import OutputError, check_directory, check_output
from sim.config import Scenario, ScenarioError, ScenarioFileError, load, to_toml
from sim.scenarios import BUILTIN, builtin
from sim.simulator import Simulation, SimulationStalled
from sim.summary import Summary, format_spread, format_table, spread, to_json
from sim.raysweep import BackendError
from sim.sweep import BACKENDS, parse_grid, plot, rows, sweep, write_csv

#: The staleness bounds the bare ``simulate`` compares.
DEFAULT_COMPARE = "0,1,2,4,8,inf"


def register(subparsers: Any) -> None:
    """Add the ``simulate`` and ``sweep`` commands."""
    simulate = subparsers.add_parser(
        "simulate",
        help="simulate an asynchronous RL cluster and compare staleness bounds",
        description=(
            "Simulate a cluster driven by the ledger. SCENARIO is a TOML file or a built-in name "
            f"({', '.join(BUILTIN)}); without it, the embedded default scenario runs. Every bound in "
            "--compare is run and shown side by side."
        ),
    )
    simulate.add_argument("scenario", nargs="?", metavar="SCENARIO", help="TOML file or built-in scenario name")
    _common(simulate)
    simulate.add_argument(
        "--compare",
        type=_bounds,
        default=DEFAULT_COMPARE,
        metavar="LIST",
        help=f"max_staleness values to compare (default {DEFAULT_COMPARE}); 'none' runs the scenario's own value",
    )
    simulate.add_argument(
        "--log", metavar="PATH", help="write each run's SQLite event log (PATH, or PATH-staleness<k>.db when comparing)"
    )
    simulate.add_argument(
        "--seeds", type=_positive, default=1, metavar="N",
        help="simulate each bound with N seeds (run.seed and the N-1 after it) and show each figure's mean and its range "
             "over them; a calibrated scenario that replays its runs' answers follows run k's for seed k, modulo their "
             "number (default 1)",
    )
    simulate.add_argument("--show-config", action="store_true", help="print the scenario as TOML (every field documented) and exit")
    simulate.set_defaults(run=run_simulate, inputs=("scenario",))

    grid = subparsers.add_parser(
        "sweep",
        help="run a grid of scenarios in parallel; write a CSV and a plot",
        description="Run SCENARIO once per combination of the --grid axes, over worker processes.",
    )
    grid.add_argument("scenario", metavar="SCENARIO", help="TOML file or built-in scenario name")
    _common(grid)
    grid.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="an axis to sweep (repeatable)")
    grid.add_argument(
        "--workers", type=_positive, default=os.cpu_count() or 1, help="worker processes (default: one per CPU; results do not depend on it)"
    )
    grid.add_argument(
        "--backend", choices=BACKENDS, default="local",
        help="where the runs go: local worker processes (default), or Ray tasks (the [ray] extra)",
    )
    grid.add_argument(
        "--address", metavar="ADDR",
        help="with --backend ray: the Ray cluster to join (e.g. ray://head:10001, or auto); default: start a local Ray of --workers CPUs",
    )
    grid.add_argument("--out", default="sweep", metavar="DIR", help="folder for summaries.csv and sweep.png (default: sweep)")
    grid.set_defaults(run=run_sweep, inputs=("scenario",))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE", help="override a field, e.g. ledger.batch_size=128"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _whole(text: str, minimum: int, wrong: str, low: str) -> int:
    """``text`` as a whole number of at least ``minimum``; ``wrong`` and ``low`` are the
    messages (formatted with ``text`` and ``value``) when it is not one, or is less."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(wrong.format(text=text)) from None
    if value < minimum:
        raise argparse.ArgumentTypeError(low.format(value=value))
    return value


def _positive(text: str) -> int:
    """An integer of at least 1 (``--workers``)."""
    return _whole(text, 1, "expected a whole number, got {text!r}", "must be at least 1, got {value}")


#: Words ``--compare`` reads as an unbounded staleness.
_UNBOUNDED = ("inf", "infinity", "unbounded")


def _bounds(text: str) -> list[str] | None:
    """``--compare``: staleness bounds (whole numbers of at least 0, or ``inf``), each
    once; ``none`` runs the scenario's own bound.  The default is parsed too."""
    if text.strip().lower() == "none":
        return None
    bounds: list[str] = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        if item.lower() in _UNBOUNDED:
            bound = "inf"
        else:
            number = _whole(item, 0, "{text!r} is not a staleness bound (a whole number of at least 0, or inf)",
                            "staleness bound {value} is negative")
            bound = str(number)
        if bound in bounds:
            raise argparse.ArgumentTypeError(f"staleness bound {item!r} is given twice")
        bounds.append(bound)
    if not bounds:
        raise argparse.ArgumentTypeError("give staleness bounds like 0,1,2,inf, or 'none'")
    return bounds


def _scenario(name: str | None, overrides: list[str]) -> Scenario:
    if name is not None and not Path(name).exists() and name in BUILTIN:
        return builtin(name).with_overrides(overrides)
    if name is not None and not Path(name).exists():
        raise ScenarioFileError(name, f"no such scenario file, nor a built-in scenario ({', '.join(BUILTIN)})")
    return load(name, overrides) if name is not None else builtin("default").with_overrides(overrides)


def _inputs(name: str | None, scenario: Scenario) -> list[Path]:
    """The files a run reads: the scenario file and any empirical length files."""
    found = [Path(name)] if name is not None and Path(name).exists() else []
    for dist in (scenario.workload.prompt_len, scenario.workload.response_len):
        if dist.kind == "empirical":
            found.append(Path(dist.path))
    return found


def _log_path(base: str | None, bound: str, many: bool, inputs: list[Path], seed: int | None = None) -> Path | None:
    """Where the run with staleness ``bound`` (and ``seed``, where several seeds run)
    writes its event log: a new file, checked now, before any run."""
    if base is None:
        return None
    path = Path(base)
    if path.is_dir() or not path.name:
        raise OutputError(f"{base}: is a directory; give --log a file name")
    if many or seed is not None:
        tail = "" if seed is None else f"-seed{seed}"
        path = path.with_name(f"{path.stem}{f'-staleness{bound}' if many else ''}{tail}{path.suffix or '.db'}")
    if path.exists() or path.is_symlink():
        raise OutputError(f"{path}: already exists; remove it or choose another --log path")
    return check_output(path, *inputs)


def run_simulate(args: argparse.Namespace) -> int:
    """The ``simulate`` command."""
    try:
        scenario = _scenario(args.scenario, args.overrides)
        if args.show_config:
            print(to_toml(scenario))
            return 0
        bounds: list[str] | None = args.compare  # parsed by _bounds, the default too
        own = scenario.ledger.max_staleness
        compared = [("inf" if own is None else str(own), scenario)]
        if bounds is not None:
            compared = [(b, scenario.with_overrides([f"ledger.max_staleness={b}"])) for b in bounds]
        seeds = [scenario.run.seed + k for k in range(args.seeds)] if args.seeds > 1 else [None]
        runs = [(bound, run if seed is None else run.with_overrides([f"run.seed={seed}"]), seed)
                for bound, run in compared for seed in seeds]
        inputs = _inputs(args.scenario, scenario)
        logs = [_log_path(args.log, bound, len(compared) > 1, inputs, seed) for bound, _, seed in runs]
    except (ScenarioError, OutputError) as err:
        return _fail(str(err))
    total = sum(s.run.rollouts for _, s, _ in runs)
    summaries: list[Summary] = []
    with tqdm(total=total, unit="rollout", desc="simulating", disable=args.no_progress, file=sys.stderr) as bar:
        for (bound, run, seed), log in zip(runs, logs):
            done = 0

            def advance(trained: int) -> None:
                nonlocal done
                step = min(trained, run.run.rollouts) - done
                done += step
                bar.update(step)

            bar.set_postfix_str(f"max_staleness={bound}" + ("" if seed is None else f" seed={seed}"))
            try:
                summaries.append(Simulation(run, log=log, progress=advance).run())
            except (ScenarioError, LogError) as err:  # e.g. an empirical distribution's file
                return _fail(str(err))
            except SimulationStalled as err:
                return _fail(str(err), 1)
            bar.update(run.run.rollouts - done)
    if args.seeds > 1:
        spreads = [spread(summaries[i:i + args.seeds]) for i in range(0, len(summaries), args.seeds)]
        print(json.dumps(spreads, indent=2) if args.format == "json" else format_spread(spreads))
    elif args.format == "json":
        print(to_json(summaries))
    else:
        print(format_table(summaries))
    return 0


def _fail(message: str, status: int = 2) -> int:
    print(f"rollout-ledger: {message}", file=sys.stderr)
    return status


def run_sweep(args: argparse.Namespace) -> int:
    """The ``sweep`` command: the scenario, the axes and the outputs are checked before
    the first run; the CSV and the PNG are each written whole or not at all."""
    out = Path(args.out)
    try:
        if args.address is not None and args.backend != "ray":
            raise BackendError(f"--address {args.address}: names a Ray cluster, so it needs --backend ray")
        scenario = _scenario(args.scenario, args.overrides)
        axes = parse_grid(args.grid)
        check_directory(out)
        inputs = _inputs(args.scenario, scenario)
        if out.exists():
            for name in ("summaries.csv", "sweep.png"):
                check_output(out / name, *inputs)
        total = 1
        for _, values in axes:
            total *= len(values)
        with tqdm(total=total, unit="run", desc="sweeping", disable=args.no_progress, file=sys.stderr) as bar:
            results = sweep(
                scenario, axes, workers=args.workers, on_result=lambda: bar.update(1), backend=args.backend, address=args.address
            )
    except (ScenarioError, OutputError, BackendError) as err:
        return _fail(str(err))
    except SimulationStalled as err:
        return _fail(str(err), 1)
    table = rows(axes, results)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return _fail(f"{out}: cannot be made: {err.strerror or err}")
    write_csv(table, out / "summaries.csv")
    written = [out / "summaries.csv"]
    try:
        plot(axes, table, out / "sweep.png")
        written.append(out / "sweep.png")
    except ImportError:  # matplotlib is the optional [plot] extra
        print("rollout-ledger: no sweep.png: matplotlib is not installed (pip install 'rollout-ledger[plot]')", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(table, indent=2))
    else:
        labels = [{key: value for key, _, value in (item.partition("=") for item in point.overrides)} for point, _ in results]
        print(format_table([summary for _, summary in results], labels))
        print("wrote " + " and ".join(map(str, written)))
    return 0
