"""The SDK lines teams run (issue 13, item 2): ``anthropic`` 0.x sends through ``httpx``, 1.x and
2.x through ``httpx2``; the recorder works at the HTTP level, so both record and replay alike.

CI runs this module (with test_record_replay, test_interop and test_usage_fields) in the main
virtualenv (the newest SDK) and in a second one pinned to the newest 0.x (``.ci/run``, tox env
``sdk0``).
"""

from __future__ import annotations

import anthropic
import pytest
from conftest import NETWORK_GUARD, read_json

pytestmark = pytest.mark.usefixtures("no_api_key")

PROBE = """
import asyncio
import json
import os

import anthropic
from pytest_tokenbudget.emulator import Reply

SYSTEM = [{"type": "text", "text": "You answer shipping questions. " * 300, "cache_control": {"type": "ephemeral"}}]


def test_lines(anthropic_emulator, token_ledger):
    anthropic_emulator.script(Reply.text("Sync."), Reply.text("Async streamed."), Reply.text("Beta."))
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": "Where is parcel 7?"}]
    client.messages.create(model="claude-sonnet-4-6", max_tokens=64, system=SYSTEM, messages=messages)

    async def streamed():
        async with anthropic.AsyncAnthropic() as async_client:
            async with async_client.messages.stream(
                model="claude-sonnet-4-6", max_tokens=64, system=SYSTEM, messages=messages
            ) as stream:
                return "".join([text async for text in stream.text_stream])

    text = asyncio.run(streamed())
    client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=64, system=SYSTEM, messages=messages,
                                betas=["context-management-2025-06-27"])
    counted = client.messages.count_tokens(model="claude-sonnet-4-6", system=SYSTEM, messages=messages)
    with open(os.environ["PROBE_OUT"], "w") as out:
        json.dump({
            "sdk": anthropic.__version__,
            "transport": next(c.__module__.split(".")[0] for c in type(client._client).__mro__
                              if c.__module__.split(".")[0] in ("httpx", "httpx2")),
            "text": text,
            "count_tokens": counted.input_tokens,
            "turns": [[t.stream, t.input_tokens, t.cache_creation_input_tokens, t.cache_read_input_tokens,
                       t.output_tokens] for t in token_ledger.turns],
            "exchanges": [e.endpoint for e in token_ledger.exchanges],
            "emulator_requests": len(anthropic_emulator.requests),
        }, out)
"""


def test_the_installed_sdk_line_records_and_replays_through_its_transport(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sync, async streaming, a beta call and count_tokens go through the SDK's own HTTP client
    (httpx for 0.x, httpx2 from 1.0), are recorded, and replay offline with the same ledger."""
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_probe=PROBE)
    monkeypatch.setenv("PROBE_OUT", str(pytester.path / "recorded.json"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-canary-recording-key-0123456789")
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--token-budget-record=once").assert_outcomes(passed=1)
    recorded = read_json(pytester.path / "recorded.json")

    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("PROBE_OUT", str(pytester.path / "replayed.json"))
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    replayed = read_json(pytester.path / "replayed.json")

    major = int(anthropic.__version__.split(".")[0])
    assert recorded["sdk"] == anthropic.__version__
    assert recorded["transport"] == ("httpx" if major == 0 else "httpx2")
    assert recorded["text"] == replayed["text"] == "Async streamed."
    # the system prompt (2,332 tokens by the emulator's count) is written once and read twice
    assert (
        recorded["turns"]
        == replayed["turns"]
        == [
            [False, 12, 2332, 0, 2],
            [True, 12, 0, 2332, 4],
            [False, 12, 0, 2332, 2],
        ]
    )
    assert recorded["count_tokens"] == replayed["count_tokens"] == 2344
    assert recorded["exchanges"] == replayed["exchanges"] == ["messages", "messages", "messages", "count_tokens"]
    assert (recorded["emulator_requests"], replayed["emulator_requests"]) == (4, 0)
    cassette = (pytester.path / "cassettes" / "test_probe" / "test_lines.yaml").read_text()
    assert "canary" not in cassette
