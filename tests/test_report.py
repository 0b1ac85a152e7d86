"""End to end: ``pytest --token-budget`` and ``tokenbudget report`` on the recorded example agent.

The example agent plans with Opus 5, works the ticket with Haiku 4.5 and summarises through a
batch; its cassettes ship in ``cassettes/test_support_agent/``. Every number of the JSON report is
checked against prices computed here by hand from the recorded usage.
"""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import read_json

from pytest_tokenbudget.cli import main as cli_main
from pytest_tokenbudget.reports import validate_report

pytestmark = pytest.mark.usefixtures("no_api_key")

REPO = Path(__file__).resolve().parent.parent

# USD per million tokens: (input, 5m cache write, 1h cache write, cache read, output), from the
# Anthropic price list (docs pricing) as of November 2026; batch halves every token price.
RATES = {
    "claude-opus-5": ("5", "6.25", "10", "0.5", "25"),
    "claude-haiku-4-5": ("1", "1.25", "2", "0.1", "5"),
}


def _hand_price(model: str, usage: dict[str, Any], batch: bool) -> dict[str, Decimal]:
    rate_in, rate_5m, rate_1h, rate_read, rate_out = (Decimal(r) for r in RATES[model])
    factor = Decimal("0.5") if batch else Decimal(1)
    one_hour = usage.get("cache_creation", {}).get("ephemeral_1h_input_tokens", 0)
    five_min = usage["cache_creation_input_tokens"] - one_hour
    million = Decimal(1_000_000)
    return {
        "input": usage["input_tokens"] * rate_in * factor / million,
        "cache_write_5m": five_min * rate_5m * factor / million,
        "cache_write_1h": one_hour * rate_1h * factor / million,
        "cache_read": usage["cache_read_input_tokens"] * rate_read * factor / million,
        "output": usage["output_tokens"] * rate_out * factor / million,
        "web_search": Decimal(0),
    }


def _example_project(pytester: pytest.Pytester) -> None:
    for name in ("support_agent.py", "test_support_agent.py", "conftest.py"):
        shutil.copy(REPO / "examples" / name, pytester.path / name)
    shutil.copytree(REPO / "cassettes" / "test_support_agent", pytester.path / "cassettes" / "test_support_agent")


