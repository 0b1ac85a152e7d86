"""An Anthropic Messages API emulator: a real HTTP server on 127.0.0.1.

It speaks enough of the API for agents to run against it with the official SDK: messages (JSON
and SSE), count_tokens, the Message Batches API, errors with Anthropic's body, scripted replies,
prompt-caching usage by the rules of :mod:`pytest_tokenbudget.cache_model`, and cache diagnostics.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..cache_model import CacheStore, cache_layout, diagnose, simulate
from ..prefix import LayoutMemo, PromptLayout
from ._replies import Clock, Reply
from ._tokens import cumulative_tokens, output_tokens
from ._usage import context_management_of, report_usage

__all__ = ["AnthropicEmulator", "EmulatedRequest"]

DIAGNOSTICS_BETA = "cache-diagnosis-2026-04-07"
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_BATCH_PATH = re.compile(r"^/v1/messages/batches/([A-Za-z0-9_]+)(/results|/cancel)?$")
_CHUNK = 24


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class EmulatedRequest:
    """A request the emulator received.

    Attributes:
        method: HTTP method.
        path: URL path (without query).
        headers: request headers, lower-case names.
        body: the parsed JSON body, or ``None``.
        at: emulated time it arrived.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    at: float


class _ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] | None = None
    request_id: str | None = None
    delay: float = 0.0


