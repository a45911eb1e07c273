"""The errors of the event log: each names the log (a path) and what is wrong with it.

Every one is a :class:`LogError`, so a command reports any of them as one line and
exits 2.  They live apart from the store so that the header checks, the lock and
JSON Lines can raise them without importing the store.
"""

from __future__ import annotations


class LogError(Exception):
    """A log that cannot be read as a rollout-ledger log."""


class TornLog(LogError):
    """The log's tail is missing or damaged; ``position`` is the first bad sequence number or line."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class SchemaTooNew(LogError):
    """The log was written by a newer event schema than this program reads."""


class NotALog(LogError):
    """The file is not a rollout-ledger log: empty, not SQLite, or someone else's database."""


class LogLocked(LogError):
    """Another writer holds the log; ``holder`` is what its lock file says (pid, host, since)."""

    def __init__(self, message: str, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class BadLine(LogError):
    """A JSON Lines line that is not a valid event; names the line number and the rollout."""

    def __init__(self, line: int, message: str, rollout: str | None = None) -> None:
        where = f"line {line}" + (f" (rollout {rollout!r})" if rollout else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.rollout = rollout
