"""Hypothesis settings profiles of the property suite, loaded from ``HYPOTHESIS_PROFILE``.

- ``ci`` (default): the whole property suite in under 3 minutes on 2 cores;
  derandomized, so a run in CI is reproducible.
- ``thorough``: ten times the examples, fresh random seeds each run.

Importing this module registers both profiles and loads the one named by the
environment (``tests/`` import it; ``pytest_plugins = ["properties.profiles"]`` in a
conftest works as well).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Examples per state-machine test in the ``ci`` profile.
CI_EXAMPLES = 150
#: Steps per state-machine example.
STEPS = 60

settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "thorough",
    parent=settings.get_profile("ci"),
    max_examples=10 * CI_EXAMPLES,
    derandomize=False,
)


def load_profile() -> str:
    """Load the profile named by ``HYPOTHESIS_PROFILE`` (``ci`` by default); returns its name."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if name not in ("ci", "thorough"):
        raise ValueError(f"HYPOTHESIS_PROFILE must be 'ci' or 'thorough', got {name!r}")
    settings.load_profile(name)
    return name


PROFILE = load_profile()
