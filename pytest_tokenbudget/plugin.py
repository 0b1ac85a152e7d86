"""pytest hooks, options and fixtures. Thin: each hook reads config and calls one core function."""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._run import (
    Evaluation,
    RunState,
    Settings,
    TestResult,
    cassette_path,
    evaluate,
    open_recorder,
    placeholder_key,
    replays_only,
)
from .baseline import BASELINE_NAME, load_baseline
from .budgets import BUDGET_KEYS, Budget
from .config import Config, load_config
from .errors import ReplayInterrupt, TokenBudgetError
from .ledger import Ledger, LiveLedger
from .record import Recorder, RecordMode

if TYPE_CHECKING:
    from .emulator import AnthropicEmulator

_STATE = pytest.StashKey[RunState]()
_RECORDER = pytest.StashKey[Recorder]()
_BODY_PASSED = pytest.StashKey[bool]()
_EVALUATION = pytest.StashKey[Evaluation]()

_MODES = [mode.value for mode in RecordMode]
_MARKER_KEYS = (*BUDGET_KEYS, "record", "cassette")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options: one ``tokenbudget`` group, each flag with an ini twin."""
    group = parser.getgroup("tokenbudget", "token budgets for Claude agents (pytest-tokenbudget)")
    group.addoption(
        "--token-budget",
        action="store_true",
        default=False,
        dest="token_budget",
        help="report tokens and cost per test, and judge the run against the baseline.",
    )
    group.addoption(
        "--token-budget-update",
        action="store_true",
        default=False,
        dest="token_budget_update",
        help="write the baseline from this run (implies --token-budget).",
    )
    group.addoption(
        "--token-budget-baseline",
        action="store",
        default=None,
        dest="token_budget_baseline",
        metavar="PATH",
        help=f"the baseline file (default: {BASELINE_NAME} in the rootdir).",
    )
    group.addoption(
        "--token-budget-config",
        action="store",
        default=None,
        dest="token_budget_config",
        metavar="PATH",
        help="budgets file (default: tokenbudget.yaml, or [tool.tokenbudget]).",
    )
    group.addoption(
        "--token-budget-record",
        action="store",
        default=None,
        dest="token_budget_record",
        choices=_MODES,
        metavar="MODE",
        help="record mode: none (replay only, default), once, new_episodes, all.",
    )
    group.addoption(
        "--token-budget-cassette-dir",
        action="store",
        default=None,
        dest="token_budget_cassette_dir",
        metavar="DIR",
        help="where cassettes live (default: cassettes/ under the rootdir).",
    )
    group.addoption(
        "--token-budget-prices",
        action="append",
        default=None,
        dest="token_budget_prices",
        metavar="PATH",
        help="a price override file (repeatable; later files win).",
    )
    group.addoption(
        "--token-budget-price-at",
        action="store",
        default=None,
        dest="token_budget_price_at",
        choices=["now", "recorded"],
        help="price turns at today's prices (now, default) or at their recorded time.",
    )
    group.addoption(
        "--token-budget-json",
        action="store",
        default=None,
        dest="token_budget_json",
        metavar="PATH",
        help="write the report as JSON (schema: pytest_tokenbudget/schemas/report.schema.json).",
    )
    group.addoption(
        "--token-budget-md",
        action="store",
        default=None,
        dest="token_budget_md",
        metavar="PATH",
        help="write the report as Markdown (also appended to $GITHUB_STEP_SUMMARY when set).",
    )
    parser.addini("token_budget_record_mode", "record mode when --token-budget-record is not given", default="none")
    parser.addini("token_budget_cassette_dir", "cassette directory, relative to the rootdir", default="cassettes")
    parser.addini(
        "token_budget_allow_unused", "do not fail tests that leave recordings unplayed", type="bool", default=False
    )
    parser.addini("token_budget_prices", "price override files, one per line", type="linelist", default=[])
    parser.addini("token_budget_price_at", "now (default) or recorded", default="now")
    parser.addini("token_budget_baseline", f"baseline file (default {BASELINE_NAME})", default="")
    parser.addini("token_budget_config", "budgets file (default tokenbudget.yaml or [tool.tokenbudget])", default="")
    parser.addini(
        "token_budget_count_tokens",
        "with an API key, count changed requests' tokens with count_tokens",
        type="bool",
        default=True,
    )


def _record_mode(config: pytest.Config) -> RecordMode:
    # Precedence: --token-budget-record, then pytest-recording's --record-mode when it was given
    # on the command line (we do not redefine it), then the ini key, then "none".
    value = config.getoption("token_budget_record")
    if value is None and _explicit_record_mode(config):
        value = config.getoption("record_mode", None)
        value = "all" if value == "rewrite" else value
    if value is None:
        value = str(config.getini("token_budget_record_mode")).strip() or "none"
    try:
        return RecordMode(value)
    except ValueError:
        raise pytest.UsageError(
            f"tokenbudget: token_budget_record_mode = {value!r} is not a record mode; use one of {', '.join(_MODES)}"
        ) from None


def _explicit_record_mode(config: pytest.Config) -> bool:
    return any(arg == "--record-mode" or arg.startswith("--record-mode=") for arg in config.invocation_params.args)


def _settings(config: pytest.Config) -> Settings:
    rootdir = Path(config.rootpath)
    directory = config.getoption("token_budget_cassette_dir") or str(config.getini("token_budget_cassette_dir"))
    price_at = config.getoption("token_budget_price_at") or str(config.getini("token_budget_price_at")).strip()
    if price_at not in ("now", "recorded"):
        raise pytest.UsageError(f"tokenbudget: token_budget_price_at = {price_at!r}; use now or recorded")
    try:
        budgets = load_config(
            rootdir, config.getoption("token_budget_config") or str(config.getini("token_budget_config")) or None
        )
    except TokenBudgetError as error:
        raise pytest.UsageError(error.render()) from None
    json_path = config.getoption("token_budget_json")
    md_path = config.getoption("token_budget_md")
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
        report=bool(config.getoption("token_budget")) or update or bool(json_path) or bool(md_path),
        rootdir=rootdir,
        price_files=tuple(str(rootdir / p) for p in prices),
        price_at=price_at,
        json_path=Path(json_path) if json_path else None,
        markdown_path=Path(md_path) if md_path else None,
        verbose=config.get_verbosity() > 0,
        update=update,
        baseline_path=rootdir / baseline,
        config=budgets,
        count_tokens=bool(config.getini("token_budget_count_tokens")),
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and resolve settings; a bad value or file is a usage error, not a traceback."""
    config.addinivalue_line(
        "markers",
        "token_budget(max_cost_usd=None, max_input_tokens=None, max_output_tokens=None, max_turns=None, "
        "min_cache_hit_rate=None, prefix_stable=None, max_cost_increase=None, ..., record=True, cassette=None): "
        "this test's token budget and recording options (see pytest_tokenbudget.budgets).",
    )
    settings = _settings(config)
    state = RunState(settings)
    try:
        if settings.report:
            state.pricer  # noqa: B018 - load and validate the price files now
            if settings.baseline_path is not None:
                state.baseline = load_baseline(settings.baseline_path)
    except TokenBudgetError as error:
        raise pytest.UsageError(error.render()) from None
    config.stash[_STATE] = state


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check every ``token_budget`` marker before anything runs; note which tests exist."""
    state = config.stash[_STATE]
    for item in items:
        state.collected.add(item.nodeid)
        marker = item.get_closest_marker("token_budget")
        if marker is None:
            continue
        if marker.args:
            raise pytest.UsageError(
                f"tokenbudget: {item.nodeid}: token_budget() takes keywords only, "
                f"got {marker.args!r}; accepted: {', '.join(_MARKER_KEYS)}"
            )
        unknown = sorted(set(marker.kwargs) - set(_MARKER_KEYS))
        if unknown:
            raise pytest.UsageError(
                f"tokenbudget: {item.nodeid}: unknown token_budget keyword(s) "
                f"{', '.join(unknown)}; accepted: {', '.join(_MARKER_KEYS)}"
            )
        try:
            _budget_of(item)
        except TokenBudgetError as error:
            raise pytest.UsageError(error.render()) from None


def _marker_kwargs(item: pytest.Item) -> dict[str, Any]:
    marker = item.get_closest_marker("token_budget")
    return dict(marker.kwargs) if marker is not None else {}


def _budget_of(item: pytest.Item) -> Budget:
    # Precedence: the marker, then the config file's patterns (in order), then its defaults.
    config: Config = item.config.stash[_STATE].settings.config
    options = {k: v for k, v in _marker_kwargs(item).items() if k in BUDGET_KEYS}
    marker = Budget.from_mapping(options, where=f"{item.nodeid}: @pytest.mark.token_budget")
    return marker.over(config.budget_for(item.nodeid))


def _uses_pytest_recording(item: pytest.Item) -> bool:
    return item.get_closest_marker("vcr") is not None and item.config.pluginmanager.hasplugin("recording")


@pytest.fixture(autouse=True)
def _tokenbudget_recorder(request: pytest.FixtureRequest) -> Iterator[Recorder | None]:
    """Record or replay this test's Anthropic traffic (autouse)."""
    item = request.node
    state = item.config.stash[_STATE]
    options = _marker_kwargs(item)
    if options.get("record") is False or _uses_pytest_recording(item):
        yield None
        return
    class_name = item.cls.__name__ if getattr(item, "cls", None) is not None else None
    path = (
        Path(options["cassette"])
        if options.get("cassette")
        else cassette_path(state.settings, Path(item.path), item.name, class_name)
    )
    if not path.is_absolute():
        path = state.settings.cassette_dir / path
    try:
        recorder = open_recorder(state.settings, item.nodeid, path)
    except TokenBudgetError as error:
        error.test = item.nodeid
        pytest.fail(error.render(), pytrace=False)
    item.stash[_RECORDER] = recorder
    with placeholder_key(replays_only(recorder)), recorder.patched():
        yield recorder
    # Recordings are saved when the test's own code passed, budget verdicts aside: a test over
    # budget still recorded what it did.
    if item.stash.get(_BODY_PASSED, False):
        try:
            recorder.save()
        except TokenBudgetError as error:
            pytest.fail(error.render(), pytrace=False)
    evaluation = item.stash.get(_EVALUATION, None)
    if evaluation is None:
        try:
            evaluation = evaluate(state, recorder, _budget_of(item), test_passed=False)
        except TokenBudgetError:
            return
    _record_result(item, state, evaluation.result)


