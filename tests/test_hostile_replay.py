"""Replaying a corrupt or hostile cassette through the real SDK (issue 16), end to end.

The recording is made through the emulator, then damaged on disk, then replayed with no key and
the network blocked. The test must fail by itself, naming the cassette, once: the SDK must never
see the damaged response (it would show "Connection error.", an ``APIStatusError`` with a status
of 99, or an ``AttributeError`` in the agent's code, naming no file).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import NETWORK_GUARD

AGENT = """
import anthropic
from pytest_tokenbudget.emulator import Reply


def test_refund(anthropic_emulator):
    anthropic_emulator.script(Reply.text("Checking order 42."), Reply.text("Refunded."))
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": "Where is my order 42?"}]
    for k in range(2):
        reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=messages)
        messages += [{"role": "assistant", "content": reply.content[0].text},
                     {"role": "user", "content": f"And then? ({k})"}]
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


@pytest.fixture
def recorded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_api_key: None) -> Path:
    """A project whose test was recorded through the emulator; replays from here on are offline."""
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_refund=AGENT)
    _run(pytester, "--token-budget-record=once").assert_outcomes(passed=1)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    _run(pytester).assert_outcomes(passed=1)
    return pytester.path / "cassettes" / "test_refund" / "test_refund.yaml"


def _damage(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(path.read_text("utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), "utf-8")


def _response(data: dict[str, Any], index: int) -> dict[str, Any]:
    body: dict[str, Any] = data["interactions"][index]["response"]["body"]["json"]
    return body


def _fails_once(result: pytest.RunResult, headline: str, why: str, path: Path) -> str:
    """The test failed with our message, printed once, naming the cassette; nothing from the SDK."""
    out = result.stdout.str()
    assert [line.strip() for line in result.stdout.lines].count(f"tokenbudget: {headline}") == 1, out
    assert f"file: {path}" in out, out
    assert why in out, out
    for sdk in ("Connection error", "APIStatusError", "APIConnectionError", "AttributeError", "Traceback"):
        assert sdk not in out, out
    assert "During handling of the above exception" not in out, out
    return out


def test_a_negative_usage_count_fails_the_replay_naming_the_cassette(recorded: Path, pytester: pytest.Pytester) -> None:
    """Replay used to accept ``input_tokens: -5`` (the CLI refused it): now both refuse it, where it is read."""
    _damage(recorded, lambda d: _response(d, 1)["usage"].__setitem__("input_tokens", -5))
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    _fails_once(
        result,
        "cassette cannot be replayed",
        "why:  interaction 1 (POST /v1/messages): usage.input_tokens is -5, not a token count (a whole number >= 0): "
        "the recorded response is corrupt",
        recorded,
    )
    result.stdout.fnmatch_lines(["*fix:  re-record it: pytest test_refund.py::test_refund --token-budget-record=all"])


@pytest.mark.parametrize(
    ("value", "shown"),
    [(True, "True"), ("12", "'12'"), ([3], "[3]"), (10**15, "1000000000000000")],
    ids=["boolean", "string", "list", "huge"],
)
def test_a_count_of_the_wrong_type_fails_the_replay(
    recorded: Path, pytester: pytest.Pytester, value: Any, shown: str
) -> None:
    """Boolean, text, list or absurd counts are refused like negative ones."""
    _damage(recorded, lambda d: _response(d, 0)["usage"].__setitem__("output_tokens", value))
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    _fails_once(result, "cassette cannot be replayed", f"usage.output_tokens is {shown}, not a token count", recorded)


def test_a_response_without_content_blocks_never_reaches_the_agent(recorded: Path, pytester: pytest.Pytester) -> None:
    """``content: "oops"`` used to reach the SDK and end in an AttributeError inside the agent's code."""
    _damage(recorded, lambda d: _response(d, 0).__setitem__("content", "oops"))
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    _fails_once(
        result, "cassette cannot be replayed", "interaction 0 (POST /v1/messages): message content is not", recorded
    )


def test_a_status_that_is_not_http_is_refused_when_the_cassette_is_read(
    recorded: Path, pytester: pytest.Pytester
) -> None:
    """Status 99 (or -1) used to reach the SDK as an APIStatusError, after its retries."""
    _damage(recorded, lambda d: d["interactions"][1]["response"].__setitem__("status", 99))
    result = _run(pytester)
    result.assert_outcomes(errors=1)
    _fails_once(
        result,
        "cassette cannot be read",
        "why:  interaction 1: response status code 99 is not an HTTP status (100 to 599)",
        recorded,
    )


def test_an_alias_bomb_in_a_request_body_fails_fast(recorded: Path, pytester: pytest.Pytester) -> None:
    """The issue's 28 KB cassette with a billion-laughs bomb in a request body ran past 90 s and 2.2 GB."""
    text = recorded.read_text("utf-8")
    bomb = ['_lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    bomb += [f"_lol{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 10)]
    data = yaml.safe_load(text)
    data["interactions"][0]["request"]["body"]["json"]["messages"][0]["content"] = "__bomb__"
    recorded.write_text("\n".join(bomb) + "\n" + yaml.safe_dump(data, sort_keys=False).replace("__bomb__", "*l9"))
    started = time.perf_counter()
    result = _run(pytester)
    assert time.perf_counter() - started < 30
    result.assert_outcomes(errors=1)
    out = _fails_once(result, "cassette cannot be read", "why:  YAML aliases expand the document past ", recorded)
    assert "written (the limit is twice the written size, or 10,000 more): an alias bomb?" in out


def test_a_cassette_that_is_a_directory_or_not_utf8_is_named(recorded: Path, pytester: pytest.Pytester) -> None:
    """Invalid UTF-8 names the byte and the interaction; no UnicodeDecodeError."""
    raw = recorded.read_bytes()
    at = raw.index(b"Where is my order")
    recorded.write_bytes(raw[:at] + b"\xff" + raw[at:])
    result = _run(pytester)
    result.assert_outcomes(errors=1)
    _fails_once(result, "cassette cannot be read", f"interaction 0: not UTF-8 text at byte {at}", recorded)


def test_a_truncated_response_body_is_not_handed_to_the_sdk(recorded: Path, pytester: pytest.Pytester) -> None:
    """A response body cut short used to reach the SDK (a JSON error, then retries and "Connection error.")."""

    def cut(data: dict[str, Any]) -> None:
        data["interactions"][1]["response"]["body"] = {"text": '{"id": "msg_1", "type": "message", "content": [{"ty'}

    _damage(recorded, cut)
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    _fails_once(
        result,
        "cassette cannot be replayed",
        "why:  interaction 1 (POST /v1/messages): response body is not valid JSON (",
        recorded,
    )
