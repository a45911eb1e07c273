"""Where the built-in engine's time goes, by model size: the host's or the GPU's.

For each model shape (``d_model:layers:heads:d_ff``) and slot count, on one device:

- ``decode eager``: the model's decode step over every slot, run op by op (a few
  hundred kernel launches from Python);
- ``decode graph``: the same step replayed as one captured CUDA graph (GPU only);
- ``step eager`` / ``step graph``: the engine's whole step with every slot busy (the
  decode, sampling, and recording each slot's token in Python);
- ``refill R eager`` / ``refill R graph``: the engine's prefill pass of R busy slots
  (their prompts and tokens so far, about 16), sampled and recorded, run op by op or
  replayed as the graph of its shape;
- ``prefill 128``: the model's prefill pass of 128 rows of 64 tokens, run op by op;
- ``train``: one forward and backward pass and an AdamW step over 128 sequences of 80
  tokens (bf16 autocast on a GPU), as the trainer runs them.

Each figure is the median of ``--iterations`` timed repeats after three untimed ones,
with the device synchronised around each.  Where ``decode graph`` is far below
``decode eager``, the eager step is the host's launches, and it runs as fast as the
host's cores happen to be; the graph's step is the GPU's work::

    python3 benchmarks/engine_step.py --device cuda --shapes 256:6:8:704,1024:16:16:2816 --slots 512

Tiny on a CPU (no graphs)::

    python3 benchmarks/engine_step.py --device cpu --shapes 32:2:2:96 --slots 8 --iterations 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Callable


def _shapes(text: str) -> list[tuple[int, int, int, int]]:
    """``--shapes``: comma-separated ``d_model:layers:heads:d_ff``."""
    shapes = []
    for part in text.split(","):
        try:
            d_model, layers, heads, d_ff = (int(number) for number in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a shape is d_model:layers:heads:d_ff, got {part!r}") from None
        shapes.append((d_model, layers, heads, d_ff))
    return shapes


def _counts(text: str) -> list[int]:
    """``--slots``: comma-separated positive integers."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"slot counts are positive integers, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--shapes", type=_shapes, default="256:6:8:704", help="comma-separated d_model:layers:heads:d_ff")
    parser.add_argument("--slots", type=_counts, default="512", help="comma-separated slot counts")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--max-seq-len", type=int, default=103, help="the reverse task's")
    parser.add_argument("--no-train", action="store_true", help="leave the training step out")
    args = parser.parse_args()
    shapes, slot_counts = args.shapes, args.slots

    import torch

    from engine.backends.local.generation import TorchEngine
    from engine.backends.local.model import ModelConfig, Policy

    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def timed(run: Callable[[], object]) -> float:
        for _ in range(3):
            run()
        times = []
        for _ in range(args.iterations):
            sync()
            began = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - began)
        return statistics.median(times) * 1e3

    async def busy_steps(engine: TorchEngine, slots: int) -> dict[str, float]:
        """The engine's step, and its prefill pass of 1 and 16 busy slots, with every slot
        busy and none finishing: the end id, -1, is no token, and each sequence is cut
        back to 8 tokens before each step."""
        for _ in range(slots):
            engine.submit([2] * 8, args.max_seq_len - 9)
        engine.step()  # the prefill pass

        def trim() -> None:
            engine._positions.clamp_(max=40)  # stay clear of the sequence limit
            for handle in engine._live():  # nor reach max_new_tokens
                generation = handle.generation
                del generation.tokens[8:], generation.logprobs[8:], generation.versions[8:]

        def step() -> None:
            trim()
            engine.step()

        def refill(rows: int) -> None:
            trim()
            engine._prefill(list(range(rows)))

        figures = {"step": timed(step)}
        for rows in (1, 16):
            figures[f"refill {rows}"] = timed(lambda: refill(min(rows, slots)))
        return figures

    print(f"device {torch.cuda.get_device_name(device) if cuda else 'cpu'}, torch {torch.__version__}; milliseconds")
    header = ["shape", "params", "slots", "decode eager", "decode graph", "step eager", "step graph",
              "refill 1 eager", "refill 1 graph", "refill 16 eager", "refill 16 graph", "prefill 128", "train"]
    print(" | ".join(header))
    for d_model, layers, heads, d_ff in shapes:
        config = ModelConfig(vocab_size=16, d_model=d_model, n_layers=layers, n_heads=heads, d_ff=d_ff,
                             max_seq_len=args.max_seq_len)
        torch.manual_seed(0)
        trained = Policy(config).to(device)
        params = trained.num_parameters()
        train_ms = float("nan")
        if not args.no_train:
            optimiser = torch.optim.AdamW(trained.parameters(), lr=1e-5)
            batch = torch.randint(3, 16, (128, 80), device=device)

            def train() -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    loss = -trained.logprobs(batch).mean()
                loss.backward()
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)

            train_ms = timed(train)
            del optimiser
        model = Policy(config).to(device)
        if cuda:
            model = model.to(torch.bfloat16)
        model.eval()
        for slots in slot_counts:
            row: list[str] = [f"{d_model}:{layers}:{heads}:{d_ff}", f"{params / 1e6:.0f}M", str(slots)]
            figures: dict[str, float] = {}
            with torch.no_grad():
                for graphs in (False, True):
                    if graphs and not cuda:
                        continue
                    engine = TorchEngine(model, slots=slots, eos_id=-1, pad_id=0, graphs=graphs)
                    engine._positions.fill_(20)
                    name = "graph" if graphs else "eager"
                    figures[f"decode {name}"] = timed(engine._decode)
                    for key, value in asyncio.run(busy_steps(engine, slots)).items():
                        figures[f"{key} {name}"] = value
                    del engine
                scratch = TorchEngine(model, slots=max(128, slots), eos_id=1, pad_id=0)
                for rows in (128,):
                    tokens = torch.randint(3, 16, (rows, 64), device=device)
                    index = torch.arange(rows, device=device)
                    figures[f"prefill {rows}"] = timed(lambda: model.prefill(tokens, index, scratch.cache))
                del scratch
            figures["train"] = train_ms
            row += [f"{figures[key]:.2f}" if key in figures else "-" for key in header[3:]]
            print(" | ".join(row), flush=True)
        del model, trained
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
