"""The trainer's RL step alone, by batch rows: no engine, no ledger, no disk.

Times :meth:`Trainer.rl_step` on synthetic GRPO groups (prompts of 9 tokens,
completions of 4, 6, 10 or 20, four samples a group) for each batch size in turn,
``--iterations`` steps each, and prints the median of all but the first five (the
first ones compile shapes). Run it at the start and the end of a long call to see
how far the machine's own speed moved in between: the fidelity study's round 7
(docs/simulator.md) did, on an H200::

    python3 benchmarks/trainer_step.py --device cuda

Tiny on a CPU::

    python3 benchmarks/trainer_step.py --device cpu --model-size tiny --groups 4,8 --iterations 8
"""

from __future__ import annotations

import argparse
import random
import statistics
import time


def main() -> None:
    import torch

    from engine.backends.local.model import Policy, preset
    from engine.backends.local.trainer import Trainer, TrainerConfig
    from engine.runtime.ports import Sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model-size", default="small")
    parser.add_argument("--groups", default="8,16,24,32,48,64,16", help="groups of 4 per batch, in the order timed")
    parser.add_argument("--iterations", type=int, default=25, help="steps per batch size (the first five are not counted)")
    args = parser.parse_args()
    if args.iterations < 6:
        parser.error(f"--iterations must be at least 6 (the first five are not counted), got {args.iterations}")
    sizes = [int(g) for g in args.groups.split(",")]
    torch.manual_seed(0)
    rng = random.Random(0)
    model = Policy(preset(args.model_size, 64, 128)).to(args.device)
    trainer = Trainer(model, TrainerConfig(), pad_id=0, device=args.device)

    def sample() -> Sample:
        n = rng.choice((4, 6, 10, 20))
        return Sample([rng.randrange(1, 60) for _ in range(9)], [rng.randrange(1, 60) for _ in range(n)], [-1.0] * n, [0] * n,
                      rng.random())

    def synchronize() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    print(f"trainer step alone, model {args.model_size}, device {args.device}\n\n| rows | step ms (median) |\n|---:|---:|")
    for groups in sizes:
        seconds = []
        for _ in range(args.iterations):
            batch = [[sample() for _ in range(4)] for _ in range(groups)]
            synchronize()
            began = time.perf_counter()
            trainer.rl_step(batch)
            synchronize()
            seconds.append(time.perf_counter() - began)
        print(f"| {4 * groups} | {statistics.median(seconds[5:]) * 1000:.2f} |", flush=True)


if __name__ == "__main__":
    main()
