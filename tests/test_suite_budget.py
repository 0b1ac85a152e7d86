"""The suite budget: the threshold grammar (unit and property tests), then end to end: limits on the
whole run and thresholds against the baseline's totals over the same tests, from the command
line, the ini file and the config file.

The end-to-end project is ``conftest.SUITE_AGENT``, recorded and its baseline written; the runs
below replay it offline with its first user message lengthened (``CHANGED``). By hand, over the
six tests with API turns: the baseline costs $0.037944 for 20,764 tokens (20,731 input, 11,576 of
them cache reads: a 55.84% hit rate); the changed run costs $0.038196 (estimated) for 20,848
tokens (20,815 input, 11,576 reads, unchanged: 55.61%). So cost +$0.000252 (+0.66%), tokens +84 (+0.40%),
hit rate -0.23 points (-0.40% of the baseline's rate); each test's cost rises under 1%, well
within the per-test gate's +10%.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from conftest import SUITE_AGENT, read_json, record_suite
from hypothesis import given
from hypothesis import strategies as st
from test_not_checked import section

from pytest_tokenbudget._suite import Metric, Threshold, ThresholdError, parse_thresholds
from pytest_tokenbudget.reports import validate_report

CHANGED = SUITE_AGENT.replace('"Where is my order 42?"', '"Where is my order 42? I ordered it last week."')
RUN = "  this run, 6 tests: cost $0.038196 (estimated), 20,848 tokens, cache hit rate 55.61%"
SAME_SIX = "  against the baseline over the same 6 tests:"
COST = "cost $0.038196 (estimated) vs baseline $0.037944 (+$0.000252, +0.66%)"
TOKENS = "tokens 20,848 (estimated) vs baseline 20,764 (+84, +0.40%)"
HIT_RATE = "cache hit rate 55.61% (estimated) vs baseline 55.84% (-0.23 points, -0.40%)"
ACCEPTED = (
    "  accepted: METRIC:N or METRIC:N%, comma-separated or repeated; METRIC is cost, tokens or hit_rate; N% is "
    "relative to the baseline's value, N is absolute: USD for cost, a whole number of tokens for tokens, a drop of "
    "the hit rate as a fraction of all input for hit_rate (0.05 = 5 points, at most 1); "
    "e.g. cost:5%,tokens:50000,hit_rate:0.05"
)


# ---------------------------------------------------------------- the grammar


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cost:5%", [(Metric.COST, "5", True)]),
        ("cost:0.02", [(Metric.COST, "0.02", False)]),
        ("tokens:10%", [(Metric.TOKENS, "10", True)]),
        ("tokens:50000", [(Metric.TOKENS, "50000", False)]),
        ("hit_rate:5%", [(Metric.HIT_RATE, "5", True)]),
        ("hit_rate:0.05", [(Metric.HIT_RATE, "0.05", False)]),
        ("hit_rate:.05", [(Metric.HIT_RATE, "0.05", False)]),
        (
            " cost:5% , tokens:50000,hit_rate:0.05 ",
            [(Metric.COST, "5", True), (Metric.TOKENS, "50000", False), (Metric.HIT_RATE, "0.05", False)],
        ),
        ("cost:5%,cost:0.02", [(Metric.COST, "5", True), (Metric.COST, "0.02", False)]),
    ],
)
def test_thresholds_follow_the_benchmark_compare_fail_grammar(
    text: str, expected: list[tuple[Metric, str, bool]]
) -> None:
    """``METRIC:N%`` is relative to the baseline, ``METRIC:N`` absolute; comma-separated, spaces around items allowed."""
    assert parse_thresholds(text) == tuple(Threshold(m, Decimal(n), r) for m, n, r in expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cost:5x", "'cost:5x': not METRIC:N or METRIC:N% (N a number without a sign)"),
        ("cost:-5%", "'cost:-5%': not METRIC:N or METRIC:N% (N a number without a sign)"),
        ("cost", "'cost': not METRIC:N or METRIC:N% (N a number without a sign)"),
        ("cost:", "'cost:': not METRIC:N or METRIC:N% (N a number without a sign)"),
        ("cost: 5%", "'cost: 5%': not METRIC:N or METRIC:N% (N a number without a sign)"),
        ("speed:5%", "'speed:5%': unknown metric 'speed'; use cost, tokens or hit_rate"),
        ("Cost:5%", "'Cost:5%': unknown metric 'Cost'; use cost, tokens or hit_rate"),
        ("", "'': an empty threshold (a stray comma?)"),
        ("cost:5%,", "'cost:5%,': an empty threshold (a stray comma?)"),
        ("tokens:1.5", "'tokens:1.5': tokens takes a whole number of tokens, or a percentage"),
        (
            "hit_rate:5",
            "'hit_rate:5': a hit rate drops by at most 1 (100 points); for 5 points write hit_rate:0.05, "
            "for 5% of the baseline's rate hit_rate:5%",
        ),
        ("hit_rate:101%", "'hit_rate:101%': a hit rate drops by at most 100% of the baseline's"),
    ],
)
def test_a_bad_threshold_says_which_item_and_why(text: str, message: str) -> None:
    with pytest.raises(ThresholdError) as raised:
        parse_thresholds(text)
    assert str(raised.value) == message


_AMOUNTS = st.decimals(min_value=0, max_value=10_000, places=3, allow_nan=False, allow_infinity=False)


@st.composite
def thresholds(draw: st.DrawFn) -> Threshold:
    metric = draw(st.sampled_from(Metric))
    relative = draw(st.booleans())
    amount = draw(_AMOUNTS)
    if metric is Metric.TOKENS and not relative:
        amount = Decimal(int(amount))
    if metric is Metric.HIT_RATE:
        amount = min(amount, Decimal(100)) if relative else amount % 1
    return Threshold(metric, amount, relative)


@given(st.lists(thresholds(), min_size=1, max_size=5))
def test_thresholds_round_trip_through_their_text(items: list[Threshold]) -> None:
    """Every threshold prints as an expression that parses back to it; a list joins with commas."""
    assert parse_thresholds(",".join(str(t) for t in items)) == tuple(items)


@given(st.text(alphabet="costkenhi_ra:%.,0123456789 -x", max_size=30))
def test_any_text_parses_or_is_refused_with_a_threshold_error(text: str) -> None:
    """No input raises anything but ThresholdError (which the plugin turns into a usage error)."""
    error: ThresholdError | None = None
    try:
        parsed = parse_thresholds(text)
    except ThresholdError as raised:
        error, parsed = raised, ()
    if error is not None:
        assert str(error).startswith(repr(error.expression))
    else:
        assert parsed
        assert all(isinstance(t, Threshold) for t in parsed)


@given(
    thresholds(),
    st.fractions(min_value=Fraction(1, 10**6), max_value=10**6),
    st.fractions(min_value=Fraction(1, 10**9), max_value=1),
)
def test_a_threshold_breaks_only_past_its_amount(threshold: Threshold, base: Fraction, epsilon: Fraction) -> None:
    """Moving the wrong way by exactly the allowed amount passes; by any more, fails; the right way never fails.

    The allowed amount is N% of the baseline's value for ``METRIC:N%``, N itself for ``METRIC:N``.
    """
    allowed = threshold.allowed(base)
    amount = Fraction(threshold.amount)
    assert allowed == (base * amount / 100 if threshold.relative else amount)
    worse = -1 if threshold.metric is Metric.HIT_RATE else 1  # the hit rate fails going down
    assert not threshold.broken(base + worse * allowed, base)
    assert threshold.broken(base + worse * (allowed + epsilon), base)
    assert not threshold.broken(base - worse * epsilon, base)


# ---------------------------------------------------------------- end to end


@pytest.fixture
def changed(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_api_key: None) -> pytest.Pytester:
    """The suite recorded with its baseline, then its first user message lengthened (replayed offline)."""
    record_suite(pytester, monkeypatch)
    pytester.makepyfile(test_agent=CHANGED)
    return pytester


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "--token-budget", *args)


def _suite_fail(pytester: pytest.Pytester, expression: str, *args: str) -> pytest.RunResult:
    return _run(pytester, f"--token-budget-suite-fail={expression}", *args)


def _passed(result: pytest.RunResult, lines: list[str]) -> None:
    """Every test passed and the suite budget too: exit 0."""
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=7)
    assert section(result, "suite budget:") == lines


def _failed(result: pytest.RunResult, lines: list[str]) -> None:
    """Every test passed (the per-test gate included) but the suite budget fails the session: exit 1."""
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=7)
    assert section(result, "suite budget:") == lines


def test_suite_cost_relative_threshold(changed: pytest.Pytester) -> None:
    """``cost:N%``: +0.66% passes at 1% and fails the session at 0.5%, every test passing."""
    _passed(
        _suite_fail(changed, "cost:1%"),
        [
            "suite budget: ok, 1 limit checked",
            RUN,
            SAME_SIX,
            f"  - ok   {COST}: within the cost:1% threshold (fails when it rises more than 1% over the baseline's)",
        ],
    )
    _failed(
        _suite_fail(changed, "cost:0.5%"),
        [
            "suite budget: FAIL, 1 of 1 limit broken",
            RUN,
            SAME_SIX,
            f"  - FAIL {COST}: over the cost:0.5% threshold (fails when it rises more than 0.5% over the baseline's)",
        ],
    )


def test_suite_cost_absolute_threshold(changed: pytest.Pytester) -> None:
    """``cost:N``: +$0.000217 passes at $0.001 and fails at $0.0002."""
    _passed(
        _suite_fail(changed, "cost:0.001"),
        [
            "suite budget: ok, 1 limit checked",
            RUN,
            SAME_SIX,
            f"  - ok   {COST}: within the cost:0.001 threshold (fails when it rises more than $0.001)",
        ],
    )
    _failed(
        _suite_fail(changed, "cost:0.0002"),
        [
            "suite budget: FAIL, 1 of 1 limit broken",
            RUN,
            SAME_SIX,
            f"  - FAIL {COST}: over the cost:0.0002 threshold (fails when it rises more than $0.0002)",
        ],
    )


def test_suite_token_thresholds(changed: pytest.Pytester) -> None:
    """``tokens:N%`` and ``tokens:N``: +84 tokens (+0.40%) passes at 0.5% and at 100, fails at 50."""
    _passed(
        _suite_fail(changed, "tokens:0.5%,tokens:100"),
        [
            "suite budget: ok, 2 limits checked",
            RUN,
            SAME_SIX,
            f"  - ok   {TOKENS}: within the tokens:0.5% threshold (fails when it rises more than 0.5% over the baseline's)",
            f"  - ok   {TOKENS}: within the tokens:100 threshold (fails when it rises more than 100 tokens)",
        ],
    )
    _failed(
        _suite_fail(changed, "tokens:50"),
        [
            "suite budget: FAIL, 1 of 1 limit broken",
            RUN,
            SAME_SIX,
            f"  - FAIL {TOKENS}: over the tokens:50 threshold (fails when it rises more than 50 tokens)",
        ],
    )


def test_suite_hit_rate_thresholds_in_points_and_in_percent(changed: pytest.Pytester) -> None:
    """``hit_rate:N`` is a drop in points (0.002 = 0.2 points); ``hit_rate:N%`` a share of the baseline's rate."""
    _passed(
        _run(changed, "--token-budget-suite-fail=hit_rate:0.003", "--token-budget-suite-fail=hit_rate:0.5%"),
        [
            "suite budget: ok, 2 limits checked",
            RUN,
            SAME_SIX,
            f"  - ok   {HIT_RATE}: within the hit_rate:0.003 threshold (fails when it drops more than 0.3 points)",
            f"  - ok   {HIT_RATE}: within the hit_rate:0.5% threshold (fails when it drops more than 0.5% of the "
            "baseline's rate)",
        ],
    )
    _failed(
        _suite_fail(changed, "hit_rate:0.001,hit_rate:0.2%"),
        [
            "suite budget: FAIL, 2 of 2 limits broken",
            RUN,
            SAME_SIX,
            f"  - FAIL {HIT_RATE}: over the hit_rate:0.001 threshold (fails when it drops more than 0.1 points)",
            f"  - FAIL {HIT_RATE}: over the hit_rate:0.2% threshold (fails when it drops more than 0.2% of the "
            "baseline's rate)",
        ],
    )


