"""The report as GitHub-flavoured Markdown (the job summary, the ``--token-budget-md`` file)."""

from __future__ import annotations

from collections.abc import Sequence

from .model import Coverage, GateKind, GateLine, Report
from .terminal import (
    coverage_headline,
    describe_limit,
    describe_threshold,
    format_row,
    name_some,
    source_line,
    suite_compared_line,
    suite_headline,
    suite_run_line,
)

__all__ = ["render_markdown"]


def render_markdown(report: Report, *, title: str = "Token budget", gate: Sequence[GateLine] = ()) -> str:
    """The report as GitHub-flavoured Markdown (for ``GITHUB_STEP_SUMMARY``), gate verdicts first."""
    out = [f"## {title}", ""]
    failures: dict[str, list[str]] = {}
    for line in gate:
        if line.kind is GateKind.FAIL:
            failures.setdefault(line.test or "", []).append(line.text)
    if failures:
        out.append(f"**{len(failures)} test(s) fail the token budget gate**")
        out.append("")
        for test, reasons in failures.items():
            out.append(f"- :x: `{test}`")
            out.extend(f"  - {reason}" for reason in reasons)
        out.append("")
    out.extend(_suite(report))
    others = [line for line in gate if line.kind is not GateKind.FAIL]
    if others:
        out.extend(f"- {line.render()}" for line in others)
        out.append("")
    out.extend(_coverage(report.coverage))
    if report.tests:
        out.append("| test | turns | input | cache write | cache read | output | hit rate | cost USD |")
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|")
        rows = [format_row(e.id, e.totals, e.cost_usd) for e in report.sorted_tests()]
        if len(report.tests) > 1:
            rows.append(format_row("**total**", report.totals, report.cost_usd))
        for row in rows:
            out.append("| " + " | ".join([f"`{row[0]}`" if row[0] != "**total**" else row[0], *row[1:]]) + " |")
        from .levers_view import render_levers_markdown

        out.extend(render_levers_markdown(report))
    else:
        out.append("No Claude API turns.")
    out.append("")
    out.append(source_line(report.price_source) + ". Hit rate = cache reads / all input tokens.")
    if report.errors:
        out.append("")
        out.append(f"### {len(report.errors)} problem(s)")
        out.append("")
        for error in report.errors:
            out.append("```")
            out.append(error.reason)
            out.append("```")
    return "\n".join(out) + "\n"


def _mark(passed: bool) -> str:
    return ":white_check_mark:" if passed else ":x:"


def _suite(report: Report) -> list[str]:
    verdict = report.suite
    if verdict is None:
        return []
    out = [f"**{suite_headline(verdict)}**", "", f"- {suite_run_line(verdict)}"]
    out.extend(f"  - {_mark(c.passed)} {describe_limit(c, verdict.run)}" for c in verdict.limits)
    compared = suite_compared_line(verdict)
    if compared is not None:
        out.append(f"- {compared}")
    out.extend(f"  - {_mark(c.passed)} {describe_threshold(c, verdict)}" for c in verdict.thresholds)
    out.append("")
    return out


def _coverage(coverage: Coverage | None) -> list[str]:
    if coverage is None:
        return []
    out = [f"**{coverage_headline(coverage)}**", ""]
    for group in coverage.not_checked:
        out.append(f"- {len(group.tests):,} {group.reason.description}: {name_some([f'`{t}`' for t in group.tests])}")
    if coverage.not_checked:
        out.append("")
    return out
