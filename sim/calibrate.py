"""Calibrate the simulator's cost model from timed event logs (simulated or real).

What is fitted, from the events' ``t`` stamps and, for a real run, the
``metrics.jsonl`` lines beside its log (:mod:`sim.calibrate_real`):

- response lengths per sample (a real run's ``samples.sqlite``): the observed ones,
  written as a CSV (``lengths_file``): for real runs of groups, every group each run
  at the calibrated setting submitted, in order, which a simulation follows by the
  rollouts trained (``workload.replay``), else the lengths an ``empirical``
  distribution resamples; and a lognormal (median and log standard deviation, capped
  at the largest seen), printed always and used when no lengths file is asked for;
- a real run: generation (decode step base, per slot, per sequence; prefill per pass and
  per token; the executor per started rollout),
  the training step (base, per token, per sequence), recompute, weight sync and the
  per-update overhead, from the engine's counters and the update's timed parts;
- a simulated log: the training step ``base + per_token * tokens`` (``consumed`` to
  the next ``paused`` against the batch's response tokens), the weight sync (median
  ``paused`` to ``version``) and the decode step ``base + per_seq * active`` (each
  single-segment rollout's seconds per token against the rollouts running per server
  meanwhile; KV-cache cost folded into these two terms).

Fit quality is R-squared and residual percentiles per regression; a term the data
cannot identify is named.  Too few timed events is a :class:`CalibrationError`
naming what is missing.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from engine.core.events import (
    Accepted, Consumed, Event, Filtered, InterruptedBatch, Paused, Rejected, Segment, Submitted, Unpaused, Version,
)
from engine.log.files import write_atomic
from sim.calibrate_real import RealCosts, Update, fit_costs, updates
from sim.config import Distribution, Scenario
from sim.fitting import Fit, line
from sim.workload import PROMPT_COLUMN, RUN_COLUMN, TRAINED_COLUMN

#: The fewest timed observations each fit needs.
MIN_UPDATES = 3
MIN_ROLLOUTS = 8
#: A real run's answers come in spells (a policy that runs long for a while, then short):
#: the groups started in each window of this many versions are drawn from one window of


class CalibrationError(ValueError):
    """A log that cannot be calibrated from; the message says what is missing."""


@dataclass
class Observations:
    """What one or more logs say about costs."""

    lengths: list[int] = field(default_factory=list)
    train: list[tuple[float, float]] = field(default_factory=list)  # (tokens, seconds)
    sync: list[float] = field(default_factory=list)
    decode: list[tuple[float, float]] = field(default_factory=list)  # (active per server, seconds per token)
    decode_weights: list[float] = field(default_factory=list)  # decode steps behind each observation (real runs)
    config: dict[str, Any] = field(default_factory=dict)
    real: bool = False
    group_size: int = 1
    overlapped: bool = False  # a real run that generated while it trained (``train --overlap``)
    kept_cache: bool = False  # a real run whose engine decoded on over its cache after new weights (``--keep-cache``)
    groups: list[list[int]] = field(default_factory=list)  # each stored rollout's samples' lengths (a real run)
    group_prompts: list[int] = field(default_factory=list)  # each stored rollout's prompt tokens (with groups, in order)
    trained_per_rollout: list[float] = field(default_factory=list)  # a real run's trained tokens per rollout
    updates: list[Update] = field(default_factory=list)  # a real run's updates (sim.calibrate_real)
    run_names: list[str] = field(default_factory=list)  # the run directory of each real run whose updates are in ``updates``, in order
    prompts: list[int] = field(default_factory=list)  # a real run's prompt tokens per sample (its sample store)
    checkpoint_every: int = 1  # the first real run's checkpoint interval (``run.json``)


def _events(path: Path) -> Iterable[Event]:
    from engine.log import EventLog, read_jsonl

    if path.suffix == ".jsonl":
        yield from read_jsonl(path)
        return
    with EventLog(path, mode="r") as log:
        yield from log.events()


def _made(event: Segment | InterruptedBatch) -> Iterable[tuple[str, int]]:
    """The tokens a segment or an update's interruption records, by rollout."""
    if isinstance(event, Segment):
        return ((event.rollout, event.tokens),)
    return zip(event.rollouts, event.tokens)


def _log_path(path: Path) -> Path:
    if path.is_dir():
        candidate = path / "events.sqlite"
        if not candidate.is_file():
            raise CalibrationError(f"{path}: a folder without events.sqlite (a run directory holds one)")
        return candidate
    if not path.is_file():
        raise CalibrationError(f"{path}: no such log")
    return path


