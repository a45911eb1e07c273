"""Token length distributions of the simulated workload (prompts and responses).

Every sampler draws from a ``random.Random`` owned by the simulation, so the same
seed gives the same lengths.  ``empirical`` lengths come from an event log (the
response tokens of each accepted rollout: the sum of its segments, ``segment`` and
``interrupted_batch`` events) or
from a CSV file: a row of one number is one sample's length; a row of as many numbers
as the group has samples is one group's lengths, drawn together (the samples of one
prompt are alike in length: drawn apart, a group's longest sample, which decides when
the group finishes, comes out far too long).  A CSV whose header starts with
``prompt`` leads each row with its prompt's length: a ``paired`` prompt length draws a
row's prompt, and its group's lengths come from the rows of that prompt length (a
task's long prompts tend to have long answers).  A header ``run,prompt`` or
``run,trained,prompt`` leads each row with the run it came from (and the rollouts that
run had trained on when it submitted the group): a replay (:class:`Replay`) follows one
run's rows in their order, by the policy's progress where the ``trained`` column says it.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

from engine.core.events import Accepted, Event, Filtered, InterruptedBatch, Rejected, Segment
from sim.config import Distribution, ScenarioError

#: A sampler: draws one length (at least 1 token) from the given generator.
Sampler = Callable[[random.Random], int]

#: The header's first cell of a lengths CSV whose rows lead with their prompt's length.
PROMPT_COLUMN = "prompt"

#: The header's first cell of a lengths CSV whose rows lead with the run they came from
#: (then their prompt's length): a replay follows one run's rows in their order.
RUN_COLUMN = "run"

#: The column after ``run`` of a lengths CSV whose rows say how many rollouts their run
#: had trained on when it submitted them: a replay follows the policy's progress.
TRAINED_COLUMN = "trained"


def sampler(dist: Distribution, field_name: str = "distribution") -> Sampler:
    """A function drawing lengths from ``dist``; ``field_name`` names it in errors."""
    if dist.kind == "fixed":
        value = dist.value
        return lambda rng: value
    if dist.kind == "lognormal":
        mu, sigma, cap = math.log(dist.median), dist.sigma, dist.cap
        ceil, exp, draw, top = math.ceil, math.exp, random.Random.normalvariate, math.log(cap)

        def lognormal(rng: random.Random) -> int:
            # random.lognormvariate is exp(normalvariate): the same draw, clipped at the
            # cap before exp, which a wide sigma would overflow.
            exponent = draw(rng, mu, sigma)
            return cap if exponent >= top else min(cap, max(1, ceil(exp(exponent))))

        return lognormal
    if dist.kind == "empirical":
        lengths = load_lengths(dist.path, field_name)
        choose = random.Random.choice
        return lambda rng: choose(rng, lengths)
    if dist.kind == "paired":
        raise ScenarioError(f"{field_name}.kind", "a paired length is drawn with the response lengths (paired_samplers)")
    raise ScenarioError(f"{field_name}.kind", f"unknown distribution {dist.kind!r}")


def group_sampler(dist: Distribution, group: int, field_name: str = "distribution") -> Callable[[random.Random], list[int]]:
    """A function drawing the lengths of a group of ``group`` samples from ``dist``: one
    row of an ``empirical`` CSV whose rows are groups of that size, else ``group``
    independent draws (in the order :func:`sampler` would make them)."""
    if dist.kind == "empirical":
        return _rows_sampler(load_rows(dist.path, field_name), group)
    one = sampler(dist, field_name)
    return lambda rng: [one(rng) for _ in range(group)]


def _rows_sampler(rows: list[list[int]], group: int) -> Callable[[random.Random], list[int]]:
    """Draws a group's lengths from ``rows``: a whole row of that size, else each apart."""
    whole = [row for row in rows if len(row) == group]
    choose = random.Random.choice
    if whole and group > 1:
        return lambda rng: choose(rng, whole)
    lengths = [length for row in rows for length in row]
    return lambda rng: [choose(rng, lengths) for _ in range(group)]


