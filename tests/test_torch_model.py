import pytest
import torch

from engine.backends.local.model import KVCache, ModelConfig, Policy, preset
from engine.backends.local.tasks import Tokenizer, char_reward, get_task


def _model(seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    return Policy(ModelConfig(vocab_size=20, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=24))


def test_logprobs_match_forward_and_are_causal():
    model = _model()
    tokens = torch.randint(0, 20, (3, 10))
    logp = model.logprobs(tokens)
    assert logp.shape == (3, 9)
    assert torch.all(logp <= 0)
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 20
    other = model.logprobs(changed)
    assert torch.allclose(logp[:, :6], other[:, :6], atol=1e-5)  # the past ignores the future
    assert not torch.allclose(logp[:, 6:], other[:, 6:])


def test_prefill_then_decode_matches_full_forward():
    model = _model(1).eval()
    tokens = torch.randint(3, 20, (2, 12))
    cache = KVCache(model.config, slots=4, max_len=24, device="cpu", dtype=torch.float32)
    slots = torch.tensor([3, 1])
    with torch.no_grad():
        full = model(tokens)
        pre = model.prefill(tokens[:, :5], slots, cache)
        assert torch.allclose(pre, full[:, :5], atol=1e-5)
        for position in range(5, 12):
            step_tokens = torch.zeros(4, dtype=torch.long)
            positions = torch.zeros(4, dtype=torch.long)
            step_tokens[slots] = tokens[:, position]
            positions[slots] = position
            logits = model.decode(step_tokens, positions, cache)
            assert torch.allclose(logits[slots], full[:, position], atol=1e-4)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        preset("huge", 10, 10)
    with pytest.raises(ValueError, match="max_seq_len"):
        _model()(torch.zeros(1, 30, dtype=torch.long))


def test_tokenizer_round_trip_and_errors():
    tok = Tokenizer()
    ids = tok.prompt_ids("rev:abc=") + tok.answer_ids("cba")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(tok.answer_ids("cba") + tok.encode("zz")) == "cba"
    with pytest.raises(ValueError, match="'A'"):
        tok.encode("A")


def test_tasks_are_verifiable_and_long_tailed():
    task = get_task("reverse")
    problems = [task.problem(0, i) for i in range(2000)]
    assert all(p.answer == p.prompt[4:-1][::-1] for p in problems)
    assert problems[5] == task.problem(0, 5)
    lengths = sorted(len(p.answer) for p in problems)
    median, top = lengths[len(lengths) // 2], lengths[int(len(lengths) * 0.99)]
    assert median <= 6 and top >= 30  # long tail: the 99th percentile is many times the median
    assert max(lengths) <= task.max_answer
    assert task.reward(problems[0], problems[0].answer) == 1.0
    assert char_reward("abcd", "abxd") == 0.75
    assert char_reward("ab", "abcd") == 0.5
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
