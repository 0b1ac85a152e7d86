"""``tokenbudget gate BASELINE REPORT``: the gate of ``pytest --token-budget`` on two files, without pytester.

The cases mirror tests/test_gate.py (unchanged, a prefix edit, an edit after the breakpoint, a
25% cost rise at the 10% threshold, a corrupted baseline) plus the gate's other lines; the runner
test (tests/test_github_runner.py) checks that on a real run's report it says what pytest said.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pytest_tokenbudget.baseline import BaselineEntry, CachedPoint, CachedPrefix, write_baseline
from pytest_tokenbudget.cli import main
from pytest_tokenbudget.reports import validate_report

TEST = "tests/test_refund.py::test_refund"
MODEL = "claude-sonnet-4-6"
SYSTEM = CachedPoint("system[0]", "a" * 32, 1447)


def _entry(
    cost: str = "0.006969",
    *,
    reads: int = 2894,
    writes: int = 1447,
    uncached: int = 60,
    output: int = 81,
    fingerprint: str = "a" * 32,
    estimated: bool = False,
) -> BaselineEntry:
    point = CachedPoint(SYSTEM.path, fingerprint, SYSTEM.tokens)
    total = uncached + writes + reads
    return BaselineEntry(
        3,
        uncached,
        writes,
        reads,
        output,
        Decimal(cost),
        reads / total,
        (CachedPrefix(MODEL, (point,)),) * 3,
        estimated,
    )


def _turn(index: int) -> dict[str, Any]:
    usage = {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 27}
    return {
        "index": index,
        "model": MODEL,
        "endpoint": "messages",
        "stream": False,
        "usage": usage,
        "cost_usd": 0.001,
        "cost_breakdown": {},
    }


def _test(entry: BaselineEntry, test_id: str = TEST, **extra: Any) -> dict[str, Any]:
    totals = {
        "turns": entry.turns,
        "input_tokens": entry.uncached_input_tokens,
        "cache_creation_input_tokens": entry.cache_creation_input_tokens,
        "cache_read_input_tokens": entry.cache_read_input_tokens,
        "output_tokens": entry.output_tokens,
        "total_input_tokens": entry.total_input_tokens,
        "cost_usd": float(entry.cost_usd) if entry.cost_usd is not None else None,
        "cache_hit_rate": round(entry.cache_hit_rate, 6),
    }
    return {
        "id": test_id,
        "cassette": "cassettes/test_refund/test_refund.yaml",
        "turns": [_turn(i) for i in range(entry.turns)],
        "totals": totals,
        "baseline": entry.as_json(),
        **extra,
    }


def _files(tmp_path: Path, base: dict[str, BaselineEntry] | None, tests: list[dict[str, Any]]) -> tuple[Path, Path]:
    baseline = tmp_path / "tokenbudget-baseline.json"
    if base is not None:
        write_baseline(baseline, base)
    document = {
        "schema_version": 1,
        "price_source": {
            "library": "genai-prices",
            "version": "0.2.3",
            "override_files": [],
            "timestamp_policy": "now",
        },
        "tests": tests,
        "errors": [],
    }
    validate_report(document)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(document))
    return baseline, report


def _gate(capsys: pytest.CaptureFixture[str], baseline: Path, report: Path, *extra: str) -> tuple[int, list[str]]:
    status = main(["gate", str(baseline), str(report), *extra])
    captured = capsys.readouterr()
    return status, (captured.out + captured.err).splitlines()


PREFIX_EDIT = {
    "turn": 0,
    "path": "system[0].text",
    "offset": 61,
    "before": '…"he shop. Check the order before refunding. You are the refund ag"…',
    "after": '…"he shop. Check the order before any refund. You are the refund a"…',
    "kind": "changed",
}


def test_an_unchanged_run_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The run equal to its baseline: exit 0, no line but the count."""
    status, lines = _gate(capsys, *_files(tmp_path, {TEST: _entry()}, [_test(_entry())]))
    assert status == 0
    assert lines == ["tokenbudget gate: 1 test(s) judged, all pass (exit 0)"]


