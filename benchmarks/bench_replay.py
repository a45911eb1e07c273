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

For each command: wall-clock seconds and CPU seconds (user + system, which vary less on
a machine shared with other work), best of ``--runs`` with the commands run in turn, and
its peak memory (VmHWM, from one more run of the same code).  Every figure is measured
in this run; the commands must print the library's counters or the script fails.
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import json
import os
import resource
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

from benchmarks.mixed_log import mixed_log, write_log  # noqa: E402
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
    "import sys, time; from engine.log import replay; t, c = time.perf_counter(), time.process_time(); "
    "replay(sys.argv[1]); print(time.perf_counter() - t, time.process_time() - c)"
)


def child(command: list[str], tree: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of ``command`` run with ``tree`` first on the path.

    CPU time (user + system) is what the command itself spent: on a machine shared with
    other work it varies less than wall time."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, done.stdout


#: Runs a command's code, then prints the process's peak resident memory (VmHWM, which
#: a new program image starts afresh, unlike the max RSS of rusage) on stderr.
PEAK = (
    "import atexit, sys; "
    "atexit.register(lambda: print('VmHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr)); "
    "code = sys.argv.pop(1); exec(compile(code, '<command>', 'exec'))"
)
CLI_CODE = "import runpy; runpy.run_module('engine.cli', run_name='__main__', alter_sys=True)"


def peak_mib(code: str, args: list[str], tree: Path) -> str:
    """The peak memory of running ``code`` with ``args`` (``sys.argv[1:]``), or '' where
    the system does not report it."""
    if not Path("/proc/self/status").exists():
        return ""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", PEAK, code, *args], cwd=tree, env=env, capture_output=True, text=True)
    marks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("VmHWM ")]
    return f"{int(marks[-1]) / 1024:.0f} MiB" if marks else ""


def interleaved(runs: int, commands: list[tuple[list[str], Path]]) -> list[tuple[float, float, str]]:
    """Best wall time, best CPU time and the output of each command, run in turn ``runs``
    times (so that a slow spell of a shared machine hits them alike)."""
    results: list[list[tuple[float, float, str]]] = [[] for _ in commands]
    for _ in range(runs):
        for slot, (command, tree) in zip(results, commands):
            slot.append(child(command, tree))
    return [(min(r[0] for r in slot), min(r[1] for r in slot), slot[0][2]) for slot in results]


def timing(wall: float, cpu: float) -> str:
    return f"{wall:.2f} s  {cpu:6.2f} s"


def best_of(runs: int, work: Callable[[], object]) -> tuple[float, float]:
    """Best wall and best CPU seconds of ``runs`` calls of ``work`` in this process."""
    walls, cpus = [], []
    for _ in range(runs):
        gc.collect()
        start, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def extract(revision: str, into: Path) -> Path:
    """The tree of ``revision`` of this repository, unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True).stdout
    tree = into / f"tree-{revision}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def as_schema(path: Path, copy: Path, schema: int) -> Path:
    """A copy of the log at ``path`` as an older reader expects it: marked with event
    ``schema`` (the mixed log holds no type newer than schema 2), without the checksum
    column and the header of log schema 4."""
    shutil.copyfile(path, copy)
    db = sqlite3.connect(copy)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(schema),))
        db.execute("DELETE FROM meta WHERE key NOT IN ('schema', 'last_seq')")
        db.execute("DROP INDEX enqueued_once")
        db.execute("ALTER TABLE events DROP COLUMN crc")
        db.execute("CREATE UNIQUE INDEX enqueued_once ON events (rollout) WHERE type = 'enqueued'")
    db.execute("VACUUM")
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
        write_log(log, events)
        n = len(events)
        expected = counters(fold(events))
        folded = best_of(args.runs, functools.partial(fold, events))
        del events  # a million events need not sit in memory while the commands run
        gc.collect()
        cli = [python, "-m", "engine.cli", "replay", "--format", "json", str(log)]
        alone = [python, "-c", ALONE, "replay", "--format", "json", str(log)]
        commands = [(cli, ROOT), (alone, ROOT)]
        if args.baseline:
            old_tree = extract(args.baseline, Path(tmp))
            old_log = as_schema(log, Path(tmp) / "mixed-old.sqlite", 2)
            commands.append(([*cli[:-1], str(old_log)], old_tree))
        timed = interleaved(args.runs, commands)
        for _, _, out in timed:
            assert json.loads(out) == expected, "a command printed other counters than the library"
        replay_args = ["replay", "--format", "json"]
        rows.append((f"CLI replay of {n:,} events (this tree)", timing(*timed[0][:2]), peak_mib(CLI_CODE, [*replay_args, str(log)], ROOT)))
        if args.baseline:
            rows.append((f"CLI replay, baseline {args.baseline}", timing(*timed[2][:2]), peak_mib(CLI_CODE, [*replay_args, str(old_log)], old_tree)))
            speedup = f"{timed[2][0] / timed[0][0]:.2f}x  {timed[2][1] / timed[0][1]:5.2f}x"
            rows.append(("  speed-up over the baseline", speedup, ""))
        rows.append(("replay command alone (its own parser only)", timing(*timed[1][:2]), peak_mib(ALONE, [*replay_args, str(log)], ROOT)))
        for name, code in (("  of the CLI: build the full parser (imports)", "import engine.cli; engine.cli.build_parser()"),
                           ("  of the CLI: start the interpreter", "pass")):
            runs = [child([python, "-c", code], ROOT) for _ in range(args.runs)]
            rows.append((name, timing(min(r[0] for r in runs), min(r[1] for r in runs)), peak_mib(code, [], ROOT)))
        if args.baseline:
            old_runs = [[float(x) for x in child([python, "-c", LIBRARY, str(old_log)], old_tree)[2].split()] for _ in range(args.runs)]
            library_old = (min(r[0] for r in old_runs), min(r[1] for r in old_runs))

        library = best_of(args.runs, lambda: replay(log))
        rows.append(("library replay (this process)", timing(*library), ""))
        if args.baseline:
            rows.append((f"library replay, baseline {args.baseline} (fresh process)", timing(*library_old), ""))

        def decode() -> None:
            with EventLog(log, mode="r") as store:
                for _ in store.events():
                    pass

        decoded = best_of(args.runs, decode)
        rows.append(("  of which: read and decode the log", timing(*decoded), ""))
        rows.append(("  of which: fold (a decoded list)", timing(*folded), f"{folded[1] / library[1]:.0%} of library replay (CPU)"))

    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"{'measurement':<{width}}  {'wall, CPU':>{value_width}}  peak memory / note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {note}")


if __name__ == "__main__":
    main()
