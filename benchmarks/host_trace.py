"""How fast the host's CPUs run, traced beside a run, and surveyed core by core.

A decode step of a small model is mostly Python and kernel launches, so a run is as fast
as the cores it runs on.  On a virtual machine those cores can change speed while the
run goes on (a neighbour on the same physical core, the host's clocks), and nothing in
the run's own counters says so.  This script measures it from outside the run.

``trace``: every ``--every`` seconds until stopped (SIGTERM or SIGINT), a CSV row of the
time (seconds since the epoch), the microseconds that 1,000 turns of a plain Python loop
take on the core this sampler runs on, how busy the watched ``--cores`` were since the
last row (their mean share of time not idle), the share of time the hypervisor stole
from the whole machine, and the watched cores' mean clock in MHz where the kernel
reports one (``/proc/cpuinfo``).  The fidelity study runs it on a core its runs do not
use, and ``benchmarks/step_spells.py`` sets each update of a run beside it::

    python3 benchmarks/host_trace.py trace --cores 2,3 --every 0.5 host_trace.csv

``summary``: several traces side by side (one per core, each sampler bound to the core
it watches, say).  The loop times of all of them, pooled, are split in two where the
spread within the two groups is least (a host whose cores run at two speeds); each
trace's row gives its mean loop time in the fast and in the slow group, its share of
slow samples, the mean length of a slow spell in seconds, and the mean correlation of its
loop times with the other traces' (samples paired by time): near 0, each core changes
speed on its own; near 1, the whole host at once.  Then the slow share and the mean loop
time of all traces together in each ``--window`` seconds: how far apart two runs of
that length can find the same machine::

    for c in $(seq 0 15); do taskset -c $c python3 benchmarks/host_trace.py trace --cores $c t$c.csv & done
    sleep 120; kill $(jobs -p); python3 benchmarks/host_trace.py summary t*.csv

``survey``: each core's loop speed, measured ``--rounds`` times with the cores taken in
turn (so a core that is slow in every round is told from a moment that is slow on
every core), the same loop while the core's hyperthread sibling spins, and the
kernel's topology.  It prints a table::

    python3 benchmarks/host_trace.py survey --rounds 5
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

#: The columns of a trace, in order.
FIELDS = ("time", "loop_us", "busy", "steal", "mhz")


def loop_us(turns: int = 20_000) -> float:
    """Microseconds that 1,000 turns of a plain Python loop take, timed over ``turns``."""
    started = time.perf_counter()
    total = 0
    for i in range(turns):
        total += i
    return (time.perf_counter() - started) / turns * 1e6 * 1_000


def cpu_ticks() -> dict[str, tuple[int, int, int]]:
    """Per ``cpuN`` line of ``/proc/stat`` (and ``cpu``, the whole machine): the ticks in
    all, idle (idle and iowait) and stolen; empty where there is no ``/proc/stat``."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu"):
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            values += [0] * (8 - len(values))
            out[name] = (sum(values), values[3] + values[4], values[7])
    return out


def clocks_mhz(cores: list[int]) -> float | None:
    """The mean clock of ``cores`` in MHz, as ``/proc/cpuinfo`` gives it; None where it
    gives none (many virtual machines)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    found: dict[int, float] = {}
    current = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            current = int(value)
        elif key == "cpu MHz" and current is not None:
            found[current] = float(value)
    chosen = [found[c] for c in cores if c in found]
    return sum(chosen) / len(chosen) if chosen else None


def row(cores: list[int], before: dict[str, tuple[int, int, int]],
        after: dict[str, tuple[int, int, int]]) -> tuple[float, float, float | None, float | None, float | None]:
    """One trace row (:data:`FIELDS`) from the ticks at the last row and now."""
    busy = []
    for core in cores:
        old, new = before.get(f"cpu{core}"), after.get(f"cpu{core}")
        if old and new and new[0] > old[0]:
            busy.append(1 - (new[1] - old[1]) / (new[0] - old[0]))
    old, new = before.get("cpu"), after.get("cpu")
    steal = (new[2] - old[2]) / (new[0] - old[0]) if old and new and new[0] > old[0] else None
    return time.time(), loop_us(), sum(busy) / len(busy) if busy else None, steal, clocks_mhz(cores)


def trace(out: Path, cores: list[int], every: float) -> None:
    """Rows (:data:`FIELDS`) into ``out`` (``-``: standard output) every ``every`` seconds
    until SIGTERM or SIGINT; each row is flushed whole, so a trace stopped at any moment reads."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fmt = lambda v: "" if v is None else f"{v:.6g}"  # noqa: E731
    with (open(sys.stdout.fileno(), "w", closefd=False) if str(out) == "-" else out.open("w")) as sink:
        sink.write(",".join(FIELDS) + "\n")
        before = cpu_ticks()
        while not stop.wait(every):
            after = cpu_ticks()
            when, *values = row(cores, before, after)
            sink.write(",".join([f"{when:.3f}", *(fmt(v) for v in values)]) + "\n")
            sink.flush()
            before = after


