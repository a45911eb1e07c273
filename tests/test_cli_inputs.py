"""Bad input to any command: exit status 2 and one line, ``rollout-ledger: <input>:
<what is wrong>``, never a traceback; nonsense values are refused, not run."""

from __future__ import annotations

import pytest

from tests.test_cli_outputs import SMALL, one_line, status


@pytest.fixture
def not_utf8(tmp_path):
    path = tmp_path / "latin1"
    path.write_bytes(b"[run]\nseed = 1 # caf\xe9\n")
    return path


def test_a_log_that_is_not_utf8_is_named(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'\xff\xfe{"type": "paused"}\n')
    for argv in (["replay", str(path)], ["inspect", str(path), "r1"], ["import", str(path), str(tmp_path / "x.db")]):
        assert status(argv) == 2
        assert one_line(capsys).startswith(f"rollout-ledger: {path}: not UTF-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


@pytest.mark.parametrize("command", ["simulate", "sweep"])
def test_a_scenario_that_cannot_be_read_is_named(tmp_path, capsys, not_utf8, command):
    grid = ["--grid", "run.seed=1,2"] if command == "sweep" else []
    for scenario, problem in ((not_utf8, "not UTF-8"), (tmp_path, "is a directory"), (tmp_path / "no.toml", "no such scenario")):
        assert status([command, str(scenario), *SMALL, *grid, "--out" if grid else "--format", str(tmp_path / "out") if grid else "json"]) == 2
        line = one_line(capsys)
        assert line.startswith(f"rollout-ledger: {scenario}: ") and problem in line


def test_an_empirical_length_file_that_is_not_utf8_is_named(capsys, not_utf8):
    lengths = not_utf8.rename(not_utf8.with_suffix(".csv"))
    override = f"workload.response_len={{kind='empirical', path='{lengths}'}}"
    assert status(["simulate", *SMALL, "--compare", "1", "--set", override]) == 2
    line = one_line(capsys)
    assert "workload.response_len.path" in line and "not UTF-8" in line


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--grid", "run.seed=1,2", "--grid", "run.seed=3"], "'run.seed'"),
        (["--grid", "run.seed=1,1"], "'run.seed'"),
        (["--grid", "run.seed=1", "--workers", "0"], "--workers"),
        (["--grid", "run.seed=1", "--workers", "-3"], "--workers"),
    ],
)
def test_sweep_refuses_a_bad_grid_before_any_run(tmp_path, capsys, argv, named):
    assert status(["sweep", "default", *SMALL, "--out", str(tmp_path / "out"), *argv]) == 2
    assert named in one_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("compare", ["1,1", "1,01", "inf,unbounded", "-1", "x", ","])
def test_simulate_refuses_bad_bounds(capsys, compare):
    assert status(["simulate", *SMALL, "--compare", compare]) == 2
    assert "--compare" in one_line(capsys)


def test_a_negative_checkpoint_version_is_refused_by_replay(tmp_path, capsys):
    path = tmp_path / "neg.jsonl"
    path.write_text('{"type": "run_started", "config": {"max_concurrent": 4, "batch_size": 2}}\n'
                    '{"type": "checkpoint", "version": -1, "path": "w.pt"}\n')
    assert status(["replay", str(path)]) == 2
    line = one_line(capsys)
    assert str(path) in line and "line 2" in line and "negative" in line


@pytest.mark.parametrize(
    "option, value",
    [("--max-concurrent", "0"), ("--steps", "0"), ("--batch-size", "-1"), ("--group-size", "0"), ("--minibatches", "0"),
     ("--lr", "nan"), ("--sft-lr", "0"), ("--temperature", "inf"), ("--timeout", "-1"), ("--seed", "-1"), ("--seed", str(2**64)),
     ("--threads", "0"), ("--eval-size", "-1"), ("--ppo-epochs", "0"), ("--warmup-steps", "-1"), ("--max-retries", "-1"),
     ("--checkpoint-every", "-1"), ("--max-staleness", "-2"), ("--steps", "many")],
)
def test_train_refuses_nonsense_numbers_before_loading_a_model(tmp_path, capsys, option, value):
    assert status(["train", option, value, "--run-dir", str(tmp_path / "run")]) == 2
    assert f"argument {option}:" in one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_train_refuses_an_init_file_that_is_not_weights(tmp_path, capsys):
    bad = tmp_path / "weights.pt"
    bad.write_text('{"schema": 3}\n')
    run = tmp_path / "run"
    assert status(["train", "--init", str(bad), "--steps", "1", "--warmup-steps", "0", "--no-progress", "--run-dir", str(run)]) == 2
    assert one_line(capsys).startswith(f"rollout-ledger: {bad}: not a file of model weights")
    assert not run.exists()
    assert status(["train", "--init", str(tmp_path), "--run-dir", str(run)]) == 2
    assert "--init" in one_line(capsys)