def test_suite_limits_and_thresholds_from_the_config_file(changed: pytest.Pytester) -> None:
    """The ``suite`` section: absolute limits on the run and ``fail_on`` thresholds; in the terminal, JSON and Markdown."""
    config = changed.path / "tokenbudget.yaml"
    config.write_text(
        "suite:\n"
        "  max_cost_usd: 0.05\n"
        "  max_total_tokens: 25000\n"
        "  min_cache_hit_rate: 0.5\n"
        '  fail_on: ["cost:1%", "tokens:100", "hit_rate:0.003"]\n'
    )
    _passed(
        _run(changed),
        [
            "suite budget: ok, 6 limits checked",
            RUN,
            "  - ok   cost $0.038196 (estimated) within max_cost_usd $0.05",
            "  - ok   tokens 20,848 (estimated) within max_total_tokens 25,000",
            "  - ok   cache hit rate 55.61% (estimated) within min_cache_hit_rate 50%",
            SAME_SIX,
            f"  - ok   {COST}: within the cost:1% threshold (fails when it rises more than 1% over the baseline's)",
            f"  - ok   {TOKENS}: within the tokens:100 threshold (fails when it rises more than 100 tokens)",
            f"  - ok   {HIT_RATE}: within the hit_rate:0.003 threshold (fails when it drops more than 0.3 points)",
        ],
    )
    config.write_text(
        "suite:\n"
        "  max_cost_usd: 0.038\n"
        "  max_total_tokens: 20000\n"
        "  min_cache_hit_rate: 0.56\n"
        "  fail_on:\n"
        "    - cost:0.5%\n"
        "    - hit_rate:0.2%\n"
    )
    failed = _run(changed, "--token-budget-json=report.json", "--token-budget-md=report.md")
    _failed(
        failed,
        [
            "suite budget: FAIL, 5 of 5 limits broken",
            RUN,
            "  - FAIL cost $0.038196 (estimated) over max_cost_usd $0.038",
            "  - FAIL tokens 20,848 (estimated) over max_total_tokens 20,000",
            "  - FAIL cache hit rate 55.61% (estimated) under min_cache_hit_rate 56%",
            SAME_SIX,
            f"  - FAIL {COST}: over the cost:0.5% threshold (fails when it rises more than 0.5% over the baseline's)",
            f"  - FAIL {HIT_RATE}: over the hit_rate:0.2% threshold (fails when it drops more than 0.2% of the "
            "baseline's rate)",
        ],
    )
    document = read_json(changed.path / "report.json")
    validate_report(document)
    suite = document["suite"]
    assert suite["passed"] is False
    assert suite["budget"] == {
        "max_cost_usd": 0.038,
        "max_total_tokens": 20000,
        "min_cache_hit_rate": 0.56,
        "fail_on": ["cost:0.5%", "hit_rate:0.2%"],
    }
    assert [(c["key"], c["limit"], c["current"], c["passed"]) for c in suite["limits"]] == [
        ("max_cost_usd", 0.038, suite["run"]["cost_usd"], False),
        ("max_total_tokens", 20000, 20848, False),
        ("min_cache_hit_rate", 0.56, round(11576 / 20815, 6), False),
    ]
    assert suite["compared"]["current"]["total_tokens"] == 20848
    assert suite["compared"]["baseline"] == {
        "tests": 6,
        "total_input_tokens": 20731,
        "cache_read_input_tokens": 11576,
        "output_tokens": 33,
        "total_tokens": 20764,
        "cost_usd": suite["compared"]["baseline"]["cost_usd"],
        "cache_hit_rate": round(11576 / 20731, 6),
        "estimated": False,
    }
    assert round(suite["compared"]["baseline"]["cost_usd"], 6) == 0.037944
    assert (suite["compared"]["left_out"], suite["compared"]["new"], suite["uncompared"]) == (0, 0, None)
    assert [(t["threshold"], t["relative"], t["passed"]) for t in suite["thresholds"]] == [
        ("cost:0.5%", True, False),
        ("hit_rate:0.2%", True, False),
    ]
    markdown = (changed.path / "report.md").read_text().splitlines()
    assert "**suite budget: FAIL, 5 of 5 limits broken**" in markdown
    assert "  - :x: cost $0.038196 (estimated) over max_cost_usd $0.038" in markdown
    assert (
        f"  - :x: {COST}: over the cost:0.5% threshold (fails when it rises more than 0.5% over the baseline's)"
    ) in markdown
    # The update accepts the change (its estimates, marked); the absolute limits still judge the run.
    update = changed.runpytest("-p", "no:cacheprovider", "--token-budget-update", "--token-budget-accept-estimates")
    assert update.ret == pytest.ExitCode.TESTS_FAILED
    update.assert_outcomes(passed=7)
    update.stdout.fnmatch_lines(["  baseline tokenbudget-baseline.json: 6 test(s) written"])
    assert section(update, "suite budget:") == [
        "suite budget: FAIL, 3 of 3 limits broken",
        RUN,
        "  - FAIL cost $0.038196 (estimated) over max_cost_usd $0.038",
        "  - FAIL tokens 20,848 (estimated) over max_total_tokens 20,000",
        "  - FAIL cache hit rate 55.61% (estimated) under min_cache_hit_rate 56%",
        "  against the baseline: not compared (--token-budget-update rewrites it from this run)",
    ]


