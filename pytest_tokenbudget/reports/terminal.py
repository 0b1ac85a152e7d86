"""The report as terminal lines: a table per test, the cache warnings, the price source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from .._suite import LimitCheck, Metric, SuiteTotals, SuiteVerdict, Threshold, ThresholdCheck, Uncompared
from ..analysis import Verdict
from ..ledger import Totals
from ._width import shorten_middle, wrap
from .model import Coverage, GateLine, Report, TestEntry, TurnEntry

__all__ = [
    "MAX_NAMED",
    "coverage_headline",
    "describe_limit",
    "describe_threshold",
    "format_row",
    "name_some",
    "render_coverage",
    "render_gate",
    "render_suite",
    "render_text",
    "source_line",
    "sparkline",
    "suite_compared_line",
    "suite_headline",
    "suite_run_line",
]


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


def _layout(header: Sequence[Sequence[str]], rows: Sequence[Sequence[str]], text_columns: int, gap: str) -> list[str]:
    """Columns padded to width under a header of one or more lines; text left, numbers right."""
    widths = [max(len(str(r[i])) for r in [*header, *rows]) for i in range(len(header[0]))]
    lines = []
    for number, row in enumerate([*header, *rows]):
        cells = [
            str(c).ljust(w) if i < text_columns else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(gap.join(cells).rstrip())
        if number == len(header) - 1:
            lines.append(gap.join("-" * w for w in widths))
    return lines


_MIN_NAME = 16
"""The first column is shortened to no fewer characters than this before the table changes shape."""


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    text_columns: int = 1,
    width: int | None = None,
    lead: int = 1,
) -> list[str]:
    """Columns padded to width: the first ``text_columns`` left-aligned, numbers right-aligned.

    Within ``width``: first the first column (a name) is shortened in the middle (when ``lead``
    is 1); if the table still does not fit, the labels go on two lines and the columns one space
    apart; then the first ``lead`` cells of each row go on a line of their own above the rest,
    which is indented. Numbers are never cut.
    """
    lines = _layout([header], rows, text_columns, "  ")
    if width is None or max(map(len, lines)) <= width:
        return lines
    two_line = [[c.split(" ", 1)[0] if " " in c else "" for c in header], [c.split(" ", 1)[-1] for c in header]]
    for labels, gap in (([header], "  "), (two_line, " ")):
        others = _layout([list(h[1:]) for h in labels], [r[1:] for r in rows], text_columns - 1, gap)
        room = width - max(map(len, others)) - len(gap)
        if lead == 1 and room >= _MIN_NAME:
            short = [[shorten_middle(r[0], room), *r[1:]] for r in rows]
            return _layout(labels, short, text_columns, gap)
        if lead > 1 and room >= 0 and max(map(len, _layout(labels, rows, text_columns, gap))) <= width:
            return _layout(labels, rows, text_columns, gap)
    # Stacked: the lead cells above the rest of their row (indented under them).
    numbers = _layout([list(h[lead:]) for h in two_line], [r[lead:] for r in rows], text_columns - lead, " ")
    stacked = [shorten_middle("  ".join(header[:lead]), width), *("  " + line for line in numbers[:3])]
    for row, line in zip(rows, numbers[3:], strict=True):
        stacked.append(shorten_middle("  ".join(row[:lead]), width))
        stacked.append("  " + line)
    return stacked


_SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 80
"""Marks in a sparkline at most; longer runs put several turns in one mark (their maximum)."""


def sparkline(values: Sequence[int], width: int = SPARK_WIDTH) -> tuple[str, int]:
    """One mark per value (or per ``per`` values, their maximum, when more than ``width``),
    scaled from 0 to the largest; returns the line and how many values each mark stands for."""
    per = max(1, -(-len(values) // width))
    buckets = [max(values[i : i + per]) for i in range(0, len(values), per)]
    top = max(buckets, default=0)
    if top <= 0:
        return _SPARKS[0] * len(buckets), per
    last = len(_SPARKS) - 1
    return "".join(_SPARKS[min(last, (value * last + top - 1) // top)] for value in buckets), per


def _spark_line(entry: TestEntry, width: int | None = None) -> list[str]:
    """The sparkline of a test's input tokens per turn; when it does not fit ``width``, fewer
    marks (each for several turns) and the range on the next line."""
    values = [item.turn.total_input_tokens for item in entry.turns]
    label = "  input tokens per turn: "
    marks, per = sparkline(values)
    each = f"; one mark = {per} turns, their max" if per > 1 else ""
    line = f"{label}{marks}  ({_int(min(values))} to {_int(max(values))}{each})"
    if width is None or len(line) <= width:
        return [line]
    marks, per = sparkline(values, max(8, width - len(label)))
    each = f"; one mark = {per} turns, their max" if per > 1 else ""
    return [label + marks, *wrap(f"({_int(min(values))} to {_int(max(values))}{each})", width, first="    ")]


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


FOLD_AT = 3
"""In the ``-v`` turn table, a run of at least this many consecutive turns with the same model,
endpoint and cache verdict is one row: ``3-48``, ``hit ×46`` and the run's summed numbers."""