class _RowDraws:
    """Group lengths (and paired prompt lengths) drawn as whole rows of an ``empirical``
    CSV of groups, by a rule of the subclass's (:meth:`_row`); with a paired prompt
    length, a group's prompt is its row's."""

    def __init__(self, dist: Distribution, group: int) -> None:
        self.rows = [(prompt, lengths) for prompt, lengths in _prompted_or_plain(dist) if len(lengths) == group]
        if not self.rows:
            raise ScenarioError("workload.response_len.path", f"{dist.path} has no row of a group of {group} lengths")
        self._drawn: dict[int | None, deque[list[int]]] = {}  # a drawn prompt's lengths, until its group starts

    def _row(self, rng: random.Random, version: int) -> tuple[int | None, list[int]]:
        raise NotImplementedError

    def prompt(self, rng: random.Random, version: int) -> int:
        """A paired prompt length: a row's, whose lengths the next group of that prompt
        length to start takes."""
        prompt, lengths = self._row(rng, version)
        self._drawn.setdefault(prompt, deque()).append(lengths)
        return prompt or 0

    def lengths(self, rng: random.Random, version: int, prompt: int | None = None) -> list[int]:
        """A group's lengths: those drawn with its prompt, else the next row drawn."""
        waiting = self._drawn.get(prompt)
        return list(waiting.popleft()) if waiting else list(self._row(rng, version)[1])


class Phases(_RowDraws):
    """Group lengths drawn in phases (``workload.phase_versions``): the groups started in
    each window of ``versions`` versions come from one window of ``span`` consecutive rows
    of ``dist``'s CSV, chosen at random when the phase's first group starts, as a real
    run's answers come in spells (a policy that runs long for a while, then stops short).
    The rows are a real run's groups in the order they were submitted (``calibrate``
    writes them so)."""

    def __init__(self, dist: Distribution, group: int, versions: int, span: int) -> None:
        super().__init__(dist, group)
        if len(self.rows) < span:
            raise ScenarioError("workload.phase_rows", f"{span} rows a phase, but {dist.path} has {len(self.rows)} rows of a group of "
                                f"{group} lengths")
        self.versions, self.span = versions, span
        self._starts: dict[int, int] = {}  # phase -> its window's first row

    def _row(self, rng: random.Random, version: int) -> tuple[int | None, list[int]]:
        phase = version // self.versions
        if phase not in self._starts:
            self._starts[phase] = rng.randrange(len(self.rows) - self.span + 1)
        return self.rows[self._starts[phase] + rng.randrange(self.span)]


class Replay(_RowDraws):
    """Group lengths following one run's rows in their order (``workload.replay``): a
    real run's groups, written in the order they were submitted, start in that order
    again. A CSV with a ``run`` column holds several runs' rows: ``seed`` picks the run
    (seed k follows run k modulo their number).

    With a ``trained`` column (the rollouts the run had trained on when it submitted the
    group) the rows follow the policy's progress, not the count of starts: a group
    started under version ``v`` of a run of batch ``batch`` (``v * batch`` rollouts
    trained) takes the next unused row the course submitted at that progress, as a
    policy's answers are what its training so far made them; once those are used, one
    of them at random; beyond the course's last progress, a row of every run at random.
    A run with more rollouts in flight than the course starts more groups under its
    first versions, and takes them from the course's same point in training. Without
    the column the n-th group started takes the n-th row, past the last a row at random.
    It replays a run's own workload, which tests the cost model apart from the lengths,
    or follows a calibration run's course of answers under another setting."""

    def __init__(self, dist: Distribution, group: int, seed: int = 0, batch: int = 1) -> None:
        super().__init__(dist, group)
        runs = replay_runs(dist)
        course = [(trained, (prompt, lengths)) for trained, prompt, lengths in runs[seed % len(runs)] if len(lengths) == group]
        self.course = [row for _, row in course]
        self._next = 0
        self.batch = max(1, batch)
        # by progress: each trained count's rows, in order, those not used yet, and the counts
        self._at: dict[int, list[tuple[int | None, list[int]]]] = {}
        if course and all(trained is not None for trained, _ in course):
            for trained, row in course:
                self._at.setdefault(int(trained or 0), []).append(row)
        self._unused = {trained: deque(rows) for trained, rows in self._at.items()}
        self._marks = sorted(self._at)
        gaps = [b - a for a, b in zip(self._marks, self._marks[1:])]
        self._step = min(gaps) if gaps else math.inf  # the course's rollouts trained an update

    def _row(self, rng: random.Random, version: int) -> tuple[int | None, list[int]]:
        if not self._marks:
            index, self._next = self._next, self._next + 1
            return self.course[index] if index < len(self.course) else self.rows[rng.randrange(len(self.rows))]
        trained = version * self.batch
        if trained >= self._marks[-1] + self._step:  # further in training than the course went
            return self.rows[rng.randrange(len(self.rows))]
        marks = [m for m in self._marks if trained <= m < trained + self.batch]
        if not marks:  # the course trained more an update: the progress at or before this one's
            marks = [self._marks[max(0, bisect.bisect_right(self._marks, trained) - 1)]]
        for mark in marks:
            if self._unused[mark]:
                return self._unused[mark].popleft()
        rows = [row for mark in marks for row in self._at[mark]]
        return rows[rng.randrange(len(rows))]


