"""Calibrate the simulator's cost model from timed event logs (simulated or real).

What is fitted, from the events' ``t`` stamps (and a run's ``metrics.jsonl`` when
one lies beside the log):

- response lengths: a lognormal (median and log standard deviation of the accepted
  rollouts' response tokens, capped at the largest seen) and the empirical one (the
  log itself);
- the training step, ``base + per_token * tokens``: least squares over the updates
  (``train_s`` against ``trained_tokens`` from ``metrics.jsonl``; without it the time
  from ``consumed`` to the next ``paused`` against the batch's response tokens);
- the weight sync: the median time from ``paused`` to ``version`` (simulated logs)
  or from ``version`` to ``unpaused`` (a real run, whose pause spans the training);
- the decode step, ``base + per_seq * active``: least squares of each single-segment
  rollout's seconds per token against the rollouts running per server when it
  started (KV-cache cost folded into these two terms).

Fit quality is R-squared and residual percentiles per regression.  Too few timed
events is a :class:`CalibrationError` naming what is missing.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from engine.core.events import (
    Accepted, Consumed, Event, Filtered, InterruptedBatch, Paused, Rejected, Segment, Submitted, Unpaused, Version,
)
from sim.config import Distribution, Scenario

#: The fewest timed observations each fit needs.
MIN_UPDATES = 3
MIN_ROLLOUTS = 8


class CalibrationError(ValueError):
    """A log that cannot be calibrated from; the message says what is missing."""


@dataclass
class Fit:
    """A least-squares line ``y = a + b x`` and its quality."""

    name: str
    intercept: float
    slope: float
    r2: float
    residuals: list[float] = field(default_factory=list)

    def percentiles(self) -> dict[str, float]:
        """Absolute relative residuals at p50, p90, p99."""
        values = sorted(self.residuals)
        if not values:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
        pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
        return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


def least_squares(name: str, xs: list[float], ys: list[float], weights: list[float] | None = None) -> Fit:
    """Weighted least squares of ``ys`` on ``xs``; a (weighted mean) constant when the
    ``xs`` do not vary or the slope comes out negative (a cost never falls with load)."""
    w = weights or [1.0] * len(xs)
    total = sum(w)
    mx, my = sum(wi * x for wi, x in zip(w, xs)) / total, sum(wi * y for wi, y in zip(w, ys)) / total
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, xs))
    slope = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, xs, ys)) / sxx if sxx > 0 else 0.0
    if slope < 0:
        slope = 0.0
    intercept = my - slope * mx
    predicted = [intercept + slope * x for x in xs]
    ss_res = sum(wi * (y - p) ** 2 for wi, y, p in zip(w, ys, predicted))
    ss_tot = sum(wi * (y - my) ** 2 for wi, y in zip(w, ys))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    residuals = [abs(y - p) / abs(y) for y, p in zip(ys, predicted) if y != 0]
    return Fit(name, intercept, slope, r2, residuals)


@dataclass
class Observations:
    """What one or more logs say about costs."""

    lengths: list[int] = field(default_factory=list)
    train: list[tuple[float, float]] = field(default_factory=list)  # (tokens, seconds)
    sync: list[float] = field(default_factory=list)
    decode: list[tuple[float, float]] = field(default_factory=list)  # (active per server, seconds per token)
    decode_weights: list[float] = field(default_factory=list)  # decode steps behind each observation (real runs)
    config: dict[str, Any] = field(default_factory=dict)
    real: bool = False
    group_size: int = 1
    trained_per_rollout: list[float] = field(default_factory=list)  # a real run's trained tokens per rollout


def _events(path: Path) -> Iterable[Event]:
    from engine.log import EventLog, read_jsonl

    if path.suffix == ".jsonl":
        yield from read_jsonl(path)
        return
    with EventLog(path, mode="r") as log:
        yield from log.events()


def _log_path(path: Path) -> Path:
    if path.is_dir():
        candidate = path / "events.sqlite"
        if not candidate.is_file():
            raise CalibrationError(f"{path}: a folder without events.sqlite (a run directory holds one)")
        return candidate
    if not path.is_file():
        raise CalibrationError(f"{path}: no such log")
    return path


def observe(path: str | Path, obs: Observations | None = None, servers: int = 1) -> Observations:
    """Add what the log at ``path`` (a log file or a run directory) says to ``obs``."""
    obs = obs or Observations()
    log = _log_path(Path(path))
    run_json = log.parent / "run.json"
    if run_json.is_file():
        try:
            obs.group_size = max(1, int(json.loads(run_json.read_text()).get("group_size", 1)))
        except (ValueError, TypeError, AttributeError) as err:
            raise CalibrationError(f"{run_json}: not a run's config ({err})") from None
    group = obs.group_size
    tokens: dict[str, int] = {}
    started: dict[str, tuple[float, float, float]] = {}
    interrupted: set[str] = set()
    running = 0
    consumed_at: float | None = None
    batch_tokens = 0
    paused_at: float | None = None
    version_at: float | None = None
    done_tokens: dict[str, int] = {}
    timed = 0
    # Running integrals over the unpaused time: rollout-seconds in flight, and the
    # seconds generation was paused, so a rollout's mean batch is area / decode time.
    area = paused_total = 0.0
    last_t: float | None = None
    gen_paused = False
    for event in _events(log):
        t = getattr(event, "t", None)
        if t is not None:
            timed += 1
            if last_t is not None and t > last_t:
                if gen_paused:
                    paused_total += t - last_t
                else:
                    area += running * (t - last_t)
            last_t = t
        name = type(event).__name__
        if name == "RunStarted":
            config = getattr(event, "config", None)
            if config is not None:
                obs.config = {k: getattr(config, k) for k in ("max_concurrent", "batch_size", "max_staleness", "policy") if hasattr(config, k)}
        if isinstance(event, Submitted):
            running += 1
            if t is not None:
                started[event.rollout] = (t, area, paused_total)
        elif isinstance(event, Segment):
            tokens[event.rollout] = tokens.get(event.rollout, 0) + event.tokens
        elif isinstance(event, InterruptedBatch):
            for rollout, count in zip(event.rollouts, event.tokens):
                tokens[rollout] = tokens.get(rollout, 0) + count
                interrupted.add(rollout)
        elif isinstance(event, Accepted):
            running -= 1
            count = tokens.pop(event.rollout, 0)
            begun = started.pop(event.rollout, None)
            if count > 0:
                # a rollout is a group of samples decoded side by side: its length per sample
                obs.lengths.extend([max(1, round(count / group))] * group)
                done_tokens[event.rollout] = count
                if begun is not None and t is not None and event.rollout not in interrupted:
                    busy = (t - begun[0]) - (paused_total - begun[2])
                    if busy > 0:
                        active = (area - begun[1]) / busy * group
                        obs.decode.append((active / max(1, servers), busy / max(1.0, count / group)))
            interrupted.discard(event.rollout)
        elif isinstance(event, (Rejected, Filtered)):
            if event.rollout in started or event.rollout in tokens:
                running -= 1
            tokens.pop(event.rollout, None)
            started.pop(event.rollout, None)
            interrupted.discard(event.rollout)
        elif isinstance(event, Consumed):
            consumed_at = t
            batch_tokens = sum(done_tokens.pop(r, 0) for r in event.rollouts)
        elif isinstance(event, Paused):
            if consumed_at is not None and t is not None:
                obs.train.append((float(batch_tokens), t - consumed_at))
            consumed_at = None
            paused_at = t
            gen_paused = True
        elif isinstance(event, Version):
            if paused_at is not None and t is not None and not obs.real:
                obs.sync.append(t - paused_at)
            version_at, paused_at = t, None
        elif isinstance(event, Unpaused):
            if version_at is not None and t is not None and obs.real:
                obs.sync.append(t - version_at)
            version_at = None
            gen_paused = False
    if timed == 0:
        raise CalibrationError(f"{log}: its events carry no times (t); calibration needs a timed log")
    samples = _sample_lengths(log.parent / "samples.sqlite")
    if samples and group > 1:
        # a real run's log sums a rollout's tokens over its group; its sample store has
        # each sample, whose spread (not the group means') sets when a group finishes
        obs.lengths = obs.lengths[: len(obs.lengths) - len(samples)] + samples if len(samples) <= len(obs.lengths) else samples
    metrics = log.parent / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        usable = [r for r in rows if "train_s" in r and "trained_tokens" in r]
        if usable:
            obs.real = True
            obs.train = [(float(r["trained_tokens"]), float(r["train_s"])) for r in usable]
            size = int(obs.config.get("batch_size", 1)) or 1
            obs.trained_per_rollout.extend(float(r["trained_tokens"]) / size for r in usable)
            obs.sync = []  # a real run's pause spans the training: the sync is version -> unpaused
            steps = [r for r in usable if "decode_steps" in r and "generated_tokens" in r and "wall_s" in r]
            if len(steps) > 1:
                # the engine's own counters: between two updates generation ran for the
                # wall time less the training, over that many decode steps of that many tokens
                obs.decode, obs.decode_weights = [], []
                for before, row in zip(steps, steps[1:]):
                    count = row["decode_steps"] - before["decode_steps"]
                    seconds = row["wall_s"] - before["wall_s"] - row["train_s"]
                    if count > 0 and seconds > 0:
                        batch = (row["generated_tokens"] - before["generated_tokens"]) / count
                        obs.decode.append((batch / max(1, servers), seconds / count))
                        obs.decode_weights.append(float(count))
            return _resync(log, obs)
    return obs


def _sample_lengths(path: Path) -> list[int]:
    """Completion lengths of every stored sample of a real run (its ``samples.sqlite``:
    rows of pickled plain dicts the run wrote itself; a run directory is trusted)."""
    import pickle
    import sqlite3

    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT data FROM samples").fetchall()
        finally:
            db.close()
        return [len(sample["completion"]) for (data,) in rows for sample in pickle.loads(data) if sample.get("completion")]
    except (sqlite3.Error, pickle.UnpicklingError, KeyError, TypeError, EOFError) as err:
        raise CalibrationError(f"{path}: not a run's sample store ({err})") from None


def _resync(log: Path, obs: Observations) -> Observations:
    version_at: float | None = None
    for event in _events(log):
        t = getattr(event, "t", None)
        if isinstance(event, Version):
            version_at = t
        elif isinstance(event, Unpaused) and version_at is not None and t is not None:
            obs.sync.append(t - version_at)
            version_at = None
    return obs


@dataclass
class Calibration:
    """The fitted scenario and the fits behind it."""

    scenario: Scenario
    fits: list[Fit]
    lognormal: Distribution
    sync_s: float
    counts: dict[str, int]

    def report(self) -> str:
        lines = [f"{'fit':<16} {'intercept':>12} {'slope':>12} {'R^2':>7} {'|res| p50':>10} {'p90':>8} {'p99':>8}"]
        for fit in self.fits:
            p = fit.percentiles()
            lines.append(
                f"{fit.name:<16} {fit.intercept:>12.4g} {fit.slope:>12.4g} {fit.r2:>7.3f} "
                f"{p['p50']:>10.1%} {p['p90']:>8.1%} {p['p99']:>8.1%}"
            )
        d = self.lognormal
        lines.append(f"response length  lognormal median {d.median:.1f} sigma {d.sigma:.3f} cap {d.cap}")
        lines.append(f"weight sync      median {self.sync_s:.4g} s")
        lines.append("observations     " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        return "\n".join(lines)


def calibrate(paths: list[str | Path], base: Scenario | None = None, servers: int = 1, empirical: bool = False) -> Calibration:
    """Fit ``base`` (default: the default scenario) to the logs at ``paths``."""
    obs = Observations()
    for path in paths:
        observe(path, obs, servers=servers)
    missing = []
    if len(obs.lengths) < MIN_ROLLOUTS:
        missing.append(f"{len(obs.lengths)} accepted rollouts with tokens (need {MIN_ROLLOUTS})")
    if len(obs.train) < MIN_UPDATES:
        missing.append(f"{len(obs.train)} timed training steps (need {MIN_UPDATES})")
    if len(obs.decode) < (MIN_UPDATES if obs.real else MIN_ROLLOUTS):
        missing.append(f"{len(obs.decode)} timed decode observations (need {MIN_UPDATES if obs.real else MIN_ROLLOUTS})")
    if missing:
        raise CalibrationError(f"{paths[0]}: too little to calibrate from: " + "; ".join(missing))
    logs = [math.log(n) for n in obs.lengths]
    lognormal = Distribution(
        kind="lognormal", median=round(math.exp(statistics.fmean(logs)), 3), sigma=round(statistics.pstdev(logs), 4), cap=max(obs.lengths)
    )
    train = least_squares("train step", [x for x, _ in obs.train], [y for _, y in obs.train])
    decode = least_squares("decode s/token", [x for x, _ in obs.decode], [y for _, y in obs.decode], obs.decode_weights or None)
    sync_s = statistics.median(obs.sync) if obs.sync else 0.0
    scenario = base or Scenario()
    response = replace(lognormal, kind="empirical", path=str(Path(paths[0]).resolve())) if empirical else lognormal
    cfg = obs.config
    ledger = scenario.ledger
    group = obs.group_size
    workload = replace(scenario.workload, response_len=response, group_size=group)
    if obs.real:
        # the simulator trains group * prompt + response tokens per rollout: the prompt
        # length that makes its count the real trainer's (1 when that counts completions only)
        extra = statistics.fmean(obs.trained_per_rollout) - statistics.fmean(obs.lengths) * group
        workload = replace(workload, prompt_len=Distribution(kind="fixed", value=max(1, round(extra / group))))
    for key in ("max_concurrent", "batch_size", "max_staleness", "policy"):
        if key in cfg:
            ledger = replace(ledger, **{key: cfg[key]})
    scenario = replace(
        scenario,
        ledger=ledger,
        workload=workload,
        generation=replace(
            scenario.generation,
            servers=servers,
            slots=max(1, ledger.max_concurrent * group // max(1, servers)),
            # a real engine's prefill is part of its loop steps, which the decode fit measured
            prefill_per_token_s=0.0 if obs.real else scenario.generation.prefill_per_token_s,
            step_base_s=max(0.0, decode.intercept), step_per_seq_s=max(0.0, decode.slope), step_per_kv_token_s=0.0
        ),
        training=replace(
            scenario.training,
            step_base_s=max(0.0, train.intercept), step_per_token_s=max(0.0, train.slope), weight_sync_s=max(0.0, sync_s),
            colocated=obs.real or scenario.training.colocated,  # a real run pauses generation to train
        ),
    )
    counts = {"rollouts": len(obs.lengths), "updates": len(obs.train), "timed rollouts": len(obs.decode), "syncs": len(obs.sync)}
    return Calibration(scenario, [train, decode], lognormal, sync_s, counts)
