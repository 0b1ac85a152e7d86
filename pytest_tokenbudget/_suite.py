"""The suite's budget: limits on the whole run, and thresholds against the baseline's totals.

    # tokenbudget.yaml
    suite:
      max_cost_usd: 0.50            # the run's cost, USD
      max_total_tokens: 200000      # the run's tokens: all input (uncached + cache writes + reads) + output
      min_cache_hit_rate: 0.4       # the run's cache reads / all its input tokens
      fail_on: ["cost:5%", "hit_rate:0.05"]   # against the baseline (same as --token-budget-suite-fail)

A threshold (``fail_on``, ``--token-budget-suite-fail``, ini ``token_budget_suite_fail``) follows
pytest-benchmark's ``--benchmark-compare-fail``: ``METRIC:N%`` is relative to the baseline's value,
``METRIC:N`` is absolute, in the metric's own unit:

* ``cost:N%`` fails when the cost rose more than N% over the baseline's; ``cost:N``, more than $N;
* ``tokens:N%`` / ``tokens:N`` the same for all input + output tokens (N a whole number);
* ``hit_rate:N`` fails when the cache hit rate dropped more than N, as a fraction of all input
  tokens (``0.05`` = 5 percentage points, like the per-test ``max_hit_rate_drop``; N at most 1);
  ``hit_rate:N%`` when it dropped more than N% of the baseline's rate (``5%`` of 60.0% = 3 points).

"More than": a change exactly at the threshold passes. Each threshold is checked on its own; any
one broken fails the session. Totals are summed over tests (the hit rate is the sum of reads over
the sum of input, not a mean of rates). Nothing here knows of pytest or of the baseline file: the
session adds up the numbers and hands them here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

__all__ = [
    "GRAMMAR",
    "LimitCheck",
    "Metric",
    "SuiteBudget",
    "SuiteTotals",
    "SuiteVerdict",
    "Threshold",
    "ThresholdCheck",
    "ThresholdError",
    "Uncompared",
    "check_suite",
    "parse_thresholds",
]

GRAMMAR = (
    "METRIC:N or METRIC:N%, comma-separated or repeated; METRIC is cost, tokens or hit_rate; "
    "N% is relative to the baseline's value, N is absolute: USD for cost, a whole number of tokens for tokens, "
    "a drop of the hit rate as a fraction of all input for hit_rate (0.05 = 5 points, at most 1); "
    "e.g. cost:5%,tokens:50000,hit_rate:0.05"
)
"""The accepted grammar, as error messages state it."""

_ITEM = re.compile(r"(?P<metric>[^:]*):(?P<number>\d+(?:\.\d+)?|\.\d+)(?P<percent>%?)")


class Metric(enum.StrEnum):
    """What a suite limit or threshold measures."""

    COST = "cost"
    """The suite's cost, USD."""
    TOKENS = "tokens"
    """All input (uncached + cache writes + cache reads) and output tokens."""
    HIT_RATE = "hit_rate"
    """Cache reads over all input tokens."""


class ThresholdError(ValueError):
    """A threshold expression that does not follow :data:`GRAMMAR`."""

    def __init__(self, expression: str, why: str) -> None:
        self.expression = expression
        self.why = why
        super().__init__(f"{expression!r}: {why}")


@dataclass(frozen=True)
class Threshold:
    """One ``METRIC:N`` or ``METRIC:N%``: how far the suite may move from the baseline's totals.

    Attributes:
        metric: what it measures.
        amount: N, as written.
        relative: written with ``%``: N is a percentage of the baseline's value.
    """

    metric: Metric
    amount: Decimal
    relative: bool

    def __str__(self) -> str:
        return f"{self.metric}:{self.amount}{'%' if self.relative else ''}"

    def allowed(self, base: Fraction) -> Fraction:
        """The most the metric may move the wrong way from ``base`` (up for cost and tokens, down
        for the hit rate) and still pass."""
        amount = Fraction(self.amount)
        return base * amount / 100 if self.relative else amount

    def broken(self, current: Fraction, base: Fraction) -> bool:
        """Whether ``current`` moved from ``base`` the wrong way by more than allowed."""
        moved = base - current if self.metric is Metric.HIT_RATE else current - base
        return moved > self.allowed(base)


