"""pytest hooks, options, markers and fixtures. Thin: each hook hands off to the run session
(:mod:`pytest_tokenbudget._session`) in a few lines.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._redact import EMULATOR_API_KEY
from ._session import RunSession, TestRun
from ._settings import UsageProblem, add_pytest_options, resolve
from .budgets import BUDGET_KEYS, Budget
from .errors import ReplayInterrupt, TokenBudgetError
from .record import Recorder, cassette_path, ledger_of_vcr_cassette

if TYPE_CHECKING:
    from .assertions import TokenLedger
    from .emulator import AnthropicEmulator

_SESSION = pytest.StashKey[RunSession]()
_RUN = pytest.StashKey[TestRun]()
_MARKS = pytest.StashKey["dict[str, Any]"]()  # the test's token_budget keywords, read once

_MARKER_KEYS = (*BUDGET_KEYS, "record", "cassette", "batchable")
_MARKER_HELP = (
    "token_budget(max_cost_usd=None, max_input_tokens=None, max_output_tokens=None, max_turns=None, "
    "min_cache_hit_rate=None, prefix_stable=None, max_cost_increase=None, ..., record=True, cassette=None, "
    "batchable=False): this test's token budget, recording options, and whether nobody waits on its calls "
    "(the advisor's batch lever; see pytest_tokenbudget.budgets and pytest_tokenbudget.levers)."
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options: one ``tokenbudget`` group, each flag with an ini twin (declared in ``_settings``)."""
    add_pytest_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and start the session; a bad value or file is a usage error, not a traceback."""
    config.addinivalue_line("markers", _MARKER_HELP)
    try:
        session = config.stash[_SESSION] = RunSession.start(resolve(config))
    except UsageProblem as problem:
        raise pytest.UsageError(str(problem)) from None
    except TokenBudgetError as error:
        raise pytest.UsageError(error.render()) from None
    if os.environ.get("GITHUB_ACTIONS") == "true" and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Annotations(config), "tokenbudget-annotations")
    if session.judged:  # only then: a run without a baseline pays nothing per test for it
        config.pluginmanager.register(_BaselineWatch(session), "tokenbudget-baseline-watch")


class _BaselineWatch:
    """Hooks of a run judged against a baseline: what was deselected, and how tests ended (for
    the summary of baseline entries not checked)."""

    def __init__(self, session: RunSession) -> None:
        self.session = session

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.session.note_deselected(item.nodeid for item in items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.session.note_report(report.nodeid, report.outcome, xfail=hasattr(report, "wasxfail"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check every ``token_budget`` marker before anything runs; note which tests exist."""
    session = config.stash[_SESSION]
    for item in items:
        session.collected.add(item.nodeid)
        _check_marker(item)


def _check_marker(item: pytest.Item) -> None:
    marker = item.get_closest_marker("token_budget")
    item.stash[_MARKS] = dict(marker.kwargs) if marker is not None else {}
    if marker is None:
        return
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
    if not isinstance(marker.kwargs.get("batchable", False), bool):
        raise pytest.UsageError(
            f"tokenbudget: {item.nodeid}: token_budget(batchable=...) takes True or False, "
            f"got {marker.kwargs['batchable']!r}"
        )
    try:
        _budget_of(item)
    except TokenBudgetError as error:
        raise pytest.UsageError(error.render()) from None


def _marker_kwargs(item: pytest.Item) -> dict[str, Any]:
    kwargs = item.stash.get(_MARKS, None)
    if kwargs is None:  # the marker is looked up once per test (it walks the node chain)
        marker = item.get_closest_marker("token_budget")
        kwargs = item.stash[_MARKS] = dict(marker.kwargs) if marker is not None else {}
    return kwargs


def _budget_of(item: pytest.Item) -> Budget:
    # Precedence: --token-budget-threshold, the marker, the config file's patterns (in order), its defaults.
    settings = item.config.stash[_SESSION].settings
    options = {k: v for k, v in _marker_kwargs(item).items() if k in BUDGET_KEYS}
    marker = Budget.from_mapping(options, where=f"{item.nodeid}: @pytest.mark.token_budget")
    return settings.overrides.over(marker.over(settings.config.budget_for(item.nodeid)))


def _uses_pytest_recording(item: pytest.Item) -> bool:
    return item.config.pluginmanager.hasplugin("recording") and item.get_closest_marker("vcr") is not None


def _cassette_of(item: pytest.Item, session: RunSession, options: dict[str, Any]) -> Path:
    if options.get("cassette"):
        path = Path(options["cassette"])
        return path if path.is_absolute() else session.settings.cassette_dir / path
    cls = getattr(item, "cls", None)
    class_name = cls.__name__ if cls is not None else None
    return cassette_path(session.settings.cassette_dir, item.path, item.name, class_name)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Record or replay this test's Anthropic traffic from before its fixtures are set up (so
    function-scoped fixtures are recorded; higher-scoped ones are not). The innermost wrapper:
    other plugins' setup (logging, capture) has run when this one fails the test."""
    if _wants_recorder(item):
        session = item.config.stash[_SESSION]
        failure: TokenBudgetError | None = None
        try:
            options = _marker_kwargs(item)
            run = session.open_test(
                item.nodeid, _cassette_of(item, session, options), batchable=options.get("batchable") is True
            )
        except TokenBudgetError as error:
            error.test = item.nodeid
            failure = error
        if failure is not None:  # outside the except: pytest would print the message twice, chained
            pytest.fail(failure.render(), pytrace=False)
        run.enter()
        item.stash[_RUN] = run
    return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """After the test's fixtures are torn down: stop routing, save what it recorded, keep its result."""
    try:
        return (yield)
    finally:
        run = item.stash.get(_RUN, None)
        if run is not None:
            del item.stash[_RUN]  # items live to the session's end; their recorders need not
            _close(item, run)


