"""End to end: the gate's estimate of a changed prompt against the truth, for a matrix of changes.

Each scenario is one test of one agent project. The project is recorded through the emulator
and a baseline written; then every test's prompt is changed and the gate runs offline (its
costs are estimates from the old recordings); then the same changed project is re-recorded
through the emulator (the truth). Every estimated cost must be within 3% of the truth.
"""

from __future__ import annotations

import textwrap
from decimal import Decimal
from typing import Any

import pytest
from conftest import NETWORK_GUARD, read_json

pytestmark = pytest.mark.usefixtures("no_api_key")

AGENT = """
import anthropic
from pytest_tokenbudget.emulator import Reply

POLICY = "Refunds above 100 EUR need a reason; orders older than 30 days go to a human. "
TOOLS = [
    {"name": "search_orders", "description": "Find orders by id or e-mail. " * 30,
     "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}},
                      "required": ["order_id"]}},
    {"name": "refund", "description": "Refund one order line. " * 30,
     "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"},
                                                       "amount": {"type": "number"}}}},
]
EXTRA_TOOL = {"name": "escalate", "description": "Hand the case to a human agent. " * 40,
              "input_schema": {"type": "object", "properties": {"reason": {"type": "string"}}}}
HISTORY = [m for k in range(5) for m in (
    {"role": "user", "content": f"Earlier question {k}: where is parcel {k}? " * 6},
    {"role": "assistant", "content": f"Parcel {k} left the depot on day {k}. " * 6},
)]


def run(emulator, *, model="claude-sonnet-4-6", policy=40, tools=TOOLS, cache="5m", history=(),
        tail=""):
    # Denser JSON than prose, as a real tokenizer counts it: the estimate must learn each density.
    emulator.chars_per_token = {"tools": 2.5, "tool_use": 3.0, "tool_result": 3.5, "text": 4.0}
    emulator.script(Reply.tool_use("search_orders", {"order_id": "42"}),
                    Reply.text("Order 42 is on its way."), Reply.text("Anything else?"))
    client = anthropic.Anthropic()
    system = {"type": "text", "text": "You are the refund agent of the shop. " + POLICY * policy}
    if cache == "1h":
        system["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    elif cache == "5m":
        system["cache_control"] = {"type": "ephemeral"}
    messages = [*history, {"role": "user", "content": "Where is my order 42?" + tail}]
    for k in range(3):
        reply = client.messages.create(model=model, max_tokens=128, system=[system], tools=tools,
                                       messages=messages)
        messages.append({"role": "assistant",
                         "content": [b.model_dump(exclude_none=True, mode="json") for b in reply.content]})
        if reply.stop_reason == "tool_use":
            messages.append({"role": "user", "content": [{
                "type": "tool_result", "tool_use_id": reply.content[0].id,
                "content": "order 42: 2 lines, shipped on Monday, parcel GLS-7781. " * 12}]})
        else:
            messages.append({"role": "user", "content": f"And then? ({k})"})
"""

# name: (the recorded call, the changed call)
SCENARIOS: dict[str, tuple[str, str]] = {
    "system_plus_25pct": ("run(anthropic_emulator)", "run(anthropic_emulator, policy=50)"),
    "system_cut_to_a_third": ("run(anthropic_emulator)", "run(anthropic_emulator, policy=13)"),
    "one_tool_added": ("run(anthropic_emulator)", "run(anthropic_emulator, tools=[*TOOLS, EXTRA_TOOL])"),
    "one_tool_schema_changed": (
        "run(anthropic_emulator)",
        'run(anthropic_emulator, tools=[TOOLS[0], {**TOOLS[1], "input_schema": {"type": "object", '
        '"properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}, '
        '"reason": {"type": "string", "description": "why the refund is due, in one sentence"}}}}])',
    ),
    "model_switch_no_cache": (
        'run(anthropic_emulator, model="claude-haiku-4-5", cache=None)',
        'run(anthropic_emulator, model="claude-opus-4-1", cache=None)',
    ),
    "model_switch_cached": (
        'run(anthropic_emulator, model="claude-haiku-4-5", policy=80)',
        'run(anthropic_emulator, model="claude-sonnet-4-6", policy=80)',
    ),
    "five_turns_of_history_added": ("run(anthropic_emulator)", "run(anthropic_emulator, history=HISTORY)"),
    "ttl_1h_to_5m": ('run(anthropic_emulator, cache="1h")', 'run(anthropic_emulator, cache="5m")'),
    "tail_edited": ("run(anthropic_emulator)", 'run(anthropic_emulator, tail=" It was a gift.")'),
}


