"""structlog, configured once: JSON lines when stderr is not a terminal, a readable
console otherwise.  ``ROLLOUT_LEDGER_LOG_LEVEL`` (default ``info``) sets the level;
every applied event is logged at debug level, every refusal at warning level."""

from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


def configure_logging(level: str | None = None, *, force: bool = False) -> None:
    """Configure structlog for the process (once, unless ``force``)."""
    global _configured
    if _configured and not force:
        return
    name = (level or os.environ.get("ROLLOUT_LEDGER_LOG_LEVEL", "info")).upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {name.lower()!r} (ROLLOUT_LEDGER_LOG_LEVEL); use debug, info, warning or error")
    renderer = structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),  # stderr looked up per logger
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str, **bound: object) -> structlog.typing.FilteringBoundLogger:
    """A logger named ``name`` with ``bound`` context; configures logging on first use."""
    configure_logging()
    return structlog.get_logger(name).bind(**bound)
