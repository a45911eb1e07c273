"""The proximal policy of an update is the one the update starts from.

Under ``segment_wise`` the run recomputes, at the bump to version ``v+1``, the
proximal log-probs of ready rollouts that the update starting at ``v+1`` will train:
they must be ``v+1``'s log-probs (a fresh forward pass of the trainer's new weights),
tagged ``v+1``; a stored recomputation of another version is not used.  And a
``recomputed`` event is logged only when a recomputation happened.
"""

from __future__ import annotations

import torch

from engine.backends.local.model import Policy, preset
from engine.backends.local.tasks import Tokenizer
from engine.backends.local.trainer import Trainer, TrainerConfig, completion_logprobs, pad_samples
from engine.core.config import Config
from engine.core.events import Accepted, Enqueued, Segment, Submitted
from engine.ledger import Ledger
from engine.log import replay
from engine.runtime.ports import Sample
from engine.workflows.reinforcement import train
from engine.workflows.rl_config import RunConfig
from engine.workflows.rl_run import RLRun


def test_segment_wise_recomputes_under_the_version_the_next_update_starts_from(tmp_path, monkeypatch):
    checked: list[tuple[int, int]] = []
    original = RLRun._recompute

    def recompute_and_check(self: RLRun, rollouts: tuple[str, ...]) -> None:
        original(self, rollouts)
        new, old = self.trainer.version, self.engine.version  # the trainer is at v+1, the engine still at v
        assert new == old + 1
        for rollout in rollouts:
            samples = self.executor.store.get(rollout)
            fresh = completion_logprobs(self.trainer.model, samples, self.tokenizer.pad_id)
            behind = completion_logprobs(self.engine.model, samples, self.tokenizer.pad_id)
            for sample, expected, stale in zip(samples, fresh, behind):
                assert sample.proximal_version == new
                assert torch.allclose(torch.tensor(sample.proximal), torch.tensor(expected), atol=1e-5)
                assert not torch.allclose(torch.tensor(sample.proximal), torch.tensor(stale), atol=1e-4)
            checked.append((new, len(samples)))

    monkeypatch.setattr(RLRun, "_recompute", recompute_and_check)
    config = RunConfig(task="copy", steps=4, batch_size=2, group_size=2, warmup_steps=2, max_staleness=2, max_concurrent=8,
                       policy="segment_wise", lr=3e-3)
    train(config, tmp_path / "run", progress=False)
    assert checked, "no rollout was recomputed: the run did not exercise the recomputation"
    state = replay(tmp_path / "run" / "events.sqlite")
    assert state.version == 4


def test_a_stored_recomputation_of_another_version_is_not_the_proximal_policy():
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    trainer = Trainer(Policy(preset("tiny", tokenizer.vocab_size, 16)), TrainerConfig(proximal="segment"), pad_id=0, device="cpu")
    trainer.version = 3
    sample = Sample(tokenizer.prompt_ids("cp:ab="), tokenizer.answer_ids("ab"), [-1.0] * 3, [2] * 3, 1.0)
    sample.proximal, sample.proximal_version = [-0.5] * 3, 2  # recomputed under version 2: stale for an update from 3
    assert pad_samples([sample], 0, "cpu", version=3).has_stored.sum() == 0
    sample.proximal_version = 3
    assert pad_samples([sample], 0, "cpu", version=3).has_stored.sum() == 3
    update = trainer.prepare_update([sample], torch.tensor([1.0]))
    assert update.batch.has_stored.sum() == 3


def test_no_recomputed_event_is_logged_when_nothing_was_recomputed(tmp_path):
    config = Config(max_concurrent=4, batch_size=1, max_staleness=1, policy="segment_wise")
    ledger = Ledger(config, path=tmp_path / "log.sqlite")
    try:
        ledger.append(Enqueued("r1", "p1"))
        ledger.append(Submitted("r1", 0))
        ledger.append(Segment("r1", 0, 3))
        ledger.append(Accepted("r1"))
        ledger.advance_version()  # r1 is ready at version 0: fine for now
        ledger.append(Enqueued("r2", "p2"))
        wanted = ledger.recompute(None)  # r1 is now one version behind; nobody recomputes
        assert wanted == ()
        done: list[tuple[str, ...]] = []
        logged = ledger.recompute(done.append)
        assert done == [("r1",)] and [type(event).__name__ for event in logged] == ["Recomputed"]
    finally:
        ledger.close()
