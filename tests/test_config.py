import pytest

from engine.core.config import Config, ConfigError


def test_defaults():
    config = Config.from_json({"max_concurrent": 8, "batch_size": 4})
    assert (config.max_staleness, config.policy, config.on_stale, config.dp_size) == (None, "admission", "drop", 1)


@pytest.mark.parametrize(
    "values, field",
    [
        ({"max_concurrent": -1, "batch_size": 4}, "max_concurrent"),
        ({"max_concurrent": 8, "batch_size": 0}, "batch_size"),
        ({"max_concurrent": 8, "batch_size": 4, "max_staleness": -2}, "max_staleness"),
        ({"max_concurrent": 8, "batch_size": 4, "policy": "greedy"}, "policy"),
        ({"max_concurrent": 8, "batch_size": 4, "on_stale": "ignore"}, "on_stale"),
        ({"max_concurrent": 8, "batch_size": 4, "dp_size": 0}, "dp_size"),
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
