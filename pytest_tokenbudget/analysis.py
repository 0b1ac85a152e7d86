"""Cache analysis: is each turn's prefix byte-stable, what should the cache have done, and why it missed.

For every turn of a ledger, in order:

1. its prompt is flattened into the cache prefix the API sees
   (:func:`pytest_tokenbudget.cache_model.cache_layout`: earlier thinking blocks stripped where
   the model strips them, tool results cleared where the response says context editing cleared
   them);
2. the prefix is compared with the prefix of the previous turn of the same model (the cache is
   per model); where it does not extend it, the first difference is named: level, JSON path,
   character offset, before/after excerpts, and a guessed cause;
3. the cache model (:mod:`pytest_tokenbudget.cache_model`) replays the request at its recorded
   time and predicts its cache reads and writes. Token counts for a prefix come from the
   recording: the turn's own total input anchors the end of the prompt, and what earlier turns
   reported for the same prefix (same fingerprint) anchors its breakpoints; between anchors the
   count is estimated from characters, and marked as an estimate;
4. prediction and recording are compared into a one-word verdict with a one-line reason, and,
   where the API gave its own ``diagnostics.cache_miss_reason``, the two are set side by side.

After each turn the model's cache is corrected to what the recording shows happened, so one
surprise does not cascade into the verdicts of the turns after it.

Verdicts: ``hit``, ``write``, ``miss_expected``, ``miss_unexpected``, ``below_minimum``,
``expired``, ``prefix_changed``, ``warm_from_outside``, ``no_cache_control``.
"""

from __future__ import annotations

import bisect
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ._estimate import Estimate, RecordedTokens
from .cache_model import (
    CLEARED_PLACEHOLDER,
    LOOKBACK_BLOCKS,
    CacheEntry,
    CacheStore,
    cache_layout,
    cleared_tool_uses,
    minimum_cacheable,
    simulate,
    strips_thinking,
)
from .ledger import Ledger, Turn
from .prefix import TTL_SECONDS, Breakpoint, Difference, LayoutMemo, PromptLayout, first_difference

__all__ = [
    "VERDICTS",
    "BreakpointInfo",
    "CacheAnalysis",
    "Divergence",
    "TurnCache",
    "Verdict",
    "analyze",
    "apply_estimates",
]


class Verdict(enum.StrEnum):
    """What the cache did on a turn, judged against what it should have done."""

    HIT = "hit"
    WRITE = "write"
    MISS_EXPECTED = "miss_expected"
    MISS_UNEXPECTED = "miss_unexpected"
    BELOW_MINIMUM = "below_minimum"
    EXPIRED = "expired"
    PREFIX_CHANGED = "prefix_changed"
    WARM_FROM_OUTSIDE = "warm_from_outside"
    NO_CACHE_CONTROL = "no_cache_control"


VERDICTS = tuple(verdict.value for verdict in Verdict)

_API_LEVEL = {
    "model": "model_changed",
    "tools": "tools_changed",
    "system": "system_changed",
    "messages": "messages_changed",
    "settings": "messages_changed",
}
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}|\b\d{1,2}:\d{2}(:\d{2})?\b|\b1[6-9]\d{8}(\d{3})?\b")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# An estimated count agrees with the API within 1% or 8 tokens, whichever is larger (issue 13:
# first-write lengths are predicted to that precision).
_TOLERANCE = 0.01
_TOLERANCE_TOKENS = 8


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where a turn's prefix stops extending the previous turn's.

    Attributes:
        turn: the turn whose prefix changed.
        previous_turn: the turn it was compared with.
        level: ``model``, ``tools``, ``system``, ``messages`` or ``settings``.
        block: index of the first differing block.
        difference: path, offset and excerpts (``None`` when only a setting differs).
        cause: a guess at why (``a timestamp``, ``a UUID``...), if one fits.
        tokens_lost: tokens of the previous prefix from the divergence on (the part the cache
            cannot reuse), when known.
    """

    turn: int
    previous_turn: int
    level: str
    block: int
    difference: Difference | None
    cause: str | None
    tokens_lost: int | None = None

    @property
    def api_level(self) -> str:
        """The level in the API's own words: ``tools_changed``, ``system_changed``..."""
        return _API_LEVEL[self.level]

    def describe(self) -> str:
        """One line: turn, level, path, offset, excerpts, cause."""
        where = self.difference.describe() if self.difference else f"{self.level} settings changed"
        cause = f" (likely {self.cause})" if self.cause else ""
        return f"turn {self.turn}: prefix differs from turn {self.previous_turn} at {where}{cause}"