def _record_result(item: pytest.Item, state: RunState, result: TestResult) -> None:
    state.results[item.nodeid] = result
    if not result.ledger.turns:
        return
    totals = result.ledger.totals()
    # JUnit XML: pytest's junitxml plugin writes user_properties of the teardown report.
    for name in ("turns", "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"):
        item.user_properties.append((f"tokenbudget_{name}", getattr(totals, name)))
    item.user_properties.append(("tokenbudget_cache_hit_rate", round(totals.cache_hit_rate, 6)))
    if result.baseline is not None and result.baseline.cost_usd is not None:
        item.user_properties.append(("tokenbudget_cost_usd", str(result.baseline.cost_usd)))


@pytest.fixture
def token_ledger(request: pytest.FixtureRequest, _tokenbudget_recorder: Recorder | None) -> Ledger:
    """The ledger of this test's API turns, live: it includes every call made so far."""
    if _tokenbudget_recorder is not None:
        return LiveLedger(_tokenbudget_recorder.ledger)
    if _uses_pytest_recording(request.node):
        vcr_cassette = request.getfixturevalue("vcr")
        return LiveLedger(lambda: _ledger_of_vcr_cassette(vcr_cassette))
    return Ledger()


def _ledger_of_vcr_cassette(vcr_cassette: Any) -> Ledger:
    from .cassette import _from_vcr_dict
    from .ledger import turns_from

    loaded = getattr(vcr_cassette, "_loaded_count", 0)
    used = [
        _from_vcr_dict(request._to_dict(), response, index)
        for index, (request, response) in enumerate(vcr_cassette.data)
        if vcr_cassette.play_counts[index] > 0 or index >= loaded
    ]
    return turns_from(used, source=str(vcr_cassette._path))


