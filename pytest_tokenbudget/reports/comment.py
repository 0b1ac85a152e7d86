"""The pull request comment: the suite against the base branch's baseline, the tests that changed
most, the gate's verdict with the exact changed place, and the levers' savings when advised.

Built from the JSON report (``--token-budget-json``, ``schemas/report.schema.json``) and the base
branch's baseline file, so that ``tokenbudget comment`` needs neither pytest nor the cassettes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..baseline import BaselineEntry
from .model import GateKind, GateLine
from .terminal import source_line

__all__ = ["MAX_CHANGES", "LeverSaving", "PullRequestSummary", "TestChange", "render_comment", "summarize"]

MAX_CHANGES = 5
"""Tests listed under "changed most"."""


@dataclass(frozen=True)
class TestChange:
    """One test's numbers in this run and in the base baseline (``None``: not in it)."""

    __test__ = False  # not a pytest test class

    test: str
    cost: Decimal | None
    tokens: int
    hit_rate: float
    base_cost: Decimal | None = None
    base_tokens: int | None = None
    base_hit_rate: float | None = None
    in_base: bool = False

    @property
    def cost_change(self) -> Decimal | None:
        if not self.in_base or self.cost is None or self.base_cost is None:
            return None
        return self.cost - self.base_cost


@dataclass(frozen=True)
class LeverSaving:
    """A lever's saving on one test (``TestEntry.levers`` as the report carries it)."""

    test: str
    lever: str
    saving_usd: Decimal
    saving_tokens: int
    change: str


