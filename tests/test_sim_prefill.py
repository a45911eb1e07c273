"""Prefill in batched passes, as the built-in engine does: the starts that reach a server
together share one pass, a start joins a pending pass, and the re-prefill after a weight
update is one pass per busy server, which the starts after the update join; each start
also pays the executor's overhead."""

from __future__ import annotations

import pytest
import simpy

from sim.config import GenerationSection, Scenario
from sim.script import Attempt, Script
from sim.servers import Pool
from sim.simulator import Simulation
from sim.summary import Summary

STEP, PASS, PER_TOKEN, START = 0.01, 0.05, 0.001, 0.002


def _pool(
    servers: int = 1, prefill_token: bool = False, shared_prompt: bool = True, pad_to: int = 0, pow2_rows: bool = False,
) -> tuple[simpy.Environment, Pool, list[tuple[float, str]]]:
    """A pool of ``servers`` with a fixed decode step and known prefill costs, and the
    list its finished sequences are recorded in (time, rollout)."""
    env = simpy.Environment()
    done: list[tuple[float, str]] = []
    generation = GenerationSection(
        servers=servers, slots=16, step_base_s=STEP, step_per_seq_s=0.0, step_per_kv_token_s=0.0,
        prefill_pass_s=PASS, prefill_per_token_s=PER_TOKEN, start_overhead_s=START, prefill_token=prefill_token,
        shared_prompt=shared_prompt, prefill_pad_to=pad_to, prefill_pow2_rows=pow2_rows,
    )
    pool = Pool(generation, env, lambda _server, now, finished: done.extend((now, rollout) for rollout, _ in finished))
    return env, pool, done


def _start(pool: Pool, server_index: int, rollout: str, prompt: int, length: int) -> None:
    server = pool.servers[server_index]
    pool.advance(server, pool.env.now)
    pool.start(server, rollout, prompt, lambda: length, 1)
    pool.plan(server)


@pytest.mark.parametrize("count", [1, 5])
def test_rollouts_starting_together_share_one_pass(count: int) -> None:
    """``count`` one-token rollouts started at one instant finish after one pass (its
    fixed cost once, their prompt tokens, each start's overhead) and one decode step."""
    env, pool, done = _pool()
    for i in range(count):
        _start(pool, 0, f"r{i}", 10, 1)
    env.run()
    want = PASS + PER_TOKEN * 10 * count + START * count + STEP
    assert [t for t, _ in done] == pytest.approx([want] * count, rel=1e-9)
    assert pool.passes == 1


def test_a_start_joins_the_pending_pass_and_a_later_one_opens_its_own() -> None:
    env, pool, done = _pool()
    _start(pool, 0, "a", 10, 5)
    env.run(until=PASS / 2)  # the pass is still pending: b joins it
    _start(pool, 0, "b", 10, 5)
    env.run()
    first = PASS + 2 * (PER_TOKEN * 10 + START)
    assert [t for t, _ in done] == pytest.approx([first + 5 * STEP] * 2, rel=1e-9)
    assert pool.passes == 1
    _start(pool, 0, "c", 10, 1)  # the server is idle and its pass long spent: a new pass
    env.run()
    assert done[-1][0] == pytest.approx(first + 5 * STEP + PASS + PER_TOKEN * 10 + START + STEP, rel=1e-9)
    assert pool.passes == 2


