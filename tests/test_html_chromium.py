"""The HTML report in a real headless Chromium (Debian's ``chromium`` package), network off.

The page must load with no console error, request nothing but itself, draw its charts, answer a
hover with the turn's numbers, and show hostile text as text. A screenshot is saved; set
``TB_HTML_SCREENSHOT=docs/html-report.png`` to write the README's. Skipped when Chromium is not
installed (``.ci/run`` installs it when apt is available).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from chromium import BrowserPage, Chromium, chromium_binary, open_page
from test_html_report import HOSTILE, _long_entry, hostile_report

from pytest_tokenbudget.reports import build_report, render_html

REPO = Path(__file__).resolve().parent.parent
BINARY = chromium_binary()

pytestmark = [
    pytest.mark.usefixtures("no_api_key"),
    pytest.mark.skipif(
        BINARY is None,
        reason="Debian's chromium package is not installed (apt-get install -y chromium; .ci/run installs it "
        "when apt-get is available)",
    ),
]

# For each chart: how many series paths it drew and the drawn width of the bars, in CSS pixels.
_CHARTS = """JSON.stringify([...document.querySelectorAll("svg.chart")].map(svg => ({
  n: +svg.dataset.n,
  series: [...svg.querySelectorAll("path[class^=s-]")].map(p => p.getBBox().width > 0 && p.getBBox().height > 0),
  cost: svg.querySelector("polyline.cost") ? svg.querySelector("polyline.cost").getBBox().width : 0,
  verdicts: svg.querySelectorAll("path.verdicts").length,
  width: svg.getBoundingClientRect().width,
})))"""


@pytest.fixture(scope="module")
def browser() -> Chromium:
    assert BINARY is not None
    with Chromium(BINARY) as chromium:
        yield chromium  # type: ignore[misc]


def _hover_first_turn(page: BrowserPage, chart: int = 0) -> str:
    """Move the pointer over turn 0 of a chart; return the read-out it shows."""
    box = page.evaluate(
        f"(() => {{ const s = document.querySelectorAll('svg.chart')[{chart}]; s.scrollIntoView();"
        " const r = s.getBoundingClientRect(); return [r.left, r.top, r.width, +s.dataset.x0, +s.dataset.bw]; })()"
    )
    left, top, width, x0, bw = box
    scale = width / 960
    page.mouse_move(left + (x0 + bw / 2) * scale, top + 120 * scale)
    text: str = page.evaluate(
        "document.querySelector('.tip').style.display + '|' + document.querySelector('.tip').textContent"
    )
    return text


def test_example_report_in_chromium(pytester: pytest.Pytester, browser: Chromium, tmp_path: Path) -> None:
    """If the example suite's page (from a replayed pytest run) opens in Chromium with the network off,
    then it logs no error, loads nothing else, draws every chart and answers a hover."""
    for name in ("support_agent.py", "test_support_agent.py", "conftest.py"):
        shutil.copy(REPO / "examples" / name, pytester.path / name)
    shutil.copytree(REPO / "cassettes" / "test_support_agent", pytester.path / "cassettes" / "test_support_agent")
    pytester.runpytest("--token-budget-html=report.html", "-p", "no:cacheprovider").assert_outcomes(passed=3)
    url = (pytester.path / "report.html").as_uri()
    page = open_page(browser, url)
    assert page.errors == []
    assert page.requests == [url]
    assert page.evaluate("document.body.dataset.charts") == "3"  # the script ran to its end
    charts = json.loads(page.evaluate(_CHARTS))
    assert [c["n"] for c in charts] == [4, 1, 3]
    assert [c["series"] for c in charts] == [[True, True, True, True], [True, True, True], [True, True]]
    assert all(c["width"] > 900 for c in charts)
    assert charts[0]["cost"] > 100
    assert charts[0]["verdicts"] == 2
    tip = _hover_first_turn(page)
    assert tip.startswith("block|turn: 0")
    assert "model: claude-opus-5" in tip
    assert "cost USD: $0.030946" in tip
    assert "cache: write" in tip
    assert page.evaluate("document.querySelector('svg.chart .mark').getAttribute('width')") != "0"
    page.mouse_move(1, 1)
    shot = tmp_path / "html-report.png"
    assert page.screenshot(shot) == (1200, 1600)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000
    assert page.errors == []
    target = os.environ.get("TB_HTML_SCREENSHOT")
    if target:
        shutil.copy(shot, REPO / target)


def test_hostile_and_long_report_in_chromium(browser: Chromium, tmp_path: Path) -> None:
    """If the page holds markup from a cassette and a 400-turn test, then Chromium shows the markup as
    text, runs no injected script, and draws the 400 turns without an error."""
    hostile = hostile_report()
    report = build_report([*hostile.tests, _long_entry(400)], hostile.price_source)
    path = tmp_path / "hostile.html"
    path.write_text(render_html(report), encoding="utf-8")
    started = time.perf_counter()
    page = open_page(browser, path.as_uri())
    loaded = time.perf_counter() - started
    assert page.errors == []
    assert page.requests == [path.as_uri()]
    assert not [e for e in page.browser.events(page.session) if e.get("method") == "Page.javascriptDialogOpening"]
    assert page.evaluate("document.querySelectorAll('script').length") == 1
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    headings = page.evaluate("[...document.querySelectorAll('h3')].map(h => h.textContent)")
    assert f"test_x[{HOSTILE.replace('&amp;', '&amp;')}]" in headings
    charts = json.loads(page.evaluate(_CHARTS))
    assert [c["n"] for c in charts] == [400, 4]  # the 400-turn test is the dearer
    assert charts[0]["series"] == [True, True, True, True]
    assert charts[0]["verdicts"] == 3
    tip = _hover_first_turn(page)
    assert tip.startswith("block|turn: 0")
    assert "cache: write" in tip
    assert loaded < 30, loaded