def _runs(turns: Sequence[TurnEntry]) -> list[list[TurnEntry]]:
    """Consecutive turns grouped by (model, endpoint, stream, verdict)."""
    groups: list[list[TurnEntry]] = []
    for item in turns:
        key = _fold_key(item)
        if groups and _fold_key(groups[-1][-1]) == key:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _fold_key(item: TurnEntry) -> tuple[str, str, bool, str]:
    turn = item.turn
    return (turn.model, turn.endpoint, turn.stream, str(item.cache.verdict) if item.cache else "")


def _turn_rows(entry: TestEntry) -> tuple[list[list[str]], list[str]]:
    """The turn table's rows (runs folded) and the reasons under it (a folded run's once)."""
    rows: list[list[str]] = []
    reasons: list[str] = []
    for run in _runs(entry.turns):
        folded = [run] if len(run) >= FOLD_AT else [[item] for item in run]
        for group in folded:
            first, last = group[0], group[-1]
            turn = first.turn
            verdict = str(first.cache.verdict) if first.cache else ""
            costs = [item.cost.cost_usd if item.cost else None for item in group]
            cost = None if any(c is None for c in costs) else sum((c for c in costs if c is not None), Decimal(0))
            index = str(turn.index) if len(group) == 1 else f"{turn.index}-{last.turn.index}"
            rows.append(
                [
                    index,
                    turn.model,
                    turn.endpoint + (" stream" if turn.stream else ""),
                    verdict if len(group) == 1 or not verdict else f"{verdict} ×{len(group)}",
                    _int(sum(item.turn.uncached_input_tokens for item in group)),
                    _int(sum(item.turn.cache_creation_input_tokens for item in group)),
                    _int(sum(item.turn.cache_read_input_tokens for item in group)),
                    _int(sum(item.turn.output_tokens for item in group)),
                    _usd(cost),
                ]
            )
            if first.cache and first.cache.verdict not in (Verdict.HIT, Verdict.NO_CACHE_CONTROL):
                said = {item.cache.reason for item in group if item.cache}
                if len(group) > 1 and len(said) == 1:
                    reasons.append(f"turns {index}: {first.cache.reason}")
                else:
                    reasons.extend(f"turn {item.turn.index}: {item.cache.reason}" for item in group if item.cache)
    return rows, reasons


_TURN_HEADER = ("turn", "model", "endpoint", "cache", "input", "cache write", "cache read", "output", "cost USD")


def _turn_table(entry: TestEntry, width: int | None) -> list[str]:
    """The ``-v`` turn table, indented; when too wide, a model or endpoint shared by every turn
    is said once above it instead of in a column."""
    rows, reasons = _turn_rows(entry)
    inner = None if width is None else width - 2
    lines = _table(_TURN_HEADER, rows, text_columns=4)
    shared: list[str] = []
    if inner is not None and max(map(len, lines)) > inner:
        header, keep = list(_TURN_HEADER), [True] * len(_TURN_HEADER)
        for column in (1, 2):
            values = {row[column] for row in rows}
            if len(values) == 1:
                shared.append(f"{_TURN_HEADER[column]}: {values.pop()}")
                keep[column] = False
        header = [c for c, k in zip(header, keep, strict=True) if k]
        rows = [[c for c, k in zip(row, keep, strict=True) if k] for row in rows]
        text_columns = 4 - (len(_TURN_HEADER) - len(header))
        lines = _table(header, rows, text_columns=text_columns, width=inner, lead=2 if keep[1] else 1)
    out = ["  " + ", ".join(shared)] if shared else []
    out.extend("  " + line for line in lines)
    for reason in reasons:
        out.extend(wrap(reason, width, first="  ", rest="    "))
    return out