def _module(which: int) -> str:
    tests = "".join(
        f"\n\ndef test_{name}(anthropic_emulator):\n    {calls[which]}\n" for name, calls in SCENARIOS.items()
    )
    return textwrap.dedent(AGENT) + tests


def _costs(report: dict[str, Any]) -> dict[str, tuple[Decimal, dict[str, int]]]:
    out = {}
    for test in report["tests"]:
        name = test["id"].split("::test_", 1)[1]
        out[name] = (Decimal(str(test["totals"]["cost_usd"])), test["totals"])
    return out


def test_every_estimate_is_within_3_percent_of_the_re_recorded_truth(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_agent=_module(0))
    run = pytester.runpytest
    run("-p", "no:cacheprovider", "--token-budget-record=once").assert_outcomes(passed=len(SCENARIOS))
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    run("-p", "no:cacheprovider", "--token-budget-update").assert_outcomes(passed=len(SCENARIOS))
    run("-p", "no:cacheprovider", "--token-budget", "--token-budget-json=before.json").assert_outcomes(
        passed=len(SCENARIOS)
    )
    before = _costs(read_json(pytester.path / "before.json"))

    pytester.makepyfile(test_agent=_module(1))
    run("-p", "no:cacheprovider", "--token-budget", "--token-budget-json=estimate.json")
    estimate = _costs(read_json(pytester.path / "estimate.json"))
    estimated_turns = {
        t["id"].split("::test_", 1)[1]: ["estimated" in turn.get("cache", {}) for turn in t["turns"]]
        for t in read_json(pytester.path / "estimate.json")["tests"]
    }

    monkeypatch.delenv("TB_BLOCK_NETWORK")
    run("-p", "no:cacheprovider", "--token-budget-record=all", "--token-budget-json=truth.json")
    truth = _costs(read_json(pytester.path / "truth.json"))

    rows = []
    worst = Decimal(0)
    for name in SCENARIOS:
        est, true = estimate[name][0], truth[name][0]
        error = (est - true) / true * 100
        worst = max(worst, abs(error))
        rows.append(
            f"{name:<30} {before[name][0]:>10.6f} {est:>10.6f} {true:>10.6f} {error:>+7.2f}% "
            f"{(true - before[name][0]) / before[name][0] * 100:>+8.1f}%"
        )
    table = "\n".join(
        [f"{'scenario':<30} {'recorded':>10} {'estimate':>10} {'truth':>10} {'error':>8} {'change':>9}", *rows]
    )
    print(table)
    assert all(any(flags) for flags in estimated_turns.values()), estimated_turns
    assert worst <= 3, table

    # Tail edited: the cached prefix is unchanged, so its recorded token count holds exactly.
    def prefix_tokens(report: str) -> list[tuple[int, bool]]:
        test = next(t for t in read_json(pytester.path / report)["tests"] if t["id"].endswith("tail_edited"))
        return [(b["tokens"], b["tokens_estimated"]) for turn in test["turns"] for b in turn["cache"]["breakpoints"]]

    assert [tokens for tokens, _estimated in prefix_tokens("truth.json")][1:] == [1533, 1533]
    assert prefix_tokens("estimate.json") == [(1533, False), (1533, False), (1533, False)]


def _one_test(pytester: pytest.Pytester, call: str) -> None:
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_agent=textwrap.dedent(AGENT) + f"\n\ndef test_agent(anthropic_emulator):\n    {call}\n")


