"""Built-in workflows on the torch backend: ``supervised`` (SFT), ``preference``
(DPO against a frozen reference), ``reward_model`` (Bradley-Terry reward head),
``reinforcement`` (asynchronous RL through the executor and the ledger),
``rlhf`` (the three composed as subworkflows) and ``environments`` (RL on
environments through the ports, groups of episodes in parallel).  Each follows the
seed's stage lifecycle: ``init_session``, ``get_batch`` per step, and a ``cleanup``
that runs after a failure too.

``BUILTIN`` maps each name to a function returning the workflow, so that listing
them does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Callable

from engine.workflow.dsl import Workflow


def _lazy(module: str) -> Callable[[], Workflow]:
    def load() -> Workflow:
        return importlib.import_module(f"engine.workflows.{module}").WORKFLOW

    load.__name__ = module
    return load


#: Built-in workflows by name.
BUILTIN: dict[str, Callable[[], Workflow]] = {
    name: _lazy(name) for name in ("supervised", "preference", "reward_model", "reinforcement", "rlhf", "environments")
}
