"""The committed baseline, and the gate that compares a run with it.

``tokenbudget-baseline.json`` holds, per test, its token totals, cost, cache hit rate and the
fingerprints of its cached prefixes per turn (``schemas/baseline.schema.json``). It is written
sorted and indented, atomically, once per session (by the xdist controller), so its diff in a pull
request shows what changed; concurrent updates merge under a lock, ``<baseline>.lock``, and lose no
entry (:func:`update_baseline`). The gate fails a test when, against its entry:

* its cost grows by more than ``max_cost_increase`` (default +10%) and, when set, by more than
  ``max_cost_increase_usd``;
* its tokens grow by more than ``max_tokens_increase`` (off by default);
* its cache hit rate drops by more than ``max_hit_rate_drop`` (default 5 points);
* a cached prefix's fingerprint changed (``fail_on_prefix_change``, default on): every live
  conversation would rebuild its cache.

Falling past a threshold the other way is reported as "baseline stale", never silently passed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ._atomic import write_atomic
from ._validate import json_line_of, schema_problems
from ._version import __version__
from .budgets import Budget
from .errors import ConfigError, TokenBudgetError
from .prefix import Difference

__all__ = [
    "BaselineEntry",
    "CachedPoint",
    "CachedPrefix",
    "GateResult",
    "compare",
    "load_baseline",
    "merge_baseline",
    "update_baseline",
    "write_baseline",
]


@dataclass(frozen=True)
class CachedPoint:
    """A breakpoint whose prefix can cache: where it is, the prefix's fingerprint, its tokens."""

    path: str
    fingerprint: str
    tokens: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "fingerprint": self.fingerprint, "tokens": self.tokens}


