"""The workflow language: ``workflow``, ``stage``, ``loop``, ``parallel``,
``conditional``, ``subworkflow`` (and ``branch`` for a multi-stage parallel branch).

Each function returns a node of the intermediate representation (frozen
dataclasses, inspectable and printable); :func:`engine.workflow.ir.compile_workflow`
resolves and validates a tree of them before anything runs::

    sft = workflow(
        "supervised",
        stage("load_dataset", LoadDataset()),
        loop("epochs", over=lambda ctx: range(ctx.setting("num_epochs")),
            loop("batches", over=lambda ctx: ctx.get("batches"),
                stage("train_step", TrainStep(), on_error=retry(3, backoff=0.1)),
            ),
            conditional(should_checkpoint, stage("checkpoint", SaveWeights(), checkpoint=True)),
        ),
    )
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

import immutables

from engine.workflow.policy import ErrorPolicy, halt


@dataclass(frozen=True)
class StageNode:
    """Run one stage object; ``options`` are the ``**opts`` given to :func:`stage`."""

    name: str
    stage: Any
    options: Mapping[str, Any] = field(default_factory=immutables.Map)
    policy: ErrorPolicy | None = None  # set by compilation
    checkpoint: bool = False  # set by compilation
    requires: tuple[str, ...] = ()  # set by compilation
    provides: tuple[str, ...] = ()  # set by compilation
    always: bool = False  # set by compilation: runs after a failure earlier in its sequence too
    kind = "stage"


@dataclass(frozen=True)
class LoopNode:
    """Run ``body`` once per item of ``over(ctx)`` (or of ``over`` itself when not callable)."""

    name: str
    over: Any
    body: tuple["Node", ...]
    submit_ahead: int = 0
    progress: bool = False
    kind = "loop"


@dataclass(frozen=True)
class ParallelNode:
    """Run each of ``branches`` concurrently on the same context, at most ``max_concurrency`` at once."""

    branches: tuple["Node", ...]
    max_concurrency: Any = None
    name: str | None = None
    kind = "parallel"


@dataclass(frozen=True)
class BranchNode:
    """A sequence of nodes that forms one branch of a ``parallel``."""

    name: str
    body: tuple["Node", ...]
    kind = "branch"


@dataclass(frozen=True)
class ConditionalNode:
    """Run ``body`` when ``predicate(ctx)`` is true, ``otherwise`` when it is false."""

    predicate: Any
    body: tuple["Node", ...]
    otherwise: tuple["Node", ...] = ()
    name: str | None = None
    kind = "conditional"


@dataclass(frozen=True)
class SubworkflowNode:
    """Run another workflow as one step; its config is ``config[config_key]``."""

    name: str
    workflow: "Workflow"
    config_key: str | None = None
    options: Mapping[str, Any] = field(default_factory=immutables.Map)
    policy: ErrorPolicy | None = None  # set by compilation
    kind = "subworkflow"


@dataclass(frozen=True)
class Workflow:
    """A named tree of nodes with its default error policy, required ``inputs``
    (state keys the caller must give), ``defaults`` (config values) and ``check``
    (``None``, or a function of the merged config raising ValueError at a bad value)."""

    name: str
    body: tuple["Node", ...]
    on_error: Any = halt
    inputs: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=immutables.Map)
    description: str = ""
    compiled: bool = False
    check: Callable[[Mapping[str, Any]], None] | None = None
    kind = "workflow"


Node = Union[StageNode, LoopNode, ParallelNode, BranchNode, ConditionalNode, SubworkflowNode]


def children(node: Node) -> tuple[Node, ...]:
    """The nodes directly inside ``node``'s loop, branches or arms (a subworkflow's own
    body is not among them: it is another workflow)."""
    if isinstance(node, (LoopNode, BranchNode)):
        return node.body
    if isinstance(node, ParallelNode):
        return node.branches
    if isinstance(node, ConditionalNode):
        return (*node.body, *node.otherwise)
    return ()


def stage(name: str, stage_obj: Any, **opts: Any) -> StageNode:
    """A stage: ``stage_obj`` is an object with ``execute(ctx)``, a class of one, a
    plain function of the context, or the name of a registered stage.  Engine
    options: ``on_error`` (``halt``/``skip``/``retry(...)``), ``checkpoint=True``
    (save a resumable checkpoint after it), ``always=True`` (a cleanup stage: it runs
    even when a stage before it in its sequence failed, then the failure goes on)
    and ``requires``/``provides`` (state
    keys it reads/writes, overriding the stage's own declaration); any other
    option must be declared by the stage's ``options`` and reaches it as
    ``ctx.stage_opts``."""
    return StageNode(name, stage_obj, immutables.Map(opts))


def loop(name: str, *body: Node, over: Any, submit_ahead: int = 0, progress: bool = False) -> LoopNode:
    """Run ``body`` for each item of ``over`` (a function of the context or an iterable);
    the body sees ``<name>_current`` and ``<name>_index`` in the state.  With
    ``submit_ahead=N`` the part of the body before its first awaiting stage runs up
    to N iterations ahead of the rest (pipelining).  ``progress`` shows a progress bar."""
    return LoopNode(name, over, tuple(body), submit_ahead, progress)


def parallel(*branches: Node, max_concurrency: Any = None, name: str | None = None) -> ParallelNode:
    """Run ``branches`` concurrently (at most ``max_concurrency`` at once: an int or a
    function of the context; default all) and merge what they wrote."""
    return ParallelNode(tuple(branches), max_concurrency, name)


def branch(name: str, *body: Node) -> BranchNode:
    """Several nodes that run in order as one branch of a :func:`parallel`."""
    return BranchNode(name, tuple(body))


def conditional(predicate: Callable[[Any], bool], *body: Node, otherwise: Iterable[Node] = (), name: str | None = None) -> ConditionalNode:
    """Run ``body`` when ``predicate(ctx)`` holds, else ``otherwise``."""
    return ConditionalNode(predicate, tuple(body), tuple(otherwise), name)


def subworkflow(workflow: "Workflow", config_key: str | None = None, *, name: str | None = None, **opts: Any) -> SubworkflowNode:
    """Run ``workflow`` as one step of this one.  Its config: its own defaults, then
    this workflow's values of the keys it knows, then the section ``config[config_key]``.
    It sees this workflow's state and what it writes is kept.  ``on_error`` applies
    to it as to a stage."""
    label = name if name is not None else getattr(workflow, "name", None)
    return SubworkflowNode(label, workflow, config_key, immutables.Map(opts))  # type: ignore[arg-type]


def workflow(
    name: str,
    *body: Node,
    on_error: Any = "halt",
    inputs: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    description: str = "",
    check: Callable[[Mapping[str, Any]], None] | None = None,
) -> Workflow:
    """A workflow named ``name`` running ``body`` in order.  ``on_error`` is the policy
    of stages that set none; ``inputs`` are state keys the caller must supply;
    ``defaults`` are its config values (a run may override only these keys); ``check``
    refuses a config no run can use, before the run starts (it raises ValueError
    naming the value)."""
    return Workflow(name, tuple(body), on_error, tuple(inputs), immutables.Map(defaults or {}), description, check=check)
