"""Declarative workflows of stages, validated before they run, executed with
spans, error policies, futures and resumption from the run's event log.

Write a workflow with :func:`workflow`, :func:`stage`, :func:`loop`,
:func:`parallel`, :func:`conditional` and :func:`subworkflow`; check it with
:func:`compile_workflow` / :func:`describe`; run it with :func:`run`.

Modules, lowest layer first (each imports only those above it): ``errors``,
``policy``, ``telemetry``, ``context``; ``dsl``; ``ir`` (compilation) and
``describe``; ``checkpoint`` (checkpoint files); ``services`` (a run's
``Runtime``); ``settings`` (a run's config and its checks); ``runner`` (walking
the nodes); ``launch`` (``run``/``arun``);
``stages`` (generic stages).
"""

from engine.workflow.context import Context, MissingState
from engine.workflow.describe import describe, to_dict
from engine.workflow.dsl import (
    BranchNode,
    ConditionalNode,
    LoopNode,
    ParallelNode,
    StageNode,
    SubworkflowNode,
    Workflow,
    branch,
    conditional,
    loop,
    parallel,
    stage,
    subworkflow,
    workflow,
)
from engine.workflow.errors import (
    ParallelConflict,
    ResumeError,
    StageFailed,
    StageInvalid,
)
from engine.workflow.ir import STAGES, WorkflowError, compile_workflow, register_stage
from engine.workflow.launch import RunResult, arun, run
from engine.workflow.policy import ErrorPolicy, halt, retry, skip
from engine.workflow.stages import AwaitFuture

__all__ = [
    "AwaitFuture", "BranchNode", "ConditionalNode", "Context", "ErrorPolicy", "LoopNode", "MissingState",
    "ParallelConflict", "ParallelNode", "ResumeError", "RunResult", "STAGES", "StageFailed", "StageInvalid",
    "StageNode", "SubworkflowNode", "Workflow", "WorkflowError", "arun", "branch", "compile_workflow",
    "conditional", "describe", "halt", "loop", "parallel", "register_stage", "retry", "run", "skip", "stage",
    "subworkflow", "to_dict", "workflow",
]
