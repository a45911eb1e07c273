"""Hypothesis strategies for ledger configurations and events."""

from __future__ import annotations

from typing import Sequence

from hypothesis import strategies as st

from engine.core.config import ON_STALE, POLICIES, Config


def configs(policies: Sequence[str] = POLICIES) -> st.SearchStrategy[Config]:
    """Small random configs of the given policies: max_staleness 0..3 or unbounded,
    1..3 data-parallel ranks, both ``on_stale`` actions, batches in order or not."""
    return st.builds(
        Config,
        max_concurrent=st.integers(1, 6),
        batch_size=st.integers(1, 4),
        max_staleness=st.sampled_from((0, 1, 2, 3, None)),
        policy=st.sampled_from(tuple(policies)),
        on_stale=st.sampled_from(ON_STALE),
        dp_size=st.integers(1, 3),
        in_order=st.booleans(),
    )


#: An index into a list of candidates (taken modulo its length); shrinks to the first.
picks = st.integers(0, 1 << 16)
