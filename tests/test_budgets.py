"""End to end: budgets by marker, by config file and by the ledger's assertion helpers."""

from __future__ import annotations

import textwrap

import pytest
from conftest import NETWORK_GUARD

pytestmark = pytest.mark.usefixtures("no_api_key")

AGENT = """
import anthropic
import pytest
from pytest_tokenbudget.emulator import Reply

POLICY = "You answer questions about orders, briefly. " * 120


def ask(emulator, turns=3, system=lambda k: POLICY):
    emulator.script(*[Reply.text(f"answer {k}") for k in range(turns)])
    client = anthropic.Anthropic()
    messages = []
    for k in range(turns):
        messages.append({"role": "user", "content": f"question {k}"})
        reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=messages,
                                       system=[{"type": "text", "text": system(k),
                                                "cache_control": {"type": "ephemeral"}}])
        messages.append({"role": "assistant", "content": reply.content[0].text})
"""


def _project(pytester: pytest.Pytester, tests: str) -> None:
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_budget=AGENT + textwrap.dedent(tests))


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "--token-budget-record=once", *args)


def test_marker_budget_fails_with_a_table_of_where_the_tokens_went(pytester: pytest.Pytester) -> None:
    """A test over its marker budget fails with each breach and a per-turn table; its recording is still saved."""
    _project(
        pytester,
        """
        @pytest.mark.token_budget(max_cost_usd=0.001, max_turns=2, max_output_tokens=1000)
        def test_costly(anthropic_emulator):
            ask(anthropic_emulator)
    """,
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*tokenbudget: over its token budget",
            "*test: test_budget.py::test_costly",
            "*- 3 turns, budget 2",
            "*- cost $0.006* budget $0.001",
            "*where the tokens went:",
            "*turn  model              input  cache write  cache read  output   cost USD  cache",
            "*0     claude-sonnet-4-6     10        1,327           0       2  $0.005036  write",
            "*1     claude-sonnet-4-6     31            0       1,327       2  $0.000521  hit",
            "*fix:  reduce the tokens, or raise the budget in the marker or tokenbudget.yaml",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert (pytester.path / "cassettes/test_budget/test_costly.yaml").is_file()


def test_prefix_stable_and_min_hit_rate_markers(pytester: pytest.Pytester) -> None:
    """``prefix_stable=True`` fails on a timestamp in the system prompt; ``min_cache_hit_rate`` on a low rate."""
    _project(
        pytester,
        """
        @pytest.mark.token_budget(prefix_stable=True)
        def test_stamped(anthropic_emulator):
            ask(anthropic_emulator, system=lambda k: f"Now: 2026-11-25T10:0{k}:00Z. " + POLICY)

        @pytest.mark.token_budget(min_cache_hit_rate=0.9)
        def test_rate(anthropic_emulator):
            ask(anthropic_emulator, turns=2)

        @pytest.mark.token_budget(prefix_stable=True, min_cache_hit_rate=0.5)
        def test_fine(anthropic_emulator):
            ask(anthropic_emulator)
    """,
    )
    result = _run(pytester)
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*- prompt prefix is not byte-stable (2 break(s)): turn 1: prefix differs from turn 0 at system[[]0].text, "
            "offset 20: *(likely a timestamp or date in the prompt)",
        ]
    )
    result.stdout.fnmatch_lines(["*- cache hit rate 49.2%, budget at least 90.0%"])


def test_unknown_marker_keyword_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """A typo in the marker stops the session before any test runs, listing the accepted keywords."""
    _project(
        pytester,
        """
        @pytest.mark.token_budget(max_cost=0.1)
        def test_typo(anthropic_emulator):
            ask(anthropic_emulator)
    """,
    )
    result = _run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*test_budget.py::test_typo: unknown token_budget keyword(s) max_cost; accepted: "
            "max_cost_usd, max_input_tokens, *"
        ]
    )


