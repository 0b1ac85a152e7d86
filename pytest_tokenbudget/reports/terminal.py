"""The report as terminal lines: a table per test, the cache warnings, the price source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from ..analysis import Verdict
from ..ledger import Totals
from .model import GateLine, Report

__all__ = ["format_row", "render_gate", "render_text", "source_line"]


def _int(value: int) -> str:
    return f"{value:,}"


def _usd(value: Decimal | None) -> str:
    if value is None:
        return "n/a"
    return f"${value:,.6f}" if value < 1 else f"${value:,.2f}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


# Verdicts worth a line in the summary: money lost, or a breakpoint that does nothing.
_WARN = frozenset({Verdict.MISS_UNEXPECTED, Verdict.PREFIX_CHANGED, Verdict.EXPIRED, Verdict.BELOW_MINIMUM})
_MAX_WARNINGS = 10

_COLUMNS = ("turns", "input", "cache write", "cache read", "output", "hit rate", "cost USD")


def format_row(name: str, totals: Totals, cost: Decimal | None) -> list[str]:
    return [
        name,
        _int(totals.turns),
        _int(totals.uncached_input_tokens),
        _int(totals.cache_creation_input_tokens),
        _int(totals.cache_read_input_tokens),
        _int(totals.output_tokens),
        _pct(totals.cache_hit_rate),
        _usd(cost),
    ]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> list[str]:
    """Columns padded to width: the first ``text_columns`` left-aligned, numbers right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for number, row in enumerate([header, *rows]):
        cells = [
            str(c).ljust(w) if i < text_columns else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def source_line(source: Mapping[str, Any]) -> str:
    policy = source.get("timestamp_policy")
    when = (
        "each turn at its recorded time"
        if policy == "recorded"
        else (f"today's prices ({str(source.get('priced_at') or '')[:10]})")
    )
    overrides = source.get("override_files") or []
    extra = f"; overrides: {', '.join(overrides)}" if overrides else ""
    return f"prices: {source.get('library')} {source.get('version')}, {when}{extra}"


def _common_dir(ids: Sequence[str]) -> str:
    """The directory prefix (ending in "/") every id shares, when ids are paths under one folder."""
    if len(ids) < 2 or any("::" in i for i in ids):
        return ""
    first = ids[0]
    end = 0
    for position, char in enumerate(first):
        if char == "/" and all(i.startswith(first[: position + 1]) for i in ids):
            end = position + 1
    return first[:end]


def render_text(report: Report, *, verbose: bool = False) -> list[str]:
    """The report as terminal lines (empty when there is nothing to say)."""
    if not report.tests and not report.errors:
        return []
    lines: list[str] = []
    prefix = _common_dir([e.id for e in report.tests])
    if prefix:
        lines.append(f"in {prefix}")
    if report.tests:
        rows = [format_row(e.id[len(prefix) :], e.totals, e.cost_usd) for e in report.sorted_tests()]
        if len(report.tests) > 1:
            rows.append(format_row("total", report.totals, report.cost_usd))
        lines.extend(_table(("test", *_COLUMNS), rows))
    if verbose:
        for entry in report.sorted_tests():
            lines.append("")
            lines.append(
                f"{entry.id}" + (f"  ({entry.cassette})" if entry.cassette and entry.cassette != entry.id else "")
            )
            turn_rows = []
            for item in entry.turns:
                turn = item.turn
                kind = turn.endpoint + (" stream" if turn.stream else "")
                turn_rows.append(
                    [
                        str(turn.index),
                        turn.model,
                        kind,
                        str(item.cache.verdict) if item.cache else "",
                        _int(turn.uncached_input_tokens),
                        _int(turn.cache_creation_input_tokens),
                        _int(turn.cache_read_input_tokens),
                        _int(turn.output_tokens),
                        _usd(item.cost.cost_usd if item.cost else None),
                    ]
                )
            lines.extend(
                "  " + line
                for line in _table(
                    ("turn", "model", "endpoint", "cache", "input", "cache write", "cache read", "output", "cost USD"),
                    turn_rows,
                    text_columns=4,
                )
            )
            lines.extend(
                f"  turn {item.turn.index}: {item.cache.reason}"
                for item in entry.turns
                if item.cache and item.cache.verdict not in (Verdict.HIT, Verdict.NO_CACHE_CONTROL)
            )
    warnings = [
        (e.id, item) for e in report.sorted_tests() for item in e.turns if item.cache and item.cache.verdict in _WARN
    ]
    if warnings and not verbose:
        lines.append("")
        lines.append("cache:")
        for test_id, item in warnings[:_MAX_WARNINGS]:
            assert item.cache is not None
            lines.append(f"  {test_id} turn {item.turn.index}: {item.cache.verdict}: {item.cache.reason}")
        if len(warnings) > _MAX_WARNINGS:
            lines.append(f"  ... and {len(warnings) - _MAX_WARNINGS} more (-v shows every turn)")
    lines.append("")
    lines.append(source_line(report.price_source))
    lines.append("hit rate = cache reads / all input tokens (uncached + cache writes + cache reads)")
    if report.errors:
        lines.append("")
        lines.append(f"{len(report.errors)} problem(s):")
        for error in report.errors:
            lines.extend("  " + line for line in error.reason.splitlines())
            if error.path and error.path not in error.reason:
                lines.append(f"    ({error.path})")
    return lines


def render_gate(gate: Sequence[GateLine]) -> list[str]:
    """The gate's lines under a ``gate:`` heading (nothing when there are none)."""
    if not gate:
        return []
    return ["", "gate:", *("  " + line.render() for line in gate)]
