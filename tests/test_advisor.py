"""The savings advisor (issue 14) end to end: the example suite in ``examples/levers`` names each
lever's problem with a saving within 1% of a value computed here by hand from the prices; fixing
each problem in a copy and re-recording shows, in ``tokenbudget diff``, a saving within 5% of what
the advisor predicted.

Hand values use the emulator's documented token counts (``ceil(characters / 4)`` per block of
canonical JSON, see ``pytest_tokenbudget/emulator/_tokens.py``) and the prices below.
"""

from __future__ import annotations

import json
import math
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import NETWORK_GUARD, read_json

from pytest_tokenbudget.cli import main as cli_main
from pytest_tokenbudget.reports import validate_report

pytestmark = pytest.mark.usefixtures("no_api_key")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "levers"
MILLION = Decimal(1_000_000)
# USD per million tokens (input, output), genai-prices 0.2.3 (Anthropic's price list, Nov 2026).
SONNET_4_5 = (Decimal(3), Decimal(15))
OPUS_5 = (Decimal(5), Decimal(25))
HAIKU_5_5 = (Decimal("0.10"), Decimal("0.50"))
WRITE_5M, READ = Decimal("1.25"), Decimal("0.1")  # cache multipliers on the input price
BATCH = Decimal("0.5")  # batch: half of every token price
STUB = "[elided: no longer needed]"


def _tokens(block: Any) -> int:
    """The emulator's count for one block: ceil(len(compact JSON) / 4)."""
    return math.ceil(len(json.dumps(block, separators=(",", ":"), ensure_ascii=False)) / 4)


