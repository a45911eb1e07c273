"""``rollout-ledger train --nproc N [--generators K]``: start ``N + K`` processes on this
machine through torch's elastic launcher (what ``torchrun --standalone`` does), each
running the same ``train`` command line; they find their role in the environment
(:mod:`.group`).  Nothing is restarted: when a rank dies, the launcher stops the
others within ``monitor_s`` plus their grace period, and :func:`launch` returns one
line naming the rank that failed first and how.
"""

from __future__ import annotations

import signal
import sys
import uuid
from typing import Sequence

from engine.backends.distributed.group import describe


def launch(argv: Sequence[str], nproc: int, generators: int, *, monitor_s: float = 0.5) -> str | None:
    """Run ``python -m engine.cli <argv>`` on ``nproc + generators`` ranks; ``None`` when
    every rank ended well, else the line that names the first rank that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc + generators, run_id=f"rollout-ledger-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=monitor_s, start_method="spawn",
    )
    try:
        elastic_launch(config, sys.executable)("-m", "engine.cli", *argv)
    except ChildFailedError as failed:
        rank, exitcode = cause({rank: failure.exitcode for rank, failure in failed.failures.items()}, failed.get_first_failure()[0])
        return f"{describe(rank, nproc)} {how(exitcode)}; the run stopped (its log replays; train --resume continues it)"
    return None


def cause(exitcodes: dict[int, int], first: int) -> tuple[int, int]:
    """The rank that ended the run, of the failed ranks' ``exitcodes``: one killed by a
    signal the launcher does not send (its peers' collectives fail at once and they
    exit with an error, often before the launcher sees the killed one), else the
    ``first`` the launcher saw fail."""
    killed = sorted(rank for rank, code in exitcodes.items() if code < 0 and -code != signal.SIGTERM)
    rank = killed[0] if killed else first
    return rank, exitcodes[rank]


def how(exitcode: int) -> str:
    """``exited with status N`` or ``was killed by SIGNAME``."""
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"
