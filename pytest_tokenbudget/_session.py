"""The run: its settings, each test's recorder and result, the xdist hand-over, and the end of the
session (the baseline, the report files, the summary lines). Knows nothing of pytest: the plugin's
hooks hand every decision here.
"""

from __future__ import annotations

import enum
import pickle
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._redact import Redactor
from .errors import ReplayInterrupt, TokenBudgetError, TokenBudgetWarning
from .record import (
    Recorder,
    Route,
    accept_command,
    clear_placeholder_key,
    open_recorder,
    replays_only,
    set_placeholder_key,
    unrouted_clients,
)

if TYPE_CHECKING:
    # The pipeline, prices and reports load when a test first makes an API call (or the session
    # ends): a suite that never calls the API does not pay for importing them.
    from ._settings import Settings
    from ._suite import SuiteTotals, SuiteVerdict
    from .baseline import BaselineEntry
    from .budgets import Budget
    from .evaluate import Evaluation, TestResult
    from .pricing import Pricer
    from .reports import Coverage, GapReason, GateLine, Report, TestEntry

__all__ = ["Outcome", "RunSession", "TestRun"]

_WIRE_VERSION = 3


class Outcome(enum.IntEnum):
    """How a test ended, over its setup, call and teardown (the worst phase wins)."""

    PASSED = 0
    SKIPPED = 1
    FAILED = 2
    """Failed or errored, or failed as expected (xfail)."""


@dataclass
class TestRun:
    """One test while it runs: its recorder, and what its body left."""

    __test__ = False  # not a pytest test class

    recorder: Recorder
    batchable: bool = False
    body_passed: bool = False
    evaluation: Evaluation | None = None

    _route: Route | None = None
    _placed_key: bool = False

    def enter(self) -> None:
        """From now on the test's traffic goes to its recorder (a placeholder key when it only replays)."""
        self._placed_key = set_placeholder_key(replays_only(self.recorder))
        try:
            self._route = self.recorder.route()
        except BaseException:
            self.exit()
            raise

    def exit(self) -> None:
        """Stop routing the test's traffic (undo :meth:`enter`); harmless when not entered."""
        route, self._route = self._route, None
        try:
            if route is not None:
                route.close()
        finally:
            if self._placed_key:
                self._placed_key = False
                clear_placeholder_key()


