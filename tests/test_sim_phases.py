"""Lengths in phases (``workload.phase_versions``): a real run's answers come in spells, so
the groups started within a window of versions are drawn from one window of the
calibrated run's rows, in the order they were submitted. Replayed (``workload.replay``):
every row in its order, a run's own workload again."""

from __future__ import annotations

import random

import pytest

from sim.config import Scenario, ScenarioError
from sim.simulator import Simulation
from sim.workload import Phases, Replay

# rows in submission order: prompt k, both samples k tokens long, so a row is its index + 1
ROWS = [(k, [k, k]) for k in range(1, 41)]


def _csv(tmp_path, rows=ROWS):
    path = tmp_path / "lengths.csv"
    path.write_text("prompt,lengths of one group\n" + "".join(f"{p}," + ",".join(map(str, g)) + "\n" for p, g in rows))
    return path


def _scenario(tmp_path, *extra: str) -> Scenario:
    return Scenario().with_overrides([
        "run.rollouts=400", "ledger.batch_size=8", "ledger.max_concurrent=16", "ledger.max_staleness=2", "workload.group_size=2",
        "generation.servers=1", "generation.slots=32", "generation.step_base_s=0.01", "generation.prefill_per_token_s=0.001",
        "training.step_base_s=0.05", "training.step_per_token_s=0", "training.weight_sync_s=0.01", "training.trains_prompt=true",
        f"workload.response_len={{kind='empirical', path='{_csv(tmp_path)}'}}", "workload.prompt_len={kind='paired'}", *extra,
    ])


def test_the_groups_of_a_phase_come_from_one_window_of_consecutive_rows(tmp_path) -> None:
    scenario = _scenario(tmp_path)
    phases = Phases(scenario.workload.response_len, 2, versions=3, span=4)
    rng = random.Random(0)
    windows = []
    for phase in range(20):
        drawn = [phases.lengths(rng, 3 * phase + k % 3)[0] for k in range(30)]
        assert max(drawn) - min(drawn) <= 3  # four consecutive rows
        windows.append(min(drawn))
    assert len(set(windows)) > 5  # each phase its own window, chosen at random
    # a paired prompt draws its row; the group of that prompt length then takes the row's lengths
    prompt = phases.prompt(rng, 0)
    assert phases.lengths(rng, 0, prompt) == [prompt, prompt]


def test_a_simulation_in_phases_starts_its_groups_with_rows_of_the_phases_window(tmp_path, monkeypatch) -> None:
    """Each start is a whole row; the starts under one version are from four consecutive
    rows when phases span four rows, from all forty without phases."""
    from sim import servers

    starts: list[tuple[int, int, tuple[int, ...]]] = []
    original = servers.Pool.start
    simulation: list[Simulation] = []

    def start(self, server, rollout, prompt, lengths, group):
        drawn = tuple(lengths() for _ in range(group))
        starts.append((simulation[0].ledger.state.version, prompt, drawn))
        return original(self, server, rollout, prompt, iter(drawn).__next__, group)

    monkeypatch.setattr(servers.Pool, "start", start)
    for extra, most in (((), 39), (("workload.phase_versions=1", "workload.phase_rows=4"), 3)):
        starts.clear()
        simulation[:] = [Simulation(_scenario(tmp_path, *extra))]
        assert simulation[0].run().trained_tokens_per_s > 0
        rows = {(p, tuple(g)) for p, g in ROWS}
        assert all((prompt, drawn) in rows for _, prompt, drawn in starts)
        spread = {}
        for version, prompt, _ in starts:
            low, high = spread.get(version, (prompt, prompt))
            spread[version] = (min(low, prompt), max(high, prompt))
        widest = max(high - low for low, high in spread.values())
        assert widest <= most
        if not extra:
            assert widest > 10


def test_phases_are_refused_by_name_where_they_cannot_be_drawn(tmp_path) -> None:
    with pytest.raises(ScenarioError, match="workload.phase_versions.*empirical"):
        Scenario().with_overrides(["workload.phase_versions=10", "workload.phase_rows=8"])
    with pytest.raises(ScenarioError, match="workload.phase_rows.*at least 1"):
        _scenario(tmp_path, "workload.phase_versions=10")
    with pytest.raises(ScenarioError, match="workload.phase_versions.*at least 0"):
        _scenario(tmp_path, "workload.phase_versions=-1")
    with pytest.raises(ScenarioError, match="workload.phase_rows.*41 rows a phase.*40 rows"):
        Simulation(_scenario(tmp_path, "workload.phase_versions=2", "workload.phase_rows=41"))


def test_rows_are_drawn_in_order_then_at_random_past_the_last(tmp_path) -> None:
    replay = Replay(_scenario(tmp_path, "workload.replay=true").workload.response_len, 2)
    rng = random.Random(0)
    assert [replay.lengths(rng, 0)[0] for _ in range(40)] == list(range(1, 41))
    past = [replay.lengths(rng, 0)[0] for _ in range(200)]
    assert set(past) <= set(range(1, 41)) and len(set(past)) > 10
    # a paired prompt takes the next row, whose lengths its group then takes
    again = Replay(_scenario(tmp_path, "workload.replay=true").workload.response_len, 2)
    assert [again.prompt(rng, 0) for _ in range(3)] == [1, 2, 3]
    assert again.lengths(rng, 0, 2) == [2, 2] and again.lengths(rng, 0, 1) == [1, 1]