def replay_runs(dist: Distribution) -> list[list[tuple[int | None, int | None, list[int]]]]:
    """The runs whose rows a replay of ``dist`` follows (:class:`Replay`), one for a CSV
    without a ``run`` column."""
    if dist.kind != "empirical":
        raise ScenarioError("workload.replay", f"replays workload.response_len's rows, which must be empirical, not {dist.kind}")
    return load_runs(dist.path, "workload.response_len")


def _prompted_or_plain(dist: Distribution) -> list[tuple[int | None, list[int]]]:
    """The rows of an empirical CSV with their prompt lengths (``None`` without a prompt column)."""
    if dist.kind != "empirical":
        raise ScenarioError("workload.phase_versions", f"phases draw rows of an empirical workload.response_len, not {dist.kind}")
    return _table(dist.path, "workload.response_len", prompted=False)


def paired_samplers(
    dist: Distribution, group: int, field_name: str = "workload.response_len"
) -> tuple[Sampler, Callable[[random.Random, int], list[int]]]:
    """For a ``paired`` prompt length: a sampler of prompt lengths (a row's, of the
    ``empirical`` CSV ``dist`` names) and one of a group's lengths given its prompt's
    (from the rows of that prompt length, as :func:`group_sampler` draws from rows)."""
    if dist.kind != "empirical":
        raise ScenarioError("workload.prompt_len.kind", f"paired needs an empirical {field_name} (a CSV with a prompt column), it is {dist.kind}")
    prompted = load_prompted_rows(dist.path, field_name)
    prompts = [prompt for prompt, _ in prompted]
    by_prompt: dict[int, list[list[int]]] = {}
    for prompt, row in prompted:
        by_prompt.setdefault(prompt, []).append(row)
    draws = {prompt: _rows_sampler(rows, group) for prompt, rows in by_prompt.items()}
    choose = random.Random.choice
    return (lambda rng: choose(rng, prompts)), (lambda rng, prompt: draws[prompt](rng))


def lognormal_cdf(dist: Distribution, length: int) -> float:
    """P(drawn length <= ``length``) for a ``lognormal`` distribution (rounded up, clipped)."""
    if length >= dist.cap:
        return 1.0
    if length < 1:
        return 0.0
    if dist.sigma == 0:
        return 1.0 if math.ceil(dist.median) <= length else 0.0
    z = (math.log(length) - math.log(dist.median)) / dist.sigma
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def load_lengths(path: str | Path, field_name: str = "distribution") -> list[int]:
    """Positive lengths from an event log (``.db``/``.sqlite``/``.jsonl``) or a CSV file."""
    return [length for row in load_rows(path, field_name) for length in row]


def load_rows(path: str | Path, field_name: str = "distribution") -> list[list[int]]:
    """The rows of lengths of a CSV file (each row one sample's length or one group's,
    without a prompt column), or of an event log (each accepted rollout's tokens, a row
    of one)."""
    return [row for _, row in _table(path, field_name, prompted=False)]


def load_prompted_rows(path: str | Path, field_name: str = "distribution") -> list[tuple[int, list[int]]]:
    """The rows of a lengths CSV whose header starts with ``prompt``: (prompt length, the
    group's lengths); another file is refused, naming it."""
    return [(int(prompt or 0), row) for prompt, row in _table(path, field_name, prompted=True)]


def _table(path: str | Path, field_name: str, prompted: bool) -> list[tuple[int | None, list[int]]]:
    """The rows of a lengths file with their prompt lengths (``None`` without a prompt
    column; ``prompted`` requires one)."""
    return [(prompt, lengths) for _, _, prompt, lengths in _runs_table(path, field_name, prompted)]


def load_runs(path: str | Path, field_name: str = "distribution") -> list[list[tuple[int | None, int | None, list[int]]]]:
    """The rows of a lengths CSV by the run they came from (a ``run`` column, whose rows
    of one run stand together, in its order), each run's rows in the file's order as
    (rollouts trained at its submission, its prompt's length, its lengths), ``None``
    where the file has no such column; a file without a ``run`` column is one run."""
    runs: dict[int | None, list[tuple[int | None, int | None, list[int]]]] = {}
    for run, trained, prompt, lengths in _runs_table(path, field_name, prompted=False):
        runs.setdefault(run, []).append((trained, prompt, lengths))
    return list(runs.values())


