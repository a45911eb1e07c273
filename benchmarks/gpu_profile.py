"""Profile the training loop of the ``train`` command (cProfile, top functions by own
time) for a sync and an async run.

Each run is :func:`engine.workflows.reinforcement.train` (the reinforcement
workflow).  Its stages that do the work (collection, the trainer's steps, the version
bump) run on the workflow's stage thread, so the profiler is switched on in that
thread once the ``setup`` stage has built the run and off when ``summary`` starts:
the profile covers every update and nothing of the setup or warm-up.

    python benchmarks/gpu_profile.py --device cuda --staleness 0 8
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from engine.workflows import rl_stages
from engine.workflows.reinforcement import train
from engine.workflows.rl_config import RunConfig


@contextlib.contextmanager
def profiling_updates(profile: cProfile.Profile) -> Iterator[None]:
    """Enable ``profile`` on the stage thread after ``setup`` and disable it before ``summary``."""
    setup, summarize = rl_stages.SetupRun.execute, rl_stages.Summarize.execute

    def setup_then_profile(self: Any, ctx: Any) -> Any:
        result = setup(self, ctx)
        profile.enable()
        return result

    def stop_then_summarize(self: Any, ctx: Any) -> Any:
        profile.disable()
        return summarize(self, ctx)

    setattr(rl_stages.SetupRun, "execute", setup_then_profile)
    setattr(rl_stages.Summarize, "execute", stop_then_summarize)
    try:
        yield
    finally:
        setattr(rl_stages.SetupRun, "execute", setup)
        setattr(rl_stages.Summarize, "execute", summarize)


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
        root = Path(tempfile.mkdtemp())
        profile = cProfile.Profile()
        with profiling_updates(profile):
            summary = train(replace(base, max_staleness=staleness), root / "run", progress=False)
        last = json.loads((root / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        print(f"== max_staleness {staleness}: {summary}  decode steps {last['decode_steps']}")
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