@dataclass
class RunSession:
    """Everything the session collects.

    Attributes:
        settings: the resolved options.
        results: each test's result, by node id.
        baseline: the committed baseline (``None`` when it does not exist or is not read).
        collected: every collected node id, deselected ones included (the baseline update
            prunes by it).
        deselected: the node ids deselected (``-k``, ``-m``, ``--deselect``...), when the run
            is judged against a baseline.
        outcomes: how each test with a baseline entry ended, when the run is judged against a
            baseline (under xdist, the controller's record of its workers' reports).
        lines: what the session says at its end, set by :meth:`finish`.
        suite: the suite budget's verdict, set by :meth:`finish` (``None``: no suite budget).
        redactor: every secret seen in the session (environment, headers, URLs; under xdist,
            the workers' too): every file written and every line printed goes through it.
    """

    settings: Settings
    results: dict[str, TestResult] = field(default_factory=dict)
    baseline: dict[str, BaselineEntry] | None = None
    collected: set[str] = field(default_factory=set)
    deselected: set[str] = field(default_factory=set)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    suite: SuiteVerdict | None = None
    redactor: Redactor = field(default_factory=Redactor)
    _pricer: Pricer | None = None
    _update_lines: list[GateLine] = field(default_factory=list)

    @classmethod
    def start(cls, settings: Settings) -> RunSession:
        """The session, with its price files and baseline read when it reports.

        Raises:
            TokenBudgetError: a price file or the baseline cannot be read.
        """
        session = cls(settings, redactor=Redactor.from_environment(names=settings.secret_env))
        if settings.report:
            from .baseline import load_baseline

            session.pricer  # noqa: B018 - load and validate the price files now
            if settings.baseline_path is not None:
                session.baseline = load_baseline(settings.baseline_path)
        return session

    @property
    def judged(self) -> bool:
        """The run is judged against the committed baseline (``--token-budget`` without
        ``--token-budget-update``, and a baseline file)."""
        return self.settings.report and not self.settings.update and self.baseline is not None

    @property
    def fails_session(self) -> bool:
        """The suite budget is broken: the session fails even when every test passed."""
        return self.suite is not None and self.suite.failed

    @property
    def pricer(self) -> Pricer:
        """The session's pricer (one instant for "now" pricing, for the whole run)."""
        if self._pricer is None:
            from .pricing import Pricer

            self._pricer = Pricer(override_files=self.settings.price_files, timestamp_policy=self.settings.price_at)
        return self._pricer

    # ------------------------------------------------------------------ what ran

    def note_deselected(self, nodeids: Iterable[str]) -> None:
        """Tests deselected from the run."""
        self.deselected.update(nodeids)

    def note_report(self, nodeid: str, outcome: str, *, xfail: bool = False) -> None:
        """One phase's outcome (``passed``, ``failed``, ``skipped``) of a test with a baseline entry."""
        if self.baseline is None or nodeid not in self.baseline:
            return
        if outcome == "failed" or (outcome == "skipped" and xfail):
            now = Outcome.FAILED
        elif outcome == "skipped":
            now = Outcome.SKIPPED
        else:
            now = Outcome.PASSED
        self.outcomes[nodeid] = max(now, self.outcomes.get(nodeid, Outcome.PASSED))

    # ------------------------------------------------------------------ one test

    def open_test(self, nodeid: str, path: Path, *, batchable: bool = False) -> TestRun:
        """The recorder of a test, its cassette (``path``, absolute) loaded.

        Raises:
            CassetteError: the cassette exists but cannot be read.
        """
        settings = self.settings
        recorder = open_recorder(
            path,
            test=nodeid,
            mode=settings.record_mode,
            continue_on_mismatch=settings.report,
            allow_unused=settings.allow_unused,
            redactor=self.redactor,
        )
        from fnmatch import fnmatchcase

        batchable = batchable or any(fnmatchcase(nodeid, pattern) for pattern in settings.batchable)
        return TestRun(recorder, batchable)

    def after_call(self, run: TestRun, budget: Callable[[], Budget]) -> ReplayInterrupt | None:
        """After the test body passed: replay failures it swallowed, unplayed recordings, then
        budgets and the gate. Returns what fails the test, if anything."""
        recorder = run.recorder
        if recorder.errors:
            return recorder.errors[0]
        missed = unrouted_clients()
        if missed:
            warnings.warn(
                TokenBudgetWarning(
                    f"{recorder.test}: {', '.join(missed)} was loaded by importlib during the test, not by an "
                    "import statement, so the recorder could not follow it: requests it made in this test were "
                    "neither recorded nor replayed. Import the client (anthropic) at the top of the test module."
                ),
                stacklevel=1,
            )
        unused = recorder.unused if not recorder.allow_unused else []
        if unused:
            first = unused[0]
            return ReplayInterrupt(
                TokenBudgetError(
                    "the test left recordings unplayed",
                    file=str(recorder.cassette_path),
                    test=recorder.test,
                    why=f"{len(unused)} recorded request(s) were not sent, from interaction {first.index} "
                    f"({first.method} {first.path}): the test now makes fewer calls than when recorded",
                    fix=f"re-record: {recorder.record_command('all')}, or set token_budget_allow_unused = true",
                )
            )
        run.body_passed = True
        if not recorder.exchanges:
            return None  # no API call: nothing to judge
        try:
            run.evaluation = self._evaluate(recorder, budget, test_passed=True, batchable=run.batchable)
        except TokenBudgetError as error:
            error.test = recorder.test
            return ReplayInterrupt(error)
        if run.evaluation.failure is not None:
            run.evaluation.result.passed = False
            return ReplayInterrupt(run.evaluation.failure)
        return None

    def close_test(self, run: TestRun, budget: Callable[[], Budget]) -> TestResult | TokenBudgetError | None:
        """After the test: save what it recorded (when its own code passed, budget verdicts
        aside: a test over budget still recorded what it did) and keep its result.

        Returns the result kept, the save's error, or ``None`` when the recordings cannot be read.
        """
        recorder = run.recorder
        if run.body_passed:
            try:
                recorder.save()
            except TokenBudgetError as error:
                return error
        evaluation = run.evaluation
        if evaluation is None and not recorder.exchanges and not recorder.recorded:
            return None
        if evaluation is None:
            try:
                evaluation = self._evaluate(recorder, budget, test_passed=False, batchable=run.batchable)
            except TokenBudgetError:
                return None
        self.results[recorder.test] = evaluation.result
        return evaluation.result

    def _evaluate(
        self, recorder: Recorder, budget: Callable[[], Budget], *, test_passed: bool, batchable: bool = False
    ) -> Evaluation:
        from .evaluate import evaluate
        from .levers import DEFAULT_CHEAP_MODEL, AdviceOptions

        settings = self.settings
        judged = settings.report and not settings.update
        return evaluate(
            recorder,
            budget=budget,
            pricer=self.pricer,
            cassette_name=lambda: settings.display_path(recorder.cassette_path),
            against=(self.baseline or {}).get(recorder.test) if judged else None,
            count_tokens=settings.count_tokens,
            test_passed=test_passed,
            require_prices=settings.report and not settings.allow_unpriced,
            advice=AdviceOptions(batchable, settings.cheap_model or DEFAULT_CHEAP_MODEL) if settings.report else None,
        )

    # ------------------------------------------------------------------ xdist

    def publish_worker(self) -> bytes:
        """This worker's results for the controller (request bodies left out: reports do not
        need them, and they are most of a long run's bytes)."""
        results = [_lean(result) for result in self.results.values()]
        return pickle.dumps(
            (_WIRE_VERSION, results, sorted(self.collected), sorted(self.deselected), self.redactor.secrets),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def merge_worker(self, payload: bytes) -> None:
        """Take a finished worker's results, and what it collected and deselected (each worker
        collects the whole run; the controller sees every test's reports itself)."""
        version, *rest = pickle.loads(payload)
        if version != _WIRE_VERSION:  # pragma: no cover - workers run this same code
            raise RuntimeError(f"tokenbudget: xdist worker sent wire version {version}, expected {_WIRE_VERSION}")
        results, collected, deselected, secrets = rest
        self.redactor.update(secrets)
        self.collected.update(collected)
        self.deselected.update(deselected)
        for result in results:
            self.results[result.nodeid] = result

    # ------------------------------------------------------------------ the end

    def finish(self, width: int | None = None) -> None:
        """Write the baseline (``--token-budget-update``) and the report files; keep the summary
        lines (within ``width``, the terminal's, when given)."""
        settings = self.settings
        if settings.update and settings.baseline_path is not None:
            self._update_lines = self._update_baseline(settings.baseline_path)
        if not settings.report:
            return
        from .reports import build_report, publish

        entries = [r.entry for _, r in sorted(self.results.items()) if r.entry is not None]
        report = build_report(entries, self.pricer.source.as_dict())
        coverage = self.coverage()
        self.suite = self._suite_verdict(report, coverage)
        report = replace(report, coverage=coverage, suite=self.suite)
        self.lines = publish(
            report,
            self.gate_lines(),
            json_path=settings.json_path,
            markdown_path=settings.markdown_path,
            verbose=settings.verbose,
            html_path=settings.html_path,
            redact=self.redactor.text,
            width=width,
        )

    def coverage(self) -> Coverage | None:
        """Which baseline entries this run checked, and why each other one was not (``None``
        when the run is not judged against a baseline)."""
        if not self.judged or self.baseline is None:
            return None
        from .reports import Coverage, GapReason, NotChecked

        checked: list[str] = []
        groups: dict[GapReason, list[str]] = {}
        for test in sorted(self.baseline):
            reason = self._gap(test)
            if reason is None:
                checked.append(test)
            else:
                groups.setdefault(reason, []).append(test)
        not_checked = tuple(NotChecked(reason, tuple(groups[reason])) for reason in GapReason if reason in groups)
        return Coverage(len(self.baseline), tuple(checked), not_checked)

    def _gap(self, test: str) -> GapReason | None:
        """Why a baseline entry was not checked (``None``: it was)."""
        from .reports import GapReason

        result = self.results.get(test)
        if result is not None and result.baseline is not None:
            return None
        if test in self.deselected:
            return GapReason.DESELECTED
        if test not in self.collected:
            return GapReason.NOT_COLLECTED
        outcome = self.outcomes.get(test)
        if outcome is None:
            return GapReason.NOT_RUN
        if outcome is Outcome.SKIPPED:
            return GapReason.SKIPPED
        if result is not None and result.ledger.turns:
            return GapReason.UNCOMPARABLE
        if outcome is Outcome.FAILED:
            return GapReason.FAILED_BEFORE_CALL
        return GapReason.NO_CALL

    def _suite_verdict(self, report: Report, coverage: Coverage | None) -> SuiteVerdict | None:
        """The suite budget against this run's totals, and (judged runs) against the baseline's
        totals over the tests checked."""
        budget = self.settings.suite
        if budget.is_empty():
            return None
        from ._suite import SuiteTotals, Uncompared, check_suite

        run = sum((_test_totals(entry) for entry in report.tests), SuiteTotals())
        if coverage is None or self.baseline is None:
            why = Uncompared.UPDATE if self.settings.update else Uncompared.NO_BASELINE
            return check_suite(budget, run, uncompared=why)
        current = SuiteTotals()
        before = SuiteTotals()
        for test in coverage.checked:
            now = self.results[test].baseline
            assert now is not None  # checked: compared with its entry
            current += _entry_totals(now)
            before += _entry_totals(self.baseline[test])
        new = sum(1 for test, r in self.results.items() if r.ledger.turns and test not in self.baseline)
        return check_suite(budget, run, current=current, baseline=before, left_out=coverage.unchecked, new=new)

    def _update_baseline(self, path: Path) -> list[GateLine]:
        """Write the baseline from this run (passed tests replace their entries; gone tests are pruned),
        merged under a lock into the file as it is then: a concurrent update's entries are kept.

        Raises:
            TokenBudgetError: the baseline's lock was not free in time, or the file became invalid.
        """
        from .baseline import update_baseline
        from .reports import GateKind, GateLine

        accept = self.settings.accept_estimates
        fresh = {
            test: r.baseline
            for test, r in self.results.items()
            if r.baseline is not None and r.passed and (accept or not r.baseline.estimated)
        }
        estimated = sorted(
            test for test, r in self.results.items() if r.baseline is not None and r.passed and test not in fresh
        )
        merged = update_baseline(
            path,
            fresh,
            collected=self.collected,
            rootdir=self.settings.rootdir,
            known=self.baseline or {},
            partial=self.settings.partial_files,
        )
        lines = [f"baseline {self.settings.display_path(path)}: {len(merged.updated)} test(s) written"]
        if merged.pruned:
            lines.append(
                f"  pruned {len(merged.pruned)} entr{'y' if len(merged.pruned) == 1 else 'ies'} "
                f"for tests that no longer exist: {', '.join(merged.pruned)}"
            )
        if merged.stale:
            lines.append(
                f"  kept {len(merged.stale)} entr{'y' if len(merged.stale) == 1 else 'ies'} "
                f"for tests that did not run: {', '.join(merged.stale)}"
            )
        failed = sorted(test for test, r in self.results.items() if r.baseline is not None and not r.passed)
        if failed:
            lines.append(f"  not updated (the test failed): {', '.join(failed)}")
        if estimated:
            lines.append(
                f"  not updated (its usage is estimated: the prompt changed since it was recorded): "
                f"{', '.join(estimated)}"
            )
            lines.append(f"    measure it (needs an API key): {accept_command(estimated, measure=True)}")
            lines.append(f"    or write the estimate, marked as estimated: {accept_command(estimated, measure=False)}")
        written_estimates = sorted(test for test, entry in fresh.items() if entry.estimated)
        if written_estimates:
            lines.append(
                f"  written as estimates (re-record with a key to measure them): {', '.join(written_estimates)}"
            )
        return [GateLine(GateKind.INFO, line) for line in lines]

    def gate_lines(self) -> list[GateLine]:
        """The gate's verdict on the run, test by test."""
        from ._gate import Judged, verdict_lines

        if self.settings.update:
            return list(self._update_lines)
        judged = [
            Judged(test, result.gate, result.gate_notes) for test, result in self.results.items() if result.ledger.turns
        ]
        where = self.settings.display_path(self.settings.baseline_path or Path())
        return verdict_lines(self.baseline, judged, where)

    def redact_report(self, report: Any) -> None:
        """Redact every secret seen in the session from a pytest report: its failure text, its
        captured output and its properties (what the terminal, junit.xml and xdist carry)."""
        redactor = self.redactor
        if not len(redactor):
            return
        longrepr = report.longrepr
        if isinstance(longrepr, str):
            report.longrepr = redactor.text(longrepr)
        elif longrepr is not None and redactor.find(str(longrepr)):
            report.longrepr = redactor.text(str(longrepr))  # the traceback's structure is lost, not its text
        report.sections = [(title, redactor.text(content)) for title, content in report.sections]
        report.user_properties = [
            (name, redactor.text(value) if isinstance(value, str) else value) for name, value in report.user_properties
        ]

    def properties(self, nodeid: str) -> list[tuple[str, Any]]:
        """JUnit XML properties of a test's numbers (none when it made no API turn)."""
        result = self.results.get(nodeid)
        if result is None or not result.ledger.turns:
            return []
        totals = result.ledger.totals()
        out: list[tuple[str, Any]] = [
            ("tokenbudget_turns", totals.turns),
            ("tokenbudget_input_tokens", totals.uncached_input_tokens),
            ("tokenbudget_cache_creation_input_tokens", totals.cache_creation_input_tokens),
            ("tokenbudget_cache_read_input_tokens", totals.cache_read_input_tokens),
            ("tokenbudget_output_tokens", totals.output_tokens),
            ("tokenbudget_cache_hit_rate", round(totals.cache_hit_rate, 6)),
        ]
        if result.baseline is not None and result.baseline.cost_usd is not None:
            out.append(("tokenbudget_cost_usd", str(result.baseline.cost_usd)))
        return out


def _entry_totals(entry: BaselineEntry) -> SuiteTotals:
    from ._suite import SuiteTotals

    return SuiteTotals(
        1,
        entry.total_input_tokens,
        entry.cache_read_input_tokens,
        entry.output_tokens,
        entry.cost_usd,
        entry.estimated,
    )


def _test_totals(entry: TestEntry) -> SuiteTotals:
    from ._suite import SuiteTotals

    totals = entry.totals
    return SuiteTotals(
        1,
        totals.total_input_tokens,
        totals.cache_read_input_tokens,
        totals.output_tokens,
        entry.cost_usd,
        any(item.turn.estimated for item in entry.turns),
    )


def _lean(result: TestResult) -> TestResult:
    from .ledger import Ledger

    ledger = Ledger([replace(turn, request=None) for turn in result.ledger.turns], (), result.ledger.source)
    entry = result.entry
    if entry is not None:
        lean_turns = {id(old): new for old, new in zip(result.ledger.turns, ledger.turns, strict=True)}
        entry = replace(
            entry, turns=tuple(replace(item, turn=lean_turns.get(id(item.turn), item.turn)) for item in entry.turns)
        )
    return replace(result, ledger=ledger, entry=entry)