def _runs_table(path: str | Path, field_name: str, prompted: bool) -> list[tuple[int | None, int | None, int | None, list[int]]]:
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{field_name}.path", f"no file at {path}")
    try:
        if path.suffix in (".csv", ".txt"):
            rows = _csv_rows(path, field_name)
        else:
            rows = [(None, None, None, [length]) for length in _log_lengths(path, field_name)]
    except UnicodeDecodeError as err:
        raise ScenarioError(f"{field_name}.path", f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    except csv.Error as err:
        raise ScenarioError(f"{field_name}.path", f"{path} is not a CSV file: {err}") from None
    if not rows:
        raise ScenarioError(f"{field_name}.path", f"{path} holds no lengths")
    if prompted and rows[0][2] is None:
        raise ScenarioError(f"{field_name}.path", f"{path} has no {PROMPT_COLUMN} column (its header must start with {PROMPT_COLUMN!r})")
    return rows


def _csv_rows(path: Path, field_name: str) -> list[tuple[int | None, int | None, int | None, list[int]]]:
    """(run, rollouts trained, prompt length, lengths) of each row; ``None`` for a column
    the header does not name (it leads with ``run,trained,prompt``, ``run,prompt``,
    ``prompt`` or none of them)."""
    rows: list[tuple[int | None, int | None, int | None, list[int]]] = []
    lead: list[str] = []  # the columns before the lengths, as the header names them
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [cell for cell in row if cell.strip()]
            values: list[int] = []
            for cell in cells:
                try:
                    value = float(cell)
                except ValueError:
                    if number == 1:  # a header line
                        lead = _leading(path, field_name, [name.strip().lower() for name in cells])
                        break
                    raise ScenarioError(f"{field_name}.path", f"{path} line {number}: {cell!r} is not a number") from None
                least = 0 if len(values) < len(lead) else 1  # a prompt may be empty, runs and progress count from 0
                if value < least or not math.isfinite(value):
                    what = LEADING[lead[len(values)]] if len(values) < len(lead) else "length"
                    raise ScenarioError(f"{field_name}.path", f"{path} line {number}: {what} {cell!r} must be at least {least}")
                values.append(int(round(value)))
            else:
                if values and len(values) <= len(lead):
                    raise ScenarioError(f"{field_name}.path", f"{path} line {number}: a prompt length and no response length")
                if values:
                    named = dict(zip(lead, values))
                    rows.append((named.get(RUN_COLUMN), named.get(TRAINED_COLUMN), named.get(PROMPT_COLUMN), values[len(lead):]))
    return rows


#: The columns a lengths CSV's rows may lead with, in this order, and what each holds.
LEADING = {"run": "run", "trained": "rollouts trained", "prompt": "prompt length"}


def _leading(path: Path, field_name: str, names: list[str]) -> list[str]:
    """The leading columns a header names: ``run,trained,prompt``, ``run,prompt``,
    ``prompt`` or none (a header of other names)."""
    for lead in ([RUN_COLUMN, TRAINED_COLUMN, PROMPT_COLUMN], [RUN_COLUMN, PROMPT_COLUMN], [PROMPT_COLUMN]):
        if names[:len(lead)] == lead:
            return lead
    if names and names[0] in (RUN_COLUMN, TRAINED_COLUMN):
        raise ScenarioError(f"{field_name}.path", f"{path}: a header leads with run,trained,prompt or run,prompt, not {','.join(names[:3])}")
    return []


def _log_lengths(path: Path, field_name: str) -> list[int]:
    """Response tokens of every accepted rollout in the log, in log order."""
    from engine.log import EventLog, LogError, read_jsonl

    tokens: dict[str, int] = {}
    lengths: list[int] = []
    try:
        if path.suffix == ".jsonl":
            events = read_jsonl(path)
            _collect(events, tokens, lengths)
        else:
            with EventLog(path, mode="r") as log:
                _collect(log.events(), tokens, lengths)
    except UnicodeDecodeError:
        raise  # named by load_lengths
    except (LogError, ValueError) as err:  # ValueError: a stored value that is not what the log says it is
        raise ScenarioError(f"{field_name}.path", f"{path}: {err}") from err
    return lengths


def _collect(events: Iterable[Event], tokens: dict[str, int], lengths: list[int]) -> None:
    """Append to ``lengths`` the response tokens of each rollout accepted in ``events``."""
    for event in events:
        if isinstance(event, Segment):
            tokens[event.rollout] = tokens.get(event.rollout, 0) + event.tokens
        elif isinstance(event, InterruptedBatch):
            for rollout, count in zip(event.rollouts, event.tokens):
                tokens[rollout] = tokens.get(rollout, 0) + count
        elif isinstance(event, Accepted):
            count = tokens.pop(event.rollout, 0)
            if count > 0:
                lengths.append(count)
        elif isinstance(event, (Rejected, Filtered)):
            tokens.pop(event.rollout, None)
