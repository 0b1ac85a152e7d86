"""End to end: the baseline and the gate, offline, as a pull request would run them."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from conftest import NETWORK_GUARD, read_json

pytestmark = pytest.mark.usefixtures("no_api_key")

AGENT = """
import anthropic
from pytest_tokenbudget.emulator import Reply

SYSTEM_TEXT = "You are the refund agent of the shop. Check the order before refunding. " * 80
QUESTION = "Where is my order 42?"


def ask(turns=3):
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": QUESTION}]
    for k in range(turns):
        reply = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=messages,
            system=[{"type": "text", "text": SYSTEM_TEXT, "cache_control": {"type": "ephemeral"}}],
        )
        messages += [{"role": "assistant", "content": reply.content[0].text},
                     {"role": "user", "content": f"And then? ({k})"}]


def test_refund(anthropic_emulator):
    anthropic_emulator.script(*[Reply.text(f"Step {k}: checking the order.") for k in range(3)])
    ask()
"""


def _project(pytester: pytest.Pytester, body: str = AGENT) -> None:
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_refund=body)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


@pytest.fixture
def recorded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """The agent recorded through the emulator and a baseline written from it; the network is blocked after."""
    _project(pytester)
    _run(pytester, "--token-budget-record=once").assert_outcomes(passed=1)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    result = _run(pytester, "--token-budget-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*baseline tokenbudget-baseline.json: 1 test(s) written"])
    return pytester


def _baseline(pytester: pytest.Pytester) -> dict:  # type: ignore[type-arg]
    return read_json(pytester.path / "tokenbudget-baseline.json")  # type: ignore[no-any-return]


def test_baseline_is_sorted_stable_and_holds_fingerprints(recorded: pytest.Pytester) -> None:
    """The baseline holds totals, cost, hit rate and per-turn cached prefixes; an unchanged run passes the gate."""
    text = (recorded.path / "tokenbudget-baseline.json").read_text()
    document = json.loads(text)
    entry = document["tests"]["test_refund.py::test_refund"]
    assert (entry["turns"], entry["cache_creation_input_tokens"], entry["cache_read_input_tokens"]) == (3, 1447, 2894)
    assert [p["breakpoints"][0]["path"] for p in entry["cached_prefixes"]] == ["system[0]"] * 3
    assert len({p["breakpoints"][0]["fingerprint"] for p in entry["cached_prefixes"]}) == 1
    assert text == json.dumps(document, indent=2, sort_keys=True) + "\n"
    result = _run(recorded, "--token-budget")
    result.assert_outcomes(passed=1)
    assert "FAIL" not in result.stdout.str()
    assert (recorded.path / "tokenbudget-baseline.json").read_text() == text


def test_edit_before_the_breakpoint_fails_the_gate_with_path_and_offset(recorded: pytest.Pytester) -> None:
    """A system prompt edit (inside the cached prefix) fails offline, naming path, offset and the cost."""
    _project(recorded, AGENT.replace("Check the order before refunding.", "Check the order before any refund."))
    result = _run(recorded, "--token-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*tokenbudget: the change breaks the token budget gate",
            '*- turn 0: system[[]0].text, offset 61: …"he shop. Check the order before refunding. You are the refund ag"… '
            '-> …"he shop. Check the order before any refund. You are the refund a"…; the prefix cached at system[[]0] '
            "(1,447 tokens) is no longer sent",
            # 1,447 tokens written at $3.75/MTok instead of read at $0.30/MTok (Sonnet 4.6).
            "*- every live conversation rebuilds its cache: 1,447 cached tokens thrown away per run, about $0.004992 "
            "more per conversation",
            "*where the tokens went:",
            "*fix:  if intended, accept it: with an API key, re-record and measure it: pytest test_refund.py::test_refund "
            "--token-budget-record=all --token-budget-update; without one, write the estimate, marked as estimated: "
            "pytest test_refund.py::test_refund --token-budget-update --token-budget-accept-estimates (then review "
            "the baseline's diff)",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    # Without --token-budget, replay is strict: the changed request fails as a departure.
    strict = _run(recorded)
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*tokenbudget: a request departs from its recording*"])


def test_edit_after_the_last_breakpoint_passes_with_an_estimated_cost_change(recorded: pytest.Pytester) -> None:
    """An edit after the cached prefix keeps every fingerprint; the report gives the estimated cost change."""
    _project(recorded, AGENT.replace('"Where is my order 42?"', '"Where is my order 42, please?"'))
    result = _run(recorded, "--token-budget", "--token-budget-json=report.json")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "FAIL" not in out
    assert "turn 0 changed since recording: messages[0].content, offset 20" in out
    assert re.search(r"cost \$0\.00\d+ \(estimated\) vs baseline \$0\.00\d+ \(\+\$0\.0000\d+, \+0\.\d%\)", out), out
    turns = read_json(recorded.path / "report.json")["tests"][0]["turns"]
    assert [t["cache"]["verdict"] for t in turns] == ["write", "hit", "hit"]
    method = turns[0]["cache"]["estimated"]["method"]
    # The cached prefix keeps its recorded 1,447 tokens exactly; only the edited message is estimated.
    assert method == (
        "1,462 input tokens: 1,447 kept as recorded (1 unchanged block(s)); "
        "estimated 15 for 1 changed block(s): messages[0].content edited (13 -> 15)"
    )


def test_with_a_key_count_tokens_gives_exact_counts(recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an API key, a changed request is counted with count_tokens (here: the emulator's) instead of estimated."""
    _project(recorded, AGENT.replace('"Where is my order 42?"', '"Where is my order 42, please?"'))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-counting-key")
    monkeypatch.delenv("TB_BLOCK_NETWORK")  # count_tokens goes to the API (the test's emulator)
    result = _run(recorded, "--token-budget", "--token-budget-json=report.json")
    result.assert_outcomes(passed=1)
    turns = read_json(recorded.path / "report.json")["tests"][0]["turns"]
    assert turns[0]["cache"]["estimated"]["method"] == "count_tokens API: 1,462 input tokens"
    assert turns[0]["usage"]["cache_creation_input_tokens"] + turns[0]["usage"]["input_tokens"] == 1462


