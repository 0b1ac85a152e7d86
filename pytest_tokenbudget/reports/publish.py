"""Publishing a report: the JSON, Markdown and HTML files, the GitHub job summary, the terminal lines."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .._atomic import write_atomic
from .html import render_html
from .json_report import report_json
from .markdown import render_markdown
from .model import GateLine, Report
from .terminal import render_coverage, render_gate, render_suite, render_text

__all__ = ["publish"]


def publish(
    report: Report,
    gate: Sequence[GateLine],
    *,
    json_path: Path | None = None,
    markdown_path: Path | None = None,
    verbose: bool = False,
    html_path: Path | None = None,
    redact: Callable[[str], str] = str,
    width: int | None = None,
) -> list[str]:
    """Write the report files asked for (atomically) and the job summary; return the terminal lines.

    ``$GITHUB_STEP_SUMMARY``, when set, gets the Markdown appended: GitHub collects the job
    summary by appending to that file. Everything written and returned goes through ``redact``
    (the session's redactor: no secret seen in the session reaches a report). ``width``: the
    terminal's, which the lines keep within (see :mod:`._width`; the files are not affected).
    """
    if json_path is not None:
        write_atomic(json_path, redact(json.dumps(report_json(report, gate), indent=2) + "\n"))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    markdown = redact(render_markdown(report, gate=gate)) if markdown_path is not None or summary else None
    if markdown_path is not None and markdown is not None:
        write_atomic(markdown_path, markdown)
    if summary and markdown is not None:
        with Path(summary).open("a", encoding="utf-8") as handle:
            handle.write(markdown)
    if html_path is not None:
        write_atomic(html_path, redact(render_html(report, gate=gate)))
    lines = render_text(report, verbose=verbose, width=width)
    lines.extend(render_gate(gate, width))
    lines.extend(render_coverage(report.coverage, width))
    lines.extend(render_suite(report.suite, width))
    for path in (json_path, markdown_path, html_path):
        if path is not None:
            lines.append(f"wrote {path}")  # a path the user opens: whole
    while lines and not lines[0]:  # no report table above: start with what there is
        del lines[0]
    return [redact(line) for line in lines]
