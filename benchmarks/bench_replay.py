"""Replay of a large log through the command line, against the library and a baseline.

    python benchmarks/bench_replay.py [--events 1000000] [--runs 3] [--baseline 10d5a40]

Builds a mixed log (benchmarks/mixed_log.py) as SQLite, then times, best of ``--runs``:

- ``python -m engine.cli replay --format json LOG``, the command as users run it, in a
  fresh interpreter, with this tree and with the ``--baseline`` revision (extracted
  with ``git archive``; ``--baseline ''`` skips it);
- the replay command alone (its module's parser, without the other command groups);
- the parts: interpreter start, building the full parser (importing every command
  module), and in this process the library ``replay``, decoding alone and folding a
  decoded list (the fold's share of the library replay).

Wall-clock seconds and each child's peak memory (max RSS).  Every figure is measured
in this run; the commands must print the library's counters or the script fails.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.mixed_log import mixed_log  # noqa: E402
from engine.cli.ledger import counters  # noqa: E402
from engine.core.reducer import fold  # noqa: E402
from engine.log import EventLog, replay  # noqa: E402

#: The replay command with only its own module's parser (no other command group imported).
ALONE = (
    "import argparse, sys; from engine.cli import ledger; p = argparse.ArgumentParser(); "
    "ledger.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.run(a))"
)
#: Library replay in a fresh interpreter, printing its seconds (for the baseline tree).
LIBRARY = (
    "import sys, time; from engine.log import replay; t = time.perf_counter(); replay(sys.argv[1]); "
    "print(time.perf_counter() - t)"
)


def child(command: list[str], tree: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of ``command`` run with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out.decode()


def best_child(runs: int, command: list[str], tree: Path) -> tuple[float, float, str]:
    results = [child(command, tree) for _ in range(runs)]
    return min(r[0] for r in results), max(r[1] for r in results), results[0][2]


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def extract(revision: str, into: Path) -> Path:
    """The tree of ``revision`` of this repository, unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True).stdout
    tree = into / f"tree-{revision}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def as_schema(path: Path, copy: Path, schema: int) -> Path:
    """A copy of the log at ``path`` marked with event ``schema`` (for an older reader;
    the mixed log holds no type newer than schema 2)."""
    shutil.copyfile(path, copy)
    db = sqlite3.connect(copy)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(schema),))
    db.close()
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", default="10d5a40", help="git revision to compare with ('' for none)")
    args = parser.parse_args()
    python = sys.executable
    rows: list[tuple[str, str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "mixed.sqlite"
        events = mixed_log(args.events)
        with EventLog(log) as store:
            for start in range(0, len(events), 10_000):
                store.append(events[start : start + 10_000])
        n = len(events)
        expected = counters(fold(events))
        folded = best_of(args.runs, lambda: fold(events))
        del events  # the children's peak memory must not include this process's copy
        gc.collect()
        cli = [python, "-m", "engine.cli", "replay", "--format", "json", str(log)]

        seconds, rss, out = best_child(args.runs, cli, ROOT)
        assert json.loads(out) == expected, "the command printed other counters than the library"
        rows.append((f"CLI replay of {n:,} events (this tree)", f"{seconds:.2f} s", f"{rss:.0f} MiB"))
        cli_seconds = seconds
        if args.baseline:
            old_tree = extract(args.baseline, Path(tmp))
            old_log = as_schema(log, Path(tmp) / "mixed-old.sqlite", 2)
            seconds, rss, out = best_child(args.runs, [*cli[:-1], str(old_log)], old_tree)
            assert json.loads(out) == expected, "the baseline printed other counters"
            rows.append((f"CLI replay, baseline {args.baseline}", f"{seconds:.2f} s", f"{rss:.0f} MiB"))
            rows.append(("  speed-up over the baseline", f"{seconds / cli_seconds:.2f}x", ""))
            library_old = min(float(child([python, "-c", LIBRARY, str(old_log)], old_tree)[2]) for _ in range(args.runs))
        seconds, rss, out = best_child(args.runs, [python, "-c", ALONE, "replay", "--format", "json", str(log)], ROOT)
        assert json.loads(out) == expected
        rows.append(("replay command alone (its own parser only)", f"{seconds:.2f} s", f"{rss:.0f} MiB"))
        seconds, rss, _ = best_child(args.runs, [python, "-c", "import engine.cli; engine.cli.build_parser()"], ROOT)
        rows.append(("  of the CLI: build the full parser (imports)", f"{seconds:.2f} s", f"{rss:.0f} MiB"))
        seconds, rss, _ = best_child(args.runs, [python, "-c", "pass"], ROOT)
        rows.append(("  of the CLI: start the interpreter", f"{seconds:.2f} s", f"{rss:.0f} MiB"))

        library = best_of(args.runs, lambda: replay(log))
        rows.append(("library replay (this process)", f"{library:.2f} s", ""))
        if args.baseline:
            rows.append((f"library replay, baseline {args.baseline}", f"{library_old:.2f} s", ""))

        def decode() -> None:
            with EventLog(log) as store:
                for _ in store.events():
                    pass

        decoded = best_of(args.runs, decode)
        rows.append(("  of which: read and decode the log", f"{decoded:.2f} s", ""))
        rows.append(("  of which: fold (a decoded list)", f"{folded:.2f} s", f"{folded / library:.0%} of library replay"))

    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"{'measurement':<{width}}  {'seconds':>{value_width}}  peak RSS / note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {note}")


if __name__ == "__main__":
    main()