def test_the_flag_replaces_the_ini_key_which_replaces_the_config_file(changed: pytest.Pytester) -> None:
    """Precedence: ``--token-budget-suite-fail``, then ini ``token_budget_suite_fail``, then ``suite.fail_on``."""
    (changed.path / "tokenbudget.yaml").write_text('suite:\n  fail_on: "tokens:50"\n')
    (changed.path / "pytest.ini").write_text("[pytest]\ntoken_budget_suite_fail = cost:0.5%\n")
    _failed(
        _run(changed),
        [
            "suite budget: FAIL, 1 of 1 limit broken",
            RUN,
            SAME_SIX,
            f"  - FAIL {COST}: over the cost:0.5% threshold (fails when it rises more than 0.5% over the baseline's)",
        ],
    )
    _passed(
        _suite_fail(changed, "cost:1%"),
        [
            "suite budget: ok, 1 limit checked",
            RUN,
            SAME_SIX,
            f"  - ok   {COST}: within the cost:1% threshold (fails when it rises more than 1% over the baseline's)",
        ],
    )


def test_the_suite_compares_only_the_tests_checked(changed: pytest.Pytester) -> None:
    """Deselected entries and a renamed test are left out of both sides of the comparison, and counted."""
    cassettes = changed.path / "cassettes" / "test_agent"
    (cassettes / "test_short.yaml").rename(cassettes / "test_brief.yaml")
    changed.makepyfile(test_agent=CHANGED.replace("def test_short(", "def test_brief("))
    result = _suite_fail(changed, "cost:0.5%", "-k", "not test_more[3] and not test_more[4]")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=5, deselected=2)
    # Compared: test_refund, test_more[1], test_more[2], $0.007015 + $0.005498 + $0.006065 against
    # $0.006969 + $0.005480 + $0.006031 in the baseline (sums of the unrounded costs: $0.018481).
    # This run: those three and test_brief ($0.005513; 1,468 tokens, no cache read).
    assert section(result, "suite budget:") == [
        "suite budget: FAIL, 1 of 1 limit broken",
        "  this run, 4 tests: cost $0.024102 (estimated), 10,390 tokens, cache hit rate 41.89%",
        "  against the baseline over the same 3 tests (left out: 3 baseline entries not checked, "
        "1 test not in the baseline):",
        "  - FAIL cost $0.018589 (estimated) vs baseline $0.018481 (+$0.000108, +0.58%): over the cost:0.5% "
        "threshold (fails when it rises more than 0.5% over the baseline's)",
    ]
    assert section(result, "baseline:") == [
        "baseline: 3 of 6 entries checked, 3 not checked:",
        "  - 2 deselected: test_agent.py::test_more[3], test_agent.py::test_more[4]",
        "  - 1 not collected in this run (renamed, removed, or outside the paths given): test_agent.py::test_short",
    ]


