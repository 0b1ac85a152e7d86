"""Usage the API reports outside the top-level counts (issue 13, item 4): ``usage.iterations``,
context editing's ``applied_edits``, ``server_tool_use``, ``service_tier``, ``speed`` and
``inference_geo``; typed in the ledger, priced, and in the JSON report, recorded end to end
through the emulator with the real SDK.

Prices (USD per million tokens, genai-prices 0.2.3 = Anthropic's price list): Opus 4.6 input 5,
5m write 6.25, read 0.5, output 25; Haiku 4.5 input 1, output 5, batch half; web search USD 10
per 1,000 requests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from conftest import NETWORK_GUARD, read_json
from hypothesis import example, given
from hypothesis import strategies as st

from pytest_tokenbudget.cassette import Body, Interaction
from pytest_tokenbudget.ledger import AppliedEdit, applied_edits_of, iterations_of, turns_from
from pytest_tokenbudget.pricing import ITERATIONS, Pricer
from pytest_tokenbudget.reports import validate_report

NOW = datetime(2026, 11, 20, tzinfo=UTC)
M = Decimal(1_000_000)


@pytest.fixture
def pricer() -> Pricer:
    return Pricer(now=NOW)


def _interaction(response: bytes, content_type: str, request: dict[str, Any] | None = None) -> Interaction:
    import json

    return Interaction(
        index=0,
        method="POST",
        uri="https://api.anthropic.com/v1/messages",
        request_headers={},
        request_body=Body(json.dumps(request or {"model": "claude-opus-4-6", "max_tokens": 8}).encode()),
        status=200,
        reason="OK",
        response_headers={"content-type": [content_type]},
        response_body=Body(response),
    )


# ------------------------------------------------------------------------------------ ledger


COMPACTED_USAGE = {
    "input_tokens": 120,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 4000,
    "output_tokens": 300,
    "iterations": [
        {
            "type": "compaction",
            "input_tokens": 150000,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "output_tokens": 2500,
        },
        {
            "type": "message",
            "input_tokens": 120,
            "cache_read_input_tokens": 4000,
            "cache_creation_input_tokens": 0,
            "output_tokens": 300,
        },
    ],
}


def test_iterations_are_typed_with_what_the_top_level_holds() -> None:
    """usage.iterations: message entries are in the top level, compaction is billed outside it."""
    entries = iterations_of(COMPACTED_USAGE)
    assert [(i.position, i.kind, i.in_top_level, i.billed_outside_top_level) for i in entries] == [
        (0, "compaction", False, True),
        (1, "message", True, False),
    ]
    assert entries[0].counts.total_input_tokens == 150000
    assert entries[0].counts.output_tokens == 2500
    assert iterations_of({"input_tokens": 1, "output_tokens": 1}) == ()


def test_applied_edits_are_typed() -> None:
    """context_management.applied_edits: each edit's type and cleared counts."""
    edits = applied_edits_of(
        {
            "applied_edits": [
                {"type": "clear_tool_uses_20250919", "cleared_tool_uses": 3, "cleared_input_tokens": 1200},
                {"type": "clear_thinking_20251015", "cleared_thinking_turns": 2, "cleared_input_tokens": 800},
            ]
        }
    )
    assert edits == (
        AppliedEdit("clear_tool_uses_20250919", 1200, cleared_tool_uses=3),
        AppliedEdit("clear_thinking_20251015", 800, cleared_thinking_turns=2),
    )
    assert applied_edits_of(None) == ()


