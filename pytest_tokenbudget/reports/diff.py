"""``tokenbudget diff OLD NEW``: two JSON reports (or baselines) side by side, per test and lever by
lever: what changed in tokens, USD and cache hit rate, and which predicted savings were bought.

A JSON report (``--token-budget-json``, ``tokenbudget report --json``, ``tokenbudget advise
--json``) carries each test's levers; a baseline (``tokenbudget-baseline.json``) carries only
totals, so against a baseline the lever columns are empty.

Exit status (for scripts): 0 when no test and not the total costs more in NEW than in OLD; 1 when
one does (the tests are named); 2 when a file cannot be read or is neither a report nor a baseline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..baseline import load_baseline
from ..errors import ConfigError
from ..levers import LeverKind

__all__ = ["DiffSide", "ReportDiff", "TestDiff", "diff_json", "diff_reports", "load_side", "render_diff_markdown"]
__all__ += ["render_diff_text", "run_diff"]

# A lever counts as pulled when NEW predicts at most this share of what OLD predicted.
_PULLED = Decimal("0.5")


@dataclass(frozen=True)
class DiffSide:
    """One test's numbers in one file.

    Attributes:
        total_tokens: every input and output token.
        cost_usd: its cost (``None``: not priced).
        cache_hit_rate: cache reads over all input tokens.
        levers: predicted saving in USD per lever (empty for a baseline).
    """

    total_tokens: int
    cost_usd: Decimal | None
    cache_hit_rate: float
    levers: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class TestDiff:
    """One test in OLD and NEW (``None`` where it is absent)."""

    __test__ = False  # not a pytest test class

    id: str
    old: DiffSide | None
    new: DiffSide | None

    @property
    def cost_delta(self) -> Decimal | None:
        """NEW cost less OLD cost."""
        if self.old is None or self.new is None or self.old.cost_usd is None or self.new.cost_usd is None:
            return None
        return self.new.cost_usd - self.old.cost_usd

    @property
    def costs_more(self) -> bool:
        """NEW costs more than OLD."""
        delta = self.cost_delta
        return delta is not None and delta > 0

    def pulled(self) -> list[str]:
        """Levers OLD predicted a saving for and NEW no longer does (or half as much at most)."""
        if self.old is None or self.new is None:
            return []
        out = []
        for kind in LeverKind:
            before = self.old.levers.get(kind.value, Decimal(0))
            after = self.new.levers.get(kind.value, Decimal(0))
            if before > 0 and after <= before * _PULLED:
                out.append(kind.value)
        return out


@dataclass(frozen=True)
class ReportDiff:
    """The whole comparison."""

    old_path: str
    new_path: str
    old_kind: str
    new_kind: str
    tests: tuple[TestDiff, ...]

    def totals(self) -> tuple[DiffSide, DiffSide]:
        """OLD's and NEW's sums over the tests both files have."""
        both = [t for t in self.tests if t.old is not None and t.new is not None]
        return _sum([t.old for t in both if t.old]), _sum([t.new for t in both if t.new])

    @property
    def costs_more(self) -> list[str]:
        """Tests (and ``total``) that cost more in NEW."""
        out = [t.id for t in self.tests if t.costs_more]
        old, new = self.totals()
        if old.cost_usd is not None and new.cost_usd is not None and new.cost_usd > old.cost_usd:
            out.append("total")
        return out

    @property
    def exit_status(self) -> int:
        """0: nothing costs more; 1: a test or the total costs more."""
        return 1 if self.costs_more else 0


def _sum(sides: Sequence[DiffSide]) -> DiffSide:
    tokens = sum(s.total_tokens for s in sides)
    costs = [s.cost_usd for s in sides]
    cost = None if any(c is None for c in costs) else sum((c for c in costs if c is not None), Decimal(0))
    levers: dict[str, Decimal] = {}
    for side in sides:
        for kind, value in side.levers.items():
            levers[kind] = levers.get(kind, Decimal(0)) + value
    # The hit rate of a sum is not the mean of hit rates: weight by tokens (an approximation,
    # since output tokens are in total_tokens; the files do not always say input alone).
    weight = sum(s.total_tokens for s in sides)
    rate = sum(s.cache_hit_rate * s.total_tokens for s in sides) / weight if weight else 0.0
    return DiffSide(tokens, cost, rate, levers)


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def load_side(path: Path) -> tuple[str, dict[str, DiffSide]]:
    """Read a JSON report or a baseline: ``("report"|"baseline", {test: numbers})``.

    Raises:
        ConfigError: the file cannot be read, or is neither (file, why, fix).
    """
    fix = "pass two files written by --token-budget-json, tokenbudget report/advise --json, or a baseline"
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(path), why="it does not exist", fix=fix) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError("cannot read the file", file=str(path), why=f"not valid JSON: {error}", fix=fix) from None
    if not isinstance(data, Mapping):
        raise ConfigError("not a report or a baseline", file=str(path), why="the top level is not an object", fix=fix)
    tests = data.get("tests")
    if isinstance(tests, list):  # a JSON report
        sides: dict[str, DiffSide] = {}
        for position, test in enumerate(tests):
            try:
                totals = test["totals"]
                levers: dict[str, Decimal] = {}
                for lever in test.get("levers") or ():
                    levers[lever["lever"]] = levers.get(lever["lever"], Decimal(0)) + Decimal(str(lever["saving_usd"]))
                sides[str(test["id"])] = DiffSide(
                    int(totals["total_input_tokens"]) + int(totals["output_tokens"]),
                    _decimal(totals.get("cost_usd")),
                    float(totals["cache_hit_rate"]),
                    levers,
                )
            except (KeyError, TypeError, ValueError) as error:
                raise ConfigError(
                    "the report is invalid", file=str(path), why=f"tests[{position}]: missing or bad {error}", fix=fix
                ) from None
        return "report", sides
    if isinstance(tests, Mapping):  # a baseline
        entries = load_baseline(path) or {}
        return "baseline", {
            test: DiffSide(e.total_input_tokens + e.output_tokens, e.cost_usd, e.cache_hit_rate)
            for test, e in entries.items()
        }
    raise ConfigError("not a report or a baseline", file=str(path), why='no "tests" list or object', fix=fix)


def diff_reports(old: Path, new: Path) -> ReportDiff:
    """Compare two files (see :func:`load_side`), test by test (in OLD's order, then NEW's)."""
    old_kind, old_sides = load_side(old)
    new_kind, new_sides = load_side(new)
    ids = list(old_sides) + [t for t in new_sides if t not in old_sides]
    return ReportDiff(
        str(old),
        str(new),
        old_kind,
        new_kind,
        tuple(TestDiff(t, old_sides.get(t), new_sides.get(t)) for t in ids),
    )


# ----------------------------------------------------------------------------------------------
# rendering


def _usd(value: Decimal | None) -> str:
    return "n/a" if value is None else f"${value:,.6f}"


def _signed_usd(value: Decimal | None) -> str:
    return "n/a" if value is None else ("+" if value >= 0 else "-") + f"${abs(value):,.6f}"


def _signed(value: int) -> str:
    return f"{value:+,}"


def _pct_points(old: float, new: float) -> str:
    return f"{100 * old:.1f}% -> {100 * new:.1f}% ({100 * (new - old):+.1f} pts)"


def _lever_rows(test: TestDiff) -> list[tuple[str, Decimal, Decimal]]:
    if test.old is None or test.new is None:
        return []
    rows = []
    for kind in LeverKind:
        before = test.old.levers.get(kind.value, Decimal(0))
        after = test.new.levers.get(kind.value, Decimal(0))
        if before or after:
            rows.append((kind.value, before, after))
    return rows


def _test_lines(test: TestDiff) -> list[str]:
    if test.old is None:
        return [f"{test.id}: only in NEW ({_usd(test.new.cost_usd if test.new else None)})"]
    if test.new is None:
        return [f"{test.id}: only in OLD ({_usd(test.old.cost_usd)})"]
    old, new = test.old, test.new
    lines = [
        f"{test.id}:",
        f"  cost      {_usd(old.cost_usd)} -> {_usd(new.cost_usd)} ({_signed_usd(test.cost_delta)})",
        f"  tokens    {old.total_tokens:,} -> {new.total_tokens:,} ({_signed(new.total_tokens - old.total_tokens)})",
        f"  hit rate  {_pct_points(old.cache_hit_rate, new.cache_hit_rate)}",
    ]
    pulled = test.pulled()
    for kind, before, after in _lever_rows(test):
        note = ""
        if kind in pulled and test.cost_delta is not None:
            bought = -test.cost_delta
            share = f", {100 * bought / before:.0f}% of the prediction" if before else ""
            note = f"  pulled: the run saved {_usd(bought)}{share}"
        lines.append(f"  {kind:<10} predicted saving {_usd(before)} -> {_usd(after)}{note}")
    return lines


def render_diff_text(diff: ReportDiff) -> list[str]:
    """The comparison as terminal lines."""
    lines = [f"OLD {diff.old_path} ({diff.old_kind})", f"NEW {diff.new_path} ({diff.new_kind})", ""]
    for test in diff.tests:
        lines.extend(_test_lines(test))
    old, new = diff.totals()
    delta = None if old.cost_usd is None or new.cost_usd is None else new.cost_usd - old.cost_usd
    lines.append("")
    lines.append(
        f"total (tests in both): cost {_usd(old.cost_usd)} -> {_usd(new.cost_usd)} ({_signed_usd(delta)}), "
        f"tokens {old.total_tokens:,} -> {new.total_tokens:,} ({_signed(new.total_tokens - old.total_tokens)})"
    )
    more = diff.costs_more
    lines.append(f"costs more in NEW: {', '.join(more)}" if more else "nothing costs more in NEW")
    return lines


def render_diff_markdown(diff: ReportDiff) -> str:
    """The comparison as GitHub-flavoured Markdown."""
    out = ["## Token budget: before and after", "", f"OLD `{diff.old_path}` ({diff.old_kind}), NEW `{diff.new_path}` "]
    out[-1] += f"({diff.new_kind})"
    out += ["", "| test | cost OLD | cost NEW | change | tokens change | hit rate | levers pulled |"]
    out.append("|---|--:|--:|--:|--:|---|---|")
    for test in diff.tests:
        if test.old is None or test.new is None:
            where = "NEW" if test.old is None else "OLD"
            side = test.new or test.old
            out.append(f"| `{test.id}` | | | only in {where} ({_usd(side.cost_usd if side else None)}) | | | |")
            continue
        pulled = ", ".join(
            f"{kind} ({_usd(before)} predicted)" for kind, before, _after in _lever_rows(test) if kind in test.pulled()
        )
        out.append(
            f"| `{test.id}` | {_usd(test.old.cost_usd)} | {_usd(test.new.cost_usd)} | {_signed_usd(test.cost_delta)} | "
            f"{_signed(test.new.total_tokens - test.old.total_tokens)} | "
            f"{_pct_points(test.old.cache_hit_rate, test.new.cache_hit_rate)} | {pulled} |"
        )
    more = diff.costs_more
    out += ["", f"Costs more in NEW: {', '.join(f'`{t}`' for t in more)}." if more else "Nothing costs more in NEW."]
    return "\n".join(out) + "\n"


def _side_json(side: DiffSide | None) -> dict[str, Any] | None:
    if side is None:
        return None
    return {
        "total_tokens": side.total_tokens,
        "cost_usd": None if side.cost_usd is None else float(side.cost_usd),
        "cache_hit_rate": round(side.cache_hit_rate, 6),
    }


def diff_json(diff: ReportDiff) -> dict[str, Any]:
    """The comparison as JSON: per test, OLD and NEW numbers, deltas, and each lever's predicted
    saving in both with whether it was pulled."""
    tests = []
    for test in diff.tests:
        delta = test.cost_delta
        item: dict[str, Any] = {
            "id": test.id,
            "old": _side_json(test.old),
            "new": _side_json(test.new),
            "cost_delta_usd": None if delta is None else float(delta),
        }
        if test.old is not None and test.new is not None:
            item["tokens_delta"] = test.new.total_tokens - test.old.total_tokens
            item["cache_hit_rate_delta"] = round(test.new.cache_hit_rate - test.old.cache_hit_rate, 6)
        pulled = test.pulled()
        item["levers"] = [
            {"lever": kind, "old_saving_usd": float(before), "new_saving_usd": float(after), "pulled": kind in pulled}
            for kind, before, after in _lever_rows(test)
        ]
        tests.append(item)
    old, new = diff.totals()
    return {
        "old": {"path": diff.old_path, "kind": diff.old_kind},
        "new": {"path": diff.new_path, "kind": diff.new_kind},
        "tests": tests,
        "totals": {"old": _side_json(old), "new": _side_json(new)},
        "costs_more": diff.costs_more,
        "exit_status": diff.exit_status,
    }


def run_diff(old: Path, new: Path, *, as_json: bool = False, markdown: Path | None = None) -> int:
    """``tokenbudget diff``: print the comparison; the exit status (see the module docstring)."""
    import sys

    from .._atomic import write_atomic
    from ..errors import TokenBudgetError

    try:
        diff = diff_reports(old, new)
    except TokenBudgetError as error:
        print(error.render(), file=sys.stderr)
        return 2
    if as_json:
        json.dump(diff_json(diff), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(render_diff_text(diff)))
    if markdown is not None:
        write_atomic(markdown, render_diff_markdown(diff).encode("utf-8"))
    return diff.exit_status
