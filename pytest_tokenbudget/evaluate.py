"""One test's pipeline, after its body ran: ledger → estimates for changed requests → cache
analysis → prices → budget → baseline entry → gate. Pure: it reads the recorder and returns typed
results; it writes nothing and knows nothing of pytest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from .analysis import CacheAnalysis, TurnCache, analyze, apply_estimates
from .baseline import BaselineEntry, CachedPoint, CachedPrefix, GateResult, compare
from .budgets import Budget, check_budget, where_tokens_went
from .errors import TokenBudgetError
from .ledger import Ledger
from .levers import AdviceOptions, advise
from .prefix import Difference
from .pricing import Pricer
from .record import Departure, Recorder, accept_command, count_tokens_live
from .reports import TestEntry, build_entry

__all__ = ["Evaluation", "TestResult", "baseline_entry", "evaluate", "gate_notes", "rebuild_cost"]


@dataclass
class TestResult:
    """What one test left behind.

    Attributes:
        nodeid: the test.
        cassette: its cassette file.
        ledger: its turns (estimates applied to changed requests).
        recorded: the test recorded new exchanges.
        entry: the turns priced, with their cache analysis (``None`` when there are no turns).
        baseline: the baseline's view of this run (``None`` without request bodies).
        gate: the gate's verdict against the committed baseline.
        first_change: the first request that departs from its recording, when one does:
            (turn, difference), named even when the gate passes.
        passed: the test passed (budget and gate included).
    """

    __test__ = False  # not a pytest test class

    nodeid: str
    cassette: Path
    ledger: Ledger
    recorded: bool
    entry: TestEntry | None = None
    baseline: BaselineEntry | None = None
    gate: GateResult = field(default_factory=GateResult)
    first_change: tuple[int, Difference] | None = None
    passed: bool = True

    @property
    def gate_notes(self) -> list[str]:
        """The gate's notes, led by the changed request when no prefix change names it."""
        return gate_notes(self.gate, self.first_change)


def gate_notes(gate: GateResult, first_change: tuple[int, Difference] | None) -> list[str]:
    """The gate's notes, led by the changed request (``first_change``) when no prefix change names it."""
    notes = list(gate.notes)
    if first_change is not None and not gate.prefix_change:
        turn, difference = first_change
        notes.insert(0, f"turn {turn} changed since recording: {difference.describe()}")
    return notes


@dataclass
class Evaluation:
    """A test's result, and the failure to raise when it breaks its budget or the gate."""

    result: TestResult
    failure: TokenBudgetError | None = None


