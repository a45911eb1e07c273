"""A real run's cost model: recover known coefficients from metrics lines built with
them (two runs of different slots and batch sizes, 2% noise), the prefill pass's and
the executor's per start each into its own scenario field; the simulator's terms cost
what they say."""

from __future__ import annotations

import random

import pytest

from sim.calibrate_real import fit_costs, updates
from sim.config import Scenario
from sim.fitting import fit
from sim.simulator import simulate

TRUE = {
    "step_base": 4e-3, "per_slot": 2e-5, "per_seq": 3e-5,  # decode pass: steps * (base + per_slot * slots) + per_seq * tokens
    "prefill": 1.5e-3, "prefill_token": 2e-6, "executor": 6e-4,  # per pass, per prefilled token, per started rollout
    "train_base": 0.05, "train_token": 2e-5, "train_seq": 1e-3, "sync": 0.002, "overhead": 0.03, "overhead_seq": 2e-4,
    "startup": 0.4,  # the engine's start, in each run's first collect
    "resume": 0.004, "executor_step": 2e-4,  # the executor's work per update and per engine step
}
GROUP = 4  # sequences per rollout


def _run(rng: random.Random, slots: int, batch: int, count: int, padded: bool = False) -> tuple[list[dict], list[float]]:
    """Metrics lines of one run (cumulative counters) and its rollouts' submission times.
    With ``padded``, the engine pads its passes (to widths of 16, rows to a power of two)
    and says so: a pass costs the tokens it runs, 1.2 to 3 times its rows' tokens."""
    noisy = lambda x: x * (1 + rng.uniform(-0.02, 0.02))  # noqa: E731
    rows, submitted = [], []
    totals = {"decode_steps": 0, "generated_tokens": 0, "prefills": 0, "prefill_tokens": 0, "prefill_rows": 0, "decode_s": 0.0,
              "prefill_s": 0.0}
    wall = 0.0
    for index in range(count):
        steps = rng.randint(20, 80)
        tokens = steps * rng.uniform(0.3, 1.0) * slots
        starts = rng.randint(batch // 2, 2 * batch)
        prefills, prefill_tokens = rng.randint(max(1, starts // 3), starts), rng.randint(20, 60) * starts
        prefill_rows = GROUP * starts + rng.randint(0, slots // 2)  # each start's group, and re-prefilled sequences
        decode_s = noisy(steps * (TRUE["step_base"] + TRUE["per_slot"] * slots) + TRUE["per_seq"] * tokens)
        run_tokens = round(prefill_tokens * rng.uniform(1.2, 3.0)) if padded else prefill_tokens
        prefill_s = noisy(TRUE["prefill"] * prefills + TRUE["prefill_token"] * run_tokens)
        executor = TRUE["executor"] * starts + TRUE["resume"] + TRUE["executor_step"] * steps
        collect = decode_s + prefill_s + noisy(executor) + (TRUE["startup"] if index == 0 else 0.0)
        trained = rng.randint(10, 40) * batch
        step = noisy(TRUE["train_base"] + TRUE["train_token"] * trained + TRUE["train_seq"] * batch)
        sync, overhead = noisy(TRUE["sync"]), noisy(TRUE["overhead"] + TRUE["overhead_seq"] * batch)
        submitted.extend(sorted(wall + rng.uniform(0, collect) for _ in range(starts)))
        wall += collect + step + sync + overhead
        for key, value in (("decode_steps", steps), ("generated_tokens", round(tokens)), ("prefills", prefills),
                           ("prefill_tokens", prefill_tokens), ("prefill_rows", prefill_rows), ("decode_s", decode_s),
                           ("prefill_s", prefill_s)):
            totals[key] += value
        rows.append({**totals, "wall_s": wall, "wait_s": collect, "train_s": step + sync + overhead / 2, "step_s": step,
                     "recompute_s": 0.0, "sync_s": sync, "trained_tokens": trained, "sequences": batch, "slots": slots})
        if padded:
            ran = rows[-2]["prefill_padded_tokens"] if len(rows) > 1 else 0
            rows[-1].update(prefill_padded_tokens=ran + run_tokens, prefill_pad_to=16, prefill_pow2_rows=True)
    return rows, submitted


def _close(got: float, want: float, tol: float = 0.05) -> bool:
    return abs(got - want) <= tol * abs(want)


def test_known_costs_are_recovered_within_5_percent():
    rng = random.Random(7)
    found = []
    for run, (slots, batch) in enumerate(((256, 64), (128, 32))):
        rows, submitted = _run(rng, slots, batch, 120)
        found += updates(rows, slots, batch, recompute_in_step=True, submitted=submitted, run=run)
    costs = fit_costs(found)
    decode, prefill, executor, train, overhead = costs.fits
    # a simulated decode step is the engine's and the executor's work around it
    assert _close(costs.step_base_s, TRUE["step_base"] + TRUE["executor_step"]) and _close(costs.step_per_slot_s, TRUE["per_slot"]), decode
    assert _close(costs.step_per_seq_s, TRUE["per_seq"]), decode
    assert _close(prefill["prefills"], TRUE["prefill"]) and _close(prefill["prefill tokens"], TRUE["prefill_token"]), prefill
    assert _close(executor["starts"], TRUE["executor"]), executor
    assert _close(train["1"], TRUE["train_base"]) and _close(train["tokens"], TRUE["train_token"]), train
    assert _close(train["sequences"], TRUE["train_seq"]), train
    assert _close(costs.sync_s or 0.0, TRUE["sync"]) and _close(costs.overhead_s, TRUE["overhead"]), overhead
    assert _close(costs.overhead_per_seq_s, TRUE["overhead_seq"]), overhead  # two batch sizes tell the slope
    assert decode.r2 > 0.99 and train.r2 > 0.9 and costs.generation_r2 > 0.99
    # the scenario's fields: a prefill pass (fixed and per token) and the executor's work per start, apart
    assert _close(costs.prefill_pass_s, TRUE["prefill"]) and _close(costs.prefill_per_token_s, TRUE["prefill_token"])
    assert _close(costs.start_overhead_s, TRUE["executor"]) and _close(costs.resume_overhead_s, TRUE["resume"], 0.1), executor
    assert _close(executor["steps"], TRUE["executor_step"], 0.1), executor
    assert any("prefill_pass_s" in note for note in costs.notes()) and any("resume_overhead_s" in note for note in costs.notes())
    assert _close(costs.startup_s, TRUE["startup"], 0.1) and any("startup_s" in note for note in costs.notes())
    assert any("start_overhead_s" in note for note in costs.notes())


def test_an_engine_that_counts_its_padded_passes_is_priced_by_the_tokens_they_ran():
    """Passes that cost what they run, padding included: with the engine's count of those
    tokens the fit recovers the cost per token and names the padding rule for the
    scenario; from the rows' tokens alone (a run that did not count them) it cannot."""
    rng = random.Random(11)
    found, unpadded = [], []
    for run, (slots, batch) in enumerate(((256, 64), (128, 32))):
        rows, submitted = _run(rng, slots, batch, 120, padded=True)
        found += updates(rows, slots, batch, recompute_in_step=True, submitted=submitted, run=run)
        bare = [{k: v for k, v in row.items() if not k.startswith("prefill_pad")} for row in rows]
        unpadded += updates(bare, slots, batch, recompute_in_step=True, submitted=submitted, run=run)
    costs = fit_costs(found)
    prefill = costs.fits[1]
    assert _close(costs.prefill_per_token_s, TRUE["prefill_token"]) and _close(costs.prefill_pass_s, TRUE["prefill"]), prefill
    assert prefill.r2 > 0.99 and costs.prefill_pad_to == 16 and costs.prefill_pow2_rows
    assert any("per token run (prefill_pad_to 16, prefill_pow2_rows" in note for note in costs.notes())
    rough = fit_costs(unpadded)
    assert rough.prefill_pad_to == 0 and not rough.prefill_pow2_rows
    assert not _close(rough.prefill_per_token_s, TRUE["prefill_token"], 0.3)  # the padding read as dearer tokens
    # one run that did not count them makes every update priced by its rows' tokens
    mixed = fit_costs(found[:120] + unpadded[120:])
    assert mixed.prefill_pad_to == 0 and _close(mixed.fits[1]["prefill tokens"], rough.fits[1]["prefill tokens"], 0.5)


def test_one_slot_count_and_one_batch_size_cannot_tell_their_terms_apart():
    rng = random.Random(3)
    rows, submitted = _run(rng, 256, 64, 60)
    costs = fit_costs(updates(rows, 256, 64, recompute_in_step=True, submitted=submitted))
    decode, _, _, train, overhead = costs.fits
    assert "steps*slots" in decode.dropped and costs.step_per_slot_s == 0
    # the slot cost is then part of the base: the run itself is still predicted
    assert _close(costs.step_base_s, TRUE["step_base"] + TRUE["executor_step"] + TRUE["per_slot"] * 256)
    assert "sequences" in train.dropped and _close(train["1"], TRUE["train_base"] + TRUE["train_seq"] * 64)
    assert "sequences" in overhead.dropped and _close(costs.overhead_s, TRUE["overhead"] + TRUE["overhead_seq"] * 64)


def test_a_negative_or_collinear_term_is_dropped_and_named():
    xs = [float(i) for i in range(1, 30)]
    falling = fit("y", {"1": [1.0] * len(xs), "x": xs}, [10 - 0.1 * x for x in xs])
    assert falling.dropped == ["x"] and falling["x"] == 0 and falling["1"] == pytest.approx(sum(10 - 0.1 * x for x in xs) / len(xs))
    twins = fit("y", {"a": xs, "b": [2 * x for x in xs]}, [3 * x for x in xs])
    assert twins.dropped == ["b"] and twins["a"] == pytest.approx(3.0) and twins.r2 == pytest.approx(1.0)


SMALL = ["run.rollouts=200", "ledger.batch_size=8", "ledger.max_concurrent=16", "ledger.max_staleness=0",
         "generation.servers=1", "generation.slots=16", "workload.response_len={kind='fixed', value=20}",
         "workload.prompt_len.value=4", "generation.step_per_kv_token_s=0",
         "generation.step_per_seq_s=0", "generation.step_base_s=0.01", "training.step_base_s=0.5", "training.step_per_token_s=0",
         "training.weight_sync_s=0.1", "training.colocated=true",
         "generation.prefill_per_token_s=0"]


def test_the_new_simulator_terms_cost_what_they_say():
    """Synchronous, fixed lengths, one server: each update is one generation round of
    8 rollouts (20 decode steps after their prefills), a step, the sync and the overhead."""
    base = simulate(Scenario().with_overrides(SMALL))
    updates_ = 200 // 8
    assert base.sim_time_s == pytest.approx(updates_ * (20 * 0.01 + 0.5 + 0.1), rel=1e-6)
    more = {
        "training.update_overhead_s=0.2": updates_ * 0.2,
        "training.step_per_seq_s=0.01": updates_ * 8 * 0.01,
        "generation.step_per_slot_s=0.001": updates_ * 20 * 16 * 0.001,  # every slot, busy or not
        "generation.prefill_pass_s=0.05": updates_ * 0.05,  # the 8 rollouts of a round start together: one pass
        "generation.prefill_per_token_s=0.001": updates_ * 8 * 4 * 0.001,  # their prompts' tokens
        "generation.start_overhead_s=0.05": updates_ * 8 * 0.05,  # the executor's work on each start
        "generation.prefill_base_s=0.05": updates_ * 8 * 0.05,  # the old name of start_overhead_s
        "generation.resume_overhead_s=0.05": (updates_ - 1) * 0.05,  # each resume after an update (the first round has none)
    }
    for override, extra in more.items():
        got = simulate(Scenario().with_overrides([*SMALL, override]))
        assert got.sim_time_s == pytest.approx(base.sim_time_s + extra, rel=1e-6), override
    idle = simulate(Scenario().with_overrides([*SMALL, "training.update_overhead_s=0.2"]))
    assert idle.trainer_idle_s == pytest.approx(base.trainer_idle_s, rel=1e-6)  # overhead is not waiting
    resumed = simulate(Scenario().with_overrides([*SMALL, "generation.resume_overhead_s=0.05"]))
    assert resumed.trainer_idle_s == pytest.approx(base.trainer_idle_s + (updates_ - 1) * 0.05, rel=1e-6)  # the executor's is


def _decode_runs(rng: random.Random, shapes, per_slot: float, noise: float, step_sums: bool = True, speeds=None,
                 flat_within: bool = False) -> list:
    """Updates of runs of ``(slots, busy fraction range)``: each decode step of ``busy``
    slots takes ``(base + per_slot * slots + per_seq * busy)`` seconds, off by up to
    ``noise`` and times the run's entry of ``speeds`` (the machine's state while it ran;
    1 by default); with ``flat_within`` a step costs by the run's mean busy slots, not its
    own (an engine that decodes its finished rows too, until it compacts); with ``step_sums`` the lines carry the engine's sums over its steps
    (busy times seconds, busy squared), else only the totals (an older run's)."""
    found = []
    for run, (slots, busy) in enumerate(shapes):
        speed = speeds[run] if speeds is not None else 1.0
        rows, submitted = _run(rng, slots, 32, 120)
        totals = {"generated_tokens": 0, "decode_s": 0.0, "decode_busy_s": 0.0, "decode_busy2": 0}
        before, original, shift = 0, 0.0, 0.0
        for row in rows:  # the decode time again, step by step (the collect and wall times moved with it)
            decoded = totals["decode_s"]
            for _ in range(row["decode_steps"] - before):
                n = round(rng.uniform(*busy) * slots)
                decoded_rows = sum(busy) / 2 * slots if flat_within else n
                seconds = (TRUE["step_base"] + per_slot * slots + TRUE["per_seq"] * decoded_rows) * (1 + rng.uniform(-noise, noise)) * speed
                for key, value in (("generated_tokens", n), ("decode_s", seconds), ("decode_busy_s", n * seconds), ("decode_busy2", n * n)):
                    totals[key] += value
            before = row["decode_steps"]
            moved = (totals["decode_s"] - decoded) - (row["decode_s"] - original)
            original, shift = row["decode_s"], shift + moved
            row["wait_s"] += moved
            row["wall_s"] += shift
            row.update(totals if step_sums else {k: totals[k] for k in ("generated_tokens", "decode_s")})
        found += updates(rows, slots, 32, recompute_in_step=True, submitted=submitted, run=run)
    return found


def test_busy_sequences_not_slots_explain_two_runs_whose_busy_sequences_differ():
    """Decode steps whose time is set by busy sequences alone (no per-slot cost), in two
    runs whose slot counts and busy sequences both differ, with 25% noise per step (the
    H200's decode steps varied that much): the per-sequence cost comes from how a step's
    time goes with its busy slots within each run, so the slot term is left little
    (fitted all at once, the slot term took up the difference between the runs)."""
    costs = fit_costs(_decode_runs(random.Random(3), ((256, (0.6, 1.0)), (128, (0.2, 0.8))), 0.0, 0.25))
    decode = costs.fits[0]
    assert costs.step_per_slot_s * 256 < 0.1 * costs.step_base_s, decode
    assert _close(costs.step_per_seq_s, TRUE["per_seq"], 0.1), decode


@pytest.mark.parametrize("step_sums", [True, False])
def test_a_per_slot_cost_is_not_taken_for_busy_sequences_when_runs_differ_in_both(step_sums: bool):
    """A cost per slot in two runs whose busy sequences also differ with their slots (a
    CPU study's shape: 256 slots and 143 busy, 128 and 71): the per-run step costs carry
    the slot cost, and a synchronous run at 256 slots with few busy sequences is
    predicted, from the engine's sums over its steps or (an older run, 5% noise per
    step) from its updates alone.  Fitting the within-run terms first on the pooled runs
    gave the busy sequences the slots' cost (and the run with few busy a fraction of its step)."""
    per_slot = 8e-6
    costs = fit_costs(_decode_runs(random.Random(5), ((256, (0.3, 0.8)), (128, (0.3, 0.8))), per_slot, 0.25 if step_sums else 0.05,
                                   step_sums))
    assert _close(costs.step_per_slot_s, per_slot, 0.2), costs.fits[0]
    assert _close(costs.step_per_seq_s, TRUE["per_seq"], 0.2), costs.fits[0]
    sync_step = costs.step_base_s + costs.step_per_slot_s * 256 + costs.step_per_seq_s * 16
    assert _close(sync_step, TRUE["step_base"] + TRUE["executor_step"] + per_slot * 256 + TRUE["per_seq"] * 16, 0.05)


def test_the_step_is_fitted_on_padded_tokens_when_the_runs_logged_them():
    """A step whose time follows the trainer's padded batch (rows times the longest row,
    rounded up to 16): with ``padded_tokens`` in the lines, the fit is on them and its
    coefficient is recovered; the trained tokens (a batch's rows may be short while one
    is long) are left out; ``pad_to`` comes with the updates."""
    rng = random.Random(11)
    rows, submitted = _run(rng, 128, 32, 120)
    per_padded, base = 7e-6, 0.006
    for row in rows:
        width = 16 * rng.randint(2, 5)
        row["padded_tokens"], row["pad_to"] = 32 * GROUP * width, 16
        row["step_s"] = (base + per_padded * row["padded_tokens"]) * (1 + rng.uniform(-0.02, 0.02))
    found = updates(rows, 128, 32, recompute_in_step=True, submitted=submitted)
    costs = fit_costs(found)
    assert _close(costs.train["padded tokens"], per_padded) and _close(costs.train["1"], base, 0.15), costs.train
    assert "tokens" not in costs.train.coefficients and costs.train.r2 > 0.95
    assert {u.pad_to for u in found} == {16}
    older = fit_costs(updates([{k: v for k, v in r.items() if k not in ("padded_tokens", "pad_to")} for r in rows], 128, 32,
                              recompute_in_step=True, submitted=submitted))
    assert "padded tokens" not in older.train.coefficients and "tokens" in older.train.coefficients


def test_no_run_is_given_a_decode_step_that_costs_less_than_nothing():
    """Two runs whose steps, pooled, slope more steeply with their busy slots than one
    run's steps cost at all (a short, noisy run): the slope is cut so that the cheaper
    run's step at no busy slot costs 0, not less (a negative step cost is a scenario the
    simulator refuses)."""
    found = []
    for run, steps in enumerate(([(10, 1e-3), (60, 6e-3)] * 20, [(50, 2.0e-3), (60, 2.2e-3)] * 20)):
        rows, wall = [], 0.0
        totals = {"decode_steps": 0, "generated_tokens": 0, "decode_s": 0.0, "decode_busy_s": 0.0, "decode_busy2": 0,
                  "prefills": 0, "prefill_tokens": 0, "prefill_s": 0.0}
        for busy, seconds in steps:
            for key, value in (("decode_steps", 1), ("generated_tokens", busy), ("decode_s", seconds),
                               ("decode_busy_s", busy * seconds), ("decode_busy2", busy * busy)):
                totals[key] += value
            wall += seconds + 0.01
            rows.append({**totals, "wall_s": wall, "wait_s": seconds, "train_s": 0.01, "step_s": 0.01, "trained_tokens": 100,
                         "sequences": 8, "slots": 64})
        found += updates(rows, 64, 8, recompute_in_step=True, submitted=[r["wall_s"] - 0.005 for r in rows], run=run)
    costs = fit_costs(found)
    decode = costs.fits[0]
    assert decode["tokens"] == pytest.approx(2.1e-3 / 55, rel=0.01) and decode["steps"] > 0 and costs.step_base_s > 0, decode


def test_the_simulated_step_costs_its_padded_batch():
    """Fixed lengths: every batch pads to the prompt and the response (4 + 20 tokens),
    rounded up to ``pad_to``: a step costs ``per_padded * rows * width`` on top."""
    base = simulate(Scenario().with_overrides(SMALL))
    padded = simulate(Scenario().with_overrides([*SMALL, "training.step_per_padded_token_s=0.001", "training.pad_to=16"]))
    updates_, rows, width = 200 // 8, 8, 32  # 24 tokens, rounded up to 32
    assert padded.sim_time_s - base.sim_time_s == pytest.approx(updates_ * 0.001 * rows * width, rel=1e-6)
    unrounded = simulate(Scenario().with_overrides([*SMALL, "training.step_per_padded_token_s=0.001"]))
    assert unrounded.sim_time_s - base.sim_time_s == pytest.approx(updates_ * 0.001 * rows * 24, rel=1e-6)


def _after_pass_runs(rng: random.Random, extra: float, split: bool) -> list:
    """Updates of one run whose every update is a prefill pass, then decode steps: the
    first, straight after the pass, with every slot busy and ``extra`` seconds slower;
    then fewer and fewer busy.  A step costs ``base + per_seq * busy`` otherwise.  With
    ``split`` the lines carry the engine's sums over the steps after a pass."""
    base, per_seq = 2.5e-3, 2e-6
    keys = ("decode_steps", "generated_tokens", "decode_s", "decode_busy_s", "decode_busy2", "prefills", "prefill_tokens",
            "prefill_s", "after_pass_steps", "after_pass_s", "after_pass_busy", "after_pass_busy_s", "after_pass_busy2")
    totals = dict.fromkeys(keys, 0.0)
    rows, wall, submitted = [], 0.0, []
    for _ in range(80):
        busy_steps = [256] + [rng.randint(20, 200) for _ in range(rng.randint(2, 6))]
        decoded = 0.0
        totals["prefills"] += 1
        totals["prefill_tokens"] += 1000
        totals["prefill_s"] += 0.02
        for index, busy in enumerate(busy_steps):
            seconds = (base + per_seq * busy + (extra if index == 0 else 0.0)) * (1 + rng.uniform(-0.02, 0.02))
            decoded += seconds
            for key, value in (("decode_steps", 1), ("generated_tokens", busy), ("decode_s", seconds),
                               ("decode_busy_s", busy * seconds), ("decode_busy2", busy * busy)):
                totals[key] += value
            if index == 0:
                for key, value in (("after_pass_steps", 1), ("after_pass_s", seconds), ("after_pass_busy", busy),
                                   ("after_pass_busy_s", busy * seconds), ("after_pass_busy2", busy * busy)):
                    totals[key] += value
        collect = decoded + 0.02
        submitted.append(wall + collect / 2)
        wall += collect + 0.01
        row = {k: v for k, v in totals.items() if split or not k.startswith("after_pass")}
        rows.append({**row, "wall_s": wall, "wait_s": collect, "train_s": 0.01, "step_s": 0.01, "trained_tokens": 100,
                     "sequences": 8, "slots": 256})
    return updates(rows, 256, 8, recompute_in_step=True, submitted=submitted)


def test_the_step_after_a_prefill_pass_is_charged_to_the_pass_not_to_the_busy_slots():
    """The decode step straight after a pass is the busiest (the pass started every slot)
    and, on a CPU, 0.8 ms slower: from the engine's sums over those steps kept apart the
    per-busy cost is the other steps' and the extra goes to each pass; pooled, the extra
    reads as a steep cost per busy slot (which made a synchronous run, few busy a step,
    come out fast)."""
    extra = 8e-4
    costs = fit_costs(_after_pass_runs(random.Random(2), extra, split=True))
    decode = costs.fits[0]
    assert _close(decode["after pass"], extra, 0.1) and _close(decode["tokens"], 2e-6, 0.25), decode
    assert _close(costs.prefill_pass_s, 0.02 + extra, 0.05)
    pooled = fit_costs(_after_pass_runs(random.Random(2), extra, split=False)).fits[0]
    assert pooled["after pass"] == 0 and pooled["tokens"] > 2 * 2e-6, pooled


def test_an_engine_that_decodes_its_live_rows_has_no_cost_per_slot():
    """Runs of an engine that decodes only its live rows (``decodes_every_slot`` false:
    the Hugging Face and vLLM engines), each run's busy slots in a narrow band and its
    steps 25% noisy, so that the slope within runs says little (an H200 study's was
    0): what the runs' step costs differ by with their busy slots is a cost per busy
    slot, none goes to the slots, and a synchronous run of 74 busy of 512 slots steps
    as its busy slots say.  The same updates not known to decode live rows give the
    difference to the slots, as they should for the built-in engine, which decodes every
    slot."""
    import dataclasses

    found = _decode_runs(random.Random(7), ((512, (0.55, 0.6)), (128, (0.85, 0.9))), 0.0, 0.25)
    live = fit_costs([dataclasses.replace(u, every_slot=False) for u in found])
    assert live.step_per_slot_s == 0.0, live.fits[0]
    assert _close(live.step_per_seq_s, TRUE["per_seq"], 0.25), live.fits[0]
    sync_step = live.step_base_s + live.step_per_seq_s * 74
    assert _close(sync_step, TRUE["step_base"] + TRUE["executor_step"] + TRUE["per_seq"] * 74, 0.05)
    every = fit_costs([dataclasses.replace(u, every_slot=True) for u in found])
    assert every.step_per_slot_s > 0.0, every.fits[0]
    # runs whose busier steps came out cheaper (a machine that sped up between them): no
    # negative cost per busy row, the steps' cost is their mean
    cheaper = _decode_runs(random.Random(7), ((512, (0.55, 0.6)), (128, (0.85, 0.9))), -5e-6, 0.02)
    flat = fit_costs([dataclasses.replace(u, every_slot=False) for u in cheaper])
    assert flat.step_per_slot_s == 0.0 and flat.step_per_seq_s >= 0.0 and flat.step_base_s > 0.0, flat.fits[0]


def test_a_machine_that_slowed_between_runs_is_not_a_cost_per_busy_row():
    """Two calibration runs of one shape, the second on a machine 25% slower throughout
    (an H100's calibration run and its rerun, seed and all, stepped 25% apart at the same
    busy rows), and a probe of fewer busy rows: the runs' step costs slope with their
    busy rows by less than their scatter about the line says the machine moves them, so
    the cost per busy row is the slope within the runs alone (fitted across regardless,
    the drift added to it), and the steps' cost the runs' mean."""
    import dataclasses

    shapes = ((512, (0.55, 0.6)), (512, (0.55, 0.6)), (128, (0.85, 0.9)))
    found = _decode_runs(random.Random(11), shapes, 0.0, 0.02, speeds=(1.0, 1.25, 1.0))
    live = fit_costs([dataclasses.replace(u, every_slot=False) for u in found])
    across = next(f for f in live.fits if f.name == "decode step per run")
    assert across.dropped == ["busy"] and across["busy"] == 0.0, across
    assert TRUE["per_seq"] <= live.step_per_seq_s <= 1.2 * TRUE["per_seq"], live.fits[0]


def test_steps_that_follow_the_batch_and_not_the_busy_rows_take_the_slope_across_runs():
    """An engine whose steps cost by the rows of its batch, finished ones too (the
    Hugging Face engine keeps them until half the batch is done), so that within a run
    a step's time does not follow its busy rows: three runs on one machine, whose step
    costs line up with their mean busy rows far beyond their scatter, give the cost per
    busy row across runs."""
    import dataclasses

    shapes = ((512, (0.55, 0.6)), (512, (0.55, 0.6)), (128, (0.85, 0.9)))
    found = _decode_runs(random.Random(5), shapes, 0.0, 0.02, flat_within=True)
    live = fit_costs([dataclasses.replace(u, every_slot=False) for u in found])
    across = next(f for f in live.fits if f.name == "decode step per run")
    assert "busy" not in across.dropped, across
    assert _close(live.step_per_seq_s, TRUE["per_seq"], 0.15), live.fits[0]


def test_the_engine_s_way_of_decoding_comes_from_its_lines_or_else_from_the_caller():
    """``decodes_every_slot`` in a metrics line is the engine's word; a line without it
    (a run logged before the field) takes what the caller knows from the run's config."""
    rows, submitted = _run(random.Random(1), 64, 16, 4)
    assert {u.every_slot for u in updates(rows, 64, 16, recompute_in_step=True, submitted=submitted)} == {None}
    assert {u.every_slot for u in updates(rows, 64, 16, recompute_in_step=True, every_slot=False)} == {False}
    said = [{**r, "decodes_every_slot": True} for r in rows]
    assert {u.every_slot for u in updates(said, 64, 16, recompute_in_step=True, every_slot=False)} == {True}


def test_the_report_says_how_far_apart_the_machine_ran_the_runs():
    """Three runs of one shape, the second on a machine 25% slower throughout: each
    run's collect time over what the fitted terms give it sets the second apart from
    the others, the spread is reported by run name, and runs on one steady machine
    agree within a few %."""
    import dataclasses

    shapes = ((512, (0.55, 0.6)), (512, (0.55, 0.6)), (512, (0.55, 0.6)))
    names = ["calibration", "calibration-2", "calibration-3"]
    slowed = fit_costs([dataclasses.replace(u, every_slot=False)
                        for u in _decode_runs(random.Random(11), shapes, 0.0, 0.02, speeds=(1.0, 1.25, 1.0))], names)
    assert list(slowed.run_ratios) == names
    first, second, third = slowed.run_ratios.values()
    assert second > 1.05 * max(first, third), slowed.run_ratios
    assert slowed.run_spread == pytest.approx(max(slowed.run_ratios.values()) / min(slowed.run_ratios.values()) - 1)
    note = next(line for line in slowed.notes() if line.startswith("runs vs the fit"))
    assert f"calibration-2 {second:.3f}" in note and f"runs of one shape {100 * slowed.run_spread:.1f}% apart" in note
    steady = fit_costs([dataclasses.replace(u, every_slot=False) for u in _decode_runs(random.Random(11), shapes, 0.0, 0.02)], names)
    assert steady.run_spread < 0.03, steady.run_ratios
    one = fit_costs(_decode_runs(random.Random(11), shapes[:1], 0.0, 0.02))
    assert one.run_spread == 0.0 and not any(line.startswith("runs vs the fit") for line in one.notes())
    # runs of two shapes (a probe of fewer slots): each run's ratio, but no shape shared, so no spread
    probe = fit_costs(_decode_runs(random.Random(11), ((512, (0.55, 0.6)), (128, (0.85, 0.9))), 0.0, 0.02, speeds=(1.0, 1.25)))
    assert probe.run_spread == 0.0 and len(probe.run_ratios) == 2
    assert "apart" not in next(line for line in probe.notes() if line.startswith("runs vs the fit"))
