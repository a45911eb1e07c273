"""benchmarks/step_spells.py: a run's decode steps update by update, in two modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.host_trace import two_means
from benchmarks.step_spells import spells, timed_updates

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, per_update: list[tuple[int, float]]) -> Path:
    """A run whose metrics lines carry the engine's cumulative decode counters."""
    folder.mkdir(parents=True)
    steps, seconds, lines = 0, 0.0, []
    for d_steps, d_seconds in per_update:
        steps, seconds = steps + d_steps, seconds + d_seconds
        lines.append(json.dumps({"decode_steps": steps, "decode_s": seconds}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


#: When the timed runs' first metrics line was written (seconds since the epoch).
START = 1_800_000_000.0


def write_timed_run(folder: Path, per_update: list[tuple[int, float]]) -> Path:
    """:func:`write_run` with each metrics line written a second after the one before,
    from :data:`START`."""
    run = write_run(folder, per_update)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line | {"time": START + k}) + "\n" for k, line in enumerate(lines)))
    return run


def test_each_update_is_its_own_decode_seconds_over_its_own_steps(tmp_path):
    run = write_run(tmp_path / "a", [(10, 1.0), (4, 0.08), (0, 0.0), (5, 0.1)])
    assert [step for step, _ in timed_updates(run, skip=1)] == [pytest.approx(0.02), pytest.approx(0.02)]
    assert timed_updates(run, skip=0)[0][0] == pytest.approx(0.1)


def test_two_modes_are_split_between_them_and_spells_counted():
    values = [0.012, 0.013, 0.019, 0.018, 0.011, 0.020, 0.012]
    threshold = two_means(values)
    assert 0.013 < threshold < 0.018
    assert spells(values, threshold) == 5
    with pytest.raises(ValueError):
        two_means([0.01])


def test_the_table_gives_each_runs_slow_share(tmp_path):
    fast = write_run(tmp_path / "fast", [(10, 0.1)] + [(10, 0.12)] * 4)
    mixed = write_run(tmp_path / "mixed", [(10, 0.1)] + [(10, 0.12), (10, 0.19), (10, 0.19), (10, 0.12)])
    shown = subprocess.run([sys.executable, "benchmarks/step_spells.py", str(fast), str(mixed)], cwd=ROOT,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "| fast | 4 | 12.0 | 12.0 | nan | 0.00 | 1 |" in shown.stdout
    assert "| mixed | 4 | 15.5 | 12.0 | 19.0 | 0.50 | 3 |" in shown.stdout
    refused = subprocess.run([sys.executable, "benchmarks/step_spells.py", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "no metrics.jsonl" in refused.stderr


def test_each_mode_gets_the_gpu_clock_sampled_over_its_updates(tmp_path):
    """Updates a second apart, slow ones where the trace has the SM clock at 1200 MHz and
    fast ones at 1980: the modes' clocks are told apart and the correlation is -1; a
    sample outside every update counts for none."""
    from datetime import datetime

    run = write_timed_run(tmp_path / "traced", [(10, 0.1), (10, 0.12), (10, 0.19), (10, 0.12), (10, 0.19)])
    start = START
    stamp = lambda t: datetime.fromtimestamp(t).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]  # noqa: E731  (nvidia-smi's, local)
    clocks = {1: 1980, 2: 1200, 3: 1980, 4: 1200}  # the update ending at start + k
    rows = [f"{stamp(start + k - 0.5)}, {mhz}, 2619, {40 if mhz > 1500 else 20}, 300.1, 50, P0" for k, mhz in clocks.items()]
    rows.append(f"{stamp(start + 30)}, 100, 2619, 0, 60.0, 40, P8")
    rows.append("a line the driver garbled")
    (run / "gpu_trace.csv").write_text("\n".join(rows) + "\n")
    shown = subprocess.run([sys.executable, "benchmarks/step_spells.py", str(run)], cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "| traced | 4 | 15.5 | 12.0 | 19.0 | 0.50 | 4 | 1980 / 1200 | 40 / 20 |" in shown.stdout
    assert "SM clock over it: -1.00 (4 updates)" in shown.stdout


def test_the_fidelity_study_samples_the_gpu_with_nvidia_smi_where_it_has_one(tmp_path, monkeypatch):
    """A stand-in ``nvidia-smi`` on the path echoes its arguments into the trace; on a
    CPU, or with no ``nvidia-smi``, nothing is started."""
    import os
    import time

    from benchmarks.fidelity import GPU_FIELDS, gpu_sampler

    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"$@\"\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert gpu_sampler("cpu", tmp_path / "none.csv") is None and not (tmp_path / "none.csv").exists()
    trace = tmp_path / "trace.csv"
    sampler = gpu_sampler("cuda", trace)
    assert sampler is not None
    deadline = time.monotonic() + 10
    while not trace.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    sampler.terminate()
    sampler.wait()
    assert f"--query-gpu={','.join(GPU_FIELDS)}" in trace.read_text() and "-lms 500" in trace.read_text()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu_sampler("cuda", tmp_path / "other.csv") is None
