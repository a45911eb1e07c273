"""The fault classes the event log is tried against, and what became of each try.

    python benchmarks/fault_table.py [--quick] [--seed N]

Each class damages a log, or the way one is written, in many ways and then asks the
product about it, as a user would (through the ``rollout-ledger`` command line, or the
``Ledger`` for what only a program can do).  A try is counted as

- **detected** when the product refused it: exit status 2 with one line naming the
  input, or an error raised before the state or the log moved;
- **harmless** when the damage changed nothing the log records (a byte of free space
  in the database file): the log reads back exactly as before;
- **lost** when the product accepted the damage and something changed: a replay that
  differs from the original without a word, an event missing after a kill;
- **traceback** when a command printed a Python traceback (counted on top).

Inputs are hashed before and after every command: any change is counted as lost.
Target: every fault detected or harmless, nothing lost, no traceback.
``docs/reliability.md`` shows the table this prints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.core.config import Config  # noqa: E402
from engine.core.events import Enqueued, Segment  # noqa: E402
from engine.ledger import Ledger  # noqa: E402

ENV = {**os.environ, "ROLLOUT_LEDGER_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True, env=ENV)


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


class Tally:
    """Outcomes by fault class."""

    def __init__(self) -> None:
        self.rows: dict[str, Counter[str]] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, fault: str, outcome: str, note: str = "", traceback: bool = False) -> None:
        row = self.rows.setdefault(fault, Counter())
        row["tried"] += 1
        row[outcome] += 1
        if traceback:
            row["traceback"] += 1
        if (outcome == "lost" or traceback) and note:
            self.examples.setdefault(fault, []).append(note)

    def print(self) -> None:
        head = f"{'fault class':<44}{'tried':>7}{'detected':>10}{'harmless':>10}{'lost':>6}{'traceback':>11}"
        print(head)
        print("-" * len(head))
        total: Counter[str] = Counter()
        for fault, row in self.rows.items():
            total.update(row)
            print(f"{fault:<44}{row['tried']:>7}{row['detected']:>10}{row['harmless']:>10}{row['lost']:>6}{row['traceback']:>11}")
        print("-" * len(head))
        print(f"{'all':<44}{total['tried']:>7}{total['detected']:>10}{total['harmless']:>10}{total['lost']:>6}{total['traceback']:>11}")
        for fault, notes in self.examples.items():
            for note in notes[:3]:
                print(f"  {fault}: {note}")


def judged(result: subprocess.CompletedProcess[str], reference: str | None, inputs: dict[Path, str | None]) -> tuple[str, bool, str]:
    """The outcome of a command run on a damaged input (``reference``: the clean log's
    replay output; ``None`` when the input is no log at all)."""
    traceback = "Traceback" in result.stderr
    changed = [str(p) for p, h in inputs.items() if digest(p) != h]
    note = f"exit {result.returncode}: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
    if changed:
        return "lost", traceback, f"changed {changed}"
    if result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1:
        return "detected", traceback, note
    if result.returncode == 0 and reference is not None and result.stdout == reference:
        return "harmless", traceback, note
    return "lost", traceback, note


# -- a clean log to damage -------------------------------------------------------------


def clean_log(directory: Path) -> Path:
    path = directory / "clean.db"
    result = cli("simulate", "--compare", "none", "--set", "run.rollouts=300", "--no-progress", "--log", path)
    if result.returncode != 0:
        raise SystemExit(f"could not simulate the clean log: {result.stderr}")
    return path


def torn_tails(tally: Tally, clean: Path, work: Path, tries: int) -> None:
    """The file cut short anywhere (a crash of the disk or a copy), SQLite and JSON Lines."""
    reference = cli("replay", "--format", "json", clean).stdout
    size = clean.stat().st_size
    jsonl = work / "clean.jsonl"
    cli("export", clean, "--jsonl", jsonl)
    lines = jsonl.read_bytes()
    for k in range(tries):
        for source, kind, length in ((clean, "sqlite", size), (jsonl, "jsonl", len(lines))):
            cut = work / f"torn-{k}.{'jsonl' if kind == 'jsonl' else 'db'}"
            keep = (length * k) // tries + (0 if k else 0)
            cut.write_bytes(source.read_bytes()[:keep])
            expect = reference if kind == "sqlite" else cli("replay", "--format", "json", jsonl).stdout
            before = {cut: digest(cut)}
            outcome, traceback, note = judged(cli("replay", "--format", "json", cut), expect, before)
            tally.add(f"torn tail ({kind})", outcome, note, traceback)
            cut.unlink()


def flipped_bytes(tally: Tally, clean: Path, work: Path, tries: int, rng: random.Random) -> None:
    """One byte of the database file flipped (bit rot, a bad copy), and one byte of one
    event's stored value changed through SQLite itself (a checksum's job)."""
    reference = cli("replay", "--format", "json", clean).stdout
    data = clean.read_bytes()
    for k in range(tries):
        damaged = work / f"flip-{k}.db"
        at = rng.randrange(len(data))
        damaged.write_bytes(data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :])
        outcome, traceback, note = judged(cli("replay", "--format", "json", damaged), reference, {damaged: digest(damaged)})
        tally.add("flipped byte (file)", outcome, f"offset {at}: {note}", traceback)
        damaged.unlink()
    with sqlite3.connect(clean) as db:
        rows = db.execute("SELECT seq, type, rollout, version, tokens, t, data FROM events").fetchall()
    columns = ("rollout", "version", "tokens", "t", "data")
    for k in range(tries):
        seq, kind, *values = rows[rng.randrange(len(rows))]
        choices = [(c, v) for c, v in zip(columns, values) if v is not None]
        column, value = choices[rng.randrange(len(choices))]
        if isinstance(value, str) and value:
            i = rng.randrange(len(value))
            changed: object = value[:i] + chr(ord(value[i]) ^ 1) + value[i + 1 :]
        elif isinstance(value, int):
            changed = value ^ (1 << rng.randrange(8))
        else:
            changed = float(value) + 1.0
        damaged = work / f"row-{k}.db"
        shutil.copy(clean, damaged)
        try:
            with sqlite3.connect(damaged) as db:
                db.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (changed, seq))
        except sqlite3.IntegrityError:  # the changed id is another enqueued one: the index refuses it
            tally.add("changed value in one event row", "detected", f"event {seq} {column}: refused by the unique index")
            damaged.unlink()
            continue
        finally:
            db.close()
        outcome, traceback, note = judged(cli("replay", "--format", "json", damaged), reference, {damaged: digest(damaged)})
        if outcome == "harmless":  # the replay's counters may not show it; the export shows every field
            same = cli("export", damaged, "--jsonl", work / "a.jsonl").returncode == 0 and cli("export", clean, "--jsonl", work / "b.jsonl").returncode == 0
            outcome = "lost" if same and (work / "a.jsonl").read_bytes() != (work / "b.jsonl").read_bytes() else outcome
        tally.add("changed value in one event row", outcome, f"event {seq} {column}: {note}", traceback)
        damaged.unlink()


def bad_files(tally: Tally, clean: Path, work: Path) -> None:
    """Files that are not our logs, given to every command that reads one."""
    foreign = work / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    db.close()
    newer = work / "newer.db"
    shutil.copy(clean, newer)
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema'")
    db.close()
    files = {
        "empty file": work / "empty.db",
        "random bytes": work / "random.db",
        "someone else's SQLite database": foreign,
        "a newer schema": newer,
        "non-UTF-8 JSON Lines": work / "latin.jsonl",
        "JSON Lines of non-events": work / "other.jsonl",
        "a directory": work / "folder.db",
    }
    files["empty file"].write_bytes(b"")
    files["random bytes"].write_bytes(random.Random(7).randbytes(8192))
    files["non-UTF-8 JSON Lines"].write_bytes(b'{"schema": 3}\n{"type": "enqueued", "rollout": "caf\xe9"}\n')
    files["JSON Lines of non-events"].write_text('{"hello": 1}\n[1, 2]\n')
    files["a directory"].mkdir()
    commands: list[Callable[[Path], list[str | Path]]] = [
        lambda p: ["replay", p],
        lambda p: ["inspect", p, "p0"],
        lambda p: ["export", p, "--jsonl", work / "out.jsonl"],
        lambda p: ["import", p, work / "imported.db"],
        lambda p: ["verify", p],
    ]
    for name, path in files.items():
        for command in commands:
            args = command(path)
            before = {path: digest(path)}
            result = cli(*args)
            outcome, traceback, note = judged(result, None, before)
            tally.add("not a log (7 kinds x 5 commands)", outcome, f"{name}, {args[0]}: {note}", traceback)
            for out in (work / "out.jsonl", work / "imported.db"):
                if out.exists():
                    out.unlink()


def outputs(tally: Tally, clean: Path, work: Path) -> None:
    """Outputs that would destroy an input or cannot be written."""
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        ("export onto its own log", ["export", clean, "--jsonl", clean]),
        ("export into a missing folder", ["export", clean, "--jsonl", work / "missing" / "x.jsonl"]),
        ("export into a read-only folder", ["export", clean, "--jsonl", locked / "x.jsonl"]),
        ("export of a missing log over a file", ["export", work / "missing.db", "--jsonl", work / "keep.jsonl"]),
        ("import onto an existing log", ["import", work / "keep.jsonl", clean]),
    ]
    (work / "keep.jsonl").write_text('{"schema": 3}\n')
    for name, args in cases:
        watched = {p: digest(p) for p in (clean, work / "keep.jsonl")}
        outcome, traceback, note = judged(cli(*args), None, watched)
        if os.geteuid() == 0 and "read-only" in name and outcome == "lost":
            outcome = "harmless"  # root writes through permissions; nothing of ours was harmed
        tally.add("outputs that are inputs or unwritable", outcome, f"{name}: {note}", traceback)
    locked.chmod(0o700)


# -- writers -------------------------------------------------------------------------------

_WRITER = """
import sys, time
from engine.core.config import Config
from engine.ledger import Ledger
path, hold = sys.argv[1], float(sys.argv[2])
ledger = Ledger(Config(max_staleness=2, batch_size=4, max_concurrent=8), path=sys.argv[1], flush_every=8)
print("open", flush=True)
n = 0
while True:
    started = [e.rollout for e in ledger.admit(*(f"p{n}-{i}" for i in range(4))) if e.type == "submitted"]
    for rollout in started:
        ledger.complete(rollout, tokens=5)
    ledger.prepare_batch(4)
    ledger.begin_update()
    ledger.finish_update()
    n += 1
    ledger.flush()
    print(ledger._log.last_seq, flush=True)
    if hold:
        time.sleep(hold)
