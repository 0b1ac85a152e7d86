"""The report as data: each test's turns priced once, with their cache analysis, and the gate's lines.

The same report comes out of ``pytest --token-budget`` (one entry per test, ``id`` = node id)
and ``tokenbudget report PATH...`` (one entry per cassette, ``id`` = its path).

Cache hit rate = cache reads / (uncached input + cache writes + cache reads), over the turns
counted: the share of input tokens billed at the cache-read price.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from .._suite import SuiteVerdict
from ..analysis import TurnCache, analyze
from ..baseline import BaselineEntry
from ..budgets import Budget
from ..errors import TokenBudgetError
from ..ledger import Ledger, Totals, Turn
from ..levers import Growth, Lever, flag_growth, suite_levers
from ..prefix import Difference
from ..pricing import Pricer, TurnCost

__all__ = [
    "Coverage",
    "GapReason",
    "GateKind",
    "GateLine",
    "NotChecked",
    "Report",
    "ReportError",
    "ReportNote",
    "TestEntry",
    "TurnEntry",
    "build_entry",
    "build_report",
    "price_ledger",
]


@dataclass(frozen=True)
class TurnEntry:
    """A turn, its price (``None`` when it could not be priced) and its cache analysis."""

    turn: Turn
    cost: TurnCost | None
    cache: TurnCache | None = None


@dataclass(frozen=True)
class TestEntry:
    """One test (or one cassette) in the report, priced."""

    __test__ = False  # not a pytest test class

    id: str
    cassette: str | None
    turns: tuple[TurnEntry, ...]
    totals: Totals
    cost_usd: Decimal | None
    errors: tuple[str, ...] = ()
    levers: tuple[Lever, ...] = ()
    """What each lever would save on this test (filled in by the advisor; empty when not advised)."""
    baseline: BaselineEntry | None = None
    """The baseline's view of this run (what ``--token-budget-update`` would write; ``tokenbudget gate``
    compares it); ``None`` outside pytest or without request bodies."""
    first_change: tuple[int, Difference] | None = None
    """(turn, difference) of the first request that departs from its recording."""
    budget: Budget | None = None
    """The test's budget and gate thresholds as the run resolved them (marker, config file)."""
    growth: Growth | None = None
    """How its input grows per turn (filled in by the advisor; ``fast`` set over the suite)."""

    @property
    def cache_hit_rate(self) -> float:
        """Cache reads over all input tokens."""
        return self.totals.cache_hit_rate

    def by_model(self) -> dict[str, tuple[Totals, Decimal | None]]:
        """Totals and cost per answering model (cost ``None`` when a turn of it is unpriced)."""
        out: dict[str, tuple[Totals, Decimal | None]] = {}
        for item in self.turns:
            totals, cost = out.get(item.turn.model, (Totals(), Decimal(0)))
            turn_cost = item.cost.cost_usd if item.cost is not None else None
            out[item.turn.model] = (
                totals + item.turn.totals(),
                None if cost is None or turn_cost is None else cost + turn_cost,
            )
        return out


@dataclass(frozen=True)
class ReportError:
    """Something that could not be read or priced."""

    path: str | None
    reason: str
    test: str | None = None


@dataclass(frozen=True)
class ReportNote:
    """A file read that holds no priced turn, and why: not an error (the exit status is unaffected)."""

    path: str
    note: str


class GateKind(enum.StrEnum):
    """What a gate line says."""

    FAIL = "fail"
    """The test fails the gate."""
    NOTE = "note"
    """Worth knowing; not a failure."""
    NOT_IN_BASELINE = "not_in_baseline"
    """The test has no baseline entry."""
    INFO = "info"
    """About the run as a whole (no baseline yet, the baseline written)."""


@dataclass(frozen=True)
class GateLine:
    """One line of the gate's verdict."""

    kind: GateKind
    text: str
    test: str | None = None

    def render(self) -> str:
        """As the terminal shows it: ``test: FAIL text``, ``test: text`` or ``text``."""
        if self.test is None:
            return self.text
        if self.kind is GateKind.FAIL:
            return f"{self.test}: FAIL {self.text}"
        return f"{self.test}: {self.text}"


class GapReason(enum.StrEnum):
    """Why a baseline entry was not checked in a run (the order is the summary's)."""

    DESELECTED = "deselected"
    """Deselected (``-k``, ``-m``, ``--deselect``, ``--lf``)."""
    SKIPPED = "skipped"
    """Skipped."""
    FAILED_BEFORE_CALL = "failed_before_call"
    """Failed (or errored in setup) without making an API call."""
    NO_CALL = "no_call"
    """Ran and passed without a recorded API call, although its baseline entry has turns."""
    UNCOMPARABLE = "uncomparable"
    """Made API calls whose turns cannot be compared (a turn's request is not in its recording)."""
    NOT_RUN = "not_run"
    """Collected and selected but never run (``-x``, ``--maxfail``, an interrupt)."""
    NOT_COLLECTED = "not_collected"
    """Not collected in this run: renamed, removed, or outside the paths given."""

    @property
    def description(self) -> str:
        """The reason as the summary words it, after the count."""
        return _GAP_WORDS[self]


