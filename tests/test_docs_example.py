"""The ports example of docs/workflows.md runs as written (under 50 lines) and trains."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "workflows.md"


def _example() -> str:
    match = re.search(r"<!-- example: ports -->\n```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, "docs/workflows.md lost its ports example"
    return match.group(1)


def test_the_ports_example_is_short_runs_and_lowers_the_loss(capsys):
    code = _example()
    assert len(code.splitlines()) < 50
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    assert capsys.readouterr().out.strip().splitlines()[-1] == "5"
    losses = [m["loss"] for m in namespace["result"].context.metrics if "loss" in m]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert namespace["client"]._worker._shutdown  # the cleanup stage closed it
