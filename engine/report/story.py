"""Figures only the notebooks draw, beside :mod:`engine.report.plots` (the report's):
the AReaL curve next to a simulated one, waste against a swept key, a Hypothesis
counterexample as a capacity timeline under two accountings, and a simulated run next
to a real one.  Each ``draw_*`` takes an Axes and plain data and returns a one-line
caption, as in :mod:`engine.report.plots`; matplotlib is imported by the caller."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def draw_areal_curve(ax: Any, bounds: Sequence[str], published: Sequence[float], simulated: Sequence[float], band: float = 0.15) -> str:
    """Throughput relative to synchronous training (bound 0) against ``bounds``: the
    published curve with a +/-``band`` band, and the simulated one."""
    x = range(len(bounds))
    ax.fill_between(x, [p * (1 - band) for p in published], [p * (1 + band) for p in published], color="tab:gray", alpha=0.2, label=f"published +/- {band:.0%}")
    ax.plot(x, published, marker="o", color="black", label="AReaL (published)")
    ax.plot(x, simulated, marker="s", color="tab:red", label="simulated (areal scenario)")
    ax.set_xticks(list(x), list(bounds))
    ax.set_xlabel("max_staleness")
    ax.set_ylabel("throughput / synchronous throughput")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    worst = max(abs(s / p - 1) for s, p in zip(simulated, published))
    return f"AReaL's published speed-up over synchronous training and the simulator's on the areal scenario: they differ by {worst:.0%} at most."


def draw_waste(ax: Any, xs: Sequence[str], series: Mapping[str, Sequence[float]]) -> str:
    """Filtered fraction and wasted-token fraction against a swept key, one line per
    label of ``series`` (values are fractions)."""
    for label, values in series.items():
        ax.plot(range(len(xs)), [100 * v for v in values], marker="o", label=label)
    ax.set_xticks(range(len(xs)), list(xs))
    ax.set_ylabel("% of rollouts or tokens")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return "Waste: rollouts filtered as stale and the generated tokens never trained on."


def draw_trace(ax: Any, steps: Sequence[str], accountings: Mapping[str, Sequence[int]], marks: Mapping[int, str] | None = None) -> str:
    """A state-machine counterexample as a timeline: the capacity after each step (one
    step line per accounting), the steps named on the x axis, ``marks`` (step index ->
    note) annotated."""
    x = range(len(steps))
    for i, (label, values) in enumerate(accountings.items()):
        ax.step(x, values, where="mid", marker="o", linewidth=2, label=label, linestyle="-" if i == 0 else "--", alpha=0.9)
    ax.set_xticks(list(x), [s.removeprefix("state.").split("(")[0] for s in steps], rotation=30, ha="right")
    for index, note in (marks or {}).items():
        ax.annotate(note, (index, 0), xytext=(index, 0.5), ha="center", fontsize="small", arrowprops={"arrowstyle": "->"})
    ax.set_ylabel("capacity after the step")
    ax.set_ylim(bottom=-0.2)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return "The shrunk counterexample step by step: capacity under each accounting; where the lines part, a filtered rollout did not give its capacity back."


def draw_side_by_side(ax: Any, labels: Sequence[str], real: Sequence[float], simulated: Sequence[float], unit: str) -> str:
    """One quantity per group of bars: the real run's and the simulation's."""
    width = 0.38
    x = range(len(labels))
    ax.bar([i - width / 2 for i in x], real, width, label="real run", color="tab:blue")
    ax.bar([i + width / 2 for i in x], simulated, width, label="simulation", color="tab:orange")
    for i, (r, s) in enumerate(zip(real, simulated)):
        ax.annotate(f"{s / r:.2f}x" if r else "", (i + width / 2, s), ha="center", va="bottom", fontsize="small")
    ax.set_xticks(list(x), list(labels))
    ax.set_ylabel(unit)
    ax.legend(fontsize="small")
    return f"Real run and simulation side by side ({unit}); the label over a simulated bar is simulated / real."
