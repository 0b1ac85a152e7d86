"""NaN, infinities, negatives and absurd numbers in the config file, the baseline and price files are
usage errors naming the file, the line and the key: never a traceback, never a silently disabled check."""

from __future__ import annotations

import json
import math
import re
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import NETWORK_GUARD
from hypothesis import given
from hypothesis import strategies as st

from pytest_tokenbudget._validate import json_line_of, json_path, non_finite, schema_problems
from pytest_tokenbudget.baseline import load_baseline
from pytest_tokenbudget.budgets import Budget
from pytest_tokenbudget.cli import main as cli_main
from pytest_tokenbudget.config import load_config
from pytest_tokenbudget.errors import ConfigError, PriceError
from pytest_tokenbudget.pricing import load_price_file

AGENT = """
import anthropic
from pytest_tokenbudget.emulator import Reply

SYSTEM_TEXT = "You are the refund agent of the shop. Check the order before refunding. " * 80


def test_refund(anthropic_emulator):
    anthropic_emulator.script(Reply.text("Checking order 42."), Reply.text("Refunded."))
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": "Where is my order 42?"}]
    for k in range(2):
        reply = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=messages,
            system=[{"type": "text", "text": SYSTEM_TEXT, "cache_control": {"type": "ephemeral"}}],
        )
        messages += [{"role": "assistant", "content": reply.content[0].text},
                     {"role": "user", "content": f"And then? ({k})"}]
"""

ENTRY = 'tests["test_refund.py::test_refund"]'
BASELINE_FIX = "  fix:  restore it from version control, or rewrite it: pytest --token-budget --token-budget-update"


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def _usage_error(result: pytest.RunResult, lines: list[str]) -> None:
    """The session stopped with a usage error printing exactly ``lines``, and no traceback."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.lines
    start = err.index(f"ERROR: {lines[0]}")
    assert err[start + 1 : start + len(lines)] == lines[1:], result.stderr.str()
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert result.stdout.str() == ""  # stopped at start-up: no test ran


@pytest.fixture
def written(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_api_key: None) -> Path:
    """A project recorded through the emulator and its baseline written by --token-budget-update."""
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_refund=AGENT)
    _run(pytester, "--token-budget-record=once").assert_outcomes(passed=1)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    _run(pytester, "--token-budget-update").assert_outcomes(passed=1)
    _run(pytester, "--token-budget").assert_outcomes(passed=1)
    return pytester.path / "tokenbudget-baseline.json"


def _replace_value(path: Path, key: str, literal: str) -> int:
    """Write ``literal`` as the (only) value of ``key`` in the baseline; return the key's line."""
    text = path.read_text()
    pattern = re.compile(rf'^(\s*"{key}": )[^,\n]+', re.MULTILINE)
    match = pattern.search(text)
    assert match is not None
    assert len(pattern.findall(text)) == 1
    path.write_text(pattern.sub(lambda m: m.group(1) + literal, text))
    return text.count("\n", 0, match.start()) + 1


# ------------------------------------------------------------------ end to end


def test_nan_max_cost_increase_in_the_config_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """``max_cost_increase: .nan`` used to turn the cost gate off (nothing is greater than NaN)."""
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    config = pytester.path / "tokenbudget.yaml"
    config.write_text('defaults:\n  max_turns: 4\ntests:\n  "test_plain.py::*":\n    max_cost_increase: .nan\n')
    _usage_error(
        _run(pytester, "--token-budget"),
        [
            "tokenbudget: token budget config is invalid (1 problem)",
            f"  file: {config}, line 5",
            '  why:  tests["test_plain.py::*"].max_cost_increase: nan is not a finite number',
            "  fix:  correct the key or value (the schema is pytest_tokenbudget/schemas/config.schema.json)",
        ],
    )


def test_nan_in_the_pyproject_table_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """TOML reads ``nan`` and ``inf`` too: ``[tool.tokenbudget]`` is checked the same way, with the line."""
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    pytester.makepyprojecttoml("[tool.tokenbudget.defaults]\nmax_turns = 4\nmax_hit_rate_drop = nan\n")
    _usage_error(
        _run(pytester),
        [
            "tokenbudget: token budget config is invalid",
            f"  file: {pytester.path / 'pyproject.toml'}, line 3",
            "  why:  [tool.tokenbudget] defaults.max_hit_rate_drop: nan is not a finite number",
            "  fix:  correct the key (the schema is pytest_tokenbudget/schemas/config.schema.json)",
        ],
    )


