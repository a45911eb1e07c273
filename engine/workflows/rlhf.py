"""RLHF: supervised fine-tuning, then a reward model initialised from the SFT
policy, then asynchronous RL from the SFT policy against the learned reward, each a
subworkflow configured by its own section (``sft``, ``reward``, ``rl``) on top of
the shared ``task``, ``model_size`` and ``seed``."""

from __future__ import annotations

from engine.workflow import subworkflow, workflow
from engine.workflows import reinforcement, reward_model, supervised
from engine.workflows.common import settings_check

WORKFLOW = workflow(
    "rlhf",
    subworkflow(supervised.WORKFLOW, config_key="sft", name="sft"),
    subworkflow(reward_model.WORKFLOW, config_key="reward", name="reward"),
    subworkflow(reinforcement.WORKFLOW, config_key="rl", name="rl"),
    defaults={"task": "copy", "model_size": "tiny", "seed": 0, "sft": {}, "reward": {}, "rl": {"reward": "model"}},
    description="Supervised fine-tuning, then a reward model, then RL against it.",
    check=settings_check(),
)