def test_the_re_prefill_after_an_update_is_one_pass_per_busy_server() -> None:
    """Two servers with 3 and 1 sequences frozen after 4 decode steps: each re-prefills its
    whole cache (prompts and the tokens generated so far) in one pass; the idle one none.
    The engine prefills once a step, admitting waiting prompts into the pass that
    prefills its interrupted sequences: a start at the freeze's instant (not admitted
    yet, so not re-prefilled) has its pending pass, which the re-prefill joins, and a
    start after the update joins the re-prefill's pass."""
    env, pool, done = _pool(servers=4)
    for i in range(3):
        _start(pool, 0, f"a{i}", 10, 10)
    _start(pool, 1, "b", 20, 10)
    stall = {0: PASS + 3 * (PER_TOKEN * 10 + START), 1: PASS + PER_TOKEN * 20 + START}
    frozen = stall[0] + 4 * STEP  # server 0 has done 4 steps; server 1 more (its pass was shorter)
    env.run(until=frozen)
    _start(pool, 3, "c", 7, 1)
    pool.freeze(env.now)
    steps = {i: pool.servers[i].steps for i in (0, 1)}
    assert steps[0] == pytest.approx(4.0)
    assert pool.passes == 3  # servers 0, 1, 3
    pool.reprefill(env.now)
    assert pool.passes == 5 and pool.servers[2].stall == 0  # server 3's re-prefill joined c's pass
    assert pool.servers[3].stall == pytest.approx(PASS + PER_TOKEN * 7 + START, rel=1e-9)
    assert pool.servers[0].stall == pytest.approx(PASS + PER_TOKEN * 3 * (10 + 4), rel=1e-9)
    assert pool.servers[1].stall == pytest.approx(PASS + PER_TOKEN * (20 + steps[1]), rel=1e-9)
    pool.thaw(env.now)
    _start(pool, 3, "e", 5, 1)  # joins c's pass
    _start(pool, 0, "d", 5, 1)  # joins the re-prefill's pass
    assert pool.passes == 5
    assert pool.servers[3].stall == pytest.approx(PASS + PER_TOKEN * 12 + 2 * START, rel=1e-9)
    env.run()
    finish = {rollout: t for t, rollout in done}
    stall_0 = PASS + PER_TOKEN * 3 * 14 + PER_TOKEN * 5 + START
    assert finish["d"] == pytest.approx(frozen + stall_0 + STEP, rel=1e-9)
    assert finish["a0"] == pytest.approx(frozen + stall_0 + 6 * STEP, rel=1e-9)
    assert finish["b"] == pytest.approx(frozen + PASS + PER_TOKEN * (20 + steps[1]) + (10 - steps[1]) * STEP, rel=1e-9)


@pytest.mark.parametrize("staleness", [1, 4])
def test_a_simulated_update_re_prefills_each_server_in_one_pass(staleness: int) -> None:
    """One server, batch 1, two in flight, colocated, partial, prompts of 3 tokens: p0 (10
    tokens) and p1 (30) start together (one pass); p2 (10) is the second trained.  One
    pass re-prefills p1 (its prompt and 10 tokens) after the update, and p2's prefill
    shares it (the engine admits waiting prompts into the pass that re-prefills), whether
    p2 starts after the update (staleness 1) or at p0's completion, the instant the
    update freezes the server (4).  The summary counts the passes opened, also the one of
    the last update, after which the run ends (p1's re-prefill with p3's start)."""
    script = Script(prompts=("p0", "p1", "p2", "p3"), attempts={
        "p0": Attempt(10), "p1": Attempt(30), "p2": Attempt(10), "p3": Attempt(10)}, prompt_tokens=3)

    def summary(*overrides: str) -> Summary:
        scenario = Scenario().with_overrides([
            "run.rollouts=2", "ledger.batch_size=1", "ledger.max_concurrent=2", f"ledger.max_staleness={staleness}",
            "generation.servers=1", "generation.slots=2", f"generation.step_base_s={STEP}", "generation.step_per_seq_s=0",
            "generation.step_per_kv_token_s=0", "generation.prefill_per_token_s=0", "generation.on_update=partial",
            "training.step_base_s=0.5", "training.step_per_token_s=0", "training.weight_sync_s=0.1", "training.colocated=true",
            *overrides,
        ])
        return Simulation(scenario, script=script).run()

    def seconds(*overrides: str) -> float:
        return summary(*overrides).sim_time_s

    base = seconds()
    assert base == pytest.approx(10 * STEP + 0.6 + 10 * STEP + 0.6, rel=1e-9)
    assert summary().prefill_passes == 3  # counted even when a pass costs nothing
    assert summary().decode_steps == pytest.approx(20, rel=1e-9)  # p0's 10 beside p1's first 10, then p2's beside p1's next
    assert summary(f"generation.prefill_pass_s={PASS}").prefill_passes == 3
    assert seconds(f"generation.prefill_pass_s={PASS}") == pytest.approx(base + 2 * PASS, rel=1e-9)
    # the prompts of p0 and p1, p1's 3 + 10 tokens again, p2's prompt
    assert seconds(f"generation.prefill_per_token_s={PER_TOKEN}") == pytest.approx(base + (6 + 13 + 3) * PER_TOKEN, rel=1e-9)
    # per start instead (the old prefill_base_s, now start_overhead_s): p0, p1, p2
    assert seconds(f"generation.start_overhead_s={PASS}") == pytest.approx(base + 3 * PASS, rel=1e-9)
    assert seconds(f"generation.prefill_base_s={PASS}") == pytest.approx(base + 3 * PASS, rel=1e-9)


