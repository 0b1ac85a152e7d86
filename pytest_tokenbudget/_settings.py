"""Options, declared once: the pytest flags and ini keys, the ``tokenbudget`` CLI's flags, and
the :class:`Settings` they resolve to. Knows nothing of pytest beyond the duck-typed parser and
config objects it is handed.

Each :class:`Option` names its pytest flag (``--token-budget-<name>``), its ini twin (when it has
one) and its CLI flag (``--<name>``, for options the ``tokenbudget`` command shares).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._modes import BASELINE_NAME, PriceAt, RecordMode
from ._suite import GRAMMAR, SuiteBudget, Threshold, ThresholdError, parse_thresholds
from .budgets import Budget, parse_overrides
from .config import Config, load_config

if TYPE_CHECKING:
    import pytest

__all__ = ["OPTIONS", "Option", "Settings", "UsageProblem", "add_cli_options", "add_pytest_options", "resolve"]

_MODES = tuple(mode.value for mode in RecordMode)
_PRICE_AT = tuple(policy.value for policy in PriceAt)


class UsageProblem(Exception):
    """A bad option value; its message is shown as pytest's usage error."""


@dataclass(frozen=True)
class Option:
    """One option.

    Attributes:
        name: the pytest flag is ``--token-budget-<name>`` (``--token-budget`` for ``""``); the
            destination ``token_budget_<name>``.
        help: the flag's help.
        action: argparse action (``store``, ``store_true``, ``append``).
        metavar: shown in help.
        choices: accepted values.
        ini: the ini key, when the option has one.
        ini_help: the ini key's help.
        ini_type: pytest's ini type (``string``, ``bool``, ``linelist``).
        ini_default: the ini key's default.
        cli: the ``tokenbudget`` command's flag, when it shares the option.
        cli_help: its help (default: ``help``).
        cli_default: its default.
    """

    name: str
    help: str
    action: str = "store"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    ini: str | None = None
    ini_help: str = ""
    ini_type: str = "string"
    ini_default: Any = None
    cli: str | None = None
    cli_help: str | None = None
    cli_default: Any = None

    @property
    def flag(self) -> str:
        return f"--token-budget-{self.name}" if self.name else "--token-budget"

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("", "report tokens and cost per test, and judge the run against the baseline.", action="store_true"),
    Option("update", "write the baseline from this run (implies --token-budget).", action="store_true"),
    Option(
        "accept-estimates",
        "with --token-budget-update: also write tests whose usage is estimated (their prompt changed since "
        "recording), marked as estimated in the baseline; without it they are not written.",
        action="store_true",
    ),
    Option(
        "baseline",
        f"the baseline file (default: {BASELINE_NAME} in the rootdir).",
        metavar="PATH",
        ini="token_budget_baseline",
        ini_help=f"baseline file (default {BASELINE_NAME})",
        ini_default="",
    ),
    Option(
        "config",
        "budgets file (default: tokenbudget.yaml, or [tool.tokenbudget]).",
        metavar="PATH",
        ini="token_budget_config",
        ini_help="budgets file (default tokenbudget.yaml or [tool.tokenbudget])",
        ini_default="",
    ),
    Option(
        "record",
        "record mode: none (replay only, default), once, new_episodes, all.",
        metavar="MODE",
        choices=_MODES,
        ini="token_budget_record_mode",
        ini_help="record mode when --token-budget-record is not given",
        ini_default="none",
    ),
    Option(
        "cassette-dir",
        "where cassettes live (default: cassettes/ under the rootdir).",
        metavar="DIR",
        ini="token_budget_cassette_dir",
        ini_help="cassette directory, relative to the rootdir",
        ini_default="cassettes",
    ),
    Option(
        "prices",
        "a price override file (repeatable; later files win).",
        action="append",
        metavar="PATH",
        ini="token_budget_prices",
        ini_help="price override files, one per line",
        ini_type="linelist",
        ini_default=[],
        cli="--prices",
        cli_help="a price override file (repeatable; later files win)",
        cli_default=[],
    ),
    Option(
        "price-at",
        "price turns at today's prices (now, default) or at their recorded time.",
        choices=_PRICE_AT,
        ini="token_budget_price_at",
        ini_help="now (default) or recorded",
        ini_default="now",
        cli="--price-at",
        cli_help="price at today's prices (default) or at each turn's recorded time",
        cli_default="now",
    ),
    Option(
        "suite-fail",
        "fail the session when the suite's totals move past a threshold against the baseline's, over the "
        "same tests: cost:N% or cost:N (USD), tokens:N% or tokens:N, hit_rate:N% (of the baseline's rate) or "
        "hit_rate:N (a drop as a fraction: 0.05 = 5 points); comma-separated or repeatable. "
        "Replaces the ini key and the config file's suite.fail_on.",
        action="append",
        metavar="EXPR",
        ini="token_budget_suite_fail",
        ini_help="suite thresholds against the baseline (as --token-budget-suite-fail), one or more per line",
        ini_type="linelist",
        ini_default=[],
    ),
    Option(
        "threshold",
        "a budget key for every test, over its marker and the config file: KEY=VALUE, e.g. "
        "max_cost_increase=0.2, max_hit_rate_drop=0.1, fail_on_prefix_change=false; comma-separated or repeatable.",
        action="append",
        metavar="KEY=VALUE",
    ),
    Option(
        "secret-env",
        "an environment variable whose value is a secret, whatever its name (a name or a pattern such as "
        "MYCO_*; repeatable): redacted from cassettes, reports and test output like *KEY*, *TOKEN*...",
        action="append",
        metavar="NAME",
        ini="token_budget_secret_env",
        ini_help="environment variables (names or patterns) whose values are secrets, one per line",
        ini_type="linelist",
        ini_default=[],
    ),
    Option(
        "cheap-model",
        "the cheap tier the advisor prices cheap-looking turns at (default: claude-haiku-5-5, the cheapest "
        "current Haiku).",
        metavar="MODEL",
        ini="token_budget_cheap_model",
        ini_help="the advisor's cheap tier (default claude-haiku-5-5)",
        ini_default="",
        cli="--cheap-model",
        cli_help="the cheap tier cheap-looking turns are priced at (default claude-haiku-5-5)",
        cli_default=None,
    ),
    Option(
        "batchable",
        "tests nobody waits on, for the advisor's batch lever: fnmatch patterns on node ids (repeatable); "
        "also @pytest.mark.token_budget(batchable=True).",
        action="append",
        metavar="PATTERN",
        ini="token_budget_batchable",
        ini_help="node-id patterns of batchable tests, one per line",
        ini_type="linelist",
        ini_default=[],
        cli="--batchable",
        cli_help="cassette path patterns (fnmatch) whose calls nobody waits on (repeatable)",
        cli_default=[],
    ),
    Option(
        "json",
        "write the report as JSON (schema: pytest_tokenbudget/schemas/report.schema.json).",
        metavar="PATH",
    ),
    Option(
        "md",
        "write the report as Markdown (also appended to $GITHUB_STEP_SUMMARY when set).",
        metavar="PATH",
    ),
    Option(
        "html",
        "write the report as one self-contained HTML file (charts per test and turn; loads nothing).",
        metavar="PATH",
        ini="token_budget_html",
        ini_help="write the HTML report to this file (relative to the rootdir)",
        ini_default="",
        cli="--html",
        cli_help="also write the report as one self-contained HTML file",
    ),
)
"""Every option; the order is the help's."""

