"""A run's config sets the error policies: ``on_error`` per stage or for the run."""

from __future__ import annotations

import pytest

from engine.workflow import Context, StageFailed, run, skip, stage, workflow


class Failing:
    """Fails its first ``failures`` calls, then puts ``done``."""

    provides = ("done",)

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def execute(self, ctx: Context) -> Context:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"boom {self.calls}")
        return ctx.put(done=self.calls)


def test_a_stage_policy_from_the_config_retries_what_the_workflow_would_halt_on():
    with pytest.raises(StageFailed):
        run(workflow("w", stage("flaky", Failing(1))))
    flaky = Failing(2)
    result = run(workflow("w", stage("flaky", flaky)), {"on_error": {"flaky": "retry(3)"}})
    assert result.state["done"] == 3 and flaky.calls == 3


def test_the_config_default_applies_to_stages_that_declare_none_and_a_stage_entry_beats_the_declared_one():
    quiet = Failing(5)
    declared = Failing(5)
    result = run(workflow("w", stage("quiet", quiet), stage("declared", declared, on_error=skip)), {"on_error": "skip"})
    assert "done" not in result.state and quiet.calls == 1  # skipped, not halted
    with pytest.raises(StageFailed, match="declared"):
        run(workflow("w", stage("declared", Failing(5), on_error=skip)), {"on_error": {"declared": "halt"}})
    with pytest.raises(StageFailed, match="strict"):  # a declared policy beats the run's default
        run(workflow("w", stage("strict", Failing(5), on_error="halt")), {"on_error": {"*": "skip"}})


def test_unknown_stages_and_bad_policies_are_refused_naming_the_known_ones():
    wf = workflow("w", stage("alpha", Failing(0)), stage("beta", Failing(0), provides=[]))
    with pytest.raises(ValueError, match=r"unknown stage\(s\) 'gamma'; known: alpha, beta"):
        run(wf, {"on_error": {"gamma": "skip"}})
    with pytest.raises(ValueError, match=r"on_error.alpha: bad error policy 'sometimes'"):
        run(wf, {"on_error": {"alpha": "sometimes"}})


class Record:
    """Appends its name to a shared list (``provides`` nothing)."""

    provides = ()

    def __init__(self, seen: list[str], name: str, fail: bool = False) -> None:
        self.seen, self.name, self.fail = seen, name, fail

    def execute(self, ctx: Context) -> Context:
        self.seen.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        return ctx


def test_a_cleanup_stage_runs_after_a_failure_and_the_first_failure_is_what_the_run_raises():
    seen: list[str] = []
    wf = workflow("w", stage("work", Record(seen, "work", fail=True)), stage("skipped", Record(seen, "skipped")),
                  stage("cleanup", Record(seen, "cleanup"), always=True),
                  stage("cleanup2", Record(seen, "cleanup2", fail=True), always=True),
                  stage("cleanup3", Record(seen, "cleanup3"), always=True))
    with pytest.raises(StageFailed, match="work failed"):
        run(wf)
    assert seen == ["work", "cleanup", "cleanup2", "cleanup3"]
    seen.clear()
    run(workflow("w", stage("work", Record(seen, "work")), stage("cleanup", Record(seen, "cleanup"), always=True)))
    assert seen == ["work", "cleanup"]  # and once on success


def test_always_must_be_a_boolean():
    from engine.workflow import WorkflowError

    with pytest.raises(WorkflowError, match="option 'always' must be True or False"):
        run(workflow("w", stage("cleanup", Record([], "c"), always="yes")))


def test_cleanup_runs_at_every_level_a_failure_inside_a_loop_passes_through():
    from engine.workflow import loop

    seen: list[str] = []
    wf = workflow("w", loop("l", stage("work", Record(seen, "work", fail=True)), stage("inner", Record(seen, "inner"), always=True),
                            over=range(3)),
                  stage("after", Record(seen, "after")), stage("outer", Record(seen, "outer"), always=True))
    with pytest.raises(StageFailed):
        run(wf)
    assert seen == ["work", "inner", "outer"]  # the loop stops at its first failed iteration
