"""The errors a workflow run raises: a stage that halted the run, a stage that
refused its context, two parallel branches writing one key, a log that cannot be
resumed.  Every layer of the workflow package may raise them; they import nothing."""

from __future__ import annotations


class StageFailed(Exception):
    """A stage (or subworkflow) failed and its policy halted the run."""

    def __init__(self, path: str, error: BaseException, attempts: int = 1) -> None:
        self.path = path
        self.error = error
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"stage {path!r} failed{tries}: {type(error).__name__}: {error}")


class ParallelConflict(RuntimeError):
    """Two parallel branches wrote the same state key."""


class StageInvalid(RuntimeError):
    """A stage's ``validate(ctx)`` refused the context."""


class ResumeError(RuntimeError):
    """A log that cannot be resumed (missing, or not a run of this workflow)."""