@dataclass(frozen=True)
class CachedPrefix:
    """One turn's model and its breakpoints that can cache."""

    model: str
    breakpoints: tuple[CachedPoint, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "breakpoints": [point.as_json() for point in self.breakpoints]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CachedPrefix:
        points = tuple(
            CachedPoint(str(p["path"]), str(p["fingerprint"]), p.get("tokens")) for p in data.get("breakpoints") or ()
        )
        return cls(str(data.get("model")), points)


@dataclass(frozen=True)
class BaselineEntry:
    """One test's numbers as the baseline keeps them."""

    turns: int
    uncached_input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None
    cache_hit_rate: float
    cached_prefixes: tuple[CachedPrefix, ...] = ()
    estimated: bool = False

    @property
    def total_input_tokens(self) -> int:
        """All input tokens."""
        return self.uncached_input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def as_json(self) -> dict[str, Any]:
        """The entry as written (sorted keys are applied by the writer)."""
        out: dict[str, Any] = {
            "turns": self.turns,
            "input_tokens": self.uncached_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": float(self.cost_usd) if self.cost_usd is not None else None,
            "cache_hit_rate": round(self.cache_hit_rate, 6),
            "cached_prefixes": [p.as_json() for p in self.cached_prefixes],
        }
        if self.estimated:
            out["estimated"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BaselineEntry:
        """Read an entry written by :meth:`as_json`."""
        cost = data.get("cost_usd")
        return cls(
            turns=int(data["turns"]),
            uncached_input_tokens=int(data["input_tokens"]),
            cache_creation_input_tokens=int(data["cache_creation_input_tokens"]),
            cache_read_input_tokens=int(data["cache_read_input_tokens"]),
            output_tokens=int(data["output_tokens"]),
            cost_usd=Decimal(str(cost)) if cost is not None else None,
            cache_hit_rate=float(data["cache_hit_rate"]),
            cached_prefixes=tuple(CachedPrefix.from_json(p) for p in data.get("cached_prefixes") or ()),
            estimated=bool(data.get("estimated", False)),
        )


def load_baseline(path: Path) -> dict[str, BaselineEntry] | None:
    """Read the baseline; ``None`` when the file does not exist.

    Raises:
        ConfigError: the file is not valid JSON or breaks the schema (file, JSON path, fix).
    """
    from ._yaml import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, LoadProblem, decode, parse_json, read_bytes

    fix = "restore it from version control, or rewrite it: pytest --token-budget --token-budget-update"
    try:
        text = decode(read_bytes(path, max_bytes=MAX_CONFIG_BYTES))
        data = parse_json(text, max_depth=MAX_CONFIG_DEPTH)
    except FileNotFoundError:
        return None
    except LoadProblem as problem:
        raise ConfigError(
            "the token budget baseline cannot be read",
            file=f"{path}" + (f", line {problem.line}" if problem.line else ""),
            why=problem.why.replace("invalid JSON: ", "not valid JSON: ", 1),
            fix=fix if problem.why != "it is a directory, not a file" else "point --token-budget-baseline at a file",
        ) from None
    problems = schema_problems(data, None, "baseline.schema.json", locate=lambda at: json_line_of(text, at))
    if problems:
        first_line, first = problems[0]
        raise ConfigError(
            "the token budget baseline is invalid",
            file=f"{path}" + (f", line {first_line}" if first_line else ""),
            why=first,
            details=[f"also: line {n}: {message}" if n else f"also: {message}" for n, message in problems[1:4]],
            fix=fix,
        )
    return {test: BaselineEntry.from_json(entry) for test, entry in data["tests"].items()}


def write_baseline(path: Path, entries: Mapping[str, BaselineEntry]) -> None:
    """Write the baseline atomically: sorted, indented, one trailing newline."""
    document = {
        "schema_version": 1,
        "generated_by": f"pytest-tokenbudget {__version__}",
        "tests": {test: entries[test].as_json() for test in sorted(entries)},
    }
    write_atomic(path, json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@dataclass
class Merge:
    """What an update does to the baseline."""

    entries: dict[str, BaselineEntry]
    updated: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


def merge_baseline(
    old: Mapping[str, BaselineEntry] | None,
    new: Mapping[str, BaselineEntry],
    *,
    collected: Iterable[str],
    rootdir: Path,
    known: Mapping[str, BaselineEntry] | None = None,
    partial: Iterable[str] = (),
) -> Merge:
    """The baseline after an update: tests that ran replace their entries; gone tests are pruned.

    An entry is pruned when its test file no longer exists, or when its file was collected in
    this session and the test was not (renamed or deleted), unless the command line narrowed
    that file to some of its tests (``partial``, e.g. ``pytest file.py::test_one``). Entries of
    tests that exist but did not run (deselected, other files) are kept and listed as
    ``stale``: a partial run never drops what it did not see.

    ``known`` is the baseline as this run read it at its start (default: ``old``). Only an entry
    this run saw then, unchanged, may be pruned: under concurrent updates ``old`` is the file as
    it is when this run holds the lock, and an entry another run wrote meanwhile (new, or
    rewritten) reflects that run's collection, which this run's collection predates. Such an
    entry is kept (listed as ``stale``); the next update that sees it prunes it if its test is
    gone by then.
    """
    collected = set(collected)
    collected_files = {test.split("::")[0] for test in collected} - set(partial)
    seen = old if known is None else known
    merged = Merge(entries=dict(new), updated=sorted(new))
    for test, entry in (old or {}).items():
        if test in new:
            continue
        module = test.split("::")[0]
        gone = not (rootdir / module).exists() or (module in collected_files and test not in collected)
        if gone and (seen or {}).get(test) == entry:
            merged.pruned.append(test)
        else:
            merged.entries[test] = entry
            merged.stale.append(test)
    merged.pruned.sort()
    merged.stale.sort()
    return merged


# How long an update waits for another run's update of the same baseline (it holds the lock for
# one read, merge and write: milliseconds).
_LOCK_TIMEOUT = 60.0
# Test-only: seconds to sleep between reading the baseline and writing it, under the lock, so
# that a test can make two concurrent updates overlap for sure. Never set it otherwise.
_TEST_PAUSE_VARIABLE = "_TOKENBUDGET_TEST_UPDATE_PAUSE"


def update_baseline(
    path: Path,
    new: Mapping[str, BaselineEntry],
    *,
    collected: Iterable[str],
    rootdir: Path,
    known: Mapping[str, BaselineEntry],
    partial: Iterable[str] = (),
) -> Merge:
    """Merge this run's entries into the baseline on disk and write it, under a cross-process lock.

    Two runs of ``--token-budget-update`` at once (two CI jobs on one checkout, two terminals)
    must both land: the read, the merge and the atomic write happen while holding
    ``<baseline>.lock`` (``filelock``: released by the OS if the process dies), and the file is
    read again under the lock, so the merge starts from what the other run wrote, not from what
    this run read at its start (``known``, which only decides what may be pruned: see
    :func:`merge_baseline`).

    Raises:
        TokenBudgetError: the lock was not free within ``_LOCK_TIMEOUT`` seconds, or cannot be
            created (the lock file and the fix named).
        ConfigError: the baseline on disk is invalid.
    """
    import filelock

    lock_path = path.with_name(f"{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(lock_path, timeout=_LOCK_TIMEOUT)
        lock.acquire()
    except filelock.Timeout:
        raise TokenBudgetError(
            "the token budget baseline is locked by another run",
            file=str(lock_path),
            why=f"another --token-budget-update held the lock for more than {_LOCK_TIMEOUT:g} s; "
            f"this run's {len(new)} entr{'y was' if len(new) == 1 else 'ies were'} not written",
            fix=f"let the other run finish, then run this one again; if no other run is going, delete {lock_path}",
        ) from None
    except OSError as err:
        raise TokenBudgetError(
            "the token budget baseline cannot be locked",
            file=str(lock_path),
            why=str(err),
            fix="make the baseline's directory writable, or point --token-budget-baseline elsewhere",
        ) from None
    try:
        on_disk = load_baseline(path)
        pause = os.environ.get(_TEST_PAUSE_VARIABLE)
        if pause:
            time.sleep(float(pause))
        merged = merge_baseline(on_disk, new, collected=collected, rootdir=rootdir, known=known, partial=partial)
        write_baseline(path, merged.entries)
    finally:
        lock.release()
    return merged


@dataclass
class GateResult:
    """The gate's verdict on one test."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    prefix_change: list[str] = field(default_factory=list)


def _relative(new: Decimal | int, old: Decimal | int) -> float | None:
    return float((Decimal(new) - Decimal(old)) / Decimal(old)) if old else None


def compare(
    current: BaselineEntry,
    base: BaselineEntry,
    budget: Budget,
    *,
    first_change: tuple[int, Difference] | None = None,
    rebuild_cost: Callable[[str, int], Decimal | None] | None = None,
) -> GateResult:
    """Judge ``current`` against its baseline entry with the budget's thresholds.

    Args:
        current: this run's numbers.
        base: the baseline's numbers.
        budget: thresholds (``max_cost_increase``...), defaults applied.
        first_change: (turn, difference) of the first request that departs from its recording,
            when the run replayed a changed prompt: names the exact place a prefix changed.
        rebuild_cost: ``callable(model, tokens) -> Decimal | None``, the extra cost of writing
            ``tokens`` instead of reading them (to price a cache rebuild).
    """
    result = GateResult()
    mark = " (estimated)" if current.estimated else ""
    if current.cost_usd is not None and base.cost_usd is not None:
        increase = current.cost_usd - base.cost_usd
        relative = _relative(current.cost_usd, base.cost_usd)
        threshold = budget.gate_cost_increase
        floor = budget.max_cost_increase_usd
        change = (
            f"cost ${current.cost_usd:.6f}{mark} vs baseline ${base.cost_usd:.6f} "
            f"({'+' if increase >= 0 else '-'}${abs(increase):.6f}"
            + (f", {relative:+.1%}" if relative is not None else "")
            + ")"
        )
        if relative is not None and relative > threshold and (floor is None or increase > floor):
            result.failures.append(f"{change}: over the +{threshold:.0%} threshold")
        elif relative is not None and relative < -threshold and (floor is None or -increase > floor):
            result.notes.append(f"baseline stale: {change}; accept the saving with --token-budget-update")
        elif increase:
            result.notes.append(change)
    if budget.max_tokens_increase is not None:
        now = current.total_input_tokens + current.output_tokens
        before = base.total_input_tokens + base.output_tokens
        relative = _relative(now, before)
        if relative is not None and relative > budget.max_tokens_increase:
            result.failures.append(
                f"{now:,} tokens{mark} vs baseline {before:,} ({relative:+.1%}): over the "
                f"+{budget.max_tokens_increase:.0%} threshold"
            )
    drop = base.cache_hit_rate - current.cache_hit_rate
    if drop > budget.gate_hit_rate_drop:
        result.failures.append(
            f"cache hit rate {current.cache_hit_rate:.1%}{mark} vs baseline "
            f"{base.cache_hit_rate:.1%} (-{drop * 100:.1f} points): over the "
            f"{budget.gate_hit_rate_drop * 100:.0f}-point threshold"
        )
    elif -drop > budget.gate_hit_rate_drop:
        result.notes.append(
            f"baseline stale: cache hit rate rose to {current.cache_hit_rate:.1%} from {base.cache_hit_rate:.1%}"
        )
    changed = _changed_prefixes(base.cached_prefixes, current.cached_prefixes)
    if changed:
        turn, _model, point = changed[0]
        tokens = point.tokens or 0
        where = f"turn {turn}: the prefix cached at {point.path} ({tokens:,} tokens) is no longer sent"
        if first_change is not None:
            change_turn, difference = first_change
            where = f"turn {change_turn}: {difference.describe()}; " + where.split(": ", 1)[1]
        largest = max((p.tokens or 0, m) for _t, m, p in changed)
        extra = rebuild_cost(largest[1], largest[0]) if rebuild_cost else None
        cost = f", about ${extra:.6f} more per conversation" if extra is not None else ""
        lines = [
            where,
            f"every live conversation rebuilds its cache: {largest[0]:,} cached tokens thrown away per run{cost}",
        ]
        result.prefix_change.extend(lines)
        if budget.gate_prefix_change:
            result.failures.extend(lines)
        else:
            result.notes.extend(lines)
    return result


def _changed_prefixes(
    base: Sequence[CachedPrefix], current: Sequence[CachedPrefix]
) -> list[tuple[int, str, CachedPoint]]:
    """(turn, model, baseline breakpoint) for every cached baseline prefix the run no longer sends."""
    out = []
    for turn, (old, new) in enumerate(zip(base, current, strict=False)):
        sent = {p.fingerprint for p in new.breakpoints}
        for point in old.breakpoints:
            if point.fingerprint not in sent:
                out.append((turn, old.model, point))
    return out
