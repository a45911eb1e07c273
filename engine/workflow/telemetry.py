"""Spans: every workflow, stage and loop iteration is timed and logged through
structlog (``event='span'`` with kind, name, path, duration, outcome, loop index
and the bound run id), and exported to OpenTelemetry when it is importable."""

from __future__ import annotations

import time
from typing import Any

_otel_trace: Any
try:  # optional: export spans when OpenTelemetry is installed
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - depends on the environment
    _otel_trace = None

#: Outcomes a span ends with.
OUTCOMES = ("ok", "failed", "skipped")


def otel_enabled() -> bool:
    """Whether spans are also exported to OpenTelemetry."""
    return _otel_trace is not None


class Span:
    """One timed unit of work.  ``start()``/``end(outcome)`` or a ``with`` block
    (which ends ``failed`` when an exception escapes, else with :attr:`outcome`)."""

    __slots__ = ("logger", "kind", "name", "path", "parent", "fields", "outcome", "_t0", "_otel", "_ended")

    def __init__(self, logger: Any, kind: str, name: str, path: str, parent: "Span | None" = None, **fields: Any) -> None:
        self.logger = logger
        self.parent = parent
        self.kind = kind
        self.name = name
        self.path = path
        self.fields = {k: v for k, v in fields.items() if v is not None}
        self.outcome = "ok"
        self._t0 = 0.0
        self._otel: Any = None
        self._ended = False

    def start(self) -> "Span":
        self._t0 = time.perf_counter()
        if _otel_trace is not None:
            attributes: dict[str, Any] = {"workflow.kind": self.kind, "workflow.path": self.path}
            attributes.update({f"workflow.{k}": v for k, v in self.fields.items() if isinstance(v, (str, int, float, bool))})
            parent = self.parent._otel if self.parent is not None else None
            context = _otel_trace.set_span_in_context(parent) if parent is not None else None
            tracer = _otel_trace.get_tracer("rollout_ledger.workflow")
            self._otel = tracer.start_span(f"{self.kind} {self.name}", context=context, attributes=attributes)
        return self

    def end(self, outcome: str | None = None, **fields: Any) -> None:
        """Log the span (once) with its duration and outcome."""
        if self._ended:
            return
        self._ended = True
        if outcome is not None:
            self.outcome = outcome
        duration = time.perf_counter() - self._t0
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self.outcome == "failed":
            log = self.logger.warning
        elif self.kind == "workflow":
            log = self.logger.info
        else:  # stages and loop iterations: many per second in a training run
            log = self.logger.debug
        log("span", kind=self.kind, name=self.name, path=self.path, duration_s=round(duration, 6), outcome=self.outcome, **self.fields)
        if self._otel is not None:
            self._otel.set_attribute("workflow.outcome", self.outcome)
            if self.outcome == "failed":
                self._otel.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, str(self.fields.get("error", ""))))
            self._otel.end()

    def __enter__(self) -> "Span":
        return self.start()

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if error is not None and not isinstance(error, GeneratorExit):
            self.end("failed" if self.outcome == "ok" else self.outcome, error=f"{type(error).__name__}: {error}")
        else:
            self.end()
