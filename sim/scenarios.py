"""Built-in scenarios, embedded as TOML so the bare ``rollout-ledger simulate`` works.

- ``default``: our default cluster (the field defaults of :mod:`sim.config`).
- ``areal``: a cluster derived from the setup of the AReaL paper (arXiv
  2505.24298); docs/simulator.md explains every value and compares the simulated
  throughput-by-staleness curve with the published one.
"""

from __future__ import annotations

import tomllib

from sim.config import Scenario, ScenarioError, from_dict

AREAL = """
[run]
rollouts = 5120

[ledger]
batch_size = 64
max_concurrent = 100000
policy = "admission"

[workload]
group_size = 8
prompt_len = { kind = "lognormal", median = 120.0, sigma = 0.5, cap = 1024 }
response_len = { kind = "lognormal", median = 6000.0, sigma = 0.7, cap = 32768 }

[generation]
servers = 12
slots = 48
step_base_s = 0.008
step_per_seq_s = 1e-4
step_per_kv_token_s = 2e-8
prefill_per_token_s = 1e-5
on_update = "partial"

[training]
step_base_s = 5.0
step_per_token_s = 5.5e-6
weight_sync_s = 2.0
colocated = false
"""

#: Built-in scenarios by name, as TOML documents.
BUILTIN: dict[str, str] = {"default": "", "areal": AREAL}


def builtin(name: str) -> Scenario:
    """The built-in scenario called ``name``."""
    if name not in BUILTIN:
        raise ScenarioError("<scenario>", f"no built-in scenario {name!r}; known are {', '.join(BUILTIN)}")
    return from_dict(tomllib.loads(BUILTIN[name]))
