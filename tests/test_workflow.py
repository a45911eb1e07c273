"""The workflow engine with toy stages: language, validation, control flow,
error policies, rollback, futures and pipelining, spans and stage events."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from structlog.testing import capture_logs

from engine.core.events import Stage
from engine.log import EventLog
from engine.workflow import (
    AwaitFuture,
    Context,
    ParallelConflict,
    StageFailed,
    WorkflowError,
    branch,
    compile_workflow,
    conditional,
    describe,
    loop,
    parallel,
    retry,
    run,
    skip,
    stage,
    subworkflow,
    to_dict,
    workflow,
)


class Put:
    """Writes ``key = value``."""

    def __init__(self, key: str, value: object) -> None:
        self.key, self.value = key, value
        self.provides = (key,)

    def execute(self, ctx: Context) -> Context:
        return ctx.put_all({self.key: self.value})


class Add:
    """``total += amount`` (reads and writes ``total``)."""

    requires = ("total",)
    provides = ("total",)

    def __init__(self, amount: int = 1) -> None:
        self.amount = amount

    def execute(self, ctx: Context) -> Context:
        return ctx.put(total=ctx.get("total") + self.amount)


class Flaky:
    """Fails its first ``failures`` calls; counts calls and rollbacks."""

    provides = ("flaky",)

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.rollbacks: list[str] = []

    def execute(self, ctx: Context) -> Context:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"boom {self.calls}")
        return ctx.put(flaky=self.calls)

    def rollback(self, ctx: Context, error: BaseException) -> Context:
        self.rollbacks.append(str(error))
        return ctx.put(rolled_back=len(self.rollbacks))


def stage_events(path) -> list[tuple[str, str]]:
    with EventLog(path) as log:
        return [(e.path, e.phase) for e in log.events() if isinstance(e, Stage)]


# -- language and validation -----------------------------------------------------


def test_sequence_loop_conditional_and_subworkflow_compose():
    inner = workflow("inner", stage("double", lambda ctx: ctx.put(total=ctx.get("total") * ctx.setting("factor")),
                                    requires=["total"], provides=["total"]), defaults={"factor": 2}, inputs=("total",))
    wf = workflow(
        "outer",
        stage("start", Put("total", 0)),
        loop("steps", stage("add", Add()), over=lambda ctx: range(ctx.setting("steps"))),
        conditional(lambda ctx: ctx.get("total") > 2, stage("big", Put("size", "big")), otherwise=[stage("small", Put("size", "small"))]),
        subworkflow(inner, config_key="inner"),
        defaults={"steps": 3, "inner": {}},
    )
    result = run(wf, {"steps": 4, "inner": {"factor": 10}})
    assert result.state["total"] == 40
    assert result.state["size"] == "big"
    assert result.state["steps_index"] == 3
    assert run(wf, {"steps": 1}).state["size"] == "small"


def test_compiled_ir_is_inspectable():
    wf = workflow("w", stage("start", Put("total", 0), on_error="skip"),
                  loop("l", stage("add", Add()), over=range(2)), parallel(stage("p", Put("a", 1)), max_concurrency=2))
    tree = to_dict(compile_workflow(wf))
    assert [n["kind"] for n in tree["body"]] == ["stage", "loop", "parallel"]
    assert tree["body"][0] == {"kind": "stage", "name": "start", "stage": "Put", "on_error": "skip", "provides": ["total"]}
    text = describe(wf)
    assert "loop l over range(0, 2)" in text and "stage add: Add  requires=total  provides=total" in text


def test_validation_lists_every_problem_naming_the_node():
    wf = workflow(
        "bad",
        stage("a", Add()),  # needs total, nothing provides it
        stage("a", Put("x", 1)),  # duplicate
        stage("b", "no_such_stage"),
        stage("c", 42),
        stage("d", Put("y", 1), on_error="sometimes"),
        stage("e", Put("z", 1), colour="red"),
        loop("l", stage("f", Put("w", 1)), over=7),
        parallel(stage("g", Put("q", 1)), max_concurrency=0),
        conditional("yes", stage("h", Put("r", 1))),
        stage("bad name", Put("s", 1)),
    )
    with pytest.raises(WorkflowError) as info:
        compile_workflow(wf)
    problems = "\n".join(info.value.problems)
    for expected in (
        "stage 'a': duplicate name",
        "stage 'b': unknown stage 'no_such_stage'",
        "stage 'c': 42 is not a stage",
        "stage 'd': bad error policy 'sometimes'",
        "stage 'e': unknown option 'colour'",
        "loop 'l': over= must be a function",
        "parallel: max_concurrency must be an integer >= 1",
        "conditional: predicate must be a function",
        "stage 'bad name': a name must be",
    ):
        assert expected in problems, expected


def test_validation_checks_data_flow():
    with pytest.raises(WorkflowError, match="stage 'add': needs state 'total', which no earlier stage provides"):
        compile_workflow(workflow("w", stage("add", Add())))
    # an input satisfies it; a conditional with one side does not guarantee its writes
    compile_workflow(workflow("w", stage("add", Add()), inputs=("total",)))
    with pytest.raises(WorkflowError, match="stage 'add': needs state 'total'"):
        compile_workflow(workflow("w", conditional(lambda c: True, stage("p", Put("total", 0))), stage("add", Add())))
    compile_workflow(workflow("w", conditional(lambda c: True, stage("p", Put("total", 0)),
                                               otherwise=[stage("q", Put("total", 1))]), stage("add", Add())))
    # a subworkflow's inputs must be available
    inner = workflow("inner", stage("add", Add()), inputs=("total",))
    with pytest.raises(WorkflowError, match="subworkflow 'inner': needs state 'total'"):
        compile_workflow(workflow("w", subworkflow(inner)))
    # two parallel branches writing the same key is rejected statically
    with pytest.raises(WorkflowError, match="parallel branches 'p' and 'q' both write state 'x'"):
        compile_workflow(workflow("w", parallel(stage("p", Put("x", 1)), stage("q", Put("x", 2)))))


def test_bad_stage_options_and_submit_ahead_are_refused():
    with pytest.raises(WorkflowError, match="stage 'wait': option 'key' is required"):
        compile_workflow(workflow("w", stage("wait", AwaitFuture())))
    with pytest.raises(WorkflowError, match="stage 'wait': option 'key' must be str"):
        compile_workflow(workflow("w", stage("wait", AwaitFuture(), key=3)))
    with pytest.raises(WorkflowError, match="loop 'l': submit_ahead=1 needs a stage that awaits"):
        compile_workflow(workflow("w", loop("l", stage("a", Put("a", 1)), over=range(2), submit_ahead=1)))
    with pytest.raises(WorkflowError, match="loop 'l': a checkpoint stage inside a loop with submit_ahead"):
        compile_workflow(workflow("w", loop("l", stage("s", lambda c: c.put(f=c.submit(int)), provides=["f"]),
                                            stage("wait", AwaitFuture(), key="f"), stage("c", Put("c", 1), checkpoint=True),
                                            over=range(2), submit_ahead=1)))
    with pytest.raises(WorkflowError, match="subworkflow 'w': workflow 'w' used as a node|workflow 'w' used as a node"):
        compile_workflow(workflow("outer", workflow("w", stage("a", Put("a", 1)))))


def test_nothing_runs_when_validation_fails():
    calls = []
    wf = workflow("w", stage("first", lambda ctx: calls.append(1) or ctx), stage("second", Add()))
    with pytest.raises(WorkflowError):
        run(wf)
    assert calls == []


def test_unknown_config_key_names_the_key():
    wf = workflow("w", stage("a", Put("a", 1)), defaults={"steps": 1})
    with pytest.raises(ValueError, match="unknown config key\\(s\\) 'stpes'"):
        run(wf, {"stpes": 2})


def test_stage_must_return_a_context_and_write_what_it_provides():
    with pytest.raises(StageFailed, match="returned int, expected a Context"):
        run(workflow("w", stage("a", lambda ctx: 3)))

    class Liar:
        provides = ("x",)

        def execute(self, ctx: Context) -> Context:
            return ctx

    with pytest.raises(StageFailed, match="declares that it provides 'x' but did not write it"):
        run(workflow("w", stage("liar", Liar())))


def test_context_is_immutable_and_errors_name_the_key():
    ctx = Context(state={"a": 1})
    newer = ctx.put(b=2)
    assert "b" not in ctx and newer.get("b") == 2
    with pytest.raises(AttributeError):
        ctx.state = {}  # type: ignore[misc]
    with pytest.raises(KeyError, match="state has no key 'zz'"):
        ctx.get("zz")
    with pytest.raises(KeyError, match="config has no key 'lr'"):
        ctx.setting("lr")


# -- parallel ----------------------------------------------------------------------


def _sleeper(key: str, seconds: float, live: list[int], peak: list[int]):
    async def execute(ctx: Context) -> Context:
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        await asyncio.sleep(seconds)
        live[0] -= 1
        return ctx.put_all({key: seconds})

    return execute


def test_parallel_runs_branches_concurrently_bounded_by_max_concurrency():
    live, peak = [0], [0]
    branches = [stage(f"b{i}", _sleeper(f"k{i}", 0.2, live, peak), provides=[f"k{i}"]) for i in range(4)]
    wf = workflow("w", parallel(*branches, max_concurrency=2))
    began = time.perf_counter()
    result = run(wf)
    elapsed = time.perf_counter() - began
    assert peak[0] == 2
    assert 0.38 < elapsed < 0.75  # two waves of 0.2 s, not four
    assert {f"k{i}" for i in range(4)} <= set(result.state)


def test_parallel_runs_sync_stages_in_threads_and_limit_may_depend_on_context():
    threads: set[int] = set()

    def work(key: str):
        def execute(ctx: Context) -> Context:
            threads.add(threading.get_ident())
            time.sleep(0.15)
            return ctx.put_all({key: 1})

        return execute

    wf = workflow("w", stage("n", Put("n", 3)),
                  parallel(*(stage(f"s{i}", work(f"v{i}"), provides=[f"v{i}"]) for i in range(3)),
                           max_concurrency=lambda ctx: ctx.get("n")))
    began = time.perf_counter()
    run(wf)
    assert time.perf_counter() - began < 0.4
    assert len(threads) == 3


def test_parallel_merge_rule_and_runtime_conflict():
    def write_x(value):
        return lambda ctx: ctx.put(x=value).record(branch=value)

    merged = run(workflow("w", parallel(branch("one", stage("a", Put("a", 1)), stage("b", Put("b", 2))),
                                        stage("c", write_x("c")))))
    assert dict(merged.state) == {"a": 1, "b": 2, "x": "c"}
    assert [m["branch"] for m in merged.context.metrics] == ["c"]
    # undeclared writes of the same key by two branches are caught at run time
    with pytest.raises(ParallelConflict, match="branches 'p' and 'q' both wrote state 'x'"):
        run(workflow("w", parallel(stage("p", write_x(1)), stage("q", write_x(2)))))


def test_parallel_branch_failure_halts_with_the_stage_named():
    async def slow(ctx):
        await asyncio.sleep(5)
        return ctx

    def fail(ctx):
        raise ValueError("bad branch")

    began = time.perf_counter()
    with pytest.raises(StageFailed, match="stage 'w/broken' failed: ValueError: bad branch"):
        run(workflow("w", parallel(stage("slow", slow), stage("broken", fail))))
    assert time.perf_counter() - began < 2  # the slow sibling was cancelled


# -- error policies and rollback ----------------------------------------------------


def test_halt_runs_rollback_and_stops(tmp_log):
    flaky = Flaky(failures=5)
    after = []
    wf = workflow("w", stage("flaky", flaky), stage("after", lambda ctx: after.append(1) or ctx))
    with pytest.raises(StageFailed, match="stage 'w/flaky' failed: RuntimeError: boom 1") as info:
        run(wf, log=tmp_log)
    assert info.value.attempts == 1 and flaky.rollbacks == ["boom 1"] and after == []
    assert stage_events(tmp_log) == [("w", "started"), ("w/flaky", "started"), ("w/flaky", "failed"), ("w", "failed")]


def test_skip_continues_with_the_rolled_back_context(tmp_log):
    flaky = Flaky(failures=5)
    wf = workflow("w", stage("flaky", flaky, on_error=skip, provides=[]), stage("after", Put("after", True)))
    result = run(wf, log=tmp_log)
    assert result.state["after"] is True and result.state["rolled_back"] == 1 and "flaky" not in result.state
    assert ("w/flaky", "skipped") in stage_events(tmp_log)


def test_retry_with_backoff_then_success(tmp_log):
    flaky = Flaky(failures=2)
    wf = workflow("w", stage("flaky", flaky, on_error=retry(3, backoff=0.05)))
    began = time.perf_counter()
    result = run(wf, log=tmp_log)
    assert time.perf_counter() - began >= 0.05 + 0.1  # 0.05 then 0.1 s of backoff
    assert result.state["flaky"] == 3 and flaky.rollbacks == ["boom 1", "boom 2"]
    phases = [p for path, p in stage_events(tmp_log) if path == "w/flaky"]
    assert phases == ["started", "failed", "started", "failed", "started", "finished"]


def test_retry_gives_up_after_max_attempts_and_workflow_default_policy_applies():
    flaky = Flaky(failures=9)
    with pytest.raises(StageFailed, match="after 2 attempts") as info:
        run(workflow("w", stage("flaky", flaky), on_error="retry(2)"))
    assert info.value.attempts == 2 and flaky.calls == 2


def test_validate_hook_refusal_is_a_failure():
    class Picky:
        def validate(self, ctx: Context):
            return "needs a positive total" if ctx.get("total", 0) <= 0 else None

        def execute(self, ctx: Context) -> Context:
            return ctx.put(ok=True)

    with pytest.raises(StageFailed, match="refused the context: needs a positive total"):
        run(workflow("w", stage("picky", Picky())))
    assert run(workflow("w", stage("picky", Picky())), state={"total": 1}).state["ok"] is True


def test_subworkflow_error_policy_retries_the_whole_subworkflow():
    flaky = Flaky(failures=1)
    inner = workflow("inner", stage("count", Put("seen", True)), stage("flaky", flaky))
    result = run(workflow("outer", subworkflow(inner, on_error=retry(2))))
    assert result.state["flaky"] == 2


# -- futures and submit_ahead ------------------------------------------------------------


def _pipeline(submit_ahead: int, order: list[str]) -> object:
    def submit(ctx: Context) -> Context:
        i = ctx.get("steps_index")
        order.append(f"submit {i}")

        def work() -> int:
            time.sleep(0.01)
            return i * i

        return ctx.put(job=ctx.submit(work))

    def log_result(ctx: Context) -> Context:
        order.append(f"await {ctx.get('steps_index')}")
        return ctx.put(results=ctx.get("results") + (ctx.get("job_result"),))

    return workflow(
        "pipe",
        stage("init", Put("results", ())),
        loop("steps", stage("submit", submit, provides=["job"]), stage("wait", AwaitFuture(), key="job"),
             stage("log", log_result, requires=["job_result", "results"], provides=["results"]),
             over=range(4), submit_ahead=submit_ahead),
    )


def test_futures_are_awaited_by_a_later_stage():
    order: list[str] = []
    result = run(_pipeline(0, order))
    assert result.state["results"] == (0, 1, 4, 9)
    assert order == ["submit 0", "await 0", "submit 1", "await 1", "submit 2", "await 2", "submit 3", "await 3"]


def test_submit_ahead_submits_step_k_plus_1_before_awaiting_step_k():
    order: list[str] = []
    result = run(_pipeline(1, order))
    assert result.state["results"] == (0, 1, 4, 9)  # each await sees its own iteration's future
    assert order == ["submit 0", "submit 1", "await 0", "submit 2", "await 1", "submit 3", "await 2", "await 3"]
    order.clear()
    run(_pipeline(2, order))
    assert order[:4] == ["submit 0", "submit 1", "submit 2", "await 0"]


# -- telemetry -------------------------------------------------------------------------


@pytest.fixture
def debug_logging():
    from engine.logconfig import configure_logging

    configure_logging("debug", force=True)
    yield
    configure_logging(force=True)


def test_every_workflow_stage_and_iteration_is_a_span(debug_logging):
    flaky = Flaky(failures=1)
    wf = workflow("w", stage("start", Put("total", 0)), loop("l", stage("add", Add()), over=range(2)),
                  stage("flaky", flaky, on_error=skip, provides=[]))
    with capture_logs() as logs:
        result = run(wf, run_id="run-42")
    spans = [e for e in logs if e["event"] == "span"]
    assert all(e["run_id"] == "run-42" for e in spans)
    summary = [(e["kind"], e["path"], e["outcome"], e.get("index")) for e in spans]
    assert summary == [
        ("stage", "w/start", "ok", None),
        ("stage", "w/l[0]/add", "ok", None),
        ("iteration", "w/l[0]", "ok", 0),
        ("stage", "w/l[1]/add", "ok", None),
        ("iteration", "w/l[1]", "ok", 1),
        ("stage", "w/flaky", "skipped", None),
        ("workflow", "w", "ok", None),
    ]
    assert all(e["duration_s"] >= 0 for e in spans)
    assert result.run_id == "run-42"


def test_only_the_workflow_span_logs_at_info():
    with capture_logs() as logs:
        run(workflow("w", stage("start", Put("total", 0)), loop("l", stage("add", Add()), over=range(2))))
    assert [(e["kind"], e["log_level"]) for e in logs if e["event"] == "span"] == [("workflow", "info")]


def test_failed_span_carries_the_error():
    with capture_logs() as logs, pytest.raises(StageFailed):
        run(workflow("w", stage("boom", Flaky(failures=1))))
    failed = [e for e in logs if e["event"] == "span" and e["outcome"] == "failed"]
    assert [e["path"] for e in failed] == ["w/boom", "w"]
    assert "boom 1" in failed[0]["error"]


def test_stage_events_go_to_the_runs_log(tmp_log):
    wf = workflow("w", stage("a", Put("a", 1)), loop("l", stage("b", Put("b", 2)), over=range(2)))
    run(wf, log=tmp_log)
    assert stage_events(tmp_log) == [
        ("w", "started"),
        ("w/a", "started"), ("w/a", "finished"),
        ("w/l[0]/b", "started"), ("w/l[0]/b", "finished"),
        ("w/l[1]/b", "started"), ("w/l[1]/b", "finished"),
        ("w", "finished"),
    ]


def test_the_ledger_section_configures_the_runs_log(tmp_log):
    from engine.core.config import Config
    from engine.log import replay

    wf = workflow("w", stage("a", Put("a", 1)), defaults={"steps": 1})
    run(wf, {"ledger": {"max_concurrent": 8, "batch_size": 4, "max_staleness": 2}}, log=tmp_log)
    assert replay(tmp_log).config == Config(max_concurrent=8, batch_size=4, max_staleness=2)


def test_stage_policy_overrides_the_workflow_default():
    flaky = Flaky(failures=1)
    result = run(workflow("w", stage("flaky", flaky, on_error=retry(2)), stage("after", Put("after", 1)), on_error="skip"))
    assert result.state["flaky"] == 2 and flaky.calls == 2


def test_a_workflow_check_refuses_a_config_before_any_stage_runs_and_reaches_subworkflows(tmp_log):
    from engine.workflow import subworkflow

    ran = []

    def positive(settings):
        if settings["n"] < 1:
            raise ValueError(f"'n' must be at least 1, got {settings['n']}")

    inner = workflow("inner", stage("work", lambda ctx: ran.append(ctx.setting("n")) or ctx), defaults={"n": 1}, check=positive)
    outer = workflow("outer", stage("first", lambda ctx: ran.append("first") or ctx),
                     loop("again", subworkflow(inner, config_key="inner", name="inner"), over=lambda ctx: range(2)),
                     defaults={"inner": {}})
    with pytest.raises(ValueError, match="subworkflow 'inner': 'n' must be at least 1, got 0"):
        run(outer, {"inner": {"n": 0}}, log=tmp_log)
    assert ran == [] and not tmp_log.exists()
    run(outer, {"inner": {"n": 2}})
    assert ran == ["first", 2, 2]
