"""Simulator scenarios: a TOML file of sections, every field documented and defaulted.

A scenario is read with stdlib ``tomllib``; any field can be overridden with
``section.key=value`` strings (the CLI's ``--set``), whose values are parsed as
TOML (``4``, ``1.5``, ``true``, ``"partial"``) or taken as a bare string.  A bad
field is refused with a :class:`ScenarioError` that names it.  A scenario is
written by :func:`to_toml` and :func:`save` alone, through :mod:`sim.tomlfile`.  What a
field may hold (the errors, the distribution table, the parsing and coercion of a raw
value) is :mod:`sim.values`'s; this module re-exports its names.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from engine.core.config import ON_STALE, POLICIES, Config, ConfigError
from engine.log.files import write_atomic
from sim import tomlfile
from sim.values import (  # re-exported: callers import them from sim.config
    DISTRIBUTIONS,
    MAX_LENGTH,
    Distribution,
    ScenarioError,
    ScenarioFileError,
    _coerce,
    _validate_distribution,
    parse_value,
)

#: What in-flight rollouts do when the weights change.
ON_UPDATE = ("partial", "restart", "run_on", "drain")
#: The most seconds one cost may be: a larger one (1e308) overflows the simulated clock
#: to infinity, where the simulation never ends.
MAX_COST_S = 1e6
#: Old field names still read (a file's key or an override), and the field each now sets:
#: ``prefill_base_s`` was charged per started rollout (now ``start_overhead_s``) and per
#: server at a re-prefill (now part of ``prefill_pass_s``, a cost per pass).
RENAMED = {("generation", "prefill_base_s"): "start_overhead_s"}


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class RunSection:
    """How long to simulate and with which random seed."""

    seed: int = field(default=0, metadata=_doc("seed of every random draw (same seed, same log, byte for byte)"))
    rollouts: int = field(default=20_000, metadata=_doc("stop after the training step that reaches this many trained rollouts"))
    max_time_s: float = field(default=math.inf, metadata=_doc("stop once the simulated clock passes this many seconds"))


@dataclass(frozen=True)
class LedgerSection:
    """The ledger's capacity and staleness settings (engine.core.config.Config)."""

    max_concurrent: int = field(default=256, metadata=_doc("rollouts in flight at most (the capacity rule's first term)"))
    batch_size: int = field(default=64, metadata=_doc("rollouts per training step"))
    max_staleness: int | None = field(default=4, metadata=_doc('staleness bound in versions; "inf" for unbounded'))
    policy: str = field(default="admission", metadata=_doc("staleness policy: " + " | ".join(POLICIES)))
    on_stale: str = field(default="drop", metadata=_doc("strict: drop a stale rollout or requeue its prompt (drop | requeue)"))
    in_order: bool = field(default=False, metadata=_doc("batches wait for rollouts started under older versions (none overtaken)"))


@dataclass(frozen=True)
class WorkloadSection:
    """Prompts, group size and token lengths."""

    group_size: int = field(default=1, metadata=_doc("samples generated per prompt; a rollout finishes when all its samples do"))
    prompt_len: Distribution = field(
        default=Distribution(kind="fixed", value=128),
        metadata=_doc("prompt length in tokens (a distribution table; paired: drawn with each group's response lengths from"
                      " response_len's CSV, whose rows lead with their prompt's length)"),
    )
    response_len: Distribution = field(
        default=Distribution(kind="lognormal", median=1024.0, sigma=0.6, cap=8192),
        metadata=_doc("response length in tokens per sample (a distribution table)"),
    )
    phase_versions: int = field(default=0, metadata=_doc(
        "draw lengths in phases: the groups started in each window of this many versions come from one window of"
        " phase_rows consecutive rows of response_len's CSV (a real run's groups, in the order they were submitted), as"
        " a policy's answers come in spells; 0: every group from all rows"))
    phase_rows: int = field(default=0, metadata=_doc("rows of response_len's CSV one phase draws from (with phase_versions)"))
    replay: bool = field(default=False, metadata=_doc(
        "draw groups in the order of response_len's CSV rows (real runs' groups, as submitted): the n-th group started"
        " takes the n-th row of one run (a CSV led by a run column holds several: run.seed k follows run k modulo their"
        " number), past its last a row at random; replays a run's own workload, or follows a calibration run's course"))


