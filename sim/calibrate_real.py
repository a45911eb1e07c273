"""The cost model of a real run, fitted from the ``metrics.jsonl`` lines it writes per update.

A ``train`` run's update is: collect a batch (``wait_s``: the engine decodes and
prefills, the executor completes rollouts; nothing else runs), train on it
(``step_s``), recompute proximal log-probs (``recompute_s``), load the weights into
the engine (``sync_s``), and the rest of the wall time between two updates
(advantages, checkpoint, samples, log, workflow stages), which is the per-update
overhead.  What is fitted, per update, against the simulator's terms:

- generation (the collect time), no intercept, from the engine's counters: decode
  passes ``steps * (base + per_slot * slots) + per_seq * tokens`` (tokens decoded:
  busy slots summed over steps; the per-slot term is identified only across runs of
  different slot counts, else it is part of ``base``), prefill passes ``pass *
  passes + per_token * prefilled tokens``, and the executor's work, ``per_start *
  rollouts started``; the simulator has a field for each (``prefill_pass_s``,
  ``prefill_per_token_s``, ``start_overhead_s``), and prefills in passes as the
  engine does;
- the training step: ``base + per_token * tokens + per_seq * sequences`` (the
  per-sequence term only across batch sizes);
- recompute: seconds per trained token over the updates that recomputed;
- sync and overhead: their means (tokens/s is a ratio of totals).

The generation terms, fitted apart and without an intercept, are scaled together so
that they add up to the runs' total collect time (the factor is reported).

Older runs without ``step_s`` fall back to ``train_s`` as the step and no overhead.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from sim.fitting import Fit, fit, staged

#: How much less of the decode time's variance a term seen only across runs (the slot
#: count) must leave unexplained, fitted with the within-run terms rather than after
#: them, to be fitted with them: a tenth.
ACROSS_RUNS_GAIN = 0.1

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
    decode_s: float | None = None  # the engine's own pass times (an engine that times them)
    prefill_s: float = 0.0
    prefill_tokens: float = 0.0
    prefill_rows: float = 0.0  # sequences prefilled: each start's group, and every re-prefilled one
    starts: float = 0.0  # rollouts submitted during the update's interval (from the log)
    first: bool = False  # a run's first update (its collect time holds the engine's start)


def updates(
    rows: list[dict[str, Any]], slots: int, sequences: int, recompute_in_step: bool, submitted: list[float] | None = None
) -> list[Update]:
    """The updates of one run (its metrics lines in order), counters turned into
    per-update differences.  ``slots`` and ``sequences`` are the run's when a line
    does not say; ``recompute_in_step`` folds the recomputation into the step (the
    simulator recomputes only under ``segment_wise``)."""
    out: list[Update] = []
    before: dict[str, Any] = {"wall_s": 0.0, "decode_steps": 0, "generated_tokens": 0, "prefills": 0, "prefill_tokens": 0,
                              "prefill_rows": 0, "decode_s": 0.0, "prefill_s": 0.0}
    times = sorted(submitted or [])
    index = 0
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
        starts = 0
        while index < len(times) and times[index] <= float(row["wall_s"]):
            index, starts = index + 1, starts + 1
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
            decode_s=float(row["decode_s"]) - float(before.get("decode_s", 0.0)) if "decode_s" in row else None,
            prefill_s=float(row.get("prefill_s", 0.0)) - float(before.get("prefill_s", 0.0)),
            prefill_tokens=float(row.get("prefill_tokens", 0)) - float(before.get("prefill_tokens", 0)),
            prefill_rows=float(row.get("prefill_rows", 0)) - float(before.get("prefill_rows", 0)),
            starts=float(starts),
            first=not out,
        ))
        before = row
    return out


@dataclass
class RealCosts:
    """The fitted costs of one or more real runs, in the simulator's terms."""

    fits: list[Fit]
    step_base_s: float
    step_per_slot_s: float
    step_per_seq_s: float
    prefill_pass_s: float  # one prefill pass, whatever its rows
    prefill_per_token_s: float  # per prefilled token
    start_overhead_s: float  # the executor's work on a started rollout
    train: Fit
    recompute_per_token_s: float
    sync_s: float | None
    overhead_s: float
    generation_r2: float  # of the collect time the generation terms predict
    scale: float = 1.0  # the factor that made the generation terms add up to the total collect time
    unseen: str = ""  # how the prefill of prompt tokens the simulator does not count was folded in
    startup_s: float = 0.0  # a run's first collect beyond what the terms predict: the engine's start

    def notes(self) -> list[str]:
        lines = [
            f"{'prefill pass':<16} {self.prefill_pass_s:.4g} s + {self.prefill_per_token_s:.4g} s per token "
            "(prefill_pass_s, prefill_per_token_s: one pass per server for the starts that arrive together, one for an update's re-prefills)",
            f"{'per started':<16} {self.start_overhead_s:.4g} s (start_overhead_s: the executor's work on a started rollout)",
        ]
        if self.unseen:
            lines.append(f"{'unseen prompts':<16} {self.unseen}")
        return lines + [
            f"{'engine start':<16} {self.startup_s:.4g} s (startup_s: each run's first collect beyond what the terms above "
            "predict for it, the engine's first passes of new shapes; the first updates are left out of the fits)",
            f"{'collect time':<16} R^2 {self.generation_r2:.3f} predicted from the generation terms above, scaled by {self.scale:.3f} to its total",
            f"{'recompute':<16} {self.recompute_per_token_s:.4g} s per trained token",
            f"{'update overhead':<16} mean {self.overhead_s:.4g} s per update (neither collecting, training, recomputing nor syncing)",
        ]


def _generation(found: list[Update]) -> tuple[list[Fit], dict[str, float]]:
    """Fits of the collect time: from the engine's own pass times when it timed them
    (decode passes by steps, slots and tokens; prefill passes by passes and tokens;
    the rest of the collect time, the executor's, by rollouts started), else the
    collect time by steps, slots, tokens and prefill passes at once.  Returns the fits
    and the costs: ``base``, ``per_slot``, ``per_seq`` (a decode step), ``pass``,
    ``per_token`` (a prefill pass) and ``start`` (the executor, per started rollout)."""
    several_slots = len({u.slots for u in found}) > 1
    decode_terms = {
        "steps": [u.steps for u in found],
        "steps*slots": [u.steps * u.slots if several_slots else 0.0 for u in found],
        "tokens": [u.tokens for u in found],
    }
    if all(u.decode_s is not None for u in found) and sum(u.starts for u in found) > 0:
        # the per-slot cost from what steps and tokens (which vary within a run) leave,
        # unless fitting the three at once leaves clearly less (ACROSS_RUNS_GAIN): at
        # once, a term seen only across runs takes up whatever else differs between them
        # and can push a within-run term out (H200: two runs whose steps differed by
        # their busy sequences, not their slots, gave it 1.7 ms a step and the
        # per-sequence cost none, for 4% less residual; a third run, at the first's slots
        # and few busy sequences, stepped at the second's cost)
        decode_s = [u.decode_s or 0.0 for u in found]
        within = {name: decode_terms[name] for name in ("steps", "tokens")}
        decode = staged("decode passes s", within, {"steps*slots": decode_terms["steps*slots"]}, decode_s)
        joint = fit("decode passes s", decode_terms, decode_s)
        if 1.0 - joint.r2 < (1.0 - ACROSS_RUNS_GAIN) * (1.0 - decode.r2):
            decode = joint
        prefill = fit("prefill passes s", {"prefills": [u.prefills for u in found], "prefill tokens": [u.prefill_tokens for u in found]},
                      [u.prefill_s for u in found])
        executor = fit("executor s", {"starts": [u.starts for u in found]},
                       [max(0.0, u.collect_s - (u.decode_s or 0.0) - u.prefill_s) for u in found])
        fits = [decode, prefill, executor]
        passes = {"pass": prefill["prefills"], "per_token": prefill["prefill tokens"], "start": executor["starts"]}
    else:  # the passes are not timed: their cost per pass from the collect time, the executor's in the rest
        decode = fit("generation s", {**decode_terms, "prefills": [u.prefills for u in found]}, [u.collect_s for u in found])
        fits = [decode]
        passes = {"pass": decode["prefills"], "per_token": 0.0, "start": 0.0}
    return fits, {"base": decode["steps"], "per_slot": decode["steps*slots"], "per_seq": decode["tokens"], **passes}