@dataclass(frozen=True)
class PullRequestSummary:
    """What the comment says.

    Attributes:
        tests: every test of this run with API turns.
        cost: this run's cost (``None``: a turn is unpriced).
        tokens: this run's tokens (input and output).
        base_found: the base branch has a baseline.
        compared_cost, compared_tokens: this run over the tests the base baseline holds.
        base_cost, base_tokens: the base baseline over those same tests.
        gate: the gate's lines (what ``pytest --token-budget`` decided).
        first_changes: per test, where its first request departs from its recording.
        levers: savings the advisor found.
        verdict: ``pass``, ``fail`` or ``error`` (pytest stopped on a usage error).
        price_source: the report's price source.
    """

    tests: tuple[TestChange, ...]
    cost: Decimal | None
    tokens: int
    base_found: bool
    compared_cost: Decimal | None
    compared_tokens: int
    base_cost: Decimal | None
    base_tokens: int
    gate: tuple[GateLine, ...]
    first_changes: Mapping[str, str]
    levers: tuple[LeverSaving, ...]
    verdict: str
    price_source: Mapping[str, Any]
    suite_failed: bool = False

    @property
    def compared(self) -> tuple[TestChange, ...]:
        return tuple(t for t in self.tests if t.in_base)

    @property
    def new(self) -> tuple[TestChange, ...]:
        return tuple(t for t in self.tests if not t.in_base)

    @property
    def cost_change(self) -> Decimal | None:
        """This run's cost minus the base's, over the same tests (``None``: nothing to compare)."""
        if not self.compared or self.compared_cost is None or self.base_cost is None:
            return None
        return self.compared_cost - self.base_cost

    def changed_most(self, limit: int = MAX_CHANGES) -> list[TestChange]:
        """Tests by the size of their cost change (new tests by their cost), largest first."""

        def size(change: TestChange) -> Decimal:
            moved = change.cost_change
            return abs(moved) if moved is not None else (change.cost or Decimal(0))

        moved = [t for t in self.tests if t.cost_change != 0]
        return sorted(moved, key=lambda t: (-size(t), t.test))[:limit]


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def summarize(
    document: Mapping[str, Any],
    base: Mapping[str, BaselineEntry] | None,
    *,
    exit_code: int | None = None,
) -> PullRequestSummary:
    """The comment's content from a report document and the base branch's baseline.

    Args:
        document: the JSON report (already validated).
        base: the base branch's baseline (``None``: it has none).
        exit_code: pytest's exit status, when known (the verdict follows it).
    """
    tests: list[TestChange] = []
    first_changes: dict[str, str] = {}
    levers: list[LeverSaving] = []
    for test in document["tests"]:
        if not test.get("turns"):
            continue
        totals = test["totals"]
        test_id = str(test["id"])
        entry = (base or {}).get(test_id)
        tests.append(
            TestChange(
                test_id,
                _decimal(totals.get("cost_usd")),
                int(totals["total_input_tokens"]) + int(totals["output_tokens"]),
                float(totals["cache_hit_rate"]),
                entry.cost_usd if entry is not None else None,
                entry.total_input_tokens + entry.output_tokens if entry is not None else None,
                entry.cache_hit_rate if entry is not None else None,
                entry is not None,
            )
        )
        change = test.get("first_change")
        if change:
            where = change["path"] + (f", offset {change['offset']}" if change.get("offset") is not None else "")
            first_changes[test_id] = f"turn {change['turn']}: {where}: {change['before']} -> {change['after']}"
        for lever in test.get("levers") or ():
            levers.append(
                LeverSaving(
                    test_id,
                    str(lever.get("lever")),
                    Decimal(str(lever.get("saving_usd") or 0)),
                    int(lever.get("saving_tokens") or 0),
                    str(lever.get("change") or ""),
                )
            )
    compared = [t for t in tests if t.in_base]
    costs = [t.cost for t in tests]
    compared_costs = [t.cost for t in compared]
    base_costs = [t.base_cost for t in compared]
    gate = tuple(
        GateLine(GateKind(line["kind"]), str(line["text"]), line.get("test")) for line in document.get("gate") or ()
    )
    suite = document.get("suite")
    failed = any(line.kind is GateKind.FAIL for line in gate) or (isinstance(suite, dict) and not suite.get("passed"))
    if exit_code is None:
        verdict = "fail" if failed else "pass"
    else:
        verdict = "pass" if exit_code == 0 and not failed else "fail" if exit_code in (0, 1) else "error"
    return PullRequestSummary(
        tests=tuple(tests),
        cost=None if any(c is None for c in costs) else sum((c for c in costs if c is not None), Decimal(0)),
        tokens=sum(t.tokens for t in tests),
        base_found=base is not None,
        compared_cost=_sum(compared_costs),
        compared_tokens=sum(t.tokens for t in compared),
        base_cost=_sum(base_costs),
        base_tokens=sum(t.base_tokens or 0 for t in compared),
        gate=gate,
        first_changes=first_changes,
        levers=tuple(levers),
        verdict=verdict,
        price_source=dict(document.get("price_source") or {}),
        suite_failed=isinstance(suite, dict) and not suite.get("passed"),
    )


def _sum(values: Sequence[Decimal | None]) -> Decimal | None:
    return None if any(v is None for v in values) else sum((v for v in values if v is not None), Decimal(0))


def _usd(value: Decimal | None) -> str:
    return "n/a" if value is None else f"${value:,.6f}" if abs(value) < 1 else f"${value:,.2f}"


def _signed_usd(value: Decimal | None) -> str:
    if value is None:
        return "n/a"
    return ("+" if value >= 0 else "-") + _usd(abs(value))


def _relative(change: Decimal | int | None, before: Decimal | int | None) -> str:
    if change is None or not before:
        return ""
    return f" ({float(Decimal(change) / Decimal(before)):+.1%})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


_HEAD = {"pass": ":white_check_mark: pass", "fail": ":x: fail", "error": ":warning: error"}


