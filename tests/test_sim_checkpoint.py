"""The checkpoint as a cost of its own: the simulator writes one every
``training.checkpoint_every`` updates and one at the run's last, as ``train`` does, and calibration takes its time from the runs'
``checkpoint_s`` instead of leaving it in the per-update overhead."""

from __future__ import annotations

import pytest

from sim.calibrate import calibrate
from sim.calibrate_real import fit_costs, updates
from sim.config import Scenario
from sim.simulator import simulate

SYNC = [
    "run.rollouts=40", "ledger.batch_size=4", "ledger.max_concurrent=4", "ledger.max_staleness=0",
    "workload.group_size=1", "workload.prompt_len.kind=fixed", "workload.prompt_len.value=4",
    "workload.response_len.kind=fixed", "workload.response_len.value=10", "generation.servers=1", "generation.slots=4",
    "generation.step_base_s=0.01", "generation.step_per_seq_s=0", "generation.step_per_kv_token_s=0",
    "generation.prefill_per_token_s=0", "training.step_base_s=0.5", "training.step_per_token_s=0",
    "training.weight_sync_s=0.1", "training.update_overhead_s=0.05", "training.colocated=true",
]


@pytest.mark.parametrize(("every", "written"), [(1, 10), (3, 4), (4, 3), (10, 1), (1000, 1), (0, 0)])
def test_a_checkpoint_costs_its_seconds_at_every_interval_and_at_the_end(every: int, written: int) -> None:
    """Synchronous and colocated, so every second of the trainer is the run's: ten
    updates with a checkpoint of 2 s every ``every`` of them take 2 s longer than
    without for each update the interval divides, and for the last one when it does
    not (``train`` writes its final weights whatever the interval: versions 3, 6, 9
    and 10 at an interval of 3); none at all at an interval of 0 (``train
    --checkpoint-every 0``)."""
    base = simulate(Scenario().with_overrides(SYNC))
    with_checkpoints = simulate(Scenario().with_overrides(SYNC + ["training.checkpoint_s=2", f"training.checkpoint_every={every}"]))
    assert base.versions == with_checkpoints.versions == 10
    assert with_checkpoints.sim_time_s - base.sim_time_s == pytest.approx(2.0 * written)


def test_a_run_cut_by_its_clock_writes_no_final_checkpoint() -> None:
    """A run that ends at ``run.max_time_s`` has no last update: only the interval's
    checkpoints are written (one 2 s checkpoint taken for a last one would leave fewer
    updates in the run's 3 s)."""
    capped = SYNC + ["run.rollouts=100000", "run.max_time_s=3.0"]
    base = simulate(Scenario().with_overrides(capped))
    with_checkpoints = simulate(Scenario().with_overrides(capped + ["training.checkpoint_s=2", "training.checkpoint_every=1000"]))
    assert with_checkpoints.versions == base.versions > 0


def test_a_negative_checkpoint_interval_is_refused_by_name() -> None:
    from sim.values import ScenarioError

    with pytest.raises(ScenarioError, match="'training.checkpoint_every': must be at least 0, got -1"):
        Scenario().with_overrides(["training.checkpoint_every=-1"])


def _row(wall: float, checkpoint: float | None) -> dict:
    row = {"wall_s": wall, "wait_s": 0.2, "train_s": 0.3, "step_s": 0.25, "sync_s": 0.01, "trained_tokens": 100,
           "decode_steps": 10, "generated_tokens": 100}
    return row | ({"checkpoint_s": checkpoint} if checkpoint is not None else {})