def read_trace(path: Path) -> list[dict[str, float | None]]:
    """A trace's rows as dicts (:data:`FIELDS`; None for an empty field); empty where
    there is no file.  A row cut off mid-line (a sampler stopped while writing) is skipped."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    if not lines or lines[0].split(",") != list(FIELDS):
        raise SystemExit(f"{path}: not a host trace (its header is not {','.join(FIELDS)})")
    out = []
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) != len(FIELDS):
            continue
        try:
            out.append({k: float(v) if v else None for k, v in zip(FIELDS, fields)})
        except ValueError:
            continue
    return out


def siblings() -> dict[int, list[int]]:
    """Each core's hyperthread siblings (itself left out), from the kernel's topology;
    empty where it is not exposed."""
    out = {}
    for core in sorted(os.sched_getaffinity(0)):
        path = Path(f"/sys/devices/system/cpu/cpu{core}/topology/thread_siblings_list")
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        found: list[int] = []
        for part in text.split(","):
            low, _, high = part.partition("-")
            found += range(int(low), int(high or low) + 1)
        out[core] = [c for c in found if c != core]
    return out


def timed_on(core: int, repeats: int = 15) -> float:
    """The median of ``repeats`` loop timings on ``core`` (this process moved there)."""
    os.sched_setaffinity(0, {core})
    loop_us()  # (the move itself)
    return statistics.median(loop_us() for _ in range(repeats))


def spin(core: int, stop: threading.Event) -> None:  # pragma: no cover - runs in a child process
    os.sched_setaffinity(0, {core})
    while not stop.is_set():
        loop_us()


def survey(rounds: int) -> None:
    """Print each core's loop speed per round, its median, and the same with its sibling busy."""
    import multiprocessing

    mine = sorted(os.sched_getaffinity(0))
    timings: dict[int, list[float]] = {core: [] for core in mine}
    for _ in range(rounds):
        for core in mine:
            timings[core].append(timed_on(core))
    pairs = siblings()
    shared: dict[int, float] = {}
    for core, others in pairs.items():
        if not others or others[0] not in timings:
            continue
        context = multiprocessing.get_context("fork")
        stop = context.Event()
        child = context.Process(target=spin, args=(others[0], stop), daemon=True)
        child.start()
        time.sleep(0.05)
        shared[core] = timed_on(core)
        stop.set()
        child.join()
    os.sched_setaffinity(0, set(mine))
    everyone = [t for values in timings.values() for t in values]
    print(f"{len(mine)} cores, {rounds} round{'s' if rounds > 1 else ''}; a loop of 1,000 turns takes "
          f"{min(everyone):.1f} to {max(everyone):.1f} us (median {statistics.median(everyone):.1f})")
    print("| core | siblings | median us | slowest / fastest round | rounds us | sibling busy us |")
    print("|---:|---|---:|---:|---|---:|")
    for core, values in timings.items():
        sibling = ",".join(map(str, pairs.get(core, []))) or "-"
        busy = f"{shared[core]:.1f}" if core in shared else "-"
        print(f"| {core} | {sibling} | {statistics.median(values):.1f} | {max(values) / min(values):.2f} | "
              f"{' '.join(f'{v:.0f}' for v in values)} | {busy} |")


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


