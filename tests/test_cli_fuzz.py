"""Random command lines against ``engine.cli.main``: whatever the arguments and the
files they name, a command exits 0, 1 or 2 (2 for bad input), prints no traceback and
leaves every input file byte for byte as it was.

The argument lists are drawn from the parser itself: every command, its positionals
and options with their choices, as ``build_parser()`` declares them.  Values are
whole numbers (0, negative, huge), floats (nan, inf), text, ``key=value`` pairs over
the scenario's and the workflows' own keys, and paths: to files of random content
(empty, random bytes, non-UTF-8 text, a SQLite log whole or cut short, JSON Lines
with bad events, TOML garbage, Python garbage), to a folder, to nowhere.

What is kept short, and why (a random run must not train a model or simulate for
minutes):

- ``train`` always gets ``--run-dir`` naming an existing file, which it refuses
  before loading torch; its options are still drawn, so the parser's checks are
  fuzzed.
- ``run`` always gets ``--set num_epochs=-1``, which every built-in workflow
  refuses (a bad value or an unknown key) before its run starts; a workflow named by
  module is one of ours that does not exist, never an arbitrary importable module.
- ``simulate`` and ``sweep`` end with ``--set`` overrides that keep the simulated
  cluster tiny (16 rollouts, short fixed lengths) and ``sweep`` with ``--workers 1``;
  every other scenario key is drawn.

Outputs are allowed to change (the file ``export --jsonl`` names, the log
``run --resume`` appends to, the files under ``sweep --out``); nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.cli import build_parser, main
from sim.config import field_docs
from tests.test_ledger_cli import DESIGN_LOG

#: Commands drawn, all of them.
COMMANDS = ("replay", "inspect", "export", "import", "simulate", "sweep", "run", "describe", "train")

#: Seconds one command may take before the example fails as too slow.
EXAMPLE_LIMIT_S = 30

#: Appended to ``simulate`` and ``sweep``: a cluster that simulates in milliseconds.
TINY = ["--set", "run.rollouts=16", "--set", "workload.prompt_len={kind='fixed', value=4}",
        "--set", "workload.response_len={kind='fixed', value=8}", "--no-progress"]

#: ``(command, option or positional dest)`` whose path is written, not read.
OUTPUTS = {("export", "jsonl"), ("import", "log"), ("simulate", "log"), ("sweep", "out"), ("run", "log"), ("train", "run_dir")}


def _log_bytes() -> bytes:
    """A small SQLite log, made once by ``import``."""
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.jsonl", Path(folder) / "log.db"
        source.write_text(DESIGN_LOG)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["import", str(source), str(target)]) == 0
        return target.read_bytes()


LOG = _log_bytes()


def _foreign_bytes() -> bytes:
    """Another program's SQLite database."""
    import sqlite3

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "other.db"
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('not a log')")
        db.commit()
        db.close()
        return path.read_bytes()


FOREIGN = _foreign_bytes()

