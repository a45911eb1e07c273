import asyncio
import itertools

import pytest
import torch

from engine.backends.local.generation import TorchEngine
from engine.backends.local.model import Policy, preset
from engine.backends.local.tasks import Tokenizer, get_task
from engine.core.config import Config
from engine.core.events import (
    InterruptedBatch,
    Rejected,
    ResumedBatch,
    Segment,
    Version,
)
from engine.core.reducer import capacity
from engine.ledger import Ledger
from engine.log import EventLog, replay
from engine.runtime.executor import RolloutExecutor
from engine.runtime.store import TrajectoryStore

NEVER = 99  # an end-of-sequence id never sampled: every completion runs to max_new_tokens


def _bound_check(state, event):
    """Debug-mode invariant: the capacity rule's limits hold after every event."""
    config = state.config
    if config is None:
        return
    assert state.running <= config.max_concurrent
    if config.max_staleness is not None:
        assert state.accepted + state.running <= (config.max_staleness + state.version + 1) * config.batch_size


def _executor(tmp_path, config, *, eos=None, failing=(), **options):
    torch.manual_seed(0)
    task, tokenizer = get_task("copy"), Tokenizer()
    model = Policy(preset("tiny", tokenizer.vocab_size, task.max_seq_len))
    engine = TorchEngine(model, slots=config.max_concurrent * 2, eos_id=tokenizer.eos_id if eos is None else eos, seed=0)
    ledger = Ledger(config, path=tmp_path / "events.sqlite", check=_bound_check)

    def problem_of(key):
        if key in failing:
            raise RuntimeError(f"cannot load prompt {key}")
        return task.problem(0, int(key[1:]))

    group_size = options.pop("group_size", 2)
    executor = RolloutExecutor(
        ledger, engine, task, tokenizer, problem_of, group_size=group_size, store=TrajectoryStore(tmp_path / "samples.sqlite"), **options
    )
    return executor, ledger, model


def _prompts():
    return (f"p{i}" for i in itertools.count())


def test_batches_respect_capacity_are_oldest_first_and_the_log_replays_to_the_live_state(tmp_path):
    config = Config(max_concurrent=4, batch_size=3, max_staleness=1)
    executor, ledger, model = _executor(tmp_path, config)

    async def scenario():
        executor.start()
        prompts = _prompts()
        batches = []
        for _ in range(3):
            ids, groups = await executor.prepare_batch(3, prompts)
            batches.append(ids)
            assert all(len(group) == 2 and all(s.completion for s in group) for group in groups)
            executor.pause()
            executor.set_version(model.state_dict())
            executor.resume()
        await executor.close()
        return batches

    batches = asyncio.run(scenario())
    consumed = [r for batch in batches for r in batch]
    assert len(set(consumed)) == 9 and ledger.state.consumed == 9 and ledger.state.version == 3
    ledger.flush()
    assert replay(tmp_path / "events.sqlite") == ledger.state
    ledger.close()


def test_a_failing_rollout_is_rejected_retried_once_and_gives_capacity_back(tmp_path):
    config = Config(max_concurrent=2, batch_size=2, max_staleness=0)
    executor, ledger, _ = _executor(tmp_path, config, failing={"p0"}, max_retries=1)

    async def scenario():
        executor.start()
        ids, _ = await executor.prepare_batch(2, _prompts())
        await executor.close()
        return ids

    ids = asyncio.run(scenario())
    assert "p0" not in ids and "p0#2" not in ids
    with EventLog(tmp_path / "events.sqlite", mode="r") as log:
        ledger.flush()
        rejected = [e for e in log.events() if isinstance(e, Rejected)]
    assert [(e.rollout, e.reason) for e in rejected] == [("p0", "error"), ("p0#2", "error")]  # one retry, no more
    assert ledger.state.rejected == 2 and ledger.state.consumed == 2
    # capacity as if the failed attempts had never been admitted: one synchronous batch, all consumed
    assert capacity(ledger.state) == 0 and ledger.state.running == 0
    ledger.close()


def test_a_rollout_that_times_out_is_rejected_with_reason_timeout(tmp_path):
    config = Config(max_concurrent=2, batch_size=1, max_staleness=0)
    executor, ledger, _ = _executor(tmp_path, config, timeout_s=0.05)

    async def scenario():
        executor.start()
        executor.engine.pause()  # generation stalls: the rollout cannot finish in time
        executor.submit("p0")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if ledger.state.rejected:
                break
        await executor.close()

    asyncio.run(scenario())
    assert ledger.state.rejected == 1 and ledger.state.running == 0 and capacity(ledger.state) == 1
    ledger.flush()
    with EventLog(tmp_path / "events.sqlite", mode="r") as log:
        assert [e.reason for e in log.events() if isinstance(e, Rejected)] == ["timeout"]
    ledger.close()