def test_a_stream_takes_iterations_and_context_management_from_message_delta() -> None:
    """Beta streams send iterations in message_delta.usage and context_management on the event:
    they overwrite, as the SDK's beta accumulator does."""
    start = (
        '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
        '"model":"claude-opus-4-6","content":[],"stop_reason":null,"usage":{"input_tokens":5,'
        '"output_tokens":1,"iterations":[]}}}'
    )
    delta = (
        '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"context_management":{"applied_edits":'
        '[{"type":"clear_tool_uses_20250919","cleared_tool_uses":1,"cleared_input_tokens":640}]},'
        '"usage":{"input_tokens":5,"output_tokens":7,"iterations":[{"type":"compaction","input_tokens":900,'
        '"output_tokens":40},{"type":"message","input_tokens":5,"output_tokens":7}]}}'
    )
    sse = f"event: message_start\ndata: {start}\n\nevent: message_delta\ndata: {delta}\n\n"
    sse += 'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    turn = turns_from([_interaction(sse.encode(), "text/event-stream")]).turns[0]
    assert [(i.kind, i.counts.uncached_input_tokens, i.counts.output_tokens) for i in turn.iterations] == [
        ("compaction", 900, 40),
        ("message", 5, 7),
    ]
    assert turn.cleared_input_tokens == 640
    assert turn.applied_edits[0].cleared_tool_uses == 1
    totals = turn.totals()
    assert (totals.iterations_input_tokens, totals.iterations_output_tokens, totals.cleared_input_tokens) == (
        900,
        40,
        640,
    )
    assert (totals.input_tokens, totals.output_tokens) == (5, 7)


# ------------------------------------------------------------------------------------ pricing


def test_compaction_is_priced_on_top_of_the_top_level(pricer: Pricer) -> None:
    """A compaction entry's tokens are billed outside the top level: priced at the turn's model."""
    cost = pricer.price_usage("claude-opus-4-6", COMPACTED_USAGE)
    top = (120 * 5 + 4000 * Decimal("0.5") + 300 * 25) / M  # 0.0101
    compaction = (150000 * 5 + 2500 * 25) / M  # 0.8125
    assert cost.breakdown[ITERATIONS] == compaction == Decimal("0.8125")
    assert cost.cost_usd == top + compaction == Decimal("0.8226")
    assert [(i.position, i.kind, i.model, i.cost_usd) for i in cost.iterations] == [
        (0, "compaction", "claude-opus-4-6", Decimal("0.8125"))
    ]
    assert cost.notes == (
        "usage.iterations[0] compaction: 150,000 input + 2,500 output tokens billed outside the top-level "
        "usage, priced at the turn's model claude-opus-4-6 ($0.8125) (UNSURE: the entry names no model)",
        "usage.iterations: the turn's service tier, speed and inference_geo applied to them (UNSURE)",
    )


def test_an_advisor_entry_is_priced_at_its_own_model_with_the_turn_context(pricer: Pricer) -> None:
    """advisor_message at its model's rates, with the turn's inference_geo uplift (x1.1 on 4.6+)."""
    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "inference_geo": "us",
        "iterations": [
            {
                "type": "advisor_message",
                "model": "claude-opus-4-6",
                "input_tokens": 1000,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 0,
                "output_tokens": 50,
            },
            {
                "type": "message",
                "input_tokens": 10,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "output_tokens": 5,
            },
        ],
    }
    cost = pricer.price_usage("claude-sonnet-4-6", usage)
    advisor = (1000 * 5 + 2000 * Decimal("0.5") + 50 * 25) / M * Decimal("1.1")  # 0.007975
    top = (10 * 3 + 5 * 15) / M * Decimal("1.1")  # 0.0001155
    assert cost.iterations[0].cost_usd == advisor == Decimal("0.007975")
    assert cost.cost_usd == top + advisor == Decimal("0.0080905")


def test_fallback_and_unknown_entries_are_not_added_and_a_mismatch_is_noted(pricer: Pricer) -> None:
    """fallback_message is taken as in the top level (UNSURE); an unknown type is not priced; when
    the in-top-level entries do not sum to the top level, the notes say so."""
    usage = {
        "input_tokens": 100,
        "output_tokens": 10,
        "iterations": [
            {"type": "message", "input_tokens": 60, "output_tokens": 4},
            {"type": "fallback_message", "model": "claude-sonnet-4-6", "input_tokens": 30, "output_tokens": 6},
            {"type": "future_kind", "input_tokens": 5000, "output_tokens": 5000},
        ],
    }
    cost = pricer.price_usage("claude-opus-4-6", usage)
    assert cost.cost_usd == (100 * 5 + 10 * 25) / M == Decimal("0.00075")
    assert ITERATIONS not in cost.breakdown
    assert cost.notes == (
        "usage.iterations: 1 future_kind of an unknown type not priced (UNSURE)",
        "usage.iterations: fallback_message taken as part of the top-level usage (UNSURE)",
        "usage.iterations: message entries sum to input/cache write/cache read/output 90/0/0/10, "
        "the top level says 100/0/0/10; priced from the top level (UNSURE)",
    )