"""


def kills(tally: Tally, work: Path, tries: int, rng: random.Random) -> None:
    """A writer killed (SIGKILL) at a random moment, then its log resumed: every event
    it reported committed must be there, and the log must verify."""
    for k in range(tries):
        path = work / f"killed-{k}.db"
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "0"], stdout=subprocess.PIPE, text=True, env=ENV)
        assert child.stdout is not None
        child.stdout.readline()
        committed = 0
        deadline = time.monotonic() + rng.uniform(0.01, 0.3)
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if line.strip().isdigit():
                committed = int(line)
        child.send_signal(signal.SIGKILL)
        child.wait()
        check = cli("verify", path)
        try:
            ledger = Ledger.resume(path)
            found = ledger.state.events
            ledger.close()
        except Exception as err:  # noqa: BLE001 - a resume that fails is what is counted
            tally.add("writer killed (SIGKILL), then resumed", "lost", f"resume failed: {err!r}")
            continue
        ok = check.returncode == 0 and found >= committed
        tally.add("writer killed (SIGKILL), then resumed", "harmless" if ok else "lost", f"{committed} committed, {found} after resume; verify {check.returncode}")


def writers(tally: Tally, work: Path, tries: int) -> None:
    """A second writer on a log that one holds, while it lives and after it died."""
    for k in range(tries):
        path = work / f"shared-{k}.db"
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "0.05"], stdout=subprocess.PIPE, text=True, env=ENV)
        assert child.stdout is not None
        child.stdout.readline()
        child.stdout.readline()
        try:
            second = Ledger(path=path)
        except Exception as err:  # noqa: BLE001
            refused = "lock" in str(err).lower() or str(child.pid) in str(err)
            tally.add("second writer while the first lives", "detected" if refused else "lost", repr(err))
        else:
            second.close()
            tally.add("second writer while the first lives", "lost", "a second Ledger opened the log")
        child.send_signal(signal.SIGKILL)
        child.wait()
        try:
            Ledger(path=path).close()
            tally.add("writer after the holder died", "harmless")
        except Exception as err:  # noqa: BLE001
            tally.add("writer after the holder died", "lost", f"a dead holder's lock was not taken over: {err!r}")


def bad_values(tally: Tally, work: Path) -> None:
    """Values the log cannot store, appended through the Ledger: refused before the
    state or the log moves, and the ledger goes on."""
    cases = {
        "tokens 10**30 in a segment": lambda: Segment("a0", 0, 10**30),
        "lone surrogate in an id": lambda: Enqueued("a\udc80"),
        "NaN time": lambda: Enqueued("a1", t=float("nan")),
        "infinite time": lambda: Enqueued("a2", t=float("inf")),
        "id of 2**70 as text": lambda: Enqueued(str(2**70)),  # storable: must be accepted
    }
    for number, (name, make) in enumerate(cases.items()):
        path = work / f"values-{number}.db"
        storable = name.startswith("id of")
        ledger = Ledger(Config(max_staleness=2, batch_size=4, max_concurrent=8), path=path, flush_every=1)
        ledger.admit("a0")  # a running rollout, for the segment
        before = ledger.state
        try:
            ledger.append(make())
            ledger.flush()
            refused: Exception | None = None
        except Exception as err:  # noqa: BLE001 - what is refused, and how, is what is counted
            refused = err
        try:  # the ledger goes on, and its log replays to its state
            unchanged = ledger.state == before
            ledger.append(Enqueued("after"))
            state = ledger.state
            ledger.close()
            with Ledger(path=path) as again:
                replayed = again.state == state
        except Exception as err:  # noqa: BLE001
            tally.add("bad values appended to a ledger", "lost", f"{name}: the ledger broke after it: {err!r}")
            continue
        if refused is None:
            tally.add("bad values appended to a ledger", "harmless" if storable and replayed else "lost", f"{name}: accepted")
        else:
            ok = unchanged and replayed and not storable
            tally.add("bad values appended to a ledger", "detected" if ok else "lost", f"{name}: {refused!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few tries per class (the tests' setting)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tries = 4 if args.quick else 30
    tally = Tally()
    with tempfile.TemporaryDirectory() as name:
        work = Path(name)
        clean = clean_log(work)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("torn tails", lambda: torn_tails(tally, clean, work, tries)),
            ("flipped bytes", lambda: flipped_bytes(tally, clean, work, tries, rng)),
            ("bad files", lambda: bad_files(tally, clean, work)),
            ("outputs", lambda: outputs(tally, clean, work)),
            ("kills", lambda: kills(tally, work, max(3, tries // 3), rng)),
            ("writers", lambda: writers(tally, work, max(2, tries // 10))),
            ("values", lambda: bad_values(tally, work)),
        ]
        for label, step in steps:
            print(f"... {label}", file=sys.stderr, flush=True)
            step()
    tally.print()
    if any(row["lost"] or row["traceback"] for row in tally.rows.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
