"""Checkpoints, trainer and workflow alike, are written whole or not at all: a write
that fails leaves the previous checkpoint and nothing else."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.backends.local import checkpoint as trainer_checkpoint
from engine.backends.local.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from engine.workflow.checkpoint import write_checkpoint


def test_a_trainer_checkpoint_that_fails_mid_write_leaves_the_previous_one(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"weights": torch.ones(3)})
    real_save = torch.save

    def save_then_fail(state, path):
        real_save(state, path)
        with open(path, "ab") as handle:
            handle.write(b"torn")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer_checkpoint.torch, "save", save_then_fail)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"weights": torch.zeros(3)})
    assert checkpoints(tmp_path) == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001.pt"]
    assert torch.equal(load_checkpoint(tmp_path, 1)["weights"], torch.ones(3))


def test_a_negative_checkpoint_version_is_refused(tmp_path):
    with pytest.raises(ValueError, match="negative"):
        save_checkpoint(tmp_path, -1, {})
    assert list(tmp_path.iterdir()) == []


def test_a_workflow_checkpoint_that_cannot_be_pickled_leaves_nothing(tmp_path):
    payload = {"state": {"fine": 1, "lock": threading.Lock()}}
    with pytest.raises(RuntimeError, match="lock"):
        write_checkpoint(tmp_path, "ckpt-000000001.pkl", payload, "wf/stage")
    assert list(tmp_path.iterdir()) == []
    target = write_checkpoint(tmp_path, "ckpt-000000002.pkl", {"state": {"fine": 1}}, "wf/stage")
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
