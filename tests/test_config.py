from dataclasses import MISSING, asdict, fields

import pytest

from engine.core.config import Config, ConfigError

# The defaults the design documents for a run's config (DESIGN.md: "config fields not
# given take documented defaults (policy = "admission", max_staleness = null, dp_size =
# 1)"; the Config docstring: on_stale drops), stated here apart from the code.
DOCUMENTED_DEFAULTS = {"max_staleness": None, "policy": "admission", "on_stale": "drop", "dp_size": 1, "in_order": False}


def test_fields_not_given_take_the_documented_defaults():
    config = Config.from_json({"max_concurrent": 8, "batch_size": 4})
    assert asdict(config) == {"max_concurrent": 8, "batch_size": 4, **DOCUMENTED_DEFAULTS}
    # in the log's JSON, in_order only when set: logs of the other runs are written as before it existed
    written = {"max_concurrent": 8, "batch_size": 4, **DOCUMENTED_DEFAULTS}
    del written["in_order"]
    assert config.to_json() == written
    assert Config.from_json(config.to_json()) == config
    optional = {f.name for f in fields(Config) if f.default is not MISSING or f.default_factory is not MISSING}
    assert optional == set(DOCUMENTED_DEFAULTS)  # a new optional field needs a documented default


def test_given_values_replace_every_default():
    given = {"max_concurrent": 8, "batch_size": 4, "max_staleness": 3, "policy": "strict", "on_stale": "requeue", "dp_size": 2,
             "in_order": True}
    assert all(given[name] != default for name, default in DOCUMENTED_DEFAULTS.items())
    assert Config.from_json(given).to_json() == given


@pytest.mark.parametrize(
    "values, field",
    [
        ({"max_concurrent": -1, "batch_size": 4}, "max_concurrent"),
        ({"max_concurrent": 8, "batch_size": 0}, "batch_size"),
        ({"max_concurrent": 8, "batch_size": 4, "max_staleness": -2}, "max_staleness"),
        ({"max_concurrent": 8, "batch_size": 4, "policy": "greedy"}, "policy"),
        ({"max_concurrent": 8, "batch_size": 4, "on_stale": "ignore"}, "on_stale"),
        ({"max_concurrent": 8, "batch_size": 4, "dp_size": 0}, "dp_size"),
        ({"max_concurrent": 8, "batch_size": 4, "in_order": "yes"}, "in_order"),
        ({"max_concurrent": 8, "batch_size": 4, "in_order": 1}, "in_order"),
        ({"max_concurrent": 8, "batch_size": 4, "max_concurent": 3}, "max_concurent"),
        ({"max_concurrent": 8.5, "batch_size": 4}, "max_concurrent"),
        ({"batch_size": 4}, "max_concurrent"),
    ],
)
def test_bad_config_is_refused_naming_the_field(values, field):
    with pytest.raises(ConfigError) as info:
        Config.from_json(values)
    assert info.value.field == field
    assert repr(field) in str(info.value)


def test_per_rank_limits():
    config = Config(max_concurrent=10, batch_size=3, dp_size=4)
    assert (config.rank_max_concurrent, config.rank_batch_size) == (2, 1)
