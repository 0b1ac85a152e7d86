"""``tokenbudget``: the report for any cassette, without running a test.

    tokenbudget report cassettes/                 # a table, like pytest --token-budget
    tokenbudget report a.yaml b.yaml --json       # the JSON report (schemas/report.schema.json)
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
from collections.abc import Callable, Sequence
from pathlib import Path

from ._settings import add_cli_options
from .cassette import iter_cassette_files, load_cassette
from .errors import TokenBudgetError
from .ledger import Ledger, turns_from
from .pricing import Pricer
from .reports import ReportError, TestEntry, build_entry, build_report, render_text, report_json

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


def _read(
    paths: Sequence[Path], pricer: Pricer, advise: Callable[[str, Ledger], TestEntry] | None = None
) -> tuple[list[TestEntry], list[ReportError]]:
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
        entries.append(advise(name, ledger) if advise is not None else build_entry(name, name, ledger, pricer))
    return entries, errors


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
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

    entries, unreadable = _read(args.paths, pricer, advise)
    report = build_report(entries, pricer.source.as_dict(), unreadable)
    if args.json:
        json.dump(report_json(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        lines = render_text(report, verbose=args.verbose, lever_details=args.verbose or args.command == "advise")
        print("\n".join(lines) if lines else "no Claude API turns found")
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
