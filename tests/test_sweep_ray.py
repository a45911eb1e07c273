"""``sweep --backend ray``: the same grid on a local Ray of 2 CPUs gives the same
results as the local process backend; a missing Ray or a cluster that does not answer
is one line, exit 2."""

from __future__ import annotations

import socket
import sys

import pytest

from engine.cli import main
from sim import raysweep
from sim.scenarios import builtin
from sim.sweep import parse_grid, sweep

SMALL = ("run.rollouts=96", "ledger.batch_size=16", "generation.servers=2", "generation.slots=32")
GRID = ["ledger.max_staleness=0,2,inf", "ledger.policy=admission,strict"]


@pytest.mark.slow
def test_ray_sweep_equals_the_local_sweep() -> None:
    pytest.importorskip("ray")  # the [ray] extra; CI installs it through [test]
    scenario = builtin("default").with_overrides(SMALL)
    axes = parse_grid(GRID)
    done: list[int] = []
    on_ray = sweep(scenario, axes, workers=2, backend="ray", on_result=lambda: done.append(1))
    local = sweep(scenario, axes, workers=1)
    assert len(done) == len(local) == 6
    assert [point for point, _ in on_ray] == [point for point, _ in local]
    assert [summary for _, summary in on_ray] == [summary for _, summary in local]
    assert len({summary.rollouts_per_s for _, summary in local}) > 1  # the grid really varies


def test_without_ray_the_sweep_says_how_to_get_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of it now raises ImportError
    args = ["sweep", "default", "--no-progress", "--backend", "ray", "--grid", "ledger.max_staleness=0", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rollout-ledger[ray]" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_an_address_needs_the_ray_backend(tmp_path, capsys) -> None:
    args = ["sweep", "default", "--no-progress", "--address", "auto", "--grid", "ledger.max_staleness=0", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "--backend ray" in capsys.readouterr().err


def test_a_cluster_that_does_not_answer_is_refused_at_once(tmp_path, capsys) -> None:
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    args = ["sweep", "default", "--no-progress", "--backend", "ray", "--address", address, "--grid", "ledger.max_staleness=0", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert address in err and "no Ray cluster answers" in err and "Traceback" not in err


def test_addresses_that_are_not_host_and_port_are_left_to_ray() -> None:
    raysweep.check_reachable("auto")  # nothing to probe: no error here
    with pytest.raises(raysweep.BackendError, match="no Ray cluster answers"):
        raysweep.check_reachable("ray://127.0.0.1:1")
