"""Anthropic's prompt-caching rules as a model: what a request reads and writes.

One implementation serves two callers: the emulator (which bills its own responses with it) and
the cache analysis (which predicts what a recorded run should have read and written). The rules,
as Anthropic's prompt-caching docs describe them:

* Writes happen only at breakpoints: each breakpoint writes one entry for the prefix ending there.
* Reads: from each breakpoint, walk back one block at a time, at most 20 positions (the
  breakpoint itself is the first), looking for an entry an earlier request wrote.
* Below the model's minimum cacheable length nothing is written; no error.
* An entry lives 5 minutes (or 1 hour), counted from the start of the request that wrote or
  last read it; a hit refreshes it.
* Billing: A = tokens up to the highest hit; B = the highest 1h breakpoint after A (1h writes
  B - A); C = the last breakpoint (5m writes C - B).

UNSURE (the docs do not say), said here rather than guessed silently:

* how the minimum applies with several breakpoints: here the whole prefix up to each breakpoint
  must reach it;
* the minimum for Fable 5.2, Mythos 5.2, Haiku 5.5 and Sonnet 5.5 (:func:`minimum_cacheable`
  returns ``sure=False`` and the nearest documented value);
* what counts as one block for the lookback (see :mod:`pytest_tokenbudget.prefix`).
* concurrency: the API makes an entry usable only once the writer's response has begun, so
  parallel requests miss. The model makes an entry readable from ``readable_from``: the
  writer's response end where the recording stores it (``responded_at``; for a JSON response
  its start and end are the same moment, for a stream a reader that started between the two
  is called a miss here, UNSURE), else the writer's start.

Rules that change the prefix the API actually caches, not the one the client sent
(:func:`cache_layout`):

* thinking: models before Claude Opus 4.5 / Sonnet 4.6, and every Haiku, strip the thinking
  blocks of earlier assistant turns when the new user turn is not a tool result (docs: extended
  thinking, "thinking block caching"; observed in a real Sonnet 4 recording): they are not in
  the prefix and not billed, so what was cached with them is not read. Later models keep them.
  The blocks (their ``signature`` included) are hashed as sent: a re-serialised or re-signed
  thinking block changes the prefix from there on.
* context editing: a ``clear_tool_uses`` edit the API applied (``context_management.applied_edits``
  in the response, ``cleared_tool_uses`` = N) replaced the N oldest tool results with a
  placeholder, so the cached prefix is invalid from the first cleared result on. UNSURE: the
  placeholder's exact text (here: :data:`CLEARED_PLACEHOLDER`), and which results are cleared
  when ``exclude_tools`` is set (here: the N oldest, whatever their tool).
* server tools: see :func:`pytest_tokenbudget.prefix.layout_of` (the API's own 5m breakpoint
  after each server tool result).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ledger import AppliedEdit
from .prefix import LEVELS, TTL_SECONDS, Breakpoint, LayoutMemo, PromptLayout, layout_of

__all__ = [
    "CLEARED_PLACEHOLDER",
    "LOOKBACK_BLOCKS",
    "CacheEntry",
    "CacheOutcome",
    "CacheStore",
    "cache_layout",
    "clear_tool_results",
    "cleared_tool_uses",
    "diagnose",
    "minimum_cacheable",
    "simulate",
    "strips_thinking",
]

LOOKBACK_BLOCKS = 20

# (model id prefix, minimum cacheable tokens, documented?), from Anthropic docs: Prompt caching,
# "Cache limitations". First match wins, so longer prefixes come first.
_MINIMUMS: tuple[tuple[str, int, bool], ...] = (
    ("claude-fable-5-2", 512, False),
    ("claude-mythos-5-2", 512, False),
    ("claude-haiku-5-5", 4096, False),
    ("claude-sonnet-5-5", 512, False),
    ("claude-opus-5-5", 512, True),
    ("claude-fable-5-1", 512, True),
    ("claude-mythos-5-1", 512, True),
    ("claude-opus-5", 512, True),
    ("claude-fable-5", 512, True),
    ("claude-mythos-5", 512, True),
    ("claude-sonnet-5", 1024, True),
    ("claude-opus-4-8", 1024, True),
    ("claude-opus-4-7", 2048, True),
    ("claude-mythos-preview", 2048, True),
    ("claude-opus-4-6", 4096, True),
    ("claude-sonnet-4-6", 1024, True),
    ("claude-haiku-4-5", 4096, True),
    ("claude-opus-4-5", 4096, True),
    ("claude-sonnet-4-5", 1024, True),
    ("claude-opus-4-1", 1024, True),
    ("claude-opus-4", 1024, True),
    ("claude-sonnet-4", 1024, True),
    ("claude-3-7-sonnet", 1024, True),
    ("claude-3-5-sonnet", 1024, True),
    ("claude-3-opus", 1024, True),
    ("claude-3-5-haiku", 2048, True),
    ("claude-3-haiku", 2048, True),
)
_DEFAULT_MINIMUM = 1024


def minimum_cacheable(model: str) -> tuple[int, bool]:
    """The model's minimum cacheable prefix, in tokens, and whether the docs state it.

    Args:
        model: a model id, dated or not (``claude-sonnet-4-5-20250929``).

    Returns:
        ``(tokens, sure)``; ``sure`` is ``False`` for models whose minimum is not documented
        (not in Anthropic's published table) and for unknown models, which get 1,024.
    """
    name = model.lower()
    for prefix, tokens, sure in _MINIMUMS:
        if name == prefix or name.startswith(prefix + "-") or name.startswith(prefix + "@"):
            return tokens, sure
    return _DEFAULT_MINIMUM, False


@dataclass(slots=True)
class CacheEntry:
    """One cached prefix.

    Attributes:
        fingerprint: the prefix's fingerprint (see :mod:`pytest_tokenbudget.prefix`).
        tokens: input tokens of the whole prefix.
        ttl: ``5m`` or ``1h``.
        expires_at: POSIX seconds.
        written_at: POSIX seconds of the request that wrote it.
        readable_from: POSIX seconds from which a request can read it (the writer's response;
            ``None``: from ``written_at``).
    """

    fingerprint: str
    tokens: int
    ttl: str
    expires_at: float
    written_at: float
    readable_from: float | None = None


@dataclass(slots=True)
class CacheStore:
    """The cache of one workspace and model family: fingerprint -> entry."""

    entries: dict[str, CacheEntry] = field(default_factory=dict)

    def live(self, fingerprint: str, now: float) -> CacheEntry | None:
        """The unexpired entry for ``fingerprint``, if any."""
        entry = self.entries.get(fingerprint)
        if entry is None or entry.expires_at <= now or entry.written_at > now:
            return None
        if entry.readable_from is not None and entry.readable_from > now:
            return None  # its writer's response had not come yet: a parallel request misses
        return entry

    def unready(self, fingerprint: str, now: float) -> bool:
        """An entry exists for ``fingerprint`` but its writer's response had not come by ``now``."""
        entry = self.entries.get(fingerprint)
        return (
            entry is not None
            and entry.readable_from is not None
            and entry.written_at <= now < entry.readable_from < entry.expires_at
        )

    def clear(self) -> None:
        """Forget every entry."""
        self.entries.clear()


@dataclass(frozen=True, slots=True)
class CacheOutcome:
    """What one request reads and writes.

    Attributes:
        total_input_tokens: every input token of the request.
        cache_read_input_tokens: tokens read from the cache (A).
        cache_creation_5m: tokens written with a 5-minute TTL.
        cache_creation_1h: tokens written with a 1-hour TTL.
        input_tokens: uncached tokens after the last cache point.
        hit_block: index of the block the read ended on, if any.
        hit_expired: nothing was read, and an entry the lookback reached had expired.
        expired_blocks: positions past the read where an entry existed but had expired.
        written: breakpoints that wrote an entry.
        below_minimum: breakpoints whose prefix was below the model's minimum.
    """

    total_input_tokens: int
    cache_read_input_tokens: int
    cache_creation_5m: int
    cache_creation_1h: int
    input_tokens: int
    hit_block: int | None
    hit_expired: bool
    expired_blocks: tuple[int, ...]
    written: tuple[Breakpoint, ...]
    below_minimum: tuple[Breakpoint, ...]

    @property
    def cache_creation_input_tokens(self) -> int:
        """All tokens written, both TTLs."""
        return self.cache_creation_5m + self.cache_creation_1h

    def usage(self) -> dict[str, Any]:
        """The input side of an API ``usage`` object for this outcome."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_5m,
                "ephemeral_1h_input_tokens": self.cache_creation_1h,
            },
        }


def simulate(
    layout: PromptLayout,
    cumulative: Sequence[int],
    store: CacheStore,
    now: float,
    *,
    minimum: int | None = None,
    extra_input_tokens: int = 0,
    readable_from: float | None = None,
) -> CacheOutcome:
    """Apply one request to ``store`` and say what it read and wrote.

    Args:
        layout: the request's prefix.
        cumulative: ``cumulative[i]`` = input tokens of blocks ``0..i``.
        store: the cache, updated in place (writes, and refreshed TTLs on hits).
        now: the request's start, POSIX seconds.
        minimum: minimum cacheable tokens; by default :func:`minimum_cacheable` of the model.
        extra_input_tokens: input tokens outside the blocks (always uncached).
        readable_from: when the entries this request writes become readable (its response;
            default: ``now``).

    Returns:
        The outcome; ``input_tokens + cache reads + cache writes == total_input_tokens``.
    """
    if minimum is None:
        minimum = minimum_cacheable(layout.model)[0]
    total = (cumulative[-1] if cumulative else 0) + extra_input_tokens
    hit: int | None = None
    expired: list[int] = []
    for point in layout.breakpoints:
        low = max(-1, point.block - LOOKBACK_BLOCKS)
        for pos in range(point.block, low, -1):
            fingerprint = layout.chain[pos]
            if store.live(fingerprint, now) is not None:
                if hit is None or pos > hit:
                    hit = pos
                break
            old = store.entries.get(fingerprint)
            if old is not None and old.expires_at <= now:
                expired.append(pos)
    read = cumulative[hit] if hit is not None else 0
    if hit is not None:
        entry = store.entries[layout.chain[hit]]
        entry.expires_at = max(entry.expires_at, now + TTL_SECONDS[entry.ttl])
    written: list[Breakpoint] = []
    below: list[Breakpoint] = []
    top_1h = read
    top_all = read
    for point in layout.breakpoints:
        tokens = cumulative[point.block]
        if hit is not None and point.block <= hit:
            continue
        if tokens < minimum:
            below.append(point)
            continue
        written.append(point)
        store.entries[point.fingerprint] = CacheEntry(
            point.fingerprint, tokens, point.ttl, now + TTL_SECONDS[point.ttl], now, readable_from
        )
        top_all = max(top_all, tokens)
        if point.ttl == "1h":
            top_1h = max(top_1h, tokens)
    write_1h = top_1h - read
    write_5m = top_all - max(read, top_1h)
    return CacheOutcome(
        total_input_tokens=total,
        cache_read_input_tokens=read,
        cache_creation_5m=write_5m,
        cache_creation_1h=write_1h,
        input_tokens=total - max(read, top_all),
        hit_block=hit,
        hit_expired=bool(expired) and hit is None,
        expired_blocks=tuple(sorted({p for p in expired if hit is None or p > hit})),
        written=tuple(written),
        below_minimum=tuple(below),
    )


# Models that keep earlier thinking blocks in context (docs: extended thinking): Opus 4.5 and
# later, Sonnet 4.6 and later, and the 5.x generation. Every Haiku and earlier Opus/Sonnet strip
# them. UNSURE for models not named here (unknown ids keep them).
_KEEPS_THINKING = re.compile(r"claude-(opus-4-[5-9]|opus-[5-9]|sonnet-4-[6-9]|sonnet-[5-9]|fable|mythos)")
_STRIPS_THINKING = re.compile(r"claude-(haiku|3|opus-4|sonnet-4|sonnet-3|opus-3)")


def strips_thinking(model: str) -> bool:
    """Whether ``model`` strips the thinking blocks of earlier turns from its context."""
    name = model.lower()
    return not _KEEPS_THINKING.search(name) and bool(_STRIPS_THINKING.search(name))


def _strips_now(body: Mapping[str, Any]) -> bool:
    """The request ends on a user turn that is not a tool result (a new turn, not a tool loop)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], Mapping):
        return False
    last = messages[-1]
    if last.get("role") != "user":
        return False
    content = last.get("content")
    blocks = content if isinstance(content, list) else []
    return not any(isinstance(b, Mapping) and b.get("type") == "tool_result" for b in blocks)