def test_train_refuses_a_run_dir_that_is_a_file_or_a_broken_run_config(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    for run_dir in (file, file / "run"):
        assert status(["train", "--run-dir", str(run_dir)]) == 2
        assert str(run_dir) in one_line(capsys)
    saved = tmp_path / "old"
    saved.mkdir()
    for content in (b"\xff\xfe", b"[1, 2]", b"{\"steps\": -1}", b"{\"nonsense\": 1}"):
        (saved / "run.json").write_bytes(content)
        assert status(["train", "--resume", "--run-dir", str(saved)]) == 2
        assert one_line(capsys).startswith(f"rollout-ledger: {saved / 'run.json'}: not a run's config")


def test_a_run_config_refuses_what_no_run_can_use():
    from engine.workflows.rl_config import RunConfig

    for bad in ({"max_concurrent": 0}, {"max_staleness": -1}, {"lr": float("nan")}, {"seed": -1}, {"timeout_s": 0.0},
                {"warmup_batch": 0}, {"steps": True}, {"task": 3}, {"keep_cache": 1}, {"cuda_graphs": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RunConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--keep-cache is the in-process engines'"):
        RunConfig(engine="vllm", model_dir="model", keep_cache=True)
    with pytest.raises(ValueError, match="needs --device cuda .*got device 'cpu'\\)"):
        RunConfig(cuda_graphs=True)
    with pytest.raises(ValueError, match="model directory 'model'"):
        RunConfig(cuda_graphs=True, device="cuda", model_dir="model")
    RunConfig(cuda_graphs=True, device="cuda")  # the built-in policy on a GPU takes them


@pytest.mark.parametrize(
    "argv, named",
    [
        (["supervised", "--set", "num_epochs=-1"], "'num_epochs'"),
        (["supervised", "--set", "batch_size=0"], "'batch_size'"),
        (["preference", "--set", "beta=0"], "'beta'"),
        (["reward_model", "--set", "eval_size=0"], "'eval_size'"),
        (["reinforcement", "--set", "max_concurrent=0"], "'max_concurrent'"),
        (["reinforcement", "--set", "ppo_epochs=0"], "'ppo_epochs'"),
        (["rlhf", "--set", "sft.num_epochs=-1"], "'num_epochs'"),
        (["rlhf", "--set", "rl.steps=0"], "'steps'"),
        (["rlhf", "--set", "seed=-1"], "'seed'"),
        (["rlhf", "--set", "reward=3"], "'reward'"),
    ],
)
def test_run_refuses_a_config_value_no_run_can_use_before_it_starts(tmp_path, capsys, argv, named):
    log = tmp_path / "run.db"
    assert status(["run", *argv, "--log", str(log)]) == 2
    assert named in one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_a_log_it_cannot_write_before_it_starts(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    for log in (file / "run.db", tmp_path / "file" / "deeper" / "run.db"):
        assert status(["run", "supervised", "--log", str(log)]) == 2
        assert one_line(capsys).startswith(f"rollout-ledger: {log}: cannot be written")
    (tmp_path / "run.db.artifacts").write_text("x")  # where the run's files would go
    assert status(["run", "supervised", "--log", str(tmp_path / "run.db")]) == 2
    assert "run.db.artifacts" in one_line(capsys)
    assert status(["run", "supervised", "--resume", "--log", str(tmp_path)]) == 2
    assert "no run's log to resume" in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "run.db.artifacts"]


@pytest.mark.parametrize("content", [b"def (:\n", b"\xff\xfe\x00", b"raise RuntimeError('boom')\n", b"x = 1\n"])
def test_a_workflow_file_that_cannot_be_loaded_is_named(tmp_path, capsys, content):
    path = tmp_path / "flow.py"
    path.write_bytes(content)
    for command in ("run", "describe"):
        assert status([command, str(path)]) == 2
        assert one_line(capsys).startswith(f"rollout-ledger: {path}")


def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_bytes(b'{"lr": "caf\xe9"}')
    assert status(["run", "supervised", "--config", str(config)]) == 2
    assert one_line(capsys).startswith(f"rollout-ledger: {config}: not UTF-8")


@pytest.mark.parametrize(
    "override, field",
    [
        ("generation.prefill_per_token_s=1e308", "generation.prefill_per_token_s"),  # the clock overflowed and never stopped
        ("generation.step_base_s=nan", "generation.step_base_s"),
        ("workload.response_len={kind='lognormal', median=10.0, sigma=inf, cap=10}", "workload.response_len.sigma"),
        ("workload.response_len={kind='lognormal', median=inf, sigma=1.0, cap=10}", "workload.response_len.median"),
        ("workload.prompt_len={kind='fixed', value=100000000000000000000000}", "workload.prompt_len.value"),
        ("ledger.max_concurrent=0", "ledger.max_concurrent"),
        ("run.rollouts=-1", "run.rollouts"),
    ],
)
def test_simulate_refuses_values_no_simulation_can_use(capsys, override, field):
    assert status(["simulate", *SMALL, "--compare", "1", "--set", override]) == 2
    assert repr(field) in one_line(capsys)


def test_a_wide_lognormal_is_clipped_at_its_cap_instead_of_overflowing(capsys):
    wide = "workload.response_len={kind='lognormal', median=10.0, sigma=1e300, cap=10}"  # OverflowError before
    assert status(["simulate", *SMALL, "--compare", "1", "--format", "json", "--set", wide]) == 0


def test_a_malformed_meta_value_in_a_log_is_one_line(tmp_path, capsys):
    import sqlite3

    log = tmp_path / "run.db"
    source = tmp_path / "in.jsonl"
    source.write_text('{"type": "run_started", "config": {"max_concurrent": 4, "batch_size": 2}}\n')
    assert status(["import", str(source), str(log)]) == 0
    db = sqlite3.connect(log)
    db.execute("UPDATE meta SET value = 'abc' WHERE key = 'last_seq'")
    db.commit()
    db.close()
    capsys.readouterr()
    for argv in (["replay", str(log)], ["inspect", str(log), "r1"], ["export", str(log), "--jsonl", str(tmp_path / "out.jsonl")]):
        assert status(argv) == 2
        assert one_line(capsys).startswith(f"rollout-ledger: {log}")
    assert not (tmp_path / "out.jsonl").exists()


def test_the_console_command_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\n")
    for argv in (["replay", str(bad)], ["train", "--max-concurrent", "0"], ["export", str(bad), "--jsonl", str(bad)]):
        done = subprocess.run([sys.executable, "-m", "engine.cli", *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("rollout-ledger: "), done.stderr
    assert bad.read_bytes() == b"\xff\n"
