"""Run state: settings, per-test recordings and results. Knows nothing of pytest."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .cassette import Cassette, load_cassette
from .ledger import Ledger
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


@dataclass
class RunState:
    """Everything the session collects."""

    settings: Settings
    results: dict[str, TestResult] = field(default_factory=dict)


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
