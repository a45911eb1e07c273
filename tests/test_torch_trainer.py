import math
import random

import pytest
import torch
from conftest import copy_pair

from engine.backends.local.checkpoint import (
    checkpoint_path,
    checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from engine.backends.local.model import Policy, preset
from engine.backends.local.objectives import (
    decoupled_loss,
    group_advantages,
    interpolate_proximal,
    ppo_loss,
    second_moment_mask,
)
from engine.backends.local.tasks import Tokenizer, get_task
from engine.backends.local.trainer import (
    Sample,
    Trainer,
    TrainerConfig,
    completion_logprobs,
)


def test_group_advantages_are_centred_per_group_and_zero_for_equal_rewards():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    assert adv[0].tolist() == pytest.approx([1, -1, -1, 1], abs=1e-4)
    assert adv[1].tolist() == [0, 0, 0, 0]


def test_decoupled_equals_ppo_when_behaviour_is_the_proximal_policy():
    logp = torch.randn(3, 5, requires_grad=True)
    behaviour = logp.detach() + 0.1 * torch.randn(3, 5)
    adv, mask = torch.tensor([1.0, -0.5, 2.0]), torch.ones(3, 5)
    a, _ = ppo_loss(logp, behaviour, adv, mask)
    b, info = decoupled_loss(logp, behaviour, behaviour, adv, mask)
    assert a.item() == pytest.approx(b.item()) and info["behaviour_weight"] == pytest.approx(1.0)


def test_decoupled_weights_by_behaviour_drops_tokens_over_the_cap_and_ignores_masked_ones():
    logp = torch.zeros(1, 4, requires_grad=True)
    proximal = torch.zeros(1, 4)
    behaviour = torch.tensor([[0.0, -1.0, -5.0, -50.0]])  # weights 1, e, e^5 (over the cap), e^50 (masked)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, info = decoupled_loss(logp, proximal, behaviour, torch.tensor([1.0]), mask, cap=5.0)
    assert loss.item() == pytest.approx(-(1 + math.e) / 3, rel=1e-5)
    assert info["capped_fraction"] == pytest.approx(1 / 3)


def test_plain_ppo_clips_a_stale_ratio_and_loses_the_gradient():
    logp = torch.zeros(1, 1, requires_grad=True)
    behaviour = torch.tensor([[-1.0]])  # ratio e > 1 + eps with a positive advantage
    loss, info = ppo_loss(logp, behaviour, torch.tensor([1.0]), torch.ones(1, 1))
    loss.backward()
    assert info["clip_fraction"] == 1.0 and logp.grad.abs().sum() == 0


def test_interpolated_proximal_runs_from_behaviour_to_current():
    behaviour, current = torch.tensor([[-2.0, -2.0, -2.0]]), torch.tensor([[-1.0, -1.0, -1.0]])
    versions = torch.tensor([[3, 1, 3]])
    # proximal version 3, current weights at 3.5: a token of version 1 sits 2/2.5 of the way
    out = interpolate_proximal(behaviour, current, versions, proximal_version=3, current_version=3.5)
    assert out.tolist()[0] == pytest.approx([-2.0, -2.0 + 0.8, -2.0])
    same = interpolate_proximal(behaviour, current, versions, proximal_version=3, current_version=3.0)
    assert same.tolist()[0] == pytest.approx([-2.0, -1.0, -2.0])


def test_the_second_moment_mask_drops_the_largest_gaps_first_and_no_more_than_the_bound_needs():
    gap = torch.tensor([[0.1, -0.1, 1.0, -3.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the last token is no completion token: never kept
    # squares 0.01, 0.01, 1, 9: the means of the smallest 1..4 are 0.01, 0.01, 0.34, 2.5
    assert second_moment_mask(gap, mask, 0.04).tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]
    assert second_moment_mask(gap, mask, 0.34).tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    assert second_moment_mask(gap, mask, 100.0).tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]  # in bound: all kept
    # equal gaps at the cut go together: keeping one of them would be an arbitrary choice
    assert second_moment_mask(torch.full((1, 3), 0.3), torch.ones(1, 3), 0.04).tolist() == [[0.0, 0.0, 0.0]]
    assert second_moment_mask(gap, torch.zeros(1, 5), 0.04).tolist() == [[0.0] * 5]


def test_the_second_moment_mask_keeps_the_bound_and_is_minimal_on_random_gaps():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        gap = torch.randn(4, 9, generator=generator) * torch.rand(1, generator=generator) * 2
        mask = (torch.rand(4, 9, generator=generator) > 0.2).float()
        bound = float(torch.rand(1, generator=generator)) * 0.5 + 1e-3
        keep = second_moment_mask(gap, mask, bound)
        squared = gap ** 2
        assert bool((keep <= mask).all())
        if keep.sum() > 0:
            assert float((squared * keep).sum() / keep.sum()) <= bound + 1e-6
        dropped = squared[(mask - keep) > 0]
        if dropped.numel():  # adding back the smallest dropped gap (with its ties) breaks the bound
            smallest = dropped.min()
            back = keep + ((mask - keep) > 0).float() * (squared == smallest).float()
            assert float((squared * back).sum() / back.sum()) > bound


def _trainer(**options) -> tuple[Trainer, Tokenizer]:
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    model = Policy(preset("tiny", tokenizer.vocab_size, 16))
    return Trainer(model, TrainerConfig(**options), pad_id=tokenizer.pad_id, device="cpu"), tokenizer


@pytest.mark.parametrize("options", [{}, {"objective": "ppo"}, {"proximal": "interpolate", "minibatches": 2}, {"proximal": "segment"}])
def test_an_rl_step_makes_high_advantage_completions_likelier(options):
    trainer, tokenizer = _trainer(lr=3e-3, **options)
    prompt = tokenizer.prompt_ids("cp:ab=")
    good, bad = tokenizer.answer_ids("ab"), tokenizer.answer_ids("ba")
    samples = []
    for completion, reward in ((good, 1.0), (bad, 0.0), (good, 1.0), (bad, 0.0)):
        sample = Sample(prompt, completion, [0.0] * 3, [0] * 3, reward)
        sample.behaviour = completion_logprobs(trainer.model, [sample], 0)[0]
        samples.append(sample)
    before = [sum(v) for v in completion_logprobs(trainer.model, samples, 0)]
    metrics = trainer.rl_step([samples])
    after = [sum(v) for v in completion_logprobs(trainer.model, samples, 0)]
    assert after[0] - after[1] > before[0] - before[1]  # the rewarded completion gained on the other
    assert trainer.version == 1 and metrics["reward"] == 0.5


def test_behaviour_m2_leaves_the_far_off_policy_tokens_out_of_the_update():
    """With ``behaviour_m2`` a token whose behaviour log-prob is far from the current one
    is left out of the loss (its share reported as ``m2_dropped``), so the update is the
    one on the other tokens alone; kl_behaviour still measures every token."""
    def update(bound: float, corrupt: bool) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        trainer, tokenizer = _trainer(lr=3e-3, behaviour_m2=bound)
        samples = copy_pair(trainer, tokenizer)
        if corrupt:  # the rewarded sample's first token: sampled by a policy far from this one
            samples[0].behaviour[0] += 4.0
        metrics = trainer.rl_step([samples])
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, metrics

    clean, clean_metrics = update(0.0, False)
    kept, kept_metrics = update(0.5, False)
    assert kept_metrics["m2_dropped"] == 0.0  # on-policy: nothing to drop
    assert all(torch.equal(clean[k], kept[k]) for k in clean)
    dropped, dropped_metrics = update(0.5, True)
    assert dropped_metrics["m2_dropped"] == pytest.approx(1 / 6)
    assert dropped_metrics["kl_behaviour"] > 1.0  # measured over every token, the corrupted one included
    # the second moment: the corrupted token's gap of 4, squared, over the six tokens
    assert dropped_metrics["m2_behaviour"] == pytest.approx(16 / 6, rel=1e-4)
    assert kept_metrics["m2_behaviour"] == pytest.approx(0.0, abs=1e-8)
    ignored, _ = update(0.0, True)  # without the bound the corrupted token's weight moves the update
    assert any(not torch.allclose(dropped[k], ignored[k]) for k in dropped)


def test_supervised_warmup_lowers_the_loss():
    trainer, tokenizer = _trainer()
    task, rng = get_task("copy"), random.Random(0)
    losses = [trainer.sft_step(task.supervised(rng, 32), tokenizer) for _ in range(30)]
    assert losses[-1] < losses[0] * 0.7


def test_bad_trainer_settings_are_named():
    with pytest.raises(ValueError, match="objective"):
        TrainerConfig(objective="dpo")
    with pytest.raises(ValueError, match="proximal"):
        TrainerConfig(proximal="guess")
    with pytest.raises(ValueError, match="minibatches"):
        TrainerConfig(minibatches=0)
    with pytest.raises(ValueError, match="behaviour_m2"):
        TrainerConfig(behaviour_m2=-0.1)


def test_checkpoints_round_trip_keep_the_newest_and_name_a_missing_one(tmp_path):
    trainer, _ = _trainer()
    for version in range(4):
        trainer.version = version
        save_checkpoint(tmp_path, version, trainer.state_dict(), keep=2)
    assert checkpoints(tmp_path) == [2, 3]
    assert not list(tmp_path.glob("*.partial"))
    other, _ = _trainer()
    torch.nn.init.zeros_(other.model.embed.weight)
    other.load_state_dict(load_checkpoint(tmp_path, 3))
    assert other.version == 3 and torch.equal(other.model.embed.weight, trainer.model.embed.weight)
    with pytest.raises(FileNotFoundError, match="version 1 .*versions present: 2, 3"):
        load_checkpoint(tmp_path, 1)


def test_a_checkpoint_file_that_holds_no_state_dict_is_refused_by_name(tmp_path):
    torch.save([1, 2, 3], tmp_path / "ckpt-000004.pt")  # the older format, read without a pickle
    with pytest.raises(ValueError, match="ckpt-000004.pt does not hold a checkpoint.*list"):
        load_checkpoint(tmp_path, 4)


def test_a_file_that_is_no_checkpoint_is_refused_in_one_line_naming_it(tmp_path):
    checkpoint_path(tmp_path, 5).write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"ckpt-000005.safetensors: not a checkpoint") as raised:
        load_checkpoint(tmp_path, 5)
    assert "\n" not in str(raised.value)
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(checkpoint_path(tmp_path, 6)))  # safetensors, but not rollout-ledger's
    with pytest.raises(ValueError, match="ckpt-000006.safetensors: not a checkpoint.*metadata"):
        load_checkpoint(tmp_path, 6)


