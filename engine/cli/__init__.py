"""The ``rollout-ledger`` command line.

Each command lives in the module that owns its feature; that module has a
``register(subparsers)`` function that adds its parser and sets ``run`` to a
function of the parsed arguments returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: Modules that contribute commands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "engine.cli.ledger",
    "sim.cli",
    "engine.cli.workflow",
    "engine.cli.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rollout-ledger",
        description="Event-sourced rollout ledger, simulator and trainer for asynchronous RL.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns (and, as a console script, exits with) its status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