CLEARED_PLACEHOLDER = "[tool result cleared by context editing]"


def cleared_tool_uses(applied_edits: Sequence[AppliedEdit]) -> int:
    """Tool uses a response's ``context_management.applied_edits`` says were cleared."""
    return sum(
        edit.cleared_tool_uses
        for edit in applied_edits
        if edit.kind.startswith("clear_tool_uses") and edit.cleared_tool_uses is not None and edit.cleared_tool_uses > 0
    )


def clear_tool_results(body: Mapping[str, Any], count: int) -> dict[str, Any]:
    """``body`` with the content of its ``count`` oldest ``tool_result`` blocks replaced by the
    placeholder, as context editing's ``clear_tool_uses`` does on the server."""
    out = dict(body)
    messages = body.get("messages")
    if count <= 0 or not isinstance(messages, list):
        return out
    left = count
    new_messages: list[Any] = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if left <= 0 or not isinstance(content, list):
            new_messages.append(message)
            continue
        blocks: list[Any] = []
        for block in content:
            if left > 0 and isinstance(block, Mapping) and block.get("type") == "tool_result":
                block = {**block, "content": CLEARED_PLACEHOLDER}
                left -= 1
            blocks.append(block)
        new_messages.append({**message, "content": blocks})
    out["messages"] = new_messages
    return out


