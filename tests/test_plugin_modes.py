"""End to end through pytester: record modes, missing recordings, changed prompts, secrets, files."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from conftest import NETWORK_GUARD

pytestmark = pytest.mark.usefixtures("no_api_key")

SMALL_AGENT = """
import os

import anthropic
import pytest
from pytest_tokenbudget.emulator import Reply

SYSTEM = [{"type": "text", "text": "You answer about the weather. " * 200, "cache_control": {"type": "ephemeral"}}]


def ask(turns=2, question="Weather in Paris?"):
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": question}]
    for _ in range(turns):
        reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, system=SYSTEM, messages=messages)
        messages += [{"role": "assistant", "content": reply.content[0].text}, {"role": "user", "content": "More?"}]
    return reply


def test_weather(anthropic_emulator, token_ledger):
    anthropic_emulator.script(Reply.text("Sunny."), Reply.text("Still sunny."), Reply.text("Sunny again."))
    ask()
    assert len(token_ledger) == 2
"""


def _project(pytester: pytest.Pytester, body: str = SMALL_AGENT, name: str = "test_weather") -> Path:
    pytester.makeconftest(NETWORK_GUARD)
    return pytester.makepyfile(**{name: body})


def _cassette(pytester: pytest.Pytester, name: str = "test_weather/test_weather.yaml") -> Path:
    return pytester.path / "cassettes" / name


def test_missing_recording_fails_only_that_test_with_the_record_command(pytester: pytest.Pytester) -> None:
    """A test without a cassette fails alone, naming the test, the cassette and the command to record it."""
    _project(
        pytester,
        SMALL_AGENT
        + textwrap.dedent("""
        def test_offline_math():
            assert 1 + 1 == 2
    """),
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*tokenbudget: no recording for a request*",
            "*file: */cassettes/test_weather/test_weather.yaml",
            "*test: test_weather.py::test_weather",
            "*why:  no cassette for this test; it sent POST /v1/messages",
            "*fix:  pytest test_weather.py::test_weather --token-budget-record=once",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert not _cassette(pytester).exists()


def test_once_records_then_replays_without_reaching_the_emulator(pytester: pytest.Pytester) -> None:
    """``once`` records a missing cassette, then replays it: the emulator sees no request the second time."""
    _project(
        pytester,
        SMALL_AGENT
        + textwrap.dedent("""
        def test_counts(anthropic_emulator):
            ask(turns=1)
            with open("emulator_requests.txt", "a") as out:
                out.write(f"{len(anthropic_emulator.requests)}\\n")
    """),
    )
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    first = _cassette(pytester).read_bytes()
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert (pytester.path / "emulator_requests.txt").read_text().split() == ["1", "0"]
    assert _cassette(pytester).read_bytes() == first


def test_none_mode_never_writes(pytester: pytest.Pytester) -> None:
    """The default mode replays only: a missing recording fails and no cassette is created."""
    _project(pytester)
    pytester.runpytest("--token-budget-record=none", "-p", "no:cacheprovider").assert_outcomes(failed=1)
    assert not (pytester.path / "cassettes").exists()


def test_all_rerecords_and_changes_only_recorded_times(pytester: pytest.Pytester) -> None:
    """Re-recording an unchanged test with ``all`` changes nothing but the ``recorded_at`` and
    ``responded_at`` lines (request start, response end)."""
    _project(pytester)
    pytester.runpytest("--token-budget-record=all", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    first = _cassette(pytester).read_text().splitlines()
    pytester.runpytest("--token-budget-record=all", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    second = _cassette(pytester).read_text().splitlines()
    assert len(first) == len(second)
    changed = [(a, b) for a, b in zip(first, second, strict=True) if a != b]
    assert len(changed) == 4
    assert [a.strip().split(":")[0] for a, _b in changed] == ["recorded_at", "responded_at"] * 2
    assert all(a.strip().split(":")[0] == b.strip().split(":")[0] for a, b in changed)


def test_new_episodes_keeps_recordings_and_appends_new_requests(pytester: pytest.Pytester) -> None:
    """``new_episodes`` replays the recorded requests and records the ones the test adds."""
    _project(pytester)
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert _cassette(pytester).read_text().count("- request:") == 2
    _project(
        pytester,
        SMALL_AGENT.replace(
            "ask()\n    assert len(token_ledger) == 2", "ask(turns=3)\n    assert len(token_ledger) == 3"
        ),
    )
    pytester.runpytest("--token-budget-record=new_episodes", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert _cassette(pytester).read_text().count("- request:") == 3
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_ini_record_mode_and_a_bad_value(pytester: pytest.Pytester) -> None:
    """``token_budget_record_mode`` in the ini file sets the mode; a typo is a one-line usage error."""
    _project(pytester)
    pytester.makeini("[pytest]\ntoken_budget_record_mode = once\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert _cassette(pytester).is_file()
    pytester.makeini("[pytest]\ntoken_budget_record_mode = sometimes\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*token_budget_record_mode = 'sometimes' is not a record mode; use one of none, once, new_episodes, all"]
    )
    assert "Traceback" not in result.stderr.str()


def test_changed_prompt_fails_with_the_first_difference(pytester: pytest.Pytester) -> None:
    """A prompt edited after recording fails replay with the JSON path, offset and both excerpts."""
    _project(pytester)
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    _project(
        pytester,
        SMALL_AGENT.replace(
            '"You answer about the weather. " * 200',
            '"You answer about the weather. " * 100 + "Today is 2026-11-25. " + "You answer about the weather. " * 99',
        ),
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*tokenbudget: a request departs from its recording*",
            "*file: */cassettes/test_weather/test_weather.yaml (interaction 0)",
            "*why:  POST /v1/messages #1 differs at system[[]0].text, offset 3000",
            '*recorded: …". You answer about the weather. You answer about the weather. Yo"…',
            '*now:      …". You answer about the weather. Today is 2026-11-25. You answer "…',
            "*fix:  if the change is intended, re-record: pytest test_weather.py::test_weather --token-budget-record=all",
        ]
    )


def test_unused_recordings_fail_the_test(pytester: pytest.Pytester) -> None:
    """A test that now makes fewer calls than it recorded fails, saying how many were not replayed."""
    _project(pytester)
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    _project(pytester, SMALL_AGENT.replace("ask()\n    assert len(token_ledger) == 2", "ask(turns=1)"))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*tokenbudget: the test left recordings unplayed*",
            "*why:  1 recorded request(s) were not sent, from interaction 1 (POST /v1/messages)*",
        ]
    )
    pytester.makeini("[pytest]\ntoken_budget_allow_unused = true\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_failing_test_keeps_the_previous_cassette(pytester: pytest.Pytester) -> None:
    """Re-recording a test that fails leaves the cassette it had untouched."""
    _project(pytester)
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    before = _cassette(pytester).read_bytes()
    _project(
        pytester,
        SMALL_AGENT.replace(
            "assert len(token_ledger) == 2", "assert len(token_ledger) == 2\n    assert False, 'boom'"
        ).replace('question="Weather in Paris?"', 'question="Weather in Rome?"'),
    )
    pytester.runpytest("--token-budget-record=all", "-p", "no:cacheprovider").assert_outcomes(failed=1)
    assert _cassette(pytester).read_bytes() == before
    assert [p.name for p in _cassette(pytester).parent.iterdir()] == ["test_weather.yaml"]


def test_secrets_never_reach_a_cassette(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording with canary credentials writes neither them nor the authorization header; replay still works."""
    canary_key = "sk-ant-api03-CANARY-key-000111222333444555"
    canary_token = "svc-token-CANARY-999888777666"
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary_key)
    monkeypatch.setenv("SERVICE_TOKEN", canary_token)
    _project(
        pytester,
        SMALL_AGENT.replace(
            'question="Weather in Paris?"', 'question="Weather in Paris? token=" + os.environ["SERVICE_TOKEN"]'
        ),
    )
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    written = [p for p in (pytester.path / "cassettes").rglob("*") if p.is_file()]
    assert len(written) == 1
    for path in written:
        data = path.read_bytes()
        for canary in (canary_key, canary_token, "CANARY"):
            assert canary.encode() not in data, f"{canary} found in {path}"
        assert b"authorization" not in data.lower()
        assert b"x-api-key" not in data.lower()
        assert b"anthropic-organization-id" not in data.lower()
    assert b"token=<redacted>" in written[0].read_bytes()
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_parametrized_tests_get_one_cassette_each(pytester: pytest.Pytester) -> None:
    """Each parameter set of a test records into its own cassette."""
    _project(
        pytester,
        SMALL_AGENT
        + textwrap.dedent("""
        @pytest.mark.parametrize("city", ["Paris", "Rome"])
        def test_city(anthropic_emulator, city):
            ask(turns=1, question=f"Weather in {city}?")
    """),
    )
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=3)
    names = sorted(p.name for p in (pytester.path / "cassettes" / "test_weather").iterdir())
    assert names == ["test_city[Paris].yaml", "test_city[Rome].yaml", "test_weather.yaml"]
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_cassette_dir_option_and_ini(pytester: pytest.Pytester) -> None:
    """Cassettes go where ``--token-budget-cassette-dir`` or ``token_budget_cassette_dir`` say."""
    _project(pytester)
    pytester.makeini("[pytest]\ntoken_budget_cassette_dir = recordings/claude\n")
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert (pytester.path / "recordings/claude/test_weather/test_weather.yaml").is_file()
    pytester.runpytest(
        "--token-budget-record=once", "--token-budget-cassette-dir=other", "-p", "no:cacheprovider"
    ).assert_outcomes(passed=1)
    assert (pytester.path / "other/test_weather/test_weather.yaml").is_file()


