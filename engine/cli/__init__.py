"""The ``rollout-ledger`` command line.

Each command lives in the module that owns its feature; that module has a
``register(subparsers)`` function that adds its parser and sets ``run`` to a
function of the parsed arguments returning the exit status.  A command line that
names a command imports only the module that owns it (``replay`` of a large log
then spends nothing on the simulator's or the workflows' imports); ``--help`` and
anything else builds the whole parser.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: Modules that contribute commands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "engine.cli.ledger",
    "engine.cli.verify",
    "sim.cli",
    "engine.cli.workflow",
    "engine.cli.train",
)


#: The module that owns each command (each module registers exactly these).
OWNER = {
    "replay": "engine.cli.ledger",
    "inspect": "engine.cli.ledger",
    "export": "engine.cli.ledger",
    "import": "engine.cli.ledger",
    "verify": "engine.cli.verify",
    "simulate": "sim.cli",
    "sweep": "sim.cli",
    "run": "engine.cli.workflow",
    "describe": "engine.cli.workflow",
    "train": "engine.cli.train",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``command`` (one of :data:`OWNER`) only
    of the commands its module owns."""
    parser = argparse.ArgumentParser(
        prog="rollout-ledger",
        description="Event-sourced rollout ledger, simulator and trainer for asynchronous RL.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES if command is None else (OWNER[command],):
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns (and, as a console script, exits with) its status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in OWNER else None)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
