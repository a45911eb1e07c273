"""How far the host moves the trainer's step: the same step, in rounds, under process settings.

Runs ``benchmarks/trainer_step.py`` as a fresh process again and again, alternating the
settings named by ``--configs`` in rounds (all settings, then all again), and prints
each run's median step per batch size beside what the operating system says about the
process: the cgroup's CPU throttling during the run (``nr_throttled`` and
``throttled_usec`` from ``cpu.stat``, where the cgroup exposes them), and the run's own
CPU time against its wall time. Then, per setting and batch size, the spread of the
runs (slowest over fastest, less one). A setting whose runs agree within a few percent
is one under which a fidelity study can hope to meet a 10% target.

Settings:

- ``default``: as a user runs it;
- ``threads1``: ``OMP_NUM_THREADS=1`` and ``MKL_NUM_THREADS=1`` (torch's intra-op pool
  of one thread, no spinning workers);
- ``pinned``: ``threads1`` and the process bound to ``--cores`` with ``taskset``.

On an H200::

    python3 benchmarks/host_spread.py --device cuda --rounds 5

Tiny on a CPU::

    python3 benchmarks/host_spread.py --device cpu --model-size tiny --groups 4,8 --iterations 8 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("default", "threads1", "pinned")
CPU_STAT = Path("/sys/fs/cgroup/cpu.stat")


def cpu_stat() -> dict[str, int]:
    """The cgroup's CPU counters, or nothing where the cgroup does not expose them."""
    try:
        lines = CPU_STAT.read_text().split("\n")
    except OSError:
        return {}
    return {key: int(value) for key, value in (line.split() for line in lines if line.strip())}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def command_for(config: str, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    command = [sys.executable, str(ROOT / "benchmarks" / "trainer_step.py"), "--device", args.device,
               "--model-size", args.model_size, "--groups", args.groups, "--iterations", str(args.iterations)]
    if config in ("threads1", "pinned"):
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if config == "pinned":
        command = ["taskset", "-c", args.cores, *command]
    return command, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model-size", default="small")
    parser.add_argument("--groups", default="8,32,64", help="groups of 4 per batch (trainer_step.py's --groups)")
    parser.add_argument("--iterations", type=int, default=60, help="steps per batch size (trainer_step.py's)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"a comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--cores", default="2,3", help="the cores `pinned` binds to (taskset -c)")
    args = parser.parse_args()
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown setting(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if "pinned" in configs and shutil.which("taskset") is None:
        parser.error("--configs pinned needs taskset (util-linux), which is not on PATH")
    rows = [int(g) * 4 for g in args.groups.split(",")]
    print(f"host spread, model {args.model_size}, device {args.device}, {os.cpu_count()} cores; cgroup cpu.stat "
          f"{'read' if cpu_stat() else 'not readable'}\n")
    print("| round | setting | " + " | ".join(f"{r} rows ms" for r in rows)
          + " | wall s | cpu s | throttled periods | throttled ms |")
    print("|---:|---|" + "---:|" * (len(rows) + 4), flush=True)
    measured: dict[str, list[list[float]]] = {c: [] for c in configs}
    for round_ in range(1, args.rounds + 1):
        for config in configs:
            command, env = command_for(config, args)
            before, cpu_before, began = cpu_stat(), children_cpu_s(), time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            wall, cpu = time.perf_counter() - began, children_cpu_s() - cpu_before
            after = cpu_stat()
            if done.returncode != 0:
                sys.exit(f"host_spread: {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            steps = [float(ms) for ms in re.findall(r"^\| \d+ \| ([\d.]+) \|$", done.stdout, re.MULTILINE)]
            if len(steps) != len(rows):
                sys.exit(f"host_spread: expected {len(rows)} rows from trainer_step.py, got:\n{done.stdout}")
            measured[config].append(steps)
            periods = after.get("nr_throttled", 0) - before.get("nr_throttled", 0) if after else None
            throttled = (after.get("throttled_usec", 0) - before.get("throttled_usec", 0)) / 1000 if after else None
            print(f"| {round_} | {config} | " + " | ".join(f"{s:.2f}" for s in steps)
                  + f" | {wall:.1f} | {cpu:.1f} | {'-' if periods is None else periods} | "
                  + f"{'-' if throttled is None else f'{throttled:.0f}'} |", flush=True)
    print("\nSpread over the rounds (slowest / fastest - 1), per setting and batch rows:\n")
    print("| setting | " + " | ".join(f"{r} rows" for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for config in configs:
        columns = list(zip(*measured[config]))
        print(f"| {config} | " + " | ".join(f"{(max(c) / min(c) - 1) * 100:.1f}%" for c in columns) + " |")


if __name__ == "__main__":
    main()