class AnthropicEmulator:
    """A local Anthropic API on 127.0.0.1 for tests.

    Use it as a context manager or through the ``anthropic_emulator`` pytest fixture, point the
    SDK at :attr:`base_url`, and queue replies with :meth:`script`::

        with AnthropicEmulator() as emulator:
            emulator.script(Reply.tool_use("get_weather", {"city": "Paris"}), Reply.text("Sunny."))
            client = anthropic.Anthropic(base_url=emulator.base_url, api_key="test")

    Token counts follow :mod:`pytest_tokenbudget.emulator._tokens`; cache reads and writes follow
    :func:`pytest_tokenbudget.cache_model.simulate` on :attr:`clock`.

    Args:
        clock: the clock TTLs and batches run on (default: wall time, movable).
        batch_seconds: how long a batch stays ``in_progress`` after it is created.
        gzip_json: compress JSON responses when the client accepts gzip, as the live API does.
        require_diagnostics_beta: answer ``diagnostics`` only when the request carries the
            ``cache-diagnosis-2026-04-07`` beta header (UNSURE whether the live API still needs it:
            the diagnostics were documented as a beta).

    Attributes:
        chars_per_token: characters per input token by kind of block (``tools``, ``text``,
            ``tool_use``, ``tool_result``, ``other``); a kind not named counts 4. Set it before
            the first request.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        batch_seconds: float = 0.0,
        gzip_json: bool = True,
        require_diagnostics_beta: bool = True,
    ) -> None:
        self.clock = clock or Clock()
        self.batch_seconds = batch_seconds
        self.gzip_json = gzip_json
        self.require_diagnostics_beta = require_diagnostics_beta
        self.chars_per_token: dict[str, float] = {}
        self.responder: Callable[[Mapping[str, Any]], Reply | None] | None = None
        self.cache = CacheStore()
        self.requests: list[EmulatedRequest] = []
        self._replies: deque[Reply] = deque()
        self._messages: dict[str, tuple[PromptLayout, list[int]]] = {}
        self._layouts = LayoutMemo()  # an agent re-sends its transcript: canonicalise each block once
        self._batches: dict[str, dict[str, Any]] = {}
        self._counter = 0
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> AnthropicEmulator:
        """Start serving on a free port of 127.0.0.1."""
        if self._server is not None:
            return self
        emulator = self

        class Handler(_Handler):
            owner = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="anthropic-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> AnthropicEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: pass it as the SDK's ``base_url``."""
        if self._server is None:
            raise RuntimeError("the emulator is not running: call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ---------------------------------------------------------------- scripting

    def script(self, *replies: Reply) -> None:
        """Queue replies; each request takes the next one (errors included)."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def pending_replies(self) -> int:
        """Scripted replies not yet used."""
        return len(self._replies)

    def reset(self) -> None:
        """Forget scripted replies, cached prefixes, batches and received requests."""
        with self._lock:
            self._replies.clear()
            self.cache.clear()
            self.requests.clear()
            self._messages.clear()
            self._batches.clear()
            self._layouts = LayoutMemo()
            self._counter = 0

    # ---------------------------------------------------------------- dispatch

    def _next_reply(self, body: Mapping[str, Any]) -> Reply:
        if self._replies:
            return self._replies.popleft()
        if self.responder is not None:
            reply = self.responder(body)
            if reply is not None:
                return reply
        return Reply.text("OK")

    def _new_id(self, prefix: str) -> str:
        # From a counter only: the same sequence of requests gets the same ids, and an edited
        # prompt does not change the ids (and with them the tool_use ids every later turn
        # re-sends), so re-recording after a prompt edit gives a small cassette diff.
        self._counter += 1
        digest = hashlib.sha256(f"{prefix}:{self._counter}".encode()).hexdigest()[:24]
        return f"{prefix}_emu{digest}"

    def handle(self, method: str, target: str, headers: Mapping[str, str], raw: bytes) -> _Response:
        """Answer one HTTP request (the server calls this; tests may too)."""
        path = urlsplit(target).path
        query = parse_qs(urlsplit(target).query)
        with self._lock:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return self._error(_ApiError(400, "invalid_request_error", "Request body is not valid JSON"))
            self.requests.append(EmulatedRequest(method, path, dict(headers), body, self.clock.now()))
            try:
                if not (headers.get("x-api-key") or headers.get("authorization")):
                    raise _ApiError(
                        401, "authentication_error", "x-api-key header is required", {"x-should-retry": "false"}
                    )
                return self._route(method, path, query, headers, body)
            except _ApiError as error:
                return self._error(error)
            except Exception as error:  # a bug or an input we did not foresee: answer like the API would
                return self._error(_ApiError(500, "api_error", f"emulator error: {type(error).__name__}: {error}"))

    def _route(
        self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: Any
    ) -> _Response:
        if method == "POST" and path == "/v1/messages":
            return self._messages_endpoint(_require_object(body), headers)
        if method == "POST" and path == "/v1/messages/count_tokens":
            return self._count_tokens(_require_object(body))
        if path == "/v1/messages/batches":
            if method == "POST":
                return self._batch_create(_require_object(body))
            if method == "GET":
                return self._batch_list(query)
        match = _BATCH_PATH.match(path)
        if match:
            batch_id, action = match.groups()
            if method == "GET" and action is None:
                return self._json(self._batch_view(batch_id))
            if method == "GET" and action == "/results":
                return self._batch_results(batch_id)
            if method == "POST" and action == "/cancel":
                return self._batch_cancel(batch_id)
            if method == "DELETE" and action is None:
                batch = self._batch(batch_id)
                self._batch_process(batch)
                if batch["results"] is None:
                    raise _ApiError(
                        400,
                        "invalid_request_error",
                        f"batch {batch_id} is still processing: cancel it first, then delete it",
                    )
                del self._batches[batch_id]
                return self._json({"id": batch_id, "type": "message_batch_deleted"})
        raise _ApiError(404, "not_found_error", f"Not found: {method} {path}", {"x-should-retry": "false"})

    # ---------------------------------------------------------------- messages

    def _prepare(
        self, body: Mapping[str, Any], *, count_only: bool = False, cleared: int = 0
    ) -> tuple[PromptLayout, list[int]]:
        for key in ("model", "messages") if count_only else ("model", "max_tokens", "messages"):
            if key not in body:
                raise _ApiError(400, "invalid_request_error", f"{key}: Field required")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise _ApiError(400, "invalid_request_error", "messages: at least one message is required")
        if not count_only and (not isinstance(body["max_tokens"], int) or body["max_tokens"] < 0):
            raise _ApiError(400, "invalid_request_error", "max_tokens: must be a non-negative integer")
        # What the API caches: earlier thinking stripped where the model does, cleared tool
        # results replaced (pytest_tokenbudget.cache_model.cache_layout).
        layout = cache_layout(body, self._layouts, cleared=cleared)
        if layout.problems:
            raise _ApiError(400, "invalid_request_error", layout.problems[0])
        return layout, cumulative_tokens(layout, self.chars_per_token)

    def _context_edits(self, body: Mapping[str, Any]) -> tuple[int, list[dict[str, Any]] | None]:
        """Context editing (beta): ``clear_tool_uses_20250919`` edits the request asks for.

        When the prompt's input tokens pass the edit's trigger (default 100,000 input tokens), the
        oldest tool results are cleared, keeping the last ``keep`` tool uses (default 3) and
        clearing at least ``clear_at_least`` tokens when asked (docs: context editing). Returns
        the tool uses cleared and the response's ``applied_edits`` (``None``: none asked for).
        """
        management = body.get("context_management")
        edits = management.get("edits") if isinstance(management, dict) else None
        if not isinstance(edits, list):
            return 0, None
        layout, cumulative = self._prepare(body)
        total = cumulative[-1] if cumulative else 0
        results = [b for b in layout.blocks if b.kind == "tool_result"]
        applied: list[dict[str, Any]] = []
        cleared = 0
        for edit in edits:
            if not isinstance(edit, dict) or not str(edit.get("type", "")).startswith("clear_tool_uses"):
                continue
            trigger = edit["trigger"] if isinstance(edit.get("trigger"), dict) else {}
            keep = edit["keep"] if isinstance(edit.get("keep"), dict) else {}
            if total <= int(trigger.get("value", 100_000)):
                continue
            count = max(0, len(results) - int(keep.get("value", 3)))
            if count <= cleared:
                continue
            before = self._prepare(body, cleared=cleared)[1]
            after = self._prepare(body, cleared=count)[1]
            applied.append(
                {
                    "type": edit["type"],
                    "cleared_tool_uses": count - cleared,
                    "cleared_input_tokens": (before[-1] if before else 0) - (after[-1] if after else 0),
                }
            )
            cleared = count
        return cleared, applied

    def warm(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a request to the cache as an earlier run would have, without recording it.

        Nothing goes over HTTP, so nothing reaches the test's cassette: the recording that follows
        shows a cache warm from outside. Returns the usage the request would have reported.
        """
        with self._lock:
            layout, cumulative = self._prepare(body)
            return simulate(layout, cumulative, self.cache, self.clock.now()).usage()

    def _create_message(
        self, body: Mapping[str, Any], headers: Mapping[str, str], *, service_tier: str = "standard"
    ) -> tuple[Reply, dict[str, Any] | None]:
        cleared, applied_edits = self._context_edits(body)
        layout, cumulative = self._prepare(body, cleared=cleared)
        reply = self._next_reply(body)
        if reply.stream_error_after is not None and not body.get("stream"):
            # Without a stream there is no mid-stream error: the request fails as a whole.
            reply = Reply.error(529, error_type=reply.error_type or "overloaded_error", message=reply.message)
        if reply.status != 200:
            return reply, None
        now = self.clock.now()
        # The entries this request writes become readable when its response comes: a request
        # sent meanwhile (in parallel) misses them (Reply.latency).
        outcome = simulate(layout, cumulative, self.cache, now, readable_from=now + reply.latency)
        prewarm = body.get("max_tokens") == 0
        content = [] if prewarm else self._content(reply)
        message_id = self._new_id("msg")
        for i, block in enumerate(content):
            if block.get("type") in ("tool_use", "server_tool_use") and "id" not in block:
                block["id"] = "toolu_emu" + hashlib.sha256(f"{message_id}:{i}".encode()).hexdigest()[:24]
        usage: dict[str, Any] = {
            **outcome.usage(),
            "output_tokens": 0 if prewarm else output_tokens(content),
            "service_tier": service_tier,
        }
        if body.get("speed") is not None:
            usage["speed"] = body["speed"]
        report_usage(usage, content, body, reply)
        usage.update(reply.usage)
        message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": "max_tokens" if prewarm else reply.stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        scripted = context_management_of(reply)
        edits = [*(applied_edits or ()), *(scripted["applied_edits"] if scripted is not None else ())]
        if applied_edits is not None or scripted is not None:
            message["context_management"] = {"applied_edits": edits}
        diagnostics = self._diagnostics(body, headers, layout)
        if diagnostics is not _ABSENT:
            message["diagnostics"] = diagnostics
        self._messages[message_id] = (layout, cumulative)
        return reply, message

    def _content(self, reply: Reply) -> list[dict[str, Any]]:
        content = [dict(block) for block in reply.content]
        for block in content:
            if block.get("type") == "thinking" and "signature" not in block:
                block["signature"] = "emu-sig-" + hashlib.sha256(str(block["thinking"]).encode()).hexdigest()[:16]
        return content

    def _diagnostics(self, body: Mapping[str, Any], headers: Mapping[str, str], layout: PromptLayout) -> Any:
        requested = body.get("diagnostics")
        if not isinstance(requested, dict):
            return _ABSENT
        betas = {b.strip() for b in headers.get("anthropic-beta", "").split(",")}
        if self.require_diagnostics_beta and DIAGNOSTICS_BETA not in betas:
            return _ABSENT
        previous_id = requested.get("previous_message_id")
        if previous_id is None:
            return None
        previous = self._messages.get(str(previous_id))
        if previous is None:
            return {"cache_miss_reason": {"type": "previous_message_not_found"}}
        reason = diagnose(previous[0], previous[1], layout)
        return None if reason is None else {"cache_miss_reason": reason}

    def _messages_endpoint(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> _Response:
        stream = bool(body.get("stream"))
        if body.get("max_tokens") == 0:
            _check_prewarm(body)
        reply, message = self._create_message(body, headers)
        if message is None:
            raise _reply_error(reply)
        if not stream:
            return _Response(200, _dumps(message), delay=reply.latency)
        return _Response(
            200,
            b"".join(_sse(message, reply)),
            "text/event-stream; charset=utf-8",
            {"cache-control": "no-cache"},
            delay=reply.latency,
        )

    def _count_tokens(self, body: Mapping[str, Any]) -> _Response:
        _layout, cumulative = self._prepare(body, count_only=True)
        return self._json({"input_tokens": cumulative[-1] if cumulative else 0})

    # ---------------------------------------------------------------- batches

    def _batch(self, batch_id: str) -> dict[str, Any]:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise _ApiError(404, "not_found_error", f"batch {batch_id} not found", {"x-should-retry": "false"})
        return batch

    def _batch_create(self, body: Mapping[str, Any]) -> _Response:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise _ApiError(400, "invalid_request_error", "requests: at least one request is required")
        seen: set[str] = set()
        for i, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                raise _ApiError(
                    400, "invalid_request_error", f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
                )
            if custom_id in seen:
                raise _ApiError(400, "invalid_request_error", f"requests.{i}.custom_id: duplicate {custom_id!r}")
            seen.add(custom_id)
            params = item.get("params")
            if not isinstance(params, dict):
                raise _ApiError(400, "invalid_request_error", f"requests.{i}.params: Field required")
            for refused in ("stream", "speed"):
                if params.get(refused):
                    raise _ApiError(
                        400, "invalid_request_error", f"requests.{i}.params.{refused}: not supported in batches"
                    )
            if params.get("max_tokens") == 0:
                raise _ApiError(
                    400, "invalid_request_error", f"requests.{i}.params.max_tokens: 0 is not supported in batches"
                )
        now = self.clock.now()
        batch_id = self._new_id("msgbatch")
        self._batches[batch_id] = {
            "id": batch_id,
            "created_at": now,
            "requests": requests,
            "results": None,
            "canceled_at": None,
            "ended_at": None,
        }
        return self._json(self._batch_view(batch_id))

    def _batch_process(self, batch: dict[str, Any]) -> None:
        if batch["results"] is not None:
            return
        now = self.clock.now()
        if batch["canceled_at"] is None and now < batch["created_at"] + self.batch_seconds:
            return
        results = []
        for item in batch["requests"]:
            if batch["canceled_at"] is not None:
                results.append({"custom_id": item["custom_id"], "result": {"type": "canceled"}})
                continue
            try:
                reply, message = self._create_message(item["params"], {}, service_tier="batch")
            except _ApiError as error:
                results.append(
                    {
                        "custom_id": item["custom_id"],
                        "result": {"type": "errored", "error": _error_body(error.kind, error.message)},
                    }
                )
                continue
            if message is None:
                failure = _reply_error(reply)
                results.append(
                    {
                        "custom_id": item["custom_id"],
                        "result": {"type": "errored", "error": _error_body(failure.kind, failure.message)},
                    }
                )
            else:
                results.append({"custom_id": item["custom_id"], "result": {"type": "succeeded", "message": message}})
        batch["results"] = results
        batch["ended_at"] = now

    def _batch_view(self, batch_id: str, *, process: bool = True) -> dict[str, Any]:
        batch = self._batch(batch_id)
        if process:
            self._batch_process(batch)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch["results"] is None:
            counts["processing"] = len(batch["requests"])
            status = "canceling" if batch["canceled_at"] is not None else "in_progress"
        else:
            for result in batch["results"]:
                counts[result["result"]["type"]] += 1
            status = "ended"
        iso = self.clock.isoformat
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": iso(batch["ended_at"]) if batch["ended_at"] is not None else None,
            "created_at": iso(batch["created_at"]),
            "expires_at": iso(batch["created_at"] + 86400),
            "archived_at": None,
            "cancel_initiated_at": iso(batch["canceled_at"]) if batch["canceled_at"] is not None else None,
            # Relative, so recordings do not carry the emulator's random port; the SDK joins it
            # with its base URL. The live API returns an absolute URL (Anthropic docs: Message
            # Batches, ``results_url``).
            "results_url": f"/v1/messages/batches/{batch_id}/results" if status == "ended" else None,
        }

    def _batch_list(self, query: Mapping[str, list[str]]) -> _Response:
        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            raise _ApiError(400, "invalid_request_error", "limit: must be an integer") from None
        if not 1 <= limit <= 1000:
            raise _ApiError(400, "invalid_request_error", "limit: must be between 1 and 1000")
        ids = list(reversed(self._batches))  # most recently created first, as the API lists them
        after = query.get("after_id", [None])[0]
        if after in self._batches:
            ids = ids[ids.index(after) + 1 :]
        page = [self._batch_view(i) for i in ids[:limit]]
        return self._json(
            {
                "data": page,
                "has_more": len(ids) > limit,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    def _batch_cancel(self, batch_id: str) -> _Response:
        batch = self._batch(batch_id)
        if batch["results"] is None and batch["canceled_at"] is None:
            batch["canceled_at"] = self.clock.now()
        # The API answers "canceling"; the batch ends (its requests canceled) when next looked at.
        return self._json(self._batch_view(batch_id, process=False))

    def _batch_results(self, batch_id: str) -> _Response:
        batch = self._batch(batch_id)
        self._batch_process(batch)
        if batch["results"] is None:
            raise _ApiError(400, "invalid_request_error", f"batch {batch_id} has not ended yet")
        lines = b"".join(_dumps(result) + b"\n" for result in batch["results"])
        return _Response(200, lines, "application/binary")

    # ---------------------------------------------------------------- responses

    def _json(self, payload: Any, status: int = 200) -> _Response:
        return _Response(status, _dumps(payload))

    def _error(self, error: _ApiError) -> _Response:
        request_id = self._new_id("req")
        body = _dumps({**_error_body(error.kind, error.message), "request_id": request_id})
        return _Response(error.status, body, headers=dict(error.headers), request_id=request_id)


_ABSENT: Any = object()


def _check_prewarm(body: Mapping[str, Any]) -> None:
    """A cache pre-warm (``max_tokens: 0``) is refused with these (the API rejects ``max_tokens`` below 1)."""
    thinking = body.get("thinking")
    tool_choice = body.get("tool_choice")
    output_config = body.get("output_config")
    refusals = [
        (bool(body.get("stream")), "stream: true"),
        (isinstance(thinking, dict) and thinking.get("type") == "enabled", "thinking.type: enabled"),
        (isinstance(output_config, dict) and "format" in output_config, "output_config.format"),
        (isinstance(tool_choice, dict) and tool_choice.get("type") in ("any", "tool"), "tool_choice any/tool"),
    ]
    for refused, what in refusals:
        if refused:
            raise _ApiError(400, "invalid_request_error", f"max_tokens: 0 is not supported with {what}")


def _require_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise _ApiError(400, "invalid_request_error", "request body must be a JSON object")
    return body


def _error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _reply_error(reply: Reply) -> _ApiError:
    headers: dict[str, str] = {}
    if reply.retry_after is not None:
        headers["retry-after"] = str(max(0, round(reply.retry_after)))
        headers["retry-after-ms"] = str(int(reply.retry_after * 1000))
    return _ApiError(reply.status, reply.error_type or "api_error", reply.message or "error", headers)


def _event(name: str, payload: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(payload) + b"\n\n"


def _chunks(text: str) -> Iterator[str]:
    for start in range(0, len(text), _CHUNK):
        yield text[start : start + _CHUNK]


def _sse(message: Mapping[str, Any], reply: Reply) -> Iterator[bytes]:
    """The SSE events of a message, in the order the API sends them (Anthropic docs: Streaming Messages)."""
    usage = dict(message["usage"])
    # iterations come on message_delta only (the SDK's beta accumulator reads them there)
    start_usage = {k: v for k, v in usage.items() if k not in ("output_tokens", "server_tool_use", "iterations")}
    start_usage["output_tokens"] = 1
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    start.pop("context_management", None)  # on message_delta, as the API sends it
    yield _event("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(message["content"]):
        if reply.stream_error_after is not None and index >= reply.stream_error_after:
            break
        kind = block.get("type")
        if kind == "text":
            yield _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
            )
            if index == 0:
                yield b'event: ping\ndata: {"type": "ping"}\n\n'
            for piece in _chunks(str(block.get("text", ""))):
                yield _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}},
                )
        elif kind == "thinking":
            yield _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                },
            )
            for piece in _chunks(str(block.get("thinking", ""))):
                yield _event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": piece},
                    },
                )
            yield _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": block.get("signature", "")},
                },
            )
        elif kind in ("tool_use", "server_tool_use"):
            head = {k: v for k, v in block.items() if k != "input"}
            yield _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": {**head, "input": {}}},
            )
            partial = json.dumps(block.get("input", {}), separators=(",", ":"), ensure_ascii=False)
            for piece in ["", *_chunks(partial)]:
                yield _event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        else:
            yield _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
    if reply.stream_error_after is not None:
        yield _event("error", _error_body(reply.error_type or "overloaded_error", reply.message or "Overloaded"))
        return
    delta_usage = {
        k: usage[k]
        for k in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
            "server_tool_use",
            "output_tokens_details",
            "iterations",
        )
        if k in usage
    }
    delta_event: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": delta_usage,
    }
    if "context_management" in message:  # context editing reports on the delta in streams
        delta_event["context_management"] = message["context_management"]
    yield _event("message_delta", delta_event)
    yield _event("message_stop", {"type": "message_stop"})


class _Handler(BaseHTTPRequestHandler):
    owner: AnthropicEmulator
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK (~40 ms a response).
    disable_nagle_algorithm = True
    server_version = "anthropic-emulator"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.owner.handle(self.command, self.path, headers, raw)
        if response.delay > 0:
            time.sleep(response.delay)  # outside the emulator's lock: other requests go on meanwhile
        body = response.body
        compress = (
            self.owner.gzip_json
            and response.content_type == "application/json"
            and "gzip" in headers.get("accept-encoding", "")
        )
        if compress:
            body = gzip.compress(body, mtime=0)
        self.send_response(response.status)
        self.send_header("content-type", response.content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", response.request_id or "req_emu" + hashlib.sha256(body).hexdigest()[:24])
        self.send_header("anthropic-organization-id", "emulator-org-0000")
        if compress:
            self.send_header("content-encoding", "gzip")
        for name, value in (response.headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve
