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
- the training step: ``base + per_padded_token * padded tokens`` when the runs logged
  their padded batches (``padded_tokens``: rows times the longest row, which the
  step's kernels run over), else ``base + per_token * tokens + per_seq * sequences``
  (the per-sequence term only across batch sizes);
- recompute: seconds per trained token over the updates that recomputed;
- sync and overhead: their means (tokens/s is a ratio of totals).

The generation terms, fitted apart and without an intercept, are scaled together so
that they add up to the runs' total collect time (the factor is reported).

Older runs without ``step_s`` fall back to ``train_s`` as the step and no overhead.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from sim.fitting import Fit, fit, scored, slope_error

#: Per-update fields without which a metrics line cannot be used.
REQUIRED = ("wall_s", "wait_s", "train_s", "trained_tokens", "decode_steps", "generated_tokens")
#: The engine's sums over the decode steps straight after a prefill pass (cumulative),
#: by the :class:`StepSums` field each one is.
AFTER_PASS = {"steps": "after_pass_steps", "busy": "after_pass_busy", "seconds": "after_pass_s",
              "busy_seconds": "after_pass_busy_s", "busy2": "after_pass_busy2"}


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
    checkpoint_s: float | None = None  # the update's checkpoint write (0: none due; None: a run that did not time it)
    decode_busy_s: float | None = None  # over its decode steps: busy slots times seconds, summed
    decode_busy2: float = 0.0  # and busy slots squared, summed
    prefill_s: float = 0.0
    prefill_tokens: float = 0.0
    # the tokens the passes ran, padding included (None: an engine or a run that did not
    # count them), and the engine's padding rule: the multiple its pass width is rounded
    # up to, and whether its rows are a power of two
    prefill_padded: float | None = None
    prefill_pad_to: int = 1
    prefill_pow2_rows: bool = False
    starts: float = 0.0  # rollouts submitted during the update's interval (from the log)
    first: bool = False  # a run's first update (its collect time holds the engine's start)
    run: int = 0  # which of the calibrated runs it belongs to
    padded_tokens: float | None = None  # the trainer's padded batch, rows times width (None: a run that did not log it)
    # the engine's sums over the decode steps straight after a prefill pass (None: an
    # engine or a run that did not keep them)
    after_pass: StepSums | None = None
    pad_to: int = 1  # the multiple the trainer rounded that width up to
    # whether the engine's decode step ran over every slot (the built-in engine) or its
    # live rows only (the Hugging Face and vLLM engines); None: not known
    every_slot: bool | None = None


def updates(
    rows: list[dict[str, Any]], slots: int, sequences: int, recompute_in_step: bool, submitted: list[float] | None = None,
    run: int = 0, every_slot: bool | None = None,
) -> list[Update]:
    """The updates of one run (its metrics lines in order; ``run`` tells it from the
    others calibrated with it), counters turned into per-update differences.  ``slots``
    and ``sequences`` are the run's when a line does not say; ``recompute_in_step``
    folds the recomputation into the step (the simulator recomputes only under
    ``segment_wise``); ``every_slot`` is the engine's way of decoding where a line
    does not say (``decodes_every_slot``)."""
    out: list[Update] = []
    before: dict[str, Any] = {"wall_s": 0.0, "decode_steps": 0, "generated_tokens": 0, "prefills": 0, "prefill_tokens": 0,
                              "decode_s": 0.0, "prefill_s": 0.0, "decode_busy_s": 0.0, "decode_busy2": 0,
                              **{key: 0 for key in AFTER_PASS.values()}}
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
        checkpoint = float(row["checkpoint_s"]) if "checkpoint_s" in row else None
        parts = float(row["wait_s"]) + step + recompute + (sync or 0.0) + (checkpoint or 0.0)
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
            checkpoint_s=checkpoint,
            decode_s=float(row["decode_s"]) - float(before.get("decode_s", 0.0)) if "decode_s" in row else None,
            prefill_s=float(row.get("prefill_s", 0.0)) - float(before.get("prefill_s", 0.0)),
            decode_busy_s=float(row["decode_busy_s"]) - float(before.get("decode_busy_s", 0.0)) if "decode_busy_s" in row else None,
            decode_busy2=float(row.get("decode_busy2", 0)) - float(before.get("decode_busy2", 0)),
            prefill_tokens=float(row.get("prefill_tokens", 0)) - float(before.get("prefill_tokens", 0)),
            prefill_padded=float(row["prefill_padded_tokens"]) - float(before.get("prefill_padded_tokens", 0))
            if "prefill_padded_tokens" in row else None,
            prefill_pad_to=int(row.get("prefill_pad_to", 1)),
            prefill_pow2_rows=bool(row.get("prefill_pow2_rows", False)),
            starts=float(starts),
            first=not out,
            run=run,
            padded_tokens=float(row["padded_tokens"]) if "padded_tokens" in row else None,
            after_pass=StepSums(**{field: float(row[key]) - float(before.get(key, 0)) for field, key in AFTER_PASS.items()})
            if all(key in row for key in AFTER_PASS.values()) else None,
            pad_to=int(row.get("pad_to", 1)),
            every_slot=bool(row["decodes_every_slot"]) if "decodes_every_slot" in row else every_slot,
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
    startup_s: float = 0.0  # a run's first collect beyond what the terms predict: the engine's start
    checkpoint_s: float = 0.0  # the mean checkpoint write (0: the runs timed none; then it is in the overhead)
    overhead_per_seq_s: float = 0.0  # the overhead's part per trained sequence (runs of two batch sizes tell it)
    resume_overhead_s: float = 0.0  # the executor's work per update while the trainer waits, apart from its starts
    # each run's collect time over what the fitted terms give it (several runs), and the
    # runs of one shape (slots) by name: runs that differ in nothing but the machine's
    # state and still stand apart show how far the machine moved, which no term of the
    # model can carry into a prediction
    run_ratios: dict[str, float] = field(default_factory=dict)
    run_shapes: dict[str, float] = field(default_factory=dict)
    # how the engine padded a prefill pass, when it counted the tokens its passes ran:
    # prefill_per_token_s is then per token run (0: per token its rows hold)
    prefill_pad_to: int = 0
    prefill_pow2_rows: bool = False

    @property
    def run_spread(self) -> float:
        """Among runs of one shape, the slowest run's ratio over the fastest's, less one
        (the largest such spread; 0 where no two runs share a shape)."""
        spread = 0.0
        for shape in set(self.run_shapes.values()):
            ratios = [r for run, r in self.run_ratios.items() if self.run_shapes.get(run) == shape]
            if len(ratios) > 1 and min(ratios) > 0:
                spread = max(spread, max(ratios) / min(ratios) - 1.0)
        return spread

    def notes(self) -> list[str]:
        shared = len(set(self.run_shapes.values())) < len(self.run_shapes)
        spread = ([f"{'runs vs the fit':<16} " + ", ".join(f"{run} {ratio:.3f}" for run, ratio in self.run_ratios.items())
                   + " (each run's collect time over what the terms above give it)"
                   + (f"; runs of one shape {100 * self.run_spread:.1f}% apart: the machine's state, which a prediction "
                      "from them carries" if shared else "")]
                  if len(self.run_ratios) > 1 else [])
        return spread + [
            f"{'prefill pass':<16} {self.prefill_pass_s:.4g} s + {self.prefill_per_token_s:.4g} s per token"
            + (f" run (prefill_pad_to {self.prefill_pad_to}{', prefill_pow2_rows' if self.prefill_pow2_rows else ''}: the pass's "
               f"rows{', a power of two,' if self.prefill_pow2_rows else ''} times its longest context rounded up to a multiple "
               f"of {self.prefill_pad_to}; " if self.prefill_pad_to else " (")
            + "prefill_pass_s, prefill_per_token_s: one pass per server for the starts that arrive together, one for an update's "
            "re-prefills and the starts that join them; every sample's prompt is a row)",
            f"{'per started':<16} {self.start_overhead_s:.4g} s (start_overhead_s: the executor's work on a started rollout)",
            f"{'per resume':<16} {self.resume_overhead_s:.4g} s (resume_overhead_s: the executor's work each time generation "
            "resumes after an update; its work per engine step is in step_base_s)",
            f"{'engine start':<16} {self.startup_s:.4g} s (startup_s: each run's first collect beyond what the terms above "
            "predict for it, the engine's first passes of new shapes; the first updates are left out of the fits)",
            f"{'collect time':<16} R^2 {self.generation_r2:.3f} predicted from the generation terms above, scaled by {self.scale:.3f} to its total",
            f"{'recompute':<16} {self.recompute_per_token_s:.4g} s per trained token",
            f"{'update overhead':<16} {self.overhead_s:.4g} s + {self.overhead_per_seq_s:.4g} s per trained sequence per update "
            "(update_overhead_s, update_overhead_per_seq_s: neither collecting, training, recomputing, syncing nor checkpointing)",
            f"{'checkpoint':<16} mean {self.checkpoint_s:.4g} s per checkpoint written (checkpoint_s; the runs' interval is checkpoint_every)"
            if self.checkpoint_s else f"{'checkpoint':<16} none timed by these runs (none written, or in the update overhead)",
        ]


@dataclass
class StepSums:
    """A run's decode steps summed as the engine sums them: steps, busy slots, seconds,
    busy times seconds, busy squared."""

    steps: float
    busy: float
    seconds: float
    busy_seconds: float
    busy2: float

    @classmethod
    def of(cls, found: list[Update]) -> StepSums:
        return cls(sum(u.steps for u in found), sum(u.tokens for u in found), sum(u.decode_s or 0.0 for u in found),
                   sum(u.decode_busy_s or 0.0 for u in found), sum(u.decode_busy2 for u in found))

    @classmethod
    def after_pass(cls, found: list[Update]) -> StepSums:
        """The sums over the decode steps straight after a prefill pass."""
        return sum((u.after_pass for u in found if u.after_pass is not None), cls(0, 0, 0, 0, 0))

    def __add__(self, other: StepSums) -> StepSums:
        return StepSums(self.steps + other.steps, self.busy + other.busy, self.seconds + other.seconds,
                        self.busy_seconds + other.busy_seconds, self.busy2 + other.busy2)

    def __sub__(self, other: StepSums) -> StepSums:
        return StepSums(self.steps - other.steps, self.busy - other.busy, self.seconds - other.seconds,
                        self.busy_seconds - other.busy_seconds, self.busy2 - other.busy2)

    @property
    def covariance(self) -> float:
        """Of a step's seconds and its busy slots, times the steps."""
        return self.busy_seconds - self.busy * self.seconds / self.steps if self.steps else 0.0

    @property
    def variance(self) -> float:
        """Of a step's busy slots, times the steps."""
        return self.busy2 - self.busy * self.busy / self.steps if self.steps else 0.0

    def at_no_busy(self, per_busy: float) -> float:
        """A step's seconds less ``per_busy`` for each of its busy slots, on average."""
        return (self.seconds - per_busy * self.busy) / self.steps if self.steps else 0.0

    def line(self) -> tuple[float, float]:
        """This run's own least-squares line of a step's seconds on its busy slots:
        (seconds at no busy slot, seconds per busy slot)."""
        slope = self.covariance / self.variance if self.variance > 0 else 0.0
        return self.at_no_busy(slope), slope


#: Standard errors by which the runs' step costs must slope with their busy rows, across
#: runs, for the slope to be taken as a cost rather than the machine's drift between them.
SIGNIFICANT = 2.0


def _decode(found: list[Update], terms: dict[str, list[float]]) -> tuple[Fit, Fit | None]:
    """The decode passes' seconds: ``steps * (base + per_slot * slots) + per_seq *
    tokens``.  The per-sequence cost from how a step's time goes with its busy slots
    within each run: from the engine's sums over its steps (busy * seconds, busy
    squared) where it keeps them, else from the updates (each run with a step cost of
    its own); then the runs' step costs against their slot counts, weighted by their
    steps.  Fitted all at once, a term that differs between runs takes up whatever else
    differs between them, and a fidelity study's two runs differ in busy slots and slots
    alike: a CPU study's per-slot cost went to the busy sequences (21 microseconds
    each, none per slot; its synchronous run, 16 busy of 256 slots, was predicted to
    step in 0.8 ms and took 3.6), an H200 study's the other way (1.7 ms a step to the
    slots, none to the busy sequences)."""
    runs = sorted({u.run for u in found})
    decode_s = [u.decode_s or 0.0 for u in found]
    steps = {run: sum(u.steps for u in found if u.run == run) for run in runs}
    dropped: list[str] = []
    after_pass = 0.0  # a decode step's extra seconds straight after a prefill pass
    if all(u.decode_busy_s is not None for u in found):
        # per step: seconds = a_run + per_seq * busy; the slope pooled over the runs' steps.
        # Where the engine kept the steps straight after a pass apart, the slope and the
        # runs' step costs come from the other steps: a pass starts many sequences at once,
        # so the step after it is both the busiest and (on a CPU) a slower one, and pooled
        # the two read as a cost per busy slot
        split = all(u.after_pass is not None for u in found)
        cold = {run: StepSums.after_pass([u for u in found if u.run == run]) for run in runs} if split else {}
        sums = {run: StepSums.of([u for u in found if u.run == run]) - cold.get(run, StepSums(0, 0, 0, 0, 0))
                for run in runs if steps[run] > 0}
        variance = sum(m.variance for m in sums.values())
        per_seq = max(0.0, sum(m.covariance for m in sums.values()) / variance) if variance > 0 else 0.0
        # no run's step may cost less than nothing at no busy slot: a slope steeper than a
        # run's own seconds per busy slot (a few noisy steps) is cut to it
        per_seq = min([per_seq, *(m.seconds / m.busy for m in sums.values() if m.busy > 0)])
        if per_seq == 0.0:
            dropped.append("tokens")
        step_cost = {run: m.at_no_busy(per_seq) for run, m in sums.items()}
        # a step's busy slots in each run, over the steps its step cost is taken from
        mean_busy = {run: m.busy / m.steps for run, m in sums.items() if m.steps > 0}
        counted = [run for run in cold if cold[run].steps > 0 and run in step_cost]
        if counted:
            extra = sum(cold[run].seconds - cold[run].steps * step_cost[run] - per_seq * cold[run].busy for run in counted)
            after_pass = max(0.0, extra / sum(cold[run].steps for run in counted))
    else:
        within = fit("decode passes s", {
            **{f"steps@{run}": [u.steps if u.run == run else 0.0 for u in found] for run in runs},
            "tokens": terms["tokens"],
        }, decode_s)
        per_seq = within["tokens"]
        dropped += ["tokens"] if "tokens" in within.dropped else []
        step_cost = {run: within[f"steps@{run}"] for run in runs if steps[run] > 0}
        mean_busy = {run: sum(u.tokens for u in found if u.run == run) / steps[run] for run in step_cost}
    slots = {u.run: u.slots for u in found}
    measured = sorted(step_cost)
    live_rows = bool(found) and all(u.every_slot is False for u in found)
    across_runs: Fit | None = None
    if live_rows:
        # an engine that decodes its live rows only has no cost per slot.  What the runs'
        # step costs (at no busy row, by the slope within runs) still have in common with
        # their busy rows is more of the cost per busy row, where the runs tell it: within
        # a run the busy rows fall as sequences finish while the engine still decodes the
        # finished ones until half its batch is done, which flattens the slope within
        # runs (a CPU study: 4 microseconds a row within, 224 across).  But two runs' step
        # costs also differ by the machine's state (an H100's calibration run and its
        # rerun, seed and all, stepped in 15.2 and 19.0 ms at the same 284 busy rows,
        # which fitted across three runs read as 24 microseconds a row).  So the slope
        # across runs is taken only where it stands out of the runs' own scatter about
        # it (SIGNIFICANT standard errors, from three runs or more); else the step cost
        # is the runs' costs at no busy row weighted by their steps.
        base = sum(step_cost[run] * steps[run] for run in measured) / max(1.0, sum(steps[run] for run in measured))
        per_slot = 0.0
        dropped.append("steps*slots")
        if len(measured) > 1:
            xs, ys, ws = [mean_busy[run] for run in measured], [step_cost[run] for run in measured], [steps[run] for run in measured]
            across_terms = {"1": [1.0] * len(measured), "busy": xs}
            across = fit("decode step per run", across_terms, ys, ws)
            error = slope_error(across, xs, ys, ws)
            if "busy" not in across.dropped and (error is None or across["busy"] > SIGNIFICANT * error):
                base = across["1"]
                per_seq += across["busy"]
                if "tokens" in dropped:
                    dropped.remove("tokens")
                across_runs = across
            else:  # within the machine's drift between runs: no cost per busy row from it
                across_runs = scored("decode step per run", across_terms, {"1": base, "busy": 0.0}, ys, ws, ["busy"])
    elif len({slots[run] for run in measured}) > 1:
        across = fit("decode step per run", {"1": [1.0] * len(measured), "slots": [slots[run] for run in measured]},
                     [step_cost[run] for run in measured], [steps[run] for run in measured])
        base, per_slot = across["1"], across["slots"]
        dropped += ["steps*slots"] if "slots" in across.dropped else []
    else:  # one slot count: its cost is part of the base
        base = sum(step_cost[run] * steps[run] for run in measured) / max(1.0, sum(steps[run] for run in measured))
        per_slot = 0.0
        dropped.append("steps*slots")
    terms = {**terms, "after pass": [u.after_pass.steps if u.after_pass else 0.0 for u in found]}
    return scored("decode passes s", terms, {"steps": base, "steps*slots": per_slot, "tokens": per_seq, "after pass": after_pass},
                  decode_s, [1.0] * len(found), dropped), across_runs


def _generation(found: list[Update], padded: bool) -> tuple[list[Fit], dict[str, float]]:
    """Fits of the collect time: from the engine's own pass times when it timed them
    (decode passes by steps, slots and tokens; prefill passes by passes and tokens;
    the rest of the collect time, the executor's, by rollouts started), else the
    collect time by steps, slots, tokens and prefill passes at once; with ``padded``
    (:func:`padded_passes`) prefill passes by the tokens they ran.  Returns the fits
    and the costs: ``base``, ``per_slot``, ``per_seq`` (a decode step), ``pass``,
    ``per_token`` (a prefill pass) and ``start`` (the executor, per started rollout)."""
    several_slots = len({u.slots for u in found}) > 1
    decode_terms = {
        "steps": [u.steps for u in found],
        "steps*slots": [u.steps * u.slots if several_slots else 0.0 for u in found],
        "tokens": [u.tokens for u in found],
    }
    if all(u.decode_s is not None for u in found) and sum(u.starts for u in found) > 0:
        decode, across_runs = _decode(found, decode_terms)
        prefill = fit("prefill passes s", {"prefills": [u.prefills for u in found], "prefill tokens": [prefill_units(u, padded) for u in found]},
                      [u.prefill_s for u in found])
        # the rest of the collect time is the executor's: per update (the batch's bookkeeping
        # and the event loop's turns once generation resumes), per engine step (its turns
        # between steps, the finished sequences) and per started rollout; a run whose
        # updates all start as many rollouts cannot tell the last from the first (dropped)
        executor = fit("executor s", {"1": [1.0] * len(found), "steps": [u.steps for u in found],
                                      "starts": [u.starts for u in found]},
                       [max(0.0, u.collect_s - (u.decode_s or 0.0) - u.prefill_s) for u in found])
        fits = [decode, *([across_runs] if across_runs is not None else []), prefill, executor]
        # the step after a pass is charged to the pass (the simulator decodes a step after each)
        passes = {"pass": prefill["prefills"] + decode["after pass"], "per_token": prefill["prefill tokens"], "start": executor["starts"],
                  "resume": executor["1"], "executor_step": executor["steps"]}
    else:  # the passes are not timed: their cost per pass from the collect time, the executor's in the rest
        decode = fit("generation s", {**decode_terms, "prefills": [u.prefills for u in found]}, [u.collect_s for u in found])
        fits = [decode]
        passes = {"pass": decode["prefills"], "per_token": 0.0, "start": 0.0, "resume": 0.0, "executor_step": 0.0}
    # a decode step of the simulator is the engine's step and the executor's work around it
    return fits, {"base": decode["steps"] + passes.pop("executor_step"), "per_slot": decode["steps*slots"],
                  "per_seq": decode["tokens"], **passes}


def padded_passes(found: list[Update]) -> bool:
    """Whether every update counted the tokens its prefill passes ran, padding included:
    then a pass is priced by those (a padded pass costs what it runs, not what its rows
    hold: an H100's graph passes fitted R^2 0.90 on their rows' tokens, 0.99 on their
    padded rows)."""
    return bool(found) and all(u.prefill_padded is not None for u in found)


def prefill_units(u: Update, padded: bool) -> float:
    """What an update's prefill passes are priced by: with ``padded`` (:func:`padded_passes`
    of the updates fitted together), the tokens they ran; else the tokens their rows held."""
    return u.prefill_padded if padded and u.prefill_padded is not None else u.prefill_tokens


def fit_costs(found: list[Update], names: list[str] | None = None) -> RealCosts:
    """Fit the costs of ``found`` (the updates of every run; run ``k`` is called
    ``names[k]`` in the report where given)."""
    firsts = [u for u in found if u.first]
    found = [u for u in found if not u.first] or found  # the fits are of a running engine
    padded_rule = padded_passes(found)  # decided once for the fit: the passes' line and the collect time's terms
    fits, c = _generation(found, padded_rule)
    collect = [u.collect_s for u in found]

    def terms(u: Update) -> float:
        return (u.steps * (c["base"] + c["per_slot"] * u.slots) + c["per_seq"] * u.tokens
                + c["pass"] * u.prefills + c["per_token"] * prefill_units(u, padded_rule) + c["start"] * u.starts + c["resume"])

    predicted = [terms(u) for u in found]
    # the terms fitted apart need not add up to the collect time in total (no intercept,
    # outliers): scale them so that they do, since throughput is a ratio of totals
    scale = sum(collect) / sum(predicted) if sum(predicted) > 0 else 1.0
    c = {name: value * scale for name, value in c.items()}
    predicted = [p * scale for p in predicted]
    startup = statistics.fmean(max(0.0, u.collect_s - terms(u)) for u in firsts) if firsts and len(found) > len(firsts) else 0.0
    ratios: dict[str, float] = {}
    shapes: dict[str, float] = {}
    for run in dict.fromkeys(u.run for u in found):
        mine = [(u, y, p) for u, y, p in zip(found, collect, predicted) if u.run == run]
        if sum(p for _, _, p in mine) > 0:
            name = names[run] if names is not None and run < len(names) else str(run)
            ratios[name] = sum(y for _, y, _ in mine) / sum(p for _, _, p in mine)
            shapes[name] = mine[0][0].slots
    mean = statistics.fmean(collect)
    ss_tot = sum((y - mean) ** 2 for y in collect)
    r2 = 1.0 - sum((y - p) ** 2 for y, p in zip(collect, predicted)) / ss_tot if ss_tot > 0 else 0.0
    # the step's kernels run over the padded batch: its size follows the longest row of
    # each batch, which the trained tokens alone do not tell (on a CPU the step's R^2
    # was 0.46 against trained tokens, 0.93 against padded ones)
    padded = [u.padded_tokens for u in found]
    step_terms = ({"1": [1.0] * len(found), "padded tokens": [float(p or 0.0) for p in padded]}
                  if all(p is not None for p in padded) else
                  {"1": [1.0] * len(found), "tokens": [u.trained_tokens for u in found], "sequences": [u.sequences for u in found]})
    train = fit("train step s", step_terms, [u.step_s for u in found])
    recomputed = [u for u in found if u.recompute_s > 0]
    per_token = sum(u.recompute_s for u in recomputed) / max(1.0, sum(u.trained_tokens for u in recomputed)) if recomputed else 0.0
    syncs = [u.sync_s for u in found if u.sync_s is not None]
    written = [u.checkpoint_s for u in found if u.checkpoint_s]
    # the update's bookkeeping (advantages, samples, log) grows with its sequences: a
    # slope when the runs differ in batch size, else the mean (the term is dropped, named)
    overhead = fit("update overhead s", {"1": [1.0] * len(found), "sequences": [u.sequences for u in found]},
                   [u.overhead_s for u in found])
    return RealCosts([*fits, train, overhead], c["base"], c["per_slot"], c["per_seq"], c["pass"], c["per_token"], c["start"], train,
                     per_token, statistics.fmean(syncs) if syncs else None, overhead["1"], r2, scale, startup,
                     statistics.fmean(written) if written else 0.0, overhead["sequences"], c["resume"], ratios, shapes,
                     prefill_pad_to=max(u.prefill_pad_to for u in found) if padded_rule else 0,
                     prefill_pow2_rows=padded_rule and all(u.prefill_pow2_rows for u in found))