def interval(rows: list[dict[str, float | None]]) -> float:
    """A trace's sampling interval in seconds: the median gap between its rows (0 for fewer than two)."""
    times = [r["time"] or 0.0 for r in rows]
    return statistics.median(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else 0.0


def spells_s(rows: list[dict[str, float | None]], slow: float) -> list[float]:
    """The lengths in seconds of the runs of consecutive samples over ``slow``
    microseconds (a spell of one sample counts the sampling interval)."""
    times = [r["time"] or 0.0 for r in rows]
    every = interval(rows)
    out, began = [], None
    for k, r in enumerate(rows):
        if (r["loop_us"] or 0.0) > slow:
            began = times[k] if began is None else began
        elif began is not None:
            out.append(times[k - 1] - began + every)
            began = None
    if began is not None:
        out.append(times[-1] - began + every)
    return out


def paired(a: list[dict[str, float | None]], b: list[dict[str, float | None]], within: float) -> list[tuple[float, float]]:
    """Loop times of ``a`` and ``b`` sampled within ``within`` seconds of each other."""
    out, j = [], 0
    for r in a:
        when = r["time"] or 0.0
        while j + 1 < len(b) and abs((b[j + 1]["time"] or 0.0) - when) <= abs((b[j]["time"] or 0.0) - when):
            j += 1
        if b and abs((b[j]["time"] or 0.0) - when) <= within:
            out.append((r["loop_us"] or 0.0, b[j]["loop_us"] or 0.0))
    return out


def correlation(pairs: list[tuple[float, float]]) -> float:
    """Pearson's correlation of the pairs (nan where either side does not vary)."""
    if len(pairs) < 3:
        return float("nan")
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else float("nan")


def summary(paths: list[Path], window: float) -> None:
    """Print one row per trace, then the host's figures per ``window`` seconds (module docstring)."""
    traces = {path: [r for r in read_trace(path) if r["loop_us"] is not None and r["time"] is not None] for path in paths}
    empty = [str(path) for path, rows in traces.items() if len(rows) < 2]
    if empty:
        raise SystemExit(f"too few samples to summarise in {', '.join(empty)}")
    loop = lambda r: r["loop_us"] or 0.0  # noqa: E731  (the rows kept all have one)
    pooled = [loop(r) for rows in traces.values() for r in rows]
    threshold = two_means(pooled)
    fast, slow = [v for v in pooled if v <= threshold], [v for v in pooled if v > threshold]
    print(f"{len(pooled)} samples in {len(traces)} trace{'s' if len(traces) > 1 else ''}: fast {statistics.fmean(fast):.1f} us "
          f"per 1,000 loop turns ({len(fast)} samples), slow {statistics.fmean(slow) if slow else float('nan'):.1f} us "
          f"({len(slow)}), split at {threshold:.1f} us")
    print("| trace | samples | fast us | slow us | slow share | mean slow spell s | correlation with the others |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    lengths, correlations = [], []
    for path, rows in traces.items():
        low, high = [loop(r) for r in rows if loop(r) <= threshold], [loop(r) for r in rows if loop(r) > threshold]
        found = spells_s(rows, threshold)
        within = interval(rows) / 2
        others = [c for c in (correlation(paired(rows, other, within)) for o, other in traces.items() if o != path) if c == c]
        mine = statistics.fmean(others) if others else float("nan")
        lengths += found
        correlations += [mine] if mine == mine else []
        show = lambda values: f"{statistics.fmean(values):.1f}" if values else "-"  # noqa: E731
        print(f"| {path.name} | {len(rows)} | {show(low)} | {show(high)} | {len(high) / len(rows):.2f} | "
              f"{statistics.fmean(found) if found else 0.0:.2f} | {mine:+.2f} |")
    print(f"{len(lengths)} slow spells of {statistics.fmean(lengths) if lengths else 0.0:.2f} s on average; correlation between "
          f"traces {statistics.fmean(correlations) if correlations else float('nan'):+.2f} on average")
    start = min(r["time"] or 0.0 for rows in traces.values() for r in rows)
    windows: dict[int, list[float]] = {}
    for rows in traces.values():
        for r in rows:
            windows.setdefault(int(((r["time"] or 0.0) - start) // window), []).append(loop(r))
    whole = [values for _, values in sorted(windows.items())][:-1] or list(windows.values())  # (the last one cut short)
    shares = [sum(v > threshold for v in values) / len(values) for values in whole]
    means = [statistics.fmean(values) for values in whole]
    print(f"per {window:g} s window ({len(whole)}): slow share {' '.join(f'{x:.2f}' for x in shares)}; mean loop time "
          f"{min(means):.1f} to {max(means):.1f} us, the slowest window {max(means) / min(means):.2f} times the fastest")


def cores_arg(text: str) -> list[int]:
    try:
        cores = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cores {text!r}: not a comma-separated list of core numbers") from None
    if not cores:
        raise argparse.ArgumentTypeError("--cores: name one core at least")
    return cores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    tracing = verbs.add_parser("trace", help="sample the host every --every seconds into a CSV until stopped")
    tracing.add_argument("out", type=Path, help="the CSV to write (replaced; - for standard output)")
    tracing.add_argument("--cores", type=cores_arg, default=None,
                         help="the cores whose load and clock to record (default: those this sampler may run on)")
    tracing.add_argument("--every", type=float, default=0.5, help="seconds between rows (default 0.5)")
    summing = verbs.add_parser("summary", help="print traces side by side: spread, slow spells, correlation")
    summing.add_argument("traces", type=Path, nargs="+", help="trace CSVs (host_trace.py trace)")
    summing.add_argument("--window", type=float, default=30.0, help="seconds per window of the host's figures (default 30)")
    surveying = verbs.add_parser("survey", help="print each core's loop speed, round by round")
    surveying.add_argument("--rounds", type=int, default=5, help="times each core is timed (default 5)")
    args = parser.parse_args(argv)
    if args.verb == "trace":
        if args.every <= 0:
            parser.error(f"--every {args.every}: give a positive number of seconds")
        if str(args.out) != "-" and not args.out.parent.is_dir():
            parser.error(f"{args.out}: its folder does not exist")
        trace(args.out, args.cores or sorted(os.sched_getaffinity(0)), args.every)
    elif args.verb == "summary":
        missing = [str(path) for path in args.traces if not path.is_file()]
        if missing:
            parser.error(f"no such trace: {', '.join(missing)}")
        if args.window <= 0:
            parser.error(f"--window {args.window}: give a positive number of seconds")
        summary(args.traces, args.window)
    else:
        if args.rounds < 1:
            parser.error(f"--rounds {args.rounds}: one round at least")
        survey(args.rounds)


if __name__ == "__main__":
    main()
