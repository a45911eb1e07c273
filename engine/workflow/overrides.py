"""Error policies from a run's config, so that a run, not the workflow, says what a
failure does.  The config key ``on_error`` is either one policy (``"skip"``,
``"retry(3, 0.5)"``), the default for the stages of this run that declare none, or a
table: ``"*"`` for that default and a stage's (or subworkflow's) name for its own
policy, which overrides what the workflow declared for it.  A name the workflow does
not have and a policy that does not parse are refused, listing the known names."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from engine.workflow.dsl import Node, StageNode, SubworkflowNode, Workflow, children
from engine.workflow.policy import ErrorPolicy, parse_policy

DEFAULT = "*"


def _names(nodes: tuple[Node, ...]) -> Iterator[str]:
    for node in nodes:
        if isinstance(node, (StageNode, SubworkflowNode)):
            yield node.name
        yield from _names(node.workflow.body if isinstance(node, SubworkflowNode) else children(node))


def stage_names(wf: Workflow) -> list[str]:
    """The names of ``wf``'s stages and subworkflows, at any depth, sorted."""
    return sorted(set(_names(wf.body)))


def error_overrides(wf: Workflow, value: Any) -> dict[str, ErrorPolicy]:
    """The policies of config ``on_error`` (``None``: none), by stage name and ``"*"``;
    ``ValueError`` names a bad policy or an unknown stage."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        value = {DEFAULT: value}
    known = stage_names(wf)
    unknown = sorted(set(value) - set(known) - {DEFAULT})
    if unknown:
        raise ValueError(f"on_error: unknown stage(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)} (or '*' for every stage)")
    policies = {}
    for name, policy in value.items():
        try:
            policies[str(name)] = parse_policy(policy)
        except ValueError as err:
            raise ValueError(f"on_error.{name}: {err}") from None
    return policies
