"""The runner: walks a compiled workflow's nodes on asyncio.

Each workflow, stage and loop iteration runs inside a :class:`Span`; every stage
(and subworkflow) writes ``Stage(path, started|finished|failed|skipped)`` events to
the run's ledger under its error policy (rollback, retry with backoff, skip or
halt), and a stage with ``checkpoint=True`` saves the workflow state
(:meth:`Runtime.save_checkpoint`).  While resuming, the runner seeks along the
checkpointed path: stages before it only get their ``resume`` hook, the run goes on
with the first stage after it.

Parallel branches run as asyncio tasks bounded by a semaphore; a branch's
synchronous stages run in worker threads so that they overlap too.  Merge rule:
every branch starts from the same context; afterwards the state is the original
plus each branch's writes (keys whose value it replaced or added), and metrics are
appended in branch order.  A key written by two branches is a
:class:`ParallelConflict`.  Starting a run (config, log, resume point) is
:mod:`engine.workflow.launch`'s.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections import deque
from dataclasses import replace
from typing import Any, Awaitable, Callable, Mapping

import immutables
from tqdm import tqdm

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
from engine.workflow.errors import (
    ParallelConflict,
    ResumeError,
    StageFailed,
    StageInvalid,
)
from engine.workflow.ir import split_point
from engine.workflow.policy import ErrorPolicy
from engine.workflow.services import IN_PARALLEL, Runtime
from engine.workflow.settings import configure, subworkflow_config
from engine.workflow.telemetry import Span

__all__ = ["ParallelConflict", "ResumeError", "Runner", "StageFailed", "StageInvalid", "configure"]

_MISSING: Any = object()


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
                runtime.emit(path, "finished", durable=False)  # written with the next event
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
        elif IN_PARALLEL.get():
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
                IN_PARALLEL.set(True)
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
        """A subworkflow's config (:func:`engine.workflow.settings.subworkflow_config`)."""
        return subworkflow_config(node, ctx.config)

    async def subworkflow(self, node: SubworkflowNode, ctx: Context, path: str, span: Span) -> Context:
        sub = node.workflow
        config = self.sub_config(node, ctx)
        missing = [k for k in sub.inputs if k not in ctx.state]
        if missing:
            raise KeyError(f"subworkflow {node.name!r} needs state {', '.join(map(repr, missing))}")
        result = await self.seq(sub.body, replace(ctx, config=config), path, sub, span)
        return replace(result, config=ctx.config)