def test_plain_httpx_and_other_traffic(pytester: pytest.Pytester) -> None:
    """A plain httpx client calling the Messages API is recorded; other HTTP traffic passes through."""
    _project(
        pytester,
        textwrap.dedent("""
        import httpx
        from pytest_tokenbudget.emulator import Reply

        def test_raw_http(anthropic_emulator, token_ledger):
            anthropic_emulator.script(Reply.text("hi"))
            headers = {"anthropic-version": "2023-06-01", "x-api-key": "k-123456789"}
            body = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
            with httpx.Client() as client:
                response = client.post(anthropic_emulator.base_url + "/v1/messages", json=body, headers=headers)
                assert response.json()["content"][0]["text"] == "hi"
                # Not Anthropic traffic (no anthropic-version header): never recorded.
                other = client.get(anthropic_emulator.base_url + "/health")
                assert other.status_code == 401
            assert [t.model for t in token_ledger.turns] == ["claude-haiku-4-5"]
    """),
        name="test_raw",
    )
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    text = (pytester.path / "cassettes/test_raw/test_raw_http.yaml").read_text()
    assert text.count("- request:") == 1
    assert "/health" not in text


def test_corrupt_cassette_fails_that_test_only(pytester: pytest.Pytester) -> None:
    """A damaged cassette fails its test with the file, the line and the reason; other tests still run."""
    _project(pytester, SMALL_AGENT + "\n\ndef test_other():\n    assert True\n")
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    path = _cassette(pytester)
    text = path.read_text()
    path.write_text(text[: len(text) // 2] + "\n  - {broken: [\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert re.search(r"tokenbudget: cassette cannot be read\n\s+file: .*test_weather\.yaml, line \d+", out), out
    assert "invalid YAML" in out
    assert "Traceback" not in out