def test_a_weight_update_interrupts_rollouts_in_flight_and_they_resume_as_a_new_segment(tmp_path):
    config = Config(max_concurrent=2, batch_size=2, max_staleness=2)
    executor, ledger, model = _executor(tmp_path, config, eos=NEVER)

    async def scenario():
        executor.start()
        executor.submit("p0")
        executor.submit("p1")
        while executor.engine.decoded_tokens < 4:  # both rollouts are generating
            await asyncio.sleep(0)
        executor.pause()
        version = executor.set_version(model.state_dict())
        executor.resume()
        ids, groups = await executor.prepare_batch(2, iter(()))
        await executor.close()
        return version, ids, groups

    version, ids, groups = asyncio.run(scenario())
    assert version == 1
    for group in groups:
        for sample in group:
            assert sample.versions[0] == 0 and sample.versions[-1] == 1
            assert sample.versions == sorted(sample.versions)
    ledger.flush()
    with EventLog(tmp_path / "events.sqlite", mode="r") as log:
        events = [e for e in log.events() if isinstance(e, (Segment, InterruptedBatch, ResumedBatch, Version))]
    # one event closes both segments under version 0, one resumes both under version 1
    assert [type(e).__name__ for e in events[:3]] == ["InterruptedBatch", "Version", "ResumedBatch"]
    interruption, resumption = events[0], events[2]
    assert sorted(interruption.rollouts) == ["p0", "p1"] and interruption.version == 0
    assert all(tokens > 0 for tokens in interruption.tokens)  # both were generating
    assert resumption == ResumedBatch(interruption.rollouts, 1, resumption.t)
    # a rollout's two segments add up to the tokens its samples hold
    finals = {e.rollout: e.tokens for e in events[3:] if isinstance(e, Segment)}
    held = {rollout: sum(sample.tokens for sample in group) for rollout, group in zip(ids, groups)}
    for rollout, first in zip(interruption.rollouts, interruption.tokens):
        assert first + finals[rollout] == held[rollout]
    assert ledger.state.consumed == 2
    ledger.close()


def test_bad_executor_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="group_size must be at least 1, got 0"):
        _executor(tmp_path, Config(max_concurrent=1, batch_size=1), group_size=0)
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        (tmp_path / "second").mkdir()  # the first ledger was never closed: it still holds its log
        _executor(tmp_path / "second", Config(max_concurrent=1, batch_size=1), timeout_s=0)


def test_wait_returns_once_enough_rollouts_are_ready(tmp_path):
    config = Config(max_concurrent=3, batch_size=3, max_staleness=0)
    executor, ledger, _ = _executor(tmp_path, config)

    async def scenario():
        executor.start()
        for key in ("p0", "p1", "p2"):
            executor.submit(key)
        ready = await executor.wait(3, timeout=30)
        await executor.close()
        return ready

    assert asyncio.run(scenario()) == 3
    ledger.close()


def test_segment_wise_asks_for_recomputation_of_ready_rollouts_before_the_version_moves(tmp_path):
    config = Config(max_concurrent=4, batch_size=2, max_staleness=2, policy="segment_wise")
    executor, ledger, model = _executor(tmp_path, config)
    asked = []

    async def scenario():
        executor.start()
        for key in ("p0", "p1", "p2", "p3"):
            executor.submit(key)
        await executor.wait(4, timeout=30)
        ids, _ = await executor.prepare_batch(2, iter(()))
        for _ in range(2):
            executor.pause()
            executor.set_version(model.state_dict(), recompute=asked.append)
            executor.resume()
        await executor.close()
        return ids

    consumed = asyncio.run(scenario())
    left = {"p0", "p1", "p2", "p3"} - set(consumed)
    # at the first bump (0 to 1) they are fresh; before the second (1 to 2) their tail is one behind
    assert len(asked) == 1 and set(asked[0]) == left
    assert all(ledger.state.rollouts[r].recomputed_version == 1 for r in left)  # so they survive the purge
    ledger.close()


def test_the_trainer_takes_a_finished_batch_before_the_engine_steps_again(tmp_path):
    """Through the run's loop (as a trainer collects), each batch comes back at the
    engine step on which a sample last finished: no decode step runs between a batch
    being complete and the trainer taking it (an engine that steps in between runs
    ahead of the trainer; with rollouts started at different updates, other
    sequences are still busy at most returns, so such a step would show)."""
    from engine.backends.local import generation
    from engine.workflows.rl_loop import RunLoop

    config = Config(max_concurrent=8, batch_size=2, max_staleness=3)
    executor, ledger, model = _executor(tmp_path, config)  # the untrained model's lengths differ
    engine = executor.engine
    ended_at: list[int] = []
    finished = engine._finished

    def note(handle):
        finished(handle)
        ended_at.append(engine.steps)

    engine._finished = note
    loop = RunLoop()

    async def start():
        executor.start()

    loop.run(start())
    prompts, gaps, busy_at_return = _prompts(), [], 0
    for _ in range(10):
        waited = ledger.state.ready < 2
        loop.run(executor.prepare_batch(2, prompts))
        if waited:
            gaps.append(engine.steps - ended_at[-1])
            busy_at_return += engine.busy > 0
        executor.pause()
        executor.set_version(model.state_dict())
        executor.resume()
    loop.run(executor.close())
    loop.loop.close()
    assert gaps and busy_at_return >= 2
    assert gaps == [0] * len(gaps), f"engine steps between a batch's end and its collection: {gaps}"
    assert generation.SETTLE_TURNS >= 1


def test_drain_returns_once_no_rollout_in_flight_is_generating(tmp_path):
    """Two rollouts submitted: drain returns with both complete and none running; with
    the engine paused it keeps waiting (a rollout still generating)."""
    config = Config(max_concurrent=2, batch_size=2, max_staleness=1)
    executor, ledger, _ = _executor(tmp_path, config)

    async def scenario():
        executor.start()
        executor.engine.pause()
        executor.submit("p0")
        executor.submit("p1")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(executor.drain(), 0.2)
        executor.engine.resume()
        await asyncio.wait_for(executor.drain(), 60)
        done = (ledger.state.running, executor.ready())
        await executor.close()
        return done

    assert asyncio.run(scenario()) == (0, 2)
    ledger.close()
