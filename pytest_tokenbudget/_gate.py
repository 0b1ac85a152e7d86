"""The gate's verdict lines, for a pytest run and for two files (``tokenbudget gate BASELINE REPORT``).

pytest judges each test as it runs (:func:`pytest_tokenbudget.evaluate.evaluate`); the same
comparison (:func:`pytest_tokenbudget.baseline.compare`), thresholds and budget checks judge a
JSON report against a baseline file here, so a CI without pytest's session (GitLab, Buildkite,
pre-commit) gets the same verdict, the same lines and the same exit status.

Knows nothing of pytest or argv.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from .baseline import BaselineEntry, GateResult, compare, load_baseline
from .budgets import Budget, check_budget
from .config import load_config
from .errors import ConfigError
from .evaluate import gate_notes, rebuild_cost
from .prefix import Difference
from .pricing import Pricer
from .record import accept_command
from .reports import GateKind, GateLine, validate_report

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FileVerdict",
    "Judged",
    "judge_files",
    "read_report",
    "verdict_lines",
]

# pytest's exit codes, which the gate shares: OK, TESTS_FAILED, USAGE_ERROR.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 4


@dataclass(frozen=True)
class Judged:
    """One test with API turns, as the gate saw it."""

    test: str
    gate: GateResult
    notes: Sequence[str] = ()
    breaches: Sequence[str] = ()
    """Budget limits broken (``max_cost_usd``...), which fail the test in pytest itself."""


def verdict_lines(baseline: Mapping[str, BaselineEntry] | None, judged: Iterable[Judged], where: str) -> list[GateLine]:
    """The gate's verdict, test by test (``where``: the baseline as messages name it)."""
    judged = list(judged)
    lines: list[GateLine] = []
    if baseline is None:
        if judged:
            lines.append(GateLine(GateKind.INFO, f"no baseline at {where}: create it with --token-budget-update"))
        lines.extend(GateLine(GateKind.FAIL, breach, item.test) for item in judged for breach in item.breaches)
        return lines
    for item in sorted(judged, key=lambda j: j.test):
        if item.test not in baseline:
            lines.append(
                GateLine(GateKind.NOT_IN_BASELINE, "not in the baseline (add it with --token-budget-update)", item.test)
            )
        lines.extend(GateLine(GateKind.FAIL, breach, item.test) for breach in item.breaches)
        lines.extend(GateLine(GateKind.FAIL, failure, item.test) for failure in item.gate.failures)
        lines.extend(GateLine(GateKind.NOTE, note, item.test) for note in item.notes)
    held = sorted(test for test, entry in baseline.items() if entry.estimated)
    if held:
        lines.append(
            GateLine(
                GateKind.INFO,
                f"the baseline holds estimates, not measurements, for {len(held)} test(s): {', '.join(held[:5])}"
                + (f" and {len(held) - 5} more" if len(held) > 5 else "")
                + f"; measure them with a key: {accept_command(held, measure=True)}",
            )
        )
    return lines


@dataclass(frozen=True)
class FileVerdict:
    """What ``tokenbudget gate`` found: its lines and its exit status."""

    lines: list[GateLine]
    checked: int

    @property
    def failed(self) -> bool:
        return any(line.kind is GateKind.FAIL for line in self.lines)

    @property
    def exit_status(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK


def read_report(path: Path) -> dict[str, Any]:
    """The JSON report, validated against its schema.

    Raises:
        ConfigError: it does not exist, is not JSON, or breaks the schema.
    """
    import jsonschema

    fix = "pass the file pytest --token-budget --token-budget-json PATH wrote"
    try:
        document = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError("the token budget report does not exist", file=str(path), fix=fix) from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(
            "the token budget report cannot be read", file=str(path), why=f"not valid JSON: {err}", fix=fix
        ) from None
    try:
        validate_report(document)
    except jsonschema.ValidationError as err:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path) or "$"
        raise ConfigError(
            "the token budget report is invalid", file=str(path), why=f"{where}: {err.message}", fix=fix
        ) from None
    return dict(document)


def _first_change(data: Mapping[str, Any] | None) -> tuple[int, Difference] | None:
    if not data:
        return None
    difference = Difference(
        str(data["path"]), data.get("offset"), str(data["before"]), str(data["after"]), str(data["kind"])
    )
    return int(data["turn"]), difference


def judge_files(
    baseline_path: Path,
    report_path: Path,
    *,
    pricer: Pricer,
    overrides: Budget | None = None,
    config_file: str | None = None,
) -> FileVerdict:
    """Judge a JSON report against a baseline file with the rules of ``pytest --token-budget``.

    Each test's thresholds are, in order: ``overrides`` (the command line), the budget the run
    recorded in the report (its marker and config file), else the config file's (``config_file``,
    or ``tokenbudget.yaml``/``pyproject.toml`` beside the baseline) for its node id.

    Raises:
        ConfigError: the baseline, the report or the config file cannot be read.
    """
    baseline = load_baseline(baseline_path)
    document = read_report(report_path)
    config = load_config(baseline_path.resolve().parent, config_file)
    judged: list[Judged] = []
    for test in document["tests"]:
        if not test.get("turns"):
            continue
        test_id = str(test["id"])
        where = f"{report_path}: tests[{test_id!r}].budget"
        recorded = Budget.from_mapping(test["budget"], where=where) if "budget" in test else None
        budget = (overrides or Budget()).over(recorded if recorded is not None else config.budget_for(test_id))
        current = BaselineEntry.from_json(test["baseline"]) if "baseline" in test else None
        change = _first_change(test.get("first_change"))
        gate = GateResult()
        base = (baseline or {}).get(test_id)
        if current is not None and base is not None:
            gate = compare(
                current,
                base,
                budget,
                first_change=change,
                rebuild_cost=lambda model, tokens: rebuild_cost(pricer, model, tokens),
            )
        judged.append(Judged(test_id, gate, gate_notes(gate, change), _breaches(test, budget, current)))
    return FileVerdict(verdict_lines(baseline, judged, str(baseline_path)), len(judged))


def _breaches(test: Mapping[str, Any], budget: Budget, current: BaselineEntry | None) -> list[str]:
    """The budget's limits against the report's totals (``prefix_stable`` needs the requests: not judged here)."""
    totals = test["totals"]
    cost = totals.get("cost_usd")
    return check_budget(
        budget,
        turns=int(totals["turns"]),
        total_input_tokens=int(totals["total_input_tokens"]),
        output_tokens=int(totals["output_tokens"]),
        cost_usd=Decimal(str(cost)) if cost is not None else None,
        cache_hit_rate=float(totals["cache_hit_rate"]),
        prefix_breaks=[],
        estimated=current.estimated if current is not None else False,
    )
