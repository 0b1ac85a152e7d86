"""The HTML report: ``--token-budget-html``, ``tokenbudget report --html``, the ``-v`` sparkline.

End to end, a session recorded through the emulator is replayed with the network blocked and
writes the page; its numbers are the report's, exactly. Unit tests cover what a recording does
not have yet (levers), hostile text, and a 400-turn test's size and render time. The page in a
real browser is ``tests/test_html_chromium.py``.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import NETWORK_GUARD, SUITE_AGENT, read_json

from pytest_tokenbudget.analysis import TurnCache, Verdict
from pytest_tokenbudget.cassette import load_cassette
from pytest_tokenbudget.cli import main as cli_main
from pytest_tokenbudget.ledger import Ledger, Turn, turns_from
from pytest_tokenbudget.levers import Lever, LeverKind
from pytest_tokenbudget.pricing import Pricer
from pytest_tokenbudget.reports import Report, TestEntry, TurnEntry, build_entry, build_report, render_html
from pytest_tokenbudget.reports.terminal import sparkline

pytestmark = pytest.mark.usefixtures("no_api_key")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CASSETTES = REPO / "cassettes" / "test_support_agent"


def _text(page: str) -> str:
    """The page's text without tags (entities left as they are)."""
    return re.sub(r"<[^>]+>", " ", page)


def _section(page: str, test_id: str) -> str:
    """The per-test section of ``test_id``."""
    start = page.index(f"<h3>{test_id}</h3>")
    end = page.find('<section class="test"', start)
    return page[start : end if end != -1 else len(page)]


def _record(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_agent=SUITE_AGENT)
    pytester.runpytest("-p", "no:cacheprovider", "--token-budget-record=once").assert_outcomes(passed=7)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")


def test_pytest_writes_the_html_report_with_the_runs_numbers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a recorded session is replayed offline with ``--token-budget-html``, then the page holds each
    test's cost and token counts exactly as the JSON report has them, tests sorted by cost."""
    _record(pytester, monkeypatch)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--token-budget-html=out/report.html", "--token-budget-json=report.json"
    )
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["wrote out/report.html"])
    page = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    document = read_json(pytester.path / "report.json")
    suite = page[page.index("Tests by cost") : page.index("Per test")]
    order = [m for m in re.findall(r'<a href="#t\d+">([^<]+)</a>', suite)]
    assert order == [
        "test_agent.py::test_more[4]",
        "test_agent.py::test_refund",
        "test_agent.py::test_more[3]",
        "test_agent.py::test_more[2]",
        "test_agent.py::test_short",
        "test_agent.py::test_more[1]",
    ]
    assert order == [t["id"] for t in document["tests"]]
    # The suite table: cost, turns, all input, output, hit rate per test; the totals.
    assert '<a href="#t1">test_agent.py::test_refund</a></td><td>$0.006969</td>' in suite
    assert "<td>3</td><td>4,461</td><td>21</td><td>64.9%</td>" in suite
    assert "<b>$0.037944</b>" in suite
    assert "<b>14</b></td><td><b>20,731</b></td><td><b>33</b>" in suite
    # One section per test with its totals and a chart with one bar slot per turn.
    refund = _section(page, "test_agent.py::test_refund")
    assert [int(n) for n in re.findall(r'data-n="(\d+)"', refund)] == [3]
    kpis = dict(re.findall(r"<span class=muted>([^<]+)</span><b>([^<]+)</b>", refund))
    assert kpis == {
        "cost": "$0.006969",
        "turns": "3",
        "input": "120",
        "cache write": "1,447",
        "cache read": "2,894",
        "output": "21",
        "hit rate": "64.9%",
    }
    # Each turn's row: tokens, cost, cumulative cost and cache verdict, as in the JSON report.
    json_turns = next(t for t in document["tests"] if t["id"] == "test_agent.py::test_refund")["turns"]
    rows = re.findall(r"<tr><td>(\d+)</td>(.*?)</tr>", refund)
    assert len(rows) == 3
    running = Decimal(0)
    for (index, row), turn in zip(rows, json_turns, strict=True):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        usage = turn["usage"]
        running += Decimal(str(turn["cost_usd"]))
        assert int(index) == turn["index"]
        assert cells[2:7] == [
            f"{usage['input_tokens']:,}",
            f"{usage['cache_creation_input_tokens']:,}",
            f"{usage['cache_read_input_tokens']:,}",
            f"{usage['output_tokens']:,}",
            f"${Decimal(str(turn['cost_usd'])):.6f}",
        ]
        assert cells[7] == f"${running:.6f}"
        assert cells[8].endswith(turn["cache"]["verdict"])
    assert [re.findall(r"<td>([\d,]+)</td>", row)[:3] for _, row in rows] == [
        ["13", "1,447", "0"],
        ["40", "0", "1,447"],
        ["67", "0", "1,447"],
    ]
    assert "write" in rows[0][1]
    assert "hit" in rows[1][1]
    assert "<td>$0.006969</td>" in rows[2][1]  # the cumulative cost ends at the test's cost


