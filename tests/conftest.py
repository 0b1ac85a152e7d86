"""Shared helpers for the end-to-end tests: a realistic agent test module and a network guard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# pytester's in-process runs drop the modules a run imported; importing the heavy ones here keeps
# them loaded across runs (each run would otherwise re-import the SDK and hypothesis).
import anthropic  # noqa: F401
import httpx  # noqa: F401
import hypothesis
import pytest
import vcr.patch  # noqa: F401

import pytest_tokenbudget.emulator  # noqa: F401

# CI machines are slower and busier than a laptop: a generator that takes long is not a bug in the
# code under test. Every property test runs without a deadline and without the too-slow check.
hypothesis.settings.register_profile(
    "tokenbudget",
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large],
)
hypothesis.settings.load_profile("tokenbudget")

# A conftest for pytester projects: with TB_BLOCK_NETWORK=1 every outgoing connection fails,
# so a replay that tried to reach any server would fail loudly.
NETWORK_GUARD = """
import os
import socket

import pytest


@pytest.fixture(autouse=True)
def _block_network(monkeypatch):
    # Patched per test and undone after it: pytester's in-process runs share this process.
    if os.environ.get("TB_BLOCK_NETWORK") == "1":
        def _blocked(self, *args, **kwargs):
            raise OSError("network blocked by the test (TB_BLOCK_NETWORK=1)")

        monkeypatch.setattr(socket.socket, "connect", _blocked)
        monkeypatch.setattr(socket.socket, "connect_ex", _blocked)
"""

# A multi-turn, tool-using support agent: cache_control on tools and system, one streamed turn
# (messages.stream), one raw stream=True turn, one async turn, then count_tokens and a batch.
AGENT_TEST = """
import asyncio
import json
import os

import anthropic
from pytest_tokenbudget.emulator import Reply