@dataclass(frozen=True, slots=True)
class BreakpointInfo:
    """A breakpoint of one turn, with what is known of its prefix."""

    level: str
    path: str
    ttl: str
    fingerprint: str
    automatic: bool
    tokens: int | None
    tokens_estimated: bool
    below_minimum: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``turns[].cache.breakpoints[]``)."""
        return {
            "level": self.level,
            "path": self.path,
            "ttl": self.ttl,
            "fingerprint": self.fingerprint,
            "automatic": self.automatic,
            "tokens": self.tokens,
            "tokens_estimated": self.tokens_estimated,
            "below_minimum": self.below_minimum,
        }


@dataclass(frozen=True, slots=True)
class TurnCache:
    """The cache analysis of one turn."""

    turn: int
    verdict: Verdict
    reason: str
    breakpoints: tuple[BreakpointInfo, ...]
    predicted_read: int | None
    predicted_write: int | None
    predicted_estimated: bool
    recorded_read: int
    recorded_write: int
    divergence: Divergence | None = None
    api_reason: str | None = None
    agrees_with_api: bool | None = None
    notes: tuple[str, ...] = ()
    estimated_usage: Mapping[str, Any] | None = None
    estimate_method: str | None = None
    estimated_model: str | None = None

    @property
    def level(self) -> str | None:
        """For a changed prefix, the level in the API's words."""
        return self.divergence.api_level if self.divergence and self.verdict == "prefix_changed" else None

    @property
    def matches_recording(self) -> bool:
        """Whether the predicted reads and writes equal the recorded ones (estimates: within 1% or 8 tokens)."""
        if self.predicted_read is None or self.predicted_write is None:
            return False
        return _close(self.predicted_read, self.recorded_read, self.predicted_estimated) and _close(
            self.predicted_write, self.recorded_write, self.predicted_estimated
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``turns[].cache``)."""
        out: dict[str, Any] = {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "breakpoints": [b.as_dict() for b in self.breakpoints],
            "predicted": {
                "cache_read_input_tokens": self.predicted_read,
                "cache_creation_input_tokens": self.predicted_write,
                "estimated": self.predicted_estimated,
            },
            "level": self.level,
        }
        if self.divergence is not None:
            difference = self.divergence.difference
            out["divergence"] = {
                "previous_turn": self.divergence.previous_turn,
                "level": self.divergence.level,
                "path": difference.path if difference else None,
                "offset": difference.offset if difference else None,
                "before": difference.before if difference else None,
                "after": difference.after if difference else None,
                "cause": self.divergence.cause,
                "tokens_lost": self.divergence.tokens_lost,
            }
        if self.api_reason is not None or self.agrees_with_api is not None:
            out["api"] = {"cache_miss_reason": self.api_reason, "agrees": self.agrees_with_api}
        if self.notes:
            out["notes"] = list(self.notes)
        if self.estimated_usage is not None:
            out["estimated"] = {"usage": dict(self.estimated_usage), "method": self.estimate_method}
        return out


def _close(predicted: int, recorded: int, estimated: bool) -> bool:
    if not estimated:
        return predicted == recorded
    return abs(predicted - recorded) <= max(_TOLERANCE_TOKENS, _TOLERANCE * max(predicted, recorded))


@dataclass
class CacheAnalysis:
    """The analysis of every turn of a ledger."""

    turns: list[TurnCache] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def prefix_stable(self) -> bool:
        """No turn's prefix departs from its predecessor's."""
        return not self.divergences

    def verdict_lines(self) -> list[str]:
        """One line per turn: ``turn N  verdict  reason``."""
        return [f"turn {t.turn:<3} {t.verdict:<17} {t.reason}" for t in self.turns]

    def by_turn(self, index: int) -> TurnCache:
        """The analysis of the turn with this ledger index."""
        return next(t for t in self.turns if t.turn == index)


# --------------------------------------------------------------------------------------------
# prefix comparison


def _settings_block_index(layout: PromptLayout, level: str) -> int:
    return layout.level_start(level)  # type: ignore[arg-type]


def prefix_divergence(previous: PromptLayout, current: PromptLayout) -> tuple[str, int, Difference | None] | None:
    """Where ``current``'s prefix first stops extending ``previous``'s (level, block, difference).

    ``None`` when ``current`` starts with every block of ``previous``, under the same settings.
    """
    if previous.model != current.model:
        return "model", 0, Difference("model", None, repr(previous.model), repr(current.model), "changed")
    if previous.settings["system"] != current.settings["system"]:
        level_start = _settings_block_index(current, "system")
        return (
            "model",
            level_start,
            _settings_difference("speed", previous.settings["system"], current.settings["system"]),
        )
    # The chain is cumulative: once two fingerprints differ, every later one does. Bisect.
    low, high = 0, min(len(previous.blocks), len(current.blocks))
    while low < high:
        middle = (low + high) // 2
        if previous.chain[middle] == current.chain[middle]:
            low = middle + 1
        else:
            high = middle
    first = low if low < min(len(previous.blocks), len(current.blocks)) else None
    messages_start = min(_settings_block_index(previous, "messages"), _settings_block_index(current, "messages"))
    if previous.settings["messages"] != current.settings["messages"] and (first is None or first >= messages_start):
        key = next(
            k
            for k in current.settings["messages"]
            if previous.settings["messages"].get(k) != current.settings["messages"].get(k)
        )
        if key != "images" or first is None:
            return (
                "settings",
                messages_start,
                _settings_difference(key, previous.settings["messages"], current.settings["messages"]),
            )
    if first is None:
        if len(current.blocks) >= len(previous.blocks):
            return None
        gone = previous.blocks[len(current.blocks)]
        return gone.level, gone.index, Difference(gone.path, None, "(block)", "", "removed")
    old, new = previous.blocks[first], current.blocks[first]
    if old.kind in ("thinking", "redacted_thinking") and old.path != new.path:
        # The block is no longer in the prefix: the model stripped it (or the client dropped it).
        return old.level, first, Difference(old.path, None, f"({old.kind} block)", "", "removed")
    if old.canonical == new.canonical:
        # Same block, different history before it: only a setting of its level differs.
        return new.level, first, None
    inner = first_difference(old.source, new.source)
    if inner is None:  # differs by role only (the block starts another message)
        difference = Difference(new.path.split(".content")[0] + ".role", None, "", "", "changed")
    else:
        path = new.path if inner.path == "$" else new.path + ("" if inner.path.startswith("[") else ".") + inner.path
        difference = Difference(path, inner.offset, inner.before, inner.after, inner.kind)
    return new.level, first, difference


def _settings_difference(key: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Difference:
    return Difference(key, None, repr(old.get(key)), repr(new.get(key)), "changed")


def _cleared(layout: PromptLayout, block: int) -> bool:
    source = layout.blocks[block].source if block < len(layout.blocks) else None
    return isinstance(source, Mapping) and source.get("content") == CLEARED_PLACEHOLDER


def _guess_cause(
    level: str, difference: Difference | None, previous: PromptLayout, current: PromptLayout, block: int
) -> str | None:
    if difference is None:
        return None
    if level == "settings" or level == "model":
        return f"{difference.path} changed"
    if difference.kind == "reordered":
        return "JSON key order changed (an object re-serialised or rebuilt)"
    if level == "tools":
        old = sorted(b.canonical for b in previous.blocks if b.level == "tools")
        new = sorted(b.canonical for b in current.blocks if b.level == "tools")
        if old == new:
            return "the tool list was reordered (built from a set or a dict?)"
        if "input_schema" in difference.path:
            return "a tool schema changed"
    if _cleared(current, block) and not _cleared(previous, block):
        return "context editing cleared this tool result (the response's context_management.applied_edits)"
    text = difference.before + " " + difference.after
    if _UUID.search(difference.after) and _UUID.search(difference.before):
        return "a UUID or random id in the prompt"
    if _TIMESTAMP.search(difference.after) or (_TIMESTAMP.search(text) and difference.offset is not None):
        return "a timestamp or date in the prompt"
    if block < len(previous.blocks) and previous.blocks[block].kind in ("thinking", "redacted_thinking"):
        if strips_thinking(current.model):
            return (
                f"a thinking block was stripped from an earlier assistant turn ({current.model} strips them "
                "on a user turn that is not a tool result)"
            )
        return "a thinking block was stripped from an earlier assistant turn"
    if difference.kind == "removed" and level == "messages":
        return "earlier messages were removed or trimmed"
    return None


# --------------------------------------------------------------------------------------------
# token anchors


class _Cumulative(Sequence[int]):
    """Cumulative input tokens per block, computed when asked: exact at anchors, interpolated between."""

    def __init__(self, canonical_ends: Sequence[int], anchors: list[tuple[int, int]]) -> None:
        self._ends = canonical_ends
        self._anchors = anchors
        self._positions = [index for index, _tokens in anchors]

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> int:  # type: ignore[override]
        size = len(self._ends)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(index)
        k = bisect.bisect_left(self._positions, index)
        if self._positions[k] == index:
            return self._anchors[k][1]
        (left, left_tokens), (right, right_tokens) = self._anchors[k - 1], self._anchors[k]
        left_chars = self._ends[left] if left >= 0 else 0
        span = self._ends[right] - left_chars
        share = (self._ends[index] - left_chars) / span if span else 1.0
        return left_tokens + round((right_tokens - left_tokens) * share)


class _Estimated(Sequence[bool]):
    """Whether each block's cumulative count is an estimate."""

    def __init__(self, exact: set[int], size: int, last_estimated: bool) -> None:
        self._exact = exact
        self._size = size
        self._last_estimated = last_estimated

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> bool:  # type: ignore[override]
        if index < 0:
            index += self._size
        if index == self._size - 1 and self._last_estimated:
            return True
        return index not in self._exact


