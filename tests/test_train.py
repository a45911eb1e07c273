import gc
import json
import shutil
import time

import pytest

from engine.cli import main
from engine.log import replay
from engine.workflows import rl_stages
from engine.workflows.reinforcement import train
from engine.workflows.rl_config import RunConfig
from engine.workflows.rl_run import RLRun

TINY = ["--device", "cpu", "--model-size", "tiny", "--no-progress"]


def test_train_command_runs_on_cpu_and_writes_metrics_log_checkpoints_and_a_summary(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status = main(["train", "--task", "copy", "--steps", "4", "--batch-size", "4", "--group-size", "2", "--max-staleness", "2",
                   "--warmup-steps", "5", "--run-dir", str(run_dir), *TINY])
    assert status == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["consumed"] == 16 and summary["trained_tokens"] > 0
    assert 0 <= summary["engine_overhead"] < 1 and 0 < summary["gc_overhead"] < 1
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert {m["decodes_every_slot"] for m in lines} == {True}  # the built-in engine decodes its whole cache
    assert all(m["checkpoint_s"] > 0 for m in lines)  # a checkpoint every update, by default, and its time
    assert summary["checkpoint_overhead"] == pytest.approx(sum(m["checkpoint_s"] for m in lines) / summary["wall_s"], rel=0.02)
    assert 0 < lines[0]["gc_s"] < lines[-1]["gc_s"]  # the collector ran after every update
    assert gc.isenabled() and gc.get_freeze_count() == 0  # and the process has its own back
    assert all(m["staleness_max"] <= 2 + 1 for m in lines)  # admission bounds staleness at the start (plus the in-flight update)
    state = replay(run_dir / "events.sqlite")
    assert state.version == 4 and state.consumed == 16 and state.checkpoint.version == 4
    assert (run_dir / "checkpoints" / "ckpt-000004.safetensors").exists()


@pytest.mark.parametrize("policy", ["strict", "segment_wise"])
def test_every_policy_and_objective_trains(tmp_path, capsys, policy):
    status = main(["train", "--task", "copy", "--steps", "3", "--batch-size", "4", "--group-size", "2", "--max-staleness", "1",
                   "--policy", policy, "--objective", "ppo" if policy == "strict" else "decoupled", "--warmup-steps", "2",
                   "--run-dir", str(tmp_path / policy), *TINY])
    assert status == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3


def test_reward_rises_on_the_easy_task_with_a_fixed_seed(tmp_path, capsys):
    status = main(["train", "--task", "copy", "--steps", "60", "--batch-size", "8", "--group-size", "8", "--max-staleness", "1",
                   "--warmup-steps", "150", "--lr", "3e-4", "--seed", "0", "--eval-size", "256", "--checkpoint-every", "100",
                   "--run-dir", str(tmp_path / "rise"), *TINY])
    assert status == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["eval_reward_after"] > summary["eval_reward_before"] + 0.03
    lines = [json.loads(line) for line in (tmp_path / "rise" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["checkpoint_s"] > 0] == [60]  # only the last update was due


def test_bad_arguments_exit_2_with_a_message_naming_them(tmp_path, capsys):
    assert main(["train", "--task", "nope", "--run-dir", str(tmp_path / "a"), *TINY]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["train", "--policy", "admission", "--batch-size", "0", "--run-dir", str(tmp_path / "b"), *TINY]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "missing"), *TINY]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_rl_run_steps_collect_evaluate_checkpoint_and_close(tmp_path):
    run = RLRun(RunConfig(task="copy", steps=2, batch_size=2, group_size=2, warmup_steps=2, max_staleness=1), tmp_path / "r")
    run.setup()
    try:
        assert not gc.isenabled()  # gc="update": collections happen between updates only
        batch = run.collect_batch()
        assert len(batch.rollouts) == 2 and batch.tokens > 0 and run.ledger.state.consumed == 2
        before, start = run.elapsed(), time.perf_counter()
        assert 0.0 <= run.evaluate(8) <= 1.0
        spent = time.perf_counter() - start
        assert run.elapsed() - before < spent / 2  # evaluation is not training time
        assert run.save_checkpoint().exists()
        assert run.summary()["consumed"] == 2
    finally:
        run.close()
    assert gc.isenabled()


def test_updates_compose_from_the_workflow_stages_and_write_one_metrics_line_each(tmp_path):
    run_dir = tmp_path / "r"
    summary = train(RunConfig(task="copy", steps=2, batch_size=2, group_size=2, warmup_steps=2, max_staleness=1), run_dir,
                    progress=False)
    assert summary["steps"] == 2 and summary["consumed"] == 4
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2] and all(m["trained_tokens"] > 0 for m in lines)
    assert gc.isenabled()