_EVENT_TYPES = ["run_started", "enqueued", "submitted", "segment", "accepted", "rejected", "consumed", "version",
                "paused", "unpaused", "checkpoint", "stage", "interrupted", "resumed", "filtered", "bogus"]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_events = st.fixed_dictionaries(
    {"type": st.sampled_from(_EVENT_TYPES)},
    optional={"rollout": st.sampled_from(["r1", "r2", "x"]), "version": st.integers(-3, 3), "tokens": st.integers(-5, 2**64),
              "rollouts": st.lists(st.sampled_from(["r1", "r2"]), max_size=3), "config": _json_values, "path": st.text(max_size=5)},
)


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    """The bytes of one input file."""
    import json

    kind = draw(st.sampled_from(["empty", "bytes", "latin1", "log", "cut log", "jsonl", "bad jsonl", "toml", "python", "foreign"]))
    if kind == "empty":
        return b""
    if kind == "foreign":
        return FOREIGN
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "latin1":
        return "caf\xe9 = \xff\n".encode("latin-1")
    if kind == "log":
        return LOG
    if kind == "cut log":
        return LOG[: draw(st.integers(1, len(LOG) - 1))]
    if kind == "jsonl":
        lines = DESIGN_LOG.splitlines(keepends=True)
        return "".join(lines[: draw(st.integers(0, len(lines)))]).encode()
    if kind == "bad jsonl":
        lines = DESIGN_LOG.splitlines(keepends=True)[:2] + [json.dumps(e) + "\n" for e in draw(st.lists(_events, max_size=4))]
        return "".join(lines).encode()
    if kind == "toml":
        key = draw(st.sampled_from([name for name, _, _ in field_docs()] + ["run.nonsense", "nope"]))
        section, _, name = key.partition(".")
        value = draw(st.sampled_from(["0", "-1", "1e400", "nan", '"x"', "[1]", "{kind='fixed', value=0}", "true", "= ="]))
        return f"[{section}]\n{name or 'x'} = {value}\n".encode()
    return draw(st.sampled_from([b"def (:\n", b"raise ValueError('boom')\n", b"WORKFLOW = 3\n", b"import sys\nsys.exit(3)\n"]))


SUFFIXES = ["", ".jsonl", ".db", ".toml", ".py", ".csv", ".pt", ".json"]


@st.composite
def files(draw: st.DrawFn) -> dict[str, bytes]:
    """Input files by name (names unique, suffixes drawn)."""
    count = draw(st.integers(1, 3))
    return {f"in{i}{draw(st.sampled_from(SUFFIXES))}": draw(contents()) for i in range(count)}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBPARSERS = _subparsers()
WORKFLOW_KEYS = ["num_epochs", "batch_size", "lr", "seed", "steps", "max_concurrent", "eval_size", "sft.num_epochs", "rl", "task"]


def values(paths: list[str]) -> st.SearchStrategy[str]:
    """An option's value: numbers, text, key=value pairs and paths."""
    numbers = st.integers(-(2**70), 2**70) | st.sampled_from([0, -1, 1, 2, 10**30])
    floats = st.sampled_from(["nan", "inf", "-inf", "1e308", "-0.0", "0.5"])
    pairs = st.builds(
        lambda key, value: f"{key}={value}",
        st.sampled_from([name for name, _, _ in field_docs()] + WORKFLOW_KEYS + ["", "x.y.z"]),
        st.sampled_from(["0", "-1", "1", "1,2", "1,1", "inf", "nan", "1e308", "99999999999999999999999", "true", '"s"', "{}",
                         "{kind='empirical', path='in0.csv'}", "{kind='empirical', path='in0.db'}", "\xe9"]),
    )
    return st.one_of(
        numbers.map(str), floats, st.text(max_size=12), pairs,
        st.sampled_from(paths + ["folder", "nowhere/out", "new.db", "new.jsonl", "in0.db:WORKFLOW", ".", "folder/"]),
    )


