"""The runner: executes a compiled workflow on asyncio.

Each workflow, stage and loop iteration runs inside a :class:`Span`; every stage
(and subworkflow) writes ``Stage(path, started|finished|failed|skipped)`` events to
the run's ledger, and a stage with ``checkpoint=True`` saves the workflow state and
appends a ``Checkpoint`` event.  ``run(..., resume=True)`` reads the log back,
restores the last checkpoint and continues with the first stage after it.

Parallel branches run as asyncio tasks bounded by a semaphore; a branch's
synchronous stages run in worker threads so that they overlap too.  Merge rule:
every branch starts from the same context; afterwards the state is the original
plus each branch's writes (keys whose value it replaced or added), and metrics are
appended in branch order.  A key written by two branches is a
:class:`ParallelConflict`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import os
import pickle
import sys
import tempfile
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import immutables
from tqdm import tqdm

from engine.core.config import Config
from engine.core.events import Checkpoint, Stage
from engine.ledger import Ledger
from engine.log import EventLog
from engine.logconfig import get_logger
from engine.workflow.context import Context
from engine.workflow.dsl import (
    BranchNode,
    ConditionalNode,
    LoopNode,
    Node,
    ParallelNode,
    StageNode,
    SubworkflowNode,
    Workflow,
)
from engine.workflow.ir import compile_workflow, split_point
from engine.workflow.policy import ErrorPolicy
from engine.workflow.telemetry import Span

#: Ledger settings of a workflow whose config has no ``ledger`` section.
DEFAULT_LEDGER_CONFIG = Config(max_concurrent=1, batch_size=1)
CHECKPOINT_FORMAT = 1
#: Workflow checkpoints kept on disk (older ones are deleted once a newer one is logged).
KEEP_CHECKPOINTS = 2

_IN_PARALLEL: contextvars.ContextVar[bool] = contextvars.ContextVar("workflow_in_parallel", default=False)
_MISSING: Any = object()


class StageFailed(Exception):
    """A stage (or subworkflow) failed and its policy halted the run."""

    def __init__(self, path: str, error: BaseException, attempts: int = 1) -> None:
        self.path = path
        self.error = error
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"stage {path!r} failed{tries}: {type(error).__name__}: {error}")


class ParallelConflict(RuntimeError):
    """Two parallel branches wrote the same state key."""


class StageInvalid(RuntimeError):
    """A stage's ``validate(ctx)`` refused the context."""


class ResumeError(RuntimeError):
    """A log that cannot be resumed (missing, or not a run of this workflow)."""