def test_web_fetch_costs_only_its_tokens_and_web_search_is_per_request(pricer: Pricer) -> None:
    """server_tool_use: 3 searches at USD 10 per 1,000; fetches add nothing beyond tokens."""
    usage = {
        "input_tokens": 1000,
        "output_tokens": 100,
        "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 4},
    }
    cost = pricer.price_usage("claude-opus-4-6", usage)
    assert cost.breakdown["web_search"] == Decimal("0.03")
    assert cost.cost_usd == (1000 * 5 + 100 * 25) / M + Decimal("0.03") == Decimal("0.0375")


# ------------------------------------------------------------------------------------ end to end

AGENT = """
import anthropic
from pytest_tokenbudget.emulator import Reply

SYSTEM = [{"type": "text", "text": "You research shipping rules. " * 400, "cache_control": {"type": "ephemeral"}}]
SEARCH = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]


def test_research(anthropic_emulator):
    anthropic_emulator.script(
        Reply.blocks([
            {"type": "server_tool_use", "name": "web_search", "input": {"query": "EU parcel rules"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "server_tool_use", "name": "web_search", "input": {"query": "EU parcel rules 2026"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_2", "content": []},
            {"type": "text", "text": "Parcels under 2 kg ship untracked."},
        ]),
        Reply.text("Summary: untracked below 2 kg.").with_iterations(
            {"type": "compaction", "input_tokens": 150000, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": 0, "output_tokens": 2500},
        ).with_applied_edits(
            {"type": "clear_tool_uses_20250919", "cleared_tool_uses": 2, "cleared_input_tokens": 1200},
        ),
        Reply.text("Advised answer.").with_iterations(
            {"type": "message", "input_tokens": 40, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": 0, "output_tokens": 12},
            {"type": "advisor_message", "model": "claude-opus-4-6", "input_tokens": 900,
             "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "output_tokens": 60},
        ),
    )
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": "What are the EU parcel rules?"}]
    first = client.messages.create(model="claude-opus-4-6", max_tokens=256, system=SYSTEM, tools=SEARCH,
                                   messages=messages, extra_body={"inference_geo": "us"})
    messages += [{"role": "assistant", "content": first.content[-1].text}, {"role": "user", "content": "Summarise."}]
    with client.messages.stream(model="claude-opus-4-6", max_tokens=256, system=SYSTEM, messages=messages) as s:
        s.get_final_message()
    messages += [{"role": "assistant", "content": "Summary."}, {"role": "user", "content": "Ask the advisor."}]
    client.messages.create(model="claude-opus-5", max_tokens=256, messages=messages,
                           extra_body={"speed": "fast"})
"""


