"""The trainer's update timed alone over batch shapes, for ``calibrate --step-profile``.

A run's own updates show its training step at one or two batch shapes, and a small
model's step there is often the host's: the same time for 32 rows as for 64, while
the GPU waits on the kernels' launches.  Past some size the GPU's work takes over and
the step grows with the batch, which no fit of those updates can see.  A profile
builds the run's model and trainer again (its ``run.json``: task, model, objective,
device), takes batches of the run's own stored groups (``samples.sqlite``) at several
row counts and times the whole update (:meth:`Trainer.rl_step`: the advantages, the
forward and backward passes and the optimiser's step), ``iterations`` times each
after ``warmup`` untimed ones.  Nothing in the run directory is changed; the weights
are the model's initial ones (the time of a step does not depend on them).
"""

from __future__ import annotations

import csv
import io
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The profile's CSV columns (``calibrate --step-profile`` reads ``padded_tokens`` and ``seconds``).
COLUMNS = ("rows", "width", "padded_tokens", "seconds", "p10_s", "p90_s")


@dataclass(frozen=True)
class ProfileRow:
    """One batch shape's timing: ``rows`` samples padded to ``width`` tokens each."""

    rows: int
    width: int
    padded_tokens: int
    seconds: float  # the median update
    p10_s: float
    p90_s: float


def stored_groups(run_dir: Path, group_size: int) -> list[list[Any]]:
    """The run's stored groups of ``group_size`` samples, each with a completion."""
    from engine.runtime.ports import Sample
    from engine.runtime.store import read_stored

    found = read_stored(run_dir / "samples.sqlite")
    groups = [[Sample.from_json(s) for s in samples] for _, samples in found if len(samples) == group_size]
    if not groups:
        raise ValueError(f"{run_dir / 'samples.sqlite'}: no stored group of {group_size} samples with completions to train on")
    return groups


def profile_step(run_dir: str | Path, rows: Sequence[int], *, iterations: int = 10, warmup: int = 3, device: str | None = None,
                 seed: int = 0, progress: Callable[[ProfileRow], None] | None = None) -> list[ProfileRow]:
    """Time the update of ``run_dir``'s trainer on batches of ``rows`` samples (each a
    multiple of its group size), drawn from its stored groups with ``seed``."""
    import json

    import torch

    from engine.backends.local.trainer import Trainer, padded_width
    from engine.backends.task_sources import resolve_task
    from engine.workflows import rl_models
    from engine.workflows.rl_config import RunConfig

    if iterations < 1 or warmup < 0:
        raise ValueError(f"iterations {iterations} must be at least 1 and warmup {warmup} at least 0")
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no run config; a profile builds the run's model and trainer from it")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        config = RunConfig.from_json(saved if device is None else {**saved, "device": device})
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a run's config ({err})") from None
    group = config.group_size
    bad = [n for n in rows if n < group or n % group]
    if not rows or bad:
        raise ValueError(f"rows {', '.join(map(str, bad or rows)) or '(none)'}: each must be a positive multiple of the run's "
                         f"group size {group}")
    groups = stored_groups(run_dir, group)
    target = rl_models.prepare_device(config)
    torch.manual_seed(config.seed)
    task = resolve_task(config.task, reward=config.reward_fn, max_new_tokens=config.max_new_tokens)
    tokenizer = rl_models.build_tokenizer(config)
    trainer = Trainer(rl_models.build_policy(config, tokenizer, task, target), config.trainer_config(), pad_id=tokenizer.pad_id,
                      device=target)
    draw = random.Random(seed)

    def synchronize() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize()

    found: list[ProfileRow] = []
    for count in rows:
        seconds, widths = [], []
        for turn in range(warmup + iterations):
            batch = [draw.choice(groups) for _ in range(count // group)]
            synchronize()
            began = time.perf_counter()
            trainer.rl_step(batch)
            synchronize()
            if turn >= warmup:
                seconds.append(time.perf_counter() - began)
                widths.append(padded_width([s for g in batch for s in g], trainer.model.max_seq_len))
        seconds.sort()
        width = round(statistics.mean(widths))
        row = ProfileRow(count, width, round(count * statistics.mean(widths)), statistics.median(seconds),
                         seconds[int(0.1 * (len(seconds) - 1))], seconds[int(0.9 * (len(seconds) - 1) + 0.5)])
        found.append(row)
        if progress is not None:
            progress(row)
    return found


def to_csv(profile: Sequence[ProfileRow]) -> str:
    """The profile as CSV text (:data:`COLUMNS`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in profile:
        writer.writerow([row.rows, row.width, row.padded_tokens, f"{row.seconds:.6g}", f"{row.p10_s:.6g}", f"{row.p90_s:.6g}"])
    return out.getvalue()