def evaluate(
    recorder: Recorder,
    *,
    budget: Callable[[], Budget],
    pricer: Pricer,
    cassette_name: Callable[[], str],
    against: BaselineEntry | None = None,
    count_tokens: bool = True,
    test_passed: bool = True,
    require_prices: bool = False,
    advice: AdviceOptions | None = None,
) -> Evaluation:
    """Ledger, estimates for changed requests, prices, cache analysis, budgets and the gate.

    Args:
        recorder: the test's recorder, after its body ran.
        budget: the test's budget (asked for only when the test made API turns).
        pricer: the session's pricer.
        cassette_name: the cassette as reports name it (asked for only when there are turns).
        against: the baseline entry to judge the run against (``None``: no gate).
        count_tokens: with a real key, count changed requests with the count_tokens API.
        test_passed: the test's body passed.
        require_prices: a turn that cannot be priced fails the test (the gate cannot judge
            what it cannot price).
        advice: run the savings advisor (:mod:`pytest_tokenbudget.levers`) with these options
            (``None``: no advice).

    Raises:
        TokenBudgetError: a recorded response cannot be read.
    """
    nodeid = recorder.test
    ledger = recorder.ledger() if recorder.exchanges else Ledger()
    result = TestResult(nodeid, recorder.cassette_path, ledger, bool(recorder.recorded), passed=test_passed)
    if not ledger.turns:
        return Evaluation(result)
    turn_of_exchange = {turn.exchange: turn.index for turn in ledger.turns if turn.endpoint == "messages"}
    changed = _changed_requests(recorder.departures, ledger, turn_of_exchange)
    for departure in recorder.departures:
        if departure.difference is not None and departure.exchange in turn_of_exchange:
            result.first_change = (turn_of_exchange[departure.exchange], departure.difference)
            break
    analysis: CacheAnalysis | None = None
    if ledger.has_requests:
        counted: dict[int, int] = {}
        if changed and count_tokens:
            requests = {
                turn.index: turn.request
                for turn in ledger.turns
                if turn.index in changed and isinstance(turn.request, Mapping)
            }
            counted = count_tokens_live(recorder, requests)
        analysis = analyze(ledger, changed=changed, counted=counted)
        if changed:
            ledger = result.ledger = apply_estimates(ledger, analysis)
    entry = result.entry = build_entry(
        nodeid, cassette_name(), ledger, pricer, analysis.turns if analysis is not None else None
    )
    if advice is not None and entry.cost_usd is not None:
        found = advise(ledger, pricer, advice, test=nodeid)
        entry = result.entry = replace(entry, levers=found.levers, growth=found.growth)
    if require_prices and entry.cost_usd is None:
        return Evaluation(result, _unpriced(entry, pricer, nodeid))
    totals = ledger.totals()
    estimated = any(t.estimated for t in ledger.turns)
    limits = budget()
    breaches = check_budget(
        limits,
        turns=totals.turns,
        total_input_tokens=totals.total_input_tokens,
        output_tokens=totals.output_tokens,
        cost_usd=entry.cost_usd,
        cache_hit_rate=totals.cache_hit_rate,
        prefix_breaks=[d.describe() for d in analysis.divergences] if analysis is not None else [],
        estimated=estimated,
    )
    if analysis is not None:
        result.baseline = baseline_entry(entry, analysis.turns, estimated)
    if against is not None and result.baseline is not None:
        first = recorder.departures[0] if recorder.departures else None
        first_change = None
        if first is not None and first.difference is not None and first.exchange in turn_of_exchange:
            first_change = (turn_of_exchange[first.exchange], first.difference)
        result.gate = compare(
            result.baseline,
            against,
            limits,
            first_change=first_change,
            rebuild_cost=lambda model, tokens: rebuild_cost(pricer, model, tokens),
        )
    # What the report carries for ``tokenbudget gate`` (which judges two files the same way).
    result.entry = replace(entry, baseline=result.baseline, first_change=result.first_change, budget=limits)
    if not breaches and not result.gate.failures:
        return Evaluation(result)
    return Evaluation(result, _failure(nodeid, breaches, result.gate, entry, recorder))


def _changed_requests(
    departures: Sequence[Departure], ledger: Ledger, turn_of_exchange: Mapping[int, int]
) -> dict[int, dict[str, Any]]:
    """The recorded request body of every turn whose request departs from its recording.

    A Messages turn is its exchange's request. A batch turn is one request (by ``custom_id``)
    of the batch whose creation departed: its recorded ``params``, when they differ from what
    the batch now sends.
    """
    changed: dict[int, dict[str, Any]] = {}
    for departure in departures:
        recorded = departure.recorded.request_body.try_json()
        if not isinstance(recorded, dict):
            continue
        if departure.exchange in turn_of_exchange:
            changed[turn_of_exchange[departure.exchange]] = recorded
            continue
        requests = recorded.get("requests")
        response = departure.recorded.response_body.try_json()
        if not isinstance(requests, list) or not isinstance(response, dict):
            continue
        params = {str(r.get("custom_id")): r.get("params") for r in requests if isinstance(r, dict) and "params" in r}
        for turn in ledger.turns:
            old = params.get(str(turn.custom_id))
            if turn.batch_id == response.get("id") and isinstance(old, dict) and old != turn.request:
                changed[turn.index] = old
    return changed