def test_an_edit_before_the_breakpoint_fails_with_path_offset_and_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A changed cached prefix fails, naming the place (from the report's first change) and the rebuild cost."""
    now = _entry("0.007056", reads=0, writes=4341, fingerprint="b" * 32, estimated=True)
    status, lines = _gate(capsys, *_files(tmp_path, {TEST: _entry()}, [_test(now, first_change=PREFIX_EDIT)]))
    assert status == 1
    assert lines == [
        "gate:",
        f"  {TEST}: FAIL cache hit rate 0.0% (estimated) vs baseline 65.8% (-65.8 points): over the 5-point threshold",
        f'  {TEST}: FAIL turn 0: system[0].text, offset 61: …"he shop. Check the order before refunding. You are the '
        'refund ag"… -> …"he shop. Check the order before any refund. You are the refund a"…; the prefix cached at '
        "system[0] (1,447 tokens) is no longer sent",
        # 1,447 tokens written at $3.75/MTok instead of read at $0.30/MTok (Sonnet 4.6), as pytest says.
        f"  {TEST}: FAIL every live conversation rebuilds its cache: 1,447 cached tokens thrown away per run, about "
        "$0.004992 more per conversation",
        f"  {TEST}: cost $0.007056 (estimated) vs baseline $0.006969 (+$0.000087, +1.2%)",
        "",
        "tokenbudget gate: 1 test(s) judged, 1 fail (exit 1)",
    ]


def test_an_edit_after_the_breakpoint_passes_naming_the_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same fingerprints, a slightly higher estimated cost: a pass, with the changed request as a note."""
    change = dict(PREFIX_EDIT, path="messages[0].content", offset=20, before='"42?"', after='"42, please?"')
    now = _entry("0.006992", uncached=66, estimated=True)
    status, lines = _gate(capsys, *_files(tmp_path, {TEST: _entry()}, [_test(now, first_change=change)]))
    assert status == 0
    assert lines[:3] == [
        "gate:",
        f'  {TEST}: turn 0 changed since recording: messages[0].content, offset 20: "42?" -> "42, please?"',
        f"  {TEST}: cost $0.006992 (estimated) vs baseline $0.006969 (+$0.000023, +0.3%)",
    ]


def test_a_25_percent_cost_increase_fails_at_10_percent_and_passes_at_30(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default +10% threshold fails a +25% cost; --threshold raises it, as --token-budget-threshold does."""
    files = _files(tmp_path, {TEST: _entry("0.004000")}, [_test(_entry("0.005000"))])
    status, lines = _gate(capsys, *files)
    assert status == 1
    assert f"  {TEST}: FAIL cost $0.005000 vs baseline $0.004000 (+$0.001000, +25.0%): over the +10% threshold" in lines
    status, lines = _gate(capsys, *files, "--threshold", "max_cost_increase=0.3")
    assert status == 0
    assert f"  {TEST}: cost $0.005000 vs baseline $0.004000 (+$0.001000, +25.0%)" in lines


def test_the_budget_the_run_recorded_is_applied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A test's own thresholds (its marker, as the report recorded them) judge it; its limits too."""
    files = _files(
        tmp_path,
        {TEST: _entry("0.004000")},
        [_test(_entry("0.005000"), budget={"max_cost_increase": 0.5, "max_turns": 2})],
    )
    status, lines = _gate(capsys, *files)
    assert status == 1
    assert lines[1:3] == [
        f"  {TEST}: FAIL 3 turns, budget 2",
        f"  {TEST}: cost $0.005000 vs baseline $0.004000 (+$0.001000, +25.0%)",
    ]


def test_a_cheaper_run_says_the_baseline_is_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Getting cheaper past the threshold is reported, never passed silently."""
    status, lines = _gate(capsys, *_files(tmp_path, {TEST: _entry("0.004000")}, [_test(_entry("0.003000"))]))
    assert status == 0
    assert lines[1] == (
        f"  {TEST}: baseline stale: cost $0.003000 vs baseline $0.004000 (-$0.001000, -25.0%); "
        "accept the saving with --token-budget-update"
    )


def test_a_test_not_in_the_baseline_and_no_baseline_at_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A new test is named, not failed; without a baseline file the gate says how to create it."""
    other = "tests/test_refund.py::test_other"
    status, lines = _gate(capsys, *_files(tmp_path, {TEST: _entry()}, [_test(_entry()), _test(_entry(), other)]))
    assert status == 0
    assert f"  {other}: not in the baseline (add it with --token-budget-update)" in lines
    (tmp_path / "tokenbudget-baseline.json").unlink()
    status, lines = _gate(capsys, tmp_path / "tokenbudget-baseline.json", tmp_path / "report.json")
    assert status == 0
    assert (
        lines[1] == f"  no baseline at {tmp_path / 'tokenbudget-baseline.json'}: create it with --token-budget-update"
    )


def test_a_corrupted_baseline_or_report_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 4, as pytest's usage error, naming the file and the fix; no traceback."""
    baseline, report = _files(tmp_path, {TEST: _entry()}, [_test(_entry())])
    baseline.write_text('{"tests": ')
    status, lines = _gate(capsys, baseline, report)
    assert status == 4
    assert lines[0] == "tokenbudget: the token budget baseline cannot be read"
    assert any("fix:" in line and "--token-budget-update" in line for line in lines)
    write_baseline(baseline, {TEST: _entry()})
    report.write_text('{"schema_version": 1, "tests": []}')
    status, lines = _gate(capsys, baseline, report)
    assert status == 4
    assert lines[:3] == [
        "tokenbudget: the token budget report is invalid",
        f"  file: {report}",
        "  why:  $: 'price_source' is a required property",
    ]
    assert not any("Traceback" in line for line in lines)


def test_a_bad_threshold_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--threshold validates keys against the budget schema."""
    status, lines = _gate(capsys, *_files(tmp_path, {TEST: _entry()}, [_test(_entry())]), "--threshold", "max_cost=1")
    assert status == 4
    assert lines[0] == "tokenbudget: invalid token budget"
    assert lines[1] == "  file: tokenbudget gate --threshold"
