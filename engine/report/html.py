"""The report page: the figures of :mod:`engine.report.plots` as inline SVG, the
summary counters and each run's configuration, in one self-contained HTML file."""

from __future__ import annotations

import html
import io
from functools import partial
from typing import Any, Callable, Sequence

from engine.report.extract import LogData
from engine.report import plots

COUNTERS = ("version", "pending", "running", "ready", "accepted", "rejected", "filtered", "consumed", "submitted", "events")


def _svg(draw: Callable[[Any], str], size: tuple[float, float] = (9, 4), rows: int = 1) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.fonttype"] = "none"
    fig, axes = plt.subplots(rows, 1, figsize=size, squeeze=False)
    try:
        caption = draw([a for a in axes[:, 0]] if rows > 1 else axes[0, 0])
        fig.tight_layout()
        out = io.StringIO()
        fig.savefig(out, format="svg")
    finally:
        plt.close(fig)
    text = out.getvalue()
    return text[text.index("<svg"):], caption


def _figure(name: str, svg: str, caption: str) -> str:
    return f'<figure class="plot" id="{name}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'


def _table(runs: Sequence[LogData]) -> str:
    head = "".join(f"<th>{html.escape(d.label)}</th>" for d in runs)
    rows = []
    for name in COUNTERS:
        cells = "".join(f"<td>{getattr(d.state, name)}</td>" for d in runs)
        rows.append(f"<tr><th>{name}</th>{cells}</tr>")
    for name, fn in (("staleness mean", lambda d: f"{sum(d.staleness) / len(d.staleness):.3f}" if d.staleness else "-"),
                     ("staleness p99", lambda d: f"{plots.quantile(d.staleness, 0.99):.0f}"),
                     ("trainer idle", lambda d: f"{plots.idle_fraction(d):.1%}"),
                     ("span", lambda d: f"{d.end:.2f} s" if d.clock == "time (s)" else f"{d.end:.0f} events")):
        rows.append(f"<tr><th>{name}</th>{''.join(f'<td>{fn(d)}</td>' for d in runs)}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def figures(runs: Sequence[LogData], progress: Callable[[], None] = lambda: None) -> list[str]:
    """Every figure of ``runs`` as HTML ``<figure>`` elements."""
    out: list[str] = []
    for data in runs:
        svg, caption = _svg(partial(plots.draw_timeline, data=data), size=(9, 5))
        out.append(_figure(f"timeline-{len(out)}", svg, f"{data.label}: {caption}"))
        progress()
    for name, draw in plots.FIGURES:
        svg, caption = _svg(partial(_overlay, draw, runs))
        out.append(_figure(name, svg, caption))
        progress()
    keys = plots.metric_keys(runs)
    if keys:
        for x in ("step", "wall_s"):
            svg, caption = _svg(partial(_metrics, runs=runs, x=x), size=(9, 2.2 * len(keys)), rows=len(keys))
            out.append(_figure(f"metrics-{x}", svg, caption))
            progress()
    return out


def _overlay(draw: plots.Drawer, runs: Sequence[LogData], ax: Any) -> str:
    return draw(ax, runs)


def _metrics(axes: Any, runs: Sequence[LogData], x: str) -> str:
    return plots.draw_metrics(axes if isinstance(axes, list) else [axes], runs, x)


def page(runs: Sequence[LogData], progress: Callable[[], None] = lambda: None) -> str:
    """The whole HTML page of ``runs``."""
    configs = "".join(f"<h3>{html.escape(d.label)}</h3><pre>{html.escape(repr(d.config))}</pre>" for d in runs)
    body = "\n".join(figures(runs, progress))
    title = "rollout-ledger report: " + ", ".join(d.label for d in runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}} figure{{margin:1.5em 0}} figcaption{{font-size:90%;color:#333}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} svg{{max-width:100%;height:auto}}</style></head>
<body><h1>{html.escape(title)}</h1>
<h2>Summary</h2>{_table(runs)}
<h2>Figures</h2>
{body}
<h2>Configuration</h2>{configs}
</body></html>
"""
