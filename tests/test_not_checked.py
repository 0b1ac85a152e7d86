"""End to end: a ``--token-budget`` run says which baseline entries it did not check, and why.

The project (``conftest.SUITE_AGENT``) is recorded through the emulator and its baseline written
(6 entries: test_refund, test_short, test_more[1..4]); every run here replays it offline.
"""

from __future__ import annotations

import re

import pytest
from conftest import SUITE_AGENT, read_json, record_suite

from pytest_tokenbudget.reports import validate_report

pytestmark = pytest.mark.usefixtures("no_api_key")

SKIP_SHORT = SUITE_AGENT.replace("def test_short(", "@pytest.mark.skip(reason='flaky')\ndef test_short(")
NO_SERVICE = "def {name}(anthropic_emulator):\n    raise RuntimeError('no order service')\n"


def _failing(name: str, body: str = SUITE_AGENT) -> str:
    """``name`` raises before it makes any API call."""
    return body.replace(f"def {name}(anthropic_emulator):\n", NO_SERVICE.format(name=name))


@pytest.fixture
def recorded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    record_suite(pytester, monkeypatch)
    return pytester


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "--token-budget", *args)


def section(result: pytest.RunResult, heading: str) -> list[str]:
    """The summary lines from the one starting with ``heading`` to the last indented one after it."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return lines[start:end]


def test_deselected_entries_are_counted_and_named_in_every_report(recorded: pytest.Pytester) -> None:
    """``-k`` deselects four entries: the terminal names the first three, the JSON all four, the Markdown too."""
    result = _run(recorded, "-k", "not test_more", "--token-budget-json=report.json", "--token-budget-md=report.md")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=3, deselected=4)
    assert section(result, "baseline:") == [
        "baseline: 2 of 6 entries checked, 4 not checked:",
        "  - 4 deselected: test_agent.py::test_more[1], test_agent.py::test_more[2], test_agent.py::test_more[3] "
        "and 1 more",
    ]
    document = read_json(recorded.path / "report.json")
    validate_report(document)
    assert document["baseline_coverage"] == {
        "entries": 6,
        "checked": ["test_agent.py::test_refund", "test_agent.py::test_short"],
        "unchecked": 4,
        "not_checked": [
            {
                "reason": "deselected",
                "description": "deselected",
                "tests": [f"test_agent.py::test_more[{n}]" for n in (1, 2, 3, 4)],
            }
        ],
    }
    markdown = (recorded.path / "report.md").read_text().splitlines()
    assert "**baseline: 2 of 6 entries checked, 4 not checked**" in markdown
    assert (
        "- 4 deselected: `test_agent.py::test_more[1]`, `test_agent.py::test_more[2]`, "
        "`test_agent.py::test_more[3]` and 1 more"
    ) in markdown


def test_a_skipped_entry_is_counted(recorded: pytest.Pytester) -> None:
    """A test skipped by a marker is not checked, and the summary says so (the gate still passes)."""
    recorded.makepyfile(test_agent=SKIP_SHORT)
    result = _run(recorded)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=6, skipped=1)
    assert section(result, "baseline:") == [
        "baseline: 5 of 6 entries checked, 1 not checked:",
        "  - 1 skipped: test_agent.py::test_short",
    ]


def test_a_renamed_test_is_named_under_its_old_and_its_new_name(recorded: pytest.Pytester) -> None:
    """Renamed (cassette moved with it): the old entry is not collected, the new name is not in the baseline."""
    cassettes = recorded.path / "cassettes" / "test_agent"
    (cassettes / "test_short.yaml").rename(cassettes / "test_brief.yaml")
    recorded.makepyfile(test_agent=SUITE_AGENT.replace("def test_short(", "def test_brief("))
    result = _run(recorded)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=7)
    assert section(result, "gate:") == [
        "gate:",
        "  test_agent.py::test_brief: not in the baseline (add it with --token-budget-update)",
    ]
    assert section(result, "baseline:") == [
        "baseline: 5 of 6 entries checked, 1 not checked:",
        "  - 1 not collected in this run (renamed, removed, or outside the paths given): test_agent.py::test_short",
    ]


def test_a_test_that_fails_before_any_api_call_is_counted(recorded: pytest.Pytester) -> None:
    """A test that raises before its first call fails as a test; its entry is counted as not checked."""
    recorded.makepyfile(test_agent=_failing("test_short"))
    result = _run(recorded)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=6, failed=1)
    assert section(result, "baseline:") == [
        "baseline: 5 of 6 entries checked, 1 not checked:",
        "  - 1 failed before any API call: test_agent.py::test_short",
    ]


def test_entries_after_an_early_stop_are_not_run(recorded: pytest.Pytester) -> None:
    """``-x`` after the first test fails before its calls: the other five entries were never run."""
    recorded.makepyfile(test_agent=_failing("test_refund"))
    result = _run(recorded, "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1)
    assert section(result, "baseline:") == [
        "baseline: 0 of 6 entries checked, 6 not checked:",
        "  - 1 failed before any API call: test_agent.py::test_refund",
        "  - 5 not run (the session stopped early): test_agent.py::test_more[1], test_agent.py::test_more[2], "
        "test_agent.py::test_more[3] and 2 more",
    ]


def test_a_test_that_ran_without_an_api_call_is_counted(recorded: pytest.Pytester) -> None:
    """A test whose baseline entry has turns, now passing without any call (its cassette gone too)."""
    (recorded.path / "cassettes" / "test_agent" / "test_short.yaml").unlink()
    recorded.makepyfile(
        test_agent=SUITE_AGENT.replace(
            "def test_short(anthropic_emulator):\n", "def test_short(anthropic_emulator):\n    return\n"
        )
    )
    result = _run(recorded)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=7)
    assert section(result, "baseline:") == [
        "baseline: 5 of 6 entries checked, 1 not checked:",
        "  - 1 ran without an API call (its baseline entry has turns): test_agent.py::test_short",
    ]


def test_a_run_without_any_api_call_still_counts_the_baseline(recorded: pytest.Pytester) -> None:
    """No test called the API: no table, but the count of entries not checked (deselected, or outside the paths)."""
    result = _run(recorded, "-k", "test_plain")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, deselected=6)
    out = result.outlines
    start = next(i for i, line in enumerate(out) if "= token budget =" in line)
    assert out[start + 1 : start + 3] == [
        "baseline: 0 of 6 entries checked, 6 not checked:",
        "  - 6 deselected: test_agent.py::test_more[1], test_agent.py::test_more[2], test_agent.py::test_more[3] "
        "and 3 more",
    ]
    assert re.fullmatch(r"=+ 1 passed, 6 deselected in \S+ =+", out[start + 3])  # and nothing else
    recorded.makepyfile(test_elsewhere="def test_elsewhere():\n    assert True\n")
    elsewhere = _run(recorded, "test_elsewhere.py")
    assert elsewhere.ret == pytest.ExitCode.OK
    assert section(elsewhere, "baseline:") == [
        "baseline: 0 of 6 entries checked, 6 not checked:",
        "  - 6 not collected in this run (renamed, removed, or outside the paths given): test_agent.py::test_more[1], "
        "test_agent.py::test_more[2], test_agent.py::test_more[3] and 3 more",
    ]


def test_xdist_names_the_same_entries_as_a_serial_run(recorded: pytest.Pytester) -> None:
    """Under ``-n 2`` the workers' deselections and the controller's reports give the serial run's summary."""
    recorded.makepyfile(test_agent=_failing("test_refund", SKIP_SHORT))
    args = ("-k", "not test_more[4]", "--token-budget-suite-fail=cost:1%")
    expected = [
        "baseline: 3 of 6 entries checked, 3 not checked:",
        "  - 1 deselected: test_agent.py::test_more[4]",
        "  - 1 skipped: test_agent.py::test_short",
        "  - 1 failed before any API call: test_agent.py::test_refund",
    ]
    suite = [
        "suite budget: ok, 1 limit checked",
        "  this run, 3 tests: cost $0.018157, 8,850 tokens, cache hit rate 49.08%",
        "  against the baseline over the same 3 tests (left out: 3 baseline entries not checked):",
        "  - ok   cost $0.018157 vs baseline $0.018157 (+$0.000000, +0.00%): within the cost:1% threshold "
        "(fails when it rises more than 1% over the baseline's)",
    ]
    serial = _run(recorded, *args)
    assert serial.ret == pytest.ExitCode.TESTS_FAILED
    serial.assert_outcomes(passed=4, failed=1, skipped=1, deselected=1)
    assert section(serial, "baseline:") == expected
    assert section(serial, "suite budget:") == suite
    parallel = recorded.runpytest_subprocess("-p", "no:cacheprovider", "--token-budget", "-n", "2", *args)
    assert parallel.ret == pytest.ExitCode.TESTS_FAILED
    parallel.assert_outcomes(passed=4, failed=1, skipped=1)
    assert section(parallel, "baseline:") == expected
    assert section(parallel, "suite budget:") == suite