class _Tokens:
    """What the recording says about prefix token counts.

    ``known`` maps a prefix fingerprint to the tokens the API reported for it (a read, or a
    read plus a write). ``tail`` holds, per model, the input tokens that follow the last block
    (the API counts a few tokens outside the blocks: 4 in the real Sonnet 3.5 recordings), learnt
    from a turn whose breakpoint sat on its last block.
    """

    def __init__(self) -> None:
        self.known: dict[str, int] = {}
        self.tail: dict[str, int] = {}

    def cumulative(self, layout: PromptLayout, total: int) -> tuple[_Cumulative, _Estimated]:
        """Cumulative tokens per block and, per block, whether the count is an estimate.

        Anchors (exact counts) are the end of the prompt (the turn's total less the model's tail)
        and every position near a breakpoint whose prefix an earlier turn reported. Only those
        positions can be read or written, so only they are looked up; other positions are
        interpolated on characters when asked for.
        """
        blocks = layout.blocks
        if not blocks:
            return _Cumulative((), [(-1, 0)]), _Estimated(set(), 0, False)
        last = len(blocks) - 1
        candidates = sorted(
            {pos for p in layout.breakpoints for pos in range(max(0, p.block - LOOKBACK_BLOCKS + 1), p.block + 1)}
            | {last}
        )
        anchors: list[tuple[int, int]] = [(-1, 0)]
        for i in candidates:
            value = self.known.get(layout.chain[i])
            if value is not None and anchors[-1][1] <= value <= total:
                anchors.append((i, value))
        end_known = anchors[-1][0] == last
        if not end_known:
            tail = self.tail.get(layout.model)
            anchors.append((last, max(anchors[-1][1], total - (tail or 0))))
        exact = {index for index, _tokens in anchors[1:]}
        last_estimated = not end_known and layout.model not in self.tail
        return _Cumulative(layout.canonical_ends, anchors), _Estimated(exact, len(blocks), last_estimated)

    def learn_tail(self, layout: PromptLayout, total: int, cached_to_end: int) -> None:
        """Learn the model's tail from a turn whose cache covered its last block."""
        tail = total - cached_to_end
        if 0 <= tail <= 64:
            self.tail[layout.model] = tail