@pytest.mark.parametrize("length", [1, 4])
def test_with_prefill_token_the_pass_samples_a_start_first_token(length: int) -> None:
    """An engine's prefill samples a sequence's first token: ``length`` tokens take the
    pass and ``length - 1`` decode steps, and the tokens it reports are still
    ``length``; a one-token answer, done by its pass, is reported with the decode step
    that follows it (the engine's step is a pass and a decode, and what finished in it is
    reported when it ends)."""
    env, pool, _ = _pool(prefill_token=True)
    lengths: list[int] = []
    pool.finished = lambda _server, now, finished: lengths.extend(tokens for _, tokens in finished) or times.append(now)
    times: list[float] = []
    _start(pool, 0, "a", 10, length)
    env.run()
    assert times == pytest.approx([PASS + PER_TOKEN * 10 + START + max(1, length - 1) * STEP], rel=1e-9)
    assert lengths == [length]


@pytest.mark.parametrize("left", [3, 1])
def test_with_prefill_token_a_re_prefill_moves_every_interrupted_sequence_one_token_on(left: int) -> None:
    """After a weight update the re-prefill samples each interrupted sequence's next
    token: a sequence 3 tokens from its end finishes 2 decode steps after the pass; one
    whose last token the pass samples is reported after the pass's decode step."""
    env, pool, done = _pool(prefill_token=True)
    _start(pool, 0, "a", 10, 3 + left)
    start = PASS + PER_TOKEN * 10 + START
    env.run(until=start + 2 * STEP)  # the pass gave token 1, two steps tokens 2-3: ``left`` to go
    pool.freeze(env.now)
    kv = pool.servers[0].kv_offset + pool.servers[0].active * pool.servers[0].steps
    pool.reprefill(env.now)
    pool.thaw(env.now)
    env.run()
    assert [t for t, _ in done] == pytest.approx([start + 2 * STEP + PASS + PER_TOKEN * kv + max(1, left - 1) * STEP], rel=1e-9)


def test_a_servers_start_delays_its_first_sequences_once() -> None:
    """``startup_s`` is spent once, before the first pass: the first rollout finishes that
    much later, one started after it does not."""
    env = simpy.Environment()
    done: list[tuple[float, str]] = []
    generation = GenerationSection(servers=1, slots=16, step_base_s=STEP, step_per_seq_s=0.0, step_per_kv_token_s=0.0,
                                   prefill_pass_s=PASS, prefill_per_token_s=0.0, start_overhead_s=0.0, startup_s=0.3)
    pool = Pool(generation, env, lambda _server, now, finished: done.extend((now, rollout) for rollout, _ in finished))
    _start(pool, 0, "a", 10, 2)
    env.run()
    _start(pool, 0, "b", 10, 2)
    env.run()
    first = 0.3 + PASS + 2 * STEP
    assert [t for t, _ in done] == pytest.approx([first, first + PASS + 2 * STEP], rel=1e-9)


@pytest.mark.parametrize("shared", [True, False])
def test_a_groups_prompt_is_prefilled_once_when_shared_else_once_per_sample(shared: bool) -> None:
    """A rollout of 4 samples: with a prefix cache (``shared_prompt``) its prompt is
    prefilled once; the built-in engines prefill every sample's prompt as a row."""
    env, pool, done = _pool(shared_prompt=shared)
    server = pool.servers[0]
    pool.start(server, "a", 10, lambda: 2, 4)
    pool.plan(server)
    env.run()
    rows = 1 if shared else 4
    assert [t for t, _ in done] == pytest.approx([PASS + PER_TOKEN * 10 * rows + START + 2 * STEP] * 4, rel=1e-9)


