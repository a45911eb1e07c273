"""The ``run`` and ``describe`` commands, and the optional OpenTelemetry export."""

from __future__ import annotations

import json
import textwrap

import pytest

from engine.cli import main
from engine.workflow import loop, run, stage, workflow

TOY = textwrap.dedent(
    """
    from engine.workflow import loop, stage, workflow

    def boom(ctx):
        raise RuntimeError("out of paper")

    WORKFLOW = workflow(
        "toy",
        stage("start", lambda c: c.put(n=c.setting("start")).record(n=c.setting("start")), provides=["n"]),
        loop("steps", stage("add", lambda c: c.put(n=c.get("n") + 1).record(n=c.get("n") + 1), requires=["n"], provides=["n"]),
             over=lambda c: range(c.setting("steps"))),
        defaults={"start": 0, "steps": 2},
    )
    BROKEN = workflow("broken", stage("boom", boom))
    INVALID = workflow("invalid", stage("needs", lambda c: c, requires=["missing"]))
    """
)


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.py"
    path.write_text(TOY)
    return str(path)


def test_describe_builtin_prints_its_structure(capsys):
    assert main(["describe", "supervised"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("workflow supervised (on_error=halt)")
    assert "loop batches over <lambda> submit_ahead=1" in out
    assert "stage await_fb: AwaitFuture  options={'key': 'fb_future'}" in out


def test_describe_json_of_rlhf_shows_the_three_subworkflows(capsys):
    assert main(["describe", "rlhf", "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert [(n["kind"], n["name"], n["config_key"]) for n in tree["body"]] == [
        ("subworkflow", "sft", "sft"), ("subworkflow", "reward", "reward"), ("subworkflow", "rl", "rl")]
    assert tree["body"][2]["workflow"]["name"] == "reinforcement"


def test_describe_refuses_an_invalid_workflow_naming_the_stage(toy, capsys):
    assert main(["describe", f"{toy}:INVALID"]) == 2
    assert "stage 'needs': needs state 'missing'" in capsys.readouterr().err


def test_run_a_users_module_with_overrides(toy, tmp_path, capsys):
    assert main(["run", toy, "--set", "start=10", "--config", '{"steps": 3}', "--log", str(tmp_path / "run.sqlite")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["workflow"] == "toy" and summary["latest"]["n"] == 13 and summary["metrics_records"] == 4


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["run", "no_such_workflow"], 2, "unknown workflow 'no_such_workflow'"),
        (["run", "{toy}", "--set", "stpes=3"], 2, "unknown config key(s) 'stpes'"),
        (["run", "{toy}", "--set", "steps"], 2, "--set 'steps': expected KEY=VALUE"),
        (["run", "{toy}", "--config", "{steps: 3"], 2, "--config: '{steps: 3' is neither a file nor valid JSON"),
        (["run", "{toy}", "--config", "[1]"], 2, "--config: expected a JSON object, got list"),
        (["run", "{toy}:BROKEN"], 1, "stage 'broken/boom' failed: RuntimeError: out of paper"),
        (["run", "{toy}:NOPE"], 2, "no attribute 'NOPE'"),
        (["run", "{toy}", "--resume"], 2, "--resume needs --log"),
    ],
)
def test_run_errors_name_the_bad_input(toy, argv, status, message, capsys):
    assert main([a.replace("{toy}", toy) for a in argv]) == status
    assert message in capsys.readouterr().err


def test_run_refuses_to_overwrite_a_log(toy, tmp_path, capsys):
    log = tmp_path / "run.sqlite"
    assert main(["run", toy, "--log", str(log)]) == 0
    assert main(["run", toy, "--log", str(log)]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_spans_are_exported_to_opentelemetry_when_installed():
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="OpenTelemetry export is optional")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider is already installed in this process")
    run(workflow("traced", loop("l", stage("a", lambda c: c.put(a=1), provides=["a"]), over=range(2))))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"workflow traced", "iteration l", "stage a"}
    root = spans["workflow traced"]
    assert spans["iteration l"].parent.span_id == root.context.span_id
    assert spans["stage a"].parent.span_id == spans["iteration l"].context.span_id
    assert spans["stage a"].attributes["workflow.outcome"] == "ok"