def test_gc_auto_leaves_the_collector_alone_and_times_it(tmp_path, monkeypatch):
    config = RunConfig(task="copy", steps=2, batch_size=2, group_size=2, warmup_steps=1, max_staleness=0, gc="auto")
    seen = []
    finish = rl_stages.FinishUpdate.execute

    def checked(self, ctx):
        result = finish(self, ctx)
        collector = ctx.get("rl_run").collector
        seen.append((gc.isenabled(), gc.get_freeze_count(), result.get("update_record")["gc_s"], collector.seconds, collector.collections))
        return result

    monkeypatch.setattr(rl_stages.FinishUpdate, "execute", checked)
    summary = train(config, tmp_path / "r", progress=False)
    assert len(seen) == 2
    for enabled, frozen, gc_s, seconds, collections in seen:
        assert enabled and frozen == 0  # Python's own schedule, nothing frozen
        assert gc_s == seconds  # the metrics line reports the collector's time
        assert collections == 0  # nothing called for
    assert 0 <= summary["gc_overhead"] < 1
    assert gc.isenabled()


def _stage_paths(log, suffix):
    from engine.core.events import Stage
    from engine.log import EventLog

    with EventLog(log) as events:
        return [e.path for e in events.events() if isinstance(e, Stage) and e.phase == "finished" and e.path.endswith(suffix)]


SMALL = ["--task", "copy", "--batch-size", "4", "--group-size", "2", "--max-staleness", "1", "--warmup-steps", "2"]


