"""Pricing: genai-prices conversion, Anthropic's rules, override files (exact Decimal numbers).

Worked examples are computed from genai-prices 0.2.3's bundled data and Anthropic's published
multipliers (cache write 1.25x/2x, read 0.1x, batch 0.5x).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import genai_prices
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_tokenbudget.errors import ConfigError, PriceError
from pytest_tokenbudget.ledger import Turn
from pytest_tokenbudget.pricing import COMPONENTS, UNATTRIBUTED, Pricer, TurnCost, load_price_file

NOV_2026 = datetime(2026, 11, 20, tzinfo=UTC)
SEP_2025 = datetime(2025, 9, 30, tzinfo=UTC)

WRITE_USAGE = {
    "input_tokens": 4,
    "cache_creation_input_tokens": 1163,
    "cache_read_input_tokens": 0,
    "output_tokens": 187,
}
READ_USAGE = {
    "input_tokens": 4,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 1163,
    "output_tokens": 202,
}
TTL_USAGE = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 3000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    "cache_read_input_tokens": 20000,
    "output_tokens": 500,
    "server_tool_use": {"web_search_requests": 2},
}


def make_turn(
    model: str,
    usage: Mapping[str, Any],
    *,
    endpoint: str = "messages",
    recorded_at: float | None = None,
    incomplete: bool = False,
) -> Turn:
    return Turn(
        index=0,
        exchange=0,
        endpoint=endpoint,
        model=model,
        requested_model=model,
        stream=False,
        usage=usage,
        recorded_at=recorded_at,
        incomplete=incomplete,
    )


def breakdown(**amounts: str) -> dict[str, Decimal]:
    out = {name: Decimal(0) for name in COMPONENTS}
    out.update({name: Decimal(value) for name, value in amounts.items()})
    return out


def input_side(cost: TurnCost) -> Decimal:
    return sum((cost.breakdown[k] for k in ("input", "cache_write_5m", "cache_write_1h", "cache_read")), Decimal(0))


@pytest.fixture
def pricer() -> Pricer:
    return Pricer(now=NOV_2026)


# --------------------------------------------------------------------------------------------
# worked examples (genai-prices 0.2.3 data)


def test_cache_write_turn(pricer: Pricer) -> None:
    """The recorded write turn costs 0.00717825: input side 0.00437325, output 0.002805."""
    cost = pricer.price(make_turn("claude-3-5-sonnet-20240620", WRITE_USAGE))
    assert cost.cost_usd == Decimal("0.00717825")
    assert input_side(cost) == Decimal("0.00437325")
    assert cost.breakdown == breakdown(input="0.000012", cache_write_5m="0.00436125", output="0.002805")
    assert cost.model_ref == "claude-3-5-sonnet"
    assert cost.source == "genai-prices"
    assert cost.notes == ()


def test_cache_read_turn(pricer: Pricer) -> None:
    """The recorded read turn costs 0.0033909; both turns 0.01056915."""
    cost = pricer.price(make_turn("claude-3-5-sonnet-20240620", READ_USAGE))
    assert cost.cost_usd == Decimal("0.0033909")
    assert input_side(cost) == Decimal("0.0003609")
    assert cost.breakdown == breakdown(input="0.000012", cache_read="0.0003489", output="0.00303")
    write = pricer.price(make_turn("claude-3-5-sonnet-20240620", WRITE_USAGE))
    assert write.cost_usd + cost.cost_usd == Decimal("0.01056915")


def test_ttl_split_and_web_search(pricer: Pricer) -> None:
    """5m and 1h writes at their own rates plus 2 searches: 0.04928, of which 0.02 search."""
    cost = pricer.price(make_turn("claude-sonnet-4-5-20250929", TTL_USAGE))
    assert cost.cost_usd == Decimal("0.04928")
    assert input_side(cost) == Decimal("0.02178")
    assert cost.breakdown == breakdown(
        input="0.00003",
        cache_write_5m="0.00375",
        cache_write_1h="0.012",
        cache_read="0.006",
        output="0.0075",
        web_search="0.02",
    )
    assert cost.model_ref == "claude-sonnet-4-5"


def test_same_result_as_genai_prices_extract_usage(pricer: Pricer) -> None:
    """Our conversion agrees with genai-prices' own Anthropic extractor on the worked example."""
    extracted = genai_prices.extract_usage(
        {"model": "claude-sonnet-4-5-20250929", "usage": TTL_USAGE}, provider_id="anthropic"
    )
    expected = extracted.calc_price(genai_request_timestamp=NOV_2026).total_price
    assert pricer.price_usage("claude-sonnet-4-5-20250929", TTL_USAGE).cost_usd == expected


