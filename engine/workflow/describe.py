"""Descriptions of a compiled workflow: :func:`to_dict` (the IR as JSON, for
``rollout-ledger describe --json``) and :func:`describe` (an indented outline)."""

from __future__ import annotations

from typing import Any

from engine.workflow.dsl import (
    BranchNode,
    ConditionalNode,
    LoopNode,
    ParallelNode,
    StageNode,
    SubworkflowNode,
    Workflow,
)
from engine.workflow.ir import FunctionStage, compile_workflow


def _callable_name(value: Any) -> str:
    if callable(value):
        name = getattr(value, "__qualname__", None) or type(value).__name__
        return name.replace(".<locals>", "")
    return repr(value)


def to_dict(node: Any) -> dict[str, Any]:
    """A JSON-able description of a (compiled) workflow or node."""
    if isinstance(node, Workflow):
        return {"kind": "workflow", "name": node.name, "on_error": str(node.on_error), "inputs": list(node.inputs),
                "defaults": {k: v for k, v in node.defaults.items()}, "body": [to_dict(n) for n in node.body]}
    if isinstance(node, StageNode):
        out: dict[str, Any] = {"kind": "stage", "name": node.name, "stage": type(node.stage).__name__ if not isinstance(node.stage, FunctionStage) else repr(node.stage)}
        if node.policy is not None:
            out["on_error"] = str(node.policy)
        if node.checkpoint:
            out["checkpoint"] = True
        if node.options:
            out["options"] = dict(node.options)
        for attribute in ("requires", "provides"):
            if getattr(node, attribute):
                out[attribute] = list(getattr(node, attribute))
        return out
    if isinstance(node, LoopNode):
        out = {"kind": "loop", "name": node.name, "over": _callable_name(node.over), "body": [to_dict(n) for n in node.body]}
        if node.submit_ahead:
            out["submit_ahead"] = node.submit_ahead
        if node.progress:
            out["progress"] = True
        return out
    if isinstance(node, ParallelNode):
        limit = node.max_concurrency
        return {"kind": "parallel", "name": node.name, "max_concurrency": _callable_name(limit) if callable(limit) else limit,
                "branches": [to_dict(n) for n in node.branches]}
    if isinstance(node, BranchNode):
        return {"kind": "branch", "name": node.name, "body": [to_dict(n) for n in node.body]}
    if isinstance(node, ConditionalNode):
        return {"kind": "conditional", "name": node.name, "predicate": _callable_name(node.predicate),
                "body": [to_dict(n) for n in node.body], "otherwise": [to_dict(n) for n in node.otherwise]}
    if isinstance(node, SubworkflowNode):
        return {"kind": "subworkflow", "name": node.name, "config_key": node.config_key,
                "on_error": str(node.policy) if node.policy else None, "workflow": to_dict(node.workflow)}
    raise TypeError(f"not a workflow node: {node!r}")


def describe(wf: Workflow) -> str:
    """The structure of a compiled workflow as an indented outline."""
    lines: list[str] = []

    def walk(item: dict[str, Any], depth: int) -> None:
        pad = "  " * depth
        kind = item["kind"]
        if kind == "workflow":
            extra = f" inputs={','.join(item['inputs'])}" if item["inputs"] else ""
            lines.append(f"{pad}workflow {item['name']} (on_error={item['on_error']}){extra}")
            for child in item["body"]:
                walk(child, depth + 1)
        elif kind == "stage":
            parts = [f"{pad}stage {item['name']}: {item['stage']}"]
            for key in ("on_error", "options", "requires", "provides"):
                if key in item:
                    value = item[key]
                    parts.append(f"{key}={','.join(value) if isinstance(value, list) else value}")
            if item.get("checkpoint"):
                parts.append("checkpoint")
            lines.append("  ".join(parts))
        elif kind == "loop":
            ahead = f" submit_ahead={item['submit_ahead']}" if item.get("submit_ahead") else ""
            lines.append(f"{pad}loop {item['name']} over {item['over']}{ahead}")
            for child in item["body"]:
                walk(child, depth + 1)
        elif kind == "parallel":
            lines.append(f"{pad}parallel{' ' + item['name'] if item['name'] else ''} max_concurrency={item['max_concurrency']}")
            for child in item["branches"]:
                walk(child, depth + 1)
        elif kind == "branch":
            lines.append(f"{pad}branch {item['name']}")
            for child in item["body"]:
                walk(child, depth + 1)
        elif kind == "conditional":
            lines.append(f"{pad}conditional{' ' + item['name'] if item['name'] else ''} if {item['predicate']}")
            for child in item["body"]:
                walk(child, depth + 1)
            if item["otherwise"]:
                lines.append(f"{pad}otherwise")
                for child in item["otherwise"]:
                    walk(child, depth + 1)
        elif kind == "subworkflow":
            key = f" config_key={item['config_key']}" if item["config_key"] else ""
            policy = f" on_error={item['on_error']}" if item["on_error"] else ""
            lines.append(f"{pad}subworkflow {item['name']}{key}{policy}")
            walk(item["workflow"], depth + 1)

    walk(to_dict(compile_workflow(wf)), 0)
    return "\n".join(lines)
