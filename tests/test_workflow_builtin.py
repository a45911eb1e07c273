"""The built-in workflows on the torch backend, with tiny models and a few steps:
each learns in the right direction, RLHF chains the three phases, and the
reinforcement workflow resumes after a failure from its checkpoint."""

from __future__ import annotations

import pytest
import torch

from engine.backends.local.checkpoint import read_weights
from engine.core.events import Stage
from engine.log import EventLog
from engine.workflow import StageFailed, run
from engine.workflows import BUILTIN, reinforcement


def losses(result, key: str = "loss") -> list[float]:
    return [m[key] for m in result.context.metrics if key in m and "step" in m]


def metric(result, key: str) -> list[float]:
    return [m[key] for m in result.context.metrics if key in m]


def test_supervised_loss_falls_and_checkpoints_each_epoch(tmp_path):
    log = tmp_path / "sft.sqlite"
    result = run(BUILTIN["supervised"](), {"num_examples": 64, "batch_size": 16, "num_epochs": 2, "eval_size": 32}, log=log)
    train = losses(result)
    assert len(train) == 8
    assert sum(train[-2:]) / 2 < sum(train[:2]) / 2 - 0.3
    evals = metric(result, "eval_loss")
    assert len(evals) == 2 and evals[1] < evals[0]
    assert len(list((tmp_path / "sft.sqlite.checkpoints").glob("ckpt-*.pkl"))) == 2
    assert read_weights(result.state["model_weights"]).keys() == result.state["model"].state_dict().keys()


def test_preference_dpo_learns_the_verifiers_preferences():
    result = run(BUILTIN["preference"](), {"num_pairs": 64, "batch_size": 16, "num_epochs": 3, "eval_size": 64})
    train = losses(result)
    assert abs(train[0] - 0.6931) < 1e-3  # the policy starts equal to its reference
    assert sum(train[-3:]) / 3 < 0.65
    assert metric(result, "eval_accuracy")[-1] > 0.6


def test_reward_model_ranks_chosen_above_rejected():
    result = run(BUILTIN["reward_model"](), {"num_pairs": 64, "batch_size": 16, "num_epochs": 4, "eval_size": 64, "lr": 3e-3})
    train = losses(result)
    assert sum(train[-4:]) / 4 < sum(train[:4]) / 4
    assert metric(result, "eval_accuracy")[-1] > 0.6


RL_CONFIG = {"steps": 3, "batch_size": 4, "group_size": 4, "warmup_steps": 20, "ppo_epochs": 2, "minibatches": 2}


def test_reinforcement_runs_ppo_epochs_over_minibatches_through_the_ledger(tmp_path):
    log = tmp_path / "rl.sqlite"
    result = run(BUILTIN["reinforcement"](), RL_CONFIG, log=log)
    summary = result.state["rl_summary"]
    assert summary["steps"] == 3 and summary["consumed"] == 12  # 3 updates of 4 rollouts, from the RL run's ledger
    with EventLog(log) as events:
        stages = [e.path for e in events.events() if isinstance(e, Stage) and e.phase == "finished"]
    per_iteration = [p for p in stages if p.startswith("reinforcement/iterations[0]/") and p.endswith("/forward_backward")]
    assert per_iteration == [f"reinforcement/iterations[0]/ppo_epochs[{e}]/minibatches[{m}]/forward_backward" for e in range(2) for m in range(2)]
    # the last update moved the policy towards the samples with positive advantage
    trainer = result.state["rl_run"].trainer
    batch, before, advantages = result.state["update_batch"], result.state["proximal"], result.state["advantages"]
    assert advantages.abs().sum() > 0
    with torch.no_grad():
        after = trainer.model.logprobs(batch.tokens).float()
    change = ((after - before) * batch.mask).sum(-1) / batch.mask.sum(-1)
    assert float((advantages * change).sum()) > 0
    rewards = metric(result, "reward")
    assert len(rewards) >= 3 and all(0.0 <= r <= 1.0 for r in rewards)


def test_reinforcement_resumes_after_a_failure_from_its_checkpoint(tmp_path, monkeypatch):
    log = tmp_path / "rl.sqlite"
    collect = reinforcement.Collect.execute
    calls = []

    def failing_collect(self, ctx):
        calls.append(ctx.path)
        if len(calls) == 2:
            raise RuntimeError("generation server lost")
        return collect(self, ctx)

    monkeypatch.setattr(reinforcement.Collect, "execute", failing_collect)
    with pytest.raises(StageFailed, match="reinforcement/iterations\\[1\\]/get_batch.*generation server lost"):
        run(BUILTIN["reinforcement"](), {**RL_CONFIG, "ppo_epochs": 1, "minibatches": 1}, log=log)
    result = run(BUILTIN["reinforcement"](), log=log, resume=True)
    assert result.resumed_from == "reinforcement/iterations[0]/checkpoint"
    assert calls[2] == "reinforcement/iterations[1]/get_batch"  # the first unfinished stage
    assert result.state["rl_summary"]["steps"] == 3


def test_rlhf_chains_sft_reward_model_and_rl_against_the_learned_reward(tmp_path):
    log = tmp_path / "rlhf.sqlite"
    config = {
        "sft": {"num_examples": 64, "batch_size": 16, "num_epochs": 2, "eval_size": 16},
        "reward": {"num_pairs": 32, "batch_size": 16, "num_epochs": 1, "eval_size": 16},
        "rl": {"steps": 2, "batch_size": 4, "group_size": 4},
    }
    result = run(BUILTIN["rlhf"](), config, log=log)
    with EventLog(log) as events:
        phases = [e.path for e in events.events() if isinstance(e, Stage) and e.phase == "finished" and e.path.count("/") == 1]
    assert phases == ["rlhf/sft", "rlhf/reward", "rlhf/rl"]
    sft = [m["loss"] for m in result.context.metrics if m["path"].startswith("rlhf/sft/") and "loss" in m]
    assert sft[-1] < sft[0] - 0.3  # the SFT phase learned
    rl = result.state["rl_run"]
    assert isinstance(rl.task, reinforcement.LearnedRewardTask)  # RL scored by the reward model
    assert rl.config.init is not None and rl.config.init.endswith("init.safetensors")  # and started from the SFT policy
    assert result.state["rl_summary"]["steps"] == 2
