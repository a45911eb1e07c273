"""One process of a distributed RL run (``rollout-ledger train`` under ``torchrun``):
its role from the environment (:class:`~engine.backends.distributed.group.Layout`), then

- rank 0: the reinforcement workflow, as in a single process (:func:`reinforcement.train`),
  its :class:`~engine.workflows.rl_run.RLRun` with a data-parallel trainer and, with
  generator ranks, a :class:`~engine.backends.distributed.generation.RemoteEngine`;
- the other trainer ranks: the same policy, then rank 0's steps (:func:`~engine.backends.distributed.trainer.follow`);
- the generator ranks: the same policy in a generation engine, serving rank 0
  (:func:`~engine.backends.distributed.generation.serve`).

Rank 0 sends the run's config to every rank first, so that every rank builds the
same policy whatever its own command line holds.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from engine.backends.distributed import group as dist_group
from engine.backends.distributed.generation import serve
from engine.backends.distributed.group import Layout
from engine.backends.distributed.trainer import DataParallelTrainer, follow
from engine.workflows import reinforcement
from engine.workflows.rl_config import RunConfig
from engine.workflows.rl_run import RLRun


def run_worker(
    config: RunConfig, run_dir: str | Path, *, generators: int, timeout_s: float, resume: bool = False, **train: Any
) -> dict[str, Any] | None:
    """This process's part of the run; rank 0 returns the run's summary, the others ``None``.
    Every rank reads ``config`` from its command line (its ``device`` picks the backend);
    rank 0's is the one that counts and reaches the others.  ``train`` goes to
    :func:`reinforcement.train`."""
    layout = Layout.from_env(generators)
    check_split(config, layout.trainers, layout.generators)
    group = dist_group.init(layout, config.device, timeout_s)
    try:
        config = RunConfig.from_json(group.broadcast(asdict(config) if layout.rank == 0 else None))
        if layout.rank == 0:
            return reinforcement.train(config, run_dir, resume=resume, **train)
        torch.manual_seed(config.seed)
        rl = RLRun(config, run_dir)  # the task, the tokenizer and the policy as rank 0 builds them; nothing is written
        if layout.is_trainer:
            trainer = DataParallelTrainer(rl.build_policy(), config.trainer_config(), pad_id=rl.tokenizer.pad_id,
                                          device=rl.device, group=group)
            follow(trainer)
        else:
            serve(group, lambda settings: _generation_engine(rl, settings))
        return None
    finally:
        dist_group.close()


def check_split(config: RunConfig, trainers: int, generators: int = 0) -> None:
    """Refuse (``ValueError``) a run whose batch or rollouts in flight do not split
    evenly among ``trainers`` ranks, or whose minibatches are too small to give each
    rank at least one sample, or ``--overlap`` other than with ``generators`` ranks and
    one trainer rank.

    ``--overlap`` with generator ranks runs rank 0's event loop (the ledger, the
    executor and the :class:`~engine.backends.distributed.generation.RemoteEngine`'s
    ticks) in a thread of its own, so the generators decode while rank 0 trains; its
    messages to the generators then go from that thread, while the main thread trains.
    Other trainer ranks take rank 0's messages from the main thread over the same
    control group, so a run with more than one trainer rank is refused rather than
    have two threads message on that group.

    The one global ledger admits every rank's rollouts: its limits are the sum of the
    per-rank limits ``max(1, x // dp_size)`` that the capacity rule gives each of
    ``dp_size = trainers`` ranks, which are the global ones exactly when ``x`` is a
    multiple of the ranks (each rank's share of a batch is then ``batch_size // trainers``
    rollouts)."""
    if config.kl_target and trainers > 1:
        raise ValueError("--kl-target adapts the rate from rank 0's shard of each update; with --nproc above 1 the ranks "
                         "would need one measure: leave out --kl-target")
    if config.behaviour_m2 and trainers > 1:
        raise ValueError("--behaviour-m2 bounds the tokens of a whole minibatch; with --nproc above 1 each rank holds a "
                         "share of it and would bound its own: leave out --behaviour-m2")
    if config.overlap and not generators:
        raise ValueError("--overlap with --nproc needs generator ranks (--generators K): with none, generation runs on rank 0, "
                         "in a thread of one process only without --nproc")
    if config.overlap and trainers > 1:
        raise ValueError(f"--overlap with --generators runs with one trainer rank, got --nproc {trainers}: rank 0 would "
                         "message the generators from its generation thread and the other trainer ranks from its main thread")
    for flag, value in (("--batch-size", config.batch_size), ("--max-concurrent", config.max_concurrent)):
        if value is not None and value % trainers:
            raise ValueError(f"--nproc {trainers}: {flag} {value} does not split evenly among {trainers} trainer ranks "
                             f"(each rank's limit is {flag} // {trainers} = {max(1, value // trainers)}); give a multiple of {trainers}")
    samples = config.batch_size * config.group_size
    smallest = samples // min(config.minibatches, samples)
    if smallest < trainers:
        raise ValueError(f"--nproc {trainers}: a minibatch of {smallest} samples (batch size x group size / minibatches) "
                         f"cannot give each of {trainers} trainer ranks a sample")


def _generation_engine(rl: RLRun, settings: dict[str, Any]) -> Any:
    """A generator rank's engine: the run's policy (bf16 on a GPU) in the in-process engine."""
    if rl.config.engine == "vllm":
        raise ValueError("--generators runs the in-process engines (built-in or Hugging Face), not --engine vllm")
    model = rl.build_policy()
    if rl.device.type == "cuda":
        model = model.to(torch.bfloat16)
    return rl.build_engine(model, settings["slots"], settings["seed"])
