"""Scenario files written with the one TOML writer (sim.tomlfile) read back equal:
any scenario the product can build, with field values drawn from the config
dataclasses' own types (floats with ``-inf``, ``inf`` and ``nan``, strings with
newlines, quotes, control characters and unicode, 64-bit integers)."""

from __future__ import annotations

import math
import shutil
import tempfile
import tomllib
import types
import typing
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import properties.profiles  # noqa: F401  (registers and loads the Hypothesis profile)
from engine.core.config import ON_STALE, POLICIES
from sim import tomlfile
from sim.config import (
    DISTRIBUTIONS,
    ON_UPDATE,
    Distribution,
    Scenario,
    ScenarioError,
    _coerce,
    from_dict,
    load,
    save,
    to_toml,
)
from sim.scenarios import builtin

#: The strings the validation accepts for the fields that name a choice.
CHOICES = {"policy": POLICIES, "on_stale": ON_STALE, "on_update": ON_UPDATE, "kind": DISTRIBUTIONS}
NASTY = '\n\r\t"\'\\\x00\x01\x1b\x7f\u00e9\u2028\U0001d11e#=[]{}'

INTS = st.one_of(st.integers(0, 10_000), st.integers(tomlfile.INT_MIN, tomlfile.INT_MAX))
FLOATS = st.one_of(st.sampled_from([-math.inf, math.inf, math.nan, -0.0]), st.floats(0, 1e4), st.floats())
TEXT = st.one_of(st.text(), st.text(alphabet=st.sampled_from(NASTY + "az./"), min_size=1))


def strategy(hint: Any, name: str = "") -> st.SearchStrategy[Any]:
    """Values of the type ``hint`` (the annotation of the config field ``name``); an
    unknown type fails the test, so a new kind of field cannot go untested."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return st.none()
    if hint is str and name in CHOICES:  # mostly a choice the validation accepts
        return st.sampled_from([*CHOICES[name], None]).flatmap(lambda choice: TEXT if choice is None else st.just(choice))
    if hint in (bool, int, float, str):
        return {bool: st.booleans(), int: INTS, float: FLOATS, str: TEXT}[hint]
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy(arg) for arg in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy(args[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy(arg) for arg in args))
    if isinstance(hint, type) and is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return st.builds(hint, **{f.name: strategy(hints[f.name], f.name) for f in fields(hint)})
    raise TypeError(f"no strategy for a config field of type {hint!r}")


def leaves(cls: type, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """The path and type of every field of the config dataclass ``cls`` that is not
    itself a dataclass (``("workload", "prompt_len", "median")``)."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[tuple[str, ...], Any]] = []
    for item in fields(cls):
        hint = hints[item.name]
        if isinstance(hint, type) and is_dataclass(hint):
            out.extend(leaves(hint, (*path, item.name)))
        else:
            out.append(((*path, item.name), hint))
    return out


