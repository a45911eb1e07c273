"""Sweeps on Ray: each grid point is one Ray task, on a local Ray started for the
sweep or on a cluster at ``--address``.

Ray is the optional ``[ray]`` extra, imported only here and only when a sweep asks
for it.  The tasks run what the process pool runs (:func:`sim.sweep.run_point`), with the
seeds already fixed by the grid, so a sweep gives the same results on either backend.
A cluster's nodes need rollout-ledger installed (or a ``runtime_env`` that ships it);
a task that fails raises its own error here, as it would locally.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Sequence

from sim.config import Scenario
from sim.summary import Summary


class BackendError(Exception):
    """Ray is missing or cannot be reached: a message naming what to do."""


#: Seconds to reach a cluster's head before giving up (Ray itself retries for minutes).
CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str) -> None:
    """Refuse at once an ``address`` (``host:port`` or ``ray://host:port``) whose head
    does not answer; ``auto`` and other forms are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise BackendError(f"--address {address}: no Ray cluster answers there ({err.strerror or err})") from None


def run_on_ray(
    run: Callable[[Scenario, Any], Summary],
    scenario: Scenario,
    points: Sequence[Any],
    *,
    address: str | None,
    cpus: int,
    on_result: Callable[[], None] | None = None,
) -> list[Summary]:
    """Run ``run(scenario, point)`` for every point as Ray tasks; summaries in
    the points' order.  A local Ray (``address`` None) gets ``cpus`` CPUs and is shut
    down after; a Ray this process already joined is used as it is."""
    try:
        import ray
        import ray.exceptions
    except ImportError:
        raise BackendError("--backend ray needs Ray: pip install 'rollout-ledger[ray]'") from None
    joined = not ray.is_initialized()
    if joined:
        if address is not None:
            check_reachable(address)
        try:
            ray.init(
                address=address,
                num_cpus=cpus if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise BackendError(f"cannot start or join {where}: {str(err).splitlines()[0] if str(err) else err}") from None
    try:
        task = ray.remote(num_cpus=1)(run)
        shared = ray.put(scenario)
        refs = [task.remote(shared, point) for point in points]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            if on_result is not None:
                for _ in done:
                    on_result()
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayTaskError as err:
            raise err.as_instanceof_cause() from None
    finally:
        if joined:
            ray.shutdown()
