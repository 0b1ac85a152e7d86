"""``tokenbudget``: the report for any cassette, without running a test.

    tokenbudget report cassettes/                 # a table, like pytest --token-budget
    tokenbudget report a.yaml b.yaml --json       # the JSON report (schemas/report.schema.json)
    tokenbudget report cassettes/ --html r.html   # also one self-contained HTML page with charts
    tokenbudget gate BASELINE REPORT              # the gate of pytest --token-budget, on two files
    tokenbudget comment REPORT                    # the pull request comment (GitHub Actions)

Reads our cassettes, vcrpy cassettes (any serializer layout) and HAR files. A well-formed file
with no priced turn (not a recording, no Anthropic API traffic, no billed turn) is listed in a
note, not as an error.

    tokenbudget advise cassettes/ -v              # what each lever would save (pytest_tokenbudget.levers)
    tokenbudget diff old.json new.json            # before/after, per test and lever

``diff`` exits 0 when nothing costs more in NEW, 1 when a test (or the total) does, 2 when a file
cannot be read.

Exit status: 0 when every cassette was read and priced, 1 when some could not be (they are
listed with the reason; the rest are still reported), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from . import _ci
from ._atomic import write_atomic
from ._settings import add_cli_options
from .cassette import Cassette, iter_cassette_files, load_cassette
from .errors import TokenBudgetError
from .ledger import Ledger, turns_from
from .pricing import Pricer
from .reports import (
    ReportError,
    ReportNote,
    TestEntry,
    build_entry,
    build_report,
    render_html,
    render_text,
    report_json,
)

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
    advise = commands.add_parser("advise", help="what each lever (caching, batch, model tier, context) would save")
    advise.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="cassette files or folders of them")
    advise.add_argument("--json", action="store_true", help="print the JSON report (with levers) instead")
    add_cli_options(advise, advisor=True)
    advise.add_argument("-v", "--verbose", action="store_true", help="add each lever's assumption and change")
    diff = commands.add_parser("diff", help="compare two JSON reports or baselines, per test and lever")
    diff.add_argument("old", type=Path, metavar="OLD", help="the JSON report or baseline before")
    diff.add_argument("new", type=Path, metavar="NEW", help="the JSON report or baseline after")
    diff.add_argument("--json", action="store_true", help="print the comparison as JSON")
    diff.add_argument("--md", type=Path, metavar="PATH", help="also write the comparison as Markdown")
    return parser


def _no_turn_note(cassette: Cassette, ledger: Ledger) -> str | None:
    """Why a file read gives no priced turn (``None`` when it gives some)."""
    if cassette.note is not None or ledger.turns:
        return cassette.note
    calls = Counter(f"{i.endpoint} {i.status}" for i in cassette.interactions if i.endpoint != "other")
    return "Anthropic API traffic but no billed turn (" + ", ".join(f"{n} x {k}" for k, n in calls.items()) + ")"


def _read(
    paths: Sequence[Path], pricer: Pricer, advise: Callable[[str, Ledger], TestEntry] | None = None
) -> tuple[list[TestEntry], list[ReportError], list[ReportNote]]:
    """Each cassette's entry, priced; what could not be read, with the reason; files with no turn."""
    entries: list[TestEntry] = []
    errors: list[ReportError] = []
    notes: list[ReportNote] = []
    for path in iter_cassette_files(paths):
        name = _relative(path)
        try:
            cassette = load_cassette(path, skip_unknown=True)
            ledger = turns_from(cassette.interactions, source=name)
        except FileNotFoundError:
            errors.append(ReportError(name, f"tokenbudget: no such file: {name}"))
            continue
        except TokenBudgetError as error:
            errors.append(ReportError(name, error.render()))
            continue
        note = _no_turn_note(cassette, ledger)
        if note is not None:
            notes.append(ReportNote(name, note))
            continue
        entries.append(advise(name, ledger) if advise is not None else build_entry(name, name, ledger, pricer))
    return entries, errors, notes


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "gate":
        return _ci.run_gate(args)
    if args.command == "comment":
        return _ci.run_comment(args)
    if args.command == "diff":
        from .reports.diff import run_diff

        return run_diff(args.old, args.new, as_json=args.json, markdown=args.md)
    try:
        pricer = Pricer(override_files=args.prices, timestamp_policy=args.price_at)
    except TokenBudgetError as error:
        print(error.render(), file=sys.stderr)
        return 2
    # Both commands advise (so their JSON is pytest's); ``advise`` takes the advisor's options
    # and shows each lever's assumption and change.
    from .reports.levers_view import advised_entry

    batchable = getattr(args, "batchable", [])
    cheap_model = getattr(args, "cheap_model", None)

    def advise(name: str, ledger: Ledger) -> TestEntry:
        return advised_entry(name, ledger, pricer, batchable=batchable, cheap_model=cheap_model)

    entries, unreadable, notes = _read(args.paths, pricer, advise)
    report = build_report(entries, pricer.source.as_dict(), unreadable, notes)
    if args.json:
        json.dump(report_json(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from .reports._width import terminal_width

        lines = render_text(
            report,
            verbose=args.verbose,
            lever_details=args.verbose or args.command == "advise",
            width=terminal_width(),
        )
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
