"""Profile the train loop (cProfile, top functions by own time) for a sync and an async run.

    python benchmarks/gpu_profile.py --device cuda --staleness 0 8
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
from dataclasses import replace

from engine.workflows.rl_run import RLRun, RunConfig, train_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model-size", default="small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 8])
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()
    base = RunConfig(task="reverse", model_size=args.model_size, steps=args.steps, batch_size=16, group_size=8,
                     warmup_steps=5, device=args.device, checkpoint_every=1000)
    for staleness in args.staleness:
        root = tempfile.mkdtemp()
        run = RLRun(replace(base, max_staleness=staleness), root)
        run.setup()
        profile = cProfile.Profile()
        profile.enable()
        train_loop(run, progress=False)
        profile.disable()
        print(f"== max_staleness {staleness}: {run.summary()}  decode steps {run.engine.steps}")
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
        run.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
