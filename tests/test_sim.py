"""The simulator checked against mathematics, the ledger and itself across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.log import EventLog, replay, write_jsonl
from properties.invariants import check_state
from sim.analysis import little
from sim.config import Scenario
from sim.scenarios import builtin
from sim.simulator import Simulation, simulate
from sim.sweep import grid_points, sweep
from sim.workload import load_lengths, lognormal_cdf

# Generation only: fixed costs, free training and weight updates.
FREE_TRAINING = [
    "generation.step_per_seq_s=0",
    "generation.step_per_kv_token_s=0",
    "generation.prefill_per_token_s=0",
    "training.step_base_s=0",
    "training.step_per_token_s=0",
    "training.recompute_per_token_s=0",
    "training.weight_sync_s=0",
]


def small(*overrides: str) -> Scenario:
    """A small, fast scenario (2 servers of 32 slots, batches of 16)."""
    base = [
        "run.rollouts=800",
        "ledger.batch_size=16",
        "ledger.max_concurrent=64",
        "generation.servers=2",
        "generation.slots=32",
        "workload.response_len={kind='lognormal', median=200.0, sigma=0.8, cap=2000}",
        "training.step_base_s=0.5",
        "training.step_per_token_s=1e-4",
    ]
    return Scenario().with_overrides([*base, *overrides])


def test_unbounded_throughput_is_slots_over_length_times_step_cost() -> None:
    servers, slots, length, step = 3, 40, 50, 0.02
    scenario = Scenario().with_overrides(
        [
            *FREE_TRAINING,
            "ledger.max_staleness=inf",
            "ledger.max_concurrent=100000",
            "ledger.batch_size=40",
            "run.rollouts=60000",
            f"generation.servers={servers}",
            f"generation.slots={slots}",
            f"generation.step_base_s={step}",
            f"workload.response_len={{kind='fixed', value={length}}}",
        ]
    )
    summary = simulate(scenario)
    expected = servers * slots / (length * step)
    assert summary.rollouts_per_s == pytest.approx(expected, rel=0.01)
    assert summary.generator_utilisation == pytest.approx(1.0, rel=0.01)


def test_synchronous_step_time_is_the_expected_maximum_length() -> None:
    batch, step = 32, 0.01
    scenario = Scenario().with_overrides(
        [
            *FREE_TRAINING,
            "ledger.max_staleness=0",
            f"ledger.batch_size={batch}",
            "ledger.max_concurrent=64",
            "generation.servers=2",
            "generation.slots=32",
            f"generation.step_base_s={step}",
            "workload.response_len={kind='lognormal', median=300.0, sigma=0.6, cap=2000}",
            "run.rollouts=48000",
        ]
    )
    summary = simulate(scenario)
    dist = scenario.workload.response_len
    # E[max of n iid lengths] = sum over k >= 0 of P(max > k) = sum (1 - F(k)^n), F from the lognormal CDF.
    expected_max = sum(1 - lognormal_cdf(dist, k) ** batch for k in range(dist.cap + 1))
    step_time = summary.sim_time_s / summary.versions
    assert step_time == pytest.approx(expected_max * step, rel=0.02)
    assert summary.staleness_max == 0


def test_littles_law_holds_on_the_simulated_log(tmp_path) -> None:
    path = tmp_path / "run.db"
    simulate(small("run.rollouts=4000", "ledger.max_staleness=2"), log=path)
    with EventLog(path) as log:
        law = little(log.events())
    assert law.departures >= 4000
    assert law.mean_in_flight == pytest.approx(law.throughput * law.mean_latency, rel=0.02)


def test_same_seed_same_log_byte_for_byte(tmp_path) -> None:
    scenario = small("ledger.policy=strict", "ledger.on_stale=requeue", "ledger.max_staleness=1")
    logs = []
    for name in ("a", "b"):
        Simulation(scenario, log=tmp_path / f"{name}.db").run()
        with EventLog(tmp_path / f"{name}.db") as log:
            write_jsonl(log.events(), tmp_path / f"{name}.jsonl")
        logs.append((tmp_path / f"{name}.jsonl").read_bytes())
    assert logs[0] == logs[1]
    assert (tmp_path / "a.db").read_bytes() == (tmp_path / "b.db").read_bytes()
    other = small("ledger.policy=strict", "ledger.on_stale=requeue", "ledger.max_staleness=1", "run.seed=1")
    Simulation(other, log=tmp_path / "c.db").run()
    with EventLog(tmp_path / "c.db") as log:
        write_jsonl(log.events(), tmp_path / "c.jsonl")
    assert (tmp_path / "c.jsonl").read_bytes() != logs[0]


def test_an_existing_log_is_never_appended_to(tmp_path) -> None:
    path = tmp_path / "run.db"
    simulate(small("run.rollouts=32"), log=path)
    with pytest.raises(FileExistsError, match="run.db"):
        Simulation(small(), log=path)


def test_replaying_the_log_gives_the_live_state(tmp_path) -> None:
    simulation = Simulation(small("generation.on_update=partial"), log=tmp_path / "run.db")
    summary = simulation.run()
    replayed = replay(tmp_path / "run.db")
    assert replayed == simulation.ledger.state
    assert replayed.consumed == summary.trained_rollouts


@pytest.mark.parametrize(
    "overrides",
    [
        ("ledger.policy=admission", "ledger.max_staleness=1"),
        ("ledger.policy=strict", "ledger.on_stale=drop", "ledger.max_staleness=1"),
        ("ledger.policy=strict", "ledger.on_stale=requeue", "ledger.max_staleness=0"),
        ("ledger.policy=segment_wise", "ledger.max_staleness=2"),
        ("generation.on_update=restart", "ledger.max_staleness=2"),
        ("generation.on_update=run_on", "ledger.max_staleness=inf", "workload.group_size=4"),
        ("training.colocated=true", "ledger.max_staleness=1"),
        ("generation.on_update=drain", "ledger.max_staleness=2"),
        ("generation.on_update=drain", "training.colocated=true", "ledger.max_staleness=inf"),
        ("ledger.in_order=true", "ledger.max_staleness=2"),
        ("ledger.in_order=true", "ledger.policy=strict", "ledger.max_staleness=1"),
    ],
)
def test_every_policy_and_mode_keeps_the_ledger_invariants(overrides: tuple[str, ...]) -> None:
    summary = Simulation(small("run.rollouts=320", *overrides), check=check_state).run()
    assert summary.trained_rollouts >= 320


def test_strict_never_trains_on_rollouts_staler_than_the_bound() -> None:
    strict = simulate(small("ledger.policy=strict", "ledger.max_staleness=1"))
    admission = simulate(small("ledger.policy=admission", "ledger.max_staleness=1"))
    assert strict.staleness_max <= 1
    assert strict.filtered_fraction > 0 and strict.wasted_tokens > 0
    assert admission.staleness_max > 1  # admission bounds only the start: long rollouts arrive staler
    assert admission.filtered_fraction == 0


@pytest.mark.parametrize("bound", [1, 2, 4])
def test_in_order_batches_bound_staleness_without_filtering_at_a_cost_in_throughput(bound: int) -> None:
    in_order = simulate(small("ledger.in_order=true", f"ledger.max_staleness={bound}"))
    overtaking = simulate(small(f"ledger.max_staleness={bound}"))
    assert in_order.staleness_max <= bound < overtaking.staleness_max
    assert in_order.filtered_fraction == 0 and in_order.wasted_tokens == 0
    assert in_order.trained_rollouts == overtaking.trained_rollouts
    assert in_order.rollouts_per_s < overtaking.rollouts_per_s  # the trainer waits for each version's stragglers


def test_segment_wise_recomputes_and_partial_rollouts_make_segments(tmp_path) -> None:
    slow_trainer = small("ledger.policy=segment_wise", "ledger.max_staleness=2", "training.step_base_s=5")
    summary = simulate(slow_trainer, log=tmp_path / "run.db")
    with EventLog(tmp_path / "run.db") as log:
        events = list(log.events())
    kinds = [event.type for event in events]
    assert kinds.count("recomputed") > 0  # a ready queue builds up behind the slow trainer
    assert summary.trainer_utilisation > 0.8
    # each weight update interrupts the rollouts in flight in one event and resumes them in one
    interruptions = [e for e in events if e.type == "interrupted_batch"]
    resumptions = [e for e in events if e.type == "resumed_batch"]
    assert len(interruptions) == len(resumptions) > 0 and "interrupted" not in kinds
    assert [sorted(e.rollouts) for e in interruptions] == [sorted(e.rollouts) for e in resumptions]
    assert all(later.version > earlier.version for earlier, later in zip(interruptions, resumptions))


def test_restart_wastes_the_interrupted_work() -> None:
    restart = simulate(small("generation.on_update=restart", "ledger.max_staleness=2"))
    partial = simulate(small("generation.on_update=partial", "ledger.max_staleness=2"))
    assert restart.wasted_tokens > 0 and partial.wasted_tokens == 0
    assert restart.rollouts_per_s < partial.rollouts_per_s


def test_drain_finishes_in_flight_rollouts_before_each_update(tmp_path) -> None:
    summary = simulate(small("generation.on_update=drain", "ledger.max_staleness=2"), log=tmp_path / "run.db")
    running: set[str] = set()
    with EventLog(tmp_path / "run.db") as log:
        for event in log.events():
            if event.type == "submitted":
                running.add(event.rollout)
            elif event.type in ("accepted", "filtered", "rejected"):
                running.discard(event.rollout)
            elif event.type == "version":
                assert not running  # nothing was generating across the weight update
    assert summary.wasted_tokens == 0
    assert summary.rollouts_per_s < simulate(small("generation.on_update=partial", "ledger.max_staleness=2")).rollouts_per_s


def _paused_seconds(path) -> float:
    """Seconds the log shows generation paused: from each ``paused`` to the un-pause after it."""
    paused_at, total = None, 0.0
    with EventLog(path) as log:
        for event in log.events():
            if event.type == "paused":
                paused_at = event.t
            elif event.type == "unpaused":
                total += event.t - paused_at
                paused_at = None
    return total


@pytest.mark.parametrize("colocated", [True, False])
def test_colocated_generation_and_training_do_not_overlap(tmp_path, colocated: bool) -> None:
    """Colocated, the trainer trains only while the log shows generation paused, and the
    servers are busy only while it does not; apart, training overlaps generation."""
    path = tmp_path / "run.db"
    summary = simulate(small(f"training.colocated={str(colocated).lower()}", "generation.servers=1", "generation.slots=64"), log=path)
    paused = _paused_seconds(path)
    trainer_busy = summary.trainer_utilisation * summary.sim_time_s
    generator_busy = summary.generator_utilisation * summary.sim_time_s  # one server
    assert paused > 0 and trainer_busy > 0 and generator_busy > 0
    within = trainer_busy <= paused + 1e-6 and generator_busy <= summary.sim_time_s - paused + 1e-6
    assert within == colocated


def test_sweep_gives_the_same_results_with_one_or_two_workers() -> None:
    scenario = small("run.rollouts=320")
    axes = [("ledger.max_staleness", ["0", "2"]), ("generation.on_update", ["partial", "run_on"])]
    one = sweep(scenario, axes, workers=1)
    two = sweep(scenario, axes, workers=2)
    assert [summary for _, summary in one] == [summary for _, summary in two]
    seeds = [point.seed for point in grid_points(scenario, axes)]
    assert len(set(seeds)) == len(seeds)


def test_fresh_processes_with_different_hash_seeds_agree() -> None:
    script = (
        "import json; from sim.simulator import simulate; from sim.config import Scenario; "
        "s = Scenario().with_overrides(['run.rollouts=320', 'ledger.policy=strict', 'ledger.on_stale=requeue', "
        "'ledger.max_staleness=1', 'workload.group_size=2']); print(json.dumps(simulate(s).to_json()))"
    )
    outputs = [
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0])["trained_rollouts"] >= 320


# AReaL (arXiv 2505.24298), trained k tokens/s by maximum staleness 0, 1, 2, 4, 8, 16, unbounded.
AREAL_PUBLISHED = {"0": 128.7, "1": 269.3, "2": 356.6, "4": 356.6, "8": 371.7, "16": 382.4, "inf": 396.8}


def test_areal_curve_shape() -> None:
    scenario = builtin("areal")
    ours = {bound: simulate(scenario.with_overrides([f"ledger.max_staleness={bound}"])) for bound in AREAL_PUBLISHED}
    ratio = {bound: ours[bound].trained_tokens_per_s / ours["0"].trained_tokens_per_s for bound in ours}
    published = {bound: value / AREAL_PUBLISHED["0"] for bound, value in AREAL_PUBLISHED.items()}
    bounds = list(AREAL_PUBLISHED)
    assert all(ratio[a] <= ratio[b] for a, b in zip(bounds, bounds[1:])), ratio
    assert ratio["2"] - ratio["0"] > ratio["inf"] - ratio["2"], ratio
    for bound in bounds:
        assert ratio[bound] == pytest.approx(published[bound], rel=0.15), (bound, ratio)


def test_empirical_lengths_from_a_simulated_log(tmp_path) -> None:
    path = tmp_path / "source.db"
    source = simulate(small("run.rollouts=160", "workload.response_len={kind='fixed', value=77}", "generation.on_update=partial"), log=path)
    lengths = load_lengths(path)
    assert lengths and set(lengths) == {77}  # partial rollouts' segments add up to the whole response
    assert len(lengths) >= source.trained_rollouts
    replayed = simulate(small("run.rollouts=160", f"workload.response_len={{kind='empirical', path='{path}'}}"))
    assert replayed.trained_tokens_per_s == source.trained_tokens_per_s  # the same lengths, so the same run


def test_max_time_stops_the_clock() -> None:
    summary = simulate(small("run.rollouts=1000000", "run.max_time_s=120"))
    assert summary.sim_time_s == 120
    assert 0 < summary.trained_rollouts < 1000000


def test_a_run_stopped_by_its_clock_resumes_from_its_log(tmp_path) -> None:
    path = tmp_path / "run.db"
    Simulation(small("run.max_time_s=30.5"), log=path).run()
    stopped = replay(path)
    assert stopped.running > 0 and 0 < stopped.consumed < 800
    with EventLog(path) as log:
        stopped_at = max(event.t for event in log.events() if event.t is not None)
    resumed = Simulation(small(), log=path, resume=True)
    resumed.run()
    final = replay(path)
    assert final == resumed.ledger.state and final.consumed >= 800
    with EventLog(path) as log:
        events = list(log.events(stopped.events + 1))
    lost = [e for e in events if e.type == "rejected" and e.reason == "lost"]
    assert len(lost) == stopped.running  # every rollout in flight at the stop, closed once ...
    assert {e.rollout + "#2" for e in lost} <= {e.rollout for e in events if e.type == "enqueued"}  # ... and requeued
    assert min(e.t for e in events if e.t is not None) >= stopped_at  # the clock goes on from the log
    with pytest.raises(ValueError, match="was started with"):
        Simulation(small("ledger.batch_size=8"), log=path, resume=True)
    with pytest.raises(FileNotFoundError, match="no event log"):
        Simulation(small(), log=tmp_path / "missing.db", resume=True)


def test_an_illegal_event_in_the_trainer_surfaces_as_itself(monkeypatch) -> None:
    from engine.core.events import Resumed
    from engine.core.reducer import IllegalTransition
    from engine.ledger import Ledger

    monkeypatch.setattr(Ledger, "finish_update", lambda self, interrupted=(), *, t=None: self.append(Resumed("nobody")))
    with pytest.raises(IllegalTransition, match="'nobody'"):
        Simulation(small("run.rollouts=32")).run()