def test_nan_cache_hit_rate_in_the_baseline_is_a_usage_error(written: Path, pytester: pytest.Pytester) -> None:
    """``"cache_hit_rate": NaN`` (Python's json reads it) would never be "dropped from": refused, with its line."""
    line = _replace_value(written, "cache_hit_rate", "NaN")
    assert line == 7
    _usage_error(
        _run(pytester, "--token-budget"),
        [
            "tokenbudget: the token budget baseline is invalid",
            f"  file: {written}, line 7",
            f"  why:  {ENTRY}.cache_hit_rate: nan is not a finite number",
            BASELINE_FIX,
        ],
    )


def test_infinite_cost_in_the_baseline_is_a_usage_error(written: Path, pytester: pytest.Pytester) -> None:
    """``"cost_usd": Infinity`` used to end the gate in a decimal.InvalidOperation traceback (inf / inf)."""
    line = _replace_value(written, "cost_usd", "Infinity")
    assert line == 31
    for option in ("--token-budget", "--token-budget-update"):
        _usage_error(
            _run(pytester, option),
            [
                "tokenbudget: the token budget baseline is invalid",
                f"  file: {written}, line 31",
                f"  why:  {ENTRY}.cost_usd: inf is not a finite number",
                BASELINE_FIX,
            ],
        )
    assert "Infinity" in written.read_text()  # the update did not overwrite it


def test_negative_token_count_in_the_baseline_is_a_usage_error(written: Path, pytester: pytest.Pytester) -> None:
    """A negative count is named with its line (the schema's minimum), and an absurd one with its maximum."""
    line = _replace_value(written, "output_tokens", "-12")
    assert line == 33
    _usage_error(
        _run(pytester, "--token-budget"),
        [
            "tokenbudget: the token budget baseline is invalid",
            f"  file: {written}, line 33",
            f"  why:  {ENTRY}.output_tokens: -12 is less than the minimum of 0",
            BASELINE_FIX,
        ],
    )
    _replace_value(written, "output_tokens", "1000000000001")
    _replace_value(written, "turns", "true")
    _usage_error(
        _run(pytester, "--token-budget"),
        [
            "tokenbudget: the token budget baseline is invalid",
            f"  file: {written}, line 33",
            f"  why:  {ENTRY}.output_tokens: 1000000000001 is greater than the maximum of 1000000000000",
            f"  also: line 34: {ENTRY}.turns: True is not of type 'integer'",
            BASELINE_FIX,
        ],
    )


def test_nan_price_in_a_price_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """A NaN cache price is named at its own line (not the model's); the session stops before any test."""
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    prices = pytester.path / "tokenbudget-prices.yaml"
    prices.write_text(
        "models:\n  claude-sonnet-4-6:\n    input_mtok: 3\n    output_mtok: 15\n    cache_read_mtok: .nan\n"
    )
    _usage_error(
        _run(pytester, "--token-budget", f"--token-budget-prices={prices.name}"),
        [
            "tokenbudget: price file is invalid (1 problem)",
            f"  file: {prices}, line 5",
            '  why:  models["claude-sonnet-4-6"].cache_read_mtok: nan is not a finite number',
            "  fix:  correct the key or value (the schema is pytest_tokenbudget/schemas/prices.schema.json)",
        ],
    )