def counts_prompt(extra_per_sample: float, prompt: float | None) -> bool:
    """Whether a trainer counts each sample's prompt among its trained tokens, from what
    it trained per sample beyond the observed responses: nearer the mean ``prompt`` than
    nothing (with no prompts known, it does).  The responses are a sample of the run's
    (the rollouts its end leaves unfinished are out), so the difference is never exactly
    0: a short run's was half a token a sample, which rounded up once read as a trainer
    counting prompts and put a 12-token prompt into every simulated sample."""
    return prompt is None or extra_per_sample > prompt / 2


def observe(path: str | Path, obs: Observations | None = None, servers: int = 1) -> Observations:
    """Add what the log at ``path`` (a log file or a run directory) says to ``obs``."""
    obs = obs or Observations()
    log = _log_path(Path(path))
    run_json = log.parent / "run.json"
    every_slot: bool | None = None  # how its engine decoded, for metrics lines that do not say
    if run_json.is_file():
        try:
            run_config = json.loads(run_json.read_text())
            obs.group_size = max(1, int(run_config.get("group_size", 1)))
            # a run of a model directory had the Hugging Face or the vLLM engine (live rows
            # only), one of a built-in size the built-in engine (every slot)
            every_slot = not run_config.get("model_dir")
            obs.overlapped = obs.overlapped or bool(run_config.get("overlap", False))
            obs.kept_cache = obs.kept_cache or bool(run_config.get("keep_cache", False))
            if not obs.real:  # the first run's, as its ledger settings are
                obs.checkpoint_every = max(0, int(run_config.get("checkpoint_every", 1)))
        except (ValueError, TypeError, AttributeError) as err:
            raise CalibrationError(f"{run_json}: not a run's config ({err})") from None
    group = obs.group_size
    tokens: dict[str, int] = {}
    started: dict[str, tuple[float, float, float]] = {}
    interrupted: set[str] = set()
    running = 0
    consumed_at: float | None = None
    batch_tokens = 0
    paused_at: float | None = None
    mark = (len(obs.train), len(obs.decode), len(obs.decode_weights), len(obs.sync))
    mark_lengths = len(obs.lengths)
    settings: dict[str, Any] = {}  # this log's ledger settings
    submitted: list[float] = []  # the times rollouts were submitted
    first_submitted: dict[str, float] = {}  # each rollout's first submission (a requeued one keeps its first)
    accepted: list[tuple[str, int]] = []  # (rollout, length per sample) as accepted
    done_tokens: dict[str, int] = {}
    timed = 0
    # Running integrals over the unpaused time: rollout-seconds in flight, and the
    # seconds generation was paused, so a rollout's mean batch is area / decode time.
    area = paused_total = 0.0
    last_t: float | None = None
    gen_paused = False
    for event in _events(log):
        t = getattr(event, "t", None)
        if t is not None:
            timed += 1
            if last_t is not None and t > last_t:
                if gen_paused:
                    paused_total += t - last_t
                else:
                    area += running * (t - last_t)
            last_t = t
        name = type(event).__name__
        if name == "RunStarted":
            config = getattr(event, "config", None)
            if config is not None:
                settings = {k: getattr(config, k) for k in ("max_concurrent", "batch_size", "max_staleness", "policy") if hasattr(config, k)}
                obs.config = obs.config or settings  # the first log's settings are the scenario's
        if isinstance(event, Submitted):
            running += 1
            if t is not None:
                submitted.append(t)
                started[event.rollout] = (t, area, paused_total)
                first_submitted.setdefault(event.rollout, t)
        elif isinstance(event, (Segment, InterruptedBatch)):
            for rollout, count in _made(event):
                tokens[rollout] = tokens.get(rollout, 0) + count
            if isinstance(event, InterruptedBatch):
                interrupted.update(event.rollouts)
        elif isinstance(event, Accepted):
            running -= 1
            count = tokens.pop(event.rollout, 0)
            begun = started.pop(event.rollout, None)
            if count > 0:
                # a rollout is a group of samples decoded side by side: its length per sample
                accepted.append((event.rollout, max(1, round(count / group))))
                done_tokens[event.rollout] = count
                if begun is not None and t is not None and event.rollout not in interrupted:
                    busy = (t - begun[0]) - (paused_total - begun[2])
                    if busy > 0:
                        active = (area - begun[1]) / busy * group
                        obs.decode.append((active / max(1, servers), busy / max(1.0, count / group)))
            interrupted.discard(event.rollout)
        elif isinstance(event, (Rejected, Filtered)):
            if event.rollout in started or event.rollout in tokens:
                running -= 1
            tokens.pop(event.rollout, None)
            started.pop(event.rollout, None)
            interrupted.discard(event.rollout)
        elif isinstance(event, Consumed):
            consumed_at = t
            batch_tokens = sum(done_tokens.pop(r, 0) for r in event.rollouts)
        elif isinstance(event, Paused):
            if consumed_at is not None and t is not None:
                obs.train.append((float(batch_tokens), t - consumed_at))
            consumed_at = None
            paused_at = t
            gen_paused = True
        elif isinstance(event, Version):
            if paused_at is not None and t is not None:
                obs.sync.append(t - paused_at)
            paused_at = None
        elif isinstance(event, Unpaused):
            gen_paused = False
    if timed == 0:
        raise CalibrationError(f"{log}: its events carry no times (t); calibration needs a timed log")
    keep = uncensored(first_submitted, started)
    obs.lengths.extend(length for rollout, length in accepted if keep(rollout) for _ in range(group))
    samples = _sample_lengths(log.parent / "samples.sqlite", obs.prompts, obs.groups, obs.group_prompts, keep, first_submitted)
    if samples and group > 1:
        # a real run's log sums a rollout's tokens over its group; its sample store has
        # each sample, whose spread (not the group means') sets when a group finishes
        obs.lengths = obs.lengths[:mark_lengths] + samples
    metrics = log.parent / "metrics.jsonl"
    if metrics.is_file():
        _metrics(metrics, obs, log, mark, submitted, settings, every_slot)
    return obs