@dataclass(frozen=True)
class GenerationSection:
    """Generation servers doing continuous batching."""

    servers: int = field(default=4, metadata=_doc("number of generation servers"))
    slots: int = field(default=128, metadata=_doc("sequences a server decodes at once at most"))
    step_base_s: float = field(default=0.02, metadata=_doc("decode step cost: fixed part, seconds"))
    step_per_seq_s: float = field(default=5e-5, metadata=_doc("decode step cost per active sequence, seconds"))
    step_per_kv_token_s: float = field(default=2e-8, metadata=_doc("decode step cost per cached token, seconds"))
    step_per_slot_s: float = field(
        default=0.0, metadata=_doc("decode step cost per slot of the server, busy or not (an engine that decodes every slot), seconds")
    )
    prefill_per_token_s: float = field(default=2e-5, metadata=_doc("prefill cost per prompt (or re-prefilled) token, seconds"))
    prefill_pass_s: float = field(
        default=0.0,
        metadata=_doc(
            "fixed cost of one prefill pass (the starts that reach a server while its pass is pending share it;"
            " an update's re-prefill is one pass per server), seconds"
        ),
    )
    prefill_pad_to: int = field(
        default=0,
        metadata=_doc("0: a prefill pass costs prefill_per_token_s per token its rows hold; N: per token it runs, its rows"
                      " times its longest context rounded up to a multiple of N (an engine that pads a pass to one width)"),
    )
    prefill_pow2_rows: bool = field(
        default=False,
        metadata=_doc("with prefill_pad_to, a pass runs a power of two of rows (at most slots), as an engine replaying"
                      " captured graphs of a few shapes does"),
    )
    startup_s: float = field(
        default=0.0,
        metadata=_doc("a server's one-off start before its first decode (an engine's first passes of new shapes), seconds"),
    )
    prefill_token: bool = field(
        default=False,
        metadata=_doc("a prefill pass also samples the next token of each sequence it prefills (a start's first, one"
                      " more for each re-prefilled sequence), as engines do; false: every token is a decode step"),
    )
    start_overhead_s: float = field(
        default=0.0,
        metadata=_doc("the executor's work on each started rollout, delaying its server like a prefill, seconds (was prefill_base_s)"),
    )
    resume_overhead_s: float = field(
        default=0.0,
        metadata=_doc("the executor's work each time generation resumes after a weight update (the trained batch's"
                      " bookkeeping, the next starts' submission), holding every server back before its next pass, seconds"),
    )
    shared_prompt: bool = field(
        default=True,
        metadata=_doc("a rollout's samples share one prefill of their prompt (prefix caching); false: each sample's prompt is"
                      " prefilled as a row of its own, as the built-in engines do"),
    )
    on_update: str = field(
        default="partial",
        metadata=_doc(
            "in-flight rollouts at a weight update: partial (new segment, re-prefill) | restart | run_on | drain (finish first)"
        ),
    )


@dataclass(frozen=True)
class TrainingSection:
    """The trainer and the weight update."""

    step_base_s: float = field(default=5.0, metadata=_doc("training step cost: fixed part, seconds"))
    step_per_token_s: float = field(default=1e-4, metadata=_doc("training step cost per trained token, seconds"))
    step_per_seq_s: float = field(default=0.0, metadata=_doc("training step cost per trained sequence (sample), seconds"))
    step_per_padded_token_s: float = field(
        default=0.0,
        metadata=_doc("training step cost per token of the padded batch (sequences times the longest prompt and response,"
                      " rounded up to pad_to), seconds"),
    )
    step_floor_s: float = field(
        default=0.0,
        metadata=_doc("a training step takes at least this long, whatever its batch (a small batch's step is the host's "
                      "kernel launches; calibrate --step-profile), seconds"),
    )
    pad_to: int = field(default=1, metadata=_doc("the trainer rounds a padded batch's width up to a multiple of this"))
    recompute_per_token_s: float = field(default=5e-6, metadata=_doc("cost per token of recomputing proximal log-probs"))
    weight_sync_s: float = field(default=1.0, metadata=_doc("seconds generation is paused to load new weights"))
    update_overhead_s: float = field(
        default=0.0,
        metadata=_doc("seconds per update besides training, recomputing, the sync and the checkpoint (advantages, logging); colocated: generation paused"),
    )
    update_overhead_per_seq_s: float = field(
        default=0.0, metadata=_doc("the update's overhead per trained sequence (sample), seconds, beside update_overhead_s")
    )
    checkpoint_s: float = field(
        default=0.0, metadata=_doc("seconds to write a checkpoint (weights and optimiser state); colocated: generation paused")
    )
    checkpoint_every: int = field(default=1, metadata=_doc("a checkpoint after every this many updates and the last (`train --checkpoint-every`); 0: none"))
    trains_prompt: bool = field(
        default=True, metadata=_doc("a step's tokens count each sample's prompt; false: completions only, as `rollout-ledger train` counts them")
    )
    colocated: bool = field(default=False, metadata=_doc("generation and training share the GPUs (generation pauses while training)"))


