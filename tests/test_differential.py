"""One scripted scenario through two shells: the asyncio executor (with a fake generation
engine) and the simulator (with a scripted workload) must write the same events.

The scenario: eight prompts, two in flight at most, batches of one, staleness 1, one
retry.  An attempt fails with an error and is retried, another times out and is
retried, every weight update interrupts the rollout still generating and resumes it
under the new version, and the run crashes after an update with rollouts in flight
and is resumed from its log (the lost rollouts are requeued).  Both shells advance
every sequence one token per step and train while generation is paused
(``colocated``), so the order of events is fixed by the script, not by timing.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from engine.core.config import Config
from engine.core.events import Event, InterruptedBatch, Rejected, ResumedBatch, stamped
from engine.ledger import Ledger
from engine.log import EventLog
from engine.runtime.executor import RolloutExecutor
from engine.runtime.ports import GenerationHandle
from sim.config import Scenario
from sim.script import Attempt, Script
from sim.simulator import Simulation

PROMPTS = ("p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7")
SCRIPT = Script(
    prompts=PROMPTS,
    attempts={
        "p0": Attempt(3),
        "p1": Attempt(10),  # long: interrupted by the first updates
        "p2": Attempt(2, "error"),
        "p2#2": Attempt(2),
        "p3": Attempt(3, "timeout"),
        "p3#2": Attempt(6),
        "p4": Attempt(9),
        "p5": Attempt(40),  # in flight at the crash: lost, then requeued
        "p5#2": Attempt(5),
        "p6": Attempt(5),
        "p7": Attempt(50),  # in flight at the crash
        "p7#2": Attempt(50),  # still generating when the run ends
    },
    max_retries=1,
)
CONFIG = Config(max_concurrent=2, batch_size=1, max_staleness=1)
UPDATES = 7  # weight updates in the whole run
CRASH_AFTER = 4  # updates before the crash


# -- the simulator ---------------------------------------------------------------------


def _scenario(*extra: str) -> Scenario:
    return Scenario().with_overrides(
        [
            f"run.rollouts={UPDATES}",
            f"ledger.max_concurrent={CONFIG.max_concurrent}",
            f"ledger.batch_size={CONFIG.batch_size}",
            f"ledger.max_staleness={CONFIG.max_staleness}",
            "generation.servers=1",
            "generation.slots=8",
            "generation.step_base_s=1.0",  # one token per second for every sequence
            "generation.step_per_seq_s=0",
            "generation.step_per_kv_token_s=0",
            "generation.prefill_per_token_s=0",
            "generation.on_update=partial",
            "training.colocated=true",
            "training.step_base_s=1.0",
            "training.step_per_token_s=0",
            "training.recompute_per_token_s=0",
            "training.weight_sync_s=0",
            *extra,
        ]
    )


def _simulate(tmp_path) -> list[Event]:
    """The scripted run in the simulator: up to the crash (the clock stops half a step
    after the update that precedes it), then resumed from its log."""
    reference = tmp_path / "reference.db"
    Simulation(_scenario(f"run.rollouts={CRASH_AFTER}"), log=reference, script=SCRIPT).run()
    unpauses = [e.t for e in _events(reference) if e.type == "unpaused"]
    crash_at = unpauses[CRASH_AFTER - 1] + 0.5  # the next event is a whole step later
    path = tmp_path / "sim.db"
    Simulation(_scenario(f"run.max_time_s={crash_at}"), log=path, script=SCRIPT).run()
    Simulation(_scenario(), log=path, script=SCRIPT, resume=True).run()
    return _events(path)


# -- the executor, with a fake engine ----------------------------------------------------


@dataclass
class _Problem:
    prompt: str


class _Task:
    max_new_tokens = 1000

    def reward(self, problem: _Problem, completion: str) -> float:
        return 1.0


class _Tokenizer:
    """A prompt's ids spell its key, so the engine knows which prompt it generates."""

    def prompt_ids(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, tokens: list[int]) -> str:
        return ""


