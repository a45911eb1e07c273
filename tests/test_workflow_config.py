"""A run's TOML config: ``run``/``describe --config run.toml --set key=value``, with
the error policies it sets; unknown keys and stages are refused, listing the known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_describe_shows_the_plan_resolved_from_a_toml_config_and_set(tmp_path, capsys):
    config = _toml(tmp_path, 'num_epochs = 3\nbatch_size = 8\n\n[on_error]\nevaluate = "skip"\n"*" = "retry(2, 0.1)"\n')
    assert main(["describe", "supervised", "--config", config, "--set", "batch_size=4"]) == 0
    out = capsys.readouterr().out
    assert "  num_epochs = 3\n" in out and "  batch_size = 4\n" in out and "  eval_every = 1\n" in out
    assert "  evaluate: skip\n" in out and "  *: retry(max_attempts=2, backoff=0.1)\n" in out
    assert main(["describe", "supervised", "--json", "--config", config]) == 0
    resolved = json.loads(capsys.readouterr().out)["resolved"]
    assert resolved["config"]["batch_size"] == 8 and resolved["on_error"]["evaluate"] == "skip"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("num_epoch = 3\n", "unknown config key(s) 'num_epoch'; known: "),
        ('[on_error]\nevaluat = "skip"\n', "unknown stage(s) 'evaluat'; known: await_fb, await_optim, build_dataset, checkpoint"),
        ('on_error = "sometimes"\n', "bad error policy 'sometimes'"),
        ("num_epochs = [\n", "run.toml: not valid TOML"),
    ],
)
def test_bad_configs_are_refused_in_one_line(tmp_path, capsys, text, message):
    assert main(["describe", "supervised", "--config", _toml(tmp_path, text)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_run_refuses_an_unknown_stage_policy_before_writing_a_log(tmp_path, capsys):
    log = tmp_path / "run.db"
    config = _toml(tmp_path, '[on_error]\nnope = "skip"\n')
    assert main(["run", "supervised", "--config", config, "--log", str(log)]) == 2
    assert "unknown stage(s) 'nope'" in capsys.readouterr().err and not log.exists()
