"""The ranks of a distributed run and the process groups between them.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) a
run of ``N`` trainer ranks and ``K`` generator ranks has ``WORLD_SIZE = N + K``: ranks
``0..N-1`` train (rank 0 also holds the ledger and the executor), ranks ``N..N+K-1``
generate.  :func:`init` joins the default group (NCCL with ``--device cuda``, else
gloo), then builds, with ``timeout`` seconds on the collectives of the data groups:

- ``trainers``: the trainer ranks, for the gradients' all-reduce (the device's backend);
- ``sync``: rank 0 and the generators, for the weights at a version bump (the device's backend);
- ``control``: a gloo group for pickled messages between two ranks.  A rank waits
  for rank 0's next message without limit (rank 0 may collect rollouts or warm up
  for long); a message sent, and an answer awaited, must arrive within ``timeout``
  (gloo hands a message over only when the other side receives it), so a rank
  that stops taking part stops the run with an error naming it.

A rank that dies ends the run through the launcher, which stops the others
(:mod:`.launch`); a collective on the data groups that waits past ``timeout``
raises, which ends the rank and so the run.
"""

from __future__ import annotations

import datetime
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

#: How long a rank waits for a control message (rank 0 may collect rollouts or warm up for long).
CONTROL_TIMEOUT = datetime.timedelta(days=1)
#: How long the ranks wait for each other to join the run.
JOIN_TIMEOUT = datetime.timedelta(minutes=30)


class RankFailed(RuntimeError):
    """Another rank did not take part in time (or is gone); the message names it."""


@dataclass(frozen=True)
class Layout:
    """Who is who: this process's ``rank`` of ``world``, the first ``trainers`` ranks train."""

    rank: int
    world: int
    trainers: int
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.trainers <= self.world:
            raise ValueError(f"a distributed run needs 1 to {self.world} trainer ranks, got {self.trainers}")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world}")

    @classmethod
    def from_env(cls, generators: int, environ: Mapping[str, str] | None = None) -> "Layout":
        """The layout torchrun's environment gives, ``generators`` of its ranks generating."""
        env = os.environ if environ is None else environ
        world = int(env["WORLD_SIZE"])
        if generators >= world:
            raise ValueError(f"--generators {generators} leaves no trainer rank in a world of {world} processes")
        return cls(int(env["RANK"]), world, world - generators, int(env.get("LOCAL_RANK", "0")))

    @property
    def generators(self) -> int:
        return self.world - self.trainers

    @property
    def is_trainer(self) -> bool:
        return self.rank < self.trainers

    def name(self, rank: int | None = None) -> str:
        """``trainer rank R`` or ``generator G (rank R)``: what a message calls a rank."""
        return describe(self.rank if rank is None else rank, self.trainers)


def describe(rank: int, trainers: int) -> str:
    """What a message calls ``rank`` of a run whose first ``trainers`` ranks train."""
    return f"trainer rank {rank}" if rank < trainers else f"generator {rank - trainers} (rank {rank})"


