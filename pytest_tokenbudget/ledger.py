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
overwrite, never add). Unlike the SDK, unknown fields of a ``message_delta`` usage are kept too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cassette import Body, Interaction
from .errors import CassetteError

if TYPE_CHECKING:
    from .analysis import CacheAnalysis

__all__ = ["Exchange", "Ledger", "LiveLedger", "Totals", "Turn", "parse_sse", "turns_from"]

_DELTA_OVERWRITES = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class Totals:
    """Token sums over turns.

    Attributes:
        turns: number of turns.
        input_tokens: uncached input (the API's ``input_tokens``).
        cache_creation_input_tokens: tokens written to the cache, both TTLs.
        cache_write_5m_tokens: tokens written with a 5-minute TTL.
        cache_write_1h_tokens: tokens written with a 1-hour TTL.
        cache_read_input_tokens: tokens read from the cache.
        output_tokens: output tokens, thinking included.
    """

    turns: int = 0
    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0

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
        message_id: the response's message id.
        custom_id: the batch request's ``custom_id``.
        batch_id: the batch's id.
        stop_reason: the message's ``stop_reason``.
        incomplete: the stream ended with an ``error`` event; usage is what had arrived.
        request: the request body (for a batch turn, that request's ``params``).
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
    custom_id: str | None = None
    batch_id: str | None = None
    stop_reason: str | None = None
    incomplete: bool = False
    request: Any = field(default=None, repr=False, compare=False)
    estimate_method: str | None = None
    recorded_usage: Mapping[str, Any] | None = None

    @property
    def estimated(self) -> bool:
        """The request changed since it was recorded: :attr:`usage` is an estimate (see ``estimate_method``)."""
        return self.estimate_method is not None

    @property
    def input_tokens(self) -> int:
        """Uncached input tokens (after the last cache breakpoint)."""
        return _int(self.usage.get("input_tokens"))

    @property
    def cache_creation_input_tokens(self) -> int:
        """Tokens written to the cache, both TTLs."""
        return _int(self.usage.get("cache_creation_input_tokens"))

    @property
    def cache_write_1h_tokens(self) -> int:
        """Tokens written with a 1-hour TTL."""
        breakdown = self.usage.get("cache_creation")
        if isinstance(breakdown, Mapping):
            return min(_int(breakdown.get("ephemeral_1h_input_tokens")), self.cache_creation_input_tokens)
        return 0

    @property
    def cache_write_5m_tokens(self) -> int:
        """Tokens written with a 5-minute TTL.

        Everything written that the breakdown does not put at 1 h: in server-tool streams the
        final total can exceed the ``message_start`` breakdown, and the excess is 5-minute writes
        (facts section 1).
        """
        return self.cache_creation_input_tokens - self.cache_write_1h_tokens

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
        return Totals(
            1,
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_write_5m_tokens,
            self.cache_write_1h_tokens,
            self.cache_read_input_tokens,
            self.output_tokens,
        )


class Ledger:
    """The turns of one test (or one cassette), in order.

    ``ledger.turns`` lists them; ``ledger.totals()`` sums them; ``ledger.by_model()`` sums them
    per model; ``ledger.cache_hit_rate`` is cache reads over all input tokens.
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

    def with_estimates(self, analysis: CacheAnalysis) -> Ledger:
        """This ledger with the usage of changed turns replaced by the analysis' estimates."""
        from dataclasses import replace

        turns = list(self.turns)
        for result in analysis.turns:
            if result.estimated_usage is not None:
                turn = turns[result.turn]
                usage = {**turn.usage, **result.estimated_usage}
                turns[result.turn] = replace(
                    turn, usage=usage, estimate_method=result.estimate_method, recorded_usage=turn.usage
                )
        return Ledger(turns, self.exchanges, self.source)

    def cache_analysis(self) -> CacheAnalysis:
        """Verdicts, fingerprints and predictions per turn (see :mod:`pytest_tokenbudget.analysis`)."""
        from .analysis import analyze

        return analyze(self.turns)

    def assert_prefix_stable(self) -> None:
        """Fail unless every turn's prompt prefix extends the previous turn's (same model).

        Raises:
            AssertionError: naming each break (turn, level, JSON path, offset, excerpts) and
                listing the verdict of every turn.
        """
        analysis = self.cache_analysis()
        if analysis.prefix_stable:
            return
        lines = ["prompt prefix is not byte-stable:"]
        lines.extend(f"  {d.describe()}" for d in analysis.divergences)
        lines.append("verdicts:")
        lines.extend(f"  {line}" for line in analysis.verdict_lines())
        raise AssertionError("\n".join(lines))

    def assert_budget(self, **limits: Any) -> None:
        """Fail when the turns so far break any of these limits (the marker's keywords).

        Accepts ``max_cost_usd``, ``max_input_tokens`` (all input: uncached + cache writes +
        reads), ``max_output_tokens``, ``max_turns``, ``min_cache_hit_rate``, ``prefix_stable``.
        Costs use genai-prices at today's prices.

        Raises:
            AssertionError: listing each breach and every turn's verdict.
            ConfigError: an unknown keyword or a bad value.
        """
        from .budgets import Budget, check_budget

        budget = Budget.from_mapping(limits, where="token_ledger.assert_budget()")
        totals = self.totals()
        cost = None
        if budget.max_cost_usd is not None:
            from .pricing import Pricer

            pricer = Pricer()
            cost = sum((pricer.price(turn).cost_usd for turn in self.turns), Decimal(0))
        analysis = self.cache_analysis() if budget.prefix_stable or budget.min_cache_hit_rate is not None else None
        breaches = check_budget(
            budget,
            turns=totals.turns,
            input_tokens=totals.total_input_tokens,
            output_tokens=totals.output_tokens,
            cost_usd=cost,
            cache_hit_rate=totals.cache_hit_rate,
            prefix_breaks=[d.describe() for d in analysis.divergences] if analysis else [],
        )
        if breaches:
            lines = ["over the token budget:", *(f"  {b}" for b in breaches)]
            if analysis is not None:
                lines.extend(["verdicts:", *(f"  {line}" for line in analysis.verdict_lines())])
            raise AssertionError("\n".join(lines))

    def assert_cache_hit_rate(self, min: float) -> None:
        """Fail when the cache hit rate (reads over all input tokens) is below ``min`` (0-1).

        Raises:
            AssertionError: with the rate, the budget and every turn's verdict.
        """
        rate = self.cache_hit_rate
        if rate >= min:
            return
        lines = [f"cache hit rate {rate:.1%} is below {min:.1%}"]
        lines.extend(f"  {line}" for line in self.cache_analysis().verdict_lines())
        raise AssertionError("\n".join(lines))


class LiveLedger(Ledger):
    """A ledger that reads its turns afresh on each access: the ``token_ledger`` fixture.

    It always reflects every exchange the test has made so far.
    """

    def __init__(self, source: Callable[[], Ledger]) -> None:
        self._source = source
        self.source = ""

    @property
    def turns(self) -> list[Turn]:
        """The turns so far."""
        return self._source().turns

    @property
    def exchanges(self) -> list[Exchange]:
        """Every exchange so far, billed or not."""
        return self._source().exchanges

    def snapshot(self) -> Ledger:
        """A frozen copy of the ledger as it is now."""
        return self._source()


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
                except ValueError:
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
    if not isinstance(usage.get("input_tokens"), int) or not (
        incomplete or isinstance(usage.get("output_tokens"), int)
    ):
        raise ValueError("usage lacks input_tokens or output_tokens")
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
        message_id=message.get("id"),
        stop_reason=message.get("stop_reason"),
        incomplete=incomplete,
        request=request,
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
        except ValueError:
            raise ValueError(f"batch results line {number} is not JSON") from None
        result = item.get("result") if isinstance(item, dict) else None
        if not isinstance(result, dict):
            raise ValueError(f"batch results line {number} has no result")
        if result.get("type") != "succeeded":
            continue
        message = result.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
            raise ValueError(f"batch results line {number}: succeeded without a message usage")
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
        )
        index += 1