def parse_thresholds(text: str) -> tuple[Threshold, ...]:
    """The thresholds of a comma-separated expression (``cost:5%,tokens:50000``).

    Raises:
        ThresholdError: an item does not follow :data:`GRAMMAR` (the first such item, and why).
    """
    out: list[Threshold] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ThresholdError(text, "an empty threshold (a stray comma?)")
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ThresholdError(item, "not METRIC:N or METRIC:N% (N a number without a sign)")
        try:
            metric = Metric(match["metric"])
        except ValueError:
            raise ThresholdError(item, f"unknown metric {match['metric']!r}; use cost, tokens or hit_rate") from None
        amount = Decimal(match["number"])
        relative = bool(match["percent"])
        if metric is Metric.TOKENS and not relative and amount != amount.to_integral_value():
            raise ThresholdError(item, "tokens takes a whole number of tokens, or a percentage")
        if metric is Metric.HIT_RATE and not relative and amount > 1:
            raise ThresholdError(
                item,
                f"a hit rate drops by at most 1 (100 points); for {amount} points write "
                f"hit_rate:{amount / 100}, for {amount}% of the baseline's rate hit_rate:{amount}%",
            )
        if metric is Metric.HIT_RATE and relative and amount > 100:
            raise ThresholdError(item, "a hit rate drops by at most 100% of the baseline's")
        out.append(Threshold(metric, amount, relative))
    return tuple(out)


@dataclass(frozen=True)
class SuiteBudget:
    """The suite's limits (``None``: not set) and its thresholds against the baseline."""

    max_cost_usd: Decimal | None = None
    max_total_tokens: int | None = None
    min_cache_hit_rate: Decimal | None = None
    fail_on: tuple[Threshold, ...] = ()

    def is_empty(self) -> bool:
        """Nothing is set."""
        return (
            self.max_cost_usd is None
            and self.max_total_tokens is None
            and self.min_cache_hit_rate is None
            and not self.fail_on
        )


@dataclass(frozen=True)
class SuiteTotals:
    """Sums over tests.

    Attributes:
        tests: how many tests are summed.
        input_tokens: all input tokens (uncached + cache writes + cache reads).
        cache_read_input_tokens: cache reads.
        output_tokens: output tokens.
        cost_usd: the cost (``None`` when a test's cost is unknown: a model has no price).
        estimated: some of the numbers are estimates (a request changed since it was recorded).
    """

    tests: int = 0
    input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """All input and output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def hit_rate(self) -> Fraction:
        """Cache reads over all input tokens (0 without input), exact."""
        return Fraction(self.cache_read_input_tokens, self.input_tokens) if self.input_tokens else Fraction(0)

    def value(self, metric: Metric) -> Fraction | None:
        """The metric's value, exact (``None``: the cost is unknown)."""
        if metric is Metric.COST:
            return None if self.cost_usd is None else Fraction(self.cost_usd)
        if metric is Metric.TOKENS:
            return Fraction(self.total_tokens)
        return self.hit_rate

    def __add__(self, other: SuiteTotals) -> SuiteTotals:
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        return SuiteTotals(
            self.tests + other.tests,
            self.input_tokens + other.input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            self.output_tokens + other.output_tokens,
            cost,
            self.estimated or other.estimated,
        )


@dataclass(frozen=True)
class LimitCheck:
    """The run against one absolute limit (``max_cost_usd``, ``max_total_tokens``, ``min_cache_hit_rate``).

    ``current`` is ``None`` when the cost is unknown (which breaks a cost limit).
    """

    key: str
    metric: Metric
    limit: Fraction
    current: Fraction | None
    passed: bool


