"""The report page in a real browser: headless Chromium (Debian's ``chromium``) opens
it offline and every figure renders with a size, with no console error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path) -> None:
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("no /usr/bin/chromium (CI installs it, so there this fails)")
    pytest.importorskip("matplotlib")
    from playwright.sync_api import sync_playwright  # in CI a missing package fails here

    runs = ROOT / "docs" / "runs"
    out = tmp_path / "out"
    assert main(["report", str(runs / "gpu-reverse-s0"), str(runs / "gpu-reverse-s4"), "--out", str(out), "--no-progress"]) == 0
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "report.html").as_uri())
            figures = page.query_selector_all("figure.plot")
            assert len(figures) == 7
            for figure in figures:
                box = figure.query_selector("svg").bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 100, figure.get_attribute("id")
            shot = out / "report.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert errors == []
