"""Environment groups run concurrently up to ``rollout_parallelism``, and the run's
staleness policy applies to multi-turn episodes segment by segment through the ledger.

The workflow tests instrument the environments (which group took which turn when); the
pool tests drive :class:`~engine.runtime.episodes.EpisodeGroups` with an engine whose
generation calls finish only when the test says so, so a weight update lands between
two turns of an episode by construction, not by timing."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from engine.cli import main
from engine.core.config import Config
from engine.core.events import Consumed, Filtered, Rejected, Segment
from engine.core.reducer import fold
from engine.ledger import Ledger
from engine.log import EventLog
from engine.runtime.environments import GuessEnvironment
from engine.runtime.episodes import EpisodeGroups
from engine.runtime.ports import GenerationHandle, StepResult
from engine.workflow import run
from engine.workflows import environments
from properties.invariants import InvariantChecker, capacity_recovery


# -- the workflow: real engines, instrumented environments ----------------------------------------


def traced_run(tmp_path, monkeypatch, parallelism):
    """Run ``environments`` with 3 groups a step; returns the trace of (event, group seed)
    and the ledger's events."""
    trace = []

    class Traced(GuessEnvironment):
        def reset(self, seed):
            self._seed = seed
            trace.append(("reset", seed))
            return super().reset(seed)

        def step(self, action):
            result = super().step(action)
            trace.append(("done" if result.done else "turn", self._seed))
            return result

    monkeypatch.setattr(environments, "GuessEnvironment", Traced)
    log = tmp_path / f"p{parallelism}" / "run.sqlite"
    log.parent.mkdir()
    settings = {"env": "guess", "turns": 3, "steps": 2, "group_size": 2, "groups_per_step": 3, "rollout_parallelism": parallelism}
    result = run(environments.WORKFLOW, settings, log=str(log))
    with EventLog(next(log.parent.rglob("events.sqlite"))) as ledger_log:
        events = list(ledger_log.events())
    return result, trace, events


def in_flight(trace, group_size):
    """The most groups that had begun (an episode reset) and not ended (all episodes done) at once."""
    started, done, live, peak = Counter(), Counter(), set(), 0
    for kind, seed in trace:
        if kind == "reset":
            started[seed] += 1
            live.add(seed)
        elif kind == "done":
            done[seed] += 1
            if done[seed] == group_size:
                live.discard(seed)
        peak = max(peak, len(live))
    return peak


def bookkeeping(events):
    return Counter(e.type for e in events if not isinstance(e, Segment)), fold(events)


def test_groups_run_concurrently_up_to_rollout_parallelism_with_the_sequential_bookkeeping(tmp_path, monkeypatch):
    sequential, trace_1, events_1 = traced_run(tmp_path, monkeypatch, 1)
    parallel, trace_3, events_3 = traced_run(tmp_path, monkeypatch, 3)
    assert in_flight(trace_1, 2) == 1
    assert in_flight(trace_3, 2) == 3  # three groups' turns interleave
    # interleaving, not one group after another: some group takes a turn between two of another's
    order = [seed for kind, seed in trace_3 if kind != "reset"]
    assert any(order[i] != order[i + 1] and order[i] in order[i + 2 :] for i in range(len(order) - 1))
    assert parallel.state["rollouts"] is None  # closed by cleanup
    counts_1, state_1 = bookkeeping(events_1)
    counts_3, state_3 = bookkeeping(events_3)
    assert counts_1 == counts_3 and counts_1["consumed"] == 2 and counts_1["accepted"] == 6
    assert (state_1.version, state_1.consumed, state_1.submitted) == (state_3.version, state_3.consumed, state_3.submitted) == (2, 6, 6)
    # each group's engine is seeded by its problem: the same tokens whatever ran beside it
    assert [m["loss"] for m in sequential.context.metrics if "loss" in m] == pytest.approx(
        [m["loss"] for m in parallel.context.metrics if "loss" in m])
    assert sorted(e for e in events_1 if isinstance(e, Segment)) == sorted(e for e in events_3 if isinstance(e, Segment))


