"""Reports: the priced model (:mod:`.model`), and its terminal, Markdown, JSON and HTML forms.

The JSON form follows ``schemas/report.schema.json``; :func:`validate_report` checks a document
against it.
"""

from __future__ import annotations

from .html import render_html
from .json_report import SCHEMA_VERSION, report_json, report_schema, validate_report
from .markdown import render_markdown
from .model import (
    Coverage,
    GapReason,
    GateKind,
    GateLine,
    NotChecked,
    Report,
    ReportError,
    ReportNote,
    TestEntry,
    TurnEntry,
    build_entry,
    build_report,
    price_ledger,
)
from .publish import publish
from .terminal import render_text

__all__ = [
    "SCHEMA_VERSION",
    "Coverage",
    "GapReason",
    "GateKind",
    "GateLine",
    "NotChecked",
    "Report",
    "ReportError",
    "ReportNote",
    "TestEntry",
    "TurnEntry",
    "build_entry",
    "build_report",
    "price_ledger",
    "publish",
    "render_html",
    "render_markdown",
    "render_text",
    "report_json",
    "report_schema",
    "validate_report",
]
