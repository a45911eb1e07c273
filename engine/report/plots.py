"""Figures of :class:`~engine.report.extract.LogData`, drawn onto matplotlib Axes.

Every ``draw_*`` function takes an Axes and one or more ``LogData`` (several: a sweep,
overlaid) and returns the figure's one-line caption.  :data:`FIGURES` lists them in the
report's order.  matplotlib is imported by the caller (extra ``[plot]``)."""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from engine.report.extract import LogData

#: Rollouts drawn at most in a timeline; more are sampled uniformly (seeded).
TIMELINE_MAX = 400
OUTCOME_COLOURS = {"accepted": "tab:green", "rejected": "tab:red", "filtered": "tab:orange", "consumed": "tab:blue", "running": "tab:gray"}


def quantile(values: Sequence[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else 0.0


def draw_timeline(ax: Any, data: LogData) -> str:
    """One bar per rollout from submission to its end, split at each new policy version
    (lighter shade for later versions), coloured by outcome; weight updates as
    vertical lines, pauses shaded."""
    ids = list(data.lives)
    shown = ids if len(ids) <= TIMELINE_MAX else sorted(random.Random(0).sample(ids, TIMELINE_MAX), key=ids.index)
    for row, rid in enumerate(shown):
        life = data.lives[rid]
        end = life.end if life.end is not None else data.end
        colour = OUTCOME_COLOURS.get(life.outcome, "tab:gray")
        bounds = [s for i, s in enumerate(life.segments) if i == 0 or s[1] != life.segments[i - 1][1]]
        for i, (start, version) in enumerate(bounds):
            stop = bounds[i + 1][0] if i + 1 < len(bounds) else end
            ax.barh(row, max(stop - start, 1e-9), left=start, height=0.8, color=colour, alpha=1.0 if i % 2 == 0 else 0.55, linewidth=0)
    for t, _ in data.versions:
        ax.axvline(t, color="black", linewidth=0.4, alpha=0.4)
    for start, stop in data.pauses:
        ax.axvspan(start, stop, color="gray", alpha=0.2)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=n) for n, c in OUTCOME_COLOURS.items()], fontsize="small", loc="upper left")
    ax.set_xlabel(data.clock)
    ax.set_ylabel("rollout (submission order)")
    sampled = f"{len(shown)} of {len(ids)} rollouts, sampled uniformly" if len(shown) < len(ids) else f"all {len(ids)} rollouts"
    return f"Rollout timeline ({sampled}): bar colour is the outcome, shade changes mark a new policy version, vertical lines are weight updates, grey bands are pauses; long bars crossing many lines are stale rollouts."


def draw_gauges(ax: Any, runs: Sequence[LogData]) -> str:
    """Capacity bound, rollouts in flight and ready queue length over time."""
    for data in runs:
        ts = [g[0] for g in data.gauges]
        tag = f" ({data.label})" if len(runs) > 1 else ""
        ax.step(ts, [g[1] for g in data.gauges], where="post", linestyle="--", label=f"capacity bound{tag}")
        ax.step(ts, [g[2] for g in data.gauges], where="post", label=f"in flight{tag}")
        ax.step(ts, [g[3] for g in data.gauges], where="post", label=f"ready queue{tag}")
    ax.set_xlabel(runs[0].clock)
    ax.set_ylabel("rollouts")
    ax.legend(fontsize="small")
    return "Capacity, in flight and ready queue: in flight at the dashed bound means generation is capacity-limited; a growing ready queue means the trainer is the bottleneck."


def draw_staleness(ax: Any, runs: Sequence[LogData]) -> str:
    """Histogram of staleness at consumption (versions), mean and p99 marked."""
    parts = []
    for data in runs:
        values = data.staleness
        if not values:
            continue
        top = max(values)
        ax.hist(values, bins=range(0, top + 2), alpha=0.6, label=data.label, align="left")
        mean = sum(values) / len(values)
        p99 = quantile(values, 0.99)
        ax.axvline(mean, color="black", linestyle="-", linewidth=1)
        ax.axvline(p99, color="black", linestyle=":", linewidth=1)
        parts.append(f"mean {mean:.2f}, p99 {p99:.0f}")
    ax.set_xlabel("staleness at consumption (policy versions)")
    ax.set_ylabel("consumed rollouts")
    if len(runs) > 1:
        ax.legend(fontsize="small")
    return f"Staleness at consumption ({'; '.join(parts) or 'none consumed'}; solid line mean, dotted p99): how many weight updates old the trained rollouts were."


