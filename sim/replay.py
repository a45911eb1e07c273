"""Replaying real runs through a calibrated scenario.

A replay simulates a real run (a ``train`` run directory) under its own settings with
its own groups, started in the order the run submitted them (``workload.replay``).
The lengths are then the run's, so what the simulation gets wrong is the cost model's
doing, or the scheduling's; a prediction for a setting not yet run adds the lengths'
error on top (the policy's answers, which a staleness bound changes through what the
policy learns). ``calibrate --replay`` prints this for the runs it fitted.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.calibrate import CalibrationError, run_groups, write_lengths
from sim.config import Scenario

if TYPE_CHECKING:
    from sim.simulator import Simulation

#: The figures a replay and a prediction are judged by, with the real run's.
FIGURES = ("tokens_per_s", "staleness_mean", "staleness_p99", "trainer_idle")


def metrics_lines(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl``, a dict per update."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def consumed_staleness(run_dir: Path) -> list[int]:
    """Each consumed rollout's staleness, from the run's log: the version it was consumed
    at less the version it was first submitted under (the simulator's definition)."""
    from engine.core.events import Consumed, Submitted, Version
    from engine.log import EventLog

    head: dict[str, int] = {}
    version = 0
    staleness: list[int] = []
    with EventLog(run_dir / "events.sqlite", mode="r") as log:
        for event in log.events():
            if isinstance(event, Submitted):
                head.setdefault(event.rollout, event.version)
            elif isinstance(event, Version):
                version = event.version
            elif isinstance(event, Consumed):
                staleness.extend(version - head.get(r, version) for r in event.rollouts)
    return staleness


def measured(run_dir: Path) -> dict[str, float]:
    """A real run's figures, from its ``metrics.jsonl`` and its log."""
    rows = metrics_lines(run_dir)
    if not rows:
        raise CalibrationError(f"{run_dir / 'metrics.jsonl'}: no update recorded")
    wall = rows[-1]["wall_s"]
    staleness = sorted(consumed_staleness(run_dir))
    last = rows[-1]
    return {
        "prefill_passes_per_update": last.get("prefills", 0) / len(rows),
        "decode_steps_per_update": last.get("decode_steps", 0) / len(rows),
        "tokens_per_s": sum(r["trained_tokens"] for r in rows) / wall,
        "staleness_mean": sum(staleness) / max(1, len(staleness)),
        "staleness_p99": float(staleness[min(len(staleness) - 1, math.ceil(0.99 * len(staleness)) - 1)]) if staleness else 0.0,
        "trainer_idle": sum(r["wait_s"] for r in rows) / wall,
        # tokens/s split into its two factors: the cost model's (seconds) and the workload's (tokens)
        "s_per_update": wall / len(rows),
        "tokens_per_update": sum(r["trained_tokens"] for r in rows) / len(rows),
    }


def simulated(summary: Any) -> dict[str, float]:
    """A simulation's figures (its :class:`sim.summary.Summary`), named as :func:`measured` names a run's."""
    versions = max(1, summary.versions)
    return {
        "prefill_passes_per_update": summary.prefill_passes / versions,
        "decode_steps_per_update": summary.decode_steps / versions,
        "tokens_per_s": summary.trained_tokens_per_s,
        "staleness_mean": summary.staleness_mean,
        "staleness_p99": float(summary.staleness_p99),
        "trainer_idle": summary.trainer_idle_s / summary.sim_time_s if summary.sim_time_s > 0 else 0.0,
        "s_per_update": summary.sim_time_s / versions,
        "tokens_per_update": summary.trained_tokens_per_s * summary.sim_time_s / versions,
    }


def error_pct(predicted: float, actual: float) -> float:
    """``predicted``'s error against ``actual``, in percent of it (0 where both are 0)."""
    if actual == 0:
        return 0.0 if predicted == 0 else math.inf
    return 100.0 * (predicted - actual) / abs(actual)


def run_settings(run_dir: Path, servers: int) -> list[str]:
    """The scenario overrides that set a run's own settings (its ``run.json``): bound,
    policy, batch, rollouts in flight, slots on each of ``servers`` servers and its
    updates' rollouts."""
    path = run_dir / "run.json"
    try:
        config = json.loads(path.read_text())
        batch, group, steps = int(config["batch_size"]), int(config["group_size"]), int(config["steps"])
        concurrent = int(config.get("max_concurrent") or batch)
        bound = config.get("max_staleness")
        settings = [f"ledger.max_staleness={'inf' if bound is None else int(bound)}", f"ledger.policy={config['policy']!r}",
                    f"ledger.on_stale={config.get('on_stale', 'drop')!r}", f"ledger.in_order={'true' if config.get('in_order') else 'false'}"]
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no run config; a replay takes the run's settings from it") from None
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise CalibrationError(f"{path}: not a run's config ({err!r})") from None
    return settings + [f"ledger.batch_size={batch}", f"ledger.max_concurrent={concurrent}",
                       f"generation.slots={max(1, concurrent * group // max(1, servers))}", f"run.rollouts={steps * batch}"]


def replay(scenario: Scenario, run_dir: str | Path) -> dict[str, float]:
    """The simulated figures of ``run_dir`` (a ``train`` run directory) replayed through
    ``scenario``: its settings, its groups in the order it submitted them."""
    return simulated(replayed(scenario, run_dir).run())


def replay_passes(scenario: Scenario, run_dir: str | Path) -> list[tuple[int, int]]:
    """Each update's prefill passes and the tokens they ran, padding included, as the
    replay of ``run_dir`` through ``scenario`` opens them (its ``generation.prefill_pad_to``
    and ``prefill_pow2_rows`` say how a pass pads). A colocated run's schedule follows its
    lengths, not its clock, so these are the passes the run itself ran, shaped as the
    scenario says, whatever its costs."""
    simulation = replayed(scenario, run_dir)
    simulation.run()
    counts = [(0, 0), *simulation.passes_by_update]
    return [(passes - before[0], tokens - before[1]) for before, (passes, tokens) in zip(counts, counts[1:])]


def replayed(scenario: Scenario, run_dir: str | Path) -> Simulation:
    """A simulation of ``run_dir`` under its settings with its
    groups in the order it submitted them, ready to run."""
    from sim.simulator import Simulation  # noqa: F811 - at run time

    run_dir = Path(run_dir)
    course = run_groups(run_dir)
    with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
        lengths = write_lengths([], Path(tmp) / "groups.csv", course.groups, course.prompts, [0] * len(course.groups), course.trained)
        return Simulation(scenario.with_overrides(
            run_settings(run_dir, scenario.generation.servers)
            + [f"workload.response_len={{kind = 'empirical', path = {str(lengths)!r}}}", "workload.prompt_len={kind = 'paired'}",
               "workload.phase_versions=0", "workload.replay=true"]
        ))


def replay_table(scenario: Scenario, runs: list[Path]) -> tuple[list[dict[str, Any]], str]:
    """Each run replayed (:func:`replay`) against its measured figures, and a table of them."""
    rows: list[dict[str, Any]] = []
    for run_dir in runs:
        simulated_figures, real = replay(scenario, run_dir), measured(run_dir)
        rows.append({"run": str(run_dir), "replayed": simulated_figures, "measured": real})
    width = max([len("run")] + [len(str(row["run"])) for row in rows])
    lines = [f"{'run':<{width}}  " + "  ".join(f"{name:>24}" for name in FIGURES)]
    for row in rows:
        cells = [f"{row['replayed'][n]:.4g}/{row['measured'][n]:.4g} {error_pct(row['replayed'][n], row['measured'][n]):+.1f}%"
                 for n in FIGURES]
        lines.append(f"{row['run']:<{width}}  " + "  ".join(f"{cell:>24}" for cell in cells))
    return rows, "\n".join(lines)