@dataclass(frozen=True)
class Scenario:
    """One simulated cluster and workload."""

    run: RunSection = field(default_factory=RunSection)
    ledger: LedgerSection = field(default_factory=LedgerSection)
    workload: WorkloadSection = field(default_factory=WorkloadSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    training: TrainingSection = field(default_factory=TrainingSection)

    def __post_init__(self) -> None:
        _validate(self)

    def ledger_config(self) -> Config:
        """The ledger's :class:`~engine.core.config.Config` for this scenario."""
        section = self.ledger
        try:
            return Config(
                max_concurrent=section.max_concurrent,
                batch_size=section.batch_size,
                max_staleness=section.max_staleness,
                policy=section.policy,
                on_stale=section.on_stale,
                in_order=section.in_order,
            )
        except ConfigError as err:
            raise ScenarioError(f"ledger.{err.field}", str(err).split(": ", 1)[1]) from err

    def to_dict(self) -> dict[str, Any]:
        """The scenario as nested plain values (``max_staleness`` unbounded as ``"inf"``)."""
        out: dict[str, Any] = {}
        for section in fields(self):
            values: dict[str, Any] = {}
            for item in fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), item.name)
                if isinstance(value, Distribution):
                    value = {f.name: getattr(value, f.name) for f in fields(value)}
                elif item.name == "max_staleness" and value is None:
                    value = "inf"
                values[item.name] = value
            out[section.name] = values
        return out

    def with_overrides(self, overrides: Iterable[str]) -> "Scenario":
        """A copy with ``section.key=value`` (or ``section.dist.key=value``) overrides applied."""
        data = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ScenarioError(item, "an override must look like section.key=value")
            _assign(data, key.strip(), parse_value(raw.strip()))
        return from_dict(data)


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) not in (2, 3):
        raise ScenarioError(key, "must be section.key or section.distribution.key")
    if len(parts) == 2:  # an old field name sets its new field
        parts[1] = RENAMED.get((parts[0], parts[1]), parts[1])
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ScenarioError(".".join(parts[: depth + 1]), f"unknown; known are {', '.join(sorted(node))}")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
        raise ScenarioError(key, f"unknown key; known keys are {known}")
    node[parts[-1]] = value


_SECTIONS: dict[str, type] = {
    "run": RunSection,
    "ledger": LedgerSection,
    "workload": WorkloadSection,
    "generation": GenerationSection,
    "training": TrainingSection,
}


def from_dict(data: Mapping[str, Any]) -> Scenario:
    """Build a scenario from nested mappings (as read from TOML); missing fields take defaults."""
    if not isinstance(data, Mapping):
        raise ScenarioError("<root>", f"must be a table, got {data!r}")
    for name in data:
        if name not in _SECTIONS:
            raise ScenarioError(str(name), f"unknown section; known sections are {', '.join(_SECTIONS)}")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, Mapping):
            raise ScenarioError(name, f"must be a table, got {raw!r}")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in _renamed(name, raw).items():
            if key not in known:
                raise ScenarioError(f"{name}.{key}", f"unknown key; known keys are {', '.join(known)}")
            default = known[key].default
            values[key] = _coerce(f"{name}.{key}", value, default)
        sections[name] = cls(**values)
    return Scenario(**sections)