def test_ini_key_writes_the_html_relative_to_the_rootdir(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If ``token_budget_html`` is set in the ini, then the page is written there without any flag."""
    _record(pytester, monkeypatch)
    pytester.makeini("[pytest]\ntoken_budget_html = reports/tb.html\n")
    sub = pytester.mkdir("sub")
    monkeypatch.chdir(sub)
    result = pytester.runpytest("-p", "no:cacheprovider", str(pytester.path))
    result.assert_outcomes(passed=7)
    page = (pytester.path / "reports" / "tb.html").read_text(encoding="utf-8")
    assert "<b>$0.037944</b>" in page
    assert not (sub / "reports").exists()


def test_cli_report_html(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    """If ``tokenbudget report --html`` reads the example's cassettes, then the page has their numbers."""
    shutil.copytree(EXAMPLE_CASSETTES, pytester.path / "cassettes" / "test_support_agent")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pytester.path)
        assert cli_main(["report", "cassettes", "--html", "r.html"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "wrote r.html"
    page = (pytester.path / "r.html").read_text(encoding="utf-8")
    refund = _section(page, "cassettes/test_support_agent/test_refund_ticket.yaml")
    kpis = dict(re.findall(r"<span class=muted>([^<]+)</span><b>([^<]+)</b>", refund))
    assert kpis == {
        "cost": "$0.038733",
        "turns": "4",
        "input": "33",
        "cache write": "10,067",
        "cache read": "10,191",
        "output": "68",
        "hit rate": "50.2%",
    }
    assert "<td>0</td><td class=t>claude-opus-5</td>" in refund
    assert "<td>33</td><td>4,845</td><td>0</td><td>20</td><td>$0.030946</td><td>$0.030946</td>" in refund
    assert "<b>$0.044963</b>" in page
    # --json with --html: the JSON stays alone on stdout.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pytester.path)
        assert cli_main(["report", "cassettes", "--json", "--html", "again.html"]) == 0
    captured = capsys.readouterr()
    assert captured.out.lstrip().startswith("{")
    assert captured.err.strip() == "wrote again.html"
    assert (pytester.path / "again.html").read_text(encoding="utf-8") == page
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pytester.path)
        (pytester.path / "afile").write_text("x")
        assert cli_main(["report", "cassettes", "--html", "afile/r.html"]) == 2
    assert "tokenbudget: cannot write the HTML report afile/r.html" in capsys.readouterr().err


def _example_entry(name: str = "test_refund_ticket") -> TestEntry:
    path = EXAMPLE_CASSETTES / f"{name}.yaml"
    ledger = turns_from(load_cassette(path).interactions, source=str(path))
    return build_entry(name, str(path), ledger, Pricer())


def _levers() -> tuple[Lever, ...]:
    return (
        Lever(
            LeverKind.CACHING,
            Decimal("0.012500"),
            4_845,
            "the system prompt is the same on every turn",
            "put cache_control on the last system block",
            path="system[0]",
            turns=(1, 2, 3),
        ),
        Lever(LeverKind.MODEL_TIER, Decimal("0.020000"), 0, "turn 0 only classifies", "ask claude-haiku-4-5"),
    )


def test_levers_render_per_test_and_as_suite_totals() -> None:
    """If tests carry levers, then each test gets its lever table and the suite sums them per lever,
    in the levers' order, saying they are measured one on top of the other."""
    refund = replace(_example_entry(), levers=_levers())
    streamed = replace(
        _example_entry("test_streamed_answer"),
        levers=(Lever(LeverKind.CACHING, Decimal("0.001000"), 100, "a", "b"),),
    )
    plain = _example_entry("test_nightly_summaries")
    page = render_html(build_report([refund, streamed, plain], Pricer().source.as_dict()))
    suite = page[page.index("What each lever would save") : page.index("Per test")]
    rows = re.findall(r"<tr><td class=\"t\">(\w+)</td><td>([^<]+)</td><td>([^<]+)</td><td>(\d+)</td></tr>", suite)
    assert rows == [("caching", "$0.013500", "4,945", "2"), ("model_tier", "$0.020000", "0", "1")]
    assert "<td><b>$0.033500</b></td><td><b>4,945</b></td>" in suite
    assert "each measured on top of the ones before it" in suite
    section = _section(page, "test_refund_ticket")
    assert (
        '<tr><td class="t">caching</td><td>$0.012500</td><td>4,845</td>'
        "<td class=w>the system prompt is the same on every turn</td>"
        "<td class=w>put cache_control on the last system block</td>"
        '<td class="t mono">system[0]</td><td class=w>1, 2, 3</td></tr>'
    ) in section
    assert "<h4>Levers</h4>" not in _section(page, "test_nightly_summaries")


def test_no_lever_table_without_levers() -> None:
    """If no test has levers, then the page has no lever table at all."""
    page = render_html(build_report([_example_entry()], Pricer().source.as_dict()))
    assert "Levers" not in page
    assert "What each lever would save" not in page


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;"\''


def hostile_report() -> Report:
    """A report whose test id, model and cache reason are markup (cassette content is untrusted)."""
    entry = _example_entry()
    turns = []
    for item in entry.turns:
        turn = replace(item.turn, model=item.turn.model + HOSTILE)
        cache = replace(item.cache, reason=HOSTILE) if item.cache is not None else None
        turns.append(TurnEntry(turn, item.cost, cache))
    lever = Lever(LeverKind.CONTEXT, Decimal("0.001"), 10, HOSTILE, HOSTILE, path=HOSTILE)
    hostile = replace(entry, id=f"test_x[{HOSTILE}]", cassette=HOSTILE, turns=tuple(turns), levers=(lever,))
    return build_report([hostile], {"library": HOSTILE, "version": "</style>"})


def test_untrusted_text_is_escaped() -> None:
    """If a test id, model, cache reason or lever text is markup, then the page shows it as text."""
    page = render_html(hostile_report())
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;&amp;amp;&quot;&#x27;"
    assert page.count(escaped) >= 8
    assert "<img" not in page
    assert "alert(1)>" not in page
    assert page.count("<script>") == 1  # the page's own
    assert page.count("</style>") == 1
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp is not None
    assert csp.group(1).startswith("default-src 'none'; style-src 'sha256-")


def test_page_loads_nothing() -> None:
    """If the page is written, then it references no external resource: no URL, no src, no link."""
    page = render_html(build_report([_example_entry()], Pricer().source.as_dict()))
    assert re.findall(r"(?:https?:)?//[\w.-]+\.\w", page) == []
    assert " src=" not in page
    assert "<link" not in page
    assert "@import" not in page
    assert "url(" not in page


def _long_entry(turns: int) -> TestEntry:
    """A priced ``turns``-turn test whose input grows every turn, with a cache verdict per turn."""
    pricer = Pricer()
    items = []
    for k in range(turns):
        usage = {
            "input_tokens": 40 + k % 7,
            "cache_creation_input_tokens": 1_200 + 3 * k if k % 50 == 0 else 1_100,
            "cache_read_input_tokens": 0 if k == 0 else 8_000 + 1_150 * k,
            "output_tokens": 90 + (k * 37) % 400,
        }
        turn = Turn(k, k, "messages", "claude-sonnet-4-6", "claude-sonnet-4-6", False, usage)
        verdict = Verdict.WRITE if k == 0 else (Verdict.EXPIRED if k % 50 == 0 else Verdict.HIT)
        cache = TurnCache(k, verdict, f"read {8_000 + 1_150 * k:,} cached tokens", (), None, None, False, 0, 0)
        items.append(TurnEntry(turn, pricer.price(turn), cache))
    ledger = Ledger([item.turn for item in items])
    total = sum((item.cost.cost_usd for item in items if item.cost), Decimal(0))
    return TestEntry("test_long.py::test_400_turns", None, tuple(items), ledger.totals(), total)


def test_400_turn_test_stays_small_and_fast() -> None:
    """If a test has 400 turns, then its page stays under 200 KB and renders in well under a second."""
    report = build_report([_long_entry(400)], {"library": "genai-prices", "version": "x"})
    started = time.perf_counter()
    page = render_html(report)
    elapsed = time.perf_counter() - started
    size = len(page.encode("utf-8"))
    assert size < 200_000, size
    assert elapsed < 1.0, elapsed  # about 0.03 s on the development machine
    section = _section(page, "test_long.py::test_400_turns")
    assert 'data-n="400"' in section
    assert section.count("<tr><td>") == 400
    # One path per token kind and per verdict, not one element per turn.
    assert section.count('<path class="s-') == 4
    assert section.count('<path class="verdicts"') == 3
    assert "<details><summary>400 turn(s)" in section  # long tables start folded


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 0], ("▁▁", 1)),
        ([1, 2, 4, 8], ("▂▃▅█", 1)),  # ceil(7 * v / 8): 1, 2, 4, 7 of 0..7; only 0 gets the lowest mark
        ([10] * 3, ("███", 1)),
        # 80 marks of 5 turns each (max 5k); mark k is ceil(7 * 5k / 400) = ceil(7k / 80)
        (list(range(1, 401)), ("▂" * 11 + "▃" * 11 + "▄" * 12 + "▅" * 11 + "▆" * 12 + "▇" * 11 + "█" * 12, 5)),
    ],
)
def test_sparkline(values: list[int], expected: tuple[str, int]) -> None:
    """If values are given, then each gets a mark scaled from 0 to the largest; past 80 values,
    each mark stands for several (their maximum)."""
    assert sparkline(values) == expected
    assert len(sparkline(values)[0]) <= 80


def test_verbose_terminal_report_has_an_input_sparkline(pytester: pytest.Pytester) -> None:
    """If ``-v`` is given, then each test's per-turn table is headed by a sparkline of its input tokens."""
    for name in ("support_agent.py", "test_support_agent.py", "conftest.py"):
        shutil.copy(REPO / "examples" / name, pytester.path / name)
    shutil.copytree(EXAMPLE_CASSETTES, pytester.path / "cassettes" / "test_support_agent")
    result = pytester.runpytest("-v", "--token-budget", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "test_support_agent.py::test_refund_ticket  (cassettes/test_support_agent/test_refund_ticket.yaml)",
            "  input tokens per turn: ████  (4,878 to 5,222)",
            "  turn  model * cost USD",
            "test_support_agent.py::test_nightly_summaries  (*)",
            "  input tokens per turn: █▇▇  (26 to 34)",
        ]
    )