def test_cli_refuses_an_infinite_price_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``tokenbudget report`` gives the same message and its usage status, 2."""
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  m:\n    input_mtok: 1\n    output_mtok: -.inf\n")
    assert cli_main(["report", str(tmp_path), "--prices", str(prices)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "tokenbudget: price file is invalid (1 problem)",
        f"  file: {prices}, line 4",
        "  why:  models.m.output_mtok: -inf is not a finite number",
        "  fix:  correct the key or value (the schema is pytest_tokenbudget/schemas/prices.schema.json)",
    ]
    assert captured.out == ""


# ------------------------------------------------------------------ the limits


@pytest.mark.parametrize(
    ("budget", "why"),
    [
        ({"max_turns": 10**12}, None),
        ({"max_turns": 10**12 + 1}, "max_turns: 1000000000001 is greater than the maximum of 1000000000000"),
        ({"max_input_tokens": True}, "max_input_tokens: True is not of type 'integer'"),
        ({"max_cost_usd": 10**9}, None),
        ({"max_cost_usd": 1e9 + 1}, "max_cost_usd: 1000000001.0 is greater than the maximum of 1000000000"),
        ({"max_cost_increase_usd": -0.01}, "max_cost_increase_usd: -0.01 is less than the minimum of 0"),
        ({"max_cost_increase": 1000}, None),
        ({"max_cost_increase": 1000.5}, "max_cost_increase: 1000.5 is greater than the maximum of 1000"),
        ({"max_tokens_increase": math.inf}, "max_tokens_increase: inf is not a finite number"),
        ({"min_cache_hit_rate": 1.5}, "min_cache_hit_rate: 1.5 is greater than the maximum of 1"),
        ({"max_hit_rate_drop": -math.inf}, "max_hit_rate_drop: -inf is not a finite number"),
        ({"max_cost_usd": Decimal("NaN")}, "max_cost_usd: NaN is not a finite number"),
        ({"max_cost_usd": Decimal("-Infinity"), "max_turns": -1}, "max_cost_usd: -Infinity is not a finite number"),
    ],
)
def test_budget_limits(budget: dict[str, Any], why: str | None) -> None:
    """Markers and assert_budget() share the config's rules: in range and finite, or a ConfigError."""
    if why is None:
        assert not Budget.from_mapping(budget, where="marker").is_empty()
        return
    with pytest.raises(ConfigError) as info:
        Budget.from_mapping(budget, where="test.py::t: @pytest.mark.token_budget")
    assert info.value.why == why


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ({"input_mtok": 10**6, "output_mtok": 0}, None),
        ({"input_mtok": 1_000_001, "output_mtok": 1}, "input_mtok: 1000001 is greater than the maximum of 1000000"),
        (
            {"input_mtok": 1, "output_mtok": 1, "batch_multiplier": 0},
            "batch_multiplier: 0 is less than or equal to the minimum of 0",
        ),
        (
            {"input_mtok": 1, "output_mtok": 1, "fast_multiplier": 1001},
            "fast_multiplier: 1001 is greater than the maximum of 1000",
        ),
        (
            {"input_mtok": 1, "output_mtok": 1, "inference_geo_multipliers": {"us": math.nan}},
            "inference_geo_multipliers.us: 'NaN' is not of type 'number'",
        ),
        ({"input_mtok": -1, "output_mtok": 1}, "input_mtok: -1 is less than the minimum of 0"),
    ],
)
def test_price_limits(tmp_path: Path, model: dict[str, Any], why: str | None) -> None:
    """Prices are USD from 0 to 10^6; multipliers above 0 and at most 1000; all finite.

    The file is JSON, read as YAML: there ``NaN`` (as json.dumps writes it) is a string, refused too.
    """
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"m": model}}))
    if why is None:
        assert load_price_file(path).models[0].input_mtok == Decimal(10**6)
        return
    with pytest.raises(PriceError) as info:
        load_price_file(path)
    assert info.value.file == f"{path}, line 1"
    assert info.value.why == f"models.m.{why}"


# ------------------------------------------------------------------ the rule, as properties