def cache_layout(body: Mapping[str, Any], memo: LayoutMemo | None = None, *, cleared: int = 0) -> PromptLayout:
    """The prefix the API caches for ``body``: its :func:`~pytest_tokenbudget.prefix.layout_of`,
    with earlier thinking blocks left out where the model strips them, and the ``cleared``
    oldest tool results replaced where context editing cleared them (see the module docstring).
    """
    if cleared > 0:
        body = clear_tool_results(body, cleared)
    drop = strips_thinking(str(body.get("model", ""))) and _strips_now(body)
    return layout_of(body, memo, drop_thinking=drop)


def _level_blocks(layout: PromptLayout, level: str) -> list[bytes]:
    return [b.canonical for b in layout.blocks if b.level == level]


def diagnose(
    previous: PromptLayout, previous_cumulative: Sequence[int], current: PromptLayout
) -> dict[str, Any] | None:
    """The API's ``diagnostics.cache_miss_reason`` for ``current`` against ``previous``.

    Mirrors the API's cache-diagnostics beta: the earliest divergence only, in the
    order model (or speed), tools, system, messages; ``unavailable`` when only settings such as
    ``tool_choice`` or ``thinking`` differ; ``None`` when the current request extends the previous
    one. ``cache_missed_input_tokens`` is the previous prefix's tokens from the divergence on.

    Args:
        previous: the layout of the request named by ``previous_message_id``.
        previous_cumulative: its cumulative block tokens.
        current: the layout of this request.

    Returns:
        A ``cache_miss_reason`` object, or ``None``.
    """
    prev_total = previous_cumulative[-1] if previous_cumulative else 0

    def missed_from(index: int) -> int:
        kept = previous_cumulative[index - 1] if index > 0 else 0
        return max(0, prev_total - kept)

    if previous.model != current.model or previous.settings["system"] != current.settings["system"]:
        return {"type": "model_changed", "cache_missed_input_tokens": prev_total}
    start = 0
    for level in LEVELS:
        old = _level_blocks(previous, level)
        new = _level_blocks(current, level)
        same = (level == "messages" and new[: len(old)] == old) or (level != "messages" and new == old)
        if not same:
            pairs = enumerate(zip(old, new, strict=False))
            common = next((i for i, (a, b) in pairs if a != b), min(len(old), len(new)))
            return {"type": f"{level}_changed", "cache_missed_input_tokens": missed_from(start + common)}
        start += len(old)
    if previous.settings["messages"] != current.settings["messages"]:
        return {"type": "unavailable"}
    return None