def under_launcher(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by torch's elastic launcher (``torchrun``)."""
    env = os.environ if environ is None else environ
    return "TORCHELASTIC_RUN_ID" in env and "RANK" in env and "WORLD_SIZE" in env


class Group:
    """The process groups of one distributed run (see the module docstring)."""

    def __init__(self, layout: Layout, device: str, timeout_s: float) -> None:
        self.layout = layout
        cuda = device == "cuda"
        if cuda:
            torch.cuda.set_device(layout.local_rank % torch.cuda.device_count())
        backend = "nccl" if cuda else "gloo"
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        timeout = datetime.timedelta(seconds=timeout_s)
        # joining waits for the slowest rank to start (imports, a model build): not the run's timeout
        dist.init_process_group(backend, timeout=JOIN_TIMEOUT, rank=layout.rank, world_size=layout.world)
        trainer_ranks = list(range(layout.trainers))
        # every rank builds every group, in the same order (torch.distributed's rule)
        self.trainers = dist.new_group(trainer_ranks, timeout=timeout)
        self.sync = dist.new_group([0, *range(layout.trainers, layout.world)], timeout=timeout)
        self.control = dist.new_group(list(range(layout.world)), backend="gloo", timeout=CONTROL_TIMEOUT)
        self.timeout_s, self.timeout = timeout_s, timeout
        # the data groups' first collectives set up their communicators (NCCL's take a
        # while), here rather than in the first update
        if layout.is_trainer:
            dist.all_reduce(torch.zeros(1, device=self.device), group=self.trainers)
        if layout.rank == 0 or not layout.is_trainer:
            dist.broadcast(torch.zeros(1, device=self.device), src=0, group=self.sync)

    @property
    def rank(self) -> int:
        return self.layout.rank

    # -- control messages (pickled, over gloo) ----------------------------------------
    def send(self, message: Any, rank: int) -> None:
        """Send ``message`` to ``rank``, which is waiting for it (:meth:`recv` or
        :meth:`answer`); raises naming ``rank`` when it does not take it
        within the run's timeout (gloo hands a message over only once it is received):
        :class:`RankFailed`."""
        data = torch.frombuffer(bytearray(pickle.dumps(message)), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.long)

        def hand_over() -> None:
            _wait(dist.isend(size, dst=rank, group=self.control), self.timeout)
            _wait(dist.isend(data, dst=rank, group=self.control), self.timeout)

        self._timed(rank, "take a message", hand_over)

    def recv(self, rank: int) -> Any:
        """The next message from ``rank``, waited for without limit (rank 0 may collect
        rollouts or warm up for long; a rank that dies ends the run through the launcher)."""
        return self._receive(rank, None)

    def answer(self, rank: int) -> Any:
        """``rank``'s answer to this rank's last message; raises :class:`RankFailed`
        naming ``rank`` when it does not come within the run's timeout (or ``rank`` is gone)."""
        return self._timed(rank, "answer", lambda: self._receive(rank, self.timeout))

    def command(self, message: Any = None) -> Any:
        """Rank 0's ``message`` to every trainer rank (on rank 0 it is given, elsewhere returned)."""
        if self.rank != 0:
            return self.recv(0)
        for rank in range(1, self.layout.trainers):
            self.send(message, rank)
        return message

    def scatter(self, messages: list[Any] | None = None) -> Any:
        """Rank 0's ``messages[r]`` to each trainer rank ``r``; this rank's is returned."""
        if self.rank != 0:
            return self.recv(0)
        assert messages is not None
        for rank in range(1, self.layout.trainers):
            self.send(messages[rank], rank)
        return messages[0]

    def broadcast(self, message: Any = None) -> Any:
        """Rank 0's ``message`` to every rank, as they start (on rank 0 it is given, elsewhere returned)."""
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def _receive(self, rank: int, timeout: datetime.timedelta | None) -> Any:
        size = torch.zeros(1, dtype=torch.long)
        _wait(dist.irecv(size, src=rank, group=self.control), timeout)
        data = torch.empty(int(size.item()), dtype=torch.uint8)
        _wait(dist.irecv(data, src=rank, group=self.control), timeout)
        return pickle.loads(data.numpy().tobytes())

    def _timed(self, rank: int, what: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception as error:  # gloo's timeout, or a closed connection
            text = str(error).strip()
            first = text.splitlines()[0][:200] if text else type(error).__name__
            raise RankFailed(f"{self.layout.name(rank)} did not {what} within {self.timeout_s:g} s ({first})") from error

    # -- tensors ----------------------------------------------------------------------
    def all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` (one dtype, on this rank's device) over the trainer ranks, in place, in one call."""
        if not tensors:
            return
        flat = _flatten_dense_tensors(tensors)
        dist.all_reduce(flat, group=self.trainers)
        for tensor, reduced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
            tensor.copy_(reduced)

    def broadcast_weights(self, weights: list[torch.Tensor]) -> None:
        """Rank 0's ``weights`` into the generators' buffers of the same shapes and dtypes
        (one call per dtype, over the ``sync`` group)."""
        for dtype in sorted({t.dtype for t in weights}, key=str):
            same = [t for t in weights if t.dtype == dtype]
            flat = _flatten_dense_tensors(same) if self.rank == 0 else torch.empty(sum(t.numel() for t in same), dtype=dtype, device=self.device)
            dist.broadcast(flat, src=0, group=self.sync)
            if self.rank != 0:
                for tensor, value in zip(same, _unflatten_dense_tensors(flat, same)):
                    tensor.copy_(value)

    def close(self) -> None:
        """Leave the process groups."""
        if dist.is_initialized():
            dist.destroy_process_group()


def _wait(work: Any, timeout: datetime.timedelta | None) -> None:
    """Wait for a point-to-point ``work``: at most ``timeout`` (``None``: without limit,
    gloo's own default for these)."""
    assert work is not None  # this rank is in the group
    if timeout is None:
        work.wait()
    else:
        work.wait(timeout)


_CURRENT: Group | None = None


def init(layout: Layout, device: str, timeout_s: float) -> Group:
    """Join the run's process groups; :func:`current` returns them until :func:`close`."""
    global _CURRENT
    _CURRENT = Group(layout, device, timeout_s)
    return _CURRENT


def current() -> Group | None:
    """This process's distributed run, or ``None`` in a single-process run."""
    return _CURRENT


def close() -> None:
    """Leave the process groups (nothing when there are none)."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.close()
        _CURRENT = None
