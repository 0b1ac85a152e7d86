"""Publishing the session's report: terminal lines, JSON and Markdown files, the GitHub job summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ._atomic import write_atomic
from ._run import RunState
from .report import render_markdown, render_text


def publish(state: RunState) -> list[str]:
    """Write the report files the settings ask for; return the terminal lines."""
    report = state.report()
    settings = state.settings
    if settings.json_path is not None:
        write_atomic(settings.json_path, json.dumps(report.to_json(), indent=2) + "\n")
    markdown = None
    if settings.markdown_path is not None or os.environ.get("GITHUB_STEP_SUMMARY"):
        markdown = render_markdown(report)
    if settings.markdown_path is not None and markdown is not None:
        write_atomic(settings.markdown_path, markdown)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and markdown is not None:
        # GitHub collects the job summary by appending to this file: append, do not replace.
        with Path(summary).open("a", encoding="utf-8") as handle:
            handle.write(markdown)
    lines = render_text(report, verbose=settings.verbose)
    for path in (settings.json_path, settings.markdown_path):
        if path is not None:
            lines.append(f"wrote {path}")
    return lines
