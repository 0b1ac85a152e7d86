"""The ledger: one row per billed API turn, read from recorded exchanges.

A turn is a ``POST /v1/messages`` answered with a message (JSON or a stream), or one succeeded
request of a Message Batch (batch results count one turn per batch request). count_tokens calls,
batch bookkeeping and errors are kept as :attr:`Ledger.exchanges` but are not turns: they are not
billed.

The usage of a turn is the API's ``usage`` object as recorded, every field kept, unknown ones
included. For a stream it is assembled from ``message_start`` and each ``message_delta`` the way
the SDK's ``accumulate_event`` does: start from ``message_start.message.usage``; on each
``message_delta`` set ``output_tokens`` and overwrite ``input_tokens``, the cache counts,
``server_tool_use`` and ``output_tokens_details`` when they are not null (counts are cumulative:
overwrite, never add). Unlike the SDK, unknown fields of a ``message_delta`` usage are kept too,
and ``usage.iterations`` and the event's ``context_management`` overwrite as the SDK's beta
accumulator does (the non-beta one drops them; the recorded stream still has them).

Usage outside the top-level counts is typed here too (:attr:`Turn.iterations`,
:attr:`Turn.applied_edits`): ``usage.iterations`` entries of type ``compaction`` and
``advisor_message`` are billed but not part of the top-level counts (Anthropic docs: compaction,
advisor tool); ``message`` and ``fallback_message`` entries are (the top level is their sum).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .cassette import Body, Interaction
from .errors import CassetteError

__all__ = [
    "ITERATIONS_IN_TOP_LEVEL",
    "ITERATIONS_OUTSIDE_TOP_LEVEL",
    "AppliedEdit",
    "Exchange",
    "IterationUsage",
    "Ledger",
    "TokenCounts",
    "Totals",
    "Turn",
    "applied_edits_of",
    "iterations_of",
    "parse_sse",
    "token_counts",
    "turns_from",
]

_DELTA_OVERWRITES = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
    "iterations",
)

ITERATIONS_IN_TOP_LEVEL = frozenset({"message", "fallback_message"})
"""``usage.iterations`` types the top-level counts already include: the top level is the sum of the
``message`` entries (observed on real advisor recordings). ``fallback_message`` replaces the
``message`` entry of the iteration a fallback model served (SDK ``BetaFallbackMessageIterationUsage``);
that it is in the top level like ``message`` is an assumption (UNSURE: not documented)."""

ITERATIONS_OUTSIDE_TOP_LEVEL = frozenset({"compaction", "advisor_message"})
"""``usage.iterations`` types billed on top of the top-level counts (Anthropic docs: compaction,
advisor tool; SDK ``BetaUsage.iterations`` docstring). An advisor entry is billed at its own
``model``'s rates; a compaction entry names no model and is priced at the turn's (UNSURE)."""


# The counts a usage object may carry, checked where a turn is read: a whole number from 0 to
# _MAX_COUNT (no request comes near a trillion tokens; bigger is a corrupt or hostile file).
_COUNTS: tuple[tuple[str, ...], ...] = (
    ("input_tokens",),
    ("cache_creation_input_tokens",),
    ("cache_read_input_tokens",),
    ("output_tokens",),
    ("cache_creation", "ephemeral_5m_input_tokens"),
    ("cache_creation", "ephemeral_1h_input_tokens"),
    ("server_tool_use", "web_search_requests"),
    ("server_tool_use", "web_fetch_requests"),
)
_MAX_COUNT = 10**12


def check_usage(usage: Mapping[str, Any]) -> None:
    """Refuse a usage object whose counts are not whole numbers from 0 to 10**12 (null is absent).

    Raises:
        ValueError: names the field and its value (a negative, boolean, text or list count).
    """
    for path in _COUNTS:
        value = _dig(usage, *path)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_COUNT:
            raise ValueError(f"usage.{'.'.join(path)} is {value!r:.40}, not a token count (a whole number >= 0)")
    for key in ("cache_creation", "server_tool_use"):
        if usage.get(key) is not None and not isinstance(usage.get(key), dict):
            raise ValueError(f"usage.{key} is {usage.get(key)!r:.40}, not an object")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _dig(usage: Mapping[str, Any], *path: str) -> Any:
    value: Any = usage
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """The billed quantities of one usage object, each counted once.

    Attributes:
        uncached_input_tokens: input after the last cache breakpoint (the API's ``input_tokens``).
        cache_write_5m_tokens: tokens written to the cache with a 5-minute TTL.
        cache_write_1h_tokens: tokens written with a 1-hour TTL.
        cache_read_tokens: tokens read from the cache.
        output_tokens: output tokens, thinking included.
        web_search_requests: server-side web searches (``server_tool_use.web_search_requests``).
        web_fetch_requests: server-side web fetches (``server_tool_use.web_fetch_requests``);
            billed as the tokens they add only (Anthropic docs: pricing).
    """

    uncached_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    web_search_requests: int = 0
    web_fetch_requests: int = 0

    @property
    def cache_write_tokens(self) -> int:
        """Tokens written to the cache, both TTLs."""
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def total_input_tokens(self) -> int:
        """Every input token: uncached + cache writes + cache reads."""
        return self.uncached_input_tokens + self.cache_write_tokens + self.cache_read_tokens


def token_counts(usage: Mapping[str, Any]) -> TokenCounts:
    """The billed quantities of an API ``usage`` object (a missing or non-integer count is 0).

    The TTL split: ``cache_creation.ephemeral_1h_input_tokens`` (capped at the total written) are
    1-hour writes; everything else written is 5-minute writes. In server-tool streams the final
    ``cache_creation_input_tokens`` can exceed the ``message_start`` breakdown; the excess is
    5-minute writes, since the API's own breakpoint after a server tool result is a 5-minute one.
    Negative counts are kept as they are, for the pricer to reject.
    """
    written = _int(usage.get("cache_creation_input_tokens"))
    one_hour = min(_int(_dig(usage, "cache_creation", "ephemeral_1h_input_tokens")), written)
    return TokenCounts(
        uncached_input_tokens=_int(usage.get("input_tokens")),
        cache_write_5m_tokens=written - one_hour,
        cache_write_1h_tokens=one_hour,
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        web_search_requests=_int(_dig(usage, "server_tool_use", "web_search_requests")),
        web_fetch_requests=_int(_dig(usage, "server_tool_use", "web_fetch_requests")),
    )


@dataclass(frozen=True, slots=True)
class IterationUsage:
    """One entry of ``usage.iterations`` (beta: server tool loops, compaction, advisor, fallback).

    Attributes:
        position: index in ``usage.iterations``, from 0.
        kind: the entry's ``type`` as sent: ``message``, ``compaction``, ``advisor_message``,
            ``fallback_message``, or a type this version does not know.
        model: the entry's ``model`` (advisor and fallback entries name theirs), else ``None``.
        counts: its billed quantities (same rules as the top level, :func:`token_counts`).
        usage: the entry as recorded.
    """

    position: int
    kind: str
    model: str | None
    counts: TokenCounts
    usage: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def in_top_level(self) -> bool:
        """Whether the turn's top-level counts already include this entry."""
        return self.kind in ITERATIONS_IN_TOP_LEVEL

    @property
    def billed_outside_top_level(self) -> bool:
        """Whether this entry is billed on top of the top-level counts (compaction, advisor)."""
        return self.kind in ITERATIONS_OUTSIDE_TOP_LEVEL


def iterations_of(usage: Mapping[str, Any]) -> tuple[IterationUsage, ...]:
    """The typed ``usage.iterations`` entries (empty when absent or not a list; non-objects skipped)."""
    entries = usage.get("iterations")
    if not isinstance(entries, list):
        return ()
    return tuple(
        IterationUsage(
            position,
            str(entry.get("type") or "unknown"),
            str(entry["model"]) if isinstance(entry.get("model"), str) else None,
            token_counts(entry),
            entry,
        )
        for position, entry in enumerate(entries)
        if isinstance(entry, Mapping)
    )


@dataclass(frozen=True, slots=True)
class AppliedEdit:
    """One context-editing edit the API applied (``context_management.applied_edits``, beta).

    A clear removes content from the prompt before it is sampled, so the cached prefix stops at
    the first cleared block (the cache analysis decides what that costs).

    Attributes:
        kind: the edit's ``type``, e.g. ``clear_tool_uses_20250919``, ``clear_thinking_20251015``.
        cleared_input_tokens: input tokens the edit removed.
        cleared_tool_uses: tool uses cleared (``clear_tool_uses_*``), else ``None``.
        cleared_thinking_turns: thinking turns cleared (``clear_thinking_*``), else ``None``.
        edit: the edit as recorded.
    """

    kind: str
    cleared_input_tokens: int
    cleared_tool_uses: int | None = None
    cleared_thinking_turns: int | None = None
    edit: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def applied_edits_of(context_management: Any) -> tuple[AppliedEdit, ...]:
    """The typed ``applied_edits`` of a response's ``context_management`` (empty when absent)."""
    edits = context_management.get("applied_edits") if isinstance(context_management, Mapping) else None
    if not isinstance(edits, list):
        return ()
    return tuple(
        AppliedEdit(
            str(edit.get("type") or "unknown"),
            _int(edit.get("cleared_input_tokens")),
            _int(edit["cleared_tool_uses"]) if "cleared_tool_uses" in edit else None,
            _int(edit["cleared_thinking_turns"]) if "cleared_thinking_turns" in edit else None,
            edit,
        )
        for edit in edits
        if isinstance(edit, Mapping)
    )


@dataclass(frozen=True, slots=True)
class Totals:
    """Token sums over turns.

    Attributes:
        turns: number of turns.
        input_tokens: uncached input (the API's ``input_tokens``); also
            :attr:`uncached_input_tokens`, the name the report and budgets use.
        cache_creation_input_tokens: tokens written to the cache, both TTLs.
        cache_write_5m_tokens: tokens written with a 5-minute TTL.
        cache_write_1h_tokens: tokens written with a 1-hour TTL.
        cache_read_input_tokens: tokens read from the cache.
        output_tokens: output tokens, thinking included.
        iterations_input_tokens: every input token (uncached + cache writes + reads) of the
            ``usage.iterations`` entries billed outside the top-level counts (compaction,
            advisor); not in the counts above.
        iterations_output_tokens: output tokens of those entries; not in :attr:`output_tokens`.
        cleared_input_tokens: input tokens context editing cleared (``applied_edits``).
    """

    turns: int = 0
    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    iterations_input_tokens: int = 0
    iterations_output_tokens: int = 0
    cleared_input_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        """Input after the last cache breakpoint (the same count as :attr:`input_tokens`)."""
        return self.input_tokens

    @property
    def total_input_tokens(self) -> int:
        """Every input token: uncached + cache writes + cache reads."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def cache_hit_rate(self) -> float:
        """Cache reads over all input tokens (0 when there is no input)."""
        total = self.total_input_tokens
        return self.cache_read_input_tokens / total if total else 0.0

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, with the derived ``total_input_tokens`` and ``cache_hit_rate``."""
        out = {name: getattr(self, name) for name in _TOTAL_FIELDS}
        out["total_input_tokens"] = self.total_input_tokens
        out["cache_hit_rate"] = self.cache_hit_rate
        return out


_TOTAL_FIELDS = (
    "turns",
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "iterations_input_tokens",
    "iterations_output_tokens",
    "cleared_input_tokens",
)


def _fields(totals: Totals) -> tuple[int, ...]:
    return tuple(getattr(totals, name) for name in _TOTAL_FIELDS)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP exchange with the API, billed or not.

    Attributes:
        index: position among the test's exchanges (or the cassette's interactions).
        endpoint: see :func:`pytest_tokenbudget.cassette.endpoint_of`.
        method: HTTP method.
        path: URL path.
        status: HTTP status.
        recorded_at: POSIX seconds, if recorded.
        error_type: Anthropic's ``error.type`` for an error response.
    """

    index: int
    endpoint: str
    method: str
    path: str
    status: int
    recorded_at: float | None
    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class Turn:
    """One billed API turn.

    Attributes:
        index: position among the test's turns, from 0.
        exchange: index of the exchange that carried it.
        endpoint: ``messages`` or ``batch``.
        model: the model that answered (the response's ``model``; priced by this).
        requested_model: the request's ``model``.
        stream: the response was a stream.
        usage: the API's usage object, every field (streams: assembled as the SDK does).
        diagnostics: the response's ``diagnostics`` when the request asked for them, else absent
            (``has_diagnostics`` is False).
        has_diagnostics: whether the response carried a ``diagnostics`` key.
        recorded_at: POSIX seconds when the request started.
        responded_at: POSIX seconds when its response had been received, if recorded.
        message_id: the response's message id.
        custom_id: the batch request's ``custom_id``.
        batch_id: the batch's id.
        stop_reason: the message's ``stop_reason``.
        incomplete: the stream ended with an ``error`` event; usage is what had arrived.
        request: the request body (for a batch turn, that request's ``params``).
        estimate_method: how :attr:`usage` was estimated, when the request changed since it was
            recorded (``None``: the usage is what the API reported).
        recorded_usage: the recorded usage an estimate replaced.
        context_management: the response's ``context_management`` (beta context editing), if any.
    """

    index: int
    exchange: int
    endpoint: str
    model: str
    requested_model: str | None
    stream: bool
    usage: Mapping[str, Any]
    diagnostics: Any = None
    has_diagnostics: bool = False
    recorded_at: float | None = None
    message_id: str | None = None
    responded_at: float | None = None
    custom_id: str | None = None
    batch_id: str | None = None
    stop_reason: str | None = None
    incomplete: bool = False
    request: Any = field(default=None, repr=False, compare=False)
    estimate_method: str | None = None
    recorded_usage: Mapping[str, Any] | None = None
    context_management: Any = None

    @property
    def estimated(self) -> bool:
        """The request changed since it was recorded: :attr:`usage` is an estimate (see ``estimate_method``)."""
        return self.estimate_method is not None

    @property
    def counts(self) -> TokenCounts:
        """The billed quantities of :attr:`usage`."""
        return token_counts(self.usage)

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens after the last cache breakpoint (billed at the base input price)."""
        return _int(self.usage.get("input_tokens"))

    @property
    def input_tokens(self) -> int:
        """Alias of :attr:`uncached_input_tokens`, the API's own name for it (not all input)."""
        return _int(self.usage.get("input_tokens"))

    @property
    def cache_creation_input_tokens(self) -> int:
        """Tokens written to the cache, both TTLs."""
        return _int(self.usage.get("cache_creation_input_tokens"))

    @property
    def cache_write_1h_tokens(self) -> int:
        """Tokens written with a 1-hour TTL."""
        return self.counts.cache_write_1h_tokens

    @property
    def cache_write_5m_tokens(self) -> int:
        """Tokens written with a 5-minute TTL (see :func:`token_counts` for the split)."""
        return self.counts.cache_write_5m_tokens

    @property
    def cache_read_input_tokens(self) -> int:
        """Tokens read from the cache."""
        return _int(self.usage.get("cache_read_input_tokens"))

    @property
    def output_tokens(self) -> int:
        """Output tokens, thinking included."""
        return _int(self.usage.get("output_tokens"))

    @property
    def total_input_tokens(self) -> int:
        """Every input token of the turn."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def service_tier(self) -> str | None:
        """``standard``, ``priority`` or ``batch`` when reported."""
        value = self.usage.get("service_tier")
        return str(value) if value is not None else None

    @property
    def speed(self) -> str | None:
        """``standard`` or ``fast`` when reported."""
        value = self.usage.get("speed")
        return str(value) if value is not None else None

    @property
    def inference_geo(self) -> str | None:
        """Where inference ran (e.g. ``us``, ``global``) when reported."""
        value = self.usage.get("inference_geo")
        return str(value) if value is not None else None

    @property
    def web_search_requests(self) -> int:
        """Server-side web searches (``usage.server_tool_use.web_search_requests``), billed per search."""
        return self.counts.web_search_requests

    @property
    def web_fetch_requests(self) -> int:
        """Server-side web fetches (``usage.server_tool_use.web_fetch_requests``); billed as tokens only."""
        return self.counts.web_fetch_requests

    @property
    def iterations(self) -> tuple[IterationUsage, ...]:
        """``usage.iterations``, typed (empty when the API sent none)."""
        return iterations_of(self.usage)

    @property
    def billed_iterations(self) -> tuple[IterationUsage, ...]:
        """The iterations billed on top of the top-level counts (compaction, advisor)."""
        return tuple(i for i in self.iterations if i.billed_outside_top_level)

    @property
    def applied_edits(self) -> tuple[AppliedEdit, ...]:
        """Context-editing edits the API applied to this turn's prompt, typed."""
        return applied_edits_of(self.context_management)

    @property
    def cleared_input_tokens(self) -> int:
        """Input tokens context editing cleared from this turn's prompt (sum over edits)."""
        return sum(edit.cleared_input_tokens for edit in self.applied_edits)

    @property
    def cache_miss_reason(self) -> Any:
        """The API's ``diagnostics.cache_miss_reason``, when it gave one."""
        if isinstance(self.diagnostics, Mapping):
            return self.diagnostics.get("cache_miss_reason")
        return None

    @property
    def recorded_datetime(self) -> datetime | None:
        """:attr:`recorded_at` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.recorded_at, UTC) if self.recorded_at is not None else None

    def totals(self) -> Totals:
        """This turn as :class:`Totals`."""
        counts = self.counts
        extra = self.billed_iterations
        return Totals(
            1,
            counts.uncached_input_tokens,
            counts.cache_write_tokens,
            counts.cache_write_5m_tokens,
            counts.cache_write_1h_tokens,
            counts.cache_read_tokens,
            counts.output_tokens,
            sum(i.counts.total_input_tokens for i in extra),
            sum(i.counts.output_tokens for i in extra),
            self.cleared_input_tokens,
        )


class Ledger:
    """The turns of one test (or one cassette), in order: data only.

    ``ledger.turns`` lists them; ``ledger.totals()`` sums them; ``ledger.by_model()`` sums them
    per model; ``ledger.cache_hit_rate`` is cache reads over all input tokens. The cache analysis
    is :func:`pytest_tokenbudget.analysis.analyze`; the ``token_ledger`` fixture's assertions are
    :class:`pytest_tokenbudget.assertions.TokenLedger`.
    """

    def __init__(self, turns: Sequence[Turn] = (), exchanges: Sequence[Exchange] = (), source: str = "") -> None:
        self._turns: list[Turn] = list(turns)
        self._exchanges: list[Exchange] = list(exchanges)
        self.source = source

    @property
    def turns(self) -> list[Turn]:
        """The billed turns, in order."""
        return self._turns

    @property
    def exchanges(self) -> list[Exchange]:
        """Every exchange with the API, billed or not, in order."""
        return self._exchanges

    def __iter__(self) -> Iterator[Turn]:
        return iter(self.turns)

    def __len__(self) -> int:
        return len(self.turns)

    def __getitem__(self, index: int) -> Turn:
        return self.turns[index]

    def __repr__(self) -> str:
        t = self.totals()
        return (
            f"<Ledger {t.turns} turns: input {t.input_tokens}, cache write {t.cache_creation_input_tokens}, "
            f"cache read {t.cache_read_input_tokens}, output {t.output_tokens}>"
        )

    def totals(self) -> Totals:
        """Sums over every turn."""
        total = Totals()
        for turn in self.turns:
            total = total + turn.totals()
        return total

    def by_model(self) -> dict[str, Totals]:
        """Sums per answering model, in order of first use."""
        out: dict[str, Totals] = {}
        for turn in self.turns:
            out[turn.model] = out.get(turn.model, Totals()) + turn.totals()
        return out

    @property
    def cache_hit_rate(self) -> float:
        """Cache reads over all input tokens of all turns (0 when there is no input)."""
        return self.totals().cache_hit_rate

    @property
    def has_requests(self) -> bool:
        """Whether every turn carries its request body (needed for the cache analysis)."""
        return bool(self.turns) and all(isinstance(turn.request, Mapping) for turn in self.turns)


# --------------------------------------------------------------------------------------------
# SSE


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """Parse a Server-Sent Events body into ``(event, data)`` pairs, data parsed as JSON.

    Follows the SSE rules the SDK's decoder follows: ``event:`` and ``data:`` fields, several
    ``data:`` lines joined by newlines, ``:`` comments ignored, events separated by a blank line.
    Events without an ``event:`` line are dropped, as the SDK drops them.

    Raises:
        ValueError: a ``data`` payload is not JSON.
    """
    events: list[tuple[str, Any]] = []
    name: str | None = None
    data: list[str] = []
    for line in [*text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), ""]:
        if not line:
            if name is not None and data:
                payload = "\n".join(data)
                try:
                    events.append((name, json.loads(payload)))
                except (ValueError, RecursionError):
                    raise ValueError(
                        f"event {len(events)} ({name}) has data that is not JSON: {payload[:80]!r}"
                    ) from None
            name, data = None, []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
    return events


def _assemble_stream(events: Sequence[tuple[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The final message of a stream, and whether it ended with an error event."""
    message: dict[str, Any] | None = None
    errored = False
    for name, data in events:
        if not isinstance(data, dict):
            raise ValueError(f"{name} event data is not an object")
        kind = data.get("type", name)
        if kind == "message_start":
            start = data.get("message")
            if not isinstance(start, dict):
                raise ValueError("message_start has no message")
            message = dict(start)
            message["usage"] = dict(start.get("usage") or {})
            message["content"] = []
        elif kind == "error":
            errored = True
        elif message is None:
            if kind == "ping":
                continue
            raise ValueError(f"{kind} before message_start")
        elif kind == "content_block_start":
            message["content"].append(data.get("content_block"))
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            message["stop_reason"] = delta.get("stop_reason")
            if isinstance(data.get("context_management"), dict):  # context editing (beta) reports here
                message["context_management"] = data["context_management"]
            usage = data.get("usage")
            if not isinstance(usage, dict):
                raise ValueError("message_delta has no usage")
            message["usage"]["output_tokens"] = usage.get("output_tokens")
            for key, value in usage.items():
                if key == "output_tokens" or value is None:
                    continue
                if key in _DELTA_OVERWRITES or key not in message["usage"]:
                    message["usage"][key] = value
    if message is None:
        raise ValueError("no message_start event")
    if not errored and not any((d.get("type") if isinstance(d, dict) else n) == "message_stop" for n, d in events):
        raise ValueError("the stream ends before message_stop (truncated?)")
    return message, errored


# --------------------------------------------------------------------------------------------
# interactions -> turns


def _body_json(body: Body, what: str, where: str, index: int) -> Any:
    try:
        return body.json()
    except ValueError as err:
        raise CassetteError(
            "cassette cannot be read",
            file=where,
            why=f"interaction {index}: {what} is not valid JSON ({err})",
            fix="re-record it",
        ) from None


def turns_from(interactions: Iterable[Interaction], *, source: str | Path = "", test: str | None = None) -> Ledger:
    """Build the ledger of a sequence of exchanges (a test's, or a cassette's in file order).

    Args:
        interactions: the exchanges, in the order they happened.
        source: the cassette path, named in errors.
        test: the test's node id, named in errors.

    Raises:
        CassetteError: a response that should carry usage cannot be read (bad JSON, a broken
            SSE body, a missing field); the message names the interaction.
    """
    where = str(source)
    turns: list[Turn] = []
    exchanges: list[Exchange] = []
    batch_params: dict[str, tuple[dict[str, Any], float | None]] = {}
    for position, interaction in enumerate(interactions):
        endpoint = interaction.endpoint
        error_type = None
        if interaction.status >= 400 and interaction.content_type.endswith("json"):
            body = interaction.response_body.try_json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                error_type = body["error"].get("type")
        exchanges.append(
            Exchange(
                position,
                endpoint,
                interaction.method,
                interaction.path,
                interaction.status,
                interaction.recorded_at,
                error_type,
            )
        )
        if interaction.status != 200:
            continue
        try:
            if endpoint == "messages":
                turns.append(_message_turn(interaction, len(turns), position))
            elif endpoint == "batch_create":
                request = interaction.request_body.json()
                response = interaction.response_body.json()
                if isinstance(request, dict) and isinstance(response, dict):
                    batch_params[str(response.get("id"))] = (
                        {
                            str(r.get("custom_id")): r.get("params")
                            for r in request.get("requests") or []
                            if isinstance(r, dict)
                        },
                        interaction.recorded_at,
                    )
            elif endpoint == "batch_results":
                batch_id = interaction.path.rstrip("/").split("/")[-2]
                params, created_at = batch_params.get(batch_id, ({}, interaction.recorded_at))
                turns.extend(_batch_turns(interaction, batch_id, params, created_at, len(turns), position))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CassetteError(
                "cassette cannot be read",
                file=where,
                test=test,
                why=f"interaction {interaction.index} ({interaction.method} {interaction.path}): {err}",
                fix="re-record it",
            ) from None
    return Ledger(turns, exchanges, where)


def playback_problem(interaction: Interaction) -> str | None:
    """Why a recorded response must not be handed to the SDK, or ``None`` when it can be.

    Replay plays a response only if the ledger can read it: a message (JSON or a stream that
    assembles) with its usage counts in range, batch results that parse line by line, any other
    JSON response parseable. The SDK would turn the rest into a "Connection error.", a
    retried status, or an object missing attributes inside the user's code.
    """
    try:
        if interaction.status == 200 and interaction.endpoint == "messages":
            _message_turn(interaction, 0, 0)
        elif interaction.status == 200 and interaction.endpoint == "batch_results":
            for _turn in _batch_turns(interaction, "", {}, None, 0, 0):
                pass
        elif interaction.content_type.endswith("json") and interaction.response_body.raw.strip():
            interaction.response_body.json()
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return f"interaction {interaction.index} ({interaction.method} {interaction.path}): {err}"
    return None


def _message_turn(interaction: Interaction, index: int, position: int) -> Turn:
    request = interaction.request_body.try_json()
    request = request if isinstance(request, dict) else {}
    is_stream = interaction.content_type == "text/event-stream" or (
        bool(request.get("stream")) and not interaction.content_type.endswith("json")
    )
    incomplete = False
    if is_stream:
        try:
            events = parse_sse(interaction.response_body.text())
            message, incomplete = _assemble_stream(events)
        except ValueError as err:
            raise ValueError(f"broken SSE body: {err}") from None
    else:
        try:
            message = interaction.response_body.json()
        except ValueError as err:
            raise ValueError(f"response body is not valid JSON ({err})") from None
    if not isinstance(message, dict):
        raise ValueError("response body is not a JSON object")
    usage = message.get("usage")
    if not isinstance(usage, dict):
        raise ValueError("response has no usage object")
    check_usage(usage)
    if not isinstance(usage.get("input_tokens"), int) or not (
        incomplete or isinstance(usage.get("output_tokens"), int)
    ):
        raise ValueError("usage lacks input_tokens or output_tokens")
    content = message.get("content")
    if content is not None and not (
        isinstance(content, list) and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content)
    ):
        raise ValueError("message content is not a list of blocks with a type")
    return Turn(
        index=index,
        exchange=position,
        endpoint="messages",
        model=str(message.get("model") or request.get("model") or "unknown"),
        requested_model=request.get("model"),
        stream=is_stream,
        usage=usage,
        diagnostics=message.get("diagnostics"),
        has_diagnostics="diagnostics" in message,
        recorded_at=interaction.recorded_at,
        responded_at=interaction.responded_at,
        message_id=message.get("id"),
        stop_reason=message.get("stop_reason"),
        incomplete=incomplete,
        request=request,
        context_management=message.get("context_management"),
    )


def _batch_turns(
    interaction: Interaction,
    batch_id: str,
    params: Mapping[str, Any],
    created_at: float | None,
    start: int,
    position: int,
) -> Iterator[Turn]:
    """One turn per succeeded batch request, timed at the batch's creation (when it was sent)."""
    index = start
    for number, line in enumerate(interaction.response_body.text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):
            raise ValueError(f"batch results line {number} is not JSON") from None
        result = item.get("result") if isinstance(item, dict) else None
        if not isinstance(result, dict):
            raise ValueError(f"batch results line {number} has no result")
        if result.get("type") != "succeeded":
            continue
        message = result.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
            raise ValueError(f"batch results line {number}: succeeded without a message usage")
        try:
            check_usage(message["usage"])
        except ValueError as err:
            raise ValueError(f"batch results line {number}: {err}") from None
        custom_id = str(item.get("custom_id"))
        request = params.get(custom_id)
        yield Turn(
            index=index,
            exchange=position,
            endpoint="batch",
            model=str(message.get("model") or (request or {}).get("model") or "unknown"),
            requested_model=(request or {}).get("model"),
            stream=False,
            usage=message["usage"],
            diagnostics=message.get("diagnostics"),
            has_diagnostics="diagnostics" in message,
            recorded_at=created_at,
            message_id=message.get("id"),
            custom_id=custom_id,
            batch_id=batch_id,
            stop_reason=message.get("stop_reason"),
            request=request,
            context_management=message.get("context_management"),
        )
        index += 1
