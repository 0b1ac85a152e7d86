"""Publishing the session's results: terminal lines, report files, the GitHub job summary, the baseline."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ._atomic import write_atomic
from ._run import RunState
from .baseline import merge_baseline, write_baseline
from .report import render_markdown, render_text


def update_baseline(state: RunState) -> None:
    """Write the baseline from this run (passed tests replace their entries; gone tests are pruned)."""
    path = state.settings.baseline_path
    if path is None:
        return
    fresh = {test: r.baseline for test, r in state.results.items() if r.baseline is not None and r.passed}
    merged = merge_baseline(state.baseline, fresh, collected=state.collected, rootdir=state.settings.rootdir)
    write_baseline(path, merged.entries)
    state.update_lines = [f"baseline {state.display_id(path)}: {len(merged.updated)} test(s) written"]
    if merged.pruned:
        state.update_lines.append(
            f"  pruned {len(merged.pruned)} entr{'y' if len(merged.pruned) == 1 else 'ies'} "
            f"for tests that no longer exist: {', '.join(merged.pruned)}"
        )
    if merged.stale:
        state.update_lines.append(
            f"  kept {len(merged.stale)} entr{'y' if len(merged.stale) == 1 else 'ies'} "
            f"for tests that did not run: {', '.join(merged.stale)}"
        )
    failed = sorted(test for test, r in state.results.items() if r.baseline is not None and not r.passed)
    if failed:
        state.update_lines.append(f"  not updated (the test failed): {', '.join(failed)}")


def _gate_lines(state: RunState) -> list[str]:
    lines: list[str] = []
    if state.settings.update:
        return list(state.update_lines)
    if state.baseline is None:
        if state.results and any(r.ledger.turns for r in state.results.values()):
            lines.append(
                f"no baseline at {state.display_id(state.settings.baseline_path or Path())}: "
                "create it with --token-budget-update"
            )
        return lines
    for test, result in sorted(state.results.items()):
        if not result.ledger.turns:
            continue
        if test not in state.baseline:
            lines.append(f"{test}: not in the baseline (add it with --token-budget-update)")
        for failure in result.gate_failures:
            lines.append(f"{test}: FAIL {failure}")
        for note in result.gate_notes:
            lines.append(f"{test}: {note}")
    return lines


def publish(state: RunState) -> list[str]:
    """Write the report files the settings ask for; return the terminal lines."""
    report = state.report()
    settings = state.settings
    if settings.json_path is not None:
        write_atomic(settings.json_path, json.dumps(report.to_json(), indent=2) + "\n")
    gate = _gate_lines(state)
    markdown = None
    if settings.markdown_path is not None or os.environ.get("GITHUB_STEP_SUMMARY"):
        markdown = render_markdown(report, gate=gate)
    if settings.markdown_path is not None and markdown is not None:
        write_atomic(settings.markdown_path, markdown)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and markdown is not None:
        # GitHub collects the job summary by appending to this file: append, do not replace.
        with Path(summary).open("a", encoding="utf-8") as handle:
            handle.write(markdown)
    lines = render_text(report, verbose=settings.verbose)
    if gate:
        lines.extend(["", "gate:", *("  " + line for line in gate)])
    for path in (settings.json_path, settings.markdown_path):
        if path is not None:
            lines.append(f"wrote {path}")
    return lines
