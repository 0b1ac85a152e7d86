"""End to end: recordings that show each cache verdict, read back from the JSON report.

Each scenario is a short agent run recorded through the emulator; the report of the recording run
(and of a replay of it) must carry the verdict, the level, the path and the offset.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import NETWORK_GUARD, read_json, run_pytest

pytestmark = pytest.mark.usefixtures("no_api_key")

SCENARIOS = '''
import anthropic
import pytest
from pytest_tokenbudget.emulator import Reply

POLICY = "Answer questions about orders. Be exact and brief. " * 120   # ~1,500 emulator tokens
TOOLS = [
    {"name": "get_order", "description": "Look up an order.", "input_schema": {"type": "object",
     "properties": {"order_id": {"type": "string"}}}},
    {"name": "refund", "description": "Refund an order.", "input_schema": {"type": "object",
     "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}}}},
]


def converse(emulator, turns, *, model="claude-sonnet-4-6", system=None, tools=None, tool_choice=None,
             gap_minutes=None, automatic=True, system_ttl=None):
    """A conversation of `turns` turns; the callables get the turn number."""
    emulator.script(*[Reply.text(f"answer {k}") for k in range(turns)])
    client = anthropic.Anthropic()
    messages = []
    for k in range(turns):
        if gap_minutes and k:
            emulator.clock.advance(minutes=gap_minutes(k))
        messages.append({"role": "user", "content": f"question {k}: what about order {k}?"})
        text = system(k) if system else POLICY
        control = {"type": "ephemeral", **({"ttl": system_ttl} if system_ttl else {})}
        kwargs = dict(model=model, max_tokens=64, messages=messages,
                      system=[{"type": "text", "text": text, "cache_control": control}])
        if tools:
            kwargs["tools"] = tools(k)
        if tool_choice and tool_choice(k):
            kwargs["tool_choice"] = tool_choice(k)
        if automatic:
            kwargs["cache_control"] = {"type": "ephemeral"}
        reply = client.messages.create(**kwargs)
        messages.append({"role": "assistant", "content": reply.content[0].text})


def test_clean_ten_turns(anthropic_emulator):
    converse(anthropic_emulator, 10)


def test_timestamp_in_system(anthropic_emulator):
    converse(anthropic_emulator, 3, system=lambda k: f"Now: 2026-11-25T10:0{k}:00Z. " + POLICY)


def test_tools_from_a_set(anthropic_emulator):
    converse(anthropic_emulator, 3, tools=lambda k: TOOLS if k % 2 == 0 else list(reversed(TOOLS)))


def test_below_minimum(anthropic_emulator):
    converse(anthropic_emulator, 3, model="claude-haiku-4-5", automatic=False)


def test_six_minute_gap(anthropic_emulator):
    converse(anthropic_emulator, 3, system_ttl="1h", gap_minutes=lambda k: 6 if k == 2 else 1)


def test_six_minute_gap_5m_only(anthropic_emulator):
    converse(anthropic_emulator, 2, gap_minutes=lambda k: 6)


def test_tool_choice_change(anthropic_emulator):
    converse(anthropic_emulator, 3, tools=lambda k: TOOLS,
             tool_choice=lambda k: {"type": "any"} if k == 2 else None)


def test_diagnostics(anthropic_emulator, token_ledger):
    anthropic_emulator.script(*[Reply.text(f"answer {k}") for k in range(3)])
    client = anthropic.Anthropic()
    previous = None
    for k in range(3):
        system = POLICY if k < 2 else "Changed policy. " + POLICY
        reply = client.beta.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, betas=["cache-diagnosis-2026-04-07"],
            system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "question"}],
            diagnostics={"previous_message_id": previous},
        )
        previous = reply.id
'''


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Record the scenarios once for the module (a real pytest run), then replay them with the report on.

    pytester is function-scoped; these runs are shared by the module's tests, so they use a
    subprocess of their own.
    """
    root = tmp_path_factory.mktemp("scenarios")
    (root / "conftest.py").write_text(NETWORK_GUARD)
    (root / "test_scenarios.py").write_text(SCENARIOS)
    (root / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}

    def run(*args: str) -> str:
        return run_pytest(root, env, *args)

    assert "8 passed" in run("--token-budget-record=once")
    env["TB_BLOCK_NETWORK"] = "1"
    assert "8 passed" in run("--token-budget-json=report.json")
    document = read_json(root / "report.json")
    return {t["id"].split("::")[1]: t for t in document["tests"]}


def _verdicts(test: dict[str, Any]) -> list[str]:
    return [turn["cache"]["verdict"] for turn in test["turns"]]


def test_clean_run_hits_on_every_turn_after_the_first(report: dict[str, Any]) -> None:
    """A clean 10-turn conversation writes on turn 0 and reads on every turn after it."""
    test = report["test_clean_ten_turns"]
    assert _verdicts(test) == ["write"] + ["hit"] * 9
    for turn in test["turns"]:
        predicted = turn["cache"]["predicted"]
        assert predicted["cache_read_input_tokens"] == turn["usage"]["cache_read_input_tokens"]
        assert predicted["cache_creation_input_tokens"] == turn["usage"]["cache_creation_input_tokens"]
    first = test["turns"][1]["cache"]["breakpoints"]
    assert [(b["level"], b["path"], b["ttl"], b["automatic"]) for b in first] == [
        ("system", "system[0]", "5m", False),
        ("messages", "messages[2].content", "5m", True),
    ]
    assert all(len(b["fingerprint"]) == 32 for b in first)