def uncensored(first_submitted: dict[str, float], unfinished: Iterable[str]) -> Callable[[str], bool]:
    """Which rollouts' lengths are a fair sample of the run's: those first submitted
    before the oldest rollout still unfinished when the log ends.

    A run stops with rollouts in flight, and the ones still running are the long ones
    of their time; the rollouts that finished among those started as late are the
    short ones. Keeping every finished rollout would bias the lengths short, and the
    simulator, which also stops with its long rollouts in flight, would bias them
    again (on an H200 run of 150 updates: 9.45 tokens a sample for every stored
    rollout, 9.62 for those started before the oldest unfinished one). Every rollout
    started before that one has finished, whatever its length."""
    horizon = min((first_submitted[r] for r in unfinished if r in first_submitted), default=math.inf)
    return lambda rollout: first_submitted.get(rollout, -math.inf) < horizon


def _metrics(
    metrics: Path, obs: Observations, log: Path, mark: tuple[int, int, int, int], submitted: list[float], settings: dict[str, Any],
    every_slot: bool | None = None,
) -> None:
    """A real run: its updates' costs from ``metrics.jsonl`` (the events' times give the
    weight sync only for runs older than the ``sync_s`` field; ``every_slot``, how its
    engine decoded, for lines older than the ``decodes_every_slot`` field)."""
    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as err:
        raise CalibrationError(f"{metrics}: not a run's metrics ({err})") from None
    usable = [r for r in rows if isinstance(r, dict) and "train_s" in r and "trained_tokens" in r]
    if not usable:
        return
    # the fits from this log's events (a simulated log's way) do not apply to a real run
    obs.real = True
    del obs.train[mark[0]:], obs.decode[mark[1]:], obs.decode_weights[mark[2]:], obs.sync[mark[3]:]
    size = int(settings.get("batch_size", 1)) or 1
    group = obs.group_size
    obs.trained_per_rollout.extend(float(r["trained_tokens"]) / size for r in usable)
    slots = int(settings.get("max_concurrent") or size) * group
    found = updates(usable, slots, size * group, recompute_in_step=settings.get("policy") != "segment_wise", submitted=submitted,
                    run=1 + max((u.run for u in obs.updates), default=-1), every_slot=every_slot)
    obs.updates.extend(found)
    obs.run_names.append(log.parent.name)
    obs.train.extend((u.trained_tokens, u.step_s) for u in found)
    obs.decode.extend((u.tokens / u.steps, u.collect_s / u.steps) for u in found if u.steps > 0)
    if any(u.sync_s is None for u in found):
        _resync(log, obs)
    else:
        obs.sync.extend(u.sync_s for u in found if u.sync_s is not None)