# ini keys without a flag.
_INI_ONLY: tuple[tuple[str, str, str, Any], ...] = (
    ("token_budget_allow_unused", "do not fail tests that leave recordings unplayed", "bool", False),
    (
        "token_budget_allow_unpriced",
        "under --token-budget, let a turn whose model has no price pass (its cost is n/a); off by default",
        "bool",
        False,
    ),
    (
        "token_budget_count_tokens",
        "with an API key, count changed requests' tokens with count_tokens",
        "bool",
        True,
    ),
)


def add_pytest_options(parser: pytest.Parser) -> None:
    """Declare every option in one ``tokenbudget`` group, each flag with its ini twin."""
    group = parser.getgroup("tokenbudget", "token budgets for Claude agents (pytest-tokenbudget)")
    for option in OPTIONS:
        extra: dict[str, Any] = {}
        if option.metavar is not None:
            extra["metavar"] = option.metavar
        if option.choices is not None:
            extra["choices"] = list(option.choices)
        default = False if option.action == "store_true" else None
        help_text = option.help.replace("%", "%%")  # argparse %-formats help
        group.addoption(option.flag, action=option.action, default=default, dest=option.dest, help=help_text, **extra)
    for option in OPTIONS:
        if option.ini is not None:
            parser.addini(option.ini, option.ini_help, type=option.ini_type, default=option.ini_default)  # type: ignore[arg-type]
    for name, help_text, kind, default in _INI_ONLY:
        parser.addini(name, help_text, type=kind, default=default)  # type: ignore[arg-type]