# --------------------------------------------------------------------------------------------
# batch, fast, priority, geo, long context


def test_batch_turn_after_genai_batch_dates(pricer: Pricer) -> None:
    """A batch result in Nov 2026 is half price on tokens, full price on search: 0.03464."""
    cost = pricer.price(make_turn("claude-sonnet-4-5-20250929", TTL_USAGE, endpoint="batch"))
    assert cost.cost_usd == Decimal("0.03464")
    assert cost.breakdown["web_search"] == Decimal("0.02")
    assert cost.breakdown["output"] == Decimal("0.00375")
    assert cost.notes == ("batch: 50% of standard token prices (genai-prices); web search at full price",)


def test_batch_from_usage_service_tier(pricer: Pricer) -> None:
    """usage.service_tier == "batch" selects batch prices even without the batch endpoint."""
    cost = pricer.price_usage("claude-sonnet-4-5-20250929", {**TTL_USAGE, "service_tier": "batch"})
    assert cost.cost_usd == Decimal("0.03464")


def test_batch_before_genai_batch_dates_is_standard_with_a_note(pricer: Pricer) -> None:
    """genai-prices dates batch prices from 2026-10-14: at 2025-09-30 standard, said in the notes."""
    cost = pricer.price_usage("claude-sonnet-4-5-20250929", TTL_USAGE, batch=True, at=SEP_2025)
    assert cost.cost_usd == Decimal("0.04928")
    assert len(cost.notes) == 1
    assert "only from 2026-10-14" in cost.notes[0]
    assert "priced at standard rates for 2025-09-30" in cost.notes[0]
    assert "UNSURE" in cost.notes[0]


def test_batch_on_a_model_without_batch_prices_says_so(pricer: Pricer) -> None:
    """Retired models have no genai-prices batch variant: standard price, noted."""
    cost = pricer.price_usage("claude-3-5-sonnet-20240620", WRITE_USAGE, batch=True)
    assert cost.cost_usd == Decimal("0.00717825")
    assert cost.notes == (
        "batch: genai-prices has no batch price for claude-3-5-sonnet; priced at standard rates (UNSURE)",
    )


def test_fast_mode(pricer: Pricer) -> None:
    """speed "fast" on Opus 4.8: $10/$50 per MTok instead of $5/$25."""
    usage = {"input_tokens": 1000, "output_tokens": 100}
    standard = pricer.price_usage("claude-opus-4-8", usage)
    fast = pricer.price_usage("claude-opus-4-8", {**usage, "speed": "fast"})
    assert standard.cost_usd == Decimal("0.0075")
    assert fast.cost_usd == Decimal("0.015")
    assert fast.breakdown == breakdown(input="0.01", output="0.005")
    assert fast.notes == ("fast mode: 200% of standard token prices (genai-prices)",)


def test_fast_mode_without_fast_price_is_unsure(pricer: Pricer) -> None:
    """Opus 4.6 has no fast price in genai-prices: standard price and an UNSURE note."""
    cost = pricer.price_usage("claude-opus-4-6", {"input_tokens": 1000, "output_tokens": 100, "speed": "fast"})
    assert cost.cost_usd == Decimal("0.0075")
    assert cost.notes == (
        "fast mode: genai-prices has no fast mode price for claude-opus-4-6; priced at standard rates (UNSURE)",
    )