def render_comment(summary: PullRequestSummary, *, marker: str) -> str:
    """The comment's Markdown, led by the hidden ``marker`` that finds it again."""
    out = [marker, f"## Token budget: {_HEAD[summary.verdict]}", ""]
    compared = summary.compared
    if compared:
        tokens_change = summary.compared_tokens - summary.base_tokens
        out += [
            f"| over the {len(compared)} test(s) in the base branch's baseline | base | this pull request | change |",
            "|---|--:|--:|--:|",
            f"| cost | {_usd(summary.base_cost)} | {_usd(summary.compared_cost)} | "
            f"{_signed_usd(summary.cost_change)}{_relative(summary.cost_change, summary.base_cost)} |",
            f"| tokens | {summary.base_tokens:,} | {summary.compared_tokens:,} | "
            f"{tokens_change:+,}{_relative(tokens_change, summary.base_tokens)} |",
            "",
        ]
    elif not summary.base_found:
        out += ["The base branch has no baseline: nothing to compare with.", ""]
    line = f"This run: {len(summary.tests)} test(s), {_usd(summary.cost)}, {summary.tokens:,} tokens"
    if summary.new and summary.base_found:
        named = ", ".join(f"`{t.test}`" for t in summary.new[:3])
        more = f" and {len(summary.new) - 3} more" if len(summary.new) > 3 else ""
        line += f"; not in the base baseline: {named}{more}"
    out += [line + ".", ""]
    out += _gate(summary)
    changed = summary.changed_most()
    if changed:
        out += [
            "### Tests that changed most",
            "",
            "| test | base cost | cost | change | tokens | hit rate |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for t in changed:
            tokens = f"{t.tokens:,}" + (f" ({t.tokens - t.base_tokens:+,})" if t.base_tokens is not None else "")
            hit = f"{t.hit_rate:.1%}" + (f" (was {t.base_hit_rate:.1%})" if t.base_hit_rate is not None else "")
            change = f"{_signed_usd(t.cost_change)}{_relative(t.cost_change, t.base_cost)}" if t.in_base else "new test"
            out.append(
                f"| `{_cell(t.test)}` | {_usd(t.base_cost) if t.in_base else '—'} | {_usd(t.cost)} | {change} "
                f"| {tokens} | {hit} |"
            )
        out.append("")
    if summary.levers:
        total = sum((lever.saving_usd for lever in summary.levers), Decimal(0))
        out += [
            f"### Levers: up to {_usd(total)} less per run",
            "",
            "| test | lever | saving | tokens | change |",
            "|---|---|--:|--:|---|",
        ]
        out += [
            f"| `{_cell(lever.test)}` | {lever.lever} | {_usd(lever.saving_usd)} | {lever.saving_tokens:,} "
            f"| {_cell(lever.change)} |"
            for lever in sorted(summary.levers, key=lambda lever: (-lever.saving_usd, lever.test, lever.lever))
        ]
        out.append("")
    out.append(f"<sub>{_cell(source_line(summary.price_source))}. Posted by pytest-tokenbudget.</sub>")
    return "\n".join(out) + "\n"


def _gate(summary: PullRequestSummary) -> list[str]:
    failures: dict[str, list[str]] = {}
    others: list[GateLine] = []
    for line in summary.gate:
        if line.kind is GateKind.FAIL:
            failures.setdefault(line.test or "", []).append(line.text)
        elif line.kind is not GateKind.INFO:
            others.append(line)
    out = ["### Gate", ""]
    if not failures and summary.verdict == "pass":
        out.append("Every test is within its budget and the baseline's thresholds.")
    if summary.verdict == "error":
        out.append("pytest stopped before judging the run (a usage error): see the job's log.")
    for test, reasons in failures.items():
        out.append(f"- :x: `{test}`")
        out.extend(f"  - {reason}" for reason in reasons)
        change = summary.first_changes.get(test)
        if change is not None and not any(change.split(": ", 1)[1] in reason for reason in reasons):
            out.append(f"  - changed: {change}")
    if summary.suite_failed:
        out.append("- :x: the suite budget is broken (its limits are in the job summary)")
    out.extend(f"- `{line.test}`: {line.text}" if line.test else f"- {line.text}" for line in others)
    out.extend(f"- {line.text}" for line in summary.gate if line.kind is GateKind.INFO)
    out.append("")
    return out