_ADVISOR_CLI = frozenset({"--cheap-model", "--batchable"})


def add_cli_options(parser: argparse.ArgumentParser, *, advisor: bool = False) -> None:
    """Declare the options the ``tokenbudget`` command shares with the plugin (the advisor's
    only on ``tokenbudget advise``)."""
    for option in OPTIONS:
        if option.cli is None or (option.cli in _ADVISOR_CLI and not advisor):
            continue
        extra: dict[str, Any] = {}
        if option.choices is not None:
            extra["choices"] = list(option.choices)
        if option.action != "store_true":
            extra["metavar"] = option.metavar or "FILE"
        parser.add_argument(
            option.cli,
            action=option.action,
            default=option.cli_default,
            help=(option.cli_help or option.help).replace("%", "%%"),  # argparse %-formats help
            **extra,
        )


@dataclass(frozen=True)
class Settings:
    """The resolved options of one run.

    Attributes:
        record_mode: when to record.
        cassette_dir: where cassettes live (absolute).
        allow_unused: do not fail a test that leaves recordings unplayed.
        report: ``--token-budget`` (or a report file) was asked for: report, and judge changed
            prompts against the baseline.
        rootdir: pytest's rootdir, for relative paths in messages.
        price_files: price override files.
        price_at: when turns are priced.
        json_path: where to write the JSON report.
        markdown_path: where to write the Markdown report.
        html_path: where to write the HTML report.
        verbose: per-turn tables.
        update: ``--token-budget-update``: rewrite the baseline from this run.
        baseline_path: the baseline file.
        config: the config file's budgets.
        count_tokens: with a real key, count changed requests with the count_tokens API.
        accept_estimates: ``--token-budget-accept-estimates``: the update writes estimated entries.
        allow_unpriced: a turn whose model has no price does not fail the report's gate.
        partial_files: test files the command line narrowed to some of their tests
            (``file.py::test``): the baseline update prunes nothing in them.
        suite: the suite's budget: the config file's ``suite`` section, its thresholds replaced
            by ``--token-budget-suite-fail`` or the ini key when given.
        secret_env: environment variables (names or patterns) whose values are secrets besides
            those named like credentials.
        cheap_model: the advisor's cheap tier (``None``: its default).
        batchable: node-id patterns of tests nobody waits on (the advisor's batch lever).
    """

    record_mode: RecordMode
    cassette_dir: Path
    allow_unused: bool
    report: bool
    rootdir: Path
    price_files: tuple[str, ...] = ()
    price_at: PriceAt = PriceAt.NOW
    json_path: Path | None = None
    markdown_path: Path | None = None
    html_path: Path | None = None
    verbose: bool = False
    update: bool = False
    baseline_path: Path | None = None
    config: Config = field(default_factory=Config)
    count_tokens: bool = True
    allow_unpriced: bool = False
    accept_estimates: bool = False
    partial_files: frozenset[str] = frozenset()
    suite: SuiteBudget = field(default_factory=SuiteBudget)
    overrides: Budget = field(default_factory=Budget)
    """``--token-budget-threshold``: budget keys over every test's marker and config file."""
    secret_env: tuple[str, ...] = ()
    cheap_model: str | None = None
    batchable: tuple[str, ...] = ()

    def display_path(self, path: Path) -> str:
        """``path`` relative to the rootdir when it is under it."""
        try:
            return str(path.relative_to(self.rootdir))
        except ValueError:
            return str(path)


def _record_mode(config: pytest.Config) -> RecordMode:
    # Precedence: --token-budget-record, then pytest-recording's --record-mode when it was given
    # on the command line (we do not redefine it), then the ini key, then "none".
    value = config.getoption("token_budget_record")
    if value is None and _explicit_record_mode(config.invocation_params.args):
        value = config.getoption("record_mode", None)
        value = "all" if value == "rewrite" else value
    if value is None:
        value = str(config.getini("token_budget_record_mode")).strip() or "none"
    try:
        return RecordMode(value)
    except ValueError:
        raise UsageProblem(
            f"tokenbudget: token_budget_record_mode = {value!r} is not a record mode; use one of {', '.join(_MODES)}"
        ) from None


def _explicit_record_mode(args: Sequence[str]) -> bool:
    return any(arg == "--record-mode" or arg.startswith("--record-mode=") for arg in args)