def test_priority_tier_is_standard_and_unsure(pricer: Pricer) -> None:
    """No published Priority Tier price: standard, with a note saying UNSURE."""
    cost = pricer.price_usage("claude-sonnet-4-5-20250929", {**TTL_USAGE, "service_tier": "priority"})
    assert cost.cost_usd == Decimal("0.04928")
    assert cost.notes == ("priority tier: priced as standard (UNSURE)",)


def test_inference_geo_us_on_a_4_6_model(pricer: Pricer) -> None:
    """inference_geo "us" adds 10% to every token component of Opus 4.6, not to web search."""
    usage = {
        "input_tokens": 1000,
        "cache_creation_input_tokens": 1000,
        "output_tokens": 100,
        "server_tool_use": {"web_search_requests": 1},
    }
    plain = pricer.price_usage("claude-opus-4-6", usage)
    assert plain.cost_usd == Decimal("0.02375")
    cost = pricer.price_usage("claude-opus-4-6", {**usage, "inference_geo": "us"})
    assert cost.cost_usd == Decimal("0.025125")
    assert cost.breakdown == breakdown(input="0.0055", cache_write_5m="0.006875", output="0.00275", web_search="0.01")
    assert cost.notes == ("inference_geo us: x1.1 on token prices",)


@pytest.mark.parametrize(("model", "geo"), [("claude-sonnet-4-5-20250929", "us"), ("claude-opus-4-6", "global")])
def test_inference_geo_without_uplift(pricer: Pricer, model: str, geo: str) -> None:
    """No uplift before 4.6 models, nor for other regions."""
    usage = {"input_tokens": 1000, "output_tokens": 100}
    assert pricer.price_usage(model, {**usage, "inference_geo": geo}) == pricer.price_usage(model, usage)


def test_long_context_cliff(pricer: Pricer) -> None:
    """Sonnet 4.5 bills every token at $6/$22.50 once total input exceeds 200,000."""
    below = pricer.price_usage("claude-sonnet-4-5", {"input_tokens": 200_000, "output_tokens": 1000})
    above = pricer.price_usage("claude-sonnet-4-5", {"input_tokens": 200_001, "output_tokens": 1000})
    assert below.cost_usd == Decimal("0.615")
    assert below.notes == ()
    assert above.cost_usd == Decimal("1.222506")
    assert above.breakdown == breakdown(input="1.200006", output="0.0225")
    assert above.notes[0].startswith("long context tier above 200,000 input tokens")


def test_web_search_without_a_rate_is_noted(pricer: Pricer) -> None:
    """genai-prices has no search rate for Claude 3 Haiku: searches cost $0 there, and a note says so."""
    cost = pricer.price_usage(
        "claude-3-haiku-20240307",
        {"input_tokens": 1000, "output_tokens": 100, "server_tool_use": {"web_search_requests": 3}},
    )
    assert cost.cost_usd == Decimal("0.000375")
    assert cost.breakdown["web_search"] == Decimal(0)
    assert cost.notes == (
        "web search: genai-prices has no web search price for claude-3-haiku; 3 searches priced $0 (UNSURE)",
    )


def test_cache_creation_excess_is_5m_writes(pricer: Pricer) -> None:
    """A stream's final cache total above its breakdown counts the excess as 5-minute writes."""
    usage = {
        "input_tokens": 2081,
        "cache_creation_input_tokens": 7621,
        "cache_read_input_tokens": 28247,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 100,
    }
    cost = pricer.price_usage("claude-sonnet-4-5-20250929", usage)
    assert cost.breakdown["cache_write_5m"] == Decimal("0.02857875")  # 7621 x $3.75 / 1e6
    assert cost.breakdown["cache_write_1h"] == Decimal(0)