def test_a_pickle_in_a_checkpoint_of_the_older_format_is_refused_not_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"model": Payload()}, tmp_path / "ckpt-000007.pt")
    with pytest.raises(ValueError, match="ckpt-000007.pt: not a checkpoint"):
        load_checkpoint(tmp_path, 7)


def test_a_checkpoint_of_the_older_format_still_loads(tmp_path):
    trainer, _ = _trainer()
    torch.save(trainer.state_dict(), tmp_path / "ckpt-000003.pt")
    assert checkpoints(tmp_path) == [3]
    other, _ = _trainer()
    torch.nn.init.zeros_(other.model.embed.weight)
    other.load_state_dict(load_checkpoint(tmp_path, 3))
    assert torch.equal(other.model.embed.weight, trainer.model.embed.weight)


def test_a_checkpoint_is_safetensors_and_round_trips_the_optimiser(tmp_path):
    trainer, tokenizer = _trainer()
    from engine.backends.local.tasks import copy_task
    import random

    trainer.sft_step(copy_task().supervised(random.Random(0), 4), tokenizer)  # the optimiser has state
    path = save_checkpoint(tmp_path, 1, trainer.state_dict())
    assert path.name == "ckpt-000001.safetensors"
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, no pickle
    other, _ = _trainer()
    other.load_state_dict(load_checkpoint(tmp_path, 1))
    saved, loaded = trainer.optimizer.state_dict(), other.optimizer.state_dict()
    assert loaded["param_groups"][0]["betas"] == list(saved["param_groups"][0]["betas"])
    for key, state in saved["state"].items():
        assert torch.equal(loaded["state"][key]["exp_avg"], state["exp_avg"])