def _renamed(section: str, raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` (a section's keys) with old field names (:data:`RENAMED`) under their new
    ones; an old name given beside its new one is refused, naming both."""
    old = [key for key in raw if (section, key) in RENAMED]
    if not old:
        return raw
    out = dict(raw)
    for key in old:
        new = RENAMED[(section, key)]
        if new in raw:
            raise ScenarioError(f"{section}.{key}", f"is the old name of {section}.{new}; give only {section}.{new}")
        out[new] = out.pop(key)
    return out


def _validate(scenario: Scenario) -> None:
    """Range checks, each naming the field it refuses."""
    positive_ints = {
        "run.rollouts": scenario.run.rollouts,
        "workload.group_size": scenario.workload.group_size,
        "generation.servers": scenario.generation.servers,
        "generation.slots": scenario.generation.slots,
        "training.pad_to": scenario.training.pad_to,
    }
    for name, value in positive_ints.items():
        if value < 1:
            raise ScenarioError(name, f"must be at least 1, got {value}")
    non_negative = {
        "generation.step_base_s": scenario.generation.step_base_s,
        "generation.step_per_seq_s": scenario.generation.step_per_seq_s,
        "generation.step_per_kv_token_s": scenario.generation.step_per_kv_token_s,
        "generation.step_per_slot_s": scenario.generation.step_per_slot_s,
        "generation.prefill_per_token_s": scenario.generation.prefill_per_token_s,
        "generation.prefill_pass_s": scenario.generation.prefill_pass_s,
        "generation.start_overhead_s": scenario.generation.start_overhead_s,
        "generation.resume_overhead_s": scenario.generation.resume_overhead_s,
        "generation.startup_s": scenario.generation.startup_s,
        "training.step_base_s": scenario.training.step_base_s,
        "training.step_per_token_s": scenario.training.step_per_token_s,
        "training.step_per_seq_s": scenario.training.step_per_seq_s,
        "training.step_per_padded_token_s": scenario.training.step_per_padded_token_s,
        "training.step_floor_s": scenario.training.step_floor_s,
        "training.update_overhead_s": scenario.training.update_overhead_s,
        "training.checkpoint_s": scenario.training.checkpoint_s,
        "training.update_overhead_per_seq_s": scenario.training.update_overhead_per_seq_s,
        "training.recompute_per_token_s": scenario.training.recompute_per_token_s,
        "training.weight_sync_s": scenario.training.weight_sync_s,
    }
    for name, cost in non_negative.items():
        if not 0 <= cost <= MAX_COST_S:
            raise ScenarioError(name, f"must be between 0 and {MAX_COST_S:g} seconds, got {cost}")
    generation = scenario.generation
    if generation.step_base_s + generation.step_per_seq_s + generation.step_per_kv_token_s + generation.step_per_slot_s <= 0:
        raise ScenarioError("generation.step_base_s", "a decode step must cost some time (all step costs are 0)")
    if not scenario.run.max_time_s > 0:
        raise ScenarioError("run.max_time_s", f"must be positive, got {scenario.run.max_time_s}")
    if generation.on_update not in ON_UPDATE:
        raise ScenarioError("generation.on_update", f"must be one of {', '.join(ON_UPDATE)}, got {generation.on_update!r}")
    if scenario.workload.group_size > generation.slots:
        raise ScenarioError(
            "workload.group_size", f"a prompt's {scenario.workload.group_size} samples must fit one server's {generation.slots} slots"
        )
    # a prompt may be empty: a trainer that counts completion tokens only (a calibrated real run)
    _validate_distribution("workload.prompt_len", scenario.workload.prompt_len, least=0)
    _validate_distribution("workload.response_len", scenario.workload.response_len)
    if scenario.workload.response_len.kind == "paired":
        raise ScenarioError("workload.response_len.kind", "only workload.prompt_len may be paired (drawn with the response lengths)")
    if scenario.workload.prompt_len.kind == "paired" and scenario.workload.response_len.kind != "empirical":
        raise ScenarioError("workload.prompt_len.kind", "paired draws a row of workload.response_len's CSV, which must be empirical, "
                            f"not {scenario.workload.response_len.kind}")
    if generation.prefill_pad_to < 0:
        raise ScenarioError("generation.prefill_pad_to", f"must be at least 0, got {generation.prefill_pad_to}")
    if generation.prefill_pow2_rows and not generation.prefill_pad_to:
        raise ScenarioError("generation.prefill_pow2_rows", "pads a pass's rows, which needs generation.prefill_pad_to (a pass "
                            "priced by the tokens it runs)")
    workload = scenario.workload
    for name, value in (("workload.phase_versions", workload.phase_versions), ("workload.phase_rows", workload.phase_rows),
                        ("training.checkpoint_every", scenario.training.checkpoint_every)):
        if value < 0:
            raise ScenarioError(name, f"must be at least 0, got {value}")
    if workload.replay:
        if workload.response_len.kind != "empirical":
            raise ScenarioError("workload.replay", f"replays workload.response_len's rows, which must be empirical, not {workload.response_len.kind}")
        if workload.phase_versions:
            raise ScenarioError("workload.replay", "draws rows in order, phases at random: set workload.phase_versions to 0 to replay")
    if workload.phase_versions:
        if workload.response_len.kind != "empirical":
            raise ScenarioError("workload.phase_versions", "phases draw windows of workload.response_len's rows, which must be "
                                f"empirical, not {workload.response_len.kind}")
        if workload.phase_rows < 1:
            raise ScenarioError("workload.phase_rows", "must be at least 1 with workload.phase_versions (the rows one phase draws from)")
    if scenario.ledger.policy not in POLICIES:
        raise ScenarioError("ledger.policy", f"must be one of {', '.join(POLICIES)}, got {scenario.ledger.policy!r}")
    if scenario.ledger.on_stale not in ON_STALE:
        raise ScenarioError("ledger.on_stale", f"must be one of {', '.join(ON_STALE)}, got {scenario.ledger.on_stale!r}")
    scenario.ledger_config()


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Scenario:
    """The scenario in the TOML file at ``path`` (the default scenario if ``None``), with overrides."""
    if path is None:
        scenario = Scenario()
    else:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ScenarioFileError(str(path), "no such scenario file") from None
        except IsADirectoryError:
            raise ScenarioFileError(str(path), "is a directory, not a scenario file") from None
        except OSError as err:
            raise ScenarioFileError(str(path), f"cannot be read: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise ScenarioFileError(str(path), f"is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
        except tomllib.TOMLDecodeError as err:
            raise ScenarioFileError(str(path), f"is not valid TOML: {err}") from err
        scenario = from_dict(data)
        scenario = _relative_paths(scenario, Path(path).absolute().parent)
    return scenario.with_overrides(overrides)


def _relative_paths(scenario: Scenario, base: Path) -> Scenario:
    """Empirical distribution paths in a file are relative to that file."""
    workload = scenario.workload
    prompt_len = _relative_to(workload.prompt_len, base)
    response_len = _relative_to(workload.response_len, base)
    if prompt_len is workload.prompt_len and response_len is workload.response_len:
        return scenario
    return replace(scenario, workload=replace(workload, prompt_len=prompt_len, response_len=response_len))


def _relative_to(dist: Distribution, base: Path) -> Distribution:
    """``dist`` with an empirical path that is relative taken under ``base``."""
    if dist.kind == "empirical" and not Path(dist.path).is_absolute():
        return replace(dist, path=str(base / dist.path))
    return dist


def field_docs() -> list[tuple[str, Any, str]]:
    """``(dotted name, default, doc)`` for every scenario field, in file order."""
    rows: list[tuple[str, Any, str]] = []
    defaults = Scenario().to_dict()
    for name, cls in _SECTIONS.items():
        for item in fields(cls):
            rows.append((f"{name}.{item.name}", defaults[name][item.name], item.metadata.get("doc", "")))
    return rows


def to_toml(scenario: Scenario) -> str:
    """The scenario as a TOML document (:func:`sim.tomlfile.dumps`), each field preceded by
    its doc as a comment; a value with no TOML form (an integer beyond 64 bits) is a
    :class:`ScenarioError` naming its field."""
    try:
        return tomlfile.dumps(scenario.to_dict(), {name: doc for name, _, doc in field_docs()})
    except tomlfile.TomlValueError as err:
        raise ScenarioError(err.key, err.message) from err


def save(scenario: Scenario, path: str | Path) -> Path:
    """Replace the file at ``path`` with :func:`to_toml` of ``scenario``, whole, so that
    :func:`load` reads it back equal; an empirical path relative to the current directory
    is written absolute (a file's relative paths are taken relative to the file), except
    one in the file's own folder, written as its name, so that the scenario and the
    lengths beside it (``calibrate``'s) can be moved or copied together."""
    cwd, workload, folder = Path.cwd(), scenario.workload, Path(path).absolute().parent
    prompt_len, response_len = (_beside(_relative_to(dist, cwd), folder) for dist in (workload.prompt_len, workload.response_len))
    return write_atomic(path, to_toml(replace(scenario, workload=replace(workload, prompt_len=prompt_len, response_len=response_len))))


def _beside(dist: Distribution, folder: Path) -> Distribution:
    """``dist`` with an empirical path in ``folder`` written as its name."""
    if dist.kind == "empirical" and Path(dist.path).parent == folder:
        return replace(dist, path=Path(dist.path).name)
    return dist
