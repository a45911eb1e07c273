"""Generation servers: the analytical continuous-batching model and the least-loaded pick.

A server does continuous batching: a decode step costs ``base + per_slot * slots +
per_seq * active + per_kv_token * kv_tokens`` and advances every active sequence by
one token (``per_slot``: an engine that decodes all its slots, busy or not, each step;
for a given server it is part of the fixed cost).
Between two events the set of sequences is fixed, so after ``n`` steps the kv
cache has grown by ``active * n`` tokens and the time taken is the closed form
``T(n) = n * c0 + per_kv_token * active * n * (n - 1) / 2``; progress is advanced
analytically with it (and its inverse), never token by token.

Prefill is done in batched passes, as the built-in engine does: a rollout that starts
on a server is prefilled in the pending pass of the starts there (its ``stall`` not yet
spent, or no decode step since it opened) or opens one; the re-prefill of the
interrupted sequences on a server after a weight update is one pass, which the update's
starts join (the engine admits waiting prompts into the step that re-prefills).  A pass
costs ``prefill_pass_s + prefill_per_token_s * tokens`` (a start's prompt once, or once
per sample without ``shared_prompt``; with ``prefill_pad_to``, the tokens the pass runs:
its rows times its longest context, rounded up, as an engine that pads a pass to one
width does) and holds the server's decoding back; each start also
costs the executor's ``start_overhead_s`` there, and each time generation resumes after a
weight update every server waits out the executor's ``resume_overhead_s`` (an idle one
when its next sequence arrives).  With ``prefill_token`` a pass also
samples one token of each sequence it prefills, as the engines do (the logits of a
prompt's last position give its first token): a start needs one decode step less, and
a re-prefill moves every interrupted sequence one token on.

This module owns the servers' arithmetic and their timers (a SimPy timeout per server
for its next finishing sequence), and knows nothing of the ledger: it hands the
finished sequences to a callback of :mod:`sim.simulator`, which emits the events.
"""

from __future__ import annotations

import heapq
import math
from functools import partial
from operator import attrgetter
from typing import Callable, Iterator

import simpy

from sim.config import GenerationSection

#: Called when sequences finish: ``finished(server, now, [(rollout, tokens), ...])``.
Finished = Callable[["Server", float, list[tuple[str, int]]], None]


class Server:
    """One generation server's analytical continuous-batching state."""

    __slots__ = ("index", "heap", "steps", "kv_offset", "active", "hold", "stall", "opened", "opened_step", "joinable", "pending",
                 "refill", "last", "epoch", "busy", "pass_rows", "pass_longest", "pass_padded")

    def __init__(self, index: int) -> None:
        self.index = index
        # (finish step, sequence number, rollout, admission step, kv tokens at admission, response tokens)
        self.heap: list[tuple[float, int, str, float, int, int]] = []
        self.steps = 0.0  # decode steps done since the start (fractional between events)
        self.kv_offset = 0.0  # sum of (kv0 - admission step): kv tokens = kv_offset + active * steps
        self.active = 0
        self.hold = 0.0  # seconds of the executor's work after a weight update, before any pass or step (resume_overhead_s)
        self.stall = 0.0  # seconds of the pending prefill pass (and starts' overhead) before decoding resumes
        self.opened = -math.inf  # when the last prefill pass opened (starts at that instant share it, even one costing 0)
        self.opened_step = -math.inf  # the decode step count then (until one more step is done, starts share it)
        self.joinable = False  # whether that pass admits starts (a start's does, and so does an update's re-prefill)
        self.pending = 0.0  # kv tokens of the sequences a pending start's pass prefills
        self.refill = False  # whether that pass re-prefills every interrupted sequence (an update's)
        # with padded passes (prefill_pad_to): that pass's rows, its longest context, and
        # the padded tokens already charged for it (each start that joins charges the rest)
        self.pass_rows = 0
        self.pass_longest = 0
        self.pass_padded = 0
        self.last = 0.0  # simulated time up to which progress is accounted
        self.epoch = 0  # bumps on every re-plan; a timer of an older epoch is ignored
        self.busy = 0.0  # seconds spent prefilling or decoding


#: Up to this many servers, :meth:`Pool.least_loaded` scans them (in C); beyond, it keeps a heap.
SCAN_SERVERS = 16