# --------------------------------------------------------------------------------------------
# the analysis


def analyze(
    ledger: Ledger | Sequence[Turn],
    *,
    changed: Mapping[int, Mapping[str, Any]] | None = None,
    counted: Mapping[int, int] | None = None,
) -> CacheAnalysis:
    """Analyse the cache behaviour of every turn (see the module docstring).

    Args:
        ledger: a ledger, or its turns in order.
        changed: turns whose request departs from its recording (replayed anyway), by turn
            index, each with the *recorded* request body. Their usage is estimated
            (:mod:`pytest_tokenbudget._estimate`): unchanged blocks keep the recording's exact
            counts, changed ones are counted at the recording's own density for their kind, and
            the cache model decides what is read and written. The estimate is in
            :attr:`TurnCache.estimated_usage`, with its method.
        counted: for changed turns, exact input tokens from the count_tokens API (used
            instead of the character estimate).
    """
    turns = ledger.turns if isinstance(ledger, Ledger) else list(ledger)
    changed = changed or {}
    counted = counted or {}
    memo = LayoutMemo()  # shared by both passes: each block is canonicalised once
    recorded: tuple[RecordedTokens, _Tokens] | None = None
    if changed:
        recorded = _recorded_tokens(turns, changed, memo)

    def estimate_of(turn: Turn, layout: PromptLayout) -> Estimate | None:
        if turn.index not in changed or recorded is None:
            return None
        counts, anchors = recorded
        if turn.index in counted:
            total = counted[turn.index]
            return Estimate(total, (), (), f"count_tokens API: {total:,} input tokens")
        tail = anchors.tail.get(layout.model, anchors.tail.get(_recorded_model(turn, changed), 0))
        return counts.estimate(layout, recorded_key=turn.index, known=anchors.known, tail=tail)

    return _run(turns, lambda turn: turn.request, memo, estimate_of)


def apply_estimates(ledger: Ledger, analysis: CacheAnalysis) -> Ledger:
    """``ledger`` with the usage of changed turns replaced by the analysis' estimates.

    Each estimated turn keeps its recorded usage in ``recorded_usage`` and says how it was
    estimated in ``estimate_method``; it is priced as it is asked now: at the model the request
    names (when it changed), with the ``speed`` and ``service_tier`` it asks for. Other turns
    are the same objects.
    """
    turns = list(ledger.turns)
    for result in analysis.turns:
        if result.estimated_usage is not None:
            turn = turns[result.turn]
            usage = {**turn.usage, **result.estimated_usage}
            request = turn.request if isinstance(turn.request, Mapping) else {}
            speed = request.get("speed")
            if speed is not None:
                usage["speed"] = speed
            elif usage.get("speed") == "fast":
                usage["speed"] = "standard"  # fast mode is asked per request: no longer asked
            if request.get("service_tier") == "standard_only" and usage.get("service_tier") == "priority":
                usage["service_tier"] = "standard"
            turns[result.turn] = replace(
                turn,
                model=result.estimated_model or turn.model,
                usage=usage,
                estimate_method=result.estimate_method,
                recorded_usage=turn.usage,
            )
    return Ledger(turns, ledger.exchanges, ledger.source)


