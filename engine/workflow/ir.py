"""Compilation: resolve the stages of a workflow and validate it before it runs.

:func:`compile_workflow` checks names (well formed, unique in the workflow),
stages (resolvable, with ``execute``), options (known, well typed), control flow
(loop sources, concurrency limits, predicates, ``submit_ahead``) and data flow
(every key a stage ``requires`` is written by an earlier stage or is an input)
and raises one :class:`WorkflowError` listing every problem, each naming its node.

Data-flow rules: a loop's body sees ``<loop>_current`` and ``<loop>_index``; keys
written inside a loop or a parallel are available after it; keys written inside a
conditional are available after it only when both of its sides write them.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

import immutables

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
from engine.workflow.policy import parse_policy

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
#: Stage options the engine itself understands (all others belong to the stage).
ENGINE_OPTIONS = ("on_error", "checkpoint", "requires", "provides", "always")

#: Stages known by name: ``stage("x", "await_future")``.
STAGES: dict[str, Callable[[], Any]] = {}


class WorkflowError(ValueError):
    """A workflow that cannot run; ``problems`` lists each problem, naming its node."""

    def __init__(self, workflow: str, problems: list[str]) -> None:
        self.workflow = workflow
        self.problems = problems
        super().__init__(f"workflow {workflow!r} is invalid:\n  - " + "\n  - ".join(problems))


def register_stage(name: str) -> Callable[[Any], Any]:
    """Class decorator: make a stage class usable by name in :func:`stage`."""

    def decorate(cls: Any) -> Any:
        STAGES[name] = cls
        return cls

    return decorate


class FunctionStage:
    """A plain function ``fn(ctx) -> ctx`` (sync or async) used as a stage."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.execute = fn

    def __repr__(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


def stage_keys(stage_obj: Any, attribute: str, options: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``requires``/``provides`` of a stage: a tuple, or a function of its options."""
    value = getattr(stage_obj, attribute, ())
    if callable(value):
        value = value(options)
    return tuple(value)


def _resolve(stage_obj: Any, where: str, problems: list[str]) -> Any:
    if isinstance(stage_obj, str):
        factory = STAGES.get(stage_obj)
        if factory is None:
            known = ", ".join(sorted(STAGES)) or "none"
            problems.append(f"{where}: unknown stage {stage_obj!r} (registered stages: {known})")
            return None
        stage_obj = factory
    if inspect.isclass(stage_obj):
        if not callable(getattr(stage_obj, "execute", None)):
            problems.append(f"{where}: class {stage_obj.__name__} has no execute(ctx) method")
            return None
        try:
            return stage_obj()
        except TypeError as err:
            problems.append(f"{where}: cannot build {stage_obj.__name__}() without arguments ({err}); pass an instance")
            return None
    if callable(getattr(stage_obj, "execute", None)):
        return stage_obj
    if callable(stage_obj):
        return FunctionStage(stage_obj)
    problems.append(f"{where}: {stage_obj!r} is not a stage (needs an execute(ctx) method)")
    return None


def _check_options(stage_obj: Any, options: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    declared: Mapping[str, Any] = getattr(stage_obj, "options", {}) or {}
    own = {}
    for key, value in options.items():
        if key in ENGINE_OPTIONS:
            continue
        if key not in declared:
            accepts = ", ".join(sorted(declared)) or "no options of its own"
            problems.append(f"{where}: unknown option {key!r} (engine options: {', '.join(ENGINE_OPTIONS)}; {type(stage_obj).__name__} accepts {accepts})")
            continue
        kind = declared[key]
        if kind is not None and not isinstance(value, kind):
            problems.append(f"{where}: option {key!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
        own[key] = value
    for key in getattr(stage_obj, "required_options", ()):
        if key not in options:
            problems.append(f"{where}: option {key!r} is required")
    return own


class _Compiler:
    """One pass over a workflow: resolves nodes and gathers every problem."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.names: dict[str, str] = {}

    def name(self, kind: str, name: Any) -> str:
        where = f"{kind} {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            self.problems.append(f"{where}: a name must be a string of letters, digits, '_', '.' or '-' starting with a letter or '_'")
        elif name in self.names:
            self.problems.append(f"{where}: duplicate name (already used by a {self.names[name]})")
        else:
            self.names[name] = kind
        return where

    def policy(self, options: Mapping[str, Any], where: str) -> Any:
        if "on_error" not in options:
            return None
        try:
            return parse_policy(options["on_error"])
        except ValueError as err:
            self.problems.append(f"{where}: {err}")
            return None

    def nodes(self, nodes: Iterable[Any], where: str) -> tuple[Node, ...]:
        out = []
        for node in nodes:
            if isinstance(node, Workflow):
                self.problems.append(f"{where}: workflow {node.name!r} used as a node; wrap it in subworkflow(...)")
            elif not isinstance(node, (StageNode, LoopNode, ParallelNode, BranchNode, ConditionalNode, SubworkflowNode)):
                self.problems.append(f"{where}: {node!r} is not a workflow node (use stage, loop, parallel, conditional or subworkflow)")
            else:
                out.append(self.node(node))
        return tuple(out)

    def node(self, node: Node) -> Node:
        if isinstance(node, StageNode):
            where = self.name("stage", node.name)
            resolved = _resolve(node.stage, where, self.problems)
            if resolved is None:
                return node
            own = _check_options(resolved, node.options, where, self.problems)
            checkpoint = node.options.get("checkpoint", getattr(resolved, "checkpoint", False) is True)
            if not isinstance(checkpoint, bool):
                self.problems.append(f"{where}: option 'checkpoint' must be True or False, got {checkpoint!r}")
            always = node.options.get("always", getattr(resolved, "always", False) is True)
            if not isinstance(always, bool):
                self.problems.append(f"{where}: option 'always' must be True or False, got {always!r}")
            keys: dict[str, tuple[str, ...]] = {}
            for attribute in ("requires", "provides"):
                value = node.options[attribute] if attribute in node.options else stage_keys(resolved, attribute, own)
                if isinstance(value, str) or not all(isinstance(k, str) for k in value):
                    self.problems.append(f"{where}: {attribute} must be a sequence of state keys, got {value!r}")
                    value = ()
                keys[attribute] = tuple(value)
            return replace(node, stage=resolved, options=immutables.Map(own), policy=self.policy(node.options, where),
                           checkpoint=checkpoint is True, requires=keys["requires"], provides=keys["provides"],
                           always=always is True)
        if isinstance(node, LoopNode):
            where = self.name("loop", node.name)
            if not callable(node.over) and (isinstance(node.over, (str, bytes)) or not isinstance(node.over, Iterable)):
                self.problems.append(f"{where}: over= must be a function of the context or an iterable, got {node.over!r}")
            if not isinstance(node.progress, bool):
                self.problems.append(f"{where}: progress must be True or False, got {node.progress!r}")
            if not isinstance(node.submit_ahead, int) or isinstance(node.submit_ahead, bool) or node.submit_ahead < 0:
                self.problems.append(f"{where}: submit_ahead must be an integer >= 0, got {node.submit_ahead!r}")
            body = self.nodes(node.body, where)
            if not node.body:
                self.problems.append(f"{where}: empty body")
            if isinstance(node.submit_ahead, int) and node.submit_ahead > 0 and split_point(body) is None:
                self.problems.append(f"{where}: submit_ahead={node.submit_ahead} needs a stage that awaits (e.g. AwaitFuture) in the loop body, after the stages that submit")
            if isinstance(node.submit_ahead, int) and node.submit_ahead > 0 and any(_checkpoints(n) for n in body):
                self.problems.append(f"{where}: a checkpoint stage inside a loop with submit_ahead cannot be resumed; checkpoint after the loop or in an outer loop")
            return replace(node, body=body)
        if isinstance(node, ParallelNode):
            where = "parallel" if node.name is None else self.name("parallel", node.name)
            limit = node.max_concurrency
            if limit is not None and not callable(limit) and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                self.problems.append(f"{where}: max_concurrency must be an integer >= 1, a function of the context or None, got {limit!r}")
            if not node.branches:
                self.problems.append(f"{where}: no branches")
            branches = self.nodes(node.branches, where)
            if any(_checkpoints(n) for n in branches):
                self.problems.append(f"{where}: a checkpoint stage inside a parallel branch cannot be resumed; checkpoint after the parallel")
            return replace(node, branches=branches)
        if isinstance(node, BranchNode):
            where = self.name("branch", node.name)
            if not node.body:
                self.problems.append(f"{where}: empty body")
            return replace(node, body=self.nodes(node.body, where))
        if isinstance(node, ConditionalNode):
            where = "conditional" if node.name is None else self.name("conditional", node.name)
            if not callable(node.predicate):
                self.problems.append(f"{where}: predicate must be a function of the context, got {node.predicate!r}")
            if not node.body and not node.otherwise:
                self.problems.append(f"{where}: empty body")
            return replace(node, body=self.nodes(node.body, where), otherwise=self.nodes(node.otherwise, where))
        # SubworkflowNode
        where = self.name("subworkflow", node.name)
        unknown = set(node.options) - {"on_error"}
        if unknown:
            self.problems.append(f"{where}: unknown option(s) {', '.join(sorted(unknown))} (a subworkflow accepts on_error)")
        if node.config_key is not None and not isinstance(node.config_key, str):
            self.problems.append(f"{where}: config_key must be a string or None, got {node.config_key!r}")
        if not isinstance(node.workflow, Workflow):
            self.problems.append(f"{where}: {node.workflow!r} is not a workflow")
            return node
        try:
            inner = compile_workflow(node.workflow)
        except WorkflowError as err:
            self.problems.extend(f"{where}: {problem}" for problem in err.problems)
            return node
        return replace(node, workflow=inner, policy=self.policy(node.options, where))


def _checkpoints(node: Node) -> bool:
    """Whether ``node`` holds a stage with ``checkpoint=True`` (subworkflows excluded)."""
    if isinstance(node, StageNode):
        return node.checkpoint
    children = getattr(node, "body", ()) + getattr(node, "otherwise", ()) + getattr(node, "branches", ())
    return any(_checkpoints(child) for child in children)


def split_point(body: tuple[Node, ...]) -> int | None:
    """Index of the first top-level stage in ``body`` that awaits submitted work
    (``awaits = True``), if some stage before it exists: where ``submit_ahead`` splits."""
    for index, node in enumerate(body):
        if isinstance(node, StageNode) and getattr(node.stage, "awaits", False):
            return index if index > 0 else None
    return None


def _flow(nodes: tuple[Node, ...], available: frozenset[str], problems: list[str]) -> frozenset[str]:
    """Check ``requires`` along ``nodes``; returns the keys available afterwards."""
    for node in nodes:
        if isinstance(node, StageNode):
            for key in node.requires:
                if key not in available:
                    problems.append(f"stage {node.name!r}: needs state {key!r}, which no earlier stage provides and is not an input")
            available = available | frozenset(node.provides)
        elif isinstance(node, LoopNode):
            inner = available | {f"{node.name}_current", f"{node.name}_index"}
            available = available | (_flow(node.body, inner, problems) - {f"{node.name}_current", f"{node.name}_index"})
        elif isinstance(node, ParallelNode):
            written: dict[str, str] = {}
            after = available
            for child in node.branches:
                out = _flow((child,), available, problems)
                label = getattr(child, "name", None)
                for key in out - available:
                    if key in written:
                        problems.append(f"parallel branches {written[key]!r} and {label!r} both write state {key!r}")
                    written[key] = label  # type: ignore[assignment]
                after = after | out
            available = after
        elif isinstance(node, BranchNode):
            available = _flow(node.body, available, problems)
        elif isinstance(node, ConditionalNode):
            yes = _flow(node.body, available, problems)
            no = _flow(node.otherwise, available, problems)
            available = yes & no
        elif isinstance(node, SubworkflowNode) and isinstance(node.workflow, Workflow):
            for key in node.workflow.inputs:
                if key not in available:
                    problems.append(f"subworkflow {node.name!r}: needs state {key!r}, which no earlier stage provides and is not an input")
            available = available | provided(node.workflow)
    return available


def provided(wf: Workflow) -> frozenset[str]:
    """Every state key a (compiled) workflow guarantees to write."""
    return _flow(wf.body, frozenset(wf.inputs), []) - frozenset(wf.inputs)


def compile_workflow(wf: Workflow) -> Workflow:
    """Resolve and validate ``wf``; returns the compiled IR or raises :class:`WorkflowError`."""
    if not isinstance(wf, Workflow):
        raise TypeError(f"not a workflow: {wf!r}")
    if wf.compiled:
        return wf
    compiler = _Compiler()
    if not isinstance(wf.name, str) or not _NAME.match(wf.name):
        compiler.problems.append(f"workflow {wf.name!r}: a name must be a string of letters, digits, '_', '.' or '-'")
    try:
        policy = parse_policy(wf.on_error)
    except ValueError as err:
        compiler.problems.append(f"workflow {wf.name!r}: {err}")
        policy = None
    body = compiler.nodes(wf.body, f"workflow {wf.name!r}")
    if not wf.body:
        compiler.problems.append(f"workflow {wf.name!r}: empty body")
    if not compiler.problems:
        _flow(body, frozenset(wf.inputs), compiler.problems)
    if compiler.problems:
        raise WorkflowError(wf.name, compiler.problems)
    return replace(wf, body=body, on_error=policy, compiled=True)