def test_timestamp_breaks_the_prefix_at_turn_one(report: dict[str, Any]) -> None:
    """A timestamp in the system prompt breaks the prefix on the next turn; path, offset and cause are named."""
    turns = report["test_timestamp_in_system"]["turns"]
    assert _verdicts(report["test_timestamp_in_system"]) == ["write", "prefix_changed", "prefix_changed"]
    cache = turns[1]["cache"]
    assert cache["level"] == "system_changed"
    assert cache["divergence"]["path"] == "system[0].text"
    assert cache["divergence"]["offset"] == 20
    assert cache["divergence"]["cause"] == "a timestamp or date in the prompt"
    assert cache["divergence"]["before"].startswith('"Now: 2026-11-25T10:00:00Z')
    assert cache["reason"].startswith("system_changed: system[0].text, offset 20:")


def test_reordered_tools_are_named(report: dict[str, Any]) -> None:
    """A tool list whose order changes invalidates everything at tools level, and says why."""
    test = report["test_tools_from_a_set"]
    # Turn 2 sends the tools in turn 0's order again, and reads what turn 0 cached.
    assert _verdicts(test) == ["write", "prefix_changed", "hit"]
    cache = test["turns"][1]["cache"]
    assert cache["level"] == "tools_changed"
    assert cache["divergence"]["path"] == "tools[0].name"
    assert cache["divergence"]["cause"] == "the tool list was reordered (built from a set or a dict?)"


def test_prefix_below_the_minimum_caches_nothing(report: dict[str, Any]) -> None:
    """A breakpoint below Haiku 4.5's 4,096-token minimum caches nothing, on every turn."""
    test = report["test_below_minimum"]
    assert _verdicts(test) == ["below_minimum"] * 3
    reason = test["turns"][0]["cache"]["reason"]
    assert reason.startswith("breakpoint at system[0] caches nothing: its prefix, ")
    assert reason.endswith("tokens, is below claude-haiku-4-5's minimum of 4,096")
    assert test["turns"][0]["cache"]["breakpoints"][0]["below_minimum"] is True


def test_six_minute_gap_expires_5m_but_not_1h(report: dict[str, Any]) -> None:
    """After a 6-minute gap the 1h system entry is read and the 5m conversation entry has expired."""
    test = report["test_six_minute_gap"]
    assert _verdicts(test) == ["write", "hit", "hit"]
    after_gap = test["turns"][2]
    assert (
        after_gap["usage"]["cache_read_input_tokens"]
        == test["turns"][0]["usage"]["cache_creation"]["ephemeral_1h_input_tokens"]
    )
    assert "up to system[0]" in after_gap["cache"]["reason"]
    assert "had expired" in after_gap["cache"]["reason"]
    only_5m = report["test_six_minute_gap_5m_only"]
    assert _verdicts(only_5m) == ["write", "expired"]
    assert (
        "expired before this turn (it expired 60 s before the turn started)" in only_5m["turns"][1]["cache"]["reason"]
    )


def test_tool_choice_change_keeps_tools_and_system(report: dict[str, Any]) -> None:
    """A tool_choice change reads tools and system from the cache but not the messages."""
    test = report["test_tool_choice_change"]
    assert _verdicts(test) == ["write", "hit", "hit"]
    changed = test["turns"][2]
    assert "up to system[0]" in changed["cache"]["reason"]
    assert changed["cache"]["divergence"]["path"] == "tool_choice"
    assert "messages_changed" in changed["cache"]["reason"]
    assert test["turns"][1]["cache"].get("divergence") is None


def test_api_diagnostics_side_by_side(report: dict[str, Any]) -> None:
    """Where the API gave its own cache_miss_reason, the verdict shows it next to ours and agrees."""
    turns = report["test_diagnostics"]["turns"]
    assert [t["cache"]["api"] for t in turns] == [
        {"cache_miss_reason": "null", "agrees": True},
        {"cache_miss_reason": "null", "agrees": True},
        {"cache_miss_reason": "system_changed", "agrees": True},
    ]
    assert turns[2]["cache"]["level"] == "system_changed"
    assert turns[2]["diagnostics"]["cache_miss_reason"]["type"] == "system_changed"


REAL = Path(__file__).resolve().parents[2] / "shared" / "real-cassettes"


@pytest.mark.skipif(not REAL.is_dir(), reason="the real recordings (../shared/real-cassettes) are not here")
def test_verdicts_on_real_recordings_match_what_the_api_reported() -> None:
    """On every turn of every real recording, the predicted cache reads and writes equal the recorded ones."""
    from pytest_tokenbudget.analysis import analyze
    from pytest_tokenbudget.cassette import iter_cassette_files, load_cassette
    from pytest_tokenbudget.ledger import turns_from

    verdicts: Counter[str] = Counter()
    exact = estimated = 0
    for path in iter_cassette_files([REAL]):
        for result in analyze(turns_from(load_cassette(path).interactions)).turns:
            verdicts[result.verdict] += 1
            assert result.matches_recording, (path.name, result)
            if result.breakpoints:
                exact += not result.predicted_estimated
                estimated += result.predicted_estimated
    assert verdicts == {"no_cache_control": 66, "write": 12, "hit": 12}
    # First writes are estimates (the few tokens the API counts after the last block are learnt
    # from that very turn); every read is predicted exactly from the turn that wrote it.
    assert (exact, estimated) == (12, 12)
    prompt_caching = (
        REAL / "openllmetry/packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_prompt_caching"
    )
    for path in iter_cassette_files([prompt_caching]):
        results = analyze(turns_from(load_cassette(path).interactions)).turns
        assert [r.verdict for r in results] == ["write", "hit"], path.name
        assert results[1].predicted_read == results[1].recorded_read == results[0].recorded_write
