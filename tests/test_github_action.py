"""The GitHub Actions gate: the composite action and workflows validate, failures annotate the diff."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import NETWORK_GUARD

REPO = Path(__file__).resolve().parent.parent


def _check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=120)


def test_action_and_workflows_follow_githubs_schemas() -> None:
    """action.yml and every workflow validate offline against GitHub's schemas (vendored by check-jsonschema)."""
    action = _check_jsonschema("--builtin-schema", "vendor.github-actions", str(REPO / "action.yml"))
    assert action.returncode == 0, action.stdout + action.stderr
    workflows = sorted(str(p) for p in (REPO / ".github" / "workflows").glob("*.yml"))
    assert len(workflows) == 2
    checked = _check_jsonschema("--builtin-schema", "vendor.github-workflows", *workflows)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.usefixtures("no_api_key")
def test_failures_become_annotations_and_the_job_summary_shows_the_gate(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under GitHub Actions a budget failure prints an error annotation on the test's line."""
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(
        test_ci=textwrap.dedent("""
        import anthropic
        import pytest
        from pytest_tokenbudget.emulator import Reply


        @pytest.mark.token_budget(max_turns=0)
        def test_over(anthropic_emulator):
            anthropic_emulator.script(Reply.text("hi"))
            anthropic.Anthropic().messages.create(model="claude-haiku-4-5", max_tokens=8,
                                                  messages=[{"role": "user", "content": "hi"}])
    """)
    )
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = pytester.runpytest("-p", "no:cacheprovider", "--token-budget-record=once", "--token-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            # Line 6 is the marker's line: the annotation points at the budget that failed.
            "::error file=test_ci.py,line=6,title=token budget%3A test_over::tokenbudget: over its token budget%0A*"
            "- 1 turns, budget 0%0A*",
        ]
    )
    text = summary.read_text()
    assert text.startswith("## Token budget\n")
    assert "| `test_ci.py::test_over` | 1 | 8 | 0 | 0 | 1 | 0.0% | $0.000013 |" in text
