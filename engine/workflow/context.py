"""The immutable context a workflow threads through its stages.

A stage never changes the context it is given: it returns a new one built with
:meth:`Context.put` / :meth:`Context.record`.  ``state`` is what stages hand to
each other (and what a checkpoint saves); ``config`` is the workflow's settings;
``runtime`` holds the run's services (event log, futures executor, logger) and is
not part of the value; the context knows them only through :class:`Services`, the
interface it declares here (the runner's :class:`~engine.workflow.services.Runtime`
provides it), so this module imports nothing else of the package.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import immutables

_MISSING: Any = object()


class Services(Protocol):
    """What a context needs from the run that made it."""

    logger: Any
    ledger: Any

    @property
    def artifacts(self) -> Path: ...

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future: ...


class MissingState(KeyError):
    """A stage asked for a state or config key that is not there; names the key and the stage."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, eq=False)
class Context:
    """What a stage sees: ``config``, ``state``, recorded ``metrics``, its ``path`` and options."""

    config: Mapping[str, Any] = field(default_factory=immutables.Map)
    state: immutables.Map = field(default_factory=immutables.Map)
    metrics: tuple[Mapping[str, Any], ...] = ()
    run_id: str = ""
    path: str = ""
    stage_opts: Mapping[str, Any] = field(default_factory=immutables.Map)
    runtime: Services | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.state, immutables.Map):
            object.__setattr__(self, "state", immutables.Map(self.state))
        if not isinstance(self.config, immutables.Map):
            object.__setattr__(self, "config", immutables.Map(self.config))
        if not isinstance(self.stage_opts, immutables.Map):
            object.__setattr__(self, "stage_opts", immutables.Map(self.stage_opts))

    # -- reading -------------------------------------------------------------
    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The state value ``key``; without a default a missing key raises :class:`MissingState`."""
        value = self.state.get(key, _MISSING)
        if value is _MISSING:
            if default is not _MISSING:
                return default
            raise MissingState(f"stage {self.path or '<none>'!r}: state has no key {key!r} (has: {', '.join(sorted(self.state)) or 'nothing'})")
        return value

    def setting(self, key: str, default: Any = _MISSING) -> Any:
        """The config value ``key``; without a default a missing key raises :class:`MissingState`."""
        value = self.config.get(key, _MISSING)
        if value is _MISSING:
            if default is not _MISSING:
                return default
            raise MissingState(f"stage {self.path or '<none>'!r}: config has no key {key!r} (has: {', '.join(sorted(self.config)) or 'nothing'})")
        return value

    def __contains__(self, key: str) -> bool:
        return key in self.state

    # -- building new contexts -----------------------------------------------
    def put(self, **values: Any) -> "Context":
        """A new context whose state has ``values`` written over this one's."""
        return self.put_all(values)

    def put_all(self, values: Mapping[str, Any]) -> "Context":
        """Like :meth:`put`, for keys that are not identifiers."""
        if not values:
            return self
        mutation = self.state.mutate()
        for key, value in values.items():
            mutation[key] = value
        return replace(self, state=mutation.finish())

    def record(self, **values: Any) -> "Context":
        """A new context with one more metrics record (tagged with the stage path)."""
        entry = immutables.Map({"path": self.path, **values})
        return replace(self, metrics=self.metrics + (entry,))

    # -- services ------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the run's work queue (one worker, FIFO) and
        return its future at once; a later stage awaits it (see ``AwaitFuture``)."""
        if self.runtime is None:
            raise RuntimeError(f"stage {self.path!r}: submit() needs a context made by the workflow runner")
        return self.runtime.submit(fn, *args, **kwargs)

    @property
    def log(self) -> Any:
        """A structlog logger bound to the run id and this stage's path."""
        if self.runtime is None:
            import structlog

            return structlog.get_logger("engine.workflow").bind(path=self.path)
        return self.runtime.logger.bind(path=self.path)

    @property
    def artifacts(self) -> Path:
        """The run's directory for files (beside its log; a temporary one without a log)."""
        if self.runtime is None:
            raise RuntimeError(f"stage {self.path!r}: artifacts need a context made by the workflow runner")
        return self.runtime.artifacts

    @property
    def ledger(self) -> Any:
        """The run's :class:`engine.ledger.Ledger` (the event log stages may append to)."""
        if self.runtime is None or self.runtime.ledger is None:
            raise RuntimeError(f"stage {self.path!r}: this run has no ledger")
        return self.runtime.ledger
