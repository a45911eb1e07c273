"""benchmarks/host_trace.py: the host's speed traced beside a run, and surveyed core by core."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.host_trace import FIELDS, cores_arg, read_trace, row

ROOT = Path(__file__).resolve().parents[1]


def test_a_row_gives_the_watched_cores_busy_share_and_the_machines_steal():
    before = {"cpu": (1000, 600, 10), "cpu0": (500, 400, 5), "cpu1": (500, 200, 5)}
    after = {"cpu": (1200, 700, 30), "cpu0": (600, 450, 15), "cpu1": (600, 250, 15)}
    when, loop, busy, steal, _ = row([0, 1], before, after)
    assert abs(when - time.time()) < 5 and loop is not None and loop > 0
    assert busy == pytest.approx(0.5)  # each core 50 of its 100 ticks not idle
    assert steal == pytest.approx(0.1)  # 20 of the machine's 200 ticks stolen
    assert row([7], before, after)[2] is None  # a core the kernel does not list: no share


def test_a_trace_stopped_by_sigterm_is_whole_and_reads_back(tmp_path):
    out = tmp_path / "host_trace.csv"
    sampler = subprocess.Popen([sys.executable, "benchmarks/host_trace.py", "trace", "--every", "0.05", str(out)], cwd=ROOT)
    deadline = time.monotonic() + 20
    while (not out.is_file() or len(out.read_text().splitlines()) < 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    sampler.send_signal(signal.SIGTERM)
    assert sampler.wait(timeout=20) == 0
    rows = read_trace(out)
    assert len(rows) >= 3 and set(rows[0]) == set(FIELDS)
    assert all(r["loop_us"] is not None and r["loop_us"] > 0 for r in rows)
    assert [r["time"] for r in rows] == sorted(r["time"] or 0.0 for r in rows)
    with out.open("a") as f:
        f.write("1796000000.5,12.0")  # a row cut off by a sampler stopped mid-write
    assert len(read_trace(out)) == len(rows)
    assert read_trace(tmp_path / "none.csv") == []
    (tmp_path / "other.csv").write_text("when,what\n1,2\n")
    with pytest.raises(SystemExit, match="other.csv: not a host trace"):
        read_trace(tmp_path / "other.csv")


def test_bad_arguments_are_named():
    assert cores_arg("2,3") == [2, 3]
    for bad in ("two", ""):
        with pytest.raises(Exception, match="--cores"):
            cores_arg(bad)
    refused = subprocess.run([sys.executable, "benchmarks/host_trace.py", "trace", "--every", "0", "x.csv"], cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "--every 0" in refused.stderr
    refused = subprocess.run([sys.executable, "benchmarks/host_trace.py", "trace", "/no/such/folder/x.csv"], cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "its folder does not exist" in refused.stderr


def test_the_survey_times_every_core_in_every_round():
    shown = subprocess.run([sys.executable, "benchmarks/host_trace.py", "survey", "--rounds", "2"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    cores = sorted(os.sched_getaffinity(0))
    lines = [line for line in shown.stdout.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [int(line.split("|")[1]) for line in lines] == cores
    assert all(len(line.split("|")[5].split()) == 2 for line in lines)  # two rounds' timings each


def test_the_fidelity_study_runs_the_host_sampler_beside_a_run(tmp_path):
    from benchmarks.fidelity import host_sampler, spare_cores

    mine = os.sched_getaffinity(0)
    host, gpu = spare_cores()
    assert not (host | gpu) & mine and len(host) <= 1
    trace = tmp_path / "trace.csv"
    sampler = host_sampler(trace)
    assert sampler is not None
    deadline = time.monotonic() + 20
    while len(trace.read_text().splitlines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    sampler.terminate()
    sampler.wait(timeout=20)
    assert read_trace(trace) and trace.read_text().startswith(",".join(FIELDS) + "\n")


def test_step_spells_gives_each_mode_the_spare_cores_speed(tmp_path):
    """Slow updates where the spare core's loop took 60 us and fast ones at 30: the modes'
    host speeds are told apart and the correlation is +1."""
    from tests.test_step_spells import START as start
    from tests.test_step_spells import write_timed_run

    run = write_timed_run(tmp_path / "hosted", [(10, 0.1), (10, 0.12), (10, 0.19), (10, 0.12), (10, 0.19)])
    loops = {1: 30.0, 2: 60.0, 3: 30.0, 4: 60.0}
    rows = [",".join(FIELDS)] + [f"{start + k - 0.5},{us},{0.9 if us > 40 else 0.5},0," for k, us in loops.items()]
    (run / "host_trace.csv").write_text("\n".join(rows) + "\n")
    shown = subprocess.run([sys.executable, "benchmarks/step_spells.py", str(run)], cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "| hosted | 4 | 15.5 | 12.0 | 19.0 | 0.50 | 4 | - | - | 30.0 / 60.0 | 0.50 / 0.90 |" in shown.stdout
    assert "a spare core's loop time over it: +1.00 (4 updates)" in shown.stdout


def test_the_summary_splits_the_hosts_two_speeds_and_gives_each_window_its_share(tmp_path):
    """Two traces sampled together every second: the first slow (90 us against 30) for
    three samples in a row, the second moving with it (70 against 40).  Pooled, the
    split falls between 40 and 70: each trace has a slow share of 0.3 in one spell of
    3 s, and they correlate at +1; in windows of 3 s (the last, cut short, left out) the
    slow share goes 0, 2/3, 1/3 and the mean loop time 35, 65, 50 us."""
    header = ",".join(FIELDS)
    first = [30.0] * 4 + [90.0] * 3 + [30.0] * 3
    second = [40.0 + (v - 30.0) / 2 for v in first]
    for name, loops in (("a.csv", first), ("b.csv", second)):
        (tmp_path / name).write_text(header + "\n" + "".join(f"{1_800_000_000 + k},{v},0.5,0,\n" for k, v in enumerate(loops)))
    shown = subprocess.run([sys.executable, "benchmarks/host_trace.py", "summary", "--window", "3", str(tmp_path / "a.csv"),
                            str(tmp_path / "b.csv")], cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "20 samples in 2 traces: fast 35.0 us per 1,000 loop turns (14 samples), slow 80.0 us (6), split at 55.0 us" in shown.stdout
    assert "| a.csv | 10 | 30.0 | 90.0 | 0.30 | 3.00 | +1.00 |" in shown.stdout
    assert "| b.csv | 10 | 40.0 | 70.0 | 0.30 | 3.00 | +1.00 |" in shown.stdout
    assert "2 slow spells of 3.00 s on average" in shown.stdout
    assert "per 3 s window (3): slow share 0.00 0.67 0.33; mean loop time 35.0 to 65.0 us, the slowest window 1.86 times" in shown.stdout
    for bad, said in ((["--window", "0", str(tmp_path / "a.csv")], "--window 0"), ([str(tmp_path / "none.csv")], "no such trace")):
        refused = subprocess.run([sys.executable, "benchmarks/host_trace.py", "summary", *bad], cwd=ROOT, capture_output=True, text=True)
        assert refused.returncode != 0 and said in refused.stderr


def test_step_spells_says_so_when_the_spare_core_never_changed_speed(tmp_path):
    from tests.test_step_spells import START, write_timed_run

    run = write_timed_run(tmp_path / "steady", [(10, 0.1), (10, 0.12), (10, 0.19), (10, 0.12), (10, 0.19)])
    rows = [",".join(FIELDS)] + [f"{START + k - 0.5},30.0,0.5,0," for k in range(1, 5)]
    (run / "host_trace.csv").write_text("\n".join(rows) + "\n")
    shown = subprocess.run([sys.executable, "benchmarks/step_spells.py", str(run)], cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "a spare core's loop time over it: none (a spare core's loop time did not change) (4 updates)" in shown.stdout