class Pool:
    """The servers of a run with their cost model.  :meth:`least_loaded` finds the server
    with the fewest active sequences (the first of equals): a scan of a few servers, or
    for many in O(log servers) from a heap of ``(active, index)`` entries, one pushed
    whenever a server's load changes (:meth:`loaded`), stale ones dropped when they
    reach the top."""

    def __init__(self, generation: GenerationSection, env: simpy.Environment, finished: Finished) -> None:
        self.servers = [Server(i) for i in range(generation.servers)]
        for server in self.servers:
            server.last = env.now
            server.stall = generation.startup_s  # spent once it has sequences, before its first pass and step
        self.env = env
        self.finished = finished
        self.paused = False  # every server frozen (a weight update)
        self.slots = generation.slots
        self.base = generation.step_base_s + generation.step_per_slot_s * generation.slots
        self.per_seq = generation.step_per_seq_s
        self.per_kv = generation.step_per_kv_token_s
        self.prefill = generation.prefill_per_token_s
        self.prefill_pass = generation.prefill_pass_s
        self.start_overhead = generation.start_overhead_s
        self.resume_overhead = generation.resume_overhead_s
        self.shared_prompt = generation.shared_prompt
        self.pad_to = generation.prefill_pad_to
        self.pow2_rows = generation.prefill_pow2_rows
        self.first = 1 if generation.prefill_token else 0  # tokens a prefill pass samples per sequence
        self.passes = 0  # prefill passes opened, on every server
        self.padded_tokens = 0  # the tokens those passes ran, padding included (with prefill_pad_to; else 0)
        self._sequences = 0
        self._loads = [(0, i) for i in range(len(self.servers))]
        self._heaped = len(self.servers) > SCAN_SERVERS

    def __iter__(self) -> Iterator[Server]:
        return iter(self.servers)

    # -- load ------------------------------------------------------------------------
    def least_loaded(self) -> Server:
        """The server with the fewest active sequences; the lowest index among equals.
        (For a few servers a scan, with no bookkeeping; for many a heap of loads.)"""
        if not self._heaped:
            return min(self.servers, key=_active)
        loads, servers = self._loads, self.servers
        while True:
            active, index = loads[0]
            server = servers[index]
            if server.active == active:
                return server
            heapq.heappop(loads)

    def loaded(self, server: Server) -> None:
        """Note that ``server.active`` changed."""
        loads = self._loads
        if len(loads) > 4 * len(self.servers) + 64:  # mostly stale entries: rebuild
            loads[:] = [(s.active, s.index) for s in self.servers]
            heapq.heapify(loads)
        else:
            heapq.heappush(loads, (server.active, server.index))

    # -- progress --------------------------------------------------------------------
    def advance(self, server: Server, now: float) -> None:
        """Account the server's progress from ``server.last`` to ``now`` (same sequences)."""
        elapsed = now - server.last
        server.last = now
        if elapsed <= 0 or server.active == 0 or self.paused:
            return
        if server.hold > 0:  # the executor's, not the server's: not busy
            used = min(server.hold, elapsed)
            server.hold -= used
            elapsed -= used
            if elapsed <= 0:
                return
        server.busy += elapsed
        if server.stall > 0:
            used = min(server.stall, elapsed)
            server.stall -= used
            elapsed -= used
            if elapsed <= 0:
                return
        active = server.active
        c0 = self.base + self.per_seq * active + self.per_kv * (server.kv_offset + active * server.steps)
        q = self.per_kv * active / 2  # T(n) = q n^2 + (c0 - q) n
        b = c0 - q
        server.steps += elapsed / c0 if q == 0 else 2 * elapsed / (b + math.sqrt(b * b + 4 * q * elapsed))

    def plan(self, server: Server) -> None:
        """Schedule the server's next sequence completion (cancelling any earlier timer)."""
        server.epoch += 1
        if self.paused or server.active == 0:
            return
        steps = max(0.0, server.heap[0][0] - server.steps)
        active = server.active
        c0 = self.base + self.per_seq * active + self.per_kv * (server.kv_offset + active * server.steps)
        q = self.per_kv * active / 2
        timer = self.env.timeout(server.hold + server.stall + q * steps * steps + (c0 - q) * steps)
        timer.callbacks.append(partial(self._on_timer, server, server.epoch))

    def _on_timer(self, server: Server, epoch: int, _event: simpy.Event) -> None:
        """A server's timer fired: land on the finishing step, pop every sequence done by
        then and hand them over (``(rollout, response tokens)`` in finishing order);
        then plan the next."""
        if epoch != server.epoch:
            return
        now = self.env.now
        self.advance(server, now)
        heap = server.heap
        server.steps = max(server.steps, heap[0][0])  # land exactly on the finishing step
        done: list[tuple[str, int]] = []
        while heap and heap[0][0] <= server.steps + 1e-9:
            _, _, rollout, admitted, kv0, tokens = heapq.heappop(heap)
            server.active -= 1
            server.kv_offset -= kv0 - admitted
            done.append((rollout, tokens))
        if self._heaped:
            self.loaded(server)
        self.finished(server, now, done)
        self.plan(server)

    def turn_s(self) -> float:
        """Seconds of one turn of the engine, the servers turning together: each server
        with sequences does the executor's work after an update, then its pending prefill
        pass if one is due (a pass is a turn of its own), else one decode step."""
        longest = 0.0
        for server in self.servers:
            if server.active:
                step = self.base + self.per_seq * server.active + self.per_kv * (server.kv_offset + server.active * server.steps)
                longest = max(longest, server.hold + (server.stall if server.stall > 0 else step))
        return longest

    def freeze(self, now: float) -> None:
        """Stop every server at ``now`` (their timers are dropped).  A pass that has run
        (its stall spent, time gone by since it opened) is over: what comes after the
        update, its re-prefill and its starts, is a pass of its own."""
        for server in self.servers:
            self.advance(server, now)
            server.epoch += 1
            if server.stall <= 0 and server.opened < now:
                server.joinable = False
        self.paused = True

    def thaw(self, now: float, resume: bool = False) -> None:
        """Start every server again at ``now``; after a weight update (``resume``) each
        first waits out the executor's ``resume_overhead_s``."""
        self.paused = False
        for server in self.servers:
            server.last = now
            if resume:  # (set, not added: an idle server waits it out once, when its next sequence arrives)
                server.hold = self.resume_overhead
            self.plan(server)

    def start(self, server: Server, rollout: str, prompt: int, lengths: Callable[[], int], group: int) -> None:
        """Put ``group`` samples of a rollout on ``server`` (advanced to now), each
        ``lengths()`` tokens long, prefilled (the prompt once, or once per sample without
        ``shared_prompt``) in the server's pending pass if there is one (see
        :meth:`pending_pass`), else in a new one."""
        # the engine admits at a step boundary (the next, when one is under way); its pass
        # samples the first token, which counts as a step done; the engine reports what
        # finished once the step's decode is done, so a one-token answer ends with it
        boundary = math.ceil(server.steps - 1e-9)
        admitted = boundary - self.first
        for _ in range(group):
            self._sequences += 1
            tokens = lengths()
            heapq.heappush(server.heap, (max(admitted + tokens, boundary + 1), self._sequences, rollout, admitted, prompt, tokens))
            server.kv_offset += prompt - admitted
        server.active += group
        if not self.pending_pass(server):  # this start opens a pass (after a re-prefill's, if one is pending)
            server.stall += self.prefill_pass
            server.opened, server.opened_step, server.joinable, server.pending = server.last, server.steps, True, 0.0
            server.refill = False
            server.pass_rows, server.pass_longest, server.pass_padded = 0, 0, 0
            self.passes += 1
        rows = 1 if self.shared_prompt else group
        if self.pad_to:
            self._widen(server, server.pass_rows + rows, max(server.pass_longest, prompt))
        else:
            server.stall += self.prefill * prompt * rows
        server.stall += self.start_overhead
        server.pending += group * prompt
        if self._heaped:
            self.loaded(server)

    def generated(self, server: Server) -> dict[str, int]:
        """Response tokens generated so far by each unfinished rollout on ``server``."""
        tokens: dict[str, int] = {}
        steps = server.steps
        for _, _, rollout, admitted, _, length in server.heap:
            tokens[rollout] = tokens.get(rollout, 0) + min(length, int(steps - admitted))
        return tokens

    @staticmethod
    def pending_pass(server: Server) -> bool:
        """Whether a start on ``server`` now joins its pending pass: a start's pass whose
        stall is not spent, that opened at this instant (a pass may cost nothing), or
        that no decode step has followed yet (the engine prefills at most once a step).
        A sequence that a pass ends (its first or re-prefilled token) is reported with
        the decode step after it, so its replacement comes to the next step's pass."""
        return server.joinable and (server.stall > 0 or server.opened == server.last or server.steps < server.opened_step + 1 - 1e-9)

    def reprefill(self, now: float) -> None:
        """After a weight update (at ``now``), every busy server prefills the kv cache of
        its interrupted sequences again in one pass: a start's pass still pending at the
        freeze (sequences the engine had not admitted yet) takes it in, else it opens one,
        and the update's starts join it."""
        for server in self.servers:
            if server.active:
                waiting = self.pending_pass(server)  # a start's pass not yet run: the re-prefill joins it
                if waiting and server.refill:  # an update's re-prefill not yet run already holds every sequence
                    continue
                server.stall += 0.0 if waiting else self.prefill_pass
                if self.pad_to:  # every sequence is a row, as long as its prompt and tokens so far
                    steps = server.steps
                    longest = max((kv0 + max(0, min(length, int(steps - admitted))) for _, _, _, admitted, kv0, length in server.heap),
                                  default=0)
                    if not waiting:
                        server.pass_padded = 0
                    self._widen(server, server.active, longest)
                else:
                    kv_tokens = server.kv_offset + server.active * server.steps - (server.pending if waiting else 0.0)
                    server.stall += self.prefill * kv_tokens
                self.passes += 0 if waiting else 1
                if self.first:
                    self._sample_at_reprefill(server, waiting)
                server.opened, server.opened_step, server.joinable = now, server.steps, True  # the update's starts join it
                server.refill = True

    def padded(self, rows: int, longest: int) -> int:
        """The tokens a padded pass of ``rows`` contexts up to ``longest`` tokens runs: its
        rows (a power of two, at most the slots, with ``prefill_pow2_rows``) times its
        longest context rounded up to a multiple of ``prefill_pad_to``."""
        if self.pow2_rows:
            rows = min(1 << max(0, rows - 1).bit_length(), max(rows, self.slots))
        return rows * -(-longest // self.pad_to) * self.pad_to

    def _widen(self, server: Server, rows: int, longest: int) -> None:
        """``server``'s pending pass now holds ``rows`` contexts up to ``longest`` tokens:
        charge what its padded tokens cost beyond what it has been charged already."""
        padded = self.padded(rows, longest)
        server.stall += self.prefill * (padded - server.pass_padded)
        self.padded_tokens += padded - server.pass_padded
        server.pass_rows, server.pass_longest, server.pass_padded = rows, longest, padded

    def _sample_at_reprefill(self, server: Server, waiting: bool) -> None:
        """The re-prefill samples one token of every interrupted sequence: each is one
        step further on (its admission and finish one step earlier), but one it completes
        is reported with the decode step that follows the pass, as the engine reports a
        step's finished sequences.  Sequences of a start pass still pending were not
        interrupted."""
        fresh = server.steps - self.first - 1e-9
        after = math.ceil(server.steps - 1e-9) + 1  # the end of the pass's decode step
        moved = 0
        heap = []
        for finish, number, rollout, admitted, kv0, tokens in server.heap:
            if waiting and admitted >= fresh:
                heap.append((finish, number, rollout, admitted, kv0, tokens))
            else:
                heap.append((max(finish - 1, after), number, rollout, admitted - 1, kv0, tokens))
                moved += 1
        heapq.heapify(heap)
        server.heap = heap
        server.kv_offset += moved

    def clear(self, server: Server) -> None:
        """Drop every sequence on ``server`` (a restart)."""
        server.heap.clear()
        server.active = 0
        server.kv_offset = 0.0
        server.stall = 0.0
        if self._heaped:
            self.loaded(server)


class LiveRollout:
    """What the simulator (the shell) tracks of one submitted rollout until it is trained or
    dropped, besides the ledger's record (which holds its versions)."""

    __slots__ = ("left", "prompt", "done", "longest", "segmented", "head", "start")

    def __init__(self, left: int, prompt: int, head: int, start: float) -> None:
        self.left = left  # samples still generating
        self.prompt = prompt  # prompt tokens (per sample)
        self.done = 0  # response tokens of finished samples
        self.longest = 0  # the longest finished sample's response tokens (the trainer pads to it)
        self.segmented = 0  # response tokens already reported in segment events
        self.head = head  # version at submission (for the staleness histogram)
        self.start = start  # submission time


_active = attrgetter("active")
