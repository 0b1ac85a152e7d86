"""Run state: settings, per-test evaluation (ledger, prices, cache, budgets, gate). Knows nothing of pytest."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .baseline import BaselineEntry, GateResult, compare
from .budgets import Budget, check_budget, where_tokens_went
from .cassette import Cassette, load_cassette
from .config import Config
from .errors import TokenBudgetError
from .ledger import Ledger, Turn
from .record import PLACEHOLDER_API_KEY, Recorder, RecordMode

if TYPE_CHECKING:
    from .pricing import Pricer
    from .report import Report, TestEntry

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-\[\]=,+@]")


@dataclass(frozen=True)
class Settings:
    """Resolved options.

    Attributes:
        record_mode: when to record.
        cassette_dir: where cassettes live (absolute).
        allow_unused: do not fail a test that leaves recordings unplayed.
        report: ``--token-budget`` was given: report, and judge changed prompts against the baseline.
        rootdir: pytest's rootdir, for relative paths in messages.
        price_files: price override files.
        price_at: ``now`` or ``recorded``.
        json_path: where to write the JSON report.
        markdown_path: where to write the Markdown report.
        verbose: per-turn tables.
        update: ``--token-budget-update``: rewrite the baseline from this run.
        baseline_path: the baseline file.
        config: the config file's budgets.
    """

    record_mode: RecordMode
    cassette_dir: Path
    allow_unused: bool
    report: bool
    rootdir: Path
    price_files: tuple[str, ...] = ()
    price_at: str = "now"
    json_path: Path | None = None
    markdown_path: Path | None = None
    verbose: bool = False
    update: bool = False
    baseline_path: Path | None = None
    config: Config = field(default_factory=Config)
    count_tokens: bool = True


def cassette_path(settings: Settings, module: Path, test_name: str, class_name: str | None = None) -> Path:
    """``<cassette_dir>/<module stem>/<Class.>test_name.yaml``, with unsafe characters replaced."""
    name = f"{class_name}.{test_name}" if class_name else test_name
    return settings.cassette_dir / module.stem / (_UNSAFE.sub("_", name) + ".yaml")


def record_command(nodeid: str, mode: str) -> str:
    """The command that re-runs one test in a record mode."""
    return f"pytest {shlex.quote(nodeid)} --token-budget-record={mode}"


@dataclass
class TestResult:
    """What one test left behind: its ledger (estimates applied), cache analysis and gate verdict."""

    nodeid: str
    cassette: Path
    ledger: Ledger
    recorded: bool
    cache: list[dict[str, Any]] | None = None
    baseline: BaselineEntry | None = None
    gate_notes: list[str] = field(default_factory=list)
    gate_failures: list[str] = field(default_factory=list)
    passed: bool = True

    def to_wire(self) -> dict[str, Any]:
        """A JSON-able form, for xdist workers to send to the controller."""
        return {
            "nodeid": self.nodeid,
            "cassette": str(self.cassette),
            "recorded": self.recorded,
            "turns": [_turn_to_wire(t) for t in self.ledger.turns],
            "cache": self.cache,
            "baseline": self.baseline.as_json() if self.baseline is not None else None,
            "gate_notes": self.gate_notes,
            "gate_failures": self.gate_failures,
            "passed": self.passed,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> TestResult:
        """Rebuild a result sent by :meth:`to_wire`."""
        turns = [Turn(**turn) for turn in data["turns"]]
        baseline = BaselineEntry.from_json(data["baseline"]) if data.get("baseline") else None
        return cls(
            data["nodeid"],
            Path(data["cassette"]),
            Ledger(turns),
            bool(data["recorded"]),
            data.get("cache"),
            baseline,
            list(data.get("gate_notes") or []),
            list(data.get("gate_failures") or []),
            bool(data.get("passed", True)),
        )


_WIRE_FIELDS = tuple(f.name for f in fields(Turn) if f.name != "request")


def _turn_to_wire(turn: Turn) -> dict[str, Any]:
    return {name: getattr(turn, name) for name in _WIRE_FIELDS}


@dataclass
class RunState:
    """Everything the session collects."""

    settings: Settings
    results: dict[str, TestResult] = field(default_factory=dict)
    baseline: dict[str, BaselineEntry] | None = None
    collected: set[str] = field(default_factory=set)
    update_lines: list[str] = field(default_factory=list)
    _pricer: Pricer | None = None

    @property
    def pricer(self) -> Pricer:
        """The session's pricer (one instant for "now" pricing, for the whole run)."""
        if self._pricer is None:
            from .pricing import Pricer

            self._pricer = Pricer(override_files=self.settings.price_files, timestamp_policy=self.settings.price_at)
        return self._pricer

    def display_id(self, cassette: Path) -> str:
        """A cassette path relative to the rootdir when possible."""
        try:
            return str(cassette.relative_to(self.settings.rootdir))
        except ValueError:
            return str(cassette)

    def report(self) -> Report:
        """The priced report of every test that made API turns, in node-id order."""
        from .report import build_report

        entries = [(r.nodeid, self.display_id(r.cassette), r.ledger, r.cache) for _, r in sorted(self.results.items())]
        return build_report(entries, self.pricer)


