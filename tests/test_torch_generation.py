import asyncio

import pytest
import torch

from engine.backends.local.generation import TorchEngine
from engine.backends.local.model import ModelConfig, Policy
from engine.backends.local.trainer import completion_logprobs
from engine.runtime.ports import Sample

EOS = 2
NEVER = 99  # an end-of-sequence id the model cannot sample: sequences run to max_new_tokens


def _model(seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    return Policy(ModelConfig(vocab_size=12, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=40))


async def _generate_each(engine: TorchEngine, requests: list[tuple[list[int], int]]) -> list:
    task = asyncio.create_task(engine.run())
    handles = [engine.submit(prompt, max_new) for prompt, max_new in requests]
    results = await asyncio.gather(*(h.result() for h in handles))
    engine.close()
    await task
    return results


async def _generate(engine: TorchEngine, prompts: list[list[int]], max_new: int) -> list:
    return await _generate_each(engine, [(prompt, max_new) for prompt in prompts])


def test_more_prompts_than_slots_all_finish_and_behaviour_logprobs_match_a_recomputation():
    model = _model()
    engine = TorchEngine(model, slots=3, eos_id=EOS, seed=1)
    prompts = [[1, 3 + i % 5, 4 + i % 3] for i in range(8)]
    results = asyncio.run(_generate(engine, prompts, max_new=12))
    assert len(results) == 8
    for prompt, result in zip(prompts, results):
        assert result.prompt == prompt and 1 <= len(result.tokens) <= 12
        assert len(result.logprobs) == len(result.versions) == len(result.tokens)
        assert EOS not in result.tokens[:-1]
    # KV-cached, continuously batched sampling must score tokens as a full forward pass does
    samples = [Sample(r.prompt, r.tokens, r.logprobs, r.versions, 0.0) for r in results]
    recomputed = completion_logprobs(model, samples, pad_id=0)
    for sample, values in zip(samples, recomputed):
        assert values == pytest.approx(sample.behaviour, abs=1e-4)


def test_a_finished_slot_is_refilled_without_waiting_for_the_batch():
    engine = TorchEngine(_model(), slots=2, eos_id=NEVER, seed=0)

    async def scenario() -> tuple[int, bool]:
        task = asyncio.create_task(engine.run())
        short = engine.submit([1, 3], 1)
        long = engine.submit([1, 4], 30)
        waiting = engine.submit([1, 5], 1)
        await short.result()
        await waiting.result()  # got the short one's slot while the long one still runs
        steps_when_waiting_done = engine.steps
        still_running = not long.done.done()
        await long.result()
        engine.close()
        await task
        return steps_when_waiting_done, still_running

    steps, still_running = asyncio.run(scenario())
    assert still_running and steps <= 3


def test_weight_load_interrupts_in_flight_sequences_and_they_continue_under_the_new_version():
    model, other = _model(0), _model(5)
    engine = TorchEngine(model, slots=2, eos_id=NEVER, seed=3)

    async def scenario():
        task = asyncio.create_task(engine.run())
        handle = engine.submit([1, 3, 4], 30, stream=True)
        seen = []
        async for token, logprob, version in handle.stream():
            seen.append(version)
            if len(seen) == 5 and engine.version == 0:
                engine.load_weights(other.state_dict(), 1)
        result = await handle.result()
        engine.close()
        await task
        return result, seen

    result, seen = asyncio.run(scenario())
    assert len(result.tokens) == 30 and result.interruptions == 1
    assert set(result.versions[:5]) == {0} and set(result.versions[6:]) == {1}
    assert seen == result.versions
    # after the update, tokens are scored by the new weights on a fresh prefill
    sample = Sample(result.prompt, result.tokens, result.logprobs, result.versions, 0.0)
    fresh = completion_logprobs(other, [sample], pad_id=0)[0]
    assert fresh[6:] == pytest.approx(result.logprobs[6:], abs=1e-4)


def test_pause_stops_stepping_and_resume_goes_on():
    engine = TorchEngine(_model(), slots=1, eos_id=EOS, seed=0)

    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(engine.run())
        engine.pause()
        handle = engine.submit([1, 3], 5)
        for _ in range(20):
            await asyncio.sleep(0)
        paused_steps = engine.steps
        engine.resume()
        await handle.result()
        engine.close()
        await task
        return paused_steps, engine.steps

    paused_steps, steps = asyncio.run(scenario())
    assert paused_steps == 0 and steps >= 1


def test_bad_requests_are_refused_with_the_input_named():
    async def scenario() -> None:
        engine = TorchEngine(_model(), slots=1, eos_id=EOS)
        with pytest.raises(ValueError, match="max_new_tokens"):
            engine.submit([1], 0)
        with pytest.raises(ValueError, match="exceeds max_seq_len 40"):
            engine.submit([1] * 30, 20)
        with pytest.raises(ValueError, match="prompt"):
            engine.submit([], 3)

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="slots"):
        TorchEngine(_model(), slots=0, eos_id=EOS)


def test_the_engine_sums_busy_slots_times_seconds_and_squared_over_its_decode_steps(monkeypatch):
    """Two sequences of 3 and 6 tokens on 2 slots: the pass samples each one's first
    token, then 2 decode steps have 2 busy slots and 3 have 1.  With a clock that
    advances 1 s in each decode step, the sums are exact: busy * seconds 2+2+1+1+1 = 7,
    busy squared 4+4+1+1+1 = 11, seconds 5, busy 7."""
    import engine.backends.local.generation as generation

    engine = TorchEngine(_model(), slots=2, eos_id=NEVER, seed=0)
    clock = [0.0]
    decode = engine.model.decode

    def timed(*args, **kwargs):
        clock[0] += 1.0  # each decode step takes a second
        return decode(*args, **kwargs)

    monkeypatch.setattr(engine.model, "decode", timed)
    monkeypatch.setattr(generation.time, "perf_counter", lambda: clock[0])
    results = asyncio.run(_generate_each(engine, [([1, 3], 3), ([1, 4], 6)]))
    assert [len(r.tokens) for r in results] == [3, 6]
    assert (engine.steps, engine.decoded_tokens, engine.decode_s) == (5, 7, 5.0)
    assert (engine.decode_busy_s, engine.decode_busy2) == (7.0, 11)
    # one pass (both prompts), so one decode step straight after it: the first, 2 busy
    assert (engine.after_pass_steps, engine.after_pass_s, engine.after_pass_busy) == (1, 1.0, 2)
    assert (engine.after_pass_busy_s, engine.after_pass_busy2) == (2.0, 4)


def test_the_engine_counts_the_tokens_its_prefill_passes_ran_padding_included():
    """A pass is as wide as its longest context rounded up to 16, each row that wide:
    prompts of 3 and 20 tokens run 2 x 32 tokens, though their rows hold 23."""
    engine = TorchEngine(_model(), slots=2, eos_id=NEVER, seed=0)
    assert engine.prefill_pad_to == 16 and engine.prefill_pow2_rows is False
    asyncio.run(_generate_each(engine, [([1, 3, 4], 2), ([1] + [3] * 19, 2)]))
    assert engine.prefills == 1 and engine.prefill_tokens == 23 and engine.prefill_padded_tokens == 2 * 32
