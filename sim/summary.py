"""What a simulated run achieved: throughput, utilisation, staleness and waste.

The simulator accumulates counters and a staleness histogram while it runs (no
per-rollout lists, so memory stays flat however many rollouts finish) and builds
one :class:`Summary` at the end; :func:`format_table` lays several side by side.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from engine.core.reducer import State
from sim.config import Scenario


@dataclass(frozen=True)
class Summary:
    """The figures of one run.  Staleness is measured at consumption, in versions,
    from the version a rollout started under (its head)."""

    policy: str
    max_staleness: int | None
    sim_time_s: float
    trained_rollouts: int
    rollouts_per_s: float
    trained_tokens_per_s: float
    generator_utilisation: float
    trainer_utilisation: float
    trainer_idle_s: float
    staleness_mean: float
    staleness_p50: int
    staleness_p99: int
    staleness_max: int
    staleness_histogram: dict[int, int]
    filtered_fraction: float
    wasted_tokens: int
    wasted_fraction: float
    mean_latency_s: float
    versions: int
    events: int
    prefill_passes: int = 0
    decode_steps: float = 0.0  # decode steps summed over the servers (fractional: a step under way at the end)
    scenario: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON object (histogram keys become strings)."""
        out = asdict(self)
        out["staleness_histogram"] = {str(k): v for k, v in sorted(self.staleness_histogram.items())}
        return out


class SummaryBuilder:
    """Running counters the simulator updates; :meth:`build` turns them into a :class:`Summary`."""

    def __init__(self, scenario: Scenario, servers: int) -> None:
        self.scenario = scenario
        self.servers = servers
        self.accepted = 0
        self.filtered = 0
        self.restarted = 0
        self.consumed = 0
        self.trained_tokens = 0
        self.generated_tokens = 0
        self.wasted_tokens = 0
        self.trainer_idle_s = 0.0
        self.trainer_busy_s = 0.0
        self.generator_busy_s = 0.0
        self.prefill_passes = 0
        self.decode_steps = 0.0
        self.latency_sum = 0.0  # seconds from submission to the end of generation, summed
        self.latency_count = 0
        self._histogram: dict[int, int] = {}

    def staleness(self, versions: int) -> None:
        """Count one consumed rollout that was ``versions`` behind."""
        self._histogram[versions] = self._histogram.get(versions, 0) + 1

    def build(self, sim_time: float, state: State) -> Summary:
        config = state.config
        assert config is not None
        histogram = dict(sorted(self._histogram.items()))
        total = sum(histogram.values())
        mean = sum(k * v for k, v in histogram.items()) / total if total else 0.0
        decided = self.accepted + self.filtered
        return Summary(
            policy=config.policy,
            max_staleness=config.max_staleness,
            sim_time_s=sim_time,
            trained_rollouts=self.consumed,
            rollouts_per_s=self.consumed / sim_time if sim_time else 0.0,
            trained_tokens_per_s=self.trained_tokens / sim_time if sim_time else 0.0,
            generator_utilisation=self.generator_busy_s / (self.servers * sim_time) if sim_time else 0.0,
            trainer_utilisation=self.trainer_busy_s / sim_time if sim_time else 0.0,
            trainer_idle_s=self.trainer_idle_s,
            staleness_mean=mean,
            staleness_p50=_quantile(histogram, 0.50),
            staleness_p99=_quantile(histogram, 0.99),
            staleness_max=max(histogram) if histogram else 0,
            staleness_histogram=histogram,
            filtered_fraction=self.filtered / decided if decided else 0.0,
            wasted_tokens=self.wasted_tokens,
            wasted_fraction=self.wasted_tokens / self.generated_tokens if self.generated_tokens else 0.0,
            mean_latency_s=self.latency_sum / self.latency_count if self.latency_count else 0.0,
            versions=state.version,
            events=state.events,
            prefill_passes=self.prefill_passes,
            decode_steps=self.decode_steps,
            scenario=self.scenario.to_dict(),
        )


def _quantile(histogram: dict[int, int], q: float) -> int:
    """The smallest value with at least a fraction ``q`` of the counts at or below it."""
    total = sum(histogram.values())
    if total == 0:
        return 0
    seen = 0
    for value, count in sorted(histogram.items()):
        seen += count
        if seen >= q * total:
            return value
    return max(histogram)


