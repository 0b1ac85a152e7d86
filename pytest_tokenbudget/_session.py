"""The run: its settings, each test's recorder and result, the xdist hand-over, and the end of the
session (the baseline, the report files, the summary lines). Knows nothing of pytest: the plugin's
hooks hand every decision here.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    from .baseline import BaselineEntry
    from .budgets import Budget
    from .evaluate import Evaluation, TestResult
    from .pricing import Pricer
    from .reports import GateLine

__all__ = ["RunSession", "TestRun"]

_WIRE_VERSION = 1


@dataclass
class TestRun:
    """One test while it runs: its recorder, and what its body left."""

    __test__ = False  # not a pytest test class

    recorder: Recorder
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
        collected: every collected node id (the baseline update prunes by it).
        lines: what the session says at its end, set by :meth:`finish`.
    """

    settings: Settings
    results: dict[str, TestResult] = field(default_factory=dict)
    baseline: dict[str, BaselineEntry] | None = None
    collected: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)
    _pricer: Pricer | None = None
    _update_lines: list[GateLine] = field(default_factory=list)

    @classmethod
    def start(cls, settings: Settings) -> RunSession:
        """The session, with its price files and baseline read when it reports.

        Raises:
            TokenBudgetError: a price file or the baseline cannot be read.
        """
        session = cls(settings)
        if settings.report:
            from .baseline import load_baseline

            session.pricer  # noqa: B018 - load and validate the price files now
            if settings.baseline_path is not None:
                session.baseline = load_baseline(settings.baseline_path)
        return session

    @property
    def pricer(self) -> Pricer:
        """The session's pricer (one instant for "now" pricing, for the whole run)."""
        if self._pricer is None:
            from .pricing import Pricer

            self._pricer = Pricer(override_files=self.settings.price_files, timestamp_policy=self.settings.price_at)
        return self._pricer

    # ------------------------------------------------------------------ one test

    def open_test(self, nodeid: str, path: Path) -> TestRun:
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
        )
        return TestRun(recorder)

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
            run.evaluation = self._evaluate(recorder, budget, test_passed=True)
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
                evaluation = self._evaluate(recorder, budget, test_passed=False)
            except TokenBudgetError:
                return None
        self.results[recorder.test] = evaluation.result
        return evaluation.result

    def _evaluate(self, recorder: Recorder, budget: Callable[[], Budget], *, test_passed: bool) -> Evaluation:
        from .evaluate import evaluate

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
        )

    # ------------------------------------------------------------------ xdist

    def publish_worker(self) -> bytes:
        """This worker's results for the controller (request bodies left out: reports do not
        need them, and they are most of a long run's bytes)."""
        results = [_lean(result) for result in self.results.values()]
        return pickle.dumps((_WIRE_VERSION, results, sorted(self.collected)), protocol=pickle.HIGHEST_PROTOCOL)

    def merge_worker(self, payload: bytes) -> None:
        """Take a finished worker's results."""
        version, results, collected = pickle.loads(payload)
        if version != _WIRE_VERSION:  # pragma: no cover - workers run this same code
            raise RuntimeError(f"tokenbudget: xdist worker sent wire version {version}")
        self.collected.update(collected)
        for result in results:
            self.results[result.nodeid] = result

    # ------------------------------------------------------------------ the end

    def finish(self) -> None:
        """Write the baseline (``--token-budget-update``) and the report files; keep the summary lines."""
        settings = self.settings
        if settings.update and settings.baseline_path is not None:
            self._update_lines = self._update_baseline(settings.baseline_path)
        if not settings.report:
            return
        from .reports import build_report, publish

        entries = [r.entry for _, r in sorted(self.results.items()) if r.entry is not None]
        report = build_report(entries, self.pricer.source.as_dict())
        self.lines = publish(
            report,
            self.gate_lines(),
            json_path=settings.json_path,
            markdown_path=settings.markdown_path,
            verbose=settings.verbose,
        )

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
        from .reports import GateKind, GateLine

        if self.settings.update:
            return list(self._update_lines)
        lines: list[GateLine] = []
        if self.baseline is None:
            if any(r.ledger.turns for r in self.results.values()):
                where = self.settings.display_path(self.settings.baseline_path or Path())
                lines.append(GateLine(GateKind.INFO, f"no baseline at {where}: create it with --token-budget-update"))
            return lines
        for test, result in sorted(self.results.items()):
            if not result.ledger.turns:
                continue
            if test not in self.baseline:
                lines.append(
                    GateLine(GateKind.NOT_IN_BASELINE, "not in the baseline (add it with --token-budget-update)", test)
                )
            lines.extend(GateLine(GateKind.FAIL, failure, test) for failure in result.gate.failures)
            lines.extend(GateLine(GateKind.NOTE, note, test) for note in result.gate_notes)
        held = sorted(test for test, entry in self.baseline.items() if entry.estimated)
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