def test_a_bad_suite_threshold_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """From the flag, the ini key or the config file: exit 4, naming where it came from and the grammar."""
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    flag = pytester.runpytest("-p", "no:cacheprovider", "--token-budget", "--token-budget-suite-fail=cost:5x")
    assert flag.ret == pytest.ExitCode.USAGE_ERROR
    assert flag.errlines[:2] == [
        "ERROR: tokenbudget: --token-budget-suite-fail: 'cost:5x': not METRIC:N or METRIC:N% (N a number without a sign)",
        ACCEPTED,
    ]
    (pytester.path / "pytest.ini").write_text("[pytest]\ntoken_budget_suite_fail = cost:5%, hit_rate:5\n")
    ini = pytester.runpytest("-p", "no:cacheprovider", "--token-budget")
    assert ini.ret == pytest.ExitCode.USAGE_ERROR
    assert ini.errlines[:2] == [
        "ERROR: tokenbudget: ini token_budget_suite_fail: 'hit_rate:5': a hit rate drops by at most 1 (100 points); "
        "for 5 points write hit_rate:0.05, for 5% of the baseline's rate hit_rate:5%",
        ACCEPTED,
    ]
    (pytester.path / "pytest.ini").write_text("[pytest]\n")
    (pytester.path / "tokenbudget.yaml").write_text(
        "suite:\n  max_cost_usd: 1\n  fail_on:\n    - cost:5%\n    - tokens:1.5\n"
    )
    config = pytester.runpytest("-p", "no:cacheprovider", "--token-budget")
    assert config.ret == pytest.ExitCode.USAGE_ERROR
    assert config.errlines[:4] == [
        "ERROR: tokenbudget: token budget config is invalid",
        f"  file: {pytester.path / 'tokenbudget.yaml'}, line 5",
        "  why:  suite.fail_on: 'tokens:1.5': tokens takes a whole number of tokens, or a percentage",
        "  fix:  write thresholds as" + ACCEPTED.removeprefix("  accepted:"),
    ]
    for result in (flag, ini, config):
        assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_the_flag_and_its_ini_twin_are_in_the_help(pytester: pytest.Pytester) -> None:
    """``--help`` shows the flag (its ``%`` escaped for argparse) and the ini key."""
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["  --token-budget-suite-fail=EXPR", "*cost:N% or cost:N (USD)*", "  token_budget_suite_fail (linelist):"]
    )
