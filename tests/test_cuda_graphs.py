"""The built-in engine's decode step as a captured CUDA graph.

The graph replays the same kernels over the same buffers, the cache and the weights,
so a run with it must sample what a run without it samples, token for token, across
refilled slots and new weights.  That needs a GPU: on the CPU the option is refused.
"""

import asyncio

import pytest
import torch

from engine.backends.local.generation import TorchEngine
from engine.backends.local.model import ModelConfig, Policy

EOS = 2


def _model(seed: int, device: str = "cpu") -> Policy:
    torch.manual_seed(seed)
    return Policy(ModelConfig(vocab_size=12, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=48)).to(device)


def test_graphs_are_refused_off_a_gpu_with_the_device_named():
    with pytest.raises(ValueError, match="CUDA graphs need .* CUDA device, not cpu"):
        TorchEngine(_model(0), slots=2, eos_id=EOS, graphs=True)


async def _run(engine: TorchEngine, other: Policy) -> list:
    """Sixteen prompts through five slots (slots refilled as sequences end, prefill
    passes of three rows padded to four), new weights once the sixth has finished."""
    task = asyncio.create_task(engine.run())
    handles = [engine.submit([1, 3 + i % 5, 4 + i % 3, 5][: 2 + i % 3], 8 + 2 * i) for i in range(16)]
    results = []
    for number, handle in enumerate(handles):
        results.append(await handle.result())
        if number == 5:
            engine.load_weights(other.state_dict(), 1)
    engine.close()
    await task
    return results


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("keep_cache", [False, True])
def test_a_graph_engine_samples_what_the_eager_engine_samples(keep_cache):
    other = _model(7, "cuda")
    runs = []
    for graphs in (False, True):
        engine = TorchEngine(_model(0, "cuda"), slots=5, eos_id=EOS, seed=11, keep_cache=keep_cache, graphs=graphs)
        runs.append(asyncio.run(_run(engine, other)))
        assert engine.steps > 20
    eager, graph = runs
    assert [r.tokens for r in graph] == [r.tokens for r in eager]
    assert [r.versions for r in graph] == [r.versions for r in eager]
    assert {1} <= {v for r in graph for v in r.versions}  # the new weights sampled some tokens
    for a, b in zip(graph, eager):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