def open_recorder(settings: Settings, nodeid: str, path: Path) -> Recorder:
    """A recorder for one test, its cassette loaded when it exists.

    Under ``--token-budget`` a request that departs from its recording is replayed anyway and
    judged (estimated usage, the gate); otherwise it fails the test.

    Raises:
        CassetteError: the cassette exists but cannot be read.
    """
    loaded: Cassette | None = None
    if path.exists() and settings.record_mode is not RecordMode.ALL:
        loaded = load_cassette(path)
    return Recorder(
        path,
        test=nodeid,
        mode=settings.record_mode,
        loaded=loaded,
        on_mismatch="continue" if settings.report else "fail",
        allow_unused=settings.allow_unused,
        record_command=lambda mode: record_command(nodeid, mode),
    )


def replays_only(recorder: Recorder) -> bool:
    """Whether this test can only replay (so a placeholder key is safe and needed)."""
    return recorder.mode is RecordMode.NONE or (recorder.mode is RecordMode.ONCE and recorder.loaded is not None)


@contextmanager
def placeholder_key(needed: bool) -> Iterator[None]:
    """Set ``ANTHROPIC_API_KEY`` to a placeholder for the block when it is unset and ``needed``.

    The SDK refuses to build a request without some credential, even in replay; the placeholder
    never reaches a cassette (nothing is recorded in replay, and headers are not stored).
    """
    if not needed or os.environ.get("ANTHROPIC_API_KEY"):
        yield
        return
    os.environ["ANTHROPIC_API_KEY"] = PLACEHOLDER_API_KEY
    try:
        yield
    finally:
        if os.environ.get("ANTHROPIC_API_KEY") == PLACEHOLDER_API_KEY:
            del os.environ["ANTHROPIC_API_KEY"]


# --------------------------------------------------------------------------------------------
# evaluation of one test


@dataclass
class Evaluation:
    """A test's numbers and verdicts, computed once after its body ran."""

    result: TestResult
    failure: TokenBudgetError | None = None


def evaluate(state: RunState, recorder: Recorder, budget: Budget, *, test_passed: bool) -> Evaluation:
    """Ledger, estimates for changed requests, prices, cache analysis, budgets and the gate.

    Raises:
        TokenBudgetError: a recorded response cannot be read.
    """
    settings = state.settings
    nodeid = recorder.test
    ledger = recorder.ledger()
    result = TestResult(nodeid, recorder.cassette_path, ledger, bool(recorder.recorded), passed=test_passed)
    if not ledger.turns:
        return Evaluation(result)
    from .analysis import analyze

    turn_of_exchange = {turn.exchange: turn.index for turn in ledger.turns}
    changed = {
        turn_of_exchange[d.exchange]: d.recorded.request_body.json()
        for d in recorder.departures
        if d.exchange in turn_of_exchange and isinstance(d.recorded.request_body.try_json(), dict)
    }
    has_requests = all(isinstance(t.request, Mapping) for t in ledger.turns)
    counted = _count_tokens(recorder, ledger, changed) if changed and settings.count_tokens else {}
    analysis = analyze(ledger, changed=changed, counted=counted) if has_requests else None
    if analysis is not None and changed:
        ledger = ledger.with_estimates(analysis)
        result.ledger = ledger
    result.cache = [t.as_dict() for t in analysis.turns] if analysis is not None else None
    from .report import build_entry

    entry = build_entry(nodeid, state.display_id(recorder.cassette_path), ledger, state.pricer, result.cache)
    totals = ledger.totals()
    estimated = any(t.estimated for t in ledger.turns)
    breaches = check_budget(
        budget,
        turns=totals.turns,
        input_tokens=totals.total_input_tokens,
        output_tokens=totals.output_tokens,
        cost_usd=entry.cost_usd,
        cache_hit_rate=totals.cache_hit_rate,
        prefix_breaks=[d.describe() for d in analysis.divergences] if analysis is not None else [],
        estimated=estimated,
    )
    if analysis is not None:
        result.baseline = baseline_entry(entry, result.cache or [], estimated)
    gate = GateResult()
    base = (state.baseline or {}).get(nodeid)
    if settings.report and not settings.update and base is not None and result.baseline is not None:
        first = recorder.departures[0] if recorder.departures else None
        first_change = None
        if first is not None and first.difference is not None and first.exchange in turn_of_exchange:
            first_change = (turn_of_exchange[first.exchange], first.difference)
        gate = compare(
            result.baseline,
            base,
            budget,
            first_change=first_change,
            rebuild_cost=lambda model, tokens: _rebuild_cost(state.pricer, model, tokens),
        )
    result.gate_notes = gate.notes
    result.gate_failures = gate.failures
    if not gate.prefix_change:
        # Name the change even when the gate passes (an edit after the cached prefix); a changed
        # prefix already names it in its own lines.
        for departure in recorder.departures:
            if departure.difference is not None and departure.exchange in turn_of_exchange:
                turn = turn_of_exchange[departure.exchange]
                result.gate_notes.insert(0, f"turn {turn} changed since recording: {departure.difference.describe()}")
                break
    if not breaches and not gate.failures:
        return Evaluation(result)
    return Evaluation(result, _failure(nodeid, breaches, gate, entry, ledger, recorder))