def _run(
    turns: Sequence[Turn],
    body_of: Callable[[Turn], Any],
    memo: LayoutMemo,
    estimate_of: Callable[[Turn, PromptLayout], Estimate | None] | None = None,
    tokens: _Tokens | None = None,
    layouts: dict[int, PromptLayout] | None = None,
) -> CacheAnalysis:
    """One pass over the turns: each request's layout, its cache outcome and verdict, in order."""
    analysis = CacheAnalysis()
    store = CacheStore()
    tokens = tokens if tokens is not None else _Tokens()
    previous_by_model: dict[str, tuple[int, PromptLayout, Sequence[int]]] = {}
    last_time: dict[str, float] = {}
    for turn in turns:
        raw = body_of(turn)
        request = raw if isinstance(raw, Mapping) else None
        if request is None or not isinstance(request.get("messages"), list):
            analysis.turns.append(
                TurnCache(
                    turn.index,
                    Verdict.MISS_EXPECTED,
                    "request body not available",
                    (),
                    None,
                    None,
                    True,
                    turn.cache_read_input_tokens,
                    turn.cache_creation_input_tokens,
                )
            )
            continue
        body = dict(request)
        body.setdefault("model", turn.requested_model or turn.model)
        layout = cache_layout(body, memo, cleared=cleared_tool_uses(turn.applied_edits))
        if layouts is not None:
            layouts[turn.index] = layout
        estimate = estimate_of(turn, layout) if estimate_of is not None else None
        result = _analyse_turn(turn, layout, store, tokens, previous_by_model, last_time, estimate)
        analysis.turns.append(result)
        if result.divergence is not None:
            analysis.divergences.append(result.divergence)
    _flag_unread_breakpoints(analysis, turns)
    return analysis


def _recorded_model(turn: Turn, changed: Mapping[int, Mapping[str, Any]]) -> str:
    return str(changed[turn.index].get("model") or turn.requested_model or turn.model)


def _recorded_tokens(
    turns: Sequence[Turn], changed: Mapping[int, Mapping[str, Any]], memo: LayoutMemo
) -> tuple[RecordedTokens, _Tokens]:
    """A pass over the requests as they were recorded: the exact counts the recording gives
    (anchors by prefix fingerprint, each model's tail) and the densities fitted to them."""
    tokens = _Tokens()
    layouts: dict[int, PromptLayout] = {}
    _run(turns, lambda turn: changed.get(turn.index, turn.request), memo, tokens=tokens, layouts=layouts)
    counts = RecordedTokens()
    by_index = {turn.index: turn for turn in turns}
    # Exact counts by prefix fingerprint: cache reads and writes, and each prompt's end (its turn's
    # input less the model's tail), which a later turn that extends the prompt passes through.
    exact = dict(tokens.known)
    for index, layout in layouts.items():
        if layout.blocks:
            total = by_index[index].total_input_tokens - tokens.tail.get(layout.model, 0)
            exact.setdefault(layout.chain[-1], total)
    for index, layout in layouts.items():
        if layout.blocks:
            counts.add(index, layout, [(i, exact[fp]) for i, fp in enumerate(layout.chain) if fp in exact])
    counts.fit()
    return counts, tokens


def _flag_unread_breakpoints(analysis: CacheAnalysis, turns: Sequence[Turn]) -> None:
    """Note breakpoints that write on every turn yet are never read by a later one.

    Such a breakpoint sits on content that changes each turn (a timestamp, a counter) or too far
    from the next turn's breakpoints: it costs the write premium and saves nothing.
    """
    read: set[str] = set()
    seen_paths: dict[str, list[int]] = {}
    for position, result in enumerate(analysis.turns):
        for info in result.breakpoints:
            seen_paths.setdefault(info.path, []).append(position)
        if result.verdict == "hit":
            read.update(info.fingerprint for info in result.breakpoints)
    fingerprints_by_path: dict[str, set[str]] = {}
    for result in analysis.turns:
        for info in result.breakpoints:
            fingerprints_by_path.setdefault(info.path, set()).add(info.fingerprint)
    for path, positions in seen_paths.items():
        fingerprints = fingerprints_by_path[path]
        if len(positions) >= 3 and len(fingerprints) == len(positions) and not (fingerprints & read):
            for position in positions:
                result = analysis.turns[position]
                note = (
                    f"breakpoint at {path} changes every turn ({len(positions)} turns, "
                    f"{len(fingerprints)} different prefixes): it writes and is never read"
                )
                analysis.turns[position] = TurnCache(**{**_fields(result), "notes": (*result.notes, note)})


def _fields(result: TurnCache) -> dict[str, Any]:
    return {name: getattr(result, name) for name in TurnCache.__slots__}