def test_update_accepts_a_change_and_the_gate_then_passes(
    recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accepting a change: without a key the update refuses to write estimates as measured (it writes them
    marked, on request, and the gate says so); with a key one command re-records and measures it."""
    before = _baseline(recorded)["tests"]["test_refund.py::test_refund"]
    _project(recorded, AGENT.replace("Check the order before refunding.", "Check the order before any refund."))
    _run(recorded, "--token-budget").assert_outcomes(failed=1)

    refused = _run(recorded, "--token-budget-update")
    refused.assert_outcomes(passed=1)
    refused.stdout.fnmatch_lines(
        [
            "*baseline tokenbudget-baseline.json: 0 test(s) written",
            "*not updated (its usage is estimated: the prompt changed since it was recorded): "
            "test_refund.py::test_refund",
            "*measure it (needs an API key): pytest test_refund.py::test_refund --token-budget-record=all "
            "--token-budget-update",
            "*or write the estimate, marked as estimated: pytest test_refund.py::test_refund --token-budget-update "
            "--token-budget-accept-estimates",
        ]
    )
    assert _baseline(recorded)["tests"]["test_refund.py::test_refund"] == before

    _run(recorded, "test_refund.py::test_refund", "--token-budget-update", "--token-budget-accept-estimates")
    after = _baseline(recorded)["tests"]["test_refund.py::test_refund"]
    assert after["estimated"] is True
    assert (
        after["cached_prefixes"][0]["breakpoints"][0]["fingerprint"]
        != before["cached_prefixes"][0]["breakpoints"][0]["fingerprint"]
    )
    held = _run(recorded, "--token-budget")
    held.assert_outcomes(passed=1)
    held.stdout.fnmatch_lines(
        [
            "*the baseline holds estimates, not measurements, for 1 test(s): test_refund.py::test_refund; measure "
            "them with a key: pytest test_refund.py::test_refund --token-budget-record=all --token-budget-update"
        ]
    )

    # With a key (here the emulator's), the command the fix line names re-records and measures.
    monkeypatch.delenv("TB_BLOCK_NETWORK")
    _run(recorded, "test_refund.py::test_refund", "--token-budget-record=all", "--token-budget-update").assert_outcomes(
        passed=1
    )
    measured = _baseline(recorded)["tests"]["test_refund.py::test_refund"]
    assert "estimated" not in measured
    # 80 more characters in the system prompt: 20 more tokens, as the estimate had it.
    assert (measured["cache_creation_input_tokens"], measured["cache_read_input_tokens"]) == (1467, 2934)
    assert (after["cache_creation_input_tokens"], after["cache_read_input_tokens"]) == (1467, 2934)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    final = _run(recorded, "--token-budget")
    final.assert_outcomes(passed=1)
    assert "estimate" not in final.stdout.str()


def test_a_25_percent_cost_increase_fails_at_the_10_percent_threshold(recorded: pytest.Pytester) -> None:
    """More uncached input after the breakpoint: +25% or more fails the default +10% cost threshold."""
    _project(recorded, AGENT.replace('"Where is my order 42?"', '"Where is my order 42? " + "Details follow. " * 60'))
    result = _run(recorded, "--token-budget")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    match = re.search(
        r"cost \$(\S+) \(estimated\) vs baseline \$(\S+) \(\+\$\S+, \+(\d+\.\d)%\): over the \+10% "
        r"threshold",
        out,
    )
    assert match, out
    assert float(match.group(3)) >= 25.0
    # A per-test threshold in tokenbudget.yaml lets it through.
    (recorded.path / "tokenbudget.yaml").write_text(
        'tests:\n  "test_refund.py::*":\n    max_cost_increase: 0.5\n    max_hit_rate_drop: 0.2\n'
    )
    _run(recorded, "--token-budget").assert_outcomes(passed=1)
    # --token-budget-threshold wins over the config file (issue 15): the action's thresholds input.
    strict = _run(recorded, "--token-budget", "--token-budget-threshold", "max_cost_increase=0.1")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*over the +10% threshold*"])
    bad = _run(recorded, "--token-budget", "--token-budget-threshold", "max_cost=1")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*tokenbudget: invalid token budget", "*file: --token-budget-threshold"])


def test_a_corrupted_baseline_is_a_usage_error(recorded: pytest.Pytester) -> None:
    """A truncated baseline stops the session at start-up with the file and the fix, not a traceback."""
    path = recorded.path / "tokenbudget-baseline.json"
    path.write_text(path.read_text()[:200])
    result = _run(recorded, "--token-budget")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*tokenbudget: the token budget baseline cannot be read",
            f"*file: {path}, line *",
            "*why:  not valid JSON: *",
            "*fix:  restore it from version control, or rewrite it: pytest --token-budget --token-budget-update",
        ]
    )
    assert "Traceback" not in result.stderr.str()
    path.write_text('{"schema_version": 1, "tests": {"t": {"turns": "three"}}}')
    invalid = _run(recorded, "--token-budget")
    assert invalid.ret == pytest.ExitCode.USAGE_ERROR
    invalid.stderr.fnmatch_lines(["*tokenbudget: the token budget baseline is invalid*"])


def test_update_prunes_tests_that_no_longer_exist_and_keeps_deselected_ones(recorded: pytest.Pytester) -> None:
    """Entries of deleted tests are pruned on update; tests that exist but did not run keep their entry."""
    document = _baseline(recorded)
    entry = document["tests"]["test_refund.py::test_refund"]
    document["tests"]["test_refund.py::test_renamed_away"] = entry
    document["tests"]["test_gone.py::test_old"] = entry
    (recorded.path / "tokenbudget-baseline.json").write_text(json.dumps(document))
    recorded.makepyfile(test_other="def test_other():\n    assert True\n")
    result = _run(recorded, "--token-budget-update", "-k", "test_other")
    result.stdout.fnmatch_lines(
        [
            "*pruned 2 entries for tests that no longer exist: test_gone.py::test_old, test_refund.py::test_renamed_away",
            "*kept 1 entry for tests that did not run: test_refund.py::test_refund",
        ]
    )
    assert sorted(_baseline(recorded)["tests"]) == ["test_refund.py::test_refund"]


def test_update_of_one_named_test_keeps_its_siblings(recorded: pytest.Pytester) -> None:
    """``pytest file.py::test --token-budget-update`` (the accept command) prunes nothing else of that file."""
    document = _baseline(recorded)
    entry = document["tests"]["test_refund.py::test_refund"]
    document["tests"]["test_refund.py::test_sibling"] = entry
    (recorded.path / "tokenbudget-baseline.json").write_text(json.dumps(document))
    _project(recorded, AGENT + "\n\ndef test_sibling():\n    assert True\n")
    result = _run(recorded, "test_refund.py::test_refund", "--token-budget-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*kept 1 entry for tests that did not run: test_refund.py::test_sibling"])
    assert "pruned" not in result.stdout.str()
    assert sorted(_baseline(recorded)["tests"]) == ["test_refund.py::test_refund", "test_refund.py::test_sibling"]


def test_xdist_writes_one_identical_baseline(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``-n 2`` the controller writes the baseline once, identical to a serial run's."""
    _project(
        pytester,
        AGENT
        + textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("turns", [1, 2, 3])
        def test_more(anthropic_emulator, turns):
            anthropic_emulator.script(*[Reply.text("ok") for _ in range(turns)])
            ask(turns)
    """),
    )
    _run(pytester, "--token-budget-record=once").assert_outcomes(passed=4)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    _run(pytester, "--token-budget-update").assert_outcomes(passed=4)
    serial = (pytester.path / "tokenbudget-baseline.json").read_bytes()
    (pytester.path / "tokenbudget-baseline.json").unlink()
    parallel = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--token-budget-update")
    parallel.assert_outcomes(passed=4)
    assert (pytester.path / "tokenbudget-baseline.json").read_bytes() == serial
    assert sorted(p.name for p in Path(pytester.path).iterdir() if "baseline" in p.name) == [
        "tokenbudget-baseline.json",
        "tokenbudget-baseline.json.lock",  # the update's cross-process lock (kept: deleting it would race)
    ]