def test_priced_iterations_and_incomplete_stream_are_noted(pricer: Pricer) -> None:
    """Compaction iterations are priced on top of the top level (issue 13), and the notes say how;
    so is a stream cut by an error."""
    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "iterations": [
            {"type": "compaction", "input_tokens": 100, "output_tokens": 50},
            {"type": "message", "input_tokens": 10, "output_tokens": 5},
        ],
    }
    cost = pricer.price(make_turn("claude-opus-4-6", usage, incomplete=True))
    assert cost.cost_usd == Decimal("0.000175") + Decimal("0.00175")  # + 100 x $5 + 50 x $25, per 1e6
    assert cost.notes == (
        "stream ended with an error event: priced on the usage received so far",
        "usage.iterations[0] compaction: 100 input + 50 output tokens billed outside the top-level usage, "
        "priced at the turn's model claude-opus-4-6 ($0.00175) (UNSURE: the entry names no model)",
        "usage.iterations: the turn's service tier, speed and inference_geo applied to them (UNSURE)",
    )


def test_negative_count_is_an_error(pricer: Pricer) -> None:
    """A negative count is refused, naming the field."""
    with pytest.raises(PriceError, match=r"usage\.cache_read_input_tokens is -3"):
        pricer.price_usage("claude-opus-4-6", {"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": -3})


# --------------------------------------------------------------------------------------------
# unknown models


def test_unknown_model_names_model_test_and_fix(pricer: Pricer) -> None:
    """An unknown model is an error naming the model, the test, the file to write and the flag."""
    with pytest.raises(PriceError) as info:
        pricer.price(make_turn("claude-mythos-5", WRITE_USAGE), test="tests/test_agent.py::test_refund")
    message = str(info.value)
    assert message.startswith("tokenbudget: no price for model 'claude-mythos-5'\n")
    assert "  test: tests/test_agent.py::test_refund\n" in message
    assert "genai-prices 0.2.3 has no price for 'claude-mythos-5'" in message
    assert "    claude-mythos-5:\n" in message
    assert (
        "fix:  add 'claude-mythos-5' to a price override file, e.g. tokenbudget-prices.yaml (format above), "
        "and pass it: pytest --token-budget-prices tokenbudget-prices.yaml, or set token_budget_prices = "
        "tokenbudget-prices.yaml in your ini"
    ) in message


def test_unknown_model_names_the_override_files_in_use(tmp_path: Path) -> None:
    """With override files in use, the fix names them."""
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  other-model:\n    input_mtok: 1\n    output_mtok: 2\n")
    with pytest.raises(PriceError, match=rf"add 'claude-mythos-5' under `models:` in {path}"):
        Pricer(override_files=[path], now=NOV_2026).price_usage("claude-mythos-5", WRITE_USAGE)


# --------------------------------------------------------------------------------------------
# override files

OVERRIDES = """\
version: 1
models:
  claude-sonnet-4-5:          # negotiated rate, covers the dated ids
    input_mtok: 2.4
    output_mtok: 12
    cache_read_mtok: 0.24
    note: 2026 contract
  my-private-model*:
    input_mtok: 1
    output_mtok: 5
    cache_write_1h_mtok: 2.5
    web_search_per_1000: 8
    fast_multiplier: 2
    inference_geo_multipliers: {US: 1.2}
  my-private-model-exact:
    input_mtok: 100
    output_mtok: 100
"""


@pytest.fixture
def override_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokenbudget-prices.yaml"
    path.write_text(OVERRIDES)
    return path


def test_override_replaces_genai_price(override_file: Path) -> None:
    """An override keyed by the genai-prices entry prices its dated ids; cache writes default to 1.25x."""
    pricer = Pricer(override_files=[override_file], now=NOV_2026)
    usage = {
        "input_tokens": 1000,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 10000,
        "output_tokens": 100,
    }
    cost = pricer.price(make_turn("claude-sonnet-4-5-20250929", usage))
    assert cost.cost_usd == Decimal("0.009")
    assert cost.breakdown == breakdown(input="0.0024", cache_write_5m="0.003", cache_read="0.0024", output="0.0012")
    assert cost.model_ref == "claude-sonnet-4-5"
    assert cost.source == str(override_file)
    assert cost.notes == (
        f"override 'claude-sonnet-4-5' from {override_file} (line 3)",
        "override note: 2026 contract",
        "cache_write_5m: override sets no cache_write_5m_mtok; default x1.25 input_mtok",
    )
    assert pricer.source.override_files == (str(override_file),)


