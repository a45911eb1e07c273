"""benchmarks/step_spells.py: a run's decode steps update by update, in two modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.step_spells import spells, two_means, update_steps

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


def test_each_update_is_its_own_decode_seconds_over_its_own_steps(tmp_path):
    run = write_run(tmp_path / "a", [(10, 1.0), (4, 0.08), (0, 0.0), (5, 0.1)])
    assert update_steps(run, skip=1) == [pytest.approx(0.02), pytest.approx(0.02)]
    assert update_steps(run, skip=0)[0] == pytest.approx(0.1)


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
