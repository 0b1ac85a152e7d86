"""How often the cache model predicts what the API did, on a folder of real recordings.

Usage::

    python benchmarks/cache_agreement.py [DIR ...] [--json]

``DIR`` defaults to ``../shared/real-cassettes`` (next to the repository). Every cassette the
package reads is loaded into its ledger and analysed (``pytest_tokenbudget.analysis.analyze``).
A turn *uses caching* when its request has a breakpoint (explicit, automatic or the API's own
after a server tool result) or its usage reports a cache read or write. On such turns the
prediction *agrees* when the predicted cache reads and writes equal the recorded ones (exactly,
or within 1% or 8 tokens where the prediction rests on an estimated token count, which first
writes do: the few tokens the API counts after the last block are learnt from that very turn).

Prints one line per disagreeing turn, then the totals: turns that use caching, agreements,
verdicts, and for first writes (a write with no read) the largest error against what the API
wrote. Exit status 0; files that cannot be read are listed and counted, not fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pytest_tokenbudget.analysis import analyze
from pytest_tokenbudget.cassette import iter_cassette_files, load_cassette
from pytest_tokenbudget.errors import TokenBudgetError
from pytest_tokenbudget.ledger import turns_from

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "real-cassettes"


@dataclass
class Agreement:
    """The measurement over a set of recordings."""

    files: int = 0
    unreadable: list[str] = field(default_factory=list)
    turns: int = 0
    caching_turns: int = 0
    agreeing: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    disagreements: list[str] = field(default_factory=list)
    first_writes: int = 0
    first_write_max_error: int = 0
    first_write_max_error_pct: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "unreadable": self.unreadable,
            "turns": self.turns,
            "caching_turns": self.caching_turns,
            "agreeing": self.agreeing,
            "verdicts": dict(sorted(self.verdicts.items())),
            "disagreements": self.disagreements,
            "first_writes": self.first_writes,
            "first_write_max_error": self.first_write_max_error,
            "first_write_max_error_pct": round(self.first_write_max_error_pct, 3),
        }


def measure(folders: list[Path]) -> Agreement:
    """Analyse every recording under ``folders`` and count the agreement (see the module docstring)."""
    out = Agreement()
    for path in iter_cassette_files(folders):
        out.files += 1
        try:
            turns = turns_from(load_cassette(path).interactions)
        except (TokenBudgetError, ValueError) as err:
            out.unreadable.append(f"{path}: {str(err).splitlines()[0]}")
            continue
        out.turns += len(turns)
        for turn, result in zip(turns, analyze(turns).turns, strict=True):
            if not (result.breakpoints or turn.cache_read_input_tokens or turn.cache_creation_input_tokens):
                continue
            out.caching_turns += 1
            out.verdicts[result.verdict.value] += 1
            if result.matches_recording:
                out.agreeing += 1
            else:
                predicted = f"{result.predicted_read}/{result.predicted_write}"
                recorded = f"{result.recorded_read}/{result.recorded_write}"
                out.disagreements.append(
                    f"{path.name} turn {result.turn}: {result.verdict.value}, predicted read/write {predicted}, "
                    f"API {recorded}"
                )
            if result.recorded_write and not result.recorded_read and result.predicted_write is not None:
                out.first_writes += 1
                error = abs(result.predicted_write - result.recorded_write)
                out.first_write_max_error = max(out.first_write_max_error, error)
                out.first_write_max_error_pct = max(out.first_write_max_error_pct, 100 * error / result.recorded_write)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[DEFAULT])
    parser.add_argument("--json", action="store_true", help="print the measurement as JSON")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.exists()]
    if missing:
        print(f"no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    result = measure(args.folders)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    for line in result.unreadable:
        print(f"UNREADABLE {line}")
    for line in result.disagreements:
        print(f"DISAGREES  {line}")
    print(f"files {result.files} ({len(result.unreadable)} unreadable), turns {result.turns}")
    print(f"turns that use caching: {result.caching_turns}; prediction agrees with the API on {result.agreeing}")
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(result.verdicts.items())))
    print(
        f"first writes: {result.first_writes}; largest error {result.first_write_max_error} tokens "
        f"({result.first_write_max_error_pct:.2f}%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
