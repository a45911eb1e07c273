"""The RL learning rate by update: linear warm-up, then constant or cosine decay.

Plain arithmetic, no torch, so that a run's configuration can be checked without it.
"""

from __future__ import annotations

import math


#: Schedules :func:`learning_rate` knows.
LR_SCHEDULES = ("constant", "cosine")
#: Where the cosine schedule ends, as a fraction of the peak rate.
COSINE_FLOOR = 0.1


def learning_rate(peak: float, update: int, *, warmup: int = 0, schedule: str = "constant", total: int = 0) -> float:
    """The rate of RL update ``update`` (0 for the first of ``total``): ``peak`` times
    ``(update+1)/warmup`` for the first ``warmup`` updates, then ``peak`` (``constant``)
    or a half cosine from ``peak`` down to ``COSINE_FLOOR * peak``, reached by the last
    update (``update = total - 1``) and kept after it (``cosine``)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if update < warmup:
        return peak * (update + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return peak
    progress = min(1.0, (update - warmup + 1) / (total - warmup))
    return peak * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


#: How much :func:`adapt_to_kl` moves the rate's scale at a time, and its least value.
KL_STEP = 1.5
KL_FLOOR = 1e-3


def adapt_to_kl(scale: float, kl: float, target: float) -> float:
    """The learning rate's next scale (at most 1) after an update whose mean KL from the
    current policy to the policies that sampled its batch was ``kl``: divided by
    ``KL_STEP`` when ``kl`` exceeds twice ``target``, multiplied by it (up to 1) when
    ``kl`` is under half of it, else kept.  Samples up to ``max_staleness`` versions
    old come from policies that far behind; a rate that keeps that distance small keeps
    them usable (``target`` 0: no adaptation)."""
    if target <= 0 or not math.isfinite(kl):
        return scale
    if kl > 2 * target:
        return max(KL_FLOOR, scale / KL_STEP)
    if kl < target / 2:
        return min(1.0, scale * KL_STEP)
    return scale
