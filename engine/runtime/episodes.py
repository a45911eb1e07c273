"""Environment groups as rollouts of the ledger, run concurrently: :class:`EpisodeGroups`.

A *group* is ``group_size`` episodes of one problem (the same seed), the GRPO group,
and it is one rollout of the run's ledger, named by its prompt key (``g0``, ``g1``,
...; a requeued attempt ``g3#2`` reruns the same problem).  The episodes take their
turns together: each round submits one generation call per unfinished episode to the
group's own engine, and the round's tokens go to the ledger as one segment per
policy version that sampled them (:meth:`~engine.ledger.Ledger.segments`), so a
multi-turn episode that a weight update overtakes carries its later turns under the
newer version and the run's staleness policy measures it segment by segment.  When
every episode is over the ledger's policy accepts the group or filters it
(:meth:`~engine.ledger.Ledger.complete`; a ``requeue`` puts its prompt back, and the
pool runs the new attempt).

Up to ``parallelism`` groups are in flight at once, each an asyncio task whose
generation calls interleave with the others'; a group starts only when the ledger has
capacity for it (the capacity rule, with ``max_concurrent = parallelism``, is the
pool's semaphore: it bounds what is in flight and, with ``max_staleness``, how far
generation may run ahead of training).  :meth:`EpisodeGroups.take` consumes the next
batch through :meth:`~engine.ledger.Ledger.prepare_batch`; :meth:`load_weights` gives
the live engines a new version between two of their steps.  Nothing here imports a
model backend: engines, environments and the tokenizer come through the ports.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from engine.core.events import Accepted
from engine.core.reducer import CONSUMED, INTERRUPTED, PENDING, READY, RUNNING
from engine.ledger import Ledger
from engine.runtime.ports import Environment, GenerationEngine, Sample, TokenizerLike


@dataclass
class Group:
    """One finished group: its rollout id, prompt key and seed, each episode's turns (one
    :class:`Sample` per generation call, carrying the episode's return) and returns."""

    rollout: str
    prompt: str
    seed: int
    episodes: list[list[Sample]] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)

    @property
    def samples(self) -> list[Sample]:
        return [turn for episode in self.episodes for turn in episode]

    def advantages(self) -> list[float]:
        """GRPO: each turn gets its episode's return less the group's mean return."""
        mean = sum(self.returns) / len(self.returns)
        return [r - mean for episode, r in zip(self.episodes, self.returns) for _ in episode]