def _recorded_with_baseline(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    _one_test(pytester, call)
    pytester.runpytest("-p", "no:cacheprovider", "--token-budget-record=once").assert_outcomes(passed=1)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    pytester.runpytest("-p", "no:cacheprovider", "--token-budget-update").assert_outcomes(passed=1)


def test_a_model_switch_is_priced_at_the_model_now_asked_for(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cache_control, claude-haiku-4-5 ($1/$5) switched to claude-opus-4-1 ($15/$75): the gate fails offline."""
    _recorded_with_baseline(pytester, monkeypatch, 'run(anthropic_emulator, model="claude-haiku-4-5", cache=None)')
    _one_test(pytester, 'run(anthropic_emulator, model="claude-opus-4-1", cache=None)')
    result = pytester.runpytest("-p", "no:cacheprovider", "--token-budget", "--token-budget-json=r.json")
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*- cost $0.078960 (estimated) vs baseline $0.005264 (+$0.073696, +1400.0%): over the +10% threshold",
            "*fix:  if intended, accept it:*",
        ]
    )
    turns = read_json(pytester.path / "r.json")["tests"][0]["turns"]
    assert [t["model"] for t in turns] == ["claude-opus-4-1"] * 3
    assert [t["price"]["model_ref"] for t in turns] == ["claude-opus-4-1"] * 3
    assert (
        "priced at claude-opus-4-1, the model it now asks for (recorded: claude-haiku-4-5)"
        in (turns[0]["cache"]["estimated"]["method"])
    )


def test_a_grown_system_prompt_is_estimated_close_to_the_truth_and_fails_at_20_percent(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system prompt grown by half (no caching): estimated and re-recorded cost agree within 3%."""
    _recorded_with_baseline(pytester, monkeypatch, "run(anthropic_emulator, cache=None)")
    (pytester.path / "tokenbudget.yaml").write_text("defaults:\n  max_cost_increase: 0.20\n")
    _one_test(pytester, "run(anthropic_emulator, cache=None, policy=60)")
    result = pytester.runpytest("-p", "no:cacheprovider", "--token-budget", "--token-budget-json=estimate.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*- cost $0.019410 (estimated) vs baseline $0.015792 (+$0.003618, +22.9%): over the +20% threshold"]
    )
    monkeypatch.delenv("TB_BLOCK_NETWORK")
    pytester.runpytest("-p", "no:cacheprovider", "--token-budget-record=all", "--token-budget-json=truth.json")
    estimate = Decimal(str(read_json(pytester.path / "estimate.json")["totals"]["cost_usd"]))
    truth = Decimal(str(read_json(pytester.path / "truth.json")["totals"]["cost_usd"]))
    assert (estimate, truth) == (Decimal("0.019410"), Decimal("0.019302"))  # +22.9% estimated, +22.2% true


BATCH = """
import anthropic
from pytest_tokenbudget.emulator import Reply

MODEL = "claude-haiku-4-5"


def test_nightly(anthropic_emulator):
    anthropic_emulator.script(Reply.text("Refunded."), Reply.text("Shipped."))
    client = anthropic.Anthropic()
    batch = client.messages.batches.create(requests=[
        {"custom_id": f"ticket-{k}", "params": {"model": MODEL, "max_tokens": 64, "messages": [
            {"role": "user", "content": f"Summarise ticket {k}: " + "the customer asked about a parcel. " * 40}]}}
        for k in range(2)
    ])
    client.messages.batches.retrieve(batch.id)
    list(client.messages.batches.results(batch.id))
"""


def test_a_changed_batch_request_is_priced_at_its_new_model_and_batch_rates(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The requests inside a batch switch model: each batch turn is estimated and priced at the new model's batch rate."""
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_batch=BATCH)
    pytester.runpytest("-p", "no:cacheprovider", "--token-budget-record=once").assert_outcomes(passed=1)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    pytester.runpytest("-p", "no:cacheprovider", "--token-budget-update").assert_outcomes(passed=1)
    pytester.makepyfile(test_batch=BATCH.replace('MODEL = "claude-haiku-4-5"', 'MODEL = "claude-sonnet-4-6"'))
    result = pytester.runpytest("-p", "no:cacheprovider", "--token-budget", "--token-budget-json=estimate.json")
    result.assert_outcomes(failed=1)
    # Sonnet 4.6 at batch rates ($1.50/$7.50 per MTok) is 3x Haiku 4.5's ($0.50/$2.50).
    result.stdout.fnmatch_lines(
        ["*- cost $0.001126 (estimated) vs baseline $0.000376 (+$0.000751, +200.0%): over the +10% threshold"]
    )
    turns = read_json(pytester.path / "estimate.json")["tests"][0]["turns"]
    assert [(t["endpoint"], t["model"], "estimated" in t["cache"]) for t in turns] == [
        ("batch", "claude-sonnet-4-6", True),
        ("batch", "claude-sonnet-4-6", True),
    ]
    monkeypatch.delenv("TB_BLOCK_NETWORK")
    pytester.runpytest("-p", "no:cacheprovider", "--token-budget-record=all", "--token-budget-json=truth.json")
    estimate = read_json(pytester.path / "estimate.json")["totals"]
    truth = read_json(pytester.path / "truth.json")["totals"]
    assert (estimate["cost_usd"], estimate["input_tokens"]) == (truth["cost_usd"], truth["input_tokens"])