class _ScriptedEngine:
    """The methods of a generation engine, generating what :data:`SCRIPT` says.

    Each step appends one token to every sequence, then finishes (or fails) those that
    reached their scripted length.  Before a step the loop yields ``QUIET`` times, so
    everything the previous step caused (completions, the ledger, the dispatcher) has
    happened: the interleaving is the script's, not the event loop's.  The n-th
    submission of a prompt is its n-th attempt (``submissions`` outlives a crash)."""

    QUIET = 25

    def __init__(self, submissions: collections.Counter[str]) -> None:
        self.version = 0
        self.submissions = submissions
        self._active: list[tuple[GenerationHandle, Attempt]] = []
        self._paused = False
        self._closed = False
        self._wake = asyncio.Event()

    def submit(self, prompt: list[int], max_new_tokens: int, *, stream: bool = False) -> GenerationHandle:
        key = "".join(chr(c) for c in prompt)
        self.submissions[key] += 1
        attempt = self.submissions[key]
        rollout = key if attempt == 1 else f"{key}#{attempt}"
        handle = GenerationHandle(prompt, max_new_tokens, stream)
        self._active.append((handle, SCRIPT.attempt(rollout)))
        self._wake.set()
        return handle

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    def load_weights(self, state_dict: object, version: int) -> None:
        self.version = version

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        for handle, _ in self._active:
            handle._fail(asyncio.CancelledError("engine closed"))
        self._active = []

    async def run(self) -> None:
        while not self._closed:
            for _ in range(self.QUIET):
                await asyncio.sleep(0)
            if self._paused or not self._active:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._step()

    def _step(self) -> None:
        still = []
        for handle, attempt in self._active:
            if handle.cancelled:
                continue
            handle._emit(1, 0.0, self.version)
            if len(handle.generation.tokens) < attempt.tokens:
                still.append((handle, attempt))
            elif attempt.outcome == "accept":
                handle._finish()
            else:
                handle._fail(TimeoutError("scripted") if attempt.outcome == "timeout" else RuntimeError("scripted"))
        self._active = still


def _execute(tmp_path) -> list[Event]:
    """The scripted run through the executor: updates until the crash, a resume from the
    log, then the remaining updates."""
    path = tmp_path / "executor.db"
    submissions: collections.Counter[str] = collections.Counter()

    def executor_for(ledger: Ledger) -> RolloutExecutor:
        return RolloutExecutor(
            ledger, _ScriptedEngine(submissions), _Task(), _Tokenizer(), _Problem, group_size=1, max_retries=SCRIPT.max_retries  # type: ignore[arg-type]
        )

    async def updates(executor: RolloutExecutor, ledger: Ledger, until: int) -> None:
        executor.start()
        while ledger.version < until:
            await executor.prepare_batch(CONFIG.batch_size, iter(()))
            executor.pause()
            executor.set_version({})
            executor.resume()
            for _ in range(3):  # the dispatcher refills the freed capacity (the engine waits QUIET yields)
                await asyncio.sleep(0)
        await executor.close()  # the crash: the tasks in flight die, no event is written

    ledger = Ledger(CONFIG, path=path, flush_every=1)
    executor = executor_for(ledger)
    for key in PROMPTS:
        executor.submit(key)
    asyncio.run(updates(executor, ledger, CRASH_AFTER))
    ledger.close()
    resumed = Ledger.resume(path, requeue=True, flush_every=1)
    asyncio.run(updates(executor_for(resumed), resumed, UPDATES))
    resumed.close()
    return _events(path)


def _events(path) -> list[Event]:
    with EventLog(path) as log:
        return list(log.events())


def test_the_executor_and_the_simulator_write_the_same_events_for_one_script(tmp_path) -> None:
    simulated = [stamped(event, None) for event in _simulate(tmp_path)]  # (the executor's ledger has no clock)
    executed = _execute(tmp_path)
    assert executed == simulated
    # the script did exercise what it is for
    reasons = collections.Counter(e.reason for e in executed if isinstance(e, Rejected))
    assert reasons["error"] >= 1 and reasons["timeout"] >= 1 and reasons["lost"] >= 1
    retried = {e.rollout for e in executed if e.type == "enqueued" and e.attempt > 1}
    assert {"p2#2", "p3#2"} <= retried
    assert sum(isinstance(e, InterruptedBatch) for e in executed) == sum(isinstance(e, ResumedBatch) for e in executed) >= 2
    assert sum(e.type == "version" for e in executed) == UPDATES
