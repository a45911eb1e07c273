"""Paired prompt lengths: a lengths CSV whose rows lead with their prompt's length, drawn
whole, so that a task whose long prompts have long answers keeps that tie (the prompts of
the sequences in flight at an update, which it re-prefills, are the long ones)."""

from __future__ import annotations

import random
import statistics

import pytest

from sim.config import Scenario, ScenarioError
from sim.simulator import Simulation
from sim.workload import load_prompted_rows, load_rows, paired_samplers

ROWS = [(4, [2, 3]), (4, [3, 2]), (40, [30, 35]), (40, [35, 30]), (40, [33, 31])]


def _csv(tmp_path, rows=ROWS, header="prompt,lengths of one group"):
    path = tmp_path / "lengths.csv"
    path.write_text(header + "\n" + "".join(f"{p}," + ",".join(map(str, g)) + "\n" for p, g in rows))
    return path


def test_a_prompt_column_is_read_apart_from_the_lengths(tmp_path) -> None:
    path = _csv(tmp_path)
    assert load_prompted_rows(path) == ROWS
    assert load_rows(path) == [g for _, g in ROWS]  # an empirical response length reads the groups alone


def test_a_groups_lengths_come_from_the_rows_of_its_prompts_length(tmp_path) -> None:
    from sim.config import Distribution

    prompt_of, lengths_given = paired_samplers(Distribution(kind="empirical", path=str(_csv(tmp_path))), 2)
    rng = random.Random(0)
    prompts = [prompt_of(rng) for _ in range(2000)]
    assert set(prompts) == {4, 40} and 0.5 < prompts.count(40) / prompts.count(4) < 2.5  # 3 rows to 2
    assert all(lengths_given(rng, 4) in ([2, 3], [3, 2]) for _ in range(50))
    assert all(lengths_given(rng, 40) in ([30, 35], [35, 30], [33, 31]) for _ in range(50))
    # a group size the rows do not have: each sample apart, still from its prompt's rows
    prompt_of, lengths_given = paired_samplers(Distribution(kind="empirical", path=str(_csv(tmp_path))), 3)
    assert all(set(lengths_given(rng, 4)) <= {2, 3} for _ in range(50))


def _scenario(tmp_path, prompt: str, **rows) -> Scenario:
    path = _csv(tmp_path, **rows)
    return Scenario().with_overrides([
        "run.rollouts=400", "ledger.batch_size=8", "ledger.max_concurrent=16", "ledger.max_staleness=2", "workload.group_size=2",
        "generation.servers=1", "generation.slots=32", "generation.step_base_s=0.01", "generation.prefill_per_token_s=0.001",
        "training.step_base_s=0.05", "training.step_per_token_s=0", "training.weight_sync_s=0.01", "training.trains_prompt=true",
        f"workload.response_len={{kind='empirical', path='{path}'}}", f"workload.prompt_len={prompt}",
    ])


@pytest.mark.parametrize("paired", [True, False])
def test_a_simulation_starts_each_rollout_with_a_rows_prompt_and_lengths(tmp_path, monkeypatch, paired: bool) -> None:
    """Every start a paired simulation makes is one row: its prompt with that row's group
    lengths.  Drawn apart (the rows' mean prompt, fixed), the long answers get the short
    prompt as often as the long one."""
    from sim import servers

    starts: list[tuple[int, tuple[int, ...]]] = []
    original = servers.Pool.start

    def start(self, server, rollout, prompt, lengths, group):
        drawn = [lengths() for _ in range(group)]
        starts.append((prompt, tuple(drawn)))
        return original(self, server, rollout, prompt, iter(drawn).__next__, group)

    monkeypatch.setattr(servers.Pool, "start", start)
    mean = round(statistics.fmean(p for p, _ in ROWS))
    summary = Simulation(_scenario(tmp_path, "{kind='paired'}" if paired else f"{{kind='fixed', value={mean}}}")).run()
    assert summary.trained_tokens_per_s > 0 and len(starts) >= 400
    rows = {(p, tuple(g)) for p, g in ROWS}
    if paired:
        assert set(starts) <= rows and {p for p, _ in starts} == {4, 40}
    else:
        assert {p for p, _ in starts} == {mean} and not set(starts) & rows


def test_paired_is_refused_where_it_cannot_be_drawn(tmp_path) -> None:
    with pytest.raises(ScenarioError, match="workload.prompt_len.kind.*empirical"):
        Scenario().with_overrides(["workload.prompt_len={kind='paired'}"])
    with pytest.raises(ScenarioError, match="workload.response_len.kind.*only workload.prompt_len"):
        Scenario().with_overrides(["workload.response_len={kind='paired'}"])
    plain = _csv(tmp_path, header="lengths of one group")  # no prompt column: its first number is a length
    scenario = Scenario().with_overrides([f"workload.response_len={{kind='empirical', path='{plain}'}}", "workload.prompt_len={kind='paired'}"])
    with pytest.raises(ScenarioError, match="has no prompt column"):
        Simulation(scenario)
    lonely = tmp_path / "lonely.csv"
    lonely.write_text("prompt,length\n7\n")
    with pytest.raises(ScenarioError, match="line 2: a prompt length and no response length"):
        load_prompted_rows(lonely)
