"""Engine overhead of the rollout executor on the CPU: ledger time per update.

Runs the GPU benchmark's pattern (``benchmarks/gpu_async.py``: task ``reverse``,
16 prompts per update, groups of 8, ``max_concurrent = 64``, checkpoint and log
flush every ``steps // 4`` updates) with the ``tiny`` model on the CPU, for each
``max_staleness`` of the sweep, through the ``train`` command's own function
(:func:`engine.workflows.reinforcement.train`), and reports the executor's ``ledger_seconds``
(every call into the ledger, its SQLite log and the staleness policies, the run's
log flushes included) per update, the wall time of an update and the ledger's share
of it (both from the run's ``metrics.jsonl``), the events folded per update (from
its log), the ledger time split by the call it was spent in, and the part of it the
garbage collector took.  Each setting runs ``--repeats``
times and the fastest run is kept (the runs are deterministic: the events are the
same each time, only the timing noise differs).  ``--clock thread`` times the ledger
calls by the thread's CPU time instead of the wall clock: on a shared machine the
process is descheduled at random, which the wall clock counts and CPU time does
not (each reading of that clock costs about half a microsecond more).

    python benchmarks/bench_executor.py [--steps 40] [--repeats 3] [--staleness 0,1,2,4,8] [--clock wall|thread] [--gc update|auto]

Prints one markdown table; every figure is measured in this run (torch on one thread on the CPU).
``--device cuda --model-size small`` runs the same pattern on a GPU (the model of
``benchmarks/gpu_async.py``).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import shutil
import sys
import tempfile
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import engine.runtime.executor  # noqa: E402
from engine.runtime.collector import MODES as GC_MODES  # noqa: E402
from engine.runtime.executor import RolloutExecutor  # noqa: E402
from engine.runtime.store import TrajectoryStore
from engine.workflows.reinforcement import train  # noqa: E402
from engine.workflows.rl_config import RunConfig  # noqa: E402
from engine.workflows.rl_run import RLRun  # noqa: E402

#: How the ledger calls the executor and the run time are grouped in the breakdown,
#: by the name of the function handed to ``RolloutExecutor.timed``.
COMPONENTS = {
    "_try_batch": "top-up + batch",
    "_start_pending": "start pending",
    "append": "append",
    "_enqueue": "append",
    "_fail": "append",
    "_complete": "complete",
    "recompute": "version",
    "advance": "version",
    "begin_update": "pause/resume",
    "unpause": "pause/resume",
    "end_pause": "pause/resume",
    "flush": "flush",
}
COLUMNS = ("top-up + batch", "start pending", "append", "complete", "version", "pause/resume", "flush")


class _Updates:
    """The measured window of a run: from its first batch (setup done) to the end of
    its last update (before the workflow's summary and the run's close).

    Wraps :meth:`RLRun.collect_batch` and :meth:`RLRun.finish_update` to read the
    ledger's event count and the executor's ``ledger_seconds`` at both ends, as a
    loop around the updates would; ``active`` is true inside the window."""

    def __init__(self) -> None:
        self.active = False
        self.start: tuple[int, float] | None = None
        self.end: tuple[int, float, int] | None = None
        self._originals = (RLRun.collect_batch, RLRun.finish_update)

    def __enter__(self) -> "_Updates":
        collect, finish = self._originals

        def collect_batch(run: RLRun) -> Any:
            if self.start is None:
                self.start = (run.ledger.state.events, run.executor.ledger_seconds)
                self.active = True
            return collect(run)

        def finish_update(run: RLRun, *args: Any) -> Any:
            record = finish(run, *args)
            if run.done():
                self.end = (run.ledger.state.events, run.executor.ledger_seconds, run.version)
                self.active = False
            return record

        setattr(RLRun, "collect_batch", collect_batch)
        setattr(RLRun, "finish_update", finish_update)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(RLRun, "collect_batch", self._originals[0])
        setattr(RLRun, "finish_update", self._originals[1])


class _Attribution:
    """Splits ``ledger_seconds`` by ledger call while a run is measured.

    Wraps :meth:`RolloutExecutor.timed` and books the change of ``ledger_seconds``
    across each outermost call inside the measured window to the call's component,
    so the parts add up to the executor's own total (its ``timed`` still does the
    timing).  ``inside`` tells whether such a call is under way."""

    def __init__(self, window: _Updates) -> None:
        self.window = window
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.inside = False
        self._original = RolloutExecutor.timed

    def __enter__(self) -> "_Attribution":
        original, seconds = self._original, self.seconds

        def timed(executor: RolloutExecutor, function: Callable[..., Any], *args: Any) -> Any:
            if self.inside or not self.window.active:
                return original(executor, function, *args)
            before = executor.ledger_seconds
            self.inside = True
            try:
                return original(executor, function, *args)
            finally:
                self.inside = False
                seconds[COMPONENTS.get(function.__name__, "other")] += executor.ledger_seconds - before

        setattr(RolloutExecutor, "timed", timed)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(RolloutExecutor, "timed", self._original)


class _CollectionsInLedger:
    """Time the garbage collector spent inside the executor's ledger calls while a run is
    measured (part of ``ledger_seconds``: a collection runs in whichever call allocates
    when a generation fills, and a full one walks every object of the process)."""

    def __init__(self, calls: _Attribution, clock: Callable[[], float]) -> None:
        self.calls, self.clock = calls, clock
        self.seconds = 0.0
        self.full = 0  # full (generation 2) collections inside ledger calls
        self._start: float | None = None
        self._in_store = False  # the store's time inside a ledger call is taken back out of it: so is its gc
        self._store = {name: getattr(TrajectoryStore, name) for name in ("get", "put")}

    def _outside(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            self._in_store = True
            try:
                return method(*args)
            finally:
                self._in_store = False

        return call

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if not self.calls.inside or self._in_store:
            self._start = None
        elif phase == "start":
            self._start = self.clock()
        elif self._start is not None:
            self.seconds += self.clock() - self._start
            self.full += info["generation"] == 2
            self._start = None

    def __enter__(self) -> "_CollectionsInLedger":
        for name, method in self._store.items():
            setattr(TrajectoryStore, name, self._outside(method))
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)
        for name, method in self._store.items():
            setattr(TrajectoryStore, name, method)


def measure(config: RunConfig, root: Path) -> dict[str, Any]:
    """One run of ``config``: ledger ms/update, events/update and the breakdown (ms/update)."""
    run_dir = root / f"staleness{config.max_staleness}"
    shutil.rmtree(run_dir, ignore_errors=True)
    gc.collect()
    with _Updates() as window, _Attribution(window) as parts, \
            _CollectionsInLedger(parts, engine.runtime.executor.time.perf_counter) as collections:
        train(config, run_dir, progress=False)
    assert window.start is not None and window.end is not None, "the run made no update"
    (events_start, ledger_start), (events_end, ledger_end, steps) = window.start, window.end
    wall = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["wall_s"]  # setup to the last update
    return {
        "ms": 1000 * (ledger_end - ledger_start) / steps,
        "update_ms": 1000 * wall / steps,
        "events": (events_end - events_start) / steps,
        "parts": {name: 1000 * parts.seconds[name] / steps for name in (*COLUMNS, "other")},
        "gc": 1000 * collections.seconds / steps,
        "full_gc": collections.full,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="updates per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest is kept")
    parser.add_argument("--staleness", default="0,1,2,4,8", help="comma-separated max_staleness sweep")
    parser.add_argument("--warmup-steps", type=int, default=5, help="supervised warm-up shared by every run")
    parser.add_argument("--clock", default="wall", choices=("wall", "thread"), help="what the executor's timers read")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model-size", default="tiny", help="tiny, small, base, large or xl")
    parser.add_argument("--gc", default="update", choices=GC_MODES, help="when the garbage collector runs (RunConfig.gc)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    if args.clock == "thread":  # the executor's timers (and only they) read the thread's CPU time
        engine.runtime.executor.time = types.SimpleNamespace(perf_counter=time.thread_time)  # type: ignore[assignment]

    base = RunConfig(
        task="reverse", model_size=args.model_size, steps=args.steps, batch_size=16, group_size=8, max_concurrent=64,
        warmup_steps=args.warmup_steps, checkpoint_every=max(1, args.steps // 4), device=args.device, gc=args.gc,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = RLRun(replace(base, steps=1), root / "warmup")
        warm.setup()
        init = root / "init.safetensors"
        warm.save_weights(init)
        warm.close()
        base = replace(base, init=str(init))

        rows = []
        for staleness in (int(k) for k in args.staleness.split(",")):
            config = replace(base, max_staleness=staleness)
            runs = [measure(config, root) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["ms"])
            rows.append((staleness, best, [r["ms"] for r in runs]))
            print(f"staleness {staleness}: " + ", ".join(f"{r['ms']:.3f}" for r in runs) + " ms/update", file=sys.stderr, flush=True)

    shown = [c for c in (*COLUMNS, "other") if any(best["parts"][c] >= 0.0005 for _, best, _ in rows)]
    print(
        f"model {args.model_size} on {args.device}, steps {args.steps}, checkpoint every {base.checkpoint_every}, gc {args.gc}, "
        f"{args.clock} clock, best of {args.repeats} runs; "
        "breakdown in ms/update\n"
    )
    print(
        "| max_staleness | ledger ms/update | update ms | share | events/update | us/event | "
        + " | ".join(shown) + " | of which gc | full gcs |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(shown) + "---|---|")
    for staleness, best, _ in rows:
        parts = " | ".join(f"{best['parts'][c]:.3f}" for c in shown)
        print(
            f"| {staleness} | {best['ms']:.3f} | {best['update_ms']:.1f} | {100 * best['ms'] / best['update_ms']:.2f}% "
            f"| {best['events']:.1f} | {1000 * best['ms'] / best['events']:.2f} | {parts} | {best['gc']:.3f} | {best['full_gc']} |"
        )


if __name__ == "__main__":
    main()