def fit_costs(found: list[Update], unseen_prompt: float = 0.0, group: int = 1) -> RealCosts:
    """Fit the costs of ``found`` (the updates of every run).  ``unseen_prompt`` is the
    prompt tokens per sequence that the engine prefills and the simulator does not
    count (its prompt length is the trainer's, which may count completions only; a
    rollout is ``group`` sequences): their prefill is folded into the cost per start
    (a start's own rows) and per pass (the rows re-prefilled after updates)."""
    firsts = [u for u in found if u.first]
    found = [u for u in found if not u.first] or found  # the fits are of a running engine
    fits, c = _generation(found)
    collect = [u.collect_s for u in found]

    def terms(u: Update) -> float:
        return (u.steps * (c["base"] + c["per_slot"] * u.slots) + c["per_seq"] * u.tokens
                + c["pass"] * u.prefills + c["per_token"] * u.prefill_tokens + c["start"] * u.starts)

    predicted = [terms(u) for u in found]
    # the terms fitted apart need not add up to the collect time in total (no intercept,
    # outliers): scale them so that they do, since throughput is a ratio of totals
    scale = sum(collect) / sum(predicted) if sum(predicted) > 0 else 1.0
    c = {name: value * scale for name, value in c.items()}
    predicted = [p * scale for p in predicted]
    startup = statistics.fmean(max(0.0, u.collect_s - terms(u)) for u in firsts) if firsts and len(found) > len(firsts) else 0.0
    mean = statistics.fmean(collect)
    ss_tot = sum((y - mean) ** 2 for y in collect)
    r2 = 1.0 - sum((y - p) ** 2 for y, p in zip(collect, predicted)) / ss_tot if ss_tot > 0 else 0.0
    unseen = ""
    starts, passes = sum(u.starts for u in found), sum(u.prefills for u in found)
    if unseen_prompt > 0 and c["per_token"] > 0 and starts > 0 and passes > 0:
        rows = sum(u.prefill_rows for u in found)
        per_start = c["per_token"] * unseen_prompt * group
        per_pass = c["per_token"] * unseen_prompt * max(0.0, rows - starts * group) / passes
        c["start"] += per_start
        c["pass"] += per_pass
        unseen = (f"{unseen_prompt:.3g} prompt tokens per sequence prefilled, not counted by the simulator: "
                  f"+{per_start:.4g} s per start (its {group} rows), +{per_pass:.4g} s per pass (rows re-prefilled after updates)")
    train = fit("train step s", {
        "1": [1.0] * len(found),
        "tokens": [u.trained_tokens for u in found],
        "sequences": [u.sequences for u in found],
    }, [u.step_s for u in found])
    recomputed = [u for u in found if u.recompute_s > 0]
    per_token = sum(u.recompute_s for u in recomputed) / max(1.0, sum(u.trained_tokens for u in recomputed)) if recomputed else 0.0
    syncs = [u.sync_s for u in found if u.sync_s is not None]
    return RealCosts([*fits, train], c["base"], c["per_slot"], c["per_seq"], c["pass"], c["per_token"], c["start"], train, per_token,
                     statistics.fmean(syncs) if syncs else None, statistics.fmean(u.overhead_s for u in found), r2, scale, unseen,
                     startup)