_COUNT_FIELDS = (
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "cache_control",
    "speed",
    "output_config",
)


def _count_tokens(recorder: Recorder, ledger: Ledger, changed: Mapping[int, Any]) -> dict[int, int]:
    """Exact input tokens of changed requests from the count_tokens API, when a real key is set.

    Without a key (CI) this returns nothing and the analysis estimates from characters. The calls
    bypass the recorder: they are the plugin's, not the test's, and are never recorded.
    """
    key = os.environ.get("ANTHROPIC_API_KEY")
    if not key or key == PLACEHOLDER_API_KEY:
        return {}
    import anthropic

    counted: dict[int, int] = {}
    with recorder.bypass():
        client = anthropic.Anthropic(max_retries=1)
        for turn in ledger.turns:
            if turn.index not in changed or not isinstance(turn.request, Mapping):
                continue
            params = {k: v for k, v in turn.request.items() if k in _COUNT_FIELDS}
            try:
                counted[turn.index] = client.messages.count_tokens(**params).input_tokens
            except anthropic.AnthropicError:
                return {}  # no network or no permission: fall back to estimates for every turn
    return counted


def _rebuild_cost(pricer: Pricer, model: str, tokens: int) -> Decimal | None:
    """What writing ``tokens`` (5m) costs more than reading them, for ``model``."""
    try:
        write = pricer.price_usage(
            model, {"input_tokens": 0, "cache_creation_input_tokens": tokens, "output_tokens": 0}
        )
        read = pricer.price_usage(model, {"input_tokens": 0, "cache_read_input_tokens": tokens, "output_tokens": 0})
    except TokenBudgetError:
        return None
    return write.cost_usd - read.cost_usd


def baseline_entry(entry: TestEntry, cache: list[dict[str, Any]], estimated: bool) -> BaselineEntry:
    """The baseline's view of a priced test: totals, cost, hit rate, cached prefixes per turn."""
    prefixes = []
    for item, turn_cache in zip(entry.turns, cache, strict=False):
        points = [
            {"path": b["path"], "fingerprint": b["fingerprint"], "tokens": b["tokens"]}
            for b in turn_cache.get("breakpoints", [])
            if not b.get("below_minimum")
        ]
        prefixes.append({"model": item.turn.model, "breakpoints": points})
    totals = entry.totals
    return BaselineEntry(
        totals.turns,
        totals.input_tokens,
        totals.cache_creation_input_tokens,
        totals.cache_read_input_tokens,
        totals.output_tokens,
        entry.cost_usd,
        totals.cache_hit_rate,
        tuple(prefixes),
        estimated,
    )


def _failure(
    nodeid: str, breaches: list[str], gate: GateResult, entry: TestEntry | None, ledger: Ledger, recorder: Recorder
) -> TokenBudgetError:
    rows = []
    costs = {id(item.turn): item.cost for item in entry.turns} if entry is not None else {}
    cache_by_turn = {item.turn.index: item.cache for item in entry.turns} if entry is not None else {}
    for turn in ledger.turns:
        cost = costs.get(id(turn))
        verdict = (cache_by_turn.get(turn.index) or {}).get("verdict", "")
        rows.append(
            [
                f"{turn.index}{'~' if turn.estimated else ''}",
                turn.model,
                f"{turn.input_tokens:,}",
                f"{turn.cache_creation_input_tokens:,}",
                f"{turn.cache_read_input_tokens:,}",
                f"{turn.output_tokens:,}",
                f"${cost.cost_usd:.6f}" if cost is not None else "n/a",
                verdict,
            ]
        )
    details = [f"- {line}" for line in [*breaches, *gate.failures]]
    details.append("where the tokens went:")
    details.extend("  " + line for line in where_tokens_went(rows))
    if any(t.estimated for t in ledger.turns):
        details.append(
            "~ estimated: the request changed since it was recorded (re-record with a key to measure it exactly)"
        )
    if gate.failures:
        fix = (
            f"if intended, accept it: pytest {shlex.quote(nodeid)} --token-budget --token-budget-update "
            "(then review the baseline's diff)"
        )
    else:
        fix = "reduce the tokens, or raise the budget in the marker or tokenbudget.yaml"
    what = "over its token budget" if breaches else "the change breaks the token budget gate"
    return TokenBudgetError(what, test=nodeid, file=str(recorder.cassette_path), details=details, fix=fix)