def test_config_file_defaults_patterns_and_marker_precedence(pytester: pytest.Pytester) -> None:
    """tokenbudget.yaml sets defaults and per-test patterns; the marker wins over both."""
    _project(
        pytester,
        """
        def test_one(anthropic_emulator):
            ask(anthropic_emulator)

        def test_two(anthropic_emulator):
            ask(anthropic_emulator)

        @pytest.mark.token_budget(max_turns=5)
        def test_three(anthropic_emulator):
            ask(anthropic_emulator)
    """,
    )
    (pytester.path / "tokenbudget.yaml").write_text(
        textwrap.dedent("""
        defaults:
          max_turns: 2
        tests:
          "test_budget.py::test_two":
            max_turns: 3
    """)
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(["*test: test_budget.py::test_one", "*- 3 turns, budget 2"])


def test_config_typo_names_key_file_and_line(pytester: pytest.Pytester) -> None:
    """A misspelt key in tokenbudget.yaml is a usage error with the file, the line and the nearest key."""
    _project(pytester, "def test_plain():\n    assert True\n")
    (pytester.path / "tokenbudget.yaml").write_text("defaults:\n  max_turns: 2\n  max_cost_usdd: 0.1\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*tokenbudget: token budget config is invalid (1 problem)",
            f"*file: {pytester.path / 'tokenbudget.yaml'}, line 3",
            "*why:  defaults.max_cost_usdd: unknown key 'max_cost_usdd' (did you mean 'max_cost_usd'?)*",
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_pyproject_table_is_read_and_checked(pytester: pytest.Pytester) -> None:
    """``[tool.tokenbudget]`` in pyproject.toml works like tokenbudget.yaml, typos included."""
    _project(
        pytester,
        """
        def test_one(anthropic_emulator):
            ask(anthropic_emulator)
    """,
    )
    pytester.makepyprojecttoml("[tool.tokenbudget.defaults]\nmax_turns = 1\n")
    _run(pytester).assert_outcomes(failed=1)
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\n\n[tool.tokenbudget.defaults]\nmax_turn = 1\n")
    result = _run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*file: {pytester.path / 'pyproject.toml'}, line 4",
            "*why:  [[]tool.tokenbudget] defaults.max_turn: unknown key 'max_turn'*",
        ]
    )


def test_ledger_assertion_helpers(pytester: pytest.Pytester) -> None:
    """``token_ledger.assert_budget`` and ``assert_cache_hit_rate`` check inline, with the verdicts."""
    _project(
        pytester,
        """
        def test_inline(anthropic_emulator, token_ledger):
            ask(anthropic_emulator)
            token_ledger.assert_budget(max_turns=3, max_cost_usd=0.01, prefix_stable=True)
            assert round(token_ledger.cache_hit_rate, 3) == 0.651
            with pytest.raises(AssertionError) as caught:
                token_ledger.assert_cache_hit_rate(min=0.8)
            assert str(caught.value).splitlines()[:3] == [
                "cache hit rate 65.1% is below 80.0%",
                "  turn 0   write             first write: 1,327 tokens cached at system[0] (5m)",
                "  turn 1   hit               read 1,327 cached tokens up to system[0]",
            ]
            with pytest.raises(AssertionError, match="over the token budget:\\n  3 turns, budget 1"):
                token_ledger.assert_budget(max_turns=1)
    """,
    )
    _run(pytester).assert_outcomes(passed=1)


def test_ledger_assert_budget_prices_with_the_sessions_override_file(pytester: pytest.Pytester) -> None:
    """``token_ledger.assert_budget(max_cost_usd=...)`` uses the run's price override file, not genai-prices alone.

    At a negotiated $1,000 per million tokens for every component, the 4,074 input and 6 output
    tokens of the three turns cost exactly $4.08 (genai-prices' own rates give $0.006141).
    """
    pytester.makefile(
        ".yaml",
        prices="""
        models:
          claude-sonnet-4-6:
            input_mtok: 1000
            output_mtok: 1000
            cache_write_5m_mtok: 1000
            cache_write_1h_mtok: 1000
            cache_read_mtok: 1000
        """,
    )
    _project(
        pytester,
        """
        from decimal import Decimal

        def test_inline(anthropic_emulator, token_ledger):
            ask(anthropic_emulator)
            assert token_ledger.cost_usd() == Decimal("4.08")
            token_ledger.assert_budget(max_cost_usd=5)
            with pytest.raises(AssertionError) as caught:
                token_ledger.assert_budget(max_cost_usd=1)
            assert str(caught.value).splitlines()[:2] == ["over the token budget:", "  cost $4.080000, budget $1"]
    """,
    )
    _run(pytester, "--token-budget-prices=prices.yaml").assert_outcomes(passed=1)
    pytester.makeini("[pytest]\ntoken_budget_prices = prices.yaml\n")
    _run(pytester).assert_outcomes(passed=1)