def _suite_thresholds(config: pytest.Config) -> tuple[Threshold, ...] | None:
    """``--token-budget-suite-fail`` (each comma-separated), else the ini key; ``None`` when neither is given."""
    given: list[str] | None = config.getoption("token_budget_suite_fail")
    where = "--token-budget-suite-fail"
    if not given:
        given, where = list(config.getini("token_budget_suite_fail")), "ini token_budget_suite_fail"
    if not given:
        return None
    thresholds: list[Threshold] = []
    for expression in given:
        try:
            thresholds.extend(parse_thresholds(expression))
        except ThresholdError as error:
            raise UsageProblem(f"tokenbudget: {where}: {error}\n  accepted: {GRAMMAR}") from None
    return tuple(thresholds)


def resolve(config: pytest.Config) -> Settings:
    """The run's settings from pytest's options, ini keys and the budgets file.

    Raises:
        UsageProblem: a bad option value.
        ConfigError: the budgets file is invalid.
    """
    rootdir = Path(config.rootpath)
    directory = config.getoption("token_budget_cassette_dir") or str(config.getini("token_budget_cassette_dir"))
    price_at = config.getoption("token_budget_price_at") or str(config.getini("token_budget_price_at")).strip()
    if price_at not in _PRICE_AT:
        raise UsageProblem(f"tokenbudget: token_budget_price_at = {price_at!r}; use now or recorded")
    thresholds = _suite_thresholds(config)
    budgets = load_config(
        rootdir, config.getoption("token_budget_config") or str(config.getini("token_budget_config")) or None
    )
    json_path = config.getoption("token_budget_json")
    md_path = config.getoption("token_budget_md")
    # The flag's path is relative to the working directory (like --token-budget-json), the ini
    # key's to the rootdir (like every other ini path).
    html_flag = config.getoption("token_budget_html")
    html_ini = str(config.getini("token_budget_html")).strip()
    html_path = Path(html_flag) if html_flag else (rootdir / html_ini if html_ini else None)
    update = bool(config.getoption("token_budget_update"))
    prices = config.getoption("token_budget_prices") or config.getini("token_budget_prices") or list(budgets.prices)
    baseline = (
        config.getoption("token_budget_baseline")
        or str(config.getini("token_budget_baseline"))
        or budgets.baseline
        or BASELINE_NAME
    )
    return Settings(
        record_mode=_record_mode(config),
        cassette_dir=(rootdir / directory).resolve(),
        allow_unused=bool(config.getini("token_budget_allow_unused")),
        report=bool(config.getoption("token_budget")) or update or bool(json_path) or bool(md_path) or bool(html_path),
        rootdir=rootdir,
        price_files=tuple(str(rootdir / p) for p in prices),
        price_at=PriceAt(price_at),
        json_path=Path(json_path) if json_path else None,
        markdown_path=Path(md_path) if md_path else None,
        html_path=html_path,
        verbose=config.get_verbosity() > 0,
        update=update,
        baseline_path=rootdir / baseline,
        config=budgets,
        count_tokens=bool(config.getini("token_budget_count_tokens")),
        allow_unpriced=bool(config.getini("token_budget_allow_unpriced")),
        accept_estimates=bool(config.getoption("token_budget_accept_estimates")),
        partial_files=_partial_files(config.args, Path(config.invocation_params.dir), rootdir),
        suite=budgets.suite if thresholds is None else replace(budgets.suite, fail_on=thresholds),
        overrides=parse_overrides(config.getoption("token_budget_threshold") or [], where="--token-budget-threshold"),
        secret_env=tuple(
            name.strip()
            for name in config.getoption("token_budget_secret_env") or config.getini("token_budget_secret_env")
            if name.strip()
        ),
        cheap_model=config.getoption("token_budget_cheap_model")
        or str(config.getini("token_budget_cheap_model"))
        or None,
        batchable=tuple(config.getoption("token_budget_batchable") or config.getini("token_budget_batchable")),
    )


def _partial_files(args: Sequence[str], invocation_dir: Path, rootdir: Path) -> frozenset[str]:
    """Files named with a test selector (``path::test``) on the command line, rootdir-relative."""
    files = set()
    for arg in args:
        if "::" not in arg:
            continue
        path = (invocation_dir / arg.split("::", 1)[0]).resolve()
        try:
            files.add(path.relative_to(rootdir.resolve()).as_posix())
        except ValueError:
            continue
    return frozenset(files)