@st.composite
def command_lines(draw: st.DrawFn, paths: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """``(command, argv, outputs)``: argv drawn from the command's parser; ``outputs``
    maps each output dest to the path given for it."""
    command = draw(st.sampled_from(COMMANDS))
    parser = SUBPARSERS[command]
    argv = [command]
    given: dict[str, str] = {}
    for action in parser._actions:
        if action.option_strings:
            continue
        nargs_optional = action.nargs == "?"
        if nargs_optional and draw(st.booleans()):
            continue
        if command in ("run", "describe") and action.dest == "workflow":
            value = draw(st.sampled_from(["supervised", "preference", "reward_model", "reinforcement", "rlhf",
                                          "tests.no_such_workflow", "engine.no_such:WORKFLOW", *[p for p in paths if p.endswith(".py")], "x.py"]))
        elif command in ("simulate", "sweep"):
            value = draw(st.sampled_from(["default", "areal", *paths, "folder", "missing.toml"]))
        elif action.dest in ("log", "jsonl"):  # mostly one of the files, so their contents are what is fuzzed
            value = draw(st.sampled_from(paths)) if draw(st.integers(0, 3)) else draw(values(paths))
        else:
            value = draw(values(paths))
        if value.startswith("-"):
            value = "./" + value  # a positional, not an option
        argv.append(value)
        given[action.dest] = value
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    for action in draw(st.lists(st.sampled_from(options), max_size=5)) if options else ():
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
            continue
        if action.choices is not None and draw(st.booleans()):
            value = str(draw(st.sampled_from(list(action.choices))))
        else:
            value = draw(values(paths))
        argv.append(f"{flag}={value}")
        given[action.dest] = value
    if command in ("simulate", "sweep"):
        argv += TINY + (["--workers", "1", "--out", given.get("out", "sweep-out")] if command == "sweep" else [])
        if command == "sweep":
            given["out"] = argv[-1]
    elif command == "train":
        argv += ["--run-dir", paths[0]]
        given["run_dir"] = paths[0]
    elif command == "run":
        argv += ["--set", "num_epochs=-1"]
    if draw(st.integers(0, 24)) == 0:
        argv.append("--help")
    outputs = {dest: path for dest, path in given.items() if (command, dest) in OUTPUTS}
    return command, argv, outputs


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class TooSlow(Exception):
    """A command ran longer than EXAMPLE_LIMIT_S."""


@contextlib.contextmanager
def _limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TooSlow(f"a command ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, bytes], tuple[str, list[str], dict[str, str]]]:
    inputs = draw(files())
    return inputs, draw(command_lines(sorted(inputs)))


def check(inputs: dict[str, bytes], command: str, argv: list[str], outputs: dict[str, str]) -> int:
    """Run ``argv`` in a fresh folder holding ``inputs`` (and ``folder/inside.jsonl``);
    assert the exit status, stderr and the inputs as the module says; returns the status."""
    folder = Path(tempfile.mkdtemp(prefix="cli-fuzz-"))
    cwd = os.getcwd()
    try:
        for name, content in inputs.items():
            (folder / name).write_bytes(content)
        (folder / "folder").mkdir()
        (folder / "folder" / "inside.jsonl").write_text(DESIGN_LOG)
        before = _tree(folder)
        os.chdir(folder)
        out, err = io.StringIO(), io.StringIO()
        with _limit(EXAMPLE_LIMIT_S), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv[:])
            except SystemExit as exit:  # a command's own exit (none should): counted, not hidden
                status = exit.code if isinstance(exit.code, int) else 1
        after = _tree(folder)
    finally:
        os.chdir(cwd)
        shutil.rmtree(folder, ignore_errors=True)
    stderr = err.getvalue()
    assert status in (0, 1, 2), (argv, status, stderr[-2000:])
    assert "Traceback" not in stderr, (argv, stderr[-2000:])
    if status == 2:
        problem = [line for line in stderr.splitlines() if line.startswith("rollout-ledger: ")]
        assert problem, (argv, stderr[-2000:])
    written = {str(Path(p)) for p in outputs.values()}
    for name, content in before.items():
        if name in written or any(name.startswith(f"{w}/") for w in written):
            continue
        assert after.get(name) == content, (argv, name, "changed" if name in after else "removed", stderr[-1000:])
    return status


@settings(max_examples=150, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(cases())
def test_any_command_line_exits_0_1_or_2_without_a_traceback_and_leaves_its_inputs(case) -> None:
    inputs, (command, argv, outputs) = case
    event(f"{command} exit {check(inputs, command, argv, outputs)}")  # pytest --hypothesis-show-statistics shows the mix


@pytest.mark.parametrize("argv", [["replay", "in0.db"], ["inspect", "in0.db", "r1"], ["export", "in0.db", "--jsonl", "out.jsonl"]])
def test_reading_an_empty_file_as_a_log_leaves_it_empty(argv) -> None:
    assert check({"in0.db": b""}, argv[0], argv, {"jsonl": "out.jsonl"}) == 2