#: Table columns: (header, formatter).
_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("max_staleness", lambda s: "inf" if s.max_staleness is None else str(s.max_staleness)),
    ("policy", lambda s: s.policy),
    ("rollouts/s", lambda s: f"{s.rollouts_per_s:.2f}"),
    ("k tokens/s", lambda s: f"{s.trained_tokens_per_s / 1000:.1f}"),
    ("x sync", None),
    ("gen util", lambda s: f"{s.generator_utilisation:.0%}"),
    ("train util", lambda s: f"{s.trainer_utilisation:.0%}"),
    ("trainer idle s", lambda s: f"{s.trainer_idle_s:.0f}"),
    ("stale mean", lambda s: f"{s.staleness_mean:.2f}"),
    ("p50", lambda s: str(s.staleness_p50)),
    ("p99", lambda s: str(s.staleness_p99)),
    ("max", lambda s: str(s.staleness_max)),
    ("filtered", lambda s: f"{s.filtered_fraction:.1%}"),
    ("wasted", lambda s: f"{s.wasted_fraction:.1%}"),
)


def format_table(summaries: Sequence[Summary], labels: Sequence[dict[str, str]] | None = None) -> str:
    """Summaries side by side, one row each, after the ``labels`` columns if given.

    ``x sync`` (``x first`` when the first run is not synchronous) is token throughput
    relative to the first row."""
    if not summaries:
        return "(no runs)"
    base = summaries[0].trained_tokens_per_s or 1.0
    relative = "x sync" if summaries[0].max_staleness == 0 else "x first"
    label_keys = list(labels[0]) if labels else []
    headers = label_keys + [relative if cell is None else header for header, cell in _COLUMNS]
    rows = []
    for index, summary in enumerate(summaries):
        row = [labels[index][key] for key in label_keys] if labels else []
        for _, cell in _COLUMNS:
            row.append(f"{summary.trained_tokens_per_s / base:.2f}" if cell is None else cell(summary))
        rows.append(row)
    return _layout(headers, rows)


def _layout(headers: list[str], rows: list[list[str]]) -> str:
    """A right-aligned text table under a ruled header."""
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)
    return "\n".join(lines)


def _versions(value: float) -> str:
    """A count of versions: whole as it is, a mean to one decimal."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


#: The figures a bound simulated over several seeds gives as a mean and a range:
#: (name in JSON, table header, the figure, its format in the table).
_SPREAD: tuple[tuple[str, str, Any, Any], ...] = (
    ("trained_tokens_per_s", "k tokens/s", lambda s: s.trained_tokens_per_s, lambda v: f"{v / 1000:.1f}"),
    ("trainer_idle_share", "trainer idle", lambda s: s.trainer_idle_s / s.sim_time_s if s.sim_time_s else 0.0, "{:.0%}".format),
    ("staleness_mean", "stale mean", lambda s: s.staleness_mean, "{:.2f}".format),
    ("staleness_p99", "p99", lambda s: s.staleness_p99, _versions),
    ("staleness_max", "max", lambda s: s.staleness_max, _versions),
    ("filtered_fraction", "filtered", lambda s: s.filtered_fraction, "{:.1%}".format),
)


def spread(runs: Sequence[Summary]) -> dict[str, Any]:
    """One bound's runs over several seeds: each spread figure's mean, least and
    greatest, and the runs themselves."""
    if not runs:
        raise ValueError("a spread needs at least one run")
    figures = {name: [figure(run) for run in runs] for name, _, figure, _ in _SPREAD}
    return {
        "max_staleness": runs[0].max_staleness,
        "policy": runs[0].policy,
        "seeds": len(runs),
        "mean": {name: sum(values) / len(values) for name, values in figures.items()},
        "min": {name: min(values) for name, values in figures.items()},
        "max": {name: max(values) for name, values in figures.items()},
        "runs": [run.to_json() for run in runs],
    }


def format_spread(spreads: Sequence[dict[str, Any]]) -> str:
    """Bounds simulated over several seeds, one row each: every figure's mean over the
    seeds, and in brackets its least and greatest where they differ. ``x sync`` (``x
    first``) is the mean tokens/s relative to the first row's."""
    if not spreads:
        return "(no runs)"
    first = spreads[0]
    base = first["mean"]["trained_tokens_per_s"] or 1.0
    relative = "x sync" if first["max_staleness"] == 0 else "x first"
    headers = ["max_staleness", "policy", "seeds", _SPREAD[0][1], relative] + [header for _, header, _, _ in _SPREAD[1:]]
    rows = []
    for row in spreads:
        cells = []
        for name, _, _, form in _SPREAD:
            low, mean, high = (form(row[key][name]) for key in ("min", "mean", "max"))
            cells.append(mean if low == high else f"{mean} ({low}-{high})")
        bound = "inf" if row["max_staleness"] is None else str(row["max_staleness"])
        rows.append([bound, row["policy"], str(row["seeds"]), cells[0], f"{row['mean']['trained_tokens_per_s'] / base:.2f}", *cells[1:]])
    return _layout(headers, rows)


def to_json(summaries: Sequence[Summary]) -> str:
    """Summaries as a JSON array (one object each)."""
    return json.dumps([summary.to_json() for summary in summaries], indent=2)
