"""The training options users expect: a KL penalty to a reference policy, an entropy
bonus, learning-rate warm-up and cosine decay, and metric sinks beside metrics.jsonl
(TensorBoard read back from its event file; wandb offline)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import copy_pair

from engine.backends.local.model import Policy, preset
from engine.backends.local.objectives import kl_estimate, masked_mean
from engine.backends.local.schedule import COSINE_FLOOR, learning_rate
from engine.backends.local.tasks import Tokenizer
from engine.backends.local.trainer import Trainer, TrainerConfig, completion_logprobs
from engine.cli import main
from engine.runtime.ports import Sample
from engine.workflows.rl_config import RunConfig

TINY = ["--device", "cpu", "--model-size", "tiny", "--no-progress", "--task", "copy", "--batch-size", "2", "--group-size", "2",
        "--warmup-steps", "3"]  # fmt: skip


def test_learning_rate_warms_up_linearly_then_decays_by_half_a_cosine_to_the_floor():
    assert [learning_rate(1.0, u, warmup=4) for u in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [learning_rate(2.0, u, warmup=2, schedule="cosine", total=12) for u in range(16)]
    assert cosine[:2] == [1.0, 2.0] and 1.9 < cosine[2] < 2.0  # warm-up, then the decay starts
    assert cosine[6] == pytest.approx(2.0 * (COSINE_FLOOR + (1 - COSINE_FLOOR) / 2))  # half way: the mid point
    assert cosine[11:] == [pytest.approx(2.0 * COSINE_FLOOR)] * 5  # the last update (11 of 0..11) is at the floor
    assert all(a > b for a, b in zip(cosine[1:11], cosine[2:12]))
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(1.0, 0, schedule="linear")


def test_the_kl_estimate_weighted_by_the_sampling_distribution_is_the_exact_kl():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(1, 50), -1)
    q = torch.softmax(torch.randn(1, 50), -1)
    exact = float((p * (p.log() - q.log())).sum())
    # Each token once, weighted by its probability under p: the estimator's expectation.
    assert float(kl_estimate(p.log(), q.log(), p)) == pytest.approx(exact, rel=1e-5)
    assert float(kl_estimate(p.log(), p.log(), torch.ones_like(p))) == 0.0


def _trainer(**options) -> tuple[Trainer, list[Sample]]:
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    trainer = Trainer(Policy(preset("tiny", tokenizer.vocab_size, 16)), TrainerConfig(lr=1e-2, **options), pad_id=0, device="cpu")
    return trainer, copy_pair(trainer, tokenizer)


def test_the_entropy_is_that_of_the_sampling_distribution_and_its_bonus_enters_the_loss():
    trainer, samples = _trainer(entropy_coef=0.5)
    plain, _ = _trainer()
    tokens = torch.tensor([samples[0].prompt + samples[0].completion])
    logprobs, entropy = trainer.model.token_stats(tokens)
    logp = torch.log_softmax(trainer.model(tokens[:, :-1]).float(), -1)
    assert torch.allclose(entropy, -(logp.exp() * logp).sum(-1), atol=1e-6)
    assert torch.allclose(logprobs, trainer.model.logprobs(tokens))
    update = trainer.prepare_update(samples, torch.tensor([1.0, -1.0]))
    with_bonus = trainer.forward_backward(update, 0, 0)
    without = plain.forward_backward(plain.prepare_update(samples, torch.tensor([1.0, -1.0])), 0, 0)
    assert with_bonus["entropy"] == pytest.approx(without["entropy"]) and without["entropy"] > 0
    assert with_bonus["loss"] == pytest.approx(with_bonus["policy_loss"] - 0.5 * with_bonus["entropy"], abs=1e-6)
    assert without["loss"] == pytest.approx(without["policy_loss"], abs=1e-6)


def test_a_kl_penalty_keeps_the_policy_nearer_its_reference():
    drift = {}
    for coef in (0.0, 5.0):
        trainer, samples = _trainer(kl_coef=coef)
        trainer.set_reference()
        reference = torch.tensor([sum(v) for v in completion_logprobs(trainer.model, samples, 0)])
        stats = [trainer.rl_step([samples]) for _ in range(8)]
        after = torch.tensor([sum(v) for v in completion_logprobs(trainer.model, samples, 0)])
        drift[coef] = float((after - reference).abs().sum())
        assert ("kl_ref" in stats[-1]) == (coef > 0)
        if coef:
            assert stats[0]["kl_ref"] == 0.0 and stats[-1]["kl_ref"] > 0  # it starts at the reference, then moves
            assert all(p.requires_grad is False for p in trainer.reference.parameters())
    assert drift[5.0] < 0.8 * drift[0.0]


def test_a_train_run_sends_its_metrics_to_tensorboard_and_wandb_and_resumes_with_its_reference(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    args = ["train", *TINY, "--steps", "3", "--kl-coef", "0.1", "--entropy-coef", "0.01", "--lr-warmup", "2",
            "--lr-schedule", "cosine", "--metrics", "tensorboard,wandb", "--eval-size", "4", "--eval-every", "2",
            "--run-dir", str(run_dir)]  # fmt: skip
    assert main(args) == 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert ["eval_reward" in m for m in lines] == [False, True, False]  # every 2nd update's held-out reward
    assert 0.0 <= lines[1]["eval_reward"] <= 1.0
    assert [m["lr"] for m in lines] == pytest.approx([1.5e-4, 3e-4, 3e-4 * COSINE_FLOOR])
    assert all({"entropy", "kl_ref", "kl_behaviour", "clip_fraction", "staleness_mean"} <= m.keys() for m in lines)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"reward", "entropy", "kl_ref", "lr", "trained_tokens", "eval_reward"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("eval_reward")] == [(2, pytest.approx(lines[1]["eval_reward"]))]
    assert [e.step for e in events.Scalars("reward")] == [m["step"] for m in lines]
    assert [e.value for e in events.Scalars("reward")] == pytest.approx([m["reward"] for m in lines])
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([m["lr"] for m in lines])
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    assert (run_dir / "reference.safetensors").exists()

    assert main(["train", "--resume", "--steps", "4", "--no-progress", "--run-dir", str(run_dir)]) == 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4] and lines[-1]["kl_ref"] > 0
    (run_dir / "reference.safetensors").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "5", "--no-progress", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err  # the run's log lines, then the one error line
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("rollout-ledger:")] == [err.splitlines()[-1]]
    assert "reference.safetensors" in err.splitlines()[-1]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--kl-coef", "-1"], "--kl-coef"),
        (["--entropy-coef", "nan"], "--entropy-coef"),
        (["--lr-warmup", "-2"], "--lr-warmup"),
        (["--lr-schedule", "linear"], "--lr-schedule"),
        (["--metrics", "tensorboard,mlflow"], "mlflow"),
        (["--metrics", "wandb,wandb"], "twice"),
        (["--eval-every", "2"], "--eval-every needs --eval-size"),
        (["--eval-every", "-1", "--eval-size", "4"], "--eval-every"),
    ],
)
def test_bad_training_options_exit_2_naming_them(tmp_path, capsys, flags, named):
    assert main(["train", *TINY, *flags, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_missing_sink_library_is_named_before_the_run_starts(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["train", *TINY, "--metrics", "wandb", "--run-dir", str(tmp_path / "run")]) == 2
    assert "rollout-ledger[metrics]" in capsys.readouterr().err
    assert not (tmp_path / "run" / "events.sqlite").exists()


def test_run_config_checks_the_new_fields():
    for bad in ({"kl_coef": -0.1}, {"entropy_coef": math.inf}, {"lr_schedule": "step"}, {"metrics": ("mlflow",)}, {"lr_warmup": -1},
                {"in_order": "yes"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RunConfig(**bad)
    assert RunConfig(metrics=["tensorboard"]).metrics == ("tensorboard",)  # as run.json gives it
    assert masked_mean(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])) == 3.0


def test_held_out_evaluation_samples_at_its_own_temperature(tmp_path, monkeypatch):
    """``--eval-temperature 0``: the held-out evaluations' engines decode greedily while
    the run's engine samples at the run's temperature; it is kept in run.json, and a
    negative one is refused by name."""
    from engine.workflows import rl_models

    built = []
    real = rl_models.build_engine

    def spy(config, tokenizer, model, slots, seed, temperature=None):
        engine = real(config, tokenizer, model, slots, seed, temperature)
        built.append(engine.temperature)
        return engine

    monkeypatch.setattr(rl_models, "build_engine", spy)
    run_dir = tmp_path / "run"
    assert main(["train", "--task", "copy", "--steps", "2", "--batch-size", "2", "--group-size", "2", "--warmup-steps", "2",
                 "--temperature", "0.8", "--eval-temperature", "0", "--eval-size", "4", "--eval-every", "1",
                 "--no-progress", "--run-dir", str(run_dir)]) == 0
    assert built[0] == 0.8 and built[1:] and set(built[1:]) == {0.0}  # the run's engine, then one per evaluation
    assert json.loads((run_dir / "run.json").read_text())["eval_temperature"] == 0
    assert [m["step"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval_reward" in m] == [1, 2]
    with pytest.raises(ValueError, match="eval_temperature"):
        RunConfig(eval_temperature=-0.5)


def test_behaviour_m2_is_kept_in_the_run_and_reports_its_share_per_update(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "3", "--max-staleness", "2", "--minibatches", "2", "--behaviour-m2", "1e-12",
                 "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "run.json").read_text())["behaviour_m2"] == 1e-12
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= m["m2_dropped"] <= 1.0 for m in lines)
    # the second minibatch of an update runs on weights its first step moved: a bound this
    # small leaves out every token whose log-prob moved at all
    assert any(m["m2_dropped"] > 0 for m in lines)
    plain = tmp_path / "plain"
    assert main(["train", *TINY, "--steps", "1", "--run-dir", str(plain)]) == 0
    assert "m2_dropped" not in json.loads((plain / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("extra, message", [
    (["--behaviour-m2", "-1"], "--behaviour-m2"),
    (["--behaviour-m2", "0.04", "--nproc", "2"], "--behaviour-m2 bounds the tokens of a whole minibatch"),
])
def test_bad_behaviour_m2_is_refused_by_name(tmp_path, capsys, extra, message):
    assert main(["train", *TINY, "--steps", "1", "--run-dir", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_in_order_run_never_trains_past_its_bound_and_its_log_shows_batches_in_order(tmp_path):
    from engine.core.reducer import Folder
    from engine.log import EventLog
    from properties.invariants import InvariantChecker

    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--task", "repeat", "--steps", "6", "--max-staleness", "1", "--max-concurrent", "8",
                 "--in-order", "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "run.json").read_text())["in_order"] is True
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(m["staleness_max"] <= 1 for m in lines)
    folder, check = Folder(), InvariantChecker(full_every=1)
    with EventLog(run_dir / "events.sqlite", mode="r") as log:
        for event in log.events():
            folder.apply(event)
            check(folder.state, event)  # consumed_in_order among them
    assert folder.state.config is not None and folder.state.config.in_order and folder.state.version == 6