def _check_every_number(document: dict[str, Any]) -> Decimal:
    """Assert each turn's cost, breakdown and each test's totals; return the grand total."""
    grand = Decimal(0)
    for test in document["tests"]:
        totals = {
            k: 0 for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
        }
        test_cost = Decimal(0)
        for turn in test["turns"]:
            expected = _hand_price(turn["model"], turn["usage"], turn["endpoint"] == "batch")
            breakdown = {k: Decimal(str(v)) for k, v in turn["cost_breakdown"].items()}
            assert breakdown == expected, (test["id"], turn["index"])
            assert Decimal(str(turn["cost_usd"])) == sum(expected.values())
            test_cost += sum(expected.values())
            for key in totals:
                totals[key] += turn["usage"][key]
        for key, value in totals.items():
            assert test["totals"][key] == value
        assert Decimal(str(test["totals"]["cost_usd"])) == test_cost
        total_input = sum(totals[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        assert test["totals"]["cache_hit_rate"] == round(totals["cache_read_input_tokens"] / total_input, 6)
        grand += test_cost
    assert Decimal(str(document["totals"]["cost_usd"])) == grand
    return grand


def test_json_report_matches_hand_computed_prices(pytester: pytest.Pytester) -> None:
    """Every cost in the JSON report of a multi-model agent equals the hand-computed price of its usage."""
    _example_project(pytester)
    result = pytester.runpytest("--token-budget", "--token-budget-json=report.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    document = read_json(pytester.path / "report.json")
    validate_report(document)
    assert [t["id"] for t in document["tests"]] == [
        "test_support_agent.py::test_refund_ticket",
        "test_support_agent.py::test_streamed_answer",
        "test_support_agent.py::test_nightly_summaries",
    ]
    assert [(t["model"], t["endpoint"], t["stream"]) for t in document["tests"][0]["turns"]] == [
        ("claude-opus-5", "messages", False)
    ] + [("claude-haiku-4-5", "messages", False)] * 3
    assert [t["endpoint"] for t in document["tests"][2]["turns"]] == ["batch"] * 3
    assert document["tests"][1]["turns"][0]["stream"] is True
    assert _check_every_number(document) == Decimal("0.04496260")
    assert document["price_source"]["library"] == "genai-prices"
    assert document["errors"] == []
    result.stdout.fnmatch_lines(
        [
            "*= token budget =*",
            "test * turns  input  cache write  cache read  output  hit rate   cost USD",
            "test_support_agent.py::test_refund_ticket * 4     33       10,067      10,191      68     50.2%  $0.038733",
            "total * 8    135       14,912      10,191      99     40.4%  $0.044963",
            "prices: genai-prices *, today's prices (*)",
        ]
    )


def test_cli_gives_the_same_json(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    """``tokenbudget report --json`` on the same cassettes gives the same turns, totals and costs."""
    _example_project(pytester)
    pytester.runpytest("--token-budget-json=report.json", "-p", "no:cacheprovider").assert_outcomes(passed=3)
    from_pytest = read_json(pytester.path / "report.json")
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pytester.path)
        assert cli_main(["report", "cassettes", "--json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)
    validate_report(from_cli)
    by_cassette = {t["cassette"]: t for t in from_pytest["tests"]}
    assert sorted(by_cassette) == sorted(t["id"] for t in from_cli["tests"])
    for test in from_cli["tests"]:
        other = by_cassette[test["id"]]
        assert test["totals"] == other["totals"]
        strip = [{k: v for k, v in turn.items() if k != "recorded_at"} for turn in test["turns"]]
        assert strip == [{k: v for k, v in turn.items() if k != "recorded_at"} for turn in other["turns"]]
    assert from_cli["totals"] == from_pytest["totals"]


def test_xdist_gives_the_same_totals(pytester: pytest.Pytester) -> None:
    """Under ``-n 2`` one report comes out, with the totals of a serial run."""
    _example_project(pytester)
    pytester.runpytest("--token-budget-json=serial.json", "-p", "no:cacheprovider").assert_outcomes(passed=3)
    parallel = pytester.runpytest_subprocess(
        "-n", "2", "--token-budget", "--token-budget-json=parallel.json", "-p", "no:cacheprovider"
    )
    parallel.assert_outcomes(passed=3)
    assert parallel.stdout.str().count("= token budget =") == 1
    serial_doc, parallel_doc = read_json(pytester.path / "serial.json"), read_json(pytester.path / "parallel.json")
    assert parallel_doc["totals"] == serial_doc["totals"]
    assert [t["id"] for t in parallel_doc["tests"]] == [t["id"] for t in serial_doc["tests"]]


def test_verbose_adds_per_turn_tables_and_markdown_goes_to_the_job_summary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-v`` prints each test's turns; Markdown goes to a file and to GITHUB_STEP_SUMMARY."""
    _example_project(pytester)
    summary = pytester.path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = pytester.runpytest("-v", "--token-budget", "--token-budget-md=report.md", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "test_support_agent.py::test_refund_ticket  (cassettes/test_support_agent/test_refund_ticket.yaml)",
            "  turn  model             endpoint  cache  input  cache write  cache read  output   cost USD",
            "  0     claude-opus-5     messages  write     33        4,845           0      20  $0.030946",
            "  1     claude-haiku-4-5  messages  write      0        5,041           0      15  $0.006376",
            "  2     claude-haiku-4-5  messages  hit        0          109       5,041      15  $0.000715",
        ]
    )
    markdown = (pytester.path / "report.md").read_text()
    assert (
        "| `test_support_agent.py::test_refund_ticket` | 4 | 33 | 10,067 | 10,191 | 68 | 50.2% | $0.038733 |"
        in markdown
    )
    assert summary.read_text() == "earlier step\n" + markdown


def test_junit_xml_carries_each_tests_totals(pytester: pytest.Pytester) -> None:
    """Each test's totals are JUnit XML properties."""
    _example_project(pytester)
    pytester.runpytest("--token-budget", "--junitxml=junit.xml", "-p", "no:cacheprovider").assert_outcomes(passed=3)
    xml = (pytester.path / "junit.xml").read_text()
    assert '<property name="tokenbudget_cache_read_input_tokens" value="10191" />' in xml
    assert '<property name="tokenbudget_cost_usd" value="0.03873285" />' in xml


def test_quiet_without_turns(pytester: pytest.Pytester) -> None:
    """A session in which no test talked to Claude prints no report."""
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest("--token-budget", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "token budget" not in result.stdout.str()


def test_unknown_model_is_an_error_not_zero(pytester: pytest.Pytester) -> None:
    """A turn of a model with no price fails the gate with the price error; a switch lets it pass as n/a."""
    _example_project(pytester)
    cassette = pytester.path / "cassettes/test_support_agent/test_streamed_answer.yaml"
    cassette.write_text(cassette.read_text().replace('"model":"claude-haiku-4-5"', '"model":"claude-secret-9"'))
    failed = pytester.runpytest("--token-budget", "-p", "no:cacheprovider")
    failed.assert_outcomes(passed=2, failed=1)
    assert failed.ret == pytest.ExitCode.TESTS_FAILED
    failed.stdout.fnmatch_lines(
        [
            "*tokenbudget: turn 0 cannot be priced: no price for model 'claude-secret-9'",
            "*test: test_support_agent.py::test_streamed_answer",
            "*fix:  add 'claude-secret-9' to a price override file, e.g. tokenbudget-prices.yaml (format above), and "
            "pass it: pytest --token-budget-prices tokenbudget-prices.yaml, or set token_budget_prices = "
            "tokenbudget-prices.yaml in your ini; or, to let unpriced models pass the gate, set "
            "token_budget_allow_unpriced = true",
        ]
    )
    assert "Traceback" not in failed.stdout.str()

    result = pytester.runpytest(
        "--token-budget",
        "--token-budget-json=report.json",
        "-o",
        "token_budget_allow_unpriced=true",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=3)
    document = read_json(pytester.path / "report.json")
    streamed = next(t for t in document["tests"] if t["id"].endswith("test_streamed_answer"))
    assert streamed["totals"]["cost_usd"] is None
    assert streamed["turns"][0]["cost_usd"] is None
    assert "claude-secret-9" in document["errors"][0]["reason"]
    assert "--token-budget-prices" in document["errors"][0]["reason"]
    result.stdout.fnmatch_lines(["*test_streamed_answer * n/a", "1 problem(s):", "*claude-secret-9*"])


def test_price_override_file(pytester: pytest.Pytester) -> None:
    """A price file overrides a model's rates; a typo in it is a usage error naming the key and line."""
    _example_project(pytester)
    (pytester.path / "prices.yaml").write_text("models:\n  claude-opus-5:\n    input_mtok: 1\n    output_mtok: 1\n")
    result = pytester.runpytest(
        "--token-budget", "--token-budget-json=r.json", "--token-budget-prices=prices.yaml", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=3)
    document = read_json(pytester.path / "r.json")
    plan = document["tests"][0]["turns"][0]
    # 33 input at 1, 4845 5m writes at 1.25 (default 1.25x input), 20 output at 1, per million.
    assert Decimal(str(plan["cost_usd"])) == Decimal("0.00610925")
    assert document["price_source"]["override_files"] == [str(pytester.path / "prices.yaml")]
    (pytester.path / "prices.yaml").write_text("models:\n  claude-opus-5:\n    input_mtok: 1\n    outptu_mtok: 1\n")
    bad = pytester.runpytest("--token-budget", "--token-budget-prices=prices.yaml", "-p", "no:cacheprovider")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "outptu_mtok" in bad.stderr.str()
    assert "line 4" in bad.stderr.str()
    assert "Traceback" not in bad.stderr.str()


def test_cli_lists_unreadable_cassettes_and_reports_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cassette the CLI cannot read is listed with its reason; the others are still reported (exit 1)."""
    shutil.copytree(REPO / "cassettes" / "test_support_agent", tmp_path / "c")
    (tmp_path / "c" / "broken.yaml").write_text("interactions: [\n")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["report", "c"]) == 1
    out = capsys.readouterr().out
    assert "test_refund_ticket.yaml          4     33       10,067      10,191      68     50.2%  $0.038733" in out
    assert "1 problem(s):" in out
    assert "tokenbudget: cassette cannot be read" in out
    assert "file: c/broken.yaml, line 2" in out