_GAP_WORDS = {
    GapReason.DESELECTED: "deselected",
    GapReason.SKIPPED: "skipped",
    GapReason.FAILED_BEFORE_CALL: "failed before any API call",
    GapReason.NO_CALL: "ran without an API call (its baseline entry has turns)",
    GapReason.UNCOMPARABLE: "made API calls that cannot be compared (a request is not in the recording)",
    GapReason.NOT_RUN: "not run (the session stopped early)",
    GapReason.NOT_COLLECTED: "not collected in this run (renamed, removed, or outside the paths given)",
}


@dataclass(frozen=True)
class NotChecked:
    """The baseline entries not checked for one reason, by node id (sorted)."""

    reason: GapReason
    tests: tuple[str, ...]


@dataclass(frozen=True)
class Coverage:
    """Which baseline entries a run checked, and why the others were not.

    Attributes:
        entries: baseline entries.
        checked: the entries compared with this run, by node id (sorted).
        not_checked: the others, grouped by reason (in :class:`GapReason` order, empty groups left out).
    """

    entries: int
    checked: tuple[str, ...]
    not_checked: tuple[NotChecked, ...] = ()

    @property
    def unchecked(self) -> int:
        """How many baseline entries were not checked."""
        return sum(len(group.tests) for group in self.not_checked)


@dataclass(frozen=True)
class Report:
    """The whole report.

    Attributes:
        tests: each test (or cassette) priced.
        errors: what could not be read or priced.
        price_source: the prices' library, version, override files and policy.
        coverage: which baseline entries were checked (``None``: not judged against a baseline).
        suite: the suite budget's verdict (``None``: no suite budget set).
        notes: files read that hold no priced turn (``tokenbudget report``): not recordings,
            no Anthropic API traffic, or no billed turn.
    """

    tests: tuple[TestEntry, ...]
    errors: tuple[ReportError, ...]
    price_source: Mapping[str, Any]
    coverage: Coverage | None = None
    suite: SuiteVerdict | None = None
    notes: tuple[ReportNote, ...] = ()

    @property
    def totals(self) -> Totals:
        """Sums over every test."""
        total = Totals()
        for entry in self.tests:
            total = total + entry.totals
        return total

    @property
    def cost_usd(self) -> Decimal | None:
        """Total cost of every priced test (``None`` if nothing could be priced)."""
        costs = [e.cost_usd for e in self.tests if e.cost_usd is not None]
        return sum(costs, Decimal(0)) if costs else None

    @property
    def levers(self) -> tuple[Lever, ...]:
        """The suite's saving per lever, summed over the tests (each measured on top of the
        levers before it)."""
        return suite_levers(entry.levers for entry in self.tests)

    def sorted_tests(self) -> list[TestEntry]:
        """Tests by cost, highest first (unpriced ones last), then by id."""
        return sorted(self.tests, key=lambda e: (e.cost_usd is None, -(e.cost_usd or 0), e.id))


def price_ledger(ledger: Ledger, pricer: Pricer, *, test: str | None = None) -> tuple[list[TurnEntry], list[str]]:
    """Price every turn; a turn that cannot be priced gets ``cost=None`` and an error line."""
    entries: list[TurnEntry] = []
    errors: list[str] = []
    for turn in ledger.turns:
        try:
            entries.append(TurnEntry(turn, pricer.price(turn, test=test)))
        except TokenBudgetError as error:
            entries.append(TurnEntry(turn, None))
            if error.render() not in errors:
                errors.append(error.render())
    return entries, errors


def build_entry(
    test_id: str,
    cassette: str | None,
    ledger: Ledger,
    pricer: Pricer,
    cache: Sequence[TurnCache] | None = None,
) -> TestEntry:
    """Price one ledger into a report entry, with its cache analysis (computed when not given
    and every turn has its request body)."""
    turns, errors = price_ledger(ledger, pricer, test=test_id if cassette != test_id else None)
    if cache is None and ledger.turns and ledger.has_requests:
        cache = analyze(ledger).turns
    if cache is not None and len(cache) == len(turns):
        turns = [TurnEntry(t.turn, t.cost, c) for t, c in zip(turns, cache, strict=True)]
    cost = None if any(t.cost is None for t in turns) else sum((t.cost.cost_usd for t in turns if t.cost), Decimal(0))
    return TestEntry(test_id, cassette, tuple(turns), ledger.totals(), cost, tuple(errors))


def build_report(
    entries: Iterable[TestEntry],
    price_source: Mapping[str, Any],
    errors: Sequence[ReportError] = (),
    notes: Sequence[ReportNote] = (),
) -> Report:
    """The report of priced entries (those without turns are left out), with what could not be
    read and the notes on files skipped."""
    tests = tuple(entry for entry in entries if entry.turns)
    # Input growth is judged against the suite: a test growing much faster than the rest is flagged.
    growths = flag_growth({entry.id: entry.growth for entry in tests if entry.growth is not None})
    tests = tuple(replace(entry, growth=growths[entry.id]) if entry.id in growths else entry for entry in tests)
    all_errors = list(errors)
    for entry in tests:
        all_errors.extend(
            ReportError(entry.cassette, reason, entry.id if entry.id != entry.cassette else None)
            for reason in entry.errors
        )
    return Report(tests, tuple(all_errors), price_source, notes=tuple(notes))
