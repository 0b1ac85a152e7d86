"""Scripted replies a test gives the emulator, and the clock it runs on."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

__all__ = ["Clock", "Reply"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES = {
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "overloaded_error": "Overloaded",
    "invalid_request_error": "Invalid request",
    "api_error": "Internal server error",
}


@dataclass(frozen=True)
class Reply:
    """What the emulator answers to the next request.

    Build one with :meth:`text`, :meth:`tool_use`, :meth:`blocks`, :meth:`error` or
    :meth:`stream_error`, and queue it with ``AnthropicEmulator.script(...)``.

    Attributes:
        content: the assistant's content blocks (without ids; the emulator adds them).
        stop_reason: ``end_turn``, ``tool_use``, ``max_tokens``...
        status: HTTP status; not 200 for an error reply.
        error_type: Anthropic's ``error.type`` for an error reply.
        message: the error message.
        retry_after: seconds, sent as ``retry-after`` and ``retry-after-ms`` on errors.
        stream_error_after: for a streamed reply, send an ``event: error`` after this many
            content blocks instead of finishing (``None``: finish normally).
        usage: usage fields to add or override (e.g. ``{"server_tool_use": {...}}``).
        latency: seconds (real time) the response takes to come; the cache entries the request
            writes are readable only from then on, so a request sent meanwhile misses them.
        iterations: ``usage.iterations`` entries before the final sampling (compaction, advisor,
            earlier server-tool iterations); see :meth:`with_iterations`.
        applied_edits: context editing's ``context_management.applied_edits``; see
            :meth:`with_applied_edits`.
    """

    content: tuple[Mapping[str, Any], ...] = ()
    stop_reason: str = "end_turn"
    status: int = 200
    error_type: str | None = None
    message: str | None = None
    retry_after: float | None = None
    stream_error_after: int | None = None
    usage: Mapping[str, Any] = field(default_factory=dict)
    latency: float = 0.0

    def with_latency(self, seconds: float) -> Reply:
        """This reply, answered after ``seconds`` of real time (see :attr:`latency`)."""
        return replace(self, latency=seconds)

    iterations: tuple[Mapping[str, Any], ...] = ()
    applied_edits: tuple[Mapping[str, Any], ...] = ()

    def with_iterations(self, *entries: Mapping[str, Any]) -> Reply:
        """This reply, its usage reporting ``usage.iterations`` (beta): ``entries``, then one
        ``message`` entry for the final sampling, as the API reports compaction, the advisor
        tool and server-tool loops.

        Each entry is ``{"type": ..., "input_tokens": ..., "output_tokens": ...}`` plus optional
        cache counts (and ``model`` for ``advisor_message``). ``message`` entries are added to
        the top-level counts (the API's top level is the sum of its ``message`` entries);
        ``compaction`` and ``advisor_message`` entries are not: they are billed outside it.
        """
        return replace(self, iterations=(*self.iterations, *(dict(entry) for entry in entries)))

    def with_applied_edits(self, *edits: Mapping[str, Any]) -> Reply:
        """This reply, its response carrying ``context_management.applied_edits`` (beta context
        editing), e.g. ``{"type": "clear_tool_uses_20250919", "cleared_tool_uses": 3,
        "cleared_input_tokens": 1200}``. The emulator reports the edits; it does not clear."""
        return replace(self, applied_edits=(*self.applied_edits, *(dict(edit) for edit in edits)))

    @classmethod
    def text(cls, text: str, *, stop_reason: str = "end_turn", thinking: str | None = None) -> Reply:
        """A plain text answer, optionally preceded by a thinking block."""
        blocks: list[Mapping[str, Any]] = []
        if thinking is not None:
            blocks.append({"type": "thinking", "thinking": thinking})
        blocks.append({"type": "text", "text": text})
        return cls(content=tuple(blocks), stop_reason=stop_reason)

    @classmethod
    def tool_use(cls, name: str, input: Mapping[str, Any], *, text: str | None = None, id: str | None = None) -> Reply:
        """A tool call (``stop_reason: tool_use``), optionally preceded by text."""
        blocks: list[Mapping[str, Any]] = []
        if text:
            blocks.append({"type": "text", "text": text})
        call: dict[str, Any] = {"type": "tool_use", "name": name, "input": dict(input)}
        if id is not None:
            call["id"] = id
        blocks.append(call)
        return cls(content=tuple(blocks), stop_reason="tool_use")

    @classmethod
    def blocks(cls, content: Sequence[Mapping[str, Any]], *, stop_reason: str = "end_turn") -> Reply:
        """Any content blocks, as the API would return them."""
        return cls(content=tuple(content), stop_reason=stop_reason)

    @classmethod
    def error(
        cls,
        status: int,
        *,
        error_type: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> Reply:
        """An API error with Anthropic's error body (429 rate limit, 529 overloaded, 400...)."""
        kind = error_type or _ERROR_TYPES.get(status, "api_error")
        if retry_after is None and status in (429, 529):
            retry_after = 0.01
        return cls(
            status=status,
            error_type=kind,
            message=message or _ERROR_MESSAGES.get(kind, kind.replace("_", " ")),
            retry_after=retry_after,
        )

    @classmethod
    def stream_error(
        cls, text: str = "partial", *, error_type: str = "overloaded_error", after_blocks: int = 1
    ) -> Reply:
        """A streamed reply that fails mid-stream with ``event: error`` after HTTP 200."""
        return cls(
            content=({"type": "text", "text": text},),
            error_type=error_type,
            message=_ERROR_MESSAGES.get(error_type, error_type),
            stream_error_after=after_blocks,
        )


class Clock:
    """The emulator's clock: wall time plus an offset the test moves forward.

    Cache TTLs, batch processing and timestamps all read it, and the plugin records each
    request's time from it while the emulator is in use, so a test that calls
    ``clock.advance(minutes=6)`` records a six-minute gap that replay and the cache analysis see.
    """

    def __init__(self, start: float | None = None, *, frozen: bool = False) -> None:
        self._offset = 0.0 if start is None else start - time.time()
        self._frozen_at: float | None = (start if start is not None else time.time()) if frozen else None

    def now(self) -> float:
        """Current emulated time, POSIX seconds."""
        if self._frozen_at is not None:
            return self._frozen_at
        return time.time() + self._offset

    def advance(self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0) -> None:
        """Move the clock forward."""
        step = seconds + 60.0 * minutes + 3600.0 * hours
        if step < 0:
            raise ValueError("the emulator clock only moves forward")
        self._offset += step
        if self._frozen_at is not None:
            self._frozen_at += step

    def isoformat(self, at: float | None = None) -> str:
        """RFC 3339 UTC timestamp of ``at`` (default: now), as the API writes them."""
        moment = self.now() if at is None else at
        return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
