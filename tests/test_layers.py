"""The layers users feel: commands that need no model never import torch, and the
core imports nothing but the standard library and ``immutables``.

Each check runs in a fresh interpreter (a subprocess), so modules imported by other
tests cannot hide an import; the import-linter contracts in ``.importlinter`` check
the same layers statically (``lint-imports``, run by ``.ci/run``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.core.config import Config
from engine.core.events import Enqueued, Submitted
from engine.ledger import Ledger

#: Modules a command of the ledger or the simulator must not load.
HEAVY = ("torch", "transformers", "matplotlib", "hypothesis")

SMALL_SIM = ["--no-progress", "--set", "run.rollouts=32", "--set", "ledger.batch_size=8", "--set", "generation.slots=16"]


def _loaded_by(argv: list[str], cwd: Path) -> tuple[int, list[str]]:
    """Run ``rollout-ledger ARGV`` in a fresh interpreter; its exit status and the heavy modules it loaded."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from engine.cli import main
        try:
            status = main({argv!r})
        except SystemExit as exit:
            status = exit.code
        heavy = sorted(name for name in {HEAVY!r} if name in sys.modules)
        print(json.dumps([status, heavy]), file=sys.stderr)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300)
    status, heavy = json.loads(done.stderr.strip().splitlines()[-1])
    return int(status or 0), heavy


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    with Ledger(Config(4, 2), path=root / "run.sqlite") as ledger:
        ledger.append(Enqueued("a"), Submitted("a", 0))
    return root


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["replay", "--format", "json", "run.sqlite"],
        ["inspect", "run.sqlite", "a"],
        ["export", "run.sqlite", "--jsonl", "out.jsonl"],
        ["import", "out.jsonl", "imported.sqlite"],
        ["verify", "run.sqlite", "--salvage", "salvaged.sqlite"],
        ["simulate", *SMALL_SIM, "--compare", "0,2"],
        ["sweep", "default", *SMALL_SIM, "--grid", "ledger.max_staleness=0,1", "--workers", "1", "--out", "grid"],
    ],
    ids=lambda argv: argv[0],
)
def test_commands_without_a_model_never_import_torch(argv: list[str], logs: Path) -> None:
    status, heavy = _loaded_by(argv, logs)
    assert status == 0
    allowed = {"matplotlib"} if argv[0] == "sweep" else set()  # sweep draws its PNG
    assert set(heavy) <= allowed, f"`rollout-ledger {' '.join(argv)}` imported {heavy}"


def test_the_core_imports_only_the_standard_library_and_immutables() -> None:
    script = textwrap.dedent(
        """
        import sys
        before = set(sys.modules)
        import engine.core.config, engine.core.events, engine.core.reducer, engine.core.policies, engine.core.protocol
        new = {name.split(".")[0] for name in set(sys.modules) - before}
        print(" ".join(sorted(new - set(sys.stdlib_module_names) - {"engine", "immutables"})))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == []


def test_every_command_has_one_owner_that_registers_it() -> None:
    import argparse

    from engine.cli import COMMAND_MODULES, OWNER, build_parser

    full = build_parser()
    (subparsers,) = [action for action in full._actions if isinstance(action, argparse._SubParsersAction)]
    assert set(subparsers.choices) == set(OWNER)
    assert set(OWNER.values()) == set(COMMAND_MODULES)
    for command in OWNER:
        (only,) = [a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction)]
        assert command in only.choices
