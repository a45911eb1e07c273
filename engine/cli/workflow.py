"""Workflow commands: ``run WORKFLOW`` and ``describe WORKFLOW``.

WORKFLOW is a built-in name (see ``engine.workflows.BUILTIN``), ``module:attribute``,
or a Python file (``path.py`` or ``path.py:attribute``); without an attribute the
module's ``WORKFLOW`` (or its only workflow) is used.  A workflow file that cannot
be loaded, a ``--config`` that is not a JSON object, a config value the workflow's
check refuses and a ``--log`` that cannot be written are each refused, as one line,
before the run starts.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from engine.log import LogError
from engine.log.files import OutputError, check_directory, check_output
from engine.workflow import (
    ParallelConflict,
    ResumeError,
    StageFailed,
    WorkflowError,
    compile_workflow,
    describe,
    run,
    to_dict,
)
from engine.workflow.dsl import Workflow


def register(subparsers: argparse._SubParsersAction) -> None:
    runner = subparsers.add_parser("run", help="run a workflow (built-in or from a module)")
    runner.add_argument("workflow", help="built-in name, module:attribute or file.py[:attribute]")
    runner.add_argument("--config", help="JSON object, or a path to a JSON file, with the workflow's config")
    runner.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value (dotted keys reach into sections; VALUE is JSON or a string)")
    runner.add_argument("--log", type=Path, help="the run's SQLite log (stage and checkpoint events)")
    runner.add_argument("--resume", action="store_true", help="continue the run in --log after its last checkpoint")
    runner.add_argument("--run-id", help="id bound to every span (default: random, or the resumed run's)")
    runner.set_defaults(run=run_command, inputs=("workflow", "log", "config"))

    describer = subparsers.add_parser("describe", help="print a workflow's structure")
    describer.add_argument("workflow", help="built-in name, module:attribute or file.py[:attribute]")
    describer.add_argument("--json", action="store_true", help="print the compiled IR as JSON")
    describer.set_defaults(run=describe_command, inputs=("workflow",))


def _from_module(module: Any, attribute: str | None, spec: str) -> Workflow:
    if attribute is not None:
        if not hasattr(module, attribute):
            raise LookupError(f"{spec}: no attribute {attribute!r}")
        found = getattr(module, attribute)
    elif isinstance(getattr(module, "WORKFLOW", None), Workflow):
        found = module.WORKFLOW
    else:
        candidates = [v for v in vars(module).values() if isinstance(v, Workflow)]
        if len(candidates) != 1:
            raise LookupError(f"{spec}: found {len(candidates)} workflows; name one with {spec}:ATTRIBUTE or define WORKFLOW")
        found = candidates[0]
    if callable(found) and not isinstance(found, Workflow):
        found = found()
    if not isinstance(found, Workflow):
        raise LookupError(f"{spec}: {found!r} is not a workflow")
    return found


def load_workflow(spec: str) -> Workflow:
    """The workflow named by ``spec`` (built-in name, ``module:attr`` or ``file.py[:attr]``)."""
    from engine.workflows import BUILTIN

    if spec in BUILTIN:
        return BUILTIN[spec]()
    target, _, attribute = spec.partition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise LookupError(f"{path}: no such workflow file" + (" (it is a directory)" if path.is_dir() else ""))
        module_spec = importlib.util.spec_from_file_location(f"workflow_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[module_spec.name] = module  # type: ignore[union-attr]
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as err:  # the user's file: a syntax error, bytes that are not text, an error it raises
            sys.modules.pop(module_spec.name, None)  # type: ignore[union-attr]
            raise LookupError(f"{path}: cannot be loaded as a workflow file: {type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise LookupError(f"unknown workflow {spec!r}: not a built-in ({', '.join(sorted(BUILTIN))}) and no module {target!r} ({err})") from None
    return _from_module(module, attribute or None, spec)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(config: str | None, overrides: list[str]) -> dict[str, Any] | None:
    """The config from ``--config`` (JSON text or file) with ``--set KEY=VALUE`` applied."""
    values: dict[str, Any] | None = None
    if config is not None:
        path = Path(config)
        try:
            text = path.read_text(encoding="utf-8") if path.is_file() else config
        except UnicodeDecodeError as err:
            raise ValueError(f"{config}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config: {config!r} is neither a file nor valid JSON ({err})") from None
        if not isinstance(values, dict):
            raise ValueError(f"--config: expected a JSON object, got {type(values).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        values = values if values is not None else {}
        section = values
        *parents, leaf = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a section")
        section[leaf] = _parse_value(raw)
    return values


def _fail(message: str, status: int = 2) -> int:
    print(f"rollout-ledger: {message}", file=sys.stderr)
    return status


def _check_log(log: Path, resume: bool, *inputs: str | None) -> None:
    """Refuse, before the run, a ``--log`` that cannot serve: to resume, an existing
    file; else a new file in a folder that exists or can be made, not one of the
    inputs, with its checkpoint and artifact folders usable."""
    if resume:
        if not log.is_file():
            raise ValueError(f"{log}: no run's log to resume" + (" (it is a directory)" if log.is_dir() else ""))
        return
    if log.exists() or log.is_symlink():
        raise ValueError(f"{log} exists; pass --resume to continue it or choose a new --log")
    try:
        check_directory(log.parent if str(log.parent) else Path("."))
    except OutputError as err:
        raise OutputError(f"{log}: cannot be written: {err}") from None
    if log.parent.is_dir():
        check_output(log, *(name for name in inputs if name is not None and Path(name).exists()))
    for side in (f"{log}.checkpoints", f"{log}.artifacts"):
        check_directory(side)


def run_command(args: argparse.Namespace) -> int:
    """``rollout-ledger run``: 0 when the workflow finishes, 1 when a stage halts it, 2 on bad input."""
    try:
        wf = load_workflow(args.workflow)
        config = build_config(args.config, args.set)
        if args.resume and args.log is None:
            raise ValueError("--resume needs --log")
        if args.log is not None:
            _check_log(args.log, args.resume, args.workflow.partition(":")[0], args.config)
        result = run(wf, config, log=args.log, resume=args.resume, run_id=args.run_id)
    except (StageFailed, ParallelConflict) as err:
        return _fail(str(err), 1)
    except (WorkflowError, ResumeError, LookupError, ValueError, KeyError, OutputError, LogError) as err:  # LogError: a held log, or no log
        return _fail(str(err))
    latest: dict[str, Any] = {}
    for record in result.context.metrics:  # the latest value of every metric
        latest.update({k: v for k, v in record.items() if k != "path"})
    summary = {"workflow": wf.name, "run_id": result.run_id, "resumed_from": result.resumed_from,
               "metrics_records": len(result.context.metrics), "latest": latest}
    print(json.dumps(summary, default=repr))
    return 0


def describe_command(args: argparse.Namespace) -> int:
    """``rollout-ledger describe``: print the outline (or JSON IR) of a workflow."""
    try:
        wf = load_workflow(args.workflow)
        print(json.dumps(to_dict(compile_workflow(wf)), indent=2, default=repr) if args.json else describe(wf))
    except (WorkflowError, LookupError) as err:
        return _fail(str(err))
    return 0
