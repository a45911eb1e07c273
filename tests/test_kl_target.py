"""``--kl-target``: the learning rate follows the distance from the current policy to
the policies that sampled each batch (``kl_behaviour``), so that samples up to
``max_staleness`` versions old stay close enough to use."""

from __future__ import annotations

import json

import pytest

from engine.backends.local.schedule import KL_FLOOR, KL_STEP, adapt_to_kl
from engine.cli import main


@pytest.mark.parametrize("scale, kl, target, expected", [
    (1.0, 0.5, 0.1, 1.0 / KL_STEP),        # over twice the target: down
    (0.5, 0.01, 0.1, 0.5 * KL_STEP),       # under half of it: back up
    (0.9, 0.01, 0.1, 1.0),                 # never above the schedule's rate
    (0.5, 0.1, 0.1, 0.5),                  # within the band: kept
    (KL_FLOOR, 9.0, 0.1, KL_FLOOR),        # never below the floor
    (0.5, 9.0, 0.0, 0.5),                  # target 0: off
    (0.5, float("nan"), 0.1, 0.5),         # no measure: kept
])
def test_the_scale_moves_by_one_step_out_of_the_band_and_stays_within_its_bounds(scale, kl, target, expected):
    assert adapt_to_kl(scale, kl, target) == pytest.approx(expected)


def test_the_trainer_scales_its_rate_by_each_updates_kl_and_checkpoints_the_scale():
    torch = pytest.importorskip("torch")
    from engine.backends.local.tasks import Tokenizer
    from engine.backends.local.trainer import Trainer, TrainerConfig
    from engine.workflows.rl_models import build_policy
    from engine.workflows.rl_config import RunConfig
    from engine.backends.task_sources import resolve_task

    config = RunConfig(task="copy")
    model = build_policy(config, Tokenizer(), resolve_task("copy"), torch.device("cpu"))
    trainer = Trainer(model, TrainerConfig(lr=1e-3, kl_target=0.01), pad_id=Tokenizer().pad_id, device=torch.device("cpu"))
    assert trainer.rl_lr() == pytest.approx(1e-3)
    trainer.end_update([{"kl_behaviour": 0.5}, {"kl_behaviour": 0.3}])
    assert trainer.rl_lr() == pytest.approx(1e-3 / KL_STEP)
    state = trainer.state_dict()
    other = Trainer(build_policy(config, Tokenizer(), resolve_task("copy"), torch.device("cpu")),
                    TrainerConfig(lr=1e-3, kl_target=0.01), pad_id=Tokenizer().pad_id, device=torch.device("cpu"))
    other.load_state_dict(state)
    assert other.rl_lr() == pytest.approx(1e-3 / KL_STEP)
    del state["lr_scale"]  # a checkpoint written before kl_target
    other.load_state_dict(state)
    assert other.rl_lr() == pytest.approx(1e-3)
    off = Trainer(model, TrainerConfig(lr=1e-3), pad_id=Tokenizer().pad_id, device=torch.device("cpu"))
    off.end_update([{"kl_behaviour": 5.0}])
    assert off.rl_lr() == pytest.approx(1e-3)


ARGS = ["train", "--task", "copy", "--batch-size", "4", "--group-size", "4", "--max-concurrent", "12",
        "--max-staleness", "2", "--minibatches", "2", "--lr", "2e-3", "--warmup-steps", "3", "--no-progress",
        "--checkpoint-every", "2"]


def _lrs(run_dir):
    return [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_lowers_its_rate_while_its_updates_move_too_far_and_a_resume_keeps_the_rate(tmp_path):
    """With a target far below what any update moves, every update's rate is the one
    before divided by the step (the first at --lr); a resume continues from the
    checkpointed scale, not from --lr."""
    run_dir = tmp_path / "run"
    assert main([*ARGS, "--steps", "4", "--run-dir", str(run_dir), "--kl-target", "1e-9"]) == 0
    lrs = _lrs(run_dir)
    assert lrs == pytest.approx([2e-3 / KL_STEP ** i for i in range(4)])
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--steps", "6", "--no-progress"]) == 0
    assert _lrs(run_dir) == pytest.approx([2e-3 / KL_STEP ** i for i in range(6)])
    fixed = tmp_path / "fixed"
    assert main([*ARGS, "--steps", "3", "--run-dir", str(fixed)]) == 0
    assert _lrs(fixed) == pytest.approx([2e-3] * 3)


def test_kl_target_with_several_trainer_ranks_is_refused(tmp_path, capsys):
    assert main([*ARGS, "--steps", "2", "--run-dir", str(tmp_path / "run"), "--kl-target", "0.05", "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "--kl-target adapts the rate from rank 0's shard" in err and "Traceback" not in err
