"""Starting a workflow run: :func:`run` / :func:`arun` validate the workflow,
resolve its config, open its log (or read the resume point from it), build the
run's :class:`~engine.workflow.services.Runtime` and hand the body to the
:class:`~engine.workflow.runner.Runner`; afterwards they release what a halted run
left open and close the log.  :class:`RunResult` is what a finished run returns.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import immutables

from engine.core.config import Config
from engine.ledger import Ledger
from engine.logconfig import get_logger
from engine.workflow.checkpoint import ResumePoint, read_resume_point
from engine.workflow.context import Context
from engine.workflow.dsl import Workflow
from engine.workflow.errors import ResumeError
from engine.workflow.ir import compile_workflow
from engine.workflow.runner import Runner
from engine.workflow.settings import check_config, configure
from engine.workflow.services import Runtime
from engine.workflow.telemetry import Span

#: Ledger settings of a workflow whose config has no ``ledger`` section.
DEFAULT_LEDGER_CONFIG = Config(max_concurrent=1, batch_size=1)


@dataclass(frozen=True)
class RunResult:
    """A finished run: its final context, id and where it resumed from (if it did)."""

    context: Context
    run_id: str
    resumed_from: str | None = None
    log: str | None = None

    @property
    def state(self) -> immutables.Map:
        return self.context.state


async def arun(
    wf: Workflow,
    config: Mapping[str, Any] | None = None,
    *,
    state: Mapping[str, Any] | None = None,
    log: str | Path | None = None,
    ledger: Ledger | None = None,
    resume: bool = False,
    run_id: str | None = None,
) -> RunResult:
    """Validate and run ``wf``.  ``log`` names the run's SQLite log (stage and
    checkpoint events); ``resume=True`` continues the run in ``log`` after its last
    checkpoint (with its stored config unless ``config`` is given).  Raises
    :class:`~engine.workflow.ir.WorkflowError` before running anything when the
    workflow is invalid, :class:`StageFailed` when a stage halts it."""
    wf = compile_workflow(wf)
    point: ResumePoint | None = None
    if resume:
        if log is None:
            raise ResumeError("resume needs the log of the run to resume")
        header, point = read_resume_point(log, wf.name)
        run_id = run_id or header.get("run_id")
        if config is None:
            config = header.get("config")
    settings = configure(wf, config, f"workflow {wf.name!r}")
    check_config(wf, settings)
    if ledger is None and log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        ledger_config = Config.from_json(settings["ledger"]) if "ledger" in settings else DEFAULT_LEDGER_CONFIG
        ledger = Ledger(path=log) if resume else Ledger(ledger_config, path=log)
        owns_ledger = True
    else:
        owns_ledger = False
    run_id = run_id or uuid.uuid4().hex[:12]
    logger = get_logger("rollout_ledger.workflow", run_id=run_id, workflow=wf.name)
    runtime = Runtime(run_id, logger, ledger, Path(log) if log is not None else None, wf.name)
    initial = dict(state or {})
    metrics: tuple[Mapping[str, Any], ...] = ()
    if point is not None:
        initial = {**point.state, **initial}
        metrics = point.metrics
    missing = [k for k in wf.inputs if k not in initial]
    if missing:
        raise KeyError(f"workflow {wf.name!r} needs input state {', '.join(map(repr, missing))}")
    ctx = Context(settings, immutables.Map(initial), metrics, run_id, wf.name, immutables.Map(), runtime)
    header_json = json.dumps({"run_id": run_id, "config": dict(settings), "resumed_from": point.path if point else None}, default=repr)
    runner = Runner(runtime, point.path if point else None)
    if point is not None:
        logger.info("resuming", after=point.path, checkpoint=point.checkpoint)
    finished = False
    try:
        runtime.emit(wf.name, "started", header_json)
        with Span(logger, "workflow", wf.name, wf.name, resumed_from=point.path if point else None) as span:
            try:
                ctx = await runner.seq(wf.body, ctx, wf.name, wf, span)
            except Exception as err:
                runtime.emit(wf.name, "failed", f"{type(err).__name__}: {err}"[:2000])
                raise
        runtime.emit(wf.name, "finished")
        finished = True
    finally:
        if not finished:
            await asyncio.get_running_loop().run_in_executor(runtime.stage_thread(), runtime.release)
        runtime.close(wait=finished)
        if owns_ledger and ledger is not None:
            ledger.close()
        elif ledger is not None:
            ledger.flush()
    return RunResult(replace(ctx, runtime=None), run_id, point.path if point else None, str(log) if log else None)


def run(wf: Workflow, config: Mapping[str, Any] | None = None, **options: Any) -> RunResult:
    """Run ``wf`` to the end on a fresh event loop (see :func:`arun` for the options)."""
    return asyncio.run(arun(wf, config, **options))
