"""benchmarks/engine_step.py on a CPU: one row per shape and slot count, every figure
the CPU can measure a positive number of milliseconds, the graph columns '-' (no CUDA),
and a bad shape refused with the input named."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/engine_step.py", "--device", "cpu", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_table_has_a_row_per_shape_and_slot_count_with_the_graph_columns_empty():
    done = _run("--shapes", "32:2:2:96,64:2:4:128", "--slots", "4,8", "--iterations", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = lines[1].split(" | ")
    rows = [dict(zip(header, line.split(" | "))) for line in lines[2:]]
    assert [(r["shape"], r["slots"]) for r in rows] == [("32:2:2:96", "4"), ("32:2:2:96", "8"), ("64:2:4:128", "4"), ("64:2:4:128", "8")]
    for row in rows:
        assert row["decode graph"] == row["step graph"] == row["refill 1 graph"] == "-"
        for key in ("decode eager", "step eager", "refill 1 eager", "refill 16 eager", "prefill 128"):
            assert float(row[key]) > 0, (key, row)
        assert float(row["train"]) > 0


def test_a_bad_shape_or_slot_count_is_refused_naming_it():
    done = _run("--shapes", "32:2:2:96,32:2:2")
    assert done.returncode == 2 and "'32:2:2'" in done.stderr and "d_model:layers:heads:d_ff" in done.stderr
    done = _run("--slots", "4,0")
    assert done.returncode == 2 and "'4,0'" in done.stderr
