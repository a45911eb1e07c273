"""Parameter sweeps: one simulation per grid point, in parallel over processes.

Runs go to a local process pool, or to Ray tasks (:mod:`sim.raysweep`, the ``[ray]``
extra) with ``backend="ray"``.  Each grid point's seed is derived from the scenario's seed and the point's own
overrides (a stable hash), never from the worker that runs it, so a sweep gives
the same results with 1 or N workers, on either backend.  Results go to a CSV of summaries and a
PNG plot of throughput and staleness against the first swept key, each written
whole or not at all (:mod:`engine.log.files`).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from engine.log.files import atomic_output
from sim.config import Scenario, ScenarioError
from sim.simulator import simulate
from sim.summary import Summary


#: Where a sweep's runs go: ``local`` (processes on this machine) or ``ray``.
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Point:
    """One grid point: its overrides (``key=value`` strings) and its derived seed."""

    overrides: tuple[str, ...]
    seed: int


def parse_grid(items: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``key=v1,v2,...`` strings as ``(key, [v1, v2, ...])``; refuses an empty axis, a
    key swept by two axes and a value given twice (each would repeat runs, and the
    plot has one position per value)."""
    axes: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError(item, "a grid axis must look like section.key=v1,v2,...")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not choices:
            raise ScenarioError(key, "a grid axis needs at least one value")
        if any(key == other for other, _ in axes):
            raise ScenarioError(key, "is swept by two --grid axes; give it one axis with all its values")
        repeated = next((value for i, value in enumerate(choices) if value in choices[:i]), None)
        if repeated is not None:
            raise ScenarioError(key, f"the value {repeated!r} is given twice")
        axes.append((key, choices))
    if not axes:
        raise ScenarioError("--grid", "a sweep needs at least one --grid axis")
    return axes


def grid_points(scenario: Scenario, axes: Sequence[tuple[str, Sequence[str]]]) -> list[Point]:
    """Every combination of the axes (first axis slowest), each with its own seed."""
    points = []
    for values in itertools.product(*(choices for _, choices in axes)):
        overrides = tuple(f"{key}={value}" for (key, _), value in zip(axes, values))
        digest = hashlib.sha256(f"{scenario.run.seed}|{'|'.join(overrides)}".encode()).digest()
        points.append(Point(overrides, int.from_bytes(digest[:4], "big")))
    return points


def run_point(scenario: Scenario, point: Point) -> Summary:
    """Simulate one grid point (top-level, so worker processes can run it)."""
    return simulate(scenario.with_overrides((*point.overrides, f"run.seed={point.seed}")))


def sweep(
    scenario: Scenario,
    axes: Sequence[tuple[str, Sequence[str]]],
    *,
    workers: int = 1,
    on_result: Callable[[], None] | None = None,
    backend: str = "local",
    address: str | None = None,
) -> list[tuple[Point, Summary]]:
    """Run the grid; results in grid order whatever the number of ``workers`` and the
    ``backend`` (``local``: this process or a process pool; ``ray``: Ray tasks, on a
    local Ray of ``workers`` CPUs or the cluster at ``address``)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    points = grid_points(scenario, axes)
    for point in points:  # refuse a bad value before starting any process
        scenario.with_overrides(point.overrides)
    summaries: list[Summary] = []
    if backend == "ray":
        from sim.raysweep import run_on_ray

        summaries = run_on_ray(run_point, scenario, points, address=address, cpus=workers, on_result=on_result)
    elif workers == 1:
        for point in points:
            summaries.append(run_point(scenario, point))
            if on_result is not None:
                on_result()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_point, scenario, point) for point in points]
            for future in futures:
                summaries.append(future.result())
                if on_result is not None:
                    on_result()
    return list(zip(points, summaries))


#: Summary fields written to the CSV, after the swept keys and the seed.
CSV_FIELDS = (
    "policy",
    "max_staleness",
    "sim_time_s",
    "trained_rollouts",
    "rollouts_per_s",
    "trained_tokens_per_s",
    "generator_utilisation",
    "trainer_utilisation",
    "trainer_idle_s",
    "staleness_mean",
    "staleness_p50",
    "staleness_p99",
    "staleness_max",
    "filtered_fraction",
    "wasted_tokens",
    "wasted_fraction",
    "mean_latency_s",
    "versions",
    "events",
)


def rows(axes: Sequence[tuple[str, Sequence[str]]], results: Sequence[tuple[Point, Summary]]) -> list[dict[str, Any]]:
    """One flat dict per run: swept values, seed, then the summary's scalar figures."""
    out = []
    for point, summary in results:
        row: dict[str, Any] = {key: item.partition("=")[2] for (key, _), item in zip(axes, point.overrides)}
        row["seed"] = point.seed
        for name in CSV_FIELDS:
            value = getattr(summary, name)
            row[name] = "inf" if name == "max_staleness" and value is None else value
        out.append(row)
    return out


def write_csv(table: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write the rows of :func:`rows` as CSV (whole or not at all)."""
    with atomic_output(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def plot(axes: Sequence[tuple[str, Sequence[str]]], table: Sequence[dict[str, Any]], path: str | Path) -> None:
    """PNG: trained tokens/s and staleness (mean, p99) against the first swept key,
    one line per combination of the other keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.report.plots import draw_sweep

    key = axes[0][0]
    others = [name for name, _ in axes[1:]]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in table:
        label = ", ".join(f"{name}={row[name]}" for name in others) or "run"
        groups.setdefault(label, []).append(row)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    draw_sweep(top, bottom, key, list(axes[0][1]), groups)
    fig.tight_layout()
    try:
        with atomic_output(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
    finally:
        plt.close(fig)