def _rate(data: LogData, index: int, buckets: int = 50) -> tuple[list[float], list[float]]:
    end = data.end or 1.0
    width = end / buckets
    sums = [0.0] * buckets
    for row in data.consumed_at:
        sums[min(buckets - 1, int(row[0] / width))] += row[index]
    return [(i + 0.5) * width for i in range(buckets)], [s / width for s in sums]


def idle_fraction(data: LogData) -> float:
    """Fraction of the run with nothing ready to train on (ready queue empty), time-weighted."""
    idle = 0.0
    for (t0, _, _, ready), (t1, *_) in zip(data.gauges, data.gauges[1:]):
        if ready == 0:
            idle += t1 - t0
    return idle / data.end if data.end else 0.0


def draw_throughput(ax: Any, runs: Sequence[LogData]) -> str:
    """Trained tokens/s (left axis) and consumed rollouts/s (right axis) over time."""
    right = ax.twinx()
    idles = []
    for data in runs:
        xs, tokens = _rate(data, 2)
        _, rollouts = _rate(data, 1)
        ax.plot(xs, tokens, label=f"tokens/s {data.label}")
        right.plot(xs, rollouts, linestyle="--", label=f"rollouts/s {data.label}")
        idles.append(f"{idle_fraction(data):.0%}")
    ax.set_xlabel(runs[0].clock)
    unit = "s" if runs[0].clock == "time (s)" else "event"
    ax.set_ylabel(f"trained tokens/{unit}")
    right.set_ylabel(f"consumed rollouts/{unit} (dashed)")
    return f"Throughput over time (trainer idle, ready queue empty: {', '.join(idles)} of the run): dips line up with pauses or weight updates."


METRIC_KEYS = ("reward", "heldout_reward", "kl", "entropy", "loss")


def draw_metrics(axes: Sequence[Any], runs: Sequence[LogData], x: str = "step") -> str:
    """One metric per Axes (those of :data:`METRIC_KEYS` the metrics file has) against
    updates (``x="step"``) or wall time (``x="wall_s"``)."""
    keys = [k for k in METRIC_KEYS if any(k in m for d in runs for m in d.metrics)]
    for ax, key in zip(axes, keys):
        for data in runs:
            rows = [m for m in data.metrics if key in m and x in m]
            ax.plot([m[x] for m in rows], [m[key] for m in rows], label=data.label)
        ax.set_ylabel(key)
        ax.set_xlabel("update" if x == "step" else "wall time (s)")
    if axes and len(runs) > 1:
        axes[0].legend(fontsize="small")
    return f"Training metrics against {'updates' if x == 'step' else 'wall time (s)'}: reward should rise, loss and KL stay bounded."


def metric_keys(runs: Sequence[LogData]) -> list[str]:
    return [k for k in METRIC_KEYS if any(k in m for d in runs for m in d.metrics)]


def draw_sweep(top: Any, bottom: Any, key: str, xs: Sequence[str], groups: dict[str, list[dict[str, Any]]]) -> str:
    """``sweep``'s figure: trained k tokens/s and staleness (mean, p99) against the first
    swept key, one line per combination of the other keys."""
    positions = {value: i for i, value in enumerate(xs)}
    for label, members in groups.items():
        at = [positions[row[key]] for row in members]
        top.plot(at, [row["trained_tokens_per_s"] / 1000 for row in members], marker="o", label=label)
        bottom.plot(at, [row["staleness_mean"] for row in members], marker="o", label=f"{label} mean")
        bottom.plot(at, [row["staleness_p99"] for row in members], marker="x", linestyle="--", label=f"{label} p99")
    top.set_ylabel("trained k tokens/s")
    bottom.set_ylabel("staleness at consumption (versions)")
    bottom.set_xticks(range(len(xs)), xs)
    bottom.set_xlabel(key)
    top.legend(fontsize="small")
    bottom.legend(fontsize="small")
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    return f"Sweep over {key}: throughput (top) against staleness (bottom)."


Drawer = Callable[[Any, Sequence[LogData]], str]
FIGURES: tuple[tuple[str, Drawer], ...] = (("gauges", draw_gauges), ("staleness", draw_staleness), ("throughput", draw_throughput))