def _unpriced(entry: TestEntry, pricer: Pricer, nodeid: str) -> TokenBudgetError:
    """The price error of the first turn that cannot be priced, as the test's failure."""
    item = next(t for t in entry.turns if t.cost is None)
    try:
        pricer.price(item.turn, test=nodeid)
    except TokenBudgetError as error:
        error.what = f"turn {item.turn.index} cannot be priced: {error.what}"
        error.test = nodeid
        error.fix = (
            f"{error.fix}; or, to let unpriced models pass the gate, set token_budget_allow_unpriced = true"
            if error.fix
            else "set token_budget_allow_unpriced = true to let unpriced models pass the gate"
        )
        return error
    return TokenBudgetError(f"turn {item.turn.index} cannot be priced", test=nodeid)  # pragma: no cover


def rebuild_cost(pricer: Pricer, model: str, tokens: int) -> Decimal | None:
    """What writing ``tokens`` (5m) costs more than reading them, for ``model``."""
    try:
        write = pricer.price_usage(
            model, {"input_tokens": 0, "cache_creation_input_tokens": tokens, "output_tokens": 0}
        )
        read = pricer.price_usage(model, {"input_tokens": 0, "cache_read_input_tokens": tokens, "output_tokens": 0})
    except TokenBudgetError:
        return None
    return write.cost_usd - read.cost_usd


def baseline_entry(entry: TestEntry, cache: Sequence[TurnCache], estimated: bool) -> BaselineEntry:
    """The baseline's view of a priced test: totals, cost, hit rate, cached prefixes per turn."""
    prefixes = []
    for item, turn_cache in zip(entry.turns, cache, strict=False):
        points = tuple(
            CachedPoint(b.path, b.fingerprint, b.tokens) for b in turn_cache.breakpoints if not b.below_minimum
        )
        prefixes.append(CachedPrefix(item.turn.model, points))
    totals = entry.totals
    return BaselineEntry(
        totals.turns,
        totals.uncached_input_tokens,
        totals.cache_creation_input_tokens,
        totals.cache_read_input_tokens,
        totals.output_tokens,
        entry.cost_usd,
        totals.cache_hit_rate,
        tuple(prefixes),
        estimated,
    )


def _failure(
    nodeid: str, breaches: list[str], gate: GateResult, entry: TestEntry, recorder: Recorder
) -> TokenBudgetError:
    rows: list[list[Any]] = []
    for item in entry.turns:
        turn = item.turn
        rows.append(
            [
                f"{turn.index}{'~' if turn.estimated else ''}",
                turn.model,
                f"{turn.uncached_input_tokens:,}",
                f"{turn.cache_creation_input_tokens:,}",
                f"{turn.cache_read_input_tokens:,}",
                f"{turn.output_tokens:,}",
                f"${item.cost.cost_usd:.6f}" if item.cost is not None else "n/a",
                item.cache.verdict.value if item.cache is not None else "",
            ]
        )
    details = [f"- {line}" for line in [*breaches, *gate.failures]]
    details.append("where the tokens went:")
    details.extend("  " + line for line in where_tokens_went(rows))
    if any(item.turn.estimated for item in entry.turns):
        details.append(
            "~ estimated: the request changed since it was recorded (re-record with a key to measure it exactly)"
        )
    if gate.failures:
        fix = (
            f"if intended, accept it: with an API key, re-record and measure it: "
            f"{accept_command([nodeid], measure=True)}; without one, write the estimate, marked as estimated: "
            f"{accept_command([nodeid], measure=False)} (then review the baseline's diff)"
        )
    else:
        fix = "reduce the tokens, or raise the budget in the marker or tokenbudget.yaml"
    what = "over its token budget" if breaches else "the change breaks the token budget gate"
    return TokenBudgetError(what, test=nodeid, file=str(recorder.cassette_path), details=details, fix=fix)