def _analyse_turn(
    turn: Turn,
    layout: PromptLayout,
    store: CacheStore,
    tokens: _Tokens,
    previous_by_model: dict[str, tuple[int, PromptLayout, Sequence[int]]],
    last_time: dict[str, float],
    estimate: Estimate | None = None,
) -> TurnCache:
    model_key = layout.model
    total = turn.total_input_tokens if estimate is None else estimate.total
    cumulative: Sequence[int]
    estimated: Sequence[bool]
    extra = 0
    if estimate is not None and estimate.cumulative:
        cumulative, estimated = estimate.cumulative, [not exact for exact in estimate.exact]
        extra = max(0, estimate.total - cumulative[-1])
    else:
        cumulative, estimated = tokens.cumulative(layout, total)
    minimum, minimum_sure = minimum_cacheable(layout.model)
    now = turn.recorded_at if turn.recorded_at is not None else last_time.get(model_key, 0.0) + 1.0
    notes: list[str] = []
    if not minimum_sure:
        notes.append(f"UNSURE: minimum cacheable length of {layout.model} taken as {minimum:,}")
    if turn.recorded_at is None:
        notes.append("no recorded time: TTLs judged as if turns were 1 s apart")

    divergence = None
    previous = previous_by_model.get(model_key)
    if previous is not None:
        found = prefix_divergence(previous[1], layout)
        if found is not None:
            level, block, difference = found
            prev_cum = previous[2]
            lost = (prev_cum[-1] - (prev_cum[block - 1] if block > 0 else 0)) if prev_cum else None
            divergence = Divergence(
                turn.index,
                previous[0],
                level,
                block,
                difference,
                _guess_cause(level, difference, previous[1], layout, block),
                lost,
            )
    infos = tuple(
        BreakpointInfo(
            p.level,
            p.path,
            p.ttl,
            p.fingerprint,
            p.automatic,
            cumulative[p.block] if cumulative else None,
            estimated[p.block] if estimated else True,
            bool(cumulative) and cumulative[p.block] < minimum,
        )
        for p in layout.breakpoints
    )
    recorded_read = turn.cache_read_input_tokens
    recorded_write = turn.cache_creation_input_tokens
    # What the store held before this turn, where it matters: near the breakpoints, and
    # whether anything was alive at all (a changed prefix only costs when something was).
    before = _snapshot(layout, store)
    parallel = _parallel_gap(layout, store, now)
    anything_alive = divergence is not None and any(e.expires_at > now for e in store.entries.values())
    if not layout.breakpoints:
        previous_by_model[model_key] = (turn.index, layout, cumulative)
        last_time[model_key] = now
        if estimate is not None:
            notes.append(f"request changed since recording: usage estimated ({estimate.method})")
            result = _finish(
                turn,
                "no_cache_control",
                "no cache_control on any block: nothing is cached",
                infos,
                0,
                0,
                False,
                divergence,
                notes,
            )
            usage = {
                "input_tokens": total,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": turn.output_tokens,
            }
            return _estimated(result, estimate, usage, 0, 0)
        if recorded_read or recorded_write:
            verdict, reason = (
                "warm_from_outside",
                (
                    f"no cache_control, yet the API read {recorded_read:,} and wrote {recorded_write:,} tokens "
                    "(a breakpoint the API added itself, e.g. after a server tool result?)"
                ),
            )
        else:
            verdict, reason = "no_cache_control", "no cache_control on any block: nothing is cached"
        return _finish(turn, verdict, reason, infos, 0, 0, False, divergence, notes)

    outcome = simulate(
        layout, cumulative, store, now, minimum=minimum, extra_input_tokens=extra, readable_from=turn.responded_at
    )
    predicted_read = outcome.cache_read_input_tokens
    predicted_write = outcome.cache_creation_input_tokens
    estimated_usage = None
    if estimate is not None:
        # No recording of this request exists: the model's prediction stands in for it.
        recorded_read, recorded_write = predicted_read, predicted_write
        estimated_usage = {**outcome.usage(), "output_tokens": turn.output_tokens}
        notes.append(f"request changed since recording: usage estimated ({estimate.method})")
    estimate_flags = [estimated[p.block] for p in outcome.written]
    if outcome.hit_block is not None:
        estimate_flags.append(
            estimated[outcome.hit_block]
            and store.entries[layout.chain[outcome.hit_block]].tokens
            != tokens.known.get(layout.chain[outcome.hit_block])
        )
    predicted_estimated = any(estimate_flags)

    verdict, reason = _verdict(
        turn,
        layout,
        outcome,
        cumulative,
        minimum,
        divergence,
        predicted_read,
        recorded_read,
        recorded_write,
        before,
        now,
        anything_alive,
        parallel,
    )
    if verdict != "below_minimum":
        notes.extend(
            f"breakpoint at {p.path} caches nothing: its prefix, {cumulative[p.block]:,} tokens, is below "
            f"the minimum of {minimum:,}"
            for p in outcome.below_minimum
        )
    if estimate is None:
        _learn(turn, layout, outcome, tokens, store, cumulative, minimum, now, recorded_read, recorded_write)
    previous_by_model[model_key] = (turn.index, layout, cumulative)
    last_time[model_key] = now
    result = _finish(
        turn, verdict, reason, infos, predicted_read, predicted_write, predicted_estimated, divergence, notes
    )
    if estimate is not None and estimated_usage is not None:
        result = _estimated(result, estimate, estimated_usage, predicted_read, predicted_write)
    return result


def _estimated(result: TurnCache, estimate: Estimate, usage: Mapping[str, Any], read: int, write: int) -> TurnCache:
    """``result`` of a changed request: its estimated usage stands in for the recording."""
    return TurnCache(
        **{
            **_fields(result),
            "estimated_usage": usage,
            "estimate_method": estimate.method,
            "estimated_model": estimate.model,
            "recorded_read": read,
            "recorded_write": write,
        }
    )