def test_override_adds_a_model_by_prefix(override_file: Path) -> None:
    """A `*` key prices every id it prefixes; its own 1h, search, fast and geo rates apply."""
    pricer = Pricer(override_files=[override_file], now=NOV_2026)
    usage = {
        "input_tokens": 1000,
        "cache_creation_input_tokens": 1000,
        "cache_creation": {"ephemeral_1h_input_tokens": 1000},
        "output_tokens": 1000,
        "server_tool_use": {"web_search_requests": 5},
    }
    cost = pricer.price_usage("my-private-model-v2", usage)
    assert cost.cost_usd == Decimal("0.0485")  # 0.001 + 0.0025 + 0.005 + 5 x 0.008
    assert cost.model_ref == "my-private-model*"
    fast_us = pricer.price_usage("my-private-model-v2", {**usage, "speed": "fast", "inference_geo": "us"})
    # tokens x2 (fast) x1.2 (geo): (0.001 + 0.0025 + 0.005) x 2.4 = 0.0204; search 0.04
    assert fast_us.cost_usd == Decimal("0.0604")
    assert "fast mode: x2 on token prices" in fast_us.notes
    assert "inference_geo us: x1.2 on token prices" in fast_us.notes


def test_override_exact_beats_prefix_and_batch_defaults_to_half(override_file: Path) -> None:
    """An exact key wins over a prefix; batch turns on overrides default to 50% of token prices."""
    pricer = Pricer(override_files=[override_file], now=NOV_2026)
    usage = {"input_tokens": 1000, "output_tokens": 1000}
    assert pricer.price_usage("my-private-model-exact", usage).cost_usd == Decimal("0.2")
    batch = pricer.price_usage("MY-PRIVATE-MODEL-EXACT", usage, batch=True)
    assert batch.cost_usd == Decimal("0.1")
    assert "batch: 50% of standard token prices (default); web search at full price" in batch.notes


def test_later_override_file_wins(override_file: Path, tmp_path: Path) -> None:
    """Two files naming one key: the last one given wins."""
    later = tmp_path / "later.yaml"
    later.write_text('{"models": {"claude-sonnet-4-5": {"input_mtok": 1, "output_mtok": 1}}}')
    pricer = Pricer(override_files=[override_file, later], now=NOV_2026)
    cost = pricer.price_usage("claude-sonnet-4-5-20250929", {"input_tokens": 1000, "output_tokens": 1000})
    assert cost.cost_usd == Decimal("0.002")
    assert cost.source == str(later)


def test_load_price_file_parses_decimals(override_file: Path) -> None:
    """Prices are read as the Decimals written, defaults filled in and listed."""
    parsed = load_price_file(override_file)
    assert parsed.version == 1
    sonnet, prefix, _ = parsed.models
    assert (sonnet.input_mtok, sonnet.cache_read_mtok, sonnet.cache_write_1h_mtok) == (
        Decimal("2.4"),
        Decimal("0.24"),
        Decimal("4.8"),
    )
    assert sonnet.defaulted == {"cache_write_5m_mtok", "cache_write_1h_mtok", "web_search_per_1000", "batch_multiplier"}
    assert prefix.inference_geo_multipliers == {"us": Decimal("1.2")}
    assert prefix.line == 8


def price_file_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tokenbudget-prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceError) as info:
        load_price_file(path)
    return str(info.value)


def test_typo_key_names_file_line_path_and_suggestion(tmp_path: Path) -> None:
    """A misspelt key is reported with its file, line, JSON path and the nearest accepted key."""
    message = price_file_error(
        tmp_path, "models:\n  my-model:\n    input_mtok: 1\n    output_mtok: 2\n    cache_reed_mtok: 0.1\n"
    )
    assert message.splitlines()[0] == "tokenbudget: price file is invalid (1 problem)"
    assert f"  file: {tmp_path / 'tokenbudget-prices.yaml'}, line 5" in message
    assert (
        """models["my-model"].cache_reed_mtok: unknown key 'cache_reed_mtok' """
        """(did you mean 'cache_read_mtok'?)"""
    ) in message