MODEL = "claude-sonnet-4-6"
TOOLS = [
    {
        "name": "search_orders",
        "description": "Find a customer's orders by id or email. " + "Orders carry lines and totals. " * 60,
        "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    },
    {
        "name": "refund",
        "description": "Refund an order line. " + "Refunds above 100 EUR need a reason. " * 60,
        "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}}},
        "cache_control": {"type": "ephemeral"},
    },
]
SYSTEM = [{"type": "text", "text": "You are the support agent of a shop. " + "Be brief and exact. " * 150,
           "cache_control": {"type": "ephemeral"}}]


def _assistant(message):
    return {"role": "assistant", "content": [b.model_dump(exclude_none=True, mode="json") for b in message.content]}


def _result(message, text):
    call = next(b for b in message.content if b.type == "tool_use")
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": text}]}


def _script(emulator):
    emulator.script(
        Reply.tool_use("search_orders", {"order_id": "42"}),
        Reply.tool_use("refund", {"order_id": "42", "amount": 19.5}, text="Refunding the damaged line."),
        Reply.tool_use("search_orders", {"order_id": "42"}),
        Reply.tool_use("refund", {"order_id": "42", "amount": 0.5}),
        Reply.text("Done: 20.00 EUR refunded for order 42."),
        Reply.text("Summary: refunded."),
    )


def run_agent():
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": "Order 42 arrived damaged, please refund it."}]
    kwargs = dict(model=MODEL, max_tokens=512, system=SYSTEM, tools=TOOLS)
    first = client.messages.create(messages=messages, **kwargs)
    messages += [_assistant(first), _result(first, "order 42: 2 lines, 20.00 EUR")]
    with client.messages.stream(messages=messages, **kwargs) as stream:
        second = stream.get_final_message()
    messages += [_assistant(second), _result(second, "refund ok: 19.50 EUR")]

    async def third_turn():
        async with anthropic.AsyncAnthropic() as async_client:
            return await async_client.messages.create(messages=messages, **kwargs)

    third = asyncio.run(third_turn())
    messages += [_assistant(third), _result(third, "order 42: 1 line left, 0.50 EUR")]
    events = client.messages.create(messages=messages, stream=True, **kwargs)
    fourth_id = None
    for event in events:
        if event.type == "message_start":
            fourth_id = event.message.id
    messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_fixed", "name": "refund",
                                                      "input": {"order_id": "42", "amount": 0.5}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_fixed", "content": "ok"}]}]
    fifth = client.messages.create(messages=messages, **kwargs)
    count = client.messages.count_tokens(model=MODEL, system=SYSTEM, tools=TOOLS, messages=messages)
    batch = client.messages.batches.create(requests=[
        {"custom_id": "summary", "params": {"model": "claude-haiku-4-5", "max_tokens": 64,
                                             "messages": [{"role": "user", "content": "Summarise: refunded."}]}},
    ])
    batch = client.messages.batches.retrieve(batch.id)
    results = list(client.messages.batches.results(batch.id))
    return fifth, count, results, fourth_id


def dump(ledger):
    return [
        {"model": t.model, "endpoint": t.endpoint, "stream": t.stream, "usage": dict(t.usage),
         "recorded_at": t.recorded_at, "custom_id": t.custom_id}
        for t in ledger.turns
    ]


def test_support_agent(anthropic_emulator, token_ledger):
    _script(anthropic_emulator)
    fifth, count, results, fourth_id = run_agent()
    assert fifth.content[0].text == "Done: 20.00 EUR refunded for order 42."
    assert results[0].result.type == "succeeded"
    with open(os.environ["LEDGER_OUT"], "w") as out:
        json.dump({"turns": dump(token_ledger), "count_tokens": count.input_tokens,
                   "exchanges": len(token_ledger.exchanges),
                   "emulator_requests": len(anthropic_emulator.requests)}, out)
"""


def write_agent_project(pytester: pytest.Pytester, body: str = AGENT_TEST, name: str = "test_agent") -> Path:
    """Write the agent test module and the network guard into a pytester project."""
    pytester.makeconftest(NETWORK_GUARD)
    return pytester.makepyfile(**{name: body})


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(path.read_text(encoding="utf-8"))


def run_pytest(root: Path, env: dict[str, str], *args: str) -> str:
    """A pytest run of its own (a subprocess in ``root``, for module-scoped fixtures that pytester,
    function-scoped, cannot serve); it must pass; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough for any report line: the tests assert whole lines as they read
    unwrapped; tests/test_width.py sets its own COLUMNS to test the fitting (issue 15, item 5)."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture
def no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run without ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL in the environment."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


# A small suite for the suite-level gate: two cached conversations, four parametrized ones and a
# test that never calls the API. Node ids: test_agent.py::test_refund, ::test_short,
# ::test_more[1]..[4], ::test_plain.
SUITE_AGENT = """
import anthropic
import pytest
from pytest_tokenbudget.emulator import Reply

SYSTEM_TEXT = "You are the refund agent of the shop. Check the order before refunding. " * 80
QUESTION = "Where is my order 42?"


def ask(turns, question=QUESTION):
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": question}]
    for k in range(turns):
        reply = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=messages,
            system=[{"type": "text", "text": SYSTEM_TEXT, "cache_control": {"type": "ephemeral"}}],
        )
        messages += [{"role": "assistant", "content": reply.content[0].text},
                     {"role": "user", "content": f"And then? ({k})"}]


def test_refund(anthropic_emulator):
    anthropic_emulator.script(*[Reply.text(f"Step {k}: checking the order.") for k in range(3)])
    ask(3)


def test_short(anthropic_emulator):
    anthropic_emulator.script(Reply.text("Shipped."))
    ask(1)


@pytest.mark.parametrize("turns", [1, 2, 3, 4])
def test_more(anthropic_emulator, turns):
    anthropic_emulator.script(*[Reply.text("ok") for _ in range(turns)])
    ask(turns)


def test_plain():
    assert True
"""


def record_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, body: str = SUITE_AGENT) -> None:
    """Record :data:`SUITE_AGENT` through the emulator, write its baseline, then block the network."""
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_agent=body)
    pytester.runpytest("-p", "no:cacheprovider", "--token-budget-record=once").assert_outcomes(passed=7)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    updated = pytester.runpytest("-p", "no:cacheprovider", "--token-budget-update")
    updated.assert_outcomes(passed=7)
    updated.stdout.fnmatch_lines(["  baseline tokenbudget-baseline.json: 6 test(s) written"])