def _verdict(
    turn: Turn,
    layout: PromptLayout,
    outcome: Any,
    cumulative: Sequence[int],
    minimum: int,
    divergence: Divergence | None,
    predicted_read: int,
    recorded_read: int,
    recorded_write: int,
    before: Mapping[str, tuple[float, int]],
    now: float,
    anything_alive: bool,
    parallel: float | None = None,
) -> tuple[str, str]:
    hit_block = outcome.hit_block
    if predicted_read and recorded_read:
        where = layout.blocks[hit_block].path if hit_block is not None else "?"
        extra = "" if recorded_read == predicted_read else f" (model expected {predicted_read:,})"
        if divergence is not None:
            extra += f"; the rest was not reusable: {divergence.api_level}: {_short(divergence)}"
        elif outcome.expired_blocks:
            block = layout.blocks[outcome.expired_blocks[-1]]
            extra += f"; the entry at {block.path} had expired{_expired_gap(layout, before, now)}"
        by_api = [p for p in outcome.written if p.by_api]
        if by_api and recorded_write:
            extra += f"; wrote {recorded_write:,} at {', '.join(_label(p) for p in outcome.written)}"
        return "hit", f"read {recorded_read:,} cached tokens up to {where}{extra}"
    if predicted_read and not recorded_read:
        where = layout.blocks[hit_block].path if hit_block is not None else "?"
        return "miss_unexpected", (
            f"expected to read {predicted_read:,} tokens cached up to {where}, "
            f"but the API read none and wrote {recorded_write:,}"
        )
    if recorded_read:
        return "warm_from_outside", (
            f"read {recorded_read:,} tokens no earlier turn of this recording wrote: "
            "the cache was warm from outside (an earlier run or another process)"
        )
    # Neither predicted nor recorded a read.
    if divergence is not None and anything_alive:
        lost = f"; {divergence.tokens_lost:,} cached tokens cannot be reused" if divergence.tokens_lost else ""
        return "prefix_changed", f"{divergence.api_level}: {_short(divergence)}{lost}"
    if outcome.hit_expired:
        gap = _expired_gap(layout, before, now)
        return "expired", f"the cached prefix expired before this turn{gap}; rewrote {recorded_write:,} tokens"
    if not outcome.written and outcome.below_minimum:
        point = outcome.below_minimum[-1]
        return "below_minimum", (
            f"breakpoint at {point.path} caches nothing: its prefix, "
            f"{cumulative[point.block]:,} tokens, is below {layout.model}'s minimum of "
            f"{minimum:,}"
        )
    if recorded_write:
        points = ", ".join(_label(p) for p in outcome.written) or "its breakpoints"
        if parallel is not None:
            return "write", (
                f"wrote {recorded_write:,} tokens at {points}: sent {parallel:,.1f} s before the response of "
                "another request for the same prefix came, so it could not read that one's write "
                "(parallel requests miss)"
            )
        return "write", f"first write: {recorded_write:,} tokens cached at {points}"
    if outcome.written:
        return "miss_unexpected", (
            f"expected to write {outcome.cache_creation_input_tokens:,} tokens at "
            f"{outcome.written[-1].path}, but the API wrote none"
        )
    return "miss_expected", "nothing cached to read, nothing to write"


def _label(point: Breakpoint) -> str:
    if point.by_api:
        return f"{point.path} ({point.ttl}, the API's own breakpoint after a server tool result)"
    return f"{point.path} ({point.ttl})"


def _parallel_gap(layout: PromptLayout, store: CacheStore, now: float) -> float | None:
    """Seconds until an entry this turn's lookback reaches became readable, when one exists that a
    request running in parallel wrote (it started later but finished first, or had not finished
    when this turn started)."""
    gaps = []
    for point in layout.breakpoints:
        for pos in range(point.block, max(-1, point.block - LOOKBACK_BLOCKS), -1):
            entry = store.entries.get(layout.chain[pos])
            if entry is None or entry.expires_at <= now:
                continue
            if entry.written_at > now:
                gaps.append(entry.written_at - now if entry.readable_from is None else entry.readable_from - now)
            elif entry.readable_from is not None and entry.readable_from > now:
                gaps.append(entry.readable_from - now)
    return max(gaps) if gaps else None


def _snapshot(layout: PromptLayout, store: CacheStore) -> dict[str, tuple[float, int]]:
    """(expiry, tokens) of the store's entries at the positions this turn's lookback reaches."""
    out = {}
    for point in layout.breakpoints:
        for pos in range(point.block, max(-1, point.block - LOOKBACK_BLOCKS), -1):
            entry = store.entries.get(layout.chain[pos])
            if entry is not None:
                out[entry.fingerprint] = (entry.expires_at, entry.tokens)
    return out


def _expired_gap(layout: PromptLayout, before: Mapping[str, tuple[float, int]], now: float) -> str:
    for point in reversed(layout.breakpoints):
        for pos in range(point.block, max(-1, point.block - LOOKBACK_BLOCKS), -1):
            entry = before.get(layout.chain[pos])
            if entry is not None and entry[0] <= now:
                return f" (it expired {now - entry[0]:,.0f} s before the turn started)"
    return ""