@dataclass(frozen=True)
class _DoneFuture:
    """A finished future as saved in a checkpoint."""

    value: Any


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: right after stage ``path``, with ``state`` and ``metrics``."""

    path: str
    state: Mapping[str, Any]
    metrics: tuple[Mapping[str, Any], ...]
    checkpoint: str


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


class Runtime:
    """The services of one run, reachable from every context it makes."""

    def __init__(self, run_id: str, logger: Any, ledger: Ledger | None, log: Path | None, workflow: str) -> None:
        self.run_id = run_id
        self.logger = logger
        self.ledger = ledger
        self.checkpoint_dir = Path(f"{log}.checkpoints") if log is not None else None
        self._artifacts = Path(f"{log}.artifacts") if log is not None else None
        self.workflow = workflow
        self.transient: set[str] = set()  # state keys of live resources, never checkpointed
        self.live: dict[str, Any] = {}  # the latest value of each transient key
        self._executor: ThreadPoolExecutor | None = None
        self._stage_thread: ThreadPoolExecutor | None = None

    @property
    def artifacts(self) -> Path:
        """A directory for the run's files (weights, sub-run logs); a fresh temporary one without a log."""
        if self._artifacts is None:
            self._artifacts = Path(tempfile.mkdtemp(prefix=f"{self.workflow}-{self.run_id}-"))
        self._artifacts.mkdir(parents=True, exist_ok=True)
        return self._artifacts

    def stage_thread(self) -> ThreadPoolExecutor:
        """The one thread that runs every ``blocking`` stage (their resources stay on one thread)."""
        if self._stage_thread is None:
            self._stage_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workflow-stage")
        return self._stage_thread

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn`` on the run's single work thread (FIFO, like a training server's queue)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workflow-work")
        return self._executor.submit(fn, *args, **kwargs)

    def emit(self, path: str, phase: str, detail: str | None = None) -> None:
        """Write one stage event, durably (a run killed after it resumes past it)."""
        if self.ledger is not None:
            self.ledger.append(Stage(path, phase, detail, t=time.time()))
            self.ledger.flush()

    def save_checkpoint(self, ctx: Context, path: str) -> str | None:
        """Pickle the workflow state after stage ``path`` and log a ``Checkpoint``."""
        if _IN_PARALLEL.get():
            raise RuntimeError(f"stage {path!r}: checkpoints cannot be taken inside a parallel branch")
        if self.checkpoint_dir is None or self.ledger is None:
            self.logger.info("checkpoint_not_written", path=path, reason="the run has no log")
            return None
        state: dict[str, Any] = {}
        for key, value in ctx.state.items():
            if key in self.transient:
                continue
            if isinstance(value, Future):
                if not value.done():
                    raise RuntimeError(f"stage {path!r}: cannot checkpoint while future {key!r} is pending; await it first")
                value = _DoneFuture(value.result())
            state[key] = value
        payload = {"format": CHECKPOINT_FORMAT, "workflow": self.workflow, "run_id": self.run_id, "path": path,
                   "state": state, "metrics": [dict(m) for m in ctx.metrics]}
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        target = self.checkpoint_dir / f"ckpt-{self.ledger.state.events:09d}.pkl"
        partial = target.with_suffix(".partial")
        try:
            with open(partial, "wb") as handle:
                pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            partial.unlink(missing_ok=True)
            bad = [k for k, v in state.items() if not _picklable(v)]
            raise RuntimeError(f"stage {path!r}: cannot checkpoint state key(s) {', '.join(bad) or '?'}: {err}") from err
        os.replace(partial, target)
        self.ledger.append(Checkpoint(self.ledger.state.version, str(target), t=time.time()))
        self.ledger.flush()
        for old in sorted(self.checkpoint_dir.glob("ckpt-*.pkl"))[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        self.logger.debug("checkpoint", path=path, file=str(target))
        return str(target)

    def release(self) -> None:
        """After a halt: close the live resources stages made (those with a ``close()``)."""
        for key, value in self.live.items():
            close = getattr(value, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as err:  # a resource broken by the failure: report, keep closing
                    self.logger.warning("release_failed", key=key, error=f"{type(err).__name__}: {err}")
        self.live.clear()

    def close(self, wait: bool = True) -> None:
        """Stop the work thread: after queued work when ``wait``, else drop queued work at once."""
        for pool in (self._executor, self._stage_thread):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=True)
        self._executor = self._stage_thread = None


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _first_error(group: BaseExceptionGroup) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _heads(node: Node) -> frozenset[str]:
    """First path segments (without loop indices) of ``node``'s descendants."""
    if isinstance(node, (StageNode, LoopNode, SubworkflowNode)):
        return frozenset({node.name})
    if isinstance(node, ParallelNode):
        return frozenset().union(*(_heads(n) for n in node.branches))
    if isinstance(node, BranchNode):
        return frozenset().union(*(_heads(n) for n in node.body))
    return frozenset().union(*(_heads(n) for n in (*node.body, *node.otherwise)))


def _writes(base: immutables.Map, after: immutables.Map) -> dict[str, Any]:
    """State keys ``after`` added or replaced relative to ``base``."""
    if after is base:
        return {}
    return {k: v for k, v in after.items() if base.get(k, _MISSING) is not v}


def configure(wf: Workflow, given: Mapping[str, Any] | None, where: str) -> immutables.Map:
    """``wf``'s defaults overlaid with ``given`` (a section whose default is a mapping is
    merged key by key); with defaults declared, an unknown key is an error."""
    given = dict(given or {})
    if wf.defaults:
        unknown = sorted(set(given) - set(wf.defaults) - {"ledger"})
        if unknown:
            raise ValueError(f"{where}: unknown config key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(wf.defaults))}")
    merged = dict(wf.defaults)
    for key, value in given.items():
        default = merged.get(key)
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            value = {**default, **value}
        merged[key] = value
    return immutables.Map(merged)


class Runner:
    """Executes one compiled workflow; build with :func:`run` / :func:`arun`."""

    def __init__(self, runtime: Runtime, seek: str | None) -> None:
        self.runtime = runtime
        self.seek = seek  # path of the checkpointed stage while resuming, else None

    # -- sequences and nodes --------------------------------------------------
    def _seeking(self, prefix: str) -> str | None:
        """The next segment of the resume target below ``prefix``, while seeking into it."""
        if self.seek is None or not self.seek.startswith(prefix + "/"):
            return None
        return self.seek[len(prefix) + 1 :].split("/", 1)[0].split("[", 1)[0]

    async def seq(self, nodes: tuple[Node, ...], ctx: Context, prefix: str, wf: Workflow, span: Span | None) -> Context:
        head = self._seeking(prefix)
        start = 0
        if head is not None:
            start = next((i for i, n in enumerate(nodes) if head in _heads(n)), len(nodes))
            for node in nodes[:start]:
                ctx = await self.reacquire(node, ctx, prefix)
        for node in nodes[start:]:
            ctx = await self.node(node, ctx, prefix, wf, span)
        return ctx

    async def node(self, node: Node, ctx: Context, prefix: str, wf: Workflow, span: Span | None) -> Context:
        if isinstance(node, StageNode):
            path = f"{prefix}/{node.name}"
            if self.seek == path:  # the checkpointed stage: done before the crash
                self.seek = None
                return ctx
            return await self.guarded(path, node.name, "stage", node.policy or wf.on_error, ctx, span,
                                      lambda c, sp: self.stage(node, c, path), node)
        if isinstance(node, LoopNode):
            return await self.loop(node, ctx, prefix, wf, span)
        if isinstance(node, ParallelNode):
            return await self.parallel(node, ctx, prefix, wf, span)
        if isinstance(node, BranchNode):
            return await self.seq(node.body, ctx, prefix, wf, span)
        if isinstance(node, ConditionalNode):
            head = self._seeking(prefix)
            if head is not None:
                taken = any(head in _heads(n) for n in node.body)
            else:
                try:
                    taken = bool(node.predicate(ctx))
                except Exception as err:
                    raise StageFailed(f"{prefix}/<conditional {node.name or getattr(node.predicate, '__name__', '?')}>", err) from err
            return await self.seq(node.body if taken else node.otherwise, ctx, prefix, wf, span)
        path = f"{prefix}/{node.name}"
        return await self.guarded(path, node.name, "workflow", node.policy or wf.on_error, ctx, span,
                                  lambda c, sp: self.subworkflow(node, c, path, sp), None)

    async def reacquire(self, node: Node, ctx: Context, prefix: str) -> Context:
        """While resuming, give a stage that finished before the checkpoint the chance to
        rebuild the live resources it made (its ``resume(ctx)`` hook); descends into
        subworkflows and branches, not into loops or conditionals."""
        if isinstance(node, StageNode):
            hook = getattr(node.stage, "resume", None)
            if hook is None:
                return ctx
            path = f"{prefix}/{node.name}"
            self.runtime.transient.update(getattr(node.stage, "transient", ()))
            stage_ctx = replace(ctx, path=path, stage_opts=node.options, runtime=self.runtime)
            try:
                result = await self.call(hook, stage_ctx, blocking=getattr(node.stage, "blocking", False))
            except Exception as err:
                raise StageFailed(path, err) from err
            if not isinstance(result, Context):
                raise StageFailed(path, TypeError(f"resume() returned {type(result).__name__}, expected a Context"))
            for key in getattr(node.stage, "transient", ()):
                self.runtime.live[key] = result.state.get(key)
            self.runtime.logger.info("reacquired", path=path)
            return replace(result, path=ctx.path, stage_opts=ctx.stage_opts, runtime=ctx.runtime)
        if isinstance(node, BranchNode):
            for child in node.body:
                ctx = await self.reacquire(child, ctx, prefix)
        elif isinstance(node, SubworkflowNode):
            inner = replace(ctx, config=self.sub_config(node, ctx))
            for child in node.workflow.body:
                inner = await self.reacquire(child, inner, f"{prefix}/{node.name}")
            ctx = replace(inner, config=ctx.config)
        return ctx

    # -- error policy ---------------------------------------------------------
    async def guarded(self, path: str, name: str, kind: str, policy: ErrorPolicy, ctx: Context, parent: Span | None,
                      attempt: Callable[[Context, Span], Awaitable[Context]], node: StageNode | None) -> Context:
        """Run ``attempt`` under ``policy``: events, span, rollback, retry with backoff, skip or halt."""
        runtime = self.runtime
        tries = policy.max_attempts if policy.kind == "retry" else 1
        with Span(runtime.logger, kind, name, path, parent) as span:
            for number in range(1, tries + 1):
                runtime.emit(path, "started", f"attempt {number}/{tries}" if number > 1 else None)
                try:
                    result = await attempt(ctx, span)
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    cause = err.error if isinstance(err, StageFailed) and kind == "workflow" else err
                    runtime.emit(path, "failed", f"{type(cause).__name__}: {cause}"[:2000])
                    if node is not None:
                        ctx = await self.rollback(node, ctx, path, err)
                    if number < tries:
                        delay = policy.delay(number)
                        runtime.logger.warning("retrying", path=path, attempt=number, of=tries, delay_s=delay, error=str(cause))
                        await asyncio.sleep(delay)
                        continue
                    if policy.kind == "skip":
                        runtime.emit(path, "skipped", f"{type(cause).__name__}: {cause}"[:2000])
                        span.end("skipped", attempts=number, error=f"{type(cause).__name__}: {cause}")
                        return ctx
                    span.fields.update(attempts=number)
                    if isinstance(err, StageFailed):
                        raise
                    raise StageFailed(path, err, number) from err
                if number > 1:
                    span.fields.update(attempts=number)
                runtime.emit(path, "finished")
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def rollback(self, node: StageNode, ctx: Context, path: str, error: BaseException) -> Context:
        undo = getattr(node.stage, "rollback", None)
        if undo is None:
            return ctx
        stage_ctx = replace(ctx, path=path, stage_opts=node.options, runtime=self.runtime)
        try:
            restored = await self.call(undo, stage_ctx, error, blocking=getattr(node.stage, "blocking", False))
        except Exception as err:
            self.runtime.logger.error("rollback_failed", path=path, error=f"{type(err).__name__}: {err}")
            return ctx
        return replace(restored, path=ctx.path, stage_opts=ctx.stage_opts) if isinstance(restored, Context) else ctx

    # -- stages ---------------------------------------------------------------
    async def call(self, fn: Callable[..., Any], *args: Any, blocking: bool = False) -> Any:
        """Call a stage method: await coroutines; run sync code on the stage thread when
        the stage is ``blocking``, in a worker thread inside a parallel branch, else inline."""
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        if blocking:
            result = await asyncio.get_running_loop().run_in_executor(self.runtime.stage_thread(), functools.partial(fn, *args))
        elif _IN_PARALLEL.get():
            result = await asyncio.to_thread(fn, *args)
        else:
            result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def stage(self, node: StageNode, ctx: Context, path: str) -> Context:
        stage_ctx = replace(ctx, path=path, stage_opts=node.options, runtime=self.runtime)
        blocking = getattr(node.stage, "blocking", False)
        self.runtime.transient.update(getattr(node.stage, "transient", ()))
        check = getattr(node.stage, "validate", None)
        if check is not None:
            verdict = await self.call(check, stage_ctx, blocking=blocking)
            if verdict is False or isinstance(verdict, str):
                raise StageInvalid(f"stage {path!r} refused the context: {verdict if isinstance(verdict, str) else 'validate() returned False'}")
        result = await self.call(node.stage.execute, stage_ctx, blocking=blocking)
        if not isinstance(result, Context):
            raise TypeError(f"stage {path!r} returned {type(result).__name__}, expected a Context (return ctx.put(...))")
        missing = [k for k in node.provides if k not in result.state]
        if missing:
            raise RuntimeError(f"stage {path!r} declares that it provides {', '.join(map(repr, missing))} but did not write it")
        result = replace(result, path=ctx.path, stage_opts=ctx.stage_opts, runtime=ctx.runtime)
        for key in getattr(node.stage, "transient", ()):
            self.runtime.live[key] = result.state.get(key)
        if node.checkpoint:
            self.runtime.save_checkpoint(result, path)
        return result

    # -- control flow ---------------------------------------------------------
    async def loop(self, node: LoopNode, ctx: Context, prefix: str, wf: Workflow, parent: Span | None) -> Context:
        where = f"{prefix}/{node.name}"
        try:
            items = list(node.over(ctx) if callable(node.over) else node.over)
        except Exception as err:
            raise StageFailed(where, err) from err
        start = 0
        if self._seeking(prefix) == node.name:
            segment = self.seek[len(prefix) + 1 :].split("/", 1)[0]  # type: ignore[index]
            start = int(segment[len(node.name) + 1 : -1])
        current, index = f"{node.name}_current", f"{node.name}_index"
        split = split_point(node.body) if node.submit_ahead else None
        bar = tqdm(total=len(items), initial=start, desc=where, disable=not node.progress, file=sys.stderr, leave=False)
        try:
            if split is None:
                for i in range(start, len(items)):
                    ctx = ctx.put_all({current: items[i], index: i})
                    with Span(self.runtime.logger, "iteration", node.name, f"{where}[{i}]", parent, index=i) as span:
                        ctx = await self.seq(node.body, ctx, f"{where}[{i}]", wf, span)
                    bar.update(1)
                return ctx
            return await self.pipelined(node, ctx, items, start, split, where, wf, parent, bar)
        finally:
            bar.close()

    async def pipelined(self, node: LoopNode, ctx: Context, items: list[Any], start: int, split: int, where: str,
                        wf: Workflow, parent: Span | None, bar: tqdm) -> Context:
        current, index = f"{node.name}_current", f"{node.name}_index"
        # Pipelined: the submit part of iteration i runs before the await part of i - submit_ahead.
        submit, finish = node.body[:split], node.body[split:]
        waiting: deque[tuple[int, dict[str, Any], Span]] = deque()
        try:
            for i in range(start, len(items)):
                span = Span(self.runtime.logger, "iteration", node.name, f"{where}[{i}]", parent, index=i).start()
                before = ctx.state
                ctx = await self.seq(submit, ctx.put_all({current: items[i], index: i}), f"{where}[{i}]", wf, span)
                waiting.append((i, _writes(before, ctx.state), span))
                while len(waiting) > node.submit_ahead or (i == len(items) - 1 and waiting):
                    j, written, span_j = waiting.popleft()
                    ctx = await self.seq(finish, ctx.put_all(written), f"{where}[{j}]", wf, span_j)
                    span_j.end("ok")
                    bar.update(1)
        except BaseException as err:
            for _, _, span_j in waiting:
                span_j.end("failed", error=f"{type(err).__name__}: {err}")
            raise
        return ctx

    async def parallel(self, node: ParallelNode, ctx: Context, prefix: str, wf: Workflow, parent: Span | None) -> Context:
        label = node.name or "parallel"
        if self._seeking(prefix) is not None and any(self._seeking(prefix) in _heads(b) for b in node.branches):
            raise ResumeError(f"cannot resume inside parallel {label!r}")
        limit = node.max_concurrency
        try:
            limit = limit(ctx) if callable(limit) else (limit or len(node.branches))
        except Exception as err:
            raise StageFailed(f"{prefix}/<{label} max_concurrency>", err) from err
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise StageFailed(f"{prefix}/<{label}>", ValueError(f"max_concurrency must be an integer >= 1, got {limit!r}"))
        gate = asyncio.Semaphore(limit)

        async def run_branch(branch: Node) -> Context:
            async with gate:
                _IN_PARALLEL.set(True)
                return await self.node(branch, ctx, prefix, wf, parent)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(run_branch(branch)) for branch in node.branches]
        except BaseExceptionGroup as errors:
            raise _first_error(errors) from None
        state = ctx.state.mutate()
        metrics = list(ctx.metrics)
        owner: dict[str, str] = {}
        for position, (branch, task) in enumerate(zip(node.branches, tasks)):
            name = getattr(branch, "name", None) or f"#{position}"
            result = task.result()
            for key, value in _writes(ctx.state, result.state).items():
                if key in owner:
                    raise ParallelConflict(f"{label} at {prefix!r}: branches {owner[key]!r} and {name!r} both wrote state {key!r}")
                owner[key] = name
                state[key] = value
            metrics.extend(result.metrics[len(ctx.metrics) :])
        return replace(ctx, state=state.finish(), metrics=tuple(metrics))

    @staticmethod
    def sub_config(node: SubworkflowNode, ctx: Context) -> immutables.Map:
        """A subworkflow's config: its defaults, overlaid with the parent's values of the
        keys it knows (shared settings), overlaid with the section ``config[config_key]``."""
        sub = node.workflow
        given: dict[str, Any] = {k: v for k, v in ctx.config.items() if not sub.defaults or k in sub.defaults}
        if node.config_key is not None:
            section = ctx.config.get(node.config_key, {})
            if not isinstance(section, Mapping):
                raise TypeError(f"subworkflow {node.name!r}: config[{node.config_key!r}] must be a mapping, got {section!r}")
            given.pop(node.config_key, None)
            given.update(section)
        return configure(sub, given, f"subworkflow {node.name!r}")

    async def subworkflow(self, node: SubworkflowNode, ctx: Context, path: str, span: Span) -> Context:
        sub = node.workflow
        config = self.sub_config(node, ctx)
        missing = [k for k in sub.inputs if k not in ctx.state]
        if missing:
            raise KeyError(f"subworkflow {node.name!r} needs state {', '.join(map(repr, missing))}")
        result = await self.seq(sub.body, replace(ctx, config=config), path, sub, span)
        return replace(result, config=ctx.config)