def _stored(path: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """The samples of each rollout in a real run's sample store (its ``samples.sqlite``,
    :func:`engine.runtime.store.read_stored`), those with a completion, in the store's
    order (the order the rollouts were accepted)."""
    from engine.runtime.store import read_stored

    try:
        return read_stored(path)
    except ValueError as err:
        raise CalibrationError(str(err)) from None


def _sample_lengths(
    path: Path, prompts: list[int] | None = None, groups: list[list[int]] | None = None, group_prompts: list[int] | None = None,
    keep: Callable[[str], bool] | None = None, submitted: Mapping[str, float] | None = None,
) -> list[int]:
    """Completion lengths of every stored sample of a real run (:func:`_stored`), of the
    rollouts ``keep`` accepts when given; their prompt lengths are added to ``prompts``,
    each rollout's lengths to ``groups`` and its prompt's length to ``group_prompts``
    when given, in the order the rollouts were first submitted when ``submitted`` gives
    those times (else the store's, the order they were accepted)."""
    rows = _stored(path)
    if submitted is not None:
        rows.sort(key=lambda row: submitted.get(row[0], math.inf))
    try:
        stored = [samples for rollout, samples in rows if keep is None or keep(rollout)]
        samples = [sample for rollout in stored for sample in rollout]
        if groups is not None:
            groups.extend([len(sample["completion"]) for sample in rollout] for rollout in stored if rollout)
        if group_prompts is not None:
            group_prompts.extend(len(rollout[0].get("prompt") or ()) for rollout in stored if rollout)
        if prompts is not None:
            prompts.extend(len(sample.get("prompt") or ()) for sample in samples)
        return [len(sample["completion"]) for sample in samples]
    except (KeyError, TypeError) as err:
        raise CalibrationError(f"{path}: not a run's sample store ({err})") from None


class Course(NamedTuple):
    """A run's groups in the order it first submitted them: each one's prompt length, its
    samples' lengths, and the rollouts the run had trained on when it submitted it
    (its version then, times the run's batch): the policy's progress."""

    prompts: list[int]
    groups: list[list[int]]
    trained: list[int]


def courses_of(paths: list[str | Path]) -> list[Course]:
    """The groups (:func:`run_groups`) of each run among ``paths`` made at the first's
    ledger settings and group size, the ones a replay of the calibrated setting follows;
    none unless every path is a real run directory (a ``run.json`` and a sample store)."""
    keys = ("batch_size", "group_size", "max_concurrent", "max_staleness", "policy")
    settings: list[tuple[Path, tuple[Any, ...]]] = []
    for path in paths:
        run = _log_path(Path(path)).parent
        if not (run / "run.json").is_file() or not (run / "samples.sqlite").is_file():
            return []
        try:
            config = json.loads((run / "run.json").read_text())
            settings.append((run, tuple(config.get(key) for key in keys)))
        except (ValueError, AttributeError) as err:
            raise CalibrationError(f"{run / 'run.json'}: not a run's config ({err})") from None
    return [run_groups(run) for run, these in settings if these == settings[0][1]]


def run_groups(run: str | Path) -> Course:
    """A real run's groups in the order they were first submitted (a :class:`Course`),
    for a simulation that replays the run's own workload or follows its course
    (``workload.replay``). An accepted group has its samples' lengths from the sample
    store. A group still unfinished when the log ended is a censored one: all that is
    known is that it had made some tokens and not finished. It takes the lengths of one
    of the run's finished groups that could have made as many tokens without finishing
    (:func:`unfinished_lengths`), drawn with a fixed seed; a run stops with groups it has
    only just started, which would mostly have ended short. A dropped one (rejected or
    filtered) has the tokens it had made, spread over its samples. Those two have the
    run's median prompt."""
    log = _log_path(Path(run))
    group = batch = 1
    run_json = log.parent / "run.json"
    if run_json.is_file():
        try:
            config = json.loads(run_json.read_text())
            group, batch = max(1, int(config.get("group_size", 1))), max(1, int(config.get("batch_size", 1)))
        except (ValueError, TypeError, AttributeError) as err:
            raise CalibrationError(f"{run_json}: not a run's config ({err})") from None
    order: dict[str, int] = {}  # rollouts, first submitted first, with the version they were submitted under
    tokens: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for event in _events(log):
        if isinstance(event, Submitted):
            order.setdefault(event.rollout, event.version)
        elif isinstance(event, (Segment, InterruptedBatch)):
            for rollout, count in _made(event):
                tokens[rollout] = tokens.get(rollout, 0) + count
        elif isinstance(event, (Rejected, Filtered)):
            dropped[event.rollout] = tokens.get(event.rollout, 0)
    stored = {rollout: samples for rollout, samples in _stored(log.parent / "samples.sqlite") if samples}
    if not stored:
        raise CalibrationError(f"{log.parent}: no sample store with completions (samples.sqlite), which holds each sample's length")
    try:
        accepted = {rollout: (len(samples[0].get("prompt") or ()), [len(sample["completion"]) for sample in samples])
                    for rollout, samples in stored.items()}
    except (KeyError, TypeError) as err:
        raise CalibrationError(f"{log.parent / 'samples.sqlite'}: not a run's sample store ({err})") from None
    # a sample that made no token counts one (an empty completion is not stored)
    finished = {rollout: (lengths + [1] * group)[:max(group, len(lengths))] for rollout, (_, lengths) in accepted.items()}
    could_be = list(finished.values())  # what an unfinished group is drawn from
    draw = random.Random(0)
    median_prompt = round(statistics.median(prompt for prompt, _ in accepted.values()))
    prompts: list[int] = []
    groups: list[list[int]] = []
    trained: list[int] = []
    for rollout, version in order.items():
        if rollout in accepted:
            prompt, lengths = accepted[rollout][0], finished[rollout]
        elif rollout in dropped:
            prompt, lengths = median_prompt, [max(1, -(-dropped[rollout] // group))] * group
        else:
            prompt, lengths = median_prompt, unfinished_lengths(tokens.get(rollout, 0), could_be, group, draw)
        prompts.append(prompt)
        groups.append(lengths)
        trained.append(version * batch)
    return Course(prompts, groups, trained)


def unfinished_lengths(made: int, finished: list[list[int]], group: int, draw: random.Random) -> list[int]:
    """Lengths for a group of ``group`` samples that had made ``made`` tokens when its
    run ended, unfinished: one of the ``finished`` groups (each its samples' lengths)
    that makes at least as many before its last decode step (each sample's length, its
    longest one less one), picked by ``draw``; where none could have made as many and
    still be running, the longest finished length for every sample. A run's last groups
    are censored, not long: taking every one at the run's longest length (as this did
    before) made a synchronous run, which trains all it starts, train about 7% more
    tokens an update in its prediction than the calibration runs' groups hold (round 19)."""
    could = [lengths for lengths in finished if sum(min(length, max(lengths) - 1) for length in lengths) >= made]
    if not could:
        return [max(max(lengths) for lengths in finished)] * group
    return list(draw.choice(could))


def _resync(log: Path, obs: Observations) -> Observations:
    version_at: float | None = None
    for event in _events(log):
        t = getattr(event, "t", None)
        if isinstance(event, Version):
            version_at = t
        elif isinstance(event, Unpaused) and version_at is not None and t is not None:
            obs.sync.append(t - version_at)
            version_at = None
    return obs


@dataclass
class Calibration:
    """The fitted scenario and the fits behind it."""

    scenario: Scenario
    fits: list[Fit]
    lognormal: Distribution
    sync_s: float
    counts: dict[str, int]
    lengths: list[int] = field(default_factory=list)  # response tokens per sample, as observed
    costs: RealCosts | None = None  # a real run's cost fits
    replayed: list[int] = field(default_factory=list)  # the groups of each run a replay follows (workload.replay)
    profile_notes: list[str] = field(default_factory=list)  # the training step's profile fit (--step-profile)

    def report(self) -> str:
        lines = [f"{'fit':<16} {'R^2':>7} {'|res| p50':>10} {'p90':>8} {'p99':>8}  coefficients"]
        for fit in self.fits:
            p = fit.percentiles()
            terms = "  ".join(f"{k} {v:.4g}" for k, v in fit.coefficients.items())
            unfit = f"  (dropped, 0: {', '.join(fit.dropped)})" if fit.dropped else ""
            lines.append(f"{fit.name:<16} {fit.r2:>7.3f} {p['p50']:>10.1%} {p['p90']:>8.1%} {p['p99']:>8.1%}  {terms}{unfit}")
        lines.extend(self.profile_notes)
        d = self.lognormal
        response = self.scenario.workload.response_len
        chosen = f"empirical ({len(self.lengths)} samples)" if response.kind == "empirical" else "lognormal"
        if self.replayed:
            chosen = (f"replay of {len(self.replayed)} runs' groups in the order submitted ({', '.join(map(str, self.replayed))} groups; "
                      f"followed by the rollouts trained; seed k follows run k modulo {len(self.replayed)})")
        lines.append(f"response length  lognormal median {d.median:.1f} sigma {d.sigma:.3f} cap {d.cap}; used: {chosen}")
        if self.lengths:
            ordered = sorted(self.lengths)
            pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
            lines.append(f"                 observed mean {statistics.fmean(ordered):.1f} p50 {pick(0.5)} p90 {pick(0.9)} p99 {pick(0.99)} max {ordered[-1]}")
        lines.append(f"weight sync      mean {self.sync_s:.4g} s" if self.costs else f"weight sync      median {self.sync_s:.4g} s")
        if self.costs is not None:
            lines.extend(self.costs.notes())
        lines.append("observations     " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        return "\n".join(lines)


def write_lengths(
    lengths: list[int], path: str | Path, groups: list[list[int]] | None = None, prompts: list[int] | None = None,
    runs: list[int] | None = None, trained: list[int] | None = None,
) -> Path:
    """The observed response lengths as a CSV an ``empirical`` distribution reads: one
    row per group of samples when ``groups`` are given (the simulator draws a group's
    lengths together), led by its prompt's length when ``prompts`` are given (a
    ``paired`` prompt length draws them with it), and before it by the run it came from
    and the rollouts that run had trained on when ``runs`` and ``trained`` are given (a
    replay follows one run's rows by the policy's progress), else one length per row."""
    if groups and prompts and runs and trained:
        return write_atomic(Path(path), f"{RUN_COLUMN},{TRAINED_COLUMN},{PROMPT_COLUMN},lengths of one group\n"
                            + "".join(f"{run},{count},{prompt}," + ",".join(map(str, g)) + "\n"
                                      for run, count, prompt, g in zip(runs, trained, prompts, groups)))
    if groups and prompts:
        return write_atomic(Path(path), f"{PROMPT_COLUMN},lengths of one group\n"
                            + "".join(f"{prompt}," + ",".join(map(str, g)) + "\n" for prompt, g in zip(prompts, groups)))
    if groups:
        return write_atomic(Path(path), "lengths of one group\n" + "".join(",".join(map(str, g)) + "\n" for g in groups))
    return write_atomic(Path(path), "length\n" + "".join(f"{n}\n" for n in lengths))


def read_step_profile(path: str | Path) -> list[tuple[float, float]]:
    """The ``(padded tokens, seconds)`` of each batch shape in a step profile's CSV
    (``profile-step``: a header naming ``padded_tokens`` and ``seconds``); a bad file,
    header or value is refused naming it and its line."""
    import csv

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CalibrationError(f"{path}: cannot read the step profile ({err})") from None
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"padded_tokens", "seconds"} <= {f.strip() for f in reader.fieldnames}:
        raise CalibrationError(f"{path}: not a step profile (its header must name padded_tokens and seconds; profile-step writes one)")
    found = []
    for line, row in enumerate(reader, start=2):
        try:
            padded, seconds = float(row["padded_tokens"]), float(row["seconds"])
        except (TypeError, ValueError) as err:
            raise CalibrationError(f"{path}: line {line}: {err}") from None
        if not (0 < padded < math.inf and 0 < seconds < math.inf):
            raise CalibrationError(f"{path}: line {line}: padded_tokens and seconds must be positive and finite")
        found.append((padded, seconds))
    if len(found) < 2:
        raise CalibrationError(f"{path}: a step profile needs at least two batch shapes, found {len(found)}")
    return found


def profiled_step(training: Any, profile: list[tuple[float, float]], updates: list[Any]) -> tuple[Any, list[str]]:
    """``training`` with its step from a profile of the trainer's update alone
    (``(padded tokens, seconds)`` per batch shape, ``profile-step``): its
    :func:`~sim.fitting.floor_line`, moved by how much longer the runs' own ``updates``
    took than the profile at their shapes (the run's work around the step, which the
    profile leaves out), with the report's lines on it."""
    from sim.fitting import floor_line

    shaped = [u for u in updates if u.padded_tokens]
    if not shaped:
        raise CalibrationError("--step-profile: the runs logged no padded batch (padded_tokens) to place them on the profile")
    shape = floor_line([x for x, _ in profile], [y for _, y in profile])
    offset = statistics.fmean(u.step_s - shape.at(u.padded_tokens) for u in shaped)
    fitted = replace(training, step_base_s=max(0.0, shape.base + offset), step_per_token_s=0.0, step_per_seq_s=0.0,
                     step_per_padded_token_s=shape.slope, step_floor_s=max(0.0, shape.floor + offset) if shape.floor else 0.0)
    p = Fit("step profile", {}, shape.r2, shape.residuals).percentiles()
    lines = [f"{'step profile':<16} {shape.r2:>7.3f} {p['p50']:>10.1%} {p['p90']:>8.1%} {p['p99']:>8.1%}  "
             f"floor {shape.floor:.4g} s up to {shape.knee:.0f} padded tokens, then {shape.base:.4g} + {shape.slope:.4g} per padded "
             f"token ({len(profile)} shapes, {min(x for x, _ in profile):.0f} to {max(x for x, _ in profile):.0f} padded tokens)",
             f"{'':<16} the runs' steps took {offset * 1e3:+.2f} ms against it at their shapes ({len(shaped)} updates): "
             f"training.step_floor_s {fitted.step_floor_s:.4g}, step_base_s {fitted.step_base_s:.4g}, "
             f"step_per_padded_token_s {fitted.step_per_padded_token_s:.4g} (in place of the runs' own fit)"]
    return fitted, lines


def calibrate(
    paths: list[str | Path], base: Scenario | None = None, servers: int = 1, lengths_file: str | Path | None = None,
    step_profile: list[tuple[float, float]] | None = None,
) -> Calibration:
    """Fit ``base`` (default: the default scenario) to the logs at ``paths``.  With
    ``lengths_file`` the response lengths are the observed ones, written there (the
    empirical distribution); without, the lognormal fit.  With ``step_profile`` (padded
    tokens and seconds of the trainer's update alone at several batch shapes), the
    training step follows its shape (:func:`profiled_step`); real runs only."""
    obs = Observations()
    for path in paths:
        observe(path, obs, servers=servers)
    missing = []
    if len(obs.lengths) < MIN_ROLLOUTS:
        missing.append(f"{len(obs.lengths)} accepted rollouts with tokens (need {MIN_ROLLOUTS})")
    if len(obs.train) < MIN_UPDATES:
        missing.append(f"{len(obs.train)} timed training steps (need {MIN_UPDATES})")
    if len(obs.decode) < (MIN_UPDATES if obs.real else MIN_ROLLOUTS):
        missing.append(f"{len(obs.decode)} timed decode observations (need {MIN_UPDATES if obs.real else MIN_ROLLOUTS})")
    if missing:
        raise CalibrationError(f"{paths[0]}: too little to calibrate from: " + "; ".join(missing))
    logs = [math.log(n) for n in obs.lengths]
    lognormal = Distribution(
        kind="lognormal", median=round(math.exp(statistics.fmean(logs)), 3), sigma=round(statistics.pstdev(logs), 4), cap=max(obs.lengths)
    )
    response = lognormal
    paired = False  # the prompt lengths written beside the response lengths, drawn with them
    courses = courses_of(paths) if lengths_file is not None and obs.real and obs.group_size > 1 else []
    if courses and lengths_file is not None:
        # the runs at the calibrated setting, each run's groups in the order it submitted
        # them: a simulation follows one run's course of answers (workload.replay)
        prompts = [prompt for course in courses for prompt in course.prompts]
        groups = [lengths for course in courses for lengths in course.groups]
        runs = [k for k, course in enumerate(courses) for _ in course.prompts]
        trained = [count for course in courses for count in course.trained]
        response = Distribution(kind="empirical",
                                path=str(write_lengths(obs.lengths, lengths_file, groups, prompts, runs, trained).resolve()))
        paired = True
    elif lengths_file is not None:
        kept = [(p, g) for p, g in zip(obs.group_prompts, obs.groups, strict=True) if len(g) == obs.group_size]
        listed = [g for _, g in kept] if obs.real and obs.group_size > 1 else None
        firsts = [p for p, _ in kept] if listed else None
        paired = bool(firsts)
        response = Distribution(kind="empirical", path=str(write_lengths(obs.lengths, lengths_file, listed, firsts).resolve()))
    scenario = base or Scenario()
    cfg = obs.config
    ledger = scenario.ledger
    group = obs.group_size
    workload = replace(scenario.workload, response_len=response, group_size=group, replay=bool(courses),
                       phase_versions=0 if courses else scenario.workload.phase_versions)
    for key in ("max_concurrent", "batch_size", "max_staleness", "policy"):
        if key in cfg:
            ledger = replace(ledger, **{key: cfg[key]})
    slots = max(1, ledger.max_concurrent * group // max(1, servers))
    counts = {"rollouts": len(obs.lengths), "updates": len(obs.train)}
    costs: RealCosts | None = None
    profile_notes: list[str] = []
    if obs.real:
        # the prompt the engine prefills, each sample's a row of its own (the sample store's
        # prompts); the trainer's tokens beyond the responses say whether it counts them
        extra = statistics.fmean(obs.trained_per_rollout) - statistics.fmean(obs.lengths) * group
        mean_prompt = statistics.fmean(obs.prompts) if obs.prompts else None
        prompt = round(mean_prompt) if mean_prompt is not None else max(0, round(extra / group))
        trains_prompt = counts_prompt(extra / group, mean_prompt)
        # a task's long prompts tend to have long answers, which are the ones in flight when
        # an update re-prefills: drawn apart, the re-prefills come out a third short (reverse)
        workload = replace(workload, prompt_len=Distribution(kind="paired") if paired else Distribution(kind="fixed", value=prompt))
        costs = fit_costs(obs.updates, obs.run_names)
        sync_s = costs.sync_s if costs.sync_s is not None else (statistics.median(obs.sync) if obs.sync else 0.0)
        generation = replace(
            scenario.generation, servers=servers, slots=slots,
            step_base_s=costs.step_base_s, step_per_slot_s=costs.step_per_slot_s, step_per_seq_s=costs.step_per_seq_s,
            step_per_kv_token_s=0.0,  # the engine attends over every slot's whole cache: no cost per cached token
            # the engine's prefill passes (the simulator batches starts and re-prefills into passes
            # as it does) and the executor's work per started rollout
            prefill_pass_s=costs.prefill_pass_s, prefill_per_token_s=costs.prefill_per_token_s,
            prefill_pad_to=costs.prefill_pad_to, prefill_pow2_rows=costs.prefill_pow2_rows,
            start_overhead_s=costs.start_overhead_s, resume_overhead_s=costs.resume_overhead_s,
            # an engine that kept its cache over new weights re-prefills nothing at an update
            on_update="run_on" if obs.kept_cache else scenario.generation.on_update,
            prefill_token=True,  # the engine's prefill samples each prefilled sequence's next token
            shared_prompt=False,  # it prefills every sample's prompt, no prefix cache
            startup_s=costs.startup_s,
        )
        train = costs.train
        training = replace(
            scenario.training, step_base_s=train["1"], step_per_token_s=train["tokens"], step_per_seq_s=train["sequences"],
            step_per_padded_token_s=train["padded tokens"], pad_to=max((u.pad_to for u in obs.updates), default=1),
            recompute_per_token_s=costs.recompute_per_token_s, weight_sync_s=sync_s, update_overhead_s=costs.overhead_s,
            update_overhead_per_seq_s=costs.overhead_per_seq_s,
            # the checkpoint when the runs timed it (else it is in the overhead), at the first run's
            # interval; a run that wrote none (``--checkpoint-every 0``) has 0 too
            checkpoint_s=costs.checkpoint_s,
            checkpoint_every=obs.checkpoint_every if costs.checkpoint_s or not obs.checkpoint_every else 1,
            # one process: generation waits while it trains, unless it ran in a thread of its own
            colocated=not obs.overlapped,
            trains_prompt=trains_prompt,
        )
        fits = costs.fits
        counts["runs"] = len(paths)
        if step_profile is not None:
            training, profile_notes = profiled_step(training, step_profile, obs.updates)
    else:
        if step_profile is not None:
            raise CalibrationError(f"{paths[0]}: --step-profile places a real run's updates on the profile; these logs are not train runs")
        train = line("train step", [x for x, _ in obs.train], [y for _, y in obs.train])
        decode = line("decode s/token", [x for x, _ in obs.decode], [y for _, y in obs.decode], obs.decode_weights or None)
        sync_s = statistics.median(obs.sync) if obs.sync else 0.0
        generation = replace(
            scenario.generation, servers=servers, slots=slots,
            step_base_s=max(0.0, decode["1"]), step_per_seq_s=max(0.0, decode["x"]), step_per_kv_token_s=0.0,
        )
        training = replace(scenario.training, step_base_s=max(0.0, train["1"]), step_per_token_s=max(0.0, train["x"]),
                           weight_sync_s=max(0.0, sync_s))
        fits = [train, decode]
        counts["timed rollouts"] = len(obs.decode)
    counts["syncs"] = len(obs.sync)
    scenario = replace(scenario, ledger=ledger, workload=workload, generation=generation, training=training)
    return Calibration(scenario, fits, lognormal, sync_s, counts, list(obs.lengths), costs, [len(course.groups) for course in courses],
                       profile_notes)