@dataclass(frozen=True)
class ThresholdCheck:
    """The run against the baseline over the same tests, for one threshold.

    ``current`` / ``baseline`` are ``None`` when a cost is unknown (which breaks a cost threshold).
    """

    threshold: Threshold
    current: Fraction | None
    baseline: Fraction | None
    passed: bool


class Uncompared(enum.StrEnum):
    """Why the run was not compared with the baseline."""

    NO_BASELINE = "no_baseline"
    """There is no baseline file."""
    UPDATE = "update"
    """``--token-budget-update`` rewrites the baseline from this run."""


@dataclass(frozen=True)
class SuiteVerdict:
    """The suite budget's verdict on a run.

    Attributes:
        budget: the limits and thresholds judged.
        run: every test of this run that made API turns (what the absolute limits judge).
        limits: the absolute limits, each checked (none when the run made no API turn).
        current: this run over the tests checked against the baseline (``None``: no baseline read).
        baseline: the baseline over the same tests.
        left_out: baseline entries not checked in this run, left out of the comparison.
        new: tests of this run with no baseline entry, left out of the comparison.
        thresholds: the thresholds, each checked (none when no test was compared).
        uncompared: why the run was not compared with the baseline (``None``: it was).
    """

    budget: SuiteBudget
    run: SuiteTotals
    limits: tuple[LimitCheck, ...] = ()
    current: SuiteTotals | None = None
    baseline: SuiteTotals | None = None
    left_out: int = 0
    new: int = 0
    thresholds: tuple[ThresholdCheck, ...] = ()
    uncompared: Uncompared | None = None

    @property
    def broken(self) -> int:
        """How many limits and thresholds are broken."""
        return sum(not c.passed for c in self.limits) + sum(not c.passed for c in self.thresholds)

    @property
    def judged(self) -> int:
        """How many limits and thresholds were checked."""
        return len(self.limits) + len(self.thresholds)

    @property
    def failed(self) -> bool:
        """A limit or threshold is broken: the session fails."""
        return self.broken > 0


def check_suite(
    budget: SuiteBudget,
    run: SuiteTotals,
    *,
    current: SuiteTotals | None = None,
    baseline: SuiteTotals | None = None,
    left_out: int = 0,
    new: int = 0,
    uncompared: Uncompared | None = None,
) -> SuiteVerdict:
    """Judge the run's totals against the absolute limits, and ``current`` (this run over the tests
    checked against the baseline) against ``baseline`` (the baseline over the same tests).

    Limits are not judged when the run made no API turn; thresholds not when no test was compared
    (``uncompared`` says why there was no comparison at all).
    """
    limits: list[LimitCheck] = []
    if run.tests:
        cost = run.value(Metric.COST)
        if budget.max_cost_usd is not None:
            limit = Fraction(budget.max_cost_usd)
            limits.append(LimitCheck("max_cost_usd", Metric.COST, limit, cost, cost is not None and cost <= limit))
        if budget.max_total_tokens is not None:
            tokens = Fraction(run.total_tokens)
            limit = Fraction(budget.max_total_tokens)
            limits.append(LimitCheck("max_total_tokens", Metric.TOKENS, limit, tokens, tokens <= limit))
        if budget.min_cache_hit_rate is not None:
            limit = Fraction(budget.min_cache_hit_rate)
            limits.append(LimitCheck("min_cache_hit_rate", Metric.HIT_RATE, limit, run.hit_rate, run.hit_rate >= limit))
    checks: list[ThresholdCheck] = []
    if current is not None and baseline is not None and current.tests:
        for threshold in budget.fail_on:
            now, before = current.value(threshold.metric), baseline.value(threshold.metric)
            passed = now is not None and before is not None and not threshold.broken(now, before)
            checks.append(ThresholdCheck(threshold, now, before, passed))
    return SuiteVerdict(budget, run, tuple(limits), current, baseline, left_out, new, tuple(checks), uncompared)