def with_value(config: Any, path: tuple[str, ...], value: Any) -> Any:
    """``config`` with the field at ``path`` set to ``value`` (each level validated as it is rebuilt)."""
    inner = value if len(path) == 1 else with_value(getattr(config, path[0]), path[1:], value)
    return replace(config, **{path[0]: inner})


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A scenario the product can build: from a built-in one, fields in a random order
    set to a value of their type, each kept when the scenario's validation accepts it
    (two passes, so that e.g. an empirical ``kind`` can follow its ``path``)."""
    scenario = draw(st.sampled_from([Scenario(), builtin("areal")]))
    order = leaves(Scenario)
    for path, hint in [*draw(st.permutations(order)), *draw(st.permutations(order))]:  # twice: a field can need another first
        if draw(st.booleans()):
            try:
                scenario = with_value(scenario, path, draw(strategy(hint, path[-1])))
            except ScenarioError:
                continue
    return scenario


def same(a: Any, b: Any) -> bool:
    """Equal, with ``nan`` equal to ``nan``, ``-0.0`` told from ``0.0`` and types kept."""
    if is_dataclass(a):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def absolute_paths(scenario: Scenario) -> Scenario:
    """``scenario`` as a file names it: relative empirical paths made absolute (``save``'s rule)."""
    def absolute(dist: Distribution) -> Distribution:
        if dist.kind == "empirical" and not Path(dist.path).is_absolute():
            return replace(dist, path=str(Path.cwd() / dist.path))
        return dist

    workload = scenario.workload
    return replace(scenario, workload=replace(workload, prompt_len=absolute(workload.prompt_len), response_len=absolute(workload.response_len)))


@given(scenarios())
def test_any_scenario_reads_back_equal_from_its_toml(scenario: Scenario) -> None:
    assert same(from_dict(tomllib.loads(to_toml(scenario))), scenario)


@given(scenarios())
def test_any_scenario_saved_to_a_file_loads_back_equal(scenario: Scenario) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = save(scenario, Path(directory) / "scenario.toml")
        assert same(load(path), absolute_paths(scenario))


def test_minus_inf_survives_a_file(tmp_path: Path) -> None:
    dist = Distribution(kind="fixed", value=3, median=-math.inf, sigma=math.inf)
    scenario = replace(Scenario(), workload=replace(Scenario().workload, prompt_len=dist))
    assert "median = -inf" in to_toml(scenario)
    loaded = load(save(scenario, tmp_path / "s.toml"))
    assert loaded.workload.prompt_len.median == -math.inf and loaded.workload.prompt_len.sigma == math.inf
    assert loaded.run.max_time_s == math.inf


def test_strings_with_newlines_and_quotes_and_unbounded_staleness_survive(tmp_path: Path) -> None:
    path = 'runs/"odd"\nname\\é\x00.csv'
    dist = Distribution(kind="empirical", path="/data/" + path)
    scenario = replace(Scenario(), workload=replace(Scenario().workload, response_len=dist)).with_overrides(["ledger.max_staleness=inf"])
    loaded = load(save(scenario, tmp_path / "s.toml"))
    assert loaded == scenario and loaded.ledger.max_staleness is None


def test_a_relative_empirical_path_still_names_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    scenario = Scenario().with_overrides(["workload.prompt_len={kind='empirical', path='lengths.csv'}"])
    (tmp_path / "elsewhere").mkdir()
    loaded = load(save(scenario, tmp_path / "elsewhere" / "s.toml"))
    assert loaded.workload.prompt_len.path == str(tmp_path / "lengths.csv")


def test_a_scenario_and_the_lengths_beside_it_move_together(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    (here / "s.lengths.csv").write_text("response_tokens\n3\n5\n")
    scenario = Scenario().with_overrides([f"workload.response_len={{kind='empirical', path='{here / 's.lengths.csv'}'}}"])
    save(scenario, here / "s.toml")
    assert "path = \"s.lengths.csv\"" in (here / "s.toml").read_text()
    shutil.copytree(here, there)
    shutil.rmtree(here)
    assert load(there / "s.toml").workload.response_len.path == str(there / "s.lengths.csv")


def test_an_integer_toml_cannot_hold_is_refused_naming_the_field() -> None:
    scenario = replace(Scenario(), run=replace(Scenario().run, seed=2**64))
    with pytest.raises(ScenarioError) as refused:
        to_toml(scenario)
    assert refused.value.field == "run.seed" and "64-bit" in str(refused.value)


def test_save_replaces_a_file_whole_and_leaves_no_partial(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("old")
    save(Scenario(), path)
    assert load(path) == Scenario()
    with pytest.raises(ScenarioError):
        save(replace(Scenario(), run=replace(Scenario().run, seed=-(2**70))), path)
    assert load(path) == Scenario() and sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_the_writer_writes_tuples_as_arrays_and_refuses_none_naming_the_key() -> None:
    text = tomlfile.dumps({"t": {"pair": (1, "a\nb"), "nested": ((-math.inf,), {"k": (True,)})}}, {"t.pair": "two\nlines"})
    assert "# two\n# lines\n" in text
    assert tomllib.loads(text) == {"t": {"pair": [1, "a\nb"], "nested": [[-math.inf], {"k": [True]}]}}
    for value, key in ((None, "t.x"), ((1, None), "t.x[1]"), ({"k": None}, "t.x.k"), (object(), "t.x")):
        with pytest.raises(tomlfile.TomlValueError) as refused:
            tomlfile.dumps({"t": {"x": value}})
        assert refused.value.key == key


def test_an_array_reads_back_as_the_tuple_a_field_expects() -> None:
    assert _coerce("section.pair", [1, 2], (0, 0)) == (1, 2)
    with pytest.raises(ScenarioError, match="must be an array"):
        _coerce("section.pair", 3, (0, 0))
