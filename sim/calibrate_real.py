"""The cost model of a real run, fitted from the ``metrics.jsonl`` lines it writes per update.

A ``train`` run's update is: collect a batch (``wait_s``: the engine decodes and
prefills, the executor completes rollouts; nothing else runs), train on it
(``step_s``), recompute proximal log-probs (``recompute_s``), load the weights into
the engine (``sync_s``), and the rest of the wall time between two updates
(advantages, checkpoint, samples, log, workflow stages), which is the per-update
overhead.  What is fitted, per update, against the simulator's terms:

- generation (the collect time): ``steps * (base + per_slot * slots) + per_seq *
  tokens + prefill_base * prefills``, no intercept: decode steps, tokens decoded
  (busy slots summed over steps) and prefill passes are the engine's counters; the
  per-slot term is identified only across runs of different slot counts (else it is
  part of ``base``); the executor's per-rollout work is carried by the per-prefill
  and per-token terms;
- the training step: ``base + per_token * tokens + per_seq * sequences`` (the
  per-sequence term only across batch sizes);
- recompute: seconds per trained token over the updates that recomputed;
- sync and overhead: their means (tokens/s is a ratio of totals).

Older runs without ``step_s`` fall back to ``train_s`` as the step and no overhead.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from sim.fitting import Fit, fit

#: Per-update fields without which a metrics line cannot be used.
REQUIRED = ("wall_s", "wait_s", "train_s", "trained_tokens", "decode_steps", "generated_tokens")


@dataclass
class Update:
    """One update of a real run, as the simulator's cost terms see it."""

    collect_s: float
    steps: float
    tokens: float
    prefills: float
    slots: float
    step_s: float
    trained_tokens: float
    sequences: float
    recompute_s: float
    sync_s: float | None
    overhead_s: float


def updates(rows: list[dict[str, Any]], slots: int, sequences: int, recompute_in_step: bool) -> list[Update]:
    """The updates of one run (its metrics lines in order), counters turned into
    per-update differences.  ``slots`` and ``sequences`` are the run's when a line
    does not say; ``recompute_in_step`` folds the recomputation into the step (the
    simulator recomputes only under ``segment_wise``)."""
    out = []
    before: dict[str, Any] = {"wall_s": 0.0, "decode_steps": 0, "generated_tokens": 0, "prefills": 0}
    for row in rows:
        if not all(key in row for key in REQUIRED):
            continue
        timed = "step_s" in row
        recompute = float(row.get("recompute_s", 0.0))
        step = float(row["step_s"]) if timed else float(row["train_s"])
        sync = float(row["sync_s"]) if "sync_s" in row else None
        wall = float(row["wall_s"]) - float(before["wall_s"])
        parts = float(row["wait_s"]) + step + recompute + (sync or 0.0)
        if recompute_in_step:
            step, recompute = step + recompute, 0.0
        out.append(Update(
            collect_s=float(row["wait_s"]),
            steps=float(row["decode_steps"] - before["decode_steps"]),
            tokens=float(row["generated_tokens"] - before["generated_tokens"]),
            prefills=float(row.get("prefills", 0) - before.get("prefills", 0)),
            slots=float(row.get("slots", slots)),
            step_s=step,
            trained_tokens=float(row["trained_tokens"]),
            sequences=float(row.get("sequences", sequences)),
            recompute_s=recompute,
            sync_s=sync,
            overhead_s=max(0.0, wall - parts) if timed else 0.0,
        ))
        before = row
    return out


@dataclass
class RealCosts:
    """The fitted costs of one or more real runs."""

    generation: Fit
    train: Fit
    recompute_per_token_s: float
    sync_s: float | None
    overhead_s: float
    engine_share: float | None  # the engine's own step seconds over the collect time, when it timed them

    def notes(self) -> list[str]:
        lines = [f"{'recompute':<16} {self.recompute_per_token_s:.4g} s per trained token"]
        lines.append(f"{'update overhead':<16} mean {self.overhead_s:.4g} s per update (neither collecting, training, recomputing nor syncing)")
        if self.engine_share is not None:
            lines.append(f"{'engine share':<16} {self.engine_share:.1%} of the collect time in the engine's decode and prefill passes")
        return lines


def fit_costs(found: list[Update], engine_s: float | None = None) -> RealCosts:
    """Fit the costs of ``found`` (the updates of every run)."""
    collect = [u.collect_s for u in found]
    slot_values = {u.slots for u in found}
    terms = {
        "steps": [u.steps for u in found],
        "steps*slots": [u.steps * u.slots for u in found] if len(slot_values) > 1 else [0.0] * len(found),
        "tokens": [u.tokens for u in found],
        "prefills": [u.prefills for u in found],
    }
    generation = fit("generation s", terms, collect)
    train = fit("train step s", {
        "1": [1.0] * len(found),
        "tokens": [u.trained_tokens for u in found],
        "sequences": [u.sequences for u in found],
    }, [u.step_s for u in found])
    recomputed = [u for u in found if u.recompute_s > 0]
    per_token = sum(u.recompute_s for u in recomputed) / max(1.0, sum(u.trained_tokens for u in recomputed)) if recomputed else 0.0
    syncs = [u.sync_s for u in found if u.sync_s is not None]
    share = engine_s / sum(collect) if engine_s is not None and sum(collect) > 0 else None
    return RealCosts(generation, train, per_token, statistics.fmean(syncs) if syncs else None,
                     statistics.fmean(u.overhead_s for u in found), share)
