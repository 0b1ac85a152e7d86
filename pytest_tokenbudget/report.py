"""The report: per test, its turns priced, its totals; as data, JSON, a terminal table, Markdown.

The same report comes out of ``pytest --token-budget`` (one entry per test, ``id`` = node id)
and ``tokenbudget report PATH...`` (one entry per cassette, ``id`` = its path). The JSON form
follows ``schemas/report.schema.json``; its fields are only ever added to, never renamed.

Cache hit rate = cache reads / (uncached input + cache writes + cache reads), over the turns
counted: the share of input tokens billed at the cache-read price.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from .errors import TokenBudgetError
from .ledger import Ledger, Totals, Turn
from .pricing import Pricer, TurnCost

__all__ = [
    "SCHEMA_VERSION",
    "Report",
    "TestEntry",
    "build_report",
    "report_schema",
    "validate_report",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TurnEntry:
    """A turn, its price (``None`` when it could not be priced) and its cache analysis."""

    turn: Turn
    cost: TurnCost | None
    cache: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TestEntry:
    """One test (or one cassette) in the report."""

    id: str
    cassette: str | None
    turns: tuple[TurnEntry, ...]
    totals: Totals
    cost_usd: Decimal | None
    errors: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cache_hit_rate(self) -> float:
        """Cache reads over all input tokens."""
        return self.totals.cache_hit_rate


@dataclass(frozen=True)
class ReportError:
    """Something that could not be read or priced."""

    path: str | None
    reason: str
    test: str | None = None


@dataclass(frozen=True)
class Report:
    """The whole report."""

    tests: tuple[TestEntry, ...]
    errors: tuple[ReportError, ...]
    price_source: Mapping[str, Any]

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

    def sorted_tests(self) -> list[TestEntry]:
        """Tests by cost, highest first (unpriced ones last), then by id."""
        return sorted(self.tests, key=lambda e: (e.cost_usd is None, -(e.cost_usd or 0), e.id))

    def to_json(self) -> dict[str, Any]:
        """The JSON document (see ``schemas/report.schema.json``)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "price_source": dict(self.price_source),
            "totals": _totals_json(self.totals, self.cost_usd),
            "tests": [_test_json(entry) for entry in self.sorted_tests()],
            "errors": [
                {k: v for k, v in (("path", e.path), ("test", e.test), ("reason", e.reason)) if v is not None}
                for e in self.errors
            ],
        }


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _totals_json(totals: Totals, cost: Decimal | None) -> dict[str, Any]:
    return {
        "turns": totals.turns,
        "input_tokens": totals.input_tokens,
        "cache_creation_input_tokens": totals.cache_creation_input_tokens,
        "cache_write_5m_tokens": totals.cache_write_5m_tokens,
        "cache_write_1h_tokens": totals.cache_write_1h_tokens,
        "cache_read_input_tokens": totals.cache_read_input_tokens,
        "output_tokens": totals.output_tokens,
        "total_input_tokens": totals.total_input_tokens,
        "cost_usd": _money(cost),
        "cache_hit_rate": round(totals.cache_hit_rate, 6),
    }


def _turn_json(entry: TurnEntry) -> dict[str, Any]:
    turn = entry.turn
    out: dict[str, Any] = {
        "index": turn.index,
        "model": turn.model,
        "endpoint": turn.endpoint,
        "stream": turn.stream,
        "usage": dict(turn.usage),
        "cost_usd": _money(entry.cost.cost_usd) if entry.cost else None,
        "cost_breakdown": {k: float(v) for k, v in entry.cost.breakdown.items()} if entry.cost else None,
    }
    if turn.recorded_at is not None:
        out["recorded_at"] = datetime.fromtimestamp(turn.recorded_at, UTC).isoformat().replace("+00:00", "Z")
    if turn.custom_id is not None:
        out["custom_id"] = turn.custom_id
    if turn.has_diagnostics:
        out["diagnostics"] = turn.diagnostics
    if entry.cost is not None:
        out["price"] = {"model_ref": entry.cost.model_ref, "source": entry.cost.source, "notes": list(entry.cost.notes)}
    if entry.cache is not None:
        out["cache"] = dict(entry.cache)
    return out