@pytest.mark.parametrize("trains_prompt", [True, False])
def test_a_trainer_that_counts_completions_only_trains_no_prompt_token(trains_prompt: bool) -> None:
    """Two rollouts of 2 samples, prompts of 3 tokens, responses of 10 and 30: the trainer
    counts 2 * 3 prompt tokens and 20 + 60 response tokens per rollout pair, or the
    responses alone (``training.trains_prompt = false``, as ``train`` counts); a step
    costs its tokens, so the run's time says which were trained."""
    script = Script(prompts=("p0", "p1"), attempts={"p0": Attempt(10), "p1": Attempt(30)}, prompt_tokens=3)
    scenario = Scenario().with_overrides([
        "run.rollouts=2", "ledger.batch_size=2", "ledger.max_concurrent=2", "workload.group_size=2",
        "generation.servers=1", "generation.slots=4", f"generation.step_base_s={STEP}", "generation.step_per_seq_s=0",
        "generation.step_per_kv_token_s=0", "generation.prefill_per_token_s=0", "training.step_base_s=0",
        "training.step_per_token_s=0.001", "training.weight_sync_s=0", f"training.trains_prompt={str(trains_prompt).lower()}",
    ])
    summary = Simulation(scenario, script=script).run()
    tokens = 2 * 10 + 2 * 30 + (2 * 2 * 3 if trains_prompt else 0)
    assert summary.trained_tokens_per_s * summary.sim_time_s == pytest.approx(tokens, rel=1e-9)
    assert summary.sim_time_s == pytest.approx(30 * STEP + 0.001 * tokens, rel=1e-9)


def test_a_second_update_before_the_re_prefill_ran_adds_nothing_to_it() -> None:
    """Two updates with no decode step between them (a batch ready again at once): the
    first's re-prefill pass, not yet run, already holds every interrupted sequence, so
    the second neither prefills them again nor samples them another token."""
    env, pool, done = _pool(prefill_token=True)
    _start(pool, 0, "a", 10, 20)
    env.run(until=PASS + PER_TOKEN * 10 + START + 3 * STEP)  # a: 1 token from its pass, 3 from steps
    server = pool.servers[0]
    for _ in range(2):
        pool.freeze(env.now)
        pool.reprefill(env.now)
        pool.thaw(env.now)
    assert server.stall == pytest.approx(PASS + PER_TOKEN * (10 + 4), rel=1e-9) and pool.passes == 2
    env.run()
    # the pass samples token 5; 15 more take 15 decode steps
    assert [t for t, _ in done] == pytest.approx([PASS + PER_TOKEN * 10 + START + 3 * STEP + PASS + PER_TOKEN * 14 + 15 * STEP], rel=1e-9)


def test_a_colocated_collect_turns_the_engine_once_before_it_takes_a_ready_batch() -> None:
    """Colocated, batch 1, three in flight, every answer 5 tokens: all three finish before
    the first update, so the second and third updates find their batch ready.  The run's
    collect still turns the engine once first (its event loop runs the engine's task,
    which the update resumed): the pass of the starts that the last consumption let in,
    or a decode step where no pass is due, charged to the trainer's wait; and the pass
    that turn ran is over, so the next update's starts open a pass of their own.  Passes:
    the first, one after each of the first two updates, and the last update's, which the
    run ends on."""
    from sim.script import Attempt, Script

    script = Script(prompts=tuple(f"p{i}" for i in range(8)), attempts={f"p{i}": Attempt(5) for i in range(8)}, prompt_tokens=3)

    def summary(*overrides: str) -> Summary:
        scenario = Scenario().with_overrides([
            "run.rollouts=3", "ledger.batch_size=1", "ledger.max_concurrent=3", "ledger.max_staleness=2",
            "generation.servers=1", "generation.slots=3", f"generation.step_base_s={STEP}", "generation.step_per_seq_s=0",
            "generation.step_per_kv_token_s=0", "generation.prefill_per_token_s=0", "generation.on_update=partial",
            "training.step_base_s=0.5", "training.step_per_token_s=0", "training.weight_sync_s=0.1", "training.colocated=true",
            *overrides,
        ])
        return Simulation(scenario, script=script).run()

    free = summary()  # passes cost nothing: each turn is a decode step
    assert free.prefill_passes == 4
    assert free.sim_time_s == pytest.approx(5 * STEP + 3 * 0.6 + 2 * STEP, rel=1e-9)
    assert free.trainer_idle_s == pytest.approx(5 * STEP + 2 * STEP, rel=1e-9)
    paid = summary(f"generation.prefill_pass_s={PASS}")  # each turn is the pass
    assert paid.prefill_passes == 4
    assert paid.sim_time_s == pytest.approx(PASS + 5 * STEP + 3 * 0.6 + 2 * PASS, rel=1e-9)
    assert paid.trainer_idle_s == pytest.approx(PASS + 5 * STEP + 2 * PASS, rel=1e-9)