def test_a_simulation_starts_its_groups_in_the_rows_order(tmp_path, monkeypatch) -> None:
    from sim import servers

    starts: list[tuple[int, tuple[int, ...]]] = []
    original = servers.Pool.start

    def start(self, server, rollout, prompt, lengths, group):
        drawn = tuple(lengths() for _ in range(group))
        starts.append((prompt, drawn))
        return original(self, server, rollout, prompt, iter(drawn).__next__, group)

    monkeypatch.setattr(servers.Pool, "start", start)
    assert Simulation(_scenario(tmp_path, "workload.replay=true")).run().trained_tokens_per_s > 0
    assert len(starts) >= 32
    assert starts[:40] == [(k, (k, k)) for k in range(1, len(starts[:40]) + 1)]


def test_a_replay_is_refused_by_name_where_it_cannot_be_drawn(tmp_path) -> None:
    with pytest.raises(ScenarioError, match="workload.replay.*empirical, not lognormal"):
        Scenario().with_overrides(["workload.replay=true"])
    with pytest.raises(ScenarioError, match="workload.replay.*phase_versions to 0"):
        _scenario(tmp_path, "workload.replay=true", "workload.phase_versions=2", "workload.phase_rows=4")
    with pytest.raises(ScenarioError, match="no row of a group of 3"):
        Simulation(_scenario(tmp_path, "workload.replay=true", "workload.group_size=3"))


def _progress_csv(tmp_path):
    """One run of group size 2: rows 1-4 submitted before any training, 5-6 after two
    rollouts trained, 7-8 after four (its batch of 2); a row's prompt and lengths are its number."""
    path = tmp_path / "course.csv"
    rows = [(0, k) for k in range(1, 5)] + [(2, 5), (2, 6), (4, 7), (4, 8)]
    path.write_text("run,trained,prompt,lengths of one group\n" + "".join(f"0,{t},{k},{k},{k}\n" for t, k in rows))
    return Scenario().with_overrides([f"workload.response_len={{kind='empirical', path='{path}'}}", "workload.group_size=2"]).workload.response_len


def test_a_course_with_its_progress_is_followed_by_the_rollouts_trained(tmp_path) -> None:
    """Each group takes the next unused row the course submitted at the same point in
    training (a version times the batch), then one of those at random; beyond where the
    course went, a row of the whole course at random."""
    dist = _progress_csv(tmp_path)
    rng = random.Random(0)
    same = Replay(dist, 2, batch=2)
    assert [same.lengths(rng, 0)[0] for _ in range(4)] == [1, 2, 3, 4]
    assert {same.lengths(rng, 0)[0] for _ in range(40)} == {1, 2, 3, 4}  # a run with more in flight: the same point again
    assert [same.lengths(rng, 1)[0] for _ in range(2)] == [5, 6] and [same.lengths(rng, 2)[0] for _ in range(2)] == [7, 8]
    assert {same.lengths(rng, 3)[0] for _ in range(80)} == set(range(1, 9))  # six trained: beyond the course
    twice = Replay(dist, 2, batch=4)  # a version of a batch of 4 spans two of the course's
    assert [twice.lengths(rng, 0)[0] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
    assert [twice.lengths(rng, 1)[0] for _ in range(2)] == [7, 8]
    half = Replay(dist, 2, batch=1)  # a version of a batch of 1: the course's point at or before it
    assert [half.lengths(rng, 0)[0] for _ in range(2)] == [1, 2] and [half.lengths(rng, 1)[0] for _ in range(2)] == [3, 4]
    assert [half.lengths(rng, 2)[0] for _ in range(2)] == [5, 6]
    # a paired prompt takes the row its group then gets
    paired = Replay(dist, 2, batch=2)
    assert paired.prompt(rng, 1) == 5 and paired.lengths(rng, 1, 5) == [5, 5]


def test_a_course_header_is_read_and_a_bad_one_refused_by_name(tmp_path) -> None:
    from sim.workload import load_runs

    path = tmp_path / "two.csv"
    path.write_text("run,trained,prompt,lengths\n0,0,3,1,2\n1,0,4,3,4\n0,2,5,5,6\n")
    assert load_runs(path) == [[(0, 3, [1, 2]), (2, 5, [5, 6])], [(0, 4, [3, 4])]]
    path.write_text("run,trained,lengths\n0,0,1,2\n")
    with pytest.raises(ScenarioError, match="leads with run,trained,prompt or run,prompt, not run,trained,lengths"):
        load_runs(path)
    path.write_text("run,trained,prompt,lengths\n0,-1,3,1,2\n")
    with pytest.raises(ScenarioError, match="line 2: rollouts trained '-1' must be at least 0"):
        load_runs(path)