def _test_json(entry: TestEntry) -> dict[str, Any]:
    by_model: dict[str, dict[str, Any]] = {}
    for item in entry.turns:
        model = item.turn.model
        current = by_model.setdefault(model, {"totals": Totals(), "cost": Decimal(0), "priced": True})
        current["totals"] = current["totals"] + item.turn.totals()
        if item.cost is None:
            current["priced"] = False
        else:
            current["cost"] += item.cost.cost_usd
    out: dict[str, Any] = {
        "id": entry.id,
        "cassette": entry.cassette,
        "turns": [_turn_json(t) for t in entry.turns],
        "totals": _totals_json(entry.totals, entry.cost_usd),
        "by_model": {
            model: _totals_json(v["totals"], v["cost"] if v["priced"] else None) for model, v in by_model.items()
        },
    }
    if entry.errors:
        out["errors"] = list(entry.errors)
    out.update(entry.extra)
    return out


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


def cache_of(ledger: Ledger) -> list[dict[str, Any]] | None:
    """The cache analysis of a ledger as JSON, per turn (``None`` when request bodies are missing)."""
    if not ledger.turns or any(turn.request is None for turn in ledger.turns):
        return None
    from .analysis import analyze

    return [result.as_dict() for result in analyze(ledger).turns]


def build_entry(
    test_id: str,
    cassette: str | None,
    ledger: Ledger,
    pricer: Pricer,
    cache: Sequence[Mapping[str, Any]] | None = None,
) -> TestEntry:
    """Price one ledger into a report entry, with its cache analysis (computed when not given)."""
    turns, errors = price_ledger(ledger, pricer, test=test_id if cassette != test_id else None)
    analysis = list(cache) if cache is not None else cache_of(ledger)
    if analysis is not None and len(analysis) == len(turns):
        turns = [TurnEntry(t.turn, t.cost, c) for t, c in zip(turns, analysis, strict=True)]
    cost = None if any(t.cost is None for t in turns) else sum((t.cost.cost_usd for t in turns if t.cost), Decimal(0))
    return TestEntry(test_id, cassette, tuple(turns), ledger.totals(), cost, tuple(errors))


def build_report(
    entries: Iterable[tuple[str, str | None, Ledger] | tuple[str, str | None, Ledger, Any]],
    pricer: Pricer,
    errors: Sequence[ReportError] = (),
) -> Report:
    """Price ledgers into a report.

    Args:
        entries: ``(id, cassette path, ledger)`` per test or cassette, optionally with a fourth
            item, the turns' cache analysis as JSON; ledgers without turns are left out.
        pricer: prices every turn.
        errors: what could not be read, reported as is.
    """
    tests = []
    all_errors = list(errors)
    for item in entries:
        test_id, cassette, ledger = item[0], item[1], item[2]
        if not ledger.turns:
            continue
        entry = build_entry(test_id, cassette, ledger, pricer, item[3] if len(item) > 3 else None)
        tests.append(entry)
        all_errors.extend(
            ReportError(cassette, reason, test_id if test_id != cassette else None) for reason in entry.errors
        )
    return Report(tuple(tests), tuple(all_errors), pricer.source.as_dict())


