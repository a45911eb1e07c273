"""Steps per second of a training loop driving ``serve-trainer`` over loopback HTTP,
unpipelined (each call waits for the last answer) against pipelined (the next step's
``forward_backward`` and ``optim_step`` are submitted before this step's answers come
back, ``depth`` calls on the wire).  One step is ``forward_backward`` + ``optim_step`` on
a batch of ``batch`` samples of ``length`` completion tokens; the server runs in its own
process on the CPU.

    PYTHONPATH=. python benchmarks/bench_remote.py [--steps 20] [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import Future
from typing import Any

from engine.backends.remote.client import RemoteTrainingClient
from engine.runtime.ports import Sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serve(size: str, seq_len: int) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve-trainer", "--size", size, "--seq-len", str(seq_len)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("serving the trainer at "):
        proc.kill()
        raise SystemExit(f"serve-trainer did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def _batch(size: int, length: int, step: int) -> tuple[list[Sample], list[float]]:
    samples = [Sample([1, 5 + i % 7], [6 + (i + j + step) % 9 for j in range(length)], [-2.0] * length, [0] * length, float(i % 2))
               for i in range(size)]
    return samples, [1.0 if s.reward else -1.0 for s in samples]


def _loop(url: str, steps: int, batch: int, length: int, pipelined: bool) -> float:
    client = RemoteTrainingClient(url, depth=4 if pipelined else 1)
    began = time.perf_counter()
    pending: Future[Any] | None = None
    for step in range(steps):
        samples, advantages = _batch(batch, length, step)  # the next batch is built while the last step computes
        fb = client.forward_backward(samples, advantages)
        optim = client.optim_step()
        if pipelined:
            if pending is not None:
                pending.result()
            pending = optim
        else:
            fb.result()
            optim.result()
    if pending is not None:
        pending.result()
    elapsed = time.perf_counter() - began
    client.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each mode; the median is printed")
    parser.add_argument("--quick", action="store_true", help="one small setting, few steps")
    args = parser.parse_args()
    settings = [("tiny", 8, 32)] if args.quick else [("tiny", 8, 32), ("tiny", 64, 64), ("small", 32, 128)]
    steps = 5 if args.quick else args.steps
    print("| model | batch x tokens | unpipelined steps/s | pipelined steps/s | speed-up |")
    print("|---|---|---|---|---|")
    for size, batch, length in settings:
        proc, url = _serve(size, length + 16)
        try:
            _loop(url, 2, batch, length, True)  # warm-up
            plains, pipeds = [], []
            for _ in range(1 if args.quick else args.rounds):  # alternate, so that load from elsewhere hits both
                plains.append(_loop(url, steps, batch, length, False))
                pipeds.append(_loop(url, steps, batch, length, True))
            plain, piped = statistics.median(plains), statistics.median(pipeds)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        print(f"| {size} | {batch} x {length} | {plain:.1f} | {piped:.1f} | {piped / plain:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