def _copy_example(pytester: pytest.Pytester) -> None:
    for name in ("levers_agent.py", "test_levers.py", "pytest.ini"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    shutil.copytree(EXAMPLE / "cassettes", pytester.path / "cassettes")
    (pytester.path / "conftest.py").write_text((EXAMPLE / "conftest.py").read_text() + NETWORK_GUARD)


def _levers(document: dict[str, Any], test: str) -> dict[str, dict[str, Any]]:
    entry = next(t for t in document["tests"] if t["id"] == f"test_levers.py::{test}")
    return {lever["lever"]: lever for lever in entry["levers"]}


def _close(got: float, want: Decimal, tolerance: str) -> bool:
    return abs(Decimal(str(got)) - want) <= Decimal(tolerance) * want


def _agent() -> Any:
    """The example's agent module (for its prompt texts)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_levers_agent_texts", EXAMPLE / "levers_agent.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _handbook_saving() -> Decimal:
    """Five calls re-send the handbook uncached; with a breakpoint one writes it and four read it."""
    handbook = _tokens({"type": "text", "text": _agent().HANDBOOK})
    assert handbook == 6007  # 24,000 characters
    rate = SONNET_4_5[0] / MILLION
    return handbook * rate * (5 - WRITE_5M - 4 * READ)


def test_report_names_each_problem_with_the_hand_computed_saving(pytester: pytest.Pytester, monkeypatch):
    """If the example suite replays, then its JSON report names one problem per test, each lever's
    saving within 1% of the hand value, with the concrete change and its JSON path."""
    _copy_example(pytester)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    result = pytester.runpytest(
        "-v",
        "--token-budget",
        "--token-budget-json=report.json",
        "--token-budget-md=report.md",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=4)
    document = read_json(pytester.path / "report.json")
    validate_report(document)

    caching = _levers(document, "test_handbook_answers")["caching"]
    assert _close(caching["saving_usd"], _handbook_saving(), "0.01")
    assert caching["path"] == "system[0]"
    assert caching["change"] == 'add "cache_control": {"type": "ephemeral"} to system[0]'
    assert caching["assumption"].startswith("the static prefix up to system[0] is re-sent uncached in 5 turns")

    eval_loop = next(t for t in document["tests"] if t["id"] == "test_levers.py::test_eval_loop")
    batch = _levers(document, "test_eval_loop")["batch"]
    assert _close(batch["saving_usd"], Decimal(str(eval_loop["totals"]["cost_usd"])) * (1 - BATCH), "0.01")
    assert batch["turns"] == list(range(8))

    triage = next(t for t in document["tests"] if t["id"] == "test_levers.py::test_triage")
    labels = [turn["usage"] for turn in triage["turns"][1:]]
    hand = sum(
        (
            u["input_tokens"] * (OPUS_5[0] - HAIKU_5_5[0]) / MILLION
            + u["output_tokens"] * (OPUS_5[1] - HAIKU_5_5[1]) / MILLION
            for u in labels
        ),
        Decimal(0),
    )
    tier = _levers(document, "test_triage")["model_tier"]
    assert _close(tier["saving_usd"], hand, "0.01")
    assert tier["turns"] == [1, 2, 3, 4]
    assert "classification against a fixed label set (refund, shipping, account, other)" in tier["assumption"]

    # The id's length cancels out (up to a token of rounding per turn).
    log_block = _tokens({"type": "tool_result", "tool_use_id": "toolu_x", "content": _agent().DEPLOY_LOG})
    stub_block = _tokens({"type": "tool_result", "tool_use_id": "toolu_x", "content": STUB})
    hand = 10 * (log_block - stub_block) * SONNET_4_5[0] / MILLION
    context = _levers(document, "test_deploy_investigation")["context"]
    assert _close(context["saving_usd"], hand, "0.01")
    assert context["path"] == "messages[2].content[0]"
    assert context["turns"] == list(range(2, 12))
    assert "re-billed in 10 later turn(s)" in context["assumption"]

    suite = {lever["lever"]: lever for lever in document["totals"]["levers"]}
    assert list(suite) == ["caching", "batch", "model_tier", "context"]
    assert suite["model_tier"]["tests"] == 3  # the eval loop and the log's tool call look cheap too
    result.stdout.fnmatch_lines(
        [
            "what would save money (levers applied in order caching -> batch -> model_tier -> context, *",
            "  test_levers.py::test_handbook_answers:",
        ]
    )
    assert "    caching: save $0.060380 (62% of $0.0969) at system[0]" in result.stdout.lines
    assert '      change: add "cache_control": {"type": "ephemeral"} to system[0]' in result.stdout.lines  # -v
    markdown = (pytester.path / "report.md").read_text()
    assert "### What would save money" in markdown
    assert "| caching | $0.060380 | 24,032 | 1 |" in markdown


def test_fixing_each_problem_shows_the_predicted_saving_in_diff(pytester: pytest.Pytester, monkeypatch, capsys):
    """If each problem is fixed in a copy of the example and the suite re-recorded, then
    ``tokenbudget diff`` shows each test's cost fall by the lever's predicted saving (within 5%),
    marks the lever pulled, and exits 0 (nothing costs more)."""
    _copy_example(pytester)
    pytester.runpytest("--token-budget-json=old.json", "-p", "no:cacheprovider").assert_outcomes(passed=4)
    agent = pytester.path / "levers_agent.py"
    source = agent.read_text()
    for old, new in (
        ("CACHE_HANDBOOK = False", "CACHE_HANDBOOK = True"),
        ("USE_BATCHES = False", "USE_BATCHES = True"),
        ('CLASSIFY_MODEL = "claude-opus-5"', 'CLASSIFY_MODEL = "claude-haiku-5-5"'),
        ("ELIDE_LOG = False", "ELIDE_LOG = True"),
    ):
        assert old in source
        source = source.replace(old, new)
    agent.write_text(source)
    pytester.runpytest(
        "--token-budget-record=all", "--token-budget-json=new.json", "-p", "no:cacheprovider"
    ).assert_outcomes(passed=4)

    monkeypatch.chdir(pytester.path)
    capsys.readouterr()
    assert cli_main(["diff", "old.json", "new.json", "--json", "--md", "diff.md"]) == 0
    document = json.loads(capsys.readouterr().out)
    by_test = {t["id"].split("::")[1]: t for t in document["tests"]}
    for test, lever in (
        ("test_handbook_answers", "caching"),
        ("test_eval_loop", "batch"),
        ("test_triage", "model_tier"),
        ("test_deploy_investigation", "context"),
    ):
        row = next(r for r in by_test[test]["levers"] if r["lever"] == lever)
        predicted = Decimal(str(row["old_saving_usd"]))
        bought = -Decimal(str(by_test[test]["cost_delta_usd"]))
        assert abs(bought - predicted) <= Decimal("0.05") * predicted, (test, bought, predicted)
        assert row["pulled"] is True
        assert row["new_saving_usd"] == 0
    assert by_test["test_handbook_answers"]["cache_hit_rate_delta"] > 0.79
    assert document["costs_more"] == []
    assert "| `test_levers.py::test_handbook_answers` |" in (pytester.path / "diff.md").read_text()

    # Swapped, the same files say everything costs more: exit 1, for scripts.
    assert cli_main(["diff", "new.json", "old.json"]) == 1
    text = capsys.readouterr().out
    assert "costs more in NEW: test_levers.py::test_deploy_investigation, " in text


def test_diff_reads_baselines_and_refuses_other_files(tmp_path, monkeypatch, capsys):
    """If OLD is a baseline, then the diff compares totals (no levers); a file that is neither
    report nor baseline exits 2 with the file named."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "tokenbudget-baseline.json", tmp_path / "baseline.json")
    assert cli_main(["diff", "baseline.json", "baseline.json", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["old"]["kind"] == "baseline"
    assert all(t["cost_delta_usd"] == 0 and t["levers"] == [] for t in document["tests"])
    (tmp_path / "bad.json").write_text('{"hello": 1}')
    assert cli_main(["diff", "baseline.json", "bad.json"]) == 2
    err = capsys.readouterr().err
    assert "not a report or a baseline" in err
    assert "bad.json" in err


CACHE_PROBLEMS = """
import anthropic
import pytest
from pytest_tokenbudget.emulator import Reply

STATIC = "Policy: refunds within 14 days, keep the receipt. " * 480  # 24,000 characters
ANSWER = "Refunds take up to 14 days; keep the receipt and the order number at hand. " * 2


def _ask(client, system, n):
    return client.messages.create(
        model="claude-sonnet-4-5", max_tokens=200, system=system,
        messages=[{"role": "user", "content": f"Question {n}: how long do refunds take?"}],
    )


def test_breakpoint_after_volatile(anthropic_emulator):
    anthropic_emulator.script(*[Reply.text(ANSWER) for _ in range(4)])
    client = anthropic.Anthropic()
    for n in range(4):
        system = [
            {"type": "text", "text": STATIC},
            {"type": "text", "text": f"Request id {n:04d}", "cache_control": {"type": "ephemeral"}},
        ]
        _ask(client, system, n)


def test_gaps_over_five_minutes(anthropic_emulator):
    anthropic_emulator.script(*[Reply.text(ANSWER) for _ in range(4)])
    client = anthropic.Anthropic()
    system = [{"type": "text", "text": STATIC, "cache_control": {"type": "ephemeral"}}]
    for n in range(4):
        _ask(client, system, n)
        anthropic_emulator.clock.advance(minutes=10)


def test_one_hour_not_needed(anthropic_emulator):
    anthropic_emulator.script(*[Reply.text(ANSWER) for _ in range(4)])
    client = anthropic.Anthropic()
    system = [{"type": "text", "text": STATIC, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    for n in range(4):
        _ask(client, system, n)
"""


def test_caching_problems_with_breakpoints(pytester: pytest.Pytester, monkeypatch, capsys):
    """If a breakpoint sits after a volatile block, or its TTL does not fit the recorded gaps,
    then ``tokenbudget advise`` names the fix and its saving at Sonnet 4.5's prices, by hand."""
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_cache_problems=CACHE_PROBLEMS)
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=3)
    monkeypatch.chdir(pytester.path)
    capsys.readouterr()
    assert cli_main(["advise", "cassettes", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    validate_report(document)
    levers = {Path(t["id"]).stem: {lever["lever"]: lever for lever in t["levers"]} for t in document["tests"]}
    static = _tokens({"type": "text", "text": "Policy: refunds within 14 days, keep the receipt. " * 480})
    rate = SONNET_4_5[0] / MILLION

    volatile = levers["test_breakpoint_after_volatile"]["caching"]
    assert volatile["path"] == "system[0]"
    assert volatile["change"] == (
        'add "cache_control": {"type": "ephemeral"} to system[0] and remove it from system[1] (never read)'
    )
    # Recorded: four writes of static + id block. Advised: one write of static, three reads.
    id_block = _tokens({"type": "text", "text": "Request id 0000"})
    recorded = 4 * (static + id_block) * WRITE_5M * rate
    advised = (static * WRITE_5M + 3 * static * READ + 4 * id_block) * rate
    assert _close(volatile["saving_usd"], recorded - advised, "0.01")

    gaps = levers["test_gaps_over_five_minutes"]["caching"]
    assert gaps["change"] == "set the ttl of the breakpoint(s) at system[0] to 1h"
    # Recorded: four 5m writes (each expired). Advised: one 1h write (2x), three reads.
    assert _close(gaps["saving_usd"], (4 * WRITE_5M - 2 - 3 * READ) * static * rate, "0.01")

    one_hour = levers["test_one_hour_not_needed"]["caching"]
    assert one_hour["change"] == "set the ttl of the breakpoint(s) at system[0] to 5m"
    assert _close(one_hour["saving_usd"], (2 - WRITE_5M) * static * rate, "0.01")