def _wants_recorder(item: pytest.Item) -> bool:
    return _marker_kwargs(item).get("record") is not False and not _uses_pytest_recording(item)


def _close(item: pytest.Item, run: TestRun) -> None:
    run.exit()
    session = item.config.stash[_SESSION]
    outcome = session.close_test(run, lambda: _budget_of(item))
    item.user_properties.extend(session.properties(item.nodeid))  # JUnit XML (the teardown report's)
    if isinstance(outcome, TokenBudgetError):
        pytest.fail(outcome.render(), pytrace=False)


@pytest.fixture
def _tokenbudget_recorder(request: pytest.FixtureRequest) -> Recorder | None:
    """This test's recorder (``None`` when it is not recorded)."""
    run = request.node.stash.get(_RUN, None)
    return run.recorder if run is not None else None


@pytest.fixture
def token_ledger(request: pytest.FixtureRequest, _tokenbudget_recorder: Recorder | None) -> TokenLedger:
    """The ledger of this test's API turns, live (every call so far), with inline budget checks."""
    from .assertions import TokenLedger
    from .ledger import Ledger

    session = request.config.stash[_SESSION]
    if _tokenbudget_recorder is not None:
        return TokenLedger(_tokenbudget_recorder.ledger, lambda: session.pricer)
    if _uses_pytest_recording(request.node):
        vcr_cassette = request.getfixturevalue("vcr")
        return TokenLedger(lambda: ledger_of_vcr_cassette(vcr_cassette), lambda: session.pricer)
    return TokenLedger(Ledger, lambda: session.pricer)


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
    monkeypatch.setenv("ANTHROPIC_API_KEY", os.environ.get("ANTHROPIC_API_KEY") or EMULATOR_API_KEY)
    if _tokenbudget_recorder is not None:
        _tokenbudget_recorder.clock = emulator.clock.now
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After the test body: the session judges it (replay failures, unplayed recordings, budget, gate)."""
    result = yield
    run = item.stash.get(_RUN, None)
    failure = item.config.stash[_SESSION].after_call(run, lambda: _budget_of(item)) if run is not None else None
    if failure is not None:
        raise failure
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Show our failures as their message, without a traceback (and, in CI, the GitHub annotations
    to print, carried on the report so that the xdist controller prints them); no secret seen in
    the session reaches the report (terminal, junit.xml)."""
    report = yield
    session = item.config.stash.get(_SESSION, None)
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, ReplayInterrupt | TokenBudgetError):
        message = (error.error if isinstance(error, ReplayInterrupt) else error).render()
        if session is not None:
            message = session.redactor.text(message)
        report.longrepr = message
        report.outcome = "failed"
        if os.environ.get("GITHUB_ACTIONS") == "true":
            report.tokenbudget_annotations = _annotations(item, message)
    if session is not None:
        session.redact_report(report)
    return report


def _annotations(item: pytest.Item, message: str) -> list[dict[str, Any]]:
    from ._annotate import annotations_for, first_change

    session = item.config.stash[_SESSION]
    run = item.stash.get(_RUN, None)
    found = annotations_for(
        test_name=item.name,
        test_file=Path(item.path),
        test_line=(item.location[1] or 0) + 1,
        message=message,
        rootdir=session.settings.rootdir,
        change=first_change(run.recorder) if run is not None else None,
        skip_dir=session.settings.cassette_dir,
    )
    return [annotation.as_dict() for annotation in found]


class _Annotations:
    """Under GitHub Actions, in the process that writes the log (the controller under xdist):
    print each failing test's annotations once."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        annotations = getattr(report, "tokenbudget_annotations", None)
        if not annotations:
            return
        from ._annotate import commands

        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        for line in commands(annotations):
            if terminal is not None:
                # A workflow command must start its line: under xdist the progress letters
                # ("F") are still on it, and write_line does not know.
                if terminal._tw.width_of_current_line:
                    terminal.write("\n")
                terminal.write_line(line)
            else:  # pragma: no cover - -p no:terminal
                print(line, flush=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker hands its results to the controller; the controller writes the baseline and reports."""
    config = session.config
    if _SESSION not in config.stash:
        return
    if hasattr(config, "workerinput"):
        config.workeroutput["tokenbudget"] = config.stash[_SESSION].publish_worker()  # type: ignore[attr-defined]
        return
    run = config.stash[_SESSION]
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    try:
        # The report's lines fit pytest's terminal writer (which honours COLUMNS).
        run.finish(width=terminal._tw.fullwidth if terminal is not None else None)
    except TokenBudgetError as error:  # the baseline's lock was not free, or the file became invalid
        pytest.exit(error.render(), returncode=pytest.ExitCode.USAGE_ERROR)
    if run.fails_session and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # the suite budget is broken


@pytest.hookimpl(optionalhook=True)
def pytest_recording_configure(config: pytest.Config, vcr: Any) -> None:
    """pytest-recording: its cassettes are written through :class:`~pytest_tokenbudget.record.SafePersister`
    (credential headers dropped, the session's secrets redacted, a leak refused)."""
    from .record import SafePersister

    session = config.stash.get(_SESSION, None)
    if session is not None and not isinstance(vcr.persister, SafePersister):
        vcr.register_persister(SafePersister(vcr.persister, session.redactor))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: merge a finished worker's results."""
    payload = getattr(node, "workeroutput", {}).get("tokenbudget")
    if payload is not None:
        node.config.stash[_SESSION].merge_worker(payload)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the token budget report the session prepared."""
    lines = config.stash[_SESSION].lines if _SESSION in config.stash else []
    if lines:
        terminalreporter.write_sep("=", "token budget")
        for line in lines:
            terminalreporter.write_line(line)
