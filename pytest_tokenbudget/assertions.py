"""What the ``token_ledger`` fixture returns: the test's turns so far, and inline budget checks.

::

    def test_agent(token_ledger):
        run_agent()
        token_ledger.assert_prefix_stable()
        token_ledger.assert_cache_hit_rate(min=0.6)
        token_ledger.assert_budget(max_cost_usd=0.05, max_turns=8)
        print(token_ledger.totals(), token_ledger.cache_hit_rate)

Costs use the session's prices: the price override files and the ``price_at`` policy of the run
(``--token-budget-prices``, ``token_budget_prices``, the budgets file's ``prices``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from .analysis import CacheAnalysis, analyze
from .budgets import Budget, check_budget
from .ledger import Exchange, Ledger, Totals, Turn
from .pricing import Pricer

__all__ = ["TokenLedger"]


class TokenLedger:
    """A test's ledger, live: every read sees every API call the test has made so far.

    Reading: :attr:`turns`, :attr:`exchanges`, :meth:`totals`, :meth:`by_model`,
    :attr:`cache_hit_rate`, :meth:`snapshot` (a frozen :class:`~pytest_tokenbudget.Ledger`),
    :meth:`cache_analysis`. Asserting: :meth:`assert_budget`, :meth:`assert_prefix_stable`,
    :meth:`assert_cache_hit_rate`, each failing with every turn's cache verdict.

    Args:
        source: returns the ledger as it is now.
        pricer: returns the session's pricer (called only when a cost is needed).
    """

    def __init__(self, source: Callable[[], Ledger], pricer: Callable[[], Pricer]) -> None:
        self._source = source
        self._pricer = pricer

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> Ledger:
        """A frozen copy of the ledger as it is now."""
        return self._source()

    @property
    def turns(self) -> list[Turn]:
        """The billed turns so far, in order."""
        return self._source().turns

    @property
    def exchanges(self) -> list[Exchange]:
        """Every exchange so far, billed or not."""
        return self._source().exchanges

    def __iter__(self) -> Iterator[Turn]:
        return iter(self.turns)

    def __len__(self) -> int:
        return len(self.turns)

    def __getitem__(self, index: int) -> Turn:
        return self.turns[index]

    def __repr__(self) -> str:
        return repr(self._source()).replace("<Ledger", "<TokenLedger", 1)

    def totals(self) -> Totals:
        """Sums over every turn so far."""
        return self._source().totals()

    def by_model(self) -> dict[str, Totals]:
        """Sums per answering model, in order of first use."""
        return self._source().by_model()

    @property
    def cache_hit_rate(self) -> float:
        """Cache reads over all input tokens so far (0 when there is no input)."""
        return self._source().cache_hit_rate

    def cache_analysis(self) -> CacheAnalysis:
        """Verdicts, fingerprints and predictions per turn (see :mod:`pytest_tokenbudget.analysis`)."""
        return analyze(self._source())

    def cost_usd(self) -> Decimal:
        """What the turns so far cost at the session's prices.

        Raises:
            PriceError: a turn's model has no price (add it to a price override file).
        """
        pricer = self._pricer()
        return sum((pricer.price(turn).cost_usd for turn in self.turns), Decimal(0))

    # ------------------------------------------------------------------ asserting

    def assert_prefix_stable(self) -> None:
        """Fail unless every turn's prompt prefix extends the previous turn's (same model).

        Raises:
            AssertionError: naming each break (turn, level, JSON path, offset, excerpts) and
                listing the verdict of every turn.
        """
        analysis = self.cache_analysis()
        if analysis.prefix_stable:
            return
        lines = ["prompt prefix is not byte-stable:"]
        lines.extend(f"  {d.describe()}" for d in analysis.divergences)
        lines.append("verdicts:")
        lines.extend(f"  {line}" for line in analysis.verdict_lines())
        raise AssertionError("\n".join(lines))

    def assert_budget(self, **limits: Any) -> None:
        """Fail when the turns so far break any of these limits (the marker's keywords).

        Accepts ``max_cost_usd``, ``max_input_tokens`` (all input: uncached + cache writes +
        reads), ``max_output_tokens``, ``max_turns``, ``min_cache_hit_rate``, ``prefix_stable``.
        Costs use the session's prices (its override files and ``price_at`` policy).

        Raises:
            AssertionError: listing each breach and every turn's verdict.
            ConfigError: an unknown keyword or a bad value.
            PriceError: ``max_cost_usd`` is set and a turn's model has no price.
        """
        budget = Budget.from_mapping(limits, where="token_ledger.assert_budget()")
        ledger = self._source()
        totals = ledger.totals()
        cost = None
        if budget.max_cost_usd is not None:
            pricer = self._pricer()
            cost = sum((pricer.price(turn).cost_usd for turn in ledger.turns), Decimal(0))
        analysis = analyze(ledger) if budget.prefix_stable or budget.min_cache_hit_rate is not None else None
        breaches = check_budget(
            budget,
            turns=totals.turns,
            total_input_tokens=totals.total_input_tokens,
            output_tokens=totals.output_tokens,
            cost_usd=cost,
            cache_hit_rate=totals.cache_hit_rate,
            prefix_breaks=[d.describe() for d in analysis.divergences] if analysis else [],
        )
        if breaches:
            lines = ["over the token budget:", *(f"  {b}" for b in breaches)]
            if analysis is not None:
                lines.extend(["verdicts:", *(f"  {line}" for line in analysis.verdict_lines())])
            raise AssertionError("\n".join(lines))

    def assert_cache_hit_rate(self, min: float) -> None:
        """Fail when the cache hit rate (reads over all input tokens) is below ``min`` (0-1).

        Raises:
            AssertionError: with the rate, the budget and every turn's verdict.
        """
        ledger = self._source()
        rate = ledger.cache_hit_rate
        if rate >= min:
            return
        lines = [f"cache hit rate {rate:.1%} is below {min:.1%}"]
        lines.extend(f"  {line}" for line in analyze(ledger).verdict_lines())
        raise AssertionError("\n".join(lines))