def read_resume_point(log: str | Path, workflow: str) -> tuple[dict[str, Any], ResumePoint | None]:
    """The stored run header (``run_id``, ``config``) and the last checkpoint of ``workflow`` in ``log``."""
    if not Path(log).exists():
        raise ResumeError(f"no log to resume at {log}")
    header: dict[str, Any] | None = None
    checkpoints: list[str] = []
    with EventLog(log) as events:
        for event in events.events():
            if isinstance(event, Stage) and event.path == workflow and event.phase == "started" and header is None:
                header = json.loads(event.detail or "{}")
            elif isinstance(event, Checkpoint):
                checkpoints.append(event.path)
    if header is None:
        raise ResumeError(f"the log at {log} holds no run of workflow {workflow!r}")
    for file in reversed(checkpoints):
        try:
            with open(file, "rb") as handle:
                payload = pickle.load(handle)
        except (OSError, pickle.UnpicklingError, EOFError):
            continue
        if isinstance(payload, dict) and payload.get("workflow") == workflow and payload.get("format") == CHECKPOINT_FORMAT:
            state = {k: _restore(v) for k, v in payload["state"].items()}
            point = ResumePoint(payload["path"], state, tuple(immutables.Map(m) for m in payload["metrics"]), file)
            return header, point
    return header, None


def _restore(value: Any) -> Any:
    if isinstance(value, _DoneFuture):
        future: Future = Future()
        future.set_result(value.value)
        return future
    return value


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
    if resume and log is None:
        raise ResumeError("resume needs the log of the run to resume")
    point: ResumePoint | None = None
    if resume:
        header, point = read_resume_point(log, wf.name)  # type: ignore[arg-type]
        run_id = run_id or header.get("run_id")
        if config is None:
            config = header.get("config")
    settings = configure(wf, config, f"workflow {wf.name!r}")
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
