"""The advisor's levers in the report: terminal lines, Markdown, JSON (``levers`` of each test and
of the suite's totals; ``input_growth`` of each test)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from ..ledger import Ledger
from ..levers import DEFAULT_CHEAP_MODEL, FAST_GROWTH_FACTOR, AdviceOptions, Lever, advise
from ..pricing import Pricer
from .model import Report, TestEntry, build_entry
from .terminal import _usd

__all__ = [
    "LEVER_ORDER_NOTE",
    "advised_entry",
    "levers_json",
    "render_levers_markdown",
    "render_levers_text",
    "test_levers_json",
]

LEVER_ORDER_NOTE = (
    "levers applied in order caching -> batch -> model_tier -> context, each saving measured on top of "
    "the ones before it (no double counting)"
)


def _share(lever: Lever) -> str:
    before = lever.cost_before_usd
    if not before:
        return ""
    return f" ({100 * lever.saving_usd / before:.0f}% of ${before:,.4f})"


def advised_entry(
    name: str, ledger: Ledger, pricer: Pricer, *, batchable: Sequence[str] = (), cheap_model: str | None = None
) -> TestEntry:
    """A cassette's report entry with its levers (``tokenbudget advise``): batchable when its
    path matches one of the ``batchable`` fnmatch patterns."""
    entry = build_entry(name, name, ledger, pricer)
    if entry.cost_usd is None:
        return entry
    options = AdviceOptions(
        batchable=any(fnmatchcase(name, pattern) for pattern in batchable),
        cheap_model=cheap_model or DEFAULT_CHEAP_MODEL,
    )
    found = advise(ledger, pricer, options)
    return replace(entry, levers=found.levers, growth=found.growth)


def levers_json(levers: tuple[Lever, ...]) -> list[dict[str, Any]]:
    """The JSON list of levers."""
    return [lever.as_dict() for lever in levers]


def test_levers_json(entry: TestEntry) -> dict[str, Any]:
    """The advisor's fields of one test's JSON entry."""
    return {
        "levers": levers_json(entry.levers),
        "input_growth": entry.growth.as_dict() if entry.growth is not None else None,
    }


test_levers_json.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def render_levers_text(report: Report, *, verbose: bool = False) -> list[str]:
    """``what would save money:`` lines: the suite per lever, then each test's levers (with the
    assumption and the change under ``verbose``); tests whose input grows much faster than the rest."""
    suite = report.levers
    fast = [e for e in report.sorted_tests() if e.growth is not None and e.growth.fast]
    if not suite and not fast:
        return []
    lines = ["", f"what would save money ({LEVER_ORDER_NOTE}):"]
    for lever in suite:
        lines.append(
            f"  {lever.lever.value:<10} {_usd(lever.saving_usd):>11}  {lever.saving_tokens:>10,} tokens  "
            f"in {lever.tests} test(s)"
        )
    total = sum((lever.saving_usd for lever in suite), Decimal(0))
    if len(suite) > 1:
        lines.append(f"  {'all':<10} {_usd(total):>11}")
    for entry in report.sorted_tests():
        if not entry.levers:
            continue
        lines.append(f"  {entry.id}:")
        for lever in entry.levers:
            where = f" at {lever.path}" if lever.path and lever.lever.value != "model_tier" else ""
            lines.append(f"    {lever.lever.value}: save {_usd(lever.saving_usd)}{_share(lever)}{where}")
            if verbose:
                lines.append(f"      why:    {lever.assumption}")
                lines.append(f"      change: {lever.change}")
                if lever.turns:
                    lines.append(f"      turns:  {_ranges(lever.turns)}")
    for entry in fast:
        assert entry.growth is not None
        lines.append(
            f"  {entry.id}: input grows {entry.growth.tokens_per_turn:,.0f} tokens a turn, over "
            f"{FAST_GROWTH_FACTOR:g}x the suite's median ({entry.growth.suite_median or 0:,.0f}): "
            "much faster than the rest"
        )
    return lines


def render_levers_markdown(report: Report) -> list[str]:
    """A ``What would save money`` section (nothing when no lever saves)."""
    suite = report.levers
    if not suite:
        return []
    out = ["", "### What would save money", "", f"_{LEVER_ORDER_NOTE[0].upper()}{LEVER_ORDER_NOTE[1:]}._", ""]
    out.append("| lever | saving USD | tokens | tests |")
    out.append("|---|--:|--:|--:|")
    out.extend(
        f"| {lever.lever.value} | {_usd(lever.saving_usd)} | {lever.saving_tokens:,} | {lever.tests} |"
        for lever in suite
    )
    out.append("")
    out.append("| test | lever | saving USD | change | assumption |")
    out.append("|---|---|--:|---|---|")
    for entry in report.sorted_tests():
        for lever in entry.levers:
            change = lever.change.replace("|", "\\|")
            assumption = lever.assumption.replace("|", "\\|")
            out.append(f"| `{entry.id}` | {lever.lever.value} | {_usd(lever.saving_usd)} | {change} | {assumption} |")
    return out


def _ranges(turns: Sequence[int]) -> str:
    """``0-3, 7, 9-12``: turn indexes with consecutive runs as ranges."""
    parts: list[str] = []
    ordered = sorted(set(turns))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ", ".join(parts)