@cache
def report_schema() -> dict[str, Any]:
    """The report's JSON Schema (``pytest_tokenbudget/schemas/report.schema.json``)."""
    text = resources.files("pytest_tokenbudget").joinpath("schemas/report.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_report(document: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when a report document does not follow the schema."""
    import jsonschema

    jsonschema.validate(document, report_schema(), cls=jsonschema.Draft202012Validator)


# --------------------------------------------------------------------------------------------
# text


def _int(value: int) -> str:
    return f"{value:,}"


def _usd(value: Decimal | None) -> str:
    if value is None:
        return "n/a"
    return f"${value:,.6f}" if value < 1 else f"${value:,.2f}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


# Verdicts worth a line in the summary: money lost, or a breakpoint that does nothing.
_WARN = frozenset({"miss_unexpected", "prefix_changed", "expired", "below_minimum"})
_MAX_WARNINGS = 10

_COLUMNS = ("turns", "input", "cache write", "cache read", "output", "hit rate", "cost USD")


def _row(name: str, totals: Totals, cost: Decimal | None) -> list[str]:
    return [
        name,
        _int(totals.turns),
        _int(totals.input_tokens),
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


def _source_line(source: Mapping[str, Any]) -> str:
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
        rows = [_row(e.id[len(prefix) :], e.totals, e.cost_usd) for e in report.sorted_tests()]
        if len(report.tests) > 1:
            rows.append(_row("total", report.totals, report.cost_usd))
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
                        str(item.cache["verdict"]) if item.cache else "",
                        _int(turn.input_tokens),
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
                f"  turn {item.turn.index}: {item.cache['reason']}"
                for item in entry.turns
                if item.cache and item.cache["verdict"] not in ("hit", "no_cache_control")
            )
    warnings = [
        (e.id, item) for e in report.sorted_tests() for item in e.turns if item.cache and item.cache["verdict"] in _WARN
    ]
    if warnings and not verbose:
        lines.append("")
        lines.append("cache:")
        for test_id, item in warnings[:_MAX_WARNINGS]:
            assert item.cache is not None
            lines.append(f"  {test_id} turn {item.turn.index}: {item.cache['verdict']}: {item.cache['reason']}")
        if len(warnings) > _MAX_WARNINGS:
            lines.append(f"  ... and {len(warnings) - _MAX_WARNINGS} more (-v shows every turn)")
    lines.append("")
    lines.append(_source_line(report.price_source))
    lines.append("hit rate = cache reads / all input tokens (uncached + cache writes + cache reads)")
    if report.errors:
        lines.append("")
        lines.append(f"{len(report.errors)} problem(s):")
        for error in report.errors:
            lines.extend("  " + line for line in error.reason.splitlines())
            if error.path and error.path not in error.reason:
                lines.append(f"    ({error.path})")
    return lines


def render_markdown(report: Report, *, title: str = "Token budget", gate: Sequence[str] = ()) -> str:
    """The report as GitHub-flavoured Markdown (for ``GITHUB_STEP_SUMMARY``), gate verdicts first."""
    out = [f"## {title}", ""]
    failures: dict[str, list[str]] = {}
    for line in gate:
        if ": FAIL " in line:
            test, reason = line.split(": FAIL ", 1)
            failures.setdefault(test, []).append(reason)
    if failures:
        out.append(f"**{len(failures)} test(s) fail the token budget gate**")
        out.append("")
        for test, reasons in failures.items():
            out.append(f"- :x: `{test}`")
            out.extend(f"  - {reason}" for reason in reasons)
        out.append("")
    others = [line for line in gate if ": FAIL " not in line]
    if others:
        out.extend(f"- {line}" for line in others)
        out.append("")
    if report.tests:
        out.append("| test | turns | input | cache write | cache read | output | hit rate | cost USD |")
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|")
        rows = [_row(e.id, e.totals, e.cost_usd) for e in report.sorted_tests()]
        if len(report.tests) > 1:
            rows.append(_row("**total**", report.totals, report.cost_usd))
        for row in rows:
            out.append("| " + " | ".join([f"`{row[0]}`" if row[0] != "**total**" else row[0], *row[1:]]) + " |")
    else:
        out.append("No Claude API turns.")
    out.append("")
    out.append(_source_line(report.price_source) + ". Hit rate = cache reads / all input tokens.")
    if report.errors:
        out.append("")
        out.append(f"### {len(report.errors)} problem(s)")
        out.append("")
        for error in report.errors:
            out.append("```")
            out.append(error.reason)
            out.append("```")
    return "\n".join(out) + "\n"