def _short(divergence: Divergence) -> str:
    difference = divergence.difference
    if difference is None:
        return f"{divergence.level} settings changed since turn {divergence.previous_turn}"
    cause = f", likely {divergence.cause}" if divergence.cause else ""
    return f"{difference.describe()} (since turn {divergence.previous_turn}{cause})"


def _learn(
    turn: Turn,
    layout: PromptLayout,
    outcome: Any,
    tokens: _Tokens,
    store: CacheStore,
    cumulative: Sequence[int],
    minimum: int,
    now: float,
    recorded_read: int,
    recorded_write: int,
) -> None:
    """Record what the turn reveals about prefix tokens, and make the store match the recording."""
    hit = outcome.hit_block
    if recorded_read and hit is None:
        hit = _closest_position(layout, cumulative, recorded_read)
        ttl = next((p.ttl for p in layout.breakpoints if p.block >= hit), "5m")
        store.entries[layout.chain[hit]] = CacheEntry(
            layout.chain[hit], recorded_read, ttl, now + TTL_SECONDS[ttl], now
        )
    if recorded_read and hit is not None:
        tokens.known[layout.chain[hit]] = recorded_read
        store.entries[layout.chain[hit]].tokens = recorded_read
        if hit == len(layout.blocks) - 1 and not recorded_write:
            tokens.learn_tail(layout, turn.total_input_tokens, recorded_read)
    if not recorded_read and outcome.hit_block is not None:
        store.entries.pop(layout.chain[outcome.hit_block], None)
    written: Sequence[Breakpoint] = outcome.written
    if not recorded_write:
        # The API wrote nothing: forget what the model wrote, but not the entry the API read
        # (a prefix warm from outside is alive from this turn on).
        read_at = layout.chain[hit] if recorded_read and hit is not None else None
        for point in written:
            if point.fingerprint != read_at:
                store.entries.pop(point.fingerprint, None)
        return
    if not written:
        # The model wrote nothing (below its minimum, or it expected a read) but the API did:
        # believe the API, which wrote past what it read.
        read_to = hit if recorded_read else None
        written = [p for p in layout.breakpoints if read_to is None or p.block > read_to][-1:]
        if not written:
            return
        for point in written:
            store.entries[point.fingerprint] = CacheEntry(
                point.fingerprint,
                recorded_read + recorded_write,
                point.ttl,
                now + TTL_SECONDS[point.ttl],
                now,
                turn.responded_at,
            )
    last = written[-1]
    tokens.known[last.fingerprint] = recorded_read + recorded_write
    if last.block == len(layout.blocks) - 1:
        tokens.learn_tail(layout, turn.total_input_tokens, recorded_read + recorded_write)
    store.entries[last.fingerprint].tokens = recorded_read + recorded_write
    one_hour = turn.cache_write_1h_tokens
    top_1h = [p for p in written if p.ttl == "1h"]
    if one_hour and top_1h and top_1h[-1] is not last:
        tokens.known[top_1h[-1].fingerprint] = recorded_read + one_hour
        store.entries[top_1h[-1].fingerprint].tokens = recorded_read + one_hour


def _closest_position(layout: PromptLayout, cumulative: Sequence[int], target: int) -> int:
    candidates = {pos for p in layout.breakpoints for pos in range(p.block, max(-1, p.block - LOOKBACK_BLOCKS), -1)}
    return min(candidates, key=lambda pos: (abs(cumulative[pos] - target), -pos))


def _finish(
    turn: Turn,
    verdict: str,
    reason: str,
    infos: tuple[BreakpointInfo, ...],
    predicted_read: int | None,
    predicted_write: int | None,
    predicted_estimated: bool,
    divergence: Divergence | None,
    notes: list[str],
) -> TurnCache:
    api_reason, agrees = _api_side(turn, verdict, divergence)
    if api_reason is not None and agrees is False:
        notes.append(f"the API says {api_reason}, this analysis says {verdict}")
    return TurnCache(
        turn=turn.index,
        verdict=Verdict(verdict),
        reason=reason,
        breakpoints=infos,
        predicted_read=predicted_read,
        predicted_write=predicted_write,
        predicted_estimated=predicted_estimated,
        recorded_read=turn.cache_read_input_tokens,
        recorded_write=turn.cache_creation_input_tokens,
        divergence=divergence,
        api_reason=api_reason,
        agrees_with_api=agrees,
        notes=tuple(notes),
    )


def _api_side(turn: Turn, verdict: str, divergence: Divergence | None) -> tuple[str | None, bool | None]:
    """The API's cache_miss_reason type, and whether our analysis agrees with it."""
    if not turn.has_diagnostics:
        return None, None
    reason = turn.cache_miss_reason
    if turn.diagnostics is None:
        # No divergence (or the first turn): we agree unless we found a change that matters.
        return "null", verdict != "prefix_changed"
    if reason is None:
        return "pending", None
    kind = str(reason.get("type")) if isinstance(reason, Mapping) else str(reason)
    if kind in ("previous_message_not_found", "unavailable"):
        return kind, None
    ours = divergence.api_level if divergence is not None else None
    return kind, ours == kind