class EpisodeGroups:
    """The rollout pool of an environment run (see the module's docstring).

    ``make_env()`` builds one environment; ``make_engine(seed, slots)`` one generation
    engine (sharing the generator's weights); ``seed_of(prompt_key)`` the problem's seed;
    ``total`` how many groups the run will consume (no group is started beyond them);
    ``limit`` the model's context (a turn's prompt keeps the transcript's tail);
    ``version`` the generator's; ``first_key`` the first prompt number to use (a resumed
    ledger's count of rollouts, so no id is used twice)."""

    def __init__(
        self, ledger: Ledger, *, make_env: Callable[[], Environment], make_engine: Callable[[int, int], GenerationEngine],
        tokenizer: TokenizerLike, group_size: int, parallelism: int, total: int, limit: int,
        seed_of: Callable[[str], int], version: int = 0, first_key: int = 0,
    ) -> None:
        if parallelism < 1 or group_size < 1:
            raise ValueError(f"parallelism and group_size must be at least 1, got {parallelism} and {group_size}")
        self.ledger, self.make_env, self.make_engine, self.tokenizer = ledger, make_env, make_engine, tokenizer
        self.group_size, self.parallelism, self.total, self.limit = group_size, parallelism, total, limit
        self.seed_of, self.version = seed_of, version
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self.peak = 0  # the most groups ever in flight at once
        self.started = 0  # groups started (attempts included)
        self._next_key = first_key  # prompt keys g<n> from here (a resumed ledger has used the ones below)
        self._ready: dict[str, Group] = {}
        self._engines: set[GenerationEngine] = set()
        self._changed: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._closed = False

    # -- starting groups -----------------------------------------------------------
    def _wanted(self) -> bool:
        """Whether the run still needs a group it has not started (nor finished)."""
        count = self.ledger.count
        started = count(RUNNING) + count(INTERRUPTED) + count(READY) + count(CONSUMED)
        return started + count(PENDING) < self.total

    def fill(self) -> None:
        """Start groups while one is wanted, fewer than ``parallelism`` are in flight and
        the ledger has capacity: a requeued attempt first, else the next prompt."""
        ledger = self.ledger
        while not self._closed and self._error is None and len(self.in_flight) < self.parallelism and ledger.capacity > 0:
            retry = next((r for r, rec in ledger.state.rollouts.items() if rec.status == PENDING), None)
            if retry is not None:
                ledger.submit([retry])
                rollout, prompt = retry, ledger.state.rollouts[retry].prompt
            elif self._wanted():
                rollout = prompt = f"g{self._next_key}"
                self._next_key += 1
                ledger.admit(rollout)
            else:
                return
            self.started += 1
            self.in_flight[rollout] = asyncio.get_running_loop().create_task(self._run(rollout, prompt), name=rollout)
            self.peak = max(self.peak, len(self.in_flight))

    # -- one group -----------------------------------------------------------------
    async def _run(self, rollout: str, prompt: str) -> None:
        seed = self.seed_of(prompt)
        engine = self.make_engine(seed, self.group_size)
        engine.version = self.version
        self._engines.add(engine)
        loop_task = asyncio.get_running_loop().create_task(engine.run())
        try:
            group = await self._episodes(engine, rollout, prompt, seed)
            events = self.ledger.complete(rollout)
            if any(isinstance(e, Accepted) for e in events):
                self._ready[rollout] = group
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the group's rollout fails; the run hears of it at take()
            if self.ledger.record(rollout) is not None:
                self.ledger.fail(rollout, "error", max_retries=0)
            self._error = error
        finally:
            engine.close()
            await loop_task
            self._engines.discard(engine)
            self.in_flight.pop(rollout, None)
            if self._changed is not None:  # the room this group leaves goes to the next one at once
                self.fill()
                self._changed.set()

    async def _episodes(self, engine: GenerationEngine, rollout: str, prompt: str, seed: int) -> Group:
        envs = [self.make_env() for _ in range(self.group_size)]
        observations = [env.reset(seed) for env in envs]
        transcripts = [""] * len(envs)
        turns: list[list[Sample]] = [[] for _ in envs]
        active = list(range(len(envs)))
        while active:  # one round: a generation call per unfinished episode
            ids = []
            for i in active:
                transcripts[i] += observations[i]
                ids.append(self.tokenizer.prompt_ids(transcripts[i])[-(self.limit - envs[i].max_new_tokens) :])
            generations = await asyncio.gather(*(engine.submit(p, envs[i].max_new_tokens).result() for p, i in zip(ids, active)))
            self.ledger.segments(rollout, Counter(v for g in generations for v in g.versions))
            still = []
            for i, p, g in zip(active, ids, generations):
                action = self.tokenizer.decode(g.tokens)
                turns[i].append(Sample(p, list(g.tokens), list(g.logprobs), list(g.versions), 0.0))
                result = envs[i].step(action)
                transcripts[i] += action + " "
                if not result.done:
                    observations[i] = result.observation
                    still.append(i)
            active = still
        returns = [env.reward() for env in envs]
        for episode, value in zip(turns, returns):
            for sample in episode:
                sample.reward = value
        return Group(rollout, prompt, seed, turns, returns)

    # -- the run's side ------------------------------------------------------------
    async def take(self, groups: int) -> list[Group]:
        """The next batch of ``groups`` accepted groups, consumed through the ledger
        (oldest first); starts groups as the ledger lets it meanwhile.  A group that
        failed (its rollout rejected with reason ``error``) fails this call with its error,
        once: a retried call starts groups again."""
        if self._changed is None:
            self._changed = asyncio.Event()
        while True:
            if self._error is not None:  # raised once: a retry of the stage starts groups again
                error, self._error = self._error, None
                raise error
            batch = self.ledger.prepare_batch(groups)
            if batch is not None:
                return [self._ready.pop(rollout) for rollout in batch]
            self._changed.clear()
            self.fill()
            if not self.in_flight:
                state = self.ledger.state
                raise RuntimeError(
                    f"no batch of {groups} groups can be made: {state.ready} ready, none in flight, capacity "
                    f"{self.ledger.capacity}, {self.started} started of {self.total} (are groups filtered faster than they finish?)"
                )
            await self._changed.wait()

    def load_weights(self, state_dict: Mapping[str, Any], version: int) -> None:
        """New weights as ``version`` for the groups in flight (their sequences continue
        under it at the engines' next step) and for the groups started later."""
        for engine in self._engines:
            engine.load_weights(state_dict, version)
        self.version = version

    def advanced(self) -> None:
        """The ledger's version moved (its purge may have filtered ready groups): forget
        those and start what the capacity now allows."""
        for rollout in [r for r in self._ready if (rec := self.ledger.record(r)) is None or rec.status != READY]:
            del self._ready[rollout]
        if self._changed is not None:
            self.fill()

    def close(self) -> None:
        """Cancel the groups in flight (their rollouts stay running in the log, which a
        resume recovers as lost and requeues)."""
        self._closed = True
        for task in self.in_flight.values():
            task.cancel()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the cancelled groups to let go of their engines."""
        tasks = list(self.in_flight.values())
        self.close()
        await asyncio.gather(*tasks, return_exceptions=True)