def test_calibration_takes_the_checkpoint_out_of_the_overhead() -> None:
    # four updates of 0.5 s: 0.46 s of parts and 0.04 s of overhead, a 0.3 s checkpoint at every second one
    rows, wall = [], 0.0
    for k in range(1, 5):
        checkpoint = 0.3 if k % 2 == 0 else 0.0
        wall += 0.5 + checkpoint
        rows.append(_row(wall, checkpoint))
    found = updates(rows, slots=8, sequences=4, recompute_in_step=True)
    assert [u.overhead_s for u in found] == pytest.approx([0.04] * 4)
    assert [u.checkpoint_s for u in found] == pytest.approx([0.0, 0.3, 0.0, 0.3])
    # a run that did not time its checkpoints keeps them in the overhead
    old = updates([{k: v for k, v in r.items() if k != "checkpoint_s"} for r in rows], 8, 4, True)
    assert [u.overhead_s for u in old] == pytest.approx([0.04, 0.34, 0.04, 0.34]) and old[1].checkpoint_s is None
    costs = fit_costs(found)
    assert costs.checkpoint_s == pytest.approx(0.3)
    assert costs.overhead_s == pytest.approx(0.04)


def test_a_real_runs_checkpoints_are_calibrated_at_its_interval(tmp_path) -> None:
    pytest.importorskip("torch")
    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig

    config = RunConfig(task="reverse", model_size="tiny", steps=8, batch_size=4, group_size=2, max_concurrent=8,
                       max_staleness=2, warmup_steps=3, device="cpu", checkpoint_every=3)
    train(config, tmp_path / "run", eval_size=0, progress=False)
    fit = calibrate([tmp_path / "run"])
    assert fit.scenario.training.checkpoint_every == 3
    assert fit.scenario.training.checkpoint_s > 0


def test_a_run_without_checkpoints_times_none_and_is_calibrated_without_them(tmp_path) -> None:
    """``--checkpoint-every 0``: version 0's checkpoint and the final weights only, no
    update times a checkpoint, and the calibrated scenario charges none."""
    pytest.importorskip("torch")
    import json

    from engine.workflows.reinforcement import train
    from engine.workflows.rl_config import RunConfig

    config = RunConfig(task="reverse", model_size="tiny", steps=5, batch_size=4, group_size=2, max_concurrent=8,
                       max_staleness=2, warmup_steps=3, device="cpu", checkpoint_every=0)
    assert not any(config.is_checkpoint(v) for v in range(1, 6))
    train(config, tmp_path / "run", eval_size=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["ckpt-000000.safetensors"]
    assert (tmp_path / "run" / "final.safetensors").is_file()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(line["checkpoint_s"] == 0 for line in lines)
    fit = calibrate([tmp_path / "run"])
    assert fit.scenario.training.checkpoint_s == 0 and fit.scenario.training.checkpoint_every == 0
    with pytest.raises(ValueError, match="checkpoint_every"):
        RunConfig(checkpoint_every=-1)


def test_the_overhead_per_sequence_is_recovered_from_two_batch_sizes_and_simulated() -> None:
    """Overhead 0.02 s + 0.5 ms per trained sequence, in runs of 16 and 64 sequences:
    calibration recovers both; with one batch size the slope is dropped and named."""
    def run(sequences: int) -> list:
        rows, wall = [], 0.0
        for _ in range(6):
            wall += 0.46 + 0.02 + 0.0005 * sequences
            rows.append(_row(wall, 0.0) | {"sequences": sequences})
        return updates(rows, slots=64, sequences=sequences, recompute_in_step=True)

    costs = fit_costs(run(16) + run(64))
    assert costs.overhead_s == pytest.approx(0.02, rel=1e-6) and costs.overhead_per_seq_s == pytest.approx(0.0005, rel=1e-6)
    one = fit_costs(run(16))
    assert one.overhead_per_seq_s == 0 and one.overhead_s == pytest.approx(0.028, rel=1e-6)
    assert any("sequences" in f.dropped for f in one.fits if f.name == "update overhead s")
    # the simulator charges it per update: ten synchronous updates of 4 sequences, 0.1 s each more
    base = simulate(Scenario().with_overrides(SYNC))
    more = simulate(Scenario().with_overrides(SYNC + ["training.update_overhead_per_seq_s=0.025"]))
    assert more.sim_time_s - base.sim_time_s == pytest.approx(10 * 4 * 0.025)