def test_train_runs_the_reinforcement_workflow_and_a_resume_keeps_its_ppo_epochs(tmp_path, capsys):
    run_dir = tmp_path / "wf"
    assert main(["train", *SMALL, "--steps", "2", "--ppo-epochs", "2", "--run-dir", str(run_dir), *TINY]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    assert _stage_paths(run_dir / "workflow.sqlite", "/finish_update") == [f"reinforcement/iterations[{i}]/finish_update" for i in range(2)]
    assert main(["train", "--resume", "--steps", "3", "--run-dir", str(run_dir), *TINY]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
    passes = _stage_paths(run_dir / "workflow.sqlite", "/forward_backward")
    assert [p for p in passes if p.startswith("reinforcement/iterations[2]/")] == [
        f"reinforcement/iterations[2]/ppo_epochs[{e}]/minibatches[0]/forward_backward" for e in range(2)
    ]
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resume_continues_a_run_that_has_no_workflow_checkpoint(tmp_path, capsys):
    train(RunConfig(task="copy", steps=2, batch_size=4, group_size=2, warmup_steps=2, max_staleness=1), tmp_path / "r", progress=False)
    (tmp_path / "r" / "workflow.sqlite").unlink()  # as if the RL run had been made without the workflow
    shutil.rmtree(tmp_path / "r" / "workflow.sqlite.checkpoints")
    assert main(["train", "--resume", "--steps", "4", "--run-dir", str(tmp_path / "r"), *TINY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["consumed"] == 16
    assert [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_the_progress_bar_shows_reward_and_staleness_unless_no_progress(tmp_path, capsys):
    args = ["train", *SMALL, "--steps", "2", "--device", "cpu", "--model-size", "tiny"]
    assert main([*args, "--run-dir", str(tmp_path / "bar")]) == 0
    assert "reward=" in capsys.readouterr().err
    assert main([*args, "--run-dir", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert "reward=" not in capsys.readouterr().err


def test_a_new_run_in_a_used_run_dir_exits_2_and_leaves_its_logs_alone(tmp_path, capsys):
    run_dir = tmp_path / "used"
    assert main(["train", *SMALL, "--steps", "1", "--run-dir", str(run_dir), *TINY]) == 0
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.sqlite")}
    capsys.readouterr()
    assert main(["train", *SMALL, "--steps", "1", "--run-dir", str(run_dir), *TINY]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.sqlite")} == before


def test_evaluation_decodes_in_as_few_waves_as_the_runs_slots_allow(tmp_path, monkeypatch):
    """The held-out engine gets the run's slots (at least 64), capped by the problems: on
    a run of 128 slots (64 in flight x 2 samples) 200 problems get 128 and 20 get 20; on
    a run of 8 slots the floor of 64 holds."""
    sizes = []
    build = RLRun.build_engine

    def spy(self, model, slots, seed, temperature=None):
        sizes.append(slots)
        return build(self, model, slots, seed, temperature)

    monkeypatch.setattr(RLRun, "build_engine", spy)
    for concurrent, counts, expected in ((64, (200, 20), [128, 20]), (4, (200,), [64])):
        run = RLRun(RunConfig(task="copy", steps=1, batch_size=2, group_size=2, max_concurrent=concurrent, warmup_steps=0,
                              max_staleness=1), tmp_path / f"r{concurrent}")
        run.setup()
        try:
            sizes.clear()
            for count in counts:
                run.evaluate(count)
            assert sizes == expected
        finally:
            run.close()


def test_an_updates_metrics_line_counts_the_groups_whose_rewards_differ():
    """``signal_groups``: the share of the batch's groups with a non-zero GRPO advantage
    (a group whose samples all scored alike teaches nothing)."""
    from types import SimpleNamespace

    from engine.runtime.ports import Sample
    from engine.workflows.rl_models import update_record
    from engine.workflows.rl_update import CollectedBatch

    def group(*rewards):
        return [Sample([1], [2, 3], [-0.1, -0.2], [0, 0], r) for r in rewards]

    batch = CollectedBatch(("a", "b", "c", "d"), [group(1.0, 1.0), group(0.0, 1.0), group(0.0, 0.0), group(0.25, 0.5)])
    state = SimpleNamespace(version=1, rejected=0, filtered=0)
    executor = SimpleNamespace(ledger_seconds=0.0, store_seconds=0.0)
    engine = SimpleNamespace(decoded_tokens=8, steps=2)
    record = update_record(state, batch, 0.5, 0, executor=executor, engine=engine, steps=[{"loss": 0.0}], wall_s=1.0,
                           gc_s=0.0, slots=8, sync_s=0.0, step_s=0.0, recompute_s=0.0)
    assert record["signal_groups"] == 0.5
    assert record["exact"] == 3 / 8 and record["trained_tokens"] == 16
    assert record["padded_tokens"] == 8 * 3 and record["pad_to"] == 1  # eight rows of a prompt and two tokens
    rounded = update_record(state, batch, 0.5, 0, executor=executor, engine=engine, steps=[{"loss": 0.0}], wall_s=1.0,
                            gc_s=0.0, slots=8, sync_s=0.0, step_s=0.0, recompute_s=0.0, max_width=128)
    assert rounded["padded_tokens"] == 8 * 16 and rounded["pad_to"] == 16  # the trainer's width rule, as pad_samples pads
    from engine.backends.local.trainer import pad_samples

    assert tuple(pad_samples(batch.samples, 0, "cpu", 128).tokens.shape) == (8, 16)