def _heading(entry: TestEntry, width: int | None) -> list[str]:
    """A ``-v`` section's first line: the test's id and, when it differs, its cassette."""
    cassette = entry.cassette if entry.cassette and entry.cassette != entry.id else None
    line = entry.id + (f"  ({cassette})" if cassette else "")
    if width is None or len(line) <= width:
        return [line]
    lines = [shorten_middle(entry.id, width)]
    if cassette:
        lines.append(f"  ({shorten_middle(cassette, width - 4)})")
    return lines


def render_text(
    report: Report, *, verbose: bool = False, lever_details: bool | None = None, width: int | None = None
) -> list[str]:
    """The report as terminal lines (empty when there is nothing to say), within ``width``
    characters when given (see :mod:`._width`); ``lever_details`` (default: ``verbose``) adds each
    lever's assumption and change."""
    if not report.tests and not report.errors and not report.notes:
        return []
    lines: list[str] = []
    prefix = _common_dir([e.id for e in report.tests])
    if prefix:
        lines.append("in " + (prefix if width is None else shorten_middle(prefix, width - 3)))
    if report.tests:
        rows = [format_row(e.id[len(prefix) :], e.totals, e.cost_usd) for e in report.sorted_tests()]
        if len(report.tests) > 1:
            rows.append(format_row("total", report.totals, report.cost_usd))
        lines.extend(_table(("test", *_COLUMNS), rows, width=width))
    if verbose:
        for entry in report.sorted_tests():
            lines.append("")
            lines.extend(_heading(entry, width))
            lines.extend(_spark_line(entry, width))
            lines.extend(_turn_table(entry, width))
    warnings = [
        (e.id, item) for e in report.sorted_tests() for item in e.turns if item.cache and item.cache.verdict in _WARN
    ]
    if warnings and not verbose:
        lines.append("")
        lines.append("cache:")
        for test_id, item in warnings[:_MAX_WARNINGS]:
            assert item.cache is not None
            name = test_id if width is None else shorten_middle(test_id, max(_MIN_NAME, width // 2))
            lines.extend(
                wrap(f"{name} turn {item.turn.index}: {item.cache.verdict}: {item.cache.reason}", width, first="  ")
            )
        if len(warnings) > _MAX_WARNINGS:
            lines.append(f"  ... and {len(warnings) - _MAX_WARNINGS} more (-v shows every turn)")
    from .levers_view import render_levers_text

    for line in render_levers_text(report, verbose=verbose if lever_details is None else lever_details):
        indent = line[: len(line) - len(line.lstrip())]
        lines.extend(wrap(line.lstrip(), width, first=indent) if line.strip() else [line])
    lines.append("")
    lines.extend(wrap(source_line(report.price_source), width))
    lines.extend(wrap(_HIT_RATE, width))
    if report.notes:
        lines.append("")
        lines.extend(wrap(f"{len(report.notes)} file(s) with no priced turn (not errors):", width))
        for note in report.notes:
            lines.extend(wrap(f"{note.path}: {note.note}", width, first="  ", rest="    "))
    if report.errors:
        lines.append("")
        lines.append(f"{len(report.errors)} problem(s):")
        for error in report.errors:
            for line in error.reason.splitlines():
                # A fix line holds what the user copies: never wrapped nor shortened.
                fixed = line.lstrip().startswith("fix:")
                lines.extend(["  " + line] if fixed else wrap(line, width, first="  ", rest="    "))
            if error.path and error.path not in error.reason:
                lines.append(f"    ({error.path})")
    return lines


_HIT_RATE = "hit rate = cache reads / all input tokens (uncached + cache writes + cache reads)"


def _gate_line(line: GateLine, width: int | None) -> list[str]:
    """One gate line, indented: the test id shortened in the middle when it takes more than
    half the width, the message wrapped, a command in it whole."""
    if width is None or len(line.render()) + 2 <= width:
        return ["  " + line.render()]
    if line.test is not None:
        name = shorten_middle(line.test, max(_MIN_NAME, width // 2))
        line = GateLine(line.kind, line.text, name)
    return wrap(line.render(), width, first="  ", rest="      ")


def render_gate(gate: Sequence[GateLine], width: int | None = None) -> list[str]:
    """The gate's lines under a ``gate:`` heading (nothing when there are none), within ``width``."""
    if not gate:
        return []
    return ["", "gate:", *(part for line in gate for part in _gate_line(line, width))]


MAX_NAMED = 3
"""Tests named per reason in the not-checked summary; the rest are counted."""


def _plural(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def name_some(tests: Sequence[str], limit: int = MAX_NAMED) -> str:
    """The first ``limit`` names, then "and N more"."""
    named = ", ".join(tests[:limit])
    return named + (f" and {len(tests) - limit} more" if len(tests) > limit else "")


def coverage_headline(coverage: Coverage) -> str:
    """``baseline: 2 of 6 entries checked, 4 not checked``."""
    line = f"baseline: {len(coverage.checked):,} of {_plural(coverage.entries, 'entry', 'entries')} checked"
    return line + (f", {coverage.unchecked:,} not checked" if coverage.unchecked else "")


def render_coverage(coverage: Coverage | None, width: int | None = None) -> list[str]:
    """The baseline entries checked, and those not checked by reason (nothing when not judged)."""
    if coverage is None:
        return []
    lines = ["", *wrap(coverage_headline(coverage) + (":" if coverage.unchecked else ""), width)]
    for group in coverage.not_checked:
        text = f"{len(group.tests):,} {group.reason.description}: {name_some(group.tests)}"
        lines.extend(wrap(text, width, first="  - ", rest="    "))
    return lines


def _exact(value: Fraction) -> str:
    """A decimal the user wrote (a limit or threshold), as written: 1/100 -> 0.01."""
    return format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")


def _money(value: Fraction | None) -> str:
    return "unknown (a model has no price)" if value is None else f"${float(value):.6f}"


def _value(metric: Metric, value: Fraction | None) -> str:
    if metric is Metric.COST:
        return _money(value)
    assert value is not None
    if metric is Metric.TOKENS:
        return f"{int(value):,}"
    return f"{float(value):.2%}"


_NAMES = {Metric.COST: "cost", Metric.TOKENS: "tokens", Metric.HIT_RATE: "cache hit rate"}


def _estimated(totals: SuiteTotals | None) -> str:
    return " (estimated)" if totals is not None and totals.estimated else ""


def describe_limit(check: LimitCheck, run: SuiteTotals) -> str:
    """``cost $0.018423 over max_cost_usd $0.01`` (or ``within``)."""
    current = _value(check.metric, check.current) + _estimated(run)
    if check.metric is Metric.COST:
        limit = f"${_exact(check.limit)}"
    elif check.metric is Metric.TOKENS:
        limit = f"{int(check.limit):,}"
    else:
        limit = f"{_exact(check.limit * 100)}%"
    if check.metric is Metric.HIT_RATE:
        verb = "within" if check.passed else "under"
    else:
        verb = "within" if check.passed else "over"
    return f"{_NAMES[check.metric]} {current} {verb} {check.key} {limit}"


def _meaning(threshold: Threshold) -> str:
    """When a threshold fails, in words."""
    amount = Fraction(threshold.amount)
    if threshold.metric is Metric.HIT_RATE:
        if threshold.relative:
            return f"fails when it drops more than {_exact(amount)}% of the baseline's rate"
        points = _exact(amount * 100)
        return f"fails when it drops more than {points} point{'' if points == '1' else 's'}"
    if threshold.relative:
        return f"fails when it rises more than {_exact(amount)}% over the baseline's"
    if threshold.metric is Metric.COST:
        return f"fails when it rises more than ${_exact(amount)}"
    return f"fails when it rises more than {_plural(int(amount), 'token', 'tokens')}"


def describe_threshold(check: ThresholdCheck, verdict: SuiteVerdict) -> str:
    """``cost $0.012282 vs baseline $0.011131 (+$0.001151, +10.3%): over the cost:5% threshold (...)``."""
    metric, now, before = check.threshold.metric, check.current, check.baseline
    text = f"{_NAMES[metric]} {_value(metric, now)}{_estimated(verdict.current)} vs baseline {_value(metric, before)}"
    if now is not None and before is not None:
        change = now - before
        sign = "+" if change >= 0 else "-"
        if metric is Metric.COST:
            moved = f"{sign}${float(abs(change)):.6f}"
        elif metric is Metric.TOKENS:
            moved = f"{sign}{int(abs(change)):,}"
        else:
            moved = f"{sign}{float(abs(change)) * 100:.2f} points"
        relative = f", {float(change / before):+.2%}" if before else ""
        text += f" ({moved}{relative})"
    verb = "within" if check.passed else "over"
    return f"{text}: {verb} the {check.threshold} threshold ({_meaning(check.threshold)})"


def suite_headline(verdict: SuiteVerdict) -> str:
    """``suite budget: FAIL, 1 of 5 limits broken``, ``suite budget: ok, 5 limits checked`` (limits and
    thresholds), or ``suite budget: nothing judged``."""
    if verdict.failed:
        return f"suite budget: FAIL, {verdict.broken:,} of {_plural(verdict.judged, 'limit', 'limits')} broken"
    if not verdict.judged:
        return "suite budget: nothing judged"
    return f"suite budget: ok, {_plural(verdict.judged, 'limit', 'limits')} checked"


def suite_run_line(verdict: SuiteVerdict) -> str:
    """This run's totals (what the absolute limits judge)."""
    run = verdict.run
    if not run.tests:
        return "this run made no API turn: its limits are not judged"
    return (
        f"this run, {_plural(run.tests, 'test', 'tests')}: cost {_money(run.value(Metric.COST))}{_estimated(run)}, "
        f"{run.total_tokens:,} tokens, cache hit rate {float(run.hit_rate):.2%}"
    )


def suite_compared_line(verdict: SuiteVerdict) -> str | None:
    """Over which tests the thresholds compared (``None`` when there are no thresholds)."""
    if not verdict.budget.fail_on:
        return None
    left: list[str] = []
    if verdict.left_out:
        left.append(f"{_plural(verdict.left_out, 'baseline entry', 'baseline entries')} not checked")
    if verdict.new:
        left.append(f"{_plural(verdict.new, 'test', 'tests')} not in the baseline")
    left_out = f" (left out: {', '.join(left)})" if left else ""
    if verdict.uncompared is Uncompared.UPDATE:
        return "against the baseline: not compared (--token-budget-update rewrites it from this run)"
    if verdict.current is None:
        return "against the baseline: no baseline yet, nothing compared (create it with --token-budget-update)"
    if not verdict.current.tests:
        return f"against the baseline: no test checked in this run, nothing compared{left_out}"
    return f"against the baseline over the same {_plural(verdict.current.tests, 'test', 'tests')}{left_out}:"


def render_suite(verdict: SuiteVerdict | None, width: int | None = None) -> list[str]:
    """The suite budget's verdict: this run against its limits, and against the baseline."""
    if verdict is None:
        return []
    lines = ["", *wrap(suite_headline(verdict), width), *wrap(suite_run_line(verdict), width, first="  ")]
    for limit in verdict.limits:
        text = f"{'ok  ' if limit.passed else 'FAIL'} {describe_limit(limit, verdict.run)}"
        lines.extend(wrap(text, width, first="  - ", rest="         "))
    compared = suite_compared_line(verdict)
    if compared is not None:
        lines.extend(wrap(compared, width, first="  "))
    for threshold in verdict.thresholds:
        text = f"{'ok  ' if threshold.passed else 'FAIL'} {describe_threshold(threshold, verdict)}"
        lines.extend(wrap(text, width, first="  - ", rest="         "))
    return lines