def test_several_problems_are_all_listed(tmp_path: Path) -> None:
    """Every violation is reported, the first one (by line) in the headline fields."""
    message = price_file_error(tmp_path, "model:\n  x:\n    input_mtok: 1\n")
    assert ", line 1" in message
    assert "$: 'models' is a required property" in message
    assert "model: unknown key 'model' (did you mean 'models'?)" in message


def test_bad_value_names_line_and_path(tmp_path: Path) -> None:
    """A non-number price is reported at its line."""
    message = price_file_error(tmp_path, "models:\n  m:\n    input_mtok: cheap\n    output_mtok: 2\n")
    assert ", line 3" in message
    assert "models.m.input_mtok: 'cheap' is not of type 'number'" in message


def test_missing_required_price(tmp_path: Path) -> None:
    """A model without output_mtok is reported at the model's line."""
    message = price_file_error(tmp_path, "models:\n\n  m:\n    input_mtok: 1\n")
    assert ", line 3" in message
    assert "models.m: 'output_mtok' is a required property" in message


def test_repeated_key_is_refused(tmp_path: Path) -> None:
    """PyYAML would keep the last of two equal keys; we refuse it."""
    message = price_file_error(
        tmp_path, "models:\n  m:\n    input_mtok: 1\n    output_mtok: 2\n  m:\n    input_mtok: 3\n    output_mtok: 4\n"
    )
    assert ", line 5" in message
    assert "models.m: repeated key (first on line 2)" in message


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    """Broken YAML is reported with the parser's line."""
    message = price_file_error(tmp_path, "models:\n  m: {input_mtok: 1\n  n: 2\n")
    assert "tokenbudget: price file is not valid YAML" in message
    assert ", line 3" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "price file is empty"),
        (
            "models:\n  m:\n    input_mtok: .inf\n    output_mtok: 1\n",
            "models.m.input_mtok: inf is not a finite number",
        ),
        (
            "models:\n  a*b:\n    input_mtok: 1\n    output_mtok: 1\n",
            "models[\"a*b\"]: bad key 'a*b' (a model id, optionally ending in one '*')",
        ),
    ],
)
def test_other_invalid_files(tmp_path: Path, text: str, expected: str) -> None:
    """Empty files, infinite prices and a `*` inside a key are refused."""
    assert expected in price_file_error(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    """A missing override file names the flag and ini key."""
    with pytest.raises(PriceError, match="--token-budget-prices / token_budget_prices"):
        Pricer(override_files=[tmp_path / "nope.yaml"])


def test_schema_is_packaged_and_valid() -> None:
    """The schema ships as package data and is a valid Draft 2020-12 schema."""
    text = resources.files("pytest_tokenbudget").joinpath("schemas/prices.schema.json").read_text("utf-8")
    jsonschema.Draft202012Validator.check_schema(json.loads(text))


# --------------------------------------------------------------------------------------------
# timestamp policies

SONNET_4_6_LONG = {"input_tokens": 250_000, "output_tokens": 0}
JAN_2026 = datetime(2026, 1, 1, tzinfo=UTC)


def test_policy_now_prices_every_turn_at_one_instant() -> None:
    """Under "now", a turn recorded in Jan 2026 is priced at today's flat Sonnet 4.6 rate."""
    pricer = Pricer(now=NOV_2026)
    cost = pricer.price(make_turn("claude-sonnet-4-6", SONNET_4_6_LONG, recorded_at=JAN_2026.timestamp()))
    assert cost.cost_usd == Decimal("0.75")
    assert pricer.source.as_dict() == {
        "library": "genai-prices",
        "version": genai_prices.__version__,
        "override_files": [],
        "timestamp_policy": "now",
        "priced_at": "2026-11-20T00:00:00+00:00",
    }


def test_policy_recorded_uses_the_turn_time() -> None:
    """Under "recorded", the same turn gets the >200k tier Sonnet 4.6 had before 2026-03-13."""
    pricer = Pricer(timestamp_policy="recorded", now=NOV_2026)
    cost = pricer.price(make_turn("claude-sonnet-4-6", SONNET_4_6_LONG, recorded_at=JAN_2026.timestamp()))
    assert cost.cost_usd == Decimal("1.5")
    assert cost.notes[0].startswith("long context tier above 200,000 input tokens")
    batch = pricer.price(make_turn("claude-sonnet-4-5", TTL_USAGE, endpoint="batch", recorded_at=SEP_2025.timestamp()))
    assert batch.cost_usd == Decimal("0.04928")
    assert pricer.source.priced_at is None


def test_policy_recorded_without_a_time_falls_back_to_now() -> None:
    """A turn without recorded_at is priced at the fixed instant, with a note."""
    pricer = Pricer(timestamp_policy="recorded", now=NOV_2026)
    cost = pricer.price(make_turn("claude-sonnet-4-5", TTL_USAGE, endpoint="batch"))
    assert cost.cost_usd == Decimal("0.03464")
    assert cost.notes[0] == "no recorded time: priced at 2026-11-20T00:00:00+00:00 (now)"


def test_default_now_is_creation_time_utc() -> None:
    """Without `now`, the fixed instant is the Pricer's creation, in UTC."""
    before = datetime.now(UTC)
    pricer = Pricer()
    assert pricer.source.priced_at is not None
    assert before <= pricer.source.priced_at <= datetime.now(UTC)
    assert Pricer(now=datetime(2026, 11, 20)).source.priced_at == NOV_2026  # naive means UTC


def test_invalid_policy() -> None:
    """An unknown policy is a config error listing the accepted ones."""
    with pytest.raises(ConfigError, match="accepted: now, recorded"):
        Pricer(timestamp_policy="today")


# --------------------------------------------------------------------------------------------
# properties

COUNT = st.integers(min_value=0, max_value=400_000)
FIELDS = ("uncached", "write_5m", "write_1h", "read", "output", "searches")


def usage_of(counts: Mapping[str, int]) -> dict[str, Any]:
    return {
        "input_tokens": counts["uncached"],
        "cache_creation_input_tokens": counts["write_5m"] + counts["write_1h"],
        "cache_creation": {
            "ephemeral_5m_input_tokens": counts["write_5m"],
            "ephemeral_1h_input_tokens": counts["write_1h"],
        },
        "cache_read_input_tokens": counts["read"],
        "output_tokens": counts["output"],
        "server_tool_use": {"web_search_requests": counts["searches"]},
    }


@settings(max_examples=150, deadline=None)
@given(
    model=st.sampled_from(
        ["claude-sonnet-4-5", "claude-haiku-5-5", "claude-opus-4-8", "claude-3-haiku", "claude-2", "claude-fable-5-2"]
    ),
    counts=st.fixed_dictionaries({name: COUNT for name in FIELDS[:-1]} | {"searches": st.integers(0, 50)}),
    bump=st.sampled_from(FIELDS),
    delta=st.integers(min_value=1, max_value=250_000),
    batch=st.booleans(),
)
def test_breakdown_sums_and_cost_is_monotone(
    model: str, counts: dict[str, int], bump: str, delta: int, batch: bool
) -> None:
    """Components sum exactly to the cost, equal genai-prices' own total, and grow with every count."""
    pricer = Pricer(now=NOV_2026)
    cost = pricer.price_usage(model, usage_of(counts), batch=batch)
    assert set(cost.breakdown) == set(COMPONENTS)  # never an unattributed difference
    assert UNATTRIBUTED not in cost.breakdown
    assert sum(cost.breakdown.values(), Decimal(0)) == cost.cost_usd
    extracted = genai_prices.extract_usage({"model": model, "usage": usage_of(counts)}, provider_id="anthropic")
    context = {"processing": "batch"} if batch else None
    assert cost.cost_usd == extracted.calc_price(genai_request_timestamp=NOV_2026, price_context=context).total_price
    more = pricer.price_usage(model, usage_of({**counts, bump: counts[bump] + delta}), batch=batch)
    assert more.cost_usd >= cost.cost_usd
