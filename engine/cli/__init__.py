"""The ``rollout-ledger`` command line: the parser, and what a command's failure prints.

Each command lives in the module that owns its feature; that module has a
``register(subparsers)`` function that adds its parser and sets ``run`` to a
function of the parsed arguments returning the exit status, and ``inputs`` to the
names of the arguments that are files or names the command reads.  A command line
that names a command imports only the module that owns it (``replay`` of a large
log then spends nothing on the simulator's or the workflows' imports); ``--help``
and anything else builds the whole parser.

Exit status: 0 when the command did its work, 1 when a run it started failed
(a stage halted a workflow, a simulation stalled), 2 on bad input.  Bad input
(a bad argument, a file that is not what it should be, an output that cannot be
written) is reported as one line, ``rollout-ledger: <input>: <what is wrong>``,
never as a traceback: the parser's errors are one line (:class:`Parser`), and
:func:`main` turns the errors that describe an input (:data:`BAD_INPUT`) into
that line.  Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from engine.log import LogError
from engine.log.files import OutputError

#: Modules that contribute commands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "engine.cli.ledger",
    "engine.cli.verify",
    "sim.cli",
    "sim.calibrate_cli",
    "engine.cli.workflow",
    "engine.cli.train",
    "engine.cli.models",
    "engine.cli.remote",
    "engine.cli.report",
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
    "calibrate": "sim.calibrate_cli",
    "run": "engine.cli.workflow",
    "describe": "engine.cli.workflow",
    "train": "engine.cli.train",
    "profile-step": "engine.cli.train",
    "init-model": "engine.cli.models",
    "import-model": "engine.cli.models",
    "serve-trainer": "engine.cli.remote",
    "report": "engine.cli.report",
}

#: Errors that describe a command's input rather than a fault of the program: a log
#: that cannot be read (LogError), an output that cannot be written (OutputError), a
#: value the config classes or a reader refuse (ValueError, which covers
#: UnicodeDecodeError and the config errors), and an operating-system error on a
#: named path (an OSError without a file name is not caught).
BAD_INPUT = (LogError, OutputError, ValueError, OSError)


class Parser(argparse.ArgumentParser):
    """An argument parser whose error is one line naming the argument (argparse's
    own message), then exit status 2; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"rollout-ledger: {message} (see {self.prog} --help)\n")


def fail(message: str, status: int = 2) -> int:
    """Print ``rollout-ledger: <message>`` on stderr; returns ``status`` (2: bad input)."""
    print(f"rollout-ledger: {message}", file=sys.stderr)
    return status


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``command`` (one of :data:`OWNER`) only
    of the commands its module owns."""
    parser = Parser(
        prog="rollout-ledger",
        description="Event-sourced rollout ledger, simulator and trainer for asynchronous RL.",
        epilog="Exit status: 0 done, 1 a run failed, 2 bad input (one line on stderr names it).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES if command is None else (OWNER[command],):
        importlib.import_module(name).register(subparsers)
    return parser


def _inputs(args: argparse.Namespace) -> list[str]:
    """The values of the arguments a command declared as its inputs, in order."""
    values = (getattr(args, name, None) for name in getattr(args, "inputs", ()))
    return [str(value) for value in values if value is not None]


def describe_error(error: BaseException, args: argparse.Namespace) -> str:
    """The one line for a :data:`BAD_INPUT` error: its message, led by the input it is
    about when the message does not name one already."""
    inputs = _inputs(args)
    if isinstance(error, UnicodeDecodeError):
        what = f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start})"
        return f"{inputs[0]}: {what}" if inputs else what
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    message = str(error) or type(error).__name__
    if inputs and not any(name in message for name in inputs):
        return f"{inputs[0]}: {message}"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns (and, as a console script, exits with) its status, the
    parser's too (2 for a bad argument, 0 after ``--help``) rather than raising
    :class:`SystemExit`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in OWNER else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 2
    args.command_line = argv  # as given (a command may start itself again in other processes)
    try:
        return int(args.run(args) or 0)
    except BAD_INPUT as error:
        if isinstance(error, OSError) and error.filename is None:
            raise  # not about a path the command was given: a fault, with its traceback
        return fail(describe_error(error, args))


if __name__ == "__main__":
    sys.exit(main())
