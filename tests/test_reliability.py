"""The fault table of docs/reliability.md, at its quick setting: every fault class
tried is detected or harmless, nothing is lost, no command prints a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_fault_is_detected_or_harmless_and_nothing_is_lost():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fault_table.py"), "--quick"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    total = next(line for line in result.stdout.splitlines() if line.startswith("all "))
    tried, detected, harmless, lost, tracebacks = map(int, total.split()[1:])
    assert tried >= 60 and detected + harmless == tried and lost == 0 and tracebacks == 0, result.stdout
