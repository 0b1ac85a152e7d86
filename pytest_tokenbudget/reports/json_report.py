"""The report as a JSON document, following ``schemas/report.schema.json``.

Its fields are only ever added to, never renamed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from functools import cache
from importlib import resources
from typing import Any

from .._suite import Metric, SuiteTotals, SuiteVerdict
from ..ledger import Totals
from .levers_view import levers_json, test_levers_json
from .model import Coverage, GateLine, Report, TestEntry, TurnEntry

__all__ = ["SCHEMA_VERSION", "report_json", "report_schema", "validate_report"]

SCHEMA_VERSION = 1


def report_json(report: Report, gate: Sequence[GateLine] | None = None) -> dict[str, Any]:
    """The JSON document (see ``schemas/report.schema.json``), with the gate's lines when given."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "price_source": dict(report.price_source),
        "totals": {**_totals_json(report.totals, report.cost_usd), "levers": levers_json(report.levers)},
        "tests": [_test_json(entry) for entry in report.sorted_tests()],
        "errors": [
            {k: v for k, v in (("path", e.path), ("test", e.test), ("reason", e.reason)) if v is not None}
            for e in report.errors
        ],
    }
    if report.notes:
        out["notes"] = [{"path": n.path, "note": n.note} for n in report.notes]
    if report.coverage is not None:
        out["baseline_coverage"] = _coverage_json(report.coverage)
    if report.suite is not None:
        out["suite"] = _suite_json(report.suite)
    if gate is not None:
        out["gate"] = [{"kind": line.kind.value, "test": line.test, "text": line.text} for line in gate]
    return out


def _coverage_json(coverage: Coverage) -> dict[str, Any]:
    return {
        "entries": coverage.entries,
        "checked": list(coverage.checked),
        "unchecked": coverage.unchecked,
        "not_checked": [
            {"reason": group.reason.value, "description": group.reason.description, "tests": list(group.tests)}
            for group in coverage.not_checked
        ],
    }


def _number(metric: Metric, value: Fraction | None) -> float | int | None:
    if value is None:
        return None
    if metric is Metric.TOKENS:
        return int(value)
    return round(float(value), 6) if metric is Metric.HIT_RATE else float(value)


def _suite_totals_json(totals: SuiteTotals) -> dict[str, Any]:
    return {
        "tests": totals.tests,
        "total_input_tokens": totals.input_tokens,
        "cache_read_input_tokens": totals.cache_read_input_tokens,
        "output_tokens": totals.output_tokens,
        "total_tokens": totals.total_tokens,
        "cost_usd": _money(totals.cost_usd),
        "cache_hit_rate": round(float(totals.hit_rate), 6),
        "estimated": totals.estimated,
    }


def _suite_json(verdict: SuiteVerdict) -> dict[str, Any]:
    budget = verdict.budget
    compared = None
    if verdict.current is not None and verdict.baseline is not None:
        compared = {
            "current": _suite_totals_json(verdict.current),
            "baseline": _suite_totals_json(verdict.baseline),
            "left_out": verdict.left_out,
            "new": verdict.new,
        }
    return {
        "passed": not verdict.failed,
        "budget": {
            "max_cost_usd": _money(budget.max_cost_usd),
            "max_total_tokens": budget.max_total_tokens,
            "min_cache_hit_rate": float(budget.min_cache_hit_rate) if budget.min_cache_hit_rate is not None else None,
            "fail_on": [str(t) for t in budget.fail_on],
        },
        "run": _suite_totals_json(verdict.run),
        "limits": [
            {
                "key": check.key,
                "metric": check.metric.value,
                "limit": _number(check.metric, check.limit),
                "current": _number(check.metric, check.current),
                "passed": check.passed,
            }
            for check in verdict.limits
        ],
        "compared": compared,
        "uncompared": verdict.uncompared.value if verdict.uncompared is not None else None,
        "thresholds": [
            {
                "threshold": str(check.threshold),
                "metric": check.threshold.metric.value,
                "amount": float(check.threshold.amount),
                "relative": check.threshold.relative,
                "current": _number(check.threshold.metric, check.current),
                "baseline": _number(check.threshold.metric, check.baseline),
                "passed": check.passed,
            }
            for check in verdict.thresholds
        ],
    }


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _totals_json(totals: Totals, cost: Decimal | None) -> dict[str, Any]:
    return {
        "turns": totals.turns,
        "input_tokens": totals.uncached_input_tokens,
        "cache_creation_input_tokens": totals.cache_creation_input_tokens,
        "cache_write_5m_tokens": totals.cache_write_5m_tokens,
        "cache_write_1h_tokens": totals.cache_write_1h_tokens,
        "cache_read_input_tokens": totals.cache_read_input_tokens,
        "output_tokens": totals.output_tokens,
        "total_input_tokens": totals.total_input_tokens,
        "iterations_input_tokens": totals.iterations_input_tokens,
        "iterations_output_tokens": totals.iterations_output_tokens,
        "cleared_input_tokens": totals.cleared_input_tokens,
        "cost_usd": _money(cost),
        "cache_hit_rate": round(totals.cache_hit_rate, 6),
    }