@pytest.mark.parametrize("pow2_rows", [False, True])
def test_a_padded_pass_costs_its_rows_times_its_longest_context_rounded_up(pow2_rows: bool) -> None:
    """With ``prefill_pad_to`` 16, three starts of prompts 5, 7 and 20 tokens share a pass
    of 3 rows (4 with ``prefill_pow2_rows``) 32 tokens wide, each start charged what it
    adds; the re-prefill after an update runs every sequence, as wide as the longest
    prompt and tokens so far."""
    env, pool, done = _pool(pad_to=16, pow2_rows=pow2_rows)
    rows = 4 if pow2_rows else 3
    _start(pool, 0, "a", 5, 30)
    assert pool.servers[0].stall == pytest.approx(PASS + PER_TOKEN * 16 + START, rel=1e-9)  # one row of 16
    _start(pool, 0, "b", 7, 30)
    _start(pool, 0, "c", 20, 30)
    assert pool.passes == 1
    assert pool.servers[0].stall == pytest.approx(PASS + PER_TOKEN * rows * 32 + 3 * START, rel=1e-9)
    assert pool.padded_tokens == rows * 32  # the pass counted once, at its final shape
    env.run(until=pool.servers[0].stall + 4 * STEP)
    pool.freeze(env.now)
    assert pool.servers[0].steps == pytest.approx(4.0)
    pool.reprefill(env.now)  # contexts 9, 11 and 24 tokens: 32 wide again
    assert pool.servers[0].stall == pytest.approx(PASS + PER_TOKEN * rows * 32, rel=1e-9)
    assert pool.padded_tokens == 2 * rows * 32
    assert pool.padded(3, 33) == rows * 48 and pool.padded(1, 1) == 16


def test_a_padded_start_joining_a_re_prefill_is_charged_what_it_widens() -> None:
    env, pool, _ = _pool(pad_to=16, pow2_rows=True)
    for name in ("a", "b"):
        _start(pool, 0, name, 10, 30)
    env.run(until=pool.servers[0].stall + 2 * STEP)
    pool.freeze(env.now)
    pool.reprefill(env.now)  # 2 rows of 12: 2 x 16
    assert pool.servers[0].stall == pytest.approx(PASS + PER_TOKEN * 32, rel=1e-9)
    pool.thaw(env.now)
    _start(pool, 0, "c", 40, 1)  # joins: 3 rows padded to 4, 48 wide
    assert pool.passes == 2
    assert pool.servers[0].stall == pytest.approx(PASS + PER_TOKEN * 4 * 48 + START, rel=1e-9)
    assert pool.padded_tokens == 2 * 16 + 4 * 48  # the first pass's two rows, and the re-prefill as the start widened it


def test_a_simulation_counts_each_updates_passes_and_their_padded_tokens() -> None:
    """``passes_by_update``: at the end of each update, the passes opened so far and the
    tokens they ran, as the engine's metrics lines count them (with ``prefill_pad_to``)."""
    from sim.config import Scenario
    from sim.simulator import Simulation

    scenario = Scenario().with_overrides([
        "run.rollouts=12", "ledger.batch_size=4", "ledger.max_concurrent=4", "ledger.max_staleness=0", "workload.group_size=2",
        "workload.prompt_len={kind='fixed', value=20}", "workload.response_len={kind='fixed', value=3}", "generation.servers=1",
        "generation.slots=8", "generation.prefill_pad_to=16", "generation.prefill_pow2_rows=true", "generation.shared_prompt=false",
    ])
    simulation = Simulation(scenario)
    simulation.run()
    # synchronous: every update starts its 4 rollouts (8 rows of 20 tokens, 32 wide) in one pass, and nothing is in flight at a bump
    assert simulation.passes_by_update == [(1, 256), (2, 512), (3, 768)]