FINITE = st.integers(-(2**64), 2**64) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.none()
JSON_VALUES = st.recursive(
    FINITE | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def with_one_non_finite(draw: st.DrawFn) -> tuple[Any, tuple[str | int, ...], float]:
    """A document, the path where one non-finite float was put in it, and that float."""
    document = draw(JSON_VALUES)
    bad = draw(NON_FINITE)
    path: list[str | int] = []
    node = document
    while isinstance(node, list | dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    if not path:
        return {"key": bad}, ("key",), bad
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = bad
    return document, tuple(path), bad


@given(with_one_non_finite(), st.sampled_from(["config.schema.json", "baseline.schema.json", "prices.schema.json"]))
def test_any_non_finite_number_anywhere_is_refused(case: tuple[Any, tuple[str | int, ...], float], schema: str) -> None:
    """Wherever a NaN or an infinity sits, in any of the three files, it is a problem at its path."""
    document, path, bad = case
    assert [(found, repr(value)) for found, value in non_finite(document)] == [(path, repr(bad))]
    messages = [message for _, message in schema_problems(document, None, schema)]
    assert f"{json_path(path)}: {bad!r} is not a finite number" in messages


@given(JSON_VALUES)
def test_finite_documents_have_no_non_finite_numbers(document: Any) -> None:
    """Integers (however large), finite floats, booleans, strings and null are never refused as non-finite."""
    assert list(non_finite(document)) == []
    assert not any("is not a finite number" in m for _, m in schema_problems(document, None, "config.schema.json"))


BASELINE_ENTRY = st.fixed_dictionaries(
    {
        "turns": st.integers(0, 10**12),
        "input_tokens": st.integers(0, 10**12),
        "cache_creation_input_tokens": st.integers(0, 10**12),
        "cache_read_input_tokens": st.integers(0, 10**12),
        "output_tokens": st.integers(0, 10**12),
        "cost_usd": st.none() | st.floats(0, 10**9),
        "cache_hit_rate": st.floats(0, 1),
        "cached_prefixes": st.lists(
            st.fixed_dictionaries(
                {
                    "model": st.text(max_size=5),
                    "breakpoints": st.lists(
                        st.fixed_dictionaries(
                            {"path": st.text(max_size=5), "fingerprint": st.just("0" * 32)},
                            optional={"tokens": st.none() | st.integers(0, 10**12)},
                        ),
                        max_size=2,
                    ),
                }
            ),
            max_size=2,
        ),
    }
)
NUMERIC_FIELDS = ["turns", "input_tokens", "output_tokens", "cost_usd", "cache_hit_rate"]


@given(
    st.dictionaries(st.text(min_size=1, max_size=8), BASELINE_ENTRY, min_size=1, max_size=3),
    st.data(),
    NON_FINITE,
    st.booleans(),
)
def test_a_baseline_with_a_non_finite_number_is_refused_at_its_line(
    tests: dict[str, Any], data: st.DataObject, bad: float, indented: bool
) -> None:
    """Any baseline as the plugin writes it, one number made NaN or infinite: refused, naming that key and its line."""
    test = data.draw(st.sampled_from(sorted(tests)))
    key = data.draw(st.sampled_from(NUMERIC_FIELDS))
    tests[test][key] = "\x00sentinel\x00"
    text = json.dumps({"schema_version": 1, "tests": tests}, indent=2 if indented else None, sort_keys=True)
    line = text.count("\n", 0, text.index('"\\u0000sentinel\\u0000"')) + 1
    literal = {math.inf: "Infinity", -math.inf: "-Infinity"}.get(bad, "NaN")
    text = text.replace('"\\u0000sentinel\\u0000"', literal)
    assert json_line_of(text, ("tests", test, key)) == line
    with tempfile.TemporaryDirectory() as directory:  # hypothesis examples cannot share tmp_path
        path = Path(directory) / "tokenbudget-baseline.json"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_baseline(path)
    assert info.value.file == f"{path}, line {line}"
    assert info.value.why == f"{json_path(('tests', test, key))}: {bad!r} is not a finite number"


# ------------------------------------------------------------------ the JSON line locator


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ((), 1),
        (("a",), 2),
        (("a", 1), 4),
        (("a", 1, "b"), 5),
        (("c",), 8),
        (("c", "d", 0), 8),
        (("missing",), None),
        (("a", 5), None),
        (("c", "d", 0, "x"), None),
    ],
)
def test_json_line_of(path: tuple[str | int, ...], line: int | None) -> None:
    """Keys and array items are found at their line; of a repeated key the last one, as json.loads keeps it."""
    text = '{\n  "a": [\n    1,\n    {\n      "b": "}, \\"b\\": ["\n    }\n  ],\n  "c": 0, "c": {"d": [NaN]}\n}\n'
    assert json.loads(text)["a"][1]["b"] == '}, "b": ['
    assert json_line_of(text, path) == line


def test_json_line_of_broken_text_is_none() -> None:
    """Text that is not JSON gives no line (the caller then names the file alone)."""
    assert json_line_of('{"a": [1, 2', ("a", 1)) is None
    assert json_line_of('{"a" 1}', ("a",)) is None
    assert json_line_of("", ("a",)) is None


def test_config_file_with_an_infinite_count_names_its_line(tmp_path: Path) -> None:
    """``.inf`` is not an integer: one message, the finiteness one, not also the schema's type error."""
    (tmp_path / "tokenbudget.yaml").write_text("defaults:\n  max_turns: 3\n  max_output_tokens: .inf\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.render().splitlines() == [
        "tokenbudget: token budget config is invalid (1 problem)",
        f"  file: {tmp_path / 'tokenbudget.yaml'}, line 3",
        "  why:  defaults.max_output_tokens: inf is not a finite number",
        "  fix:  correct the key or value (the schema is pytest_tokenbudget/schemas/config.schema.json)",
    ]