@pytest.fixture
def anthropic_emulator(
    monkeypatch: pytest.MonkeyPatch, _tokenbudget_recorder: Recorder | None
) -> Iterator[AnthropicEmulator]:
    """A local Anthropic API for this test, on 127.0.0.1.

    Sets ``ANTHROPIC_BASE_URL`` to it (and ``ANTHROPIC_API_KEY`` to a dummy when unset), so
    ``anthropic.Anthropic()`` talks to it; requests are recorded with the emulator's clock.
    """
    from .emulator import AnthropicEmulator

    emulator = AnthropicEmulator().start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", os.environ.get("ANTHROPIC_API_KEY") or "emulator-key")
    if _tokenbudget_recorder is not None:
        _tokenbudget_recorder.clock = emulator.clock.now
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After the test body: replay failures it swallowed, unplayed recordings, then budgets and the gate."""
    result = yield
    recorder = item.stash.get(_RECORDER, None)
    if recorder is None:
        return result
    if recorder.errors:
        raise recorder.errors[0]
    unused = recorder.unused if not recorder.allow_unused else []
    if unused:
        first = unused[0]
        raise ReplayInterrupt(
            TokenBudgetError(
                "the test left recordings unplayed",
                file=str(recorder.cassette_path),
                test=item.nodeid,
                why=f"{len(unused)} recorded request(s) were not sent, from interaction {first.index} "
                f"({first.method} {first.path}): the test now makes fewer calls than when recorded",
                fix=f"re-record: {recorder.record_command('all')}, or set token_budget_allow_unused = true",
            )
        )
    item.stash[_BODY_PASSED] = True
    state = item.config.stash[_STATE]
    try:
        evaluation = evaluate(state, recorder, _budget_of(item), test_passed=True)
    except TokenBudgetError as error:
        error.test = item.nodeid
        raise ReplayInterrupt(error) from None
    item.stash[_EVALUATION] = evaluation
    if evaluation.failure is not None:
        evaluation.result.passed = False
        raise ReplayInterrupt(evaluation.failure)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Show our failures as their message, without a traceback (and as a GitHub annotation in CI)."""
    report = yield
    if call.excinfo is not None and isinstance(call.excinfo.value, ReplayInterrupt):
        message = call.excinfo.value.error.render()
        report.longrepr = message
        report.outcome = "failed"
        if os.environ.get("GITHUB_ACTIONS") == "true":
            _annotate(item, message)
    return report


