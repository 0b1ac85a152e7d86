"""Run state: settings, per-test recordings and results. Knows nothing of pytest."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cassette import Cassette, load_cassette
from .ledger import Ledger, Turn

if TYPE_CHECKING:
    from .pricing import Pricer
    from .report import Report
from .record import PLACEHOLDER_API_KEY, Recorder, RecordMode

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-\[\]=,+@]")


@dataclass(frozen=True)
class Settings:
    """Resolved options.

    Attributes:
        record_mode: when to record.
        cassette_dir: where cassettes live (absolute).
        allow_unused: do not fail a test that leaves recordings unplayed.
        report: ``--token-budget`` was given.
        rootdir: pytest's rootdir, for relative paths in messages.
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


def cassette_path(settings: Settings, module: Path, test_name: str, class_name: str | None = None) -> Path:
    """``<cassette_dir>/<module stem>/<Class.>test_name.yaml``, with unsafe characters replaced."""
    name = f"{class_name}.{test_name}" if class_name else test_name
    return settings.cassette_dir / module.stem / (_UNSAFE.sub("_", name) + ".yaml")


def record_command(nodeid: str, mode: str) -> str:
    """The command that re-runs one test in a record mode."""
    return f"pytest {shlex.quote(nodeid)} --token-budget-record={mode}"


@dataclass
class TestResult:
    """What one test left behind: its ledger and cassette."""

    nodeid: str
    cassette: Path
    ledger: Ledger
    recorded: bool
    cache: list[dict[str, Any]] | None = None

    def to_wire(self) -> dict[str, Any]:
        """A JSON-able form, for xdist workers to send to the controller."""
        return {
            "nodeid": self.nodeid,
            "cassette": str(self.cassette),
            "recorded": self.recorded,
            "turns": [_turn_to_wire(t) for t in self.ledger.turns],
            "cache": self.cache,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> TestResult:
        """Rebuild a result sent by :meth:`to_wire`."""
        turns = [Turn(**turn) for turn in data["turns"]]
        return cls(data["nodeid"], Path(data["cassette"]), Ledger(turns), bool(data["recorded"]), data.get("cache"))


_WIRE_FIELDS = tuple(f.name for f in fields(Turn) if f.name != "request")


def _turn_to_wire(turn: Turn) -> dict[str, Any]:
    return {name: getattr(turn, name) for name in _WIRE_FIELDS}


@dataclass
class RunState:
    """Everything the session collects."""

    settings: Settings
    results: dict[str, TestResult] = field(default_factory=dict)
    _pricer: Pricer | None = None

    @property
    def pricer(self) -> Pricer:
        """The session's pricer (one instant for "now" pricing, for the whole run)."""
        if self._pricer is None:
            from .pricing import Pricer

            self._pricer = Pricer(override_files=self.settings.price_files, timestamp_policy=self.settings.price_at)
        return self._pricer

    def display_id(self, result: TestResult) -> str:
        """A cassette path relative to the rootdir when possible."""
        try:
            return str(result.cassette.relative_to(self.settings.rootdir))
        except ValueError:
            return str(result.cassette)

    def report(self) -> Report:
        """The priced report of every test that made API turns, in node-id order."""
        from .report import build_report

        entries = [(r.nodeid, self.display_id(r), r.ledger, r.cache) for _, r in sorted(self.results.items())]
        return build_report(entries, self.pricer)


def open_recorder(settings: Settings, nodeid: str, path: Path) -> Recorder:
    """A recorder for one test, its cassette loaded when it exists.

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