def test_rollout_parallelism_is_a_validated_setting_describe_shows(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("rollout_parallelism = 4\ngroups_per_step = 2\npolicy = \"segment_wise\"\nmax_staleness = 1\n")
    assert main(["describe", "environments", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "rollout_parallelism" in out and "4" in out and "segment_wise" in out
    assert main(["run", "environments", "--config", str(config), "--set", "rollout_parallelism=0", "--log", str(tmp_path / "x.sqlite")]) == 2
    assert "'rollout_parallelism' must be a whole number of at least 1, got 0" in capsys.readouterr().err
    assert main(["run", "environments", "--set", "policy=lenient", "--log", str(tmp_path / "y.sqlite")]) == 2
    assert "'policy' must be one of admission, strict, segment_wise" in capsys.readouterr().err


# -- the pool: an engine the test steps ----------------------------------------------------------


class SteppedEngine:
    """A generation engine whose calls finish when the test calls :meth:`finish`: one token
    per call, sampled under the engine's version at that moment."""

    def __init__(self) -> None:
        self.version = 0
        self.waiting: list[GenerationHandle] = []
        self.closed = asyncio.Event()

    def submit(self, prompt, max_new_tokens, *, stream=False):
        handle = GenerationHandle(prompt, max_new_tokens, stream)
        self.waiting.append(handle)
        return handle

    def finish(self) -> int:
        handles, self.waiting = self.waiting, []
        for handle in handles:
            handle._emit(7, -1.0, self.version)
            handle._finish()
        return len(handles)

    def load_weights(self, state_dict, version):
        self.version = version

    def pause(self):
        pass

    def resume(self):
        pass

    async def run(self):
        await self.closed.wait()

    def close(self):
        self.closed.set()
        for handle in self.waiting:
            handle._fail(asyncio.CancelledError())


class ThreeTurns:
    """An episode of exactly three turns; the return is 1 for an even problem."""

    max_new_tokens = 1

    def reset(self, seed):
        self.seed, self.taken = seed, 0
        return "go"

    def step(self, action):
        self.taken += 1
        return StepResult("again", 0.0, self.taken == 3)

    def reward(self):
        return float(self.seed % 2 == 0)


class Tokens:
    def prompt_ids(self, text):
        return [1] * len(text)

    def decode(self, ids):
        return "x"


class Harness:
    def __init__(self, config: Config, parallelism: int, total: int) -> None:
        self.checker = InvariantChecker(full_every=1)
        self.events: list = []
        self.ledger = Ledger(config, check=self._check)
        self.engines: dict[int, SteppedEngine] = {}
        self.pool = EpisodeGroups(self.ledger, make_env=ThreeTurns, make_engine=self._engine, tokenizer=Tokens(), group_size=2,
                                  parallelism=parallelism, total=total, limit=64, seed_of=lambda key: int(key.split("#")[0][1:]))

    def _check(self, state, event):
        self.checker(state, event)
        self.events.append(event)

    def _engine(self, seed, slots):
        # a requeued attempt of a problem gets a fresh engine under the same key
        self.engines[seed] = SteppedEngine()
        return self.engines[seed]

    async def settle(self):
        for _ in range(20):
            await asyncio.sleep(0)

    async def round(self, seed):
        assert self.engines[seed].finish() > 0
        await self.settle()

    async def update(self, version):
        self.pool.load_weights({}, version)
        self.ledger.advance_version()
        self.pool.advanced()
        await self.settle()


def run_pool(scenario):
    return asyncio.run(scenario())


def test_a_weight_update_mid_episode_gives_its_later_turns_the_new_version_and_strict_filters_and_requeues_it():
    harness = Harness(Config(max_concurrent=2, batch_size=1, max_staleness=1, policy="strict", on_stale="requeue"), 2, 3)

    async def scenario():
        pool, ledger = harness.pool, harness.ledger
        take = asyncio.ensure_future(pool.take(1))
        await harness.settle()
        assert sorted(pool.in_flight) == ["g0", "g1"]  # capacity (1 + 0 + 1) * 1 = 2 groups, parallelism 2
        for _ in range(3):
            await harness.round(0)
        await harness.round(1)  # g1's first turns under version 0
        assert [g.rollout for g in await take] == ["g0"]
        await harness.update(1)
        assert "g2" in pool.in_flight  # the bump made room: (1 + 1 + 1) * 1 - (1 accepted + 1 running)
        await harness.round(1)  # g1's second turns under version 1: mid-episode
        await harness.update(2)  # no batch taken: g1 is now 2 versions behind its start
        await harness.round(1)
        assert "g1#2" in pool.in_flight  # the requeued attempt runs in the room g1 left

    run_pool(scenario)
    events = harness.events
    segments = [(e.version, e.tokens) for e in events if isinstance(e, Segment) and e.rollout == "g1"]
    assert segments == [(0, 2), (1, 2), (2, 2)]  # one segment per round of turns, each its own version
    assert Filtered("g1", "stale") in events  # strict: 2 - 0 > max_staleness 1 at completion
    assert "g1#2" in harness.ledger.state.rollouts  # requeued: the same problem again
    capacity_recovery(events, harness.ledger.state, "g1")
    assert harness.checker.checked == len(events)  # every event passed the invariants


def test_segment_wise_keeps_a_multi_turn_episode_fresh_by_its_newest_turn_and_purges_it_two_versions_on():
    harness = Harness(Config(max_concurrent=2, batch_size=1, max_staleness=1, policy="segment_wise", on_stale="requeue"), 2, 3)

    async def scenario():
        pool = harness.pool
        take = asyncio.ensure_future(pool.take(1))
        await harness.settle()
        for _ in range(3):
            await harness.round(0)
        await harness.round(1)
        await take
        await harness.update(1)
        await harness.round(1)
        await harness.round(1)  # g1 ends under version 1: started at 0, fresh by its newest turn
        assert harness.ledger.state.ready == 1 and "g1" in pool._ready
        await harness.update(2)  # one version behind its newest turn: kept
        assert harness.ledger.state.ready == 1 and "g1" in pool._ready
        await harness.update(3)  # two behind: purged from the ready queue, its prompt requeued
        assert "g1" not in pool._ready and "g1#2" in pool.in_flight

    run_pool(scenario)
    events = harness.events
    assert [(e.version, e.tokens) for e in events if isinstance(e, Segment) and e.rollout == "g1"] == [(0, 2), (1, 2), (1, 2)]
    assert Filtered("g1", "stale") in events and Consumed(("g0",)) in events
    capacity_recovery(events, harness.ledger.state, "g1")


@pytest.mark.parametrize("staleness, started", [(0, 1), (1, 2)])
def test_admission_bounds_the_groups_in_flight_by_the_capacity_rule_below_the_parallelism(staleness, started):
    harness = Harness(Config(max_concurrent=3, batch_size=1, max_staleness=staleness, policy="admission"), 3, 4)

    async def scenario():
        take = asyncio.ensure_future(harness.pool.take(1))
        await harness.settle()
        assert len(harness.pool.in_flight) == started  # (max_staleness + 0 + 1) * 1, though parallelism is 3
        for _ in range(3):
            await harness.round(0)
        await take
        harness.pool.close()

    run_pool(scenario)
    assert harness.pool.peak == started
    assert not any(isinstance(e, (Filtered, Rejected)) for e in harness.events)  # admission never filters


@pytest.mark.parametrize("policy", ["segment_wise", "strict"])
def test_a_run_ahead_of_training_keeps_every_invariant_of_its_ledger(policy, tmp_path):
    """Groups for the next step run while a step trains (max_staleness 1): whatever the
    timing, the ledger's every event keeps the invariants (nothing consumed staler than
    the policy allows, capacity recovered after each filter) and every step trains."""
    settings = {"env": "guess", "turns": 4, "steps": 3, "group_size": 2, "rollout_parallelism": 2, "max_staleness": 1,
                "policy": policy, "on_stale": "requeue"}
    result = run(environments.WORKFLOW, settings, log=str(tmp_path / "run.sqlite"))
    with EventLog(next(tmp_path.rglob("events.sqlite"))) as log:
        events = list(log.events())
    checker = InvariantChecker(full_every=1)
    state = fold([])
    for event in events:
        state = fold([event], state)
        checker(state, event)
    assert state.version == result.state["version"] == 3 and state.consumed == 3
    for rollout in {e.rollout for e in events if isinstance(e, Filtered)}:
        capacity_recovery(events, state, rollout)
