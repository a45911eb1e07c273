"""A decode step's seconds against the rows it decodes, every size in one process, interleaved.

Calibration takes a decode step's cost per busy row from the slope within runs and,
where it stands out of the machine's drift, from the runs' step costs across runs
(docs/simulator.md, Calibration).  Both are read off whole runs, whose machine may
change speed between them.  This measures the step directly: a Hugging Face model's
decode step (the forward over a key/value cache, sampling at temperature 1, the tokens
and log-probabilities brought to the host, as the Hugging Face engine does), at each
batch size in turn, the sizes shuffled in every round, so that a machine that changes
speed moves every size alike.  It prints each size's median milliseconds a step and
the least-squares line through them (milliseconds at no row, microseconds a row).

    python benchmarks/decode_rows.py --model DIR --device cuda --rows 16,64,128,256,512

The model is a local directory (``rollout-ledger init-model`` makes one).
"""

from __future__ import annotations

import argparse
import inspect
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a local Hugging Face model directory")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", default="16,64,128,256,512", help="batch sizes, comma-separated")
    parser.add_argument("--context", type=int, default=40, help="tokens in each row's cache before the timed steps")
    parser.add_argument("--steps", type=int, default=10, help="timed decode steps per size and round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds over every size, in a new order each")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        sizes = [int(r) for r in args.rows.split(",")]
    except ValueError:
        parser.error(f"--rows takes batch sizes separated by commas, got {args.rows!r}")
    if not sizes or min(sizes) < 1 or args.steps < 1 or args.rounds < 1 or args.context < 1:
        parser.error("--rows, --steps, --rounds and --context must be at least 1")

    import torch

    from engine.backends.hf.model import load_policy
    from sim.fitting import line

    try:
        policy = load_policy(args.model, args.device)
    except ValueError as err:
        sys.exit(f"decode_rows: {err}")
    lm = policy.lm.eval()
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    vocab = int(lm.config.vocab_size)
    # transformers renamed ``past_key_values`` to ``cache`` (5.2x); the engine takes whichever it has
    cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

    @torch.no_grad()
    def step_seconds(rows: int) -> list[float]:
        ids = torch.randint(1, vocab, (rows, args.context), device=args.device, generator=generator)
        mask = torch.ones_like(ids)
        out = lm(input_ids=ids, attention_mask=mask, use_cache=True)
        cache, last = out.past_key_values, ids[:, -1:]
        timed = []
        for _ in range(args.steps + 1):  # the first step after the prefill is not timed
            began = time.perf_counter()
            mask = torch.cat([mask, torch.ones_like(last)], dim=1)
            positions = mask.sum(-1, keepdim=True) - 1
            out = lm(input_ids=last, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_arg: cache})
            cache = out.past_key_values
            logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
            chosen = logp.gather(-1, tokens[:, None]).squeeze(-1)
            tokens.tolist(), chosen.tolist()  # to the host, which waits for the device
            timed.append(time.perf_counter() - began)
            last = tokens[:, None]
        return timed[1:]

    for rows in sizes:  # warm-up: every shape's first passes
        step_seconds(rows)
    order = random.Random(args.seed)
    seconds: dict[int, list[float]] = {rows: [] for rows in sizes}
    for _ in range(args.rounds):
        shuffled = sizes[:]
        order.shuffle(shuffled)
        for rows in shuffled:
            seconds[rows].extend(step_seconds(rows))
    medians = {rows: statistics.median(s) for rows, s in seconds.items()}
    fitted = line("decode step", [float(r) for r in sizes], [medians[r] for r in sizes])
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{Path(args.model).name} on {device}: {args.rounds} rounds x {args.steps} steps a size, context {args.context}")
    print("| rows | median ms a step | p10 | p90 |")
    print("|---:|---:|---:|---:|")
    for rows in sizes:
        s = sorted(seconds[rows])
        print(f"| {rows} | {1e3 * medians[rows]:.2f} | {1e3 * s[len(s) // 10]:.2f} | {1e3 * s[9 * len(s) // 10]:.2f} |")
    print(f"line: {1e3 * fitted['1']:.2f} ms + {1e6 * fitted['x']:.2f} us a row (R^2 {fitted.r2:.3f})")


if __name__ == "__main__":
    main()