def test_usage_outside_the_top_level_end_to_end(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded through the emulator with the real SDK, replayed offline: the JSON report types and
    prices web searches, inference_geo, a compaction (streamed, with a context-editing clear), an
    advisor entry and fast mode, with exact numbers."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_research=AGENT)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--token-budget-record=once").assert_outcomes(passed=1)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--token-budget", "--token-budget-json=report.json"
    )
    result.assert_outcomes(passed=1)
    document = read_json(pytester.path / "report.json")
    validate_report(document)
    test = document["tests"][0]
    turns = test["turns"]
    top = [
        (t["usage"]["input_tokens"], t["usage"]["cache_read_input_tokens"], t["usage"]["output_tokens"]) for t in turns
    ]
    # the emulator's token counts (server tool results in a reply are not model output); turn 2's
    # top level is the sum of its two message entries
    assert top == [(2938, 0, 30), (2950, 0, 8), (106, 0, 16)]
    assert [t["usage_details"]["iterations"][-1]["input_tokens"] for t in turns[1:]] == [2950, 66]

    # turn 0: two web searches (USD 10 per 1,000) and inference_geo "us" (x1.1 on Opus 4.6 tokens)
    geo = Decimal("1.1")
    first = (2938 * 5 * geo + 30 * 25 * geo) / M + Decimal("0.02")
    assert Decimal(str(turns[0]["cost_usd"])) == first == Decimal("0.036984")
    assert turns[0]["cost_breakdown"]["web_search"] == 0.02
    details = turns[0]["usage_details"]
    assert (details["web_search_requests"], details["inference_geo"], details["service_tier"]) == (2, "us", "standard")

    # turn 1 (streamed): the compaction's 150,000 + 2,500 tokens billed outside the top level
    compaction = (150000 * 5 + 2500 * 25) / M
    second = (2950 * 5 + 8 * 25) / M + compaction
    assert Decimal(str(turns[1]["cost_usd"])) == second == Decimal("0.82745")
    assert turns[1]["cost_breakdown"]["iterations"] == 0.8125
    details = turns[1]["usage_details"]
    assert [(i["type"], i["billed_outside_top_level"], i.get("cost_usd")) for i in details["iterations"]] == [
        ("compaction", True, 0.8125),
        ("message", False, None),
    ]
    assert details["applied_edits"] == [
        {
            "type": "clear_tool_uses_20250919",
            "cleared_input_tokens": 1200,
            "cleared_tool_uses": 2,
            "cleared_thinking_turns": None,
        }
    ]
    assert "(UNSURE: the entry names no model)" in turns[1]["price"]["notes"][0]

    # turn 2: Opus 5 in fast mode (10/50), its advisor entry at Opus 4.6's rates
    advisor = (900 * 5 + 60 * 25) / M
    third = (106 * 10 + 16 * 50) / M + advisor
    assert Decimal(str(turns[2]["cost_usd"])) == third == Decimal("0.00786")
    assert turns[2]["usage_details"]["speed"] == "fast"
    assert turns[2]["usage_details"]["iterations"][1]["priced_model"] == "claude-opus-4-6"

    totals = test["totals"]
    assert (totals["input_tokens"], totals["output_tokens"]) == (5994, 54)
    assert (totals["iterations_input_tokens"], totals["iterations_output_tokens"]) == (150900, 2560)
    assert totals["cleared_input_tokens"] == 1200
    assert Decimal(str(totals["cost_usd"])) == first + second + third


# ------------------------------------------------------------------------------------ parsers

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "compaction", "advisor_message", "fallback_message", "x"]) | _JSON,
        "model": _JSON,
        "input_tokens": st.integers(0, 10**7) | _JSON,
        "output_tokens": st.integers(0, 10**7) | _JSON,
        "cache_read_input_tokens": st.integers(0, 10**7) | _JSON,
        "cleared_input_tokens": st.integers(0, 10**7) | _JSON,
        "cleared_tool_uses": _JSON,
    },
)


@given(entries=st.lists(_ENTRY | _JSON, max_size=6) | _JSON)
@example(entries=[{"type": None, "input_tokens": True}])
def test_usage_parsers_take_any_json(entries: Any) -> None:
    """iterations_of and applied_edits_of never raise on what a cassette may hold: one typed entry
    per object, counts that are not integers (booleans included) read as 0."""
    iterations = iterations_of({"iterations": entries})
    edits = applied_edits_of({"applied_edits": entries})
    objects = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    assert len(iterations) == len(edits) == len(objects)
    for item, entry in zip(iterations, objects, strict=True):
        value = entry.get("input_tokens")
        expected = value if isinstance(value, int) and not isinstance(value, bool) else 0
        assert item.counts.uncached_input_tokens == expected
    for edit, entry in zip(edits, objects, strict=True):
        value = entry.get("cleared_input_tokens")
        assert edit.cleared_input_tokens == (value if isinstance(value, int) and not isinstance(value, bool) else 0)