def _annotate(item: pytest.Item, message: str) -> None:
    """A GitHub Actions error annotation on the test's line (shown in the pull request diff)."""
    path, line, _name = item.location
    escaped = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    print(f"\n::error file={path},line={(line or 0) + 1},title=token budget: {item.name}::{escaped}", flush=True)


# --------------------------------------------------------------------------------------------
# session end: the report and the baseline (xdist workers send their results to the controller)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Workers hand their results to the controller; the controller writes the baseline once."""
    config = session.config
    if _STATE not in config.stash:
        return
    state = config.stash[_STATE]
    if _is_worker(config):
        results = [r.to_wire() for r in state.results.values()]
        config.workeroutput["tokenbudget"] = json.dumps(  # type: ignore[attr-defined]
            {"results": results, "collected": sorted(state.collected)}
        )
        return
    if state.settings.update and state.settings.baseline_path is not None:
        from ._reporting import update_baseline

        update_baseline(state)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: merge a finished worker's results."""
    payload = getattr(node, "workeroutput", {}).get("tokenbudget")
    if payload is None:
        return
    state = node.config.stash[_STATE]
    data = json.loads(payload)
    state.collected.update(data["collected"])
    for wire in data["results"]:
        result = TestResult.from_wire(wire)
        state.results[result.nodeid] = result


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the token budget report, and write its JSON/Markdown forms."""
    if _is_worker(config) or _STATE not in config.stash:
        return
    state = config.stash[_STATE]
    if not state.settings.report:
        return
    from ._reporting import publish

    lines = publish(state)
    if lines:
        terminalreporter.write_sep("=", "token budget")
        for line in lines:
            terminalreporter.write_line(line)
