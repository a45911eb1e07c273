"""Scenario files: defaults, documentation, overrides and errors that name the field."""

from __future__ import annotations

import math
import random

import pytest

from sim.config import (
    Distribution,
    Scenario,
    ScenarioError,
    field_docs,
    from_dict,
    load,
    save,
)
from sim.scenarios import BUILTIN, builtin
from sim.workload import load_lengths, lognormal_cdf, sampler


def test_every_field_is_documented_and_defaulted() -> None:
    docs = field_docs()
    assert len(docs) >= 20
    for name, default, doc in docs:
        assert doc, f"{name} has no documentation"
        assert default is not None, f"{name} has no default"


def test_toml_round_trip_keeps_every_field(tmp_path) -> None:
    scenario = Scenario().with_overrides(["ledger.max_staleness=inf", "generation.on_update=restart", "training.colocated=true"])
    path = save(scenario, tmp_path / "scenario.toml")
    assert load(path) == scenario
    assert load(path).ledger.max_staleness is None


def test_file_values_then_overrides(tmp_path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[ledger]\nbatch_size = 32\npolicy = "strict"\n[workload]\nresponse_len = { kind = "fixed", value = 50 }\n')
    scenario = load(path, ["ledger.batch_size=16", "workload.response_len.value=70", "run.seed=3"])
    assert scenario.ledger.batch_size == 16
    assert scenario.ledger.policy == "strict"
    assert scenario.workload.response_len == Distribution(kind="fixed", value=70)
    assert scenario.run.seed == 3
    assert scenario.generation == Scenario().generation


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("ledger.bogus=1", "ledger.bogus"),
        ("nosuch.key=1", "nosuch"),
        ("generation.slots=x", "generation.slots"),
        ("generation.slots=0", "generation.slots"),
        ("generation.on_update=sometimes", "generation.on_update"),
        ("ledger.policy=fifo", "ledger.policy"),
        ("ledger.max_staleness=-1", "ledger.max_staleness"),
        ("ledger.max_staleness=1.5", "ledger.max_staleness"),
        ("training.weight_sync_s=-2", "training.weight_sync_s"),
        ("training.colocated=1", "training.colocated"),
        ("ledger.in_order=3", "ledger.in_order"),
        ("workload.response_len.kind=zipf", "workload.response_len.kind"),
        ("workload.response_len.shape=2", "workload.response_len.shape"),
        ("workload.group_size=1000", "workload.group_size"),
        ("slots=4", "slots"),
        ("generation.prefill_pad_to=-1", "generation.prefill_pad_to"),
        ("generation.prefill_pow2_rows=true", "generation.prefill_pow2_rows"),
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ScenarioError) as err:
        Scenario().with_overrides([override])
    assert err.value.field == field
    assert repr(field) in str(err.value)


def test_bad_files_are_refused(tmp_path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[ledger\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(bad)
    with pytest.raises(ScenarioError) as err:
        from_dict({"ledger": {"batch_size": 0}})
    assert err.value.field == "ledger.batch_size"


def test_the_old_prefill_base_s_is_read_as_start_overhead_s(tmp_path) -> None:
    """A scenario file written before prefill passes (its per-start prefill_base_s) still
    loads, as the per-start cost it was; an override by the old name too; given beside
    the new name it is refused, naming it; what is written has the new name only."""
    old = tmp_path / "old.toml"
    old.write_text("[generation]\nprefill_base_s = 0.0015\nprefill_per_token_s = 0.0\n")
    scenario = load(old)
    assert scenario.generation.start_overhead_s == 0.0015 and scenario.generation.prefill_pass_s == 0.0
    assert Scenario().with_overrides(["generation.prefill_base_s=0.25"]).generation.start_overhead_s == 0.25
    with pytest.raises(ScenarioError) as err:
        from_dict({"generation": {"prefill_base_s": 0.1, "start_overhead_s": 0.2}})
    assert err.value.field == "generation.prefill_base_s" and "start_overhead_s" in str(err.value)
    text = (save(scenario, tmp_path / "new.toml")).read_text()
    assert "prefill_base_s =" not in text and "start_overhead_s = 0.0015" in text and "prefill_pass_s = 0.0" in text


def test_builtin_scenarios_load() -> None:
    for name in BUILTIN:
        assert isinstance(builtin(name), Scenario)
    with pytest.raises(ScenarioError, match="no built-in scenario"):
        builtin("nope")


def test_lognormal_sampler_matches_its_cdf() -> None:
    dist = Distribution(kind="lognormal", median=100.0, sigma=0.7, cap=300)
    draw = sampler(dist)
    rng = random.Random(1)
    draws = [draw(rng) for _ in range(20_000)]
    assert min(draws) >= 1 and max(draws) == 300
    for length in (50, 100, 200, 299):
        observed = sum(d <= length for d in draws) / len(draws)
        assert observed == pytest.approx(lognormal_cdf(dist, length), abs=0.015)
    assert lognormal_cdf(dist, 100) == pytest.approx(0.5, abs=0.01)
    assert lognormal_cdf(dist, 300) == 1.0


def test_empirical_lengths_from_csv(tmp_path) -> None:
    path = tmp_path / "lengths.csv"
    path.write_text("tokens\n10\n20\n30\n")
    assert load_lengths(path) == [10, 20, 30]
    draw = sampler(Distribution(kind="empirical", path=str(path)))
    assert {draw(random.Random(s)) for s in range(50)} == {10, 20, 30}
    path.write_text("tokens\n10\nmany\n")
    with pytest.raises(ScenarioError, match="line 3"):
        load_lengths(path, "workload.response_len")
    with pytest.raises(ScenarioError) as err:
        load_lengths(tmp_path / "none.csv", "workload.response_len")
    assert err.value.field == "workload.response_len.path"


def test_fixed_distribution_is_constant() -> None:
    draw = sampler(Distribution(kind="fixed", value=7))
    assert {draw(random.Random(s)) for s in range(10)} == {7}
    assert math.isinf(Scenario().run.max_time_s)


def test_an_empirical_path_in_a_file_is_relative_to_the_file(tmp_path) -> None:
    from sim.config import load

    (tmp_path / "lengths.csv").write_text("10\n20\n")
    (tmp_path / "scenario.toml").write_text('[workload]\nresponse_len = { kind = "empirical", path = "lengths.csv" }\n')
    scenario = load(tmp_path / "scenario.toml")
    assert scenario.workload.response_len.path == str(tmp_path / "lengths.csv")
    assert scenario.workload.prompt_len == Scenario().workload.prompt_len  # the other distribution is left as it was
