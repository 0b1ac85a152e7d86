"""``tokenbudget``: the report for any cassette, without running a test.

    tokenbudget report cassettes/                 # a table, like pytest --token-budget
    tokenbudget report a.yaml b.yaml --json       # the JSON report (schemas/report.schema.json)
    tokenbudget report cassettes/ --html r.html   # also one self-contained HTML page with charts
    tokenbudget gate BASELINE REPORT              # the gate of pytest --token-budget, on two files
    tokenbudget comment REPORT                    # the pull request comment (GitHub Actions)

Exit status: 0 when every cassette was read and priced, 1 when some could not be (they are
listed with the reason; the rest are still reported), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import _ci
from ._atomic import write_atomic
from ._settings import add_cli_options
from .cassette import iter_cassette_files, load_cassette
from .errors import TokenBudgetError
from .ledger import turns_from
from .pricing import Pricer
from .reports import ReportError, TestEntry, build_entry, build_report, render_html, render_text, report_json

__all__ = ["main"]


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenbudget", description="Token and cost reports for Claude cassettes.")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="report tokens and cost of cassettes (files or folders)")
    report.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="cassette files or folders of them")
    report.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    add_cli_options(report)
    report.add_argument("-v", "--verbose", action="store_true", help="add each cassette's per-turn table")
    gate = commands.add_parser("gate", help="judge a JSON report against a baseline, as pytest --token-budget does")
    _ci.add_gate_arguments(gate)
    add_cli_options(gate)
    comment = commands.add_parser("comment", help="post or update the pull request comment of a JSON report")
    _ci.add_comment_arguments(comment)
    return parser


def _read(paths: Sequence[Path], pricer: Pricer) -> tuple[list[TestEntry], list[ReportError]]:
    """Each cassette's entry, priced; what could not be read, with the reason."""
    entries: list[TestEntry] = []
    errors: list[ReportError] = []
    for path in iter_cassette_files(paths):
        name = _relative(path)
        try:
            ledger = turns_from(load_cassette(path).interactions, source=name)
        except FileNotFoundError:
            errors.append(ReportError(name, f"tokenbudget: no such file: {name}"))
            continue
        except TokenBudgetError as error:
            errors.append(ReportError(name, error.render()))
            continue
        entries.append(build_entry(name, name, ledger, pricer))
    return entries, errors


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "gate":
        return _ci.run_gate(args)
    if args.command == "comment":
        return _ci.run_comment(args)
    try:
        pricer = Pricer(override_files=args.prices, timestamp_policy=args.price_at)
    except TokenBudgetError as error:
        print(error.render(), file=sys.stderr)
        return 2
    entries, unreadable = _read(args.paths, pricer)
    report = build_report(entries, pricer.source.as_dict(), unreadable)
    if args.json:
        json.dump(report_json(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from .reports._width import terminal_width

        lines = render_text(report, verbose=args.verbose, width=terminal_width())
        print("\n".join(lines) if lines else "no Claude API turns found")
    if args.html is not None:
        try:
            write_atomic(Path(args.html), render_html(report))
        except OSError as error:
            print(f"tokenbudget: cannot write the HTML report {args.html}: {error.strerror or error}", file=sys.stderr)
            return 2
        print(f"wrote {args.html}", file=sys.stderr if args.json else sys.stdout)
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
