"""A run's config: a workflow's defaults overlaid with what the run was given, each
subworkflow's section, and the checks that refuse a bad value before anything runs.

A workflow may declare ``check``, a function of its merged config that raises
``ValueError`` naming a value no run can use (``num_epochs = -1``, a batch size of
0).  :func:`check_config` applies it to the workflow and, through the same merge the
runner makes, to every subworkflow inside it, so a bad value in a section is refused
when the run starts, not when that subworkflow is reached.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import immutables

from engine.workflow.dsl import Node, SubworkflowNode, Workflow, children


def configure(wf: Workflow, given: Mapping[str, Any] | None, where: str) -> immutables.Map:
    """``wf``'s defaults overlaid with ``given`` (a section whose default is a mapping is
    merged key by key); with defaults declared, an unknown key is an error, and so is a
    value ``wf.check`` refuses."""
    given = dict(given or {})
    if wf.defaults:
        unknown = sorted(set(given) - set(wf.defaults) - {"ledger", "on_error"})
        if unknown:
            raise ValueError(f"{where}: unknown config key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(wf.defaults))}")
    merged = dict(wf.defaults)
    for key, value in given.items():
        default = merged.get(key)
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            value = {**default, **value}
        merged[key] = value
    if wf.check is not None:
        try:
            wf.check(merged)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return immutables.Map(merged)


def subworkflow_config(node: SubworkflowNode, config: Mapping[str, Any]) -> immutables.Map:
    """A subworkflow's config: its defaults, overlaid with the parent's values of the
    keys it knows (shared settings), overlaid with the section ``config[config_key]``."""
    sub = node.workflow
    given: dict[str, Any] = {k: v for k, v in config.items() if (not sub.defaults or k in sub.defaults) and k != "on_error"}
    if node.config_key is not None:
        section = config.get(node.config_key, {})
        if not isinstance(section, Mapping):
            raise ValueError(f"subworkflow {node.name!r}: config[{node.config_key!r}] must be a mapping, got {section!r}")
        given.pop(node.config_key, None)
        given.update(section)
    return configure(sub, given, f"subworkflow {node.name!r}")


def _subworkflows(nodes: tuple[Node, ...]) -> Iterator[SubworkflowNode]:
    """The subworkflow nodes among ``nodes`` and inside their loops and branches (not
    inside the subworkflows themselves)."""
    for node in nodes:
        if isinstance(node, SubworkflowNode):
            yield node
        else:
            yield from _subworkflows(children(node))


def check_config(wf: Workflow, config: Mapping[str, Any]) -> None:
    """Configure every subworkflow of ``wf`` (whose own ``config`` is merged already) as
    the runner will, so that their checks refuse a bad value now."""
    for node in _subworkflows(wf.body):
        check_config(node.workflow, subworkflow_config(node, config))