def _usage_details(entry: TurnEntry) -> dict[str, Any] | None:
    """The usage the API reports outside the top-level counts, typed; ``None`` when there is none."""
    turn = entry.turn
    iterations, edits = turn.iterations, turn.applied_edits
    special = (
        turn.service_tier not in (None, "standard")
        or turn.speed not in (None, "standard")
        or turn.inference_geo is not None
    )
    if not (iterations or edits or special or turn.web_search_requests or turn.web_fetch_requests):
        return None
    priced = {item.position: item for item in entry.cost.iterations} if entry.cost is not None else {}
    rows = []
    for item in iterations:
        counts = item.counts
        row: dict[str, Any] = {
            "position": item.position,
            "type": item.kind,
            "model": item.model,
            "in_top_level": item.in_top_level,
            "billed_outside_top_level": item.billed_outside_top_level,
            "input_tokens": counts.uncached_input_tokens,
            "cache_creation_input_tokens": counts.cache_write_tokens,
            "cache_read_input_tokens": counts.cache_read_tokens,
            "output_tokens": counts.output_tokens,
        }
        cost = priced.get(item.position)
        if cost is not None:
            row["priced_model"] = cost.model
            row["cost_usd"] = _money(cost.cost_usd)
        rows.append(row)
    return {
        "service_tier": turn.service_tier,
        "speed": turn.speed,
        "inference_geo": turn.inference_geo,
        "web_search_requests": turn.web_search_requests,
        "web_fetch_requests": turn.web_fetch_requests,
        "iterations": rows,
        "applied_edits": [
            {
                "type": edit.kind,
                "cleared_input_tokens": edit.cleared_input_tokens,
                "cleared_tool_uses": edit.cleared_tool_uses,
                "cleared_thinking_turns": edit.cleared_thinking_turns,
            }
            for edit in edits
        ],
        "cleared_input_tokens": turn.cleared_input_tokens,
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
        out["cache"] = entry.cache.as_dict()
    details = _usage_details(entry)
    if details is not None:
        out["usage_details"] = details
    return out


def _test_json(entry: TestEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": entry.id,
        "cassette": entry.cassette,
        "turns": [_turn_json(t) for t in entry.turns],
        "totals": _totals_json(entry.totals, entry.cost_usd),
        "by_model": {model: _totals_json(totals, cost) for model, (totals, cost) in entry.by_model().items()},
    }
    out.update(test_levers_json(entry))
    if entry.errors:
        out["errors"] = list(entry.errors)
    if entry.baseline is not None:
        out["baseline"] = entry.baseline.as_json()
    if entry.first_change is not None:
        turn, difference = entry.first_change
        out["first_change"] = {
            "turn": turn,
            "path": difference.path,
            "offset": difference.offset,
            "before": difference.before,
            "after": difference.after,
            "kind": difference.kind,
        }
    if entry.budget is not None and not entry.budget.is_empty():
        out["budget"] = {
            f.name: float(value) if isinstance(value, Decimal) else value
            for f in fields(entry.budget)
            if (value := getattr(entry.budget, f.name)) is not None
        }
    return out


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
