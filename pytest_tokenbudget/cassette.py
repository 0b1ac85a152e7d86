"""Cassettes: reading any vcrpy recording, and writing ours.

Two formats are read:

* **vcrpy** cassettes, as plain vcrpy and pytest-recording write them, YAML or JSON: bodies as
  text, as YAML ``!!binary`` (base64), as ``base64_string``, gzip/deflate-compressed, or as the
  old httpx layout (``status_code``/``content``).
* **pytest-tokenbudget** cassettes (``format: pytest-tokenbudget/1``), written by this plugin.
  JSON bodies are stored parsed, so a prompt reads as YAML and a change shows as a small diff. A
  request that extends an earlier one (an agent turn re-sends the transcript and adds to it) is
  stored as ``extends: N`` plus the few operations that turn request N into this one, so a
  cassette grows with the transcript, not with its square. Every stored body is checked to
  rebuild byte for byte when written; one that would not is stored verbatim.

:data:`vcr_serializer` exposes the format through vcrpy's serializer interface, and
:class:`TokenBudgetPersister` through its persister interface (atomic writes; a corrupt file is
an error, never an empty cassette).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import gc
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ._atomic import write_atomic
from .errors import CassetteError
from .prefix import format_path

__all__ = [
    "FORMAT",
    "Body",
    "Cassette",
    "Interaction",
    "TokenBudgetPersister",
    "dump_cassette",
    "endpoint_of",
    "load_cassette",
    "parse_cassette",
    "save_cassette",
    "vcr_serializer",
]

FORMAT = "pytest-tokenbudget/1"
REDACTED = "<redacted>"
_HEADER_COMMENT = (
    "# Recorded by pytest-tokenbudget; replayed offline by its pytest plugin.\n"
    "# Request bodies are stored parsed; 'extends: N' + 'ops' = interaction N's body with these edits.\n"
)

# Only these headers are written: everything else is volatile (SDK version, retry count,
# timeouts, rate-limit counters, request ids) or secret (authorization, x-api-key, cookies,
# organization and workspace ids). An allow list cannot leak a header nobody thought of.
_KEEP_REQUEST_HEADERS = (
    "anthropic-version",
    "anthropic-beta",
    "content-type",
    "accept",
    "x-stainless-async",
    "x-stainless-helper-method",
    "x-stainless-stream-helper",
)
_KEEP_RESPONSE_HEADERS = ("content-type", "retry-after", "retry-after-ms", "x-should-retry")
_LOOPBACK = re.compile(r"^(https?://)(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)")

# JSON encodings a body may be rebuilt with: (separators, ensure_ascii). The anthropic SDK 2.x
# sends compact JSON with ensure_ascii=False; SDK 0.x used the json module's defaults.
_STYLES: dict[str, tuple[tuple[str, str], bool]] = {
    "compact": ((",", ":"), False),
    "compact-ascii": ((",", ":"), True),
    "spaced": ((", ", ": "), False),
    "spaced-ascii": ((", ", ": "), True),
}


def _encode(value: Any, style: str) -> bytes:
    separators, ascii_only = _STYLES[style]
    return json.dumps(value, separators=separators, ensure_ascii=ascii_only).encode("utf-8")


# --------------------------------------------------------------------------------------------
# bodies and interactions

_UNSET: Any = object()


class _Encoder:
    """Encodes request bodies of one cassette, reusing the bytes of values they share.

    An agent's turn k+1 re-sends turn k's messages; in memory (see :func:`apply_ops`) those are
    the very same objects. Encoding each top-level value and each item of a top-level list once,
    keyed by identity, makes rebuilding every body's bytes cost what is new in it plus a copy,
    instead of a full re-serialisation per turn. The output equals ``json.dumps`` byte for byte.
    """

    __slots__ = ("_ascii", "_item", "_key", "_lists", "_memo", "_separators")

    def __init__(self, style: str) -> None:
        self._separators, self._ascii = _STYLES[style]
        self._item = self._separators[0].encode("ascii")
        self._key = self._separators[1].encode("ascii")
        self._memo: dict[int, tuple[Any, bytes]] = {}
        # Per top-level key, the last list encoded: its items, the end of each item in the
        # joined bytes, and those bytes as segments with their ends. The next body's list
        # usually starts with the same items (objects): its segments then start with these.
        self._lists: dict[str, tuple[list[Any], list[int], list[bytes], list[int]]] = {}

    def _dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=self._separators, ensure_ascii=self._ascii).encode("utf-8")

    def _value(self, value: Any) -> bytes:
        if not isinstance(value, dict | list):
            return self._dumps(value)
        hit = self._memo.get(id(value))
        if hit is not None:
            return hit[1]
        encoded = self._dumps(value)
        # The value is kept with its bytes, so its id cannot be reused by another object.
        self._memo[id(value)] = (value, encoded)
        return encoded

    def _list(self, key: str, items: list[Any]) -> list[bytes]:
        """The items of a list joined with the item separator, as segments, resuming from the last list of ``key``.

        Segments are kept rather than joined: the shared prefix of the next list is a few of
        them (one more per turn), so neither building nor comparing a long transcript copies it.
        """
        last_items, last_ends, last_segments, last_segment_ends = self._lists.get(key, ([], [], [], []))
        shared = 0
        limit = min(len(items), len(last_items))
        while shared < limit and items[shared] is last_items[shared]:
            shared += 1
        ends = last_ends[:shared]
        segments: list[bytes] = []
        segment_ends: list[int] = []
        if shared:
            boundary = ends[-1]
            whole = bisect.bisect_right(last_segment_ends, boundary)
            segments = last_segments[:whole]
            segment_ends = last_segment_ends[:whole]
            done = segment_ends[-1] if segment_ends else 0
            if done < boundary:  # the shared prefix ends inside a segment: keep its head
                segments.append(last_segments[whole][: boundary - done])
                segment_ends.append(boundary)
        length = ends[-1] if shared else 0
        pieces = []
        for number in range(shared, len(items)):
            encoded = self._value(items[number])
            if number:
                pieces.append(self._item)
                length += len(self._item)
            pieces.append(encoded)
            length += len(encoded)
            ends.append(length)
        if pieces:
            segments.append(b"".join(pieces))
            segment_ends.append(length)
        self._lists[key] = (list(items), ends, segments, segment_ends)
        return segments

    def parts(self, value: Any) -> list[bytes]:
        """``json.dumps(value)`` in this style, as a list of byte strings to concatenate."""
        if not isinstance(value, dict):
            return [self._value(value)]
        parts = [b"{"]
        for number, (key, item) in enumerate(value.items()):
            if number:
                parts.append(self._item)
            parts.append(self._dumps(key))
            parts.append(self._key)
            if isinstance(item, list):
                parts.append(b"[")
                parts.extend(self._list(str(key), item))
                parts.append(b"]")
            else:
                parts.append(self._value(item))
        parts.append(b"}")
        return parts

    def encode(self, value: Any) -> bytes:
        """``json.dumps(value)`` in this style, with shared parts encoded once."""
        return b"".join(self.parts(value))


class Body:
    """An HTTP body: its exact bytes, and its parsed JSON on demand.

    Bodies read from our format start as parsed JSON plus the encoding that rebuilds their bytes;
    bodies read from vcrpy cassettes start as bytes. Parsed JSON is kept once computed; bytes
    rebuilt from JSON are not kept (an agent's bodies repeat the transcript, so keeping them
    all would cost memory quadratic in the run's length): they are rebuilt with a shared
    :class:`_Encoder` when asked.
    """

    __slots__ = ("_encoder", "_json", "_raw", "_style")

    def __init__(
        self,
        raw: bytes | None = None,
        *,
        json_value: Any = _UNSET,
        style: str = "compact",
        encoder: _Encoder | None = None,
    ) -> None:
        self._raw = raw
        self._json = json_value
        self._style = style
        self._encoder = encoder

    @property
    def raw(self) -> bytes:
        """The exact bytes."""
        if self._raw is not None:
            return self._raw
        if self._json is _UNSET:
            return b""
        if self._encoder is None:
            self._raw = _encode(self._json, self._style)
            return self._raw
        return self._encoder.encode(self._json)

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` is exactly this body, compared piece by piece without building the bytes."""
        if self._raw is not None or self._encoder is None or self._json is _UNSET:
            return self.raw == data
        position = 0
        for part in self._encoder.parts(self._json):
            if not data.startswith(part, position):
                return False
            position += len(part)
        return position == len(data)

    def json(self) -> Any:
        """The parsed JSON value; raises ``ValueError`` when the body is not JSON."""
        if self._json is _UNSET:
            self._json = json.loads(self.raw) if self.raw else None
        return self._json

    def try_json(self) -> Any:
        """The parsed JSON value, or ``None`` when the body is empty or not JSON."""
        try:
            return self.json()
        except ValueError:
            return None

    def text(self) -> str:
        """The bytes as UTF-8 text (undecodable bytes replaced)."""
        return self.raw.decode("utf-8", "replace")

    def __len__(self) -> int:
        return len(self.raw)


@dataclass(slots=True)
class Interaction:
    """One recorded HTTP exchange.

    Attributes:
        index: position in the cassette.
        method: HTTP method.
        uri: request URL.
        request_headers: lower-case name -> value.
        request_body: the request body.
        status: HTTP status code.
        reason: HTTP reason phrase.
        response_headers: lower-case name -> values.
        response_body: the response body, decompressed.
        recorded_at: POSIX seconds when the request started; for vcrpy cassettes, the response's
            ``date`` header (1-second resolution) when present.
    """

    index: int
    method: str
    uri: str
    request_headers: dict[str, str]
    request_body: Body
    status: int
    reason: str
    response_headers: dict[str, list[str]]
    response_body: Body
    recorded_at: float | None = None

    @property
    def path(self) -> str:
        """The request URL's path."""
        return urlsplit(self.uri).path

    @property
    def endpoint(self) -> str:
        """The API endpoint (see :func:`endpoint_of`)."""
        return endpoint_of(self.method, self.uri)

    @property
    def content_type(self) -> str:
        """The response's content type, lower case, without parameters."""
        values = self.response_headers.get("content-type") or [""]
        return values[0].split(";")[0].strip().lower()


@dataclass(slots=True)
class Cassette:
    """A cassette file's interactions.

    Attributes:
        path: where it was read from.
        format: ``pytest-tokenbudget/1`` or ``vcrpy``.
        interactions: in recorded order.
    """

    path: Path
    format: str
    interactions: list[Interaction] = field(default_factory=list)


_BATCH = re.compile(r"^/v1/messages/batches(?:/([^/]+))?(/results|/cancel)?/?$")


def endpoint_of(method: str, uri: str) -> str:
    """Name the Anthropic endpoint of a request.

    Returns one of ``messages``, ``count_tokens``, ``batch_create``, ``batch_list``,
    ``batch_retrieve``, ``batch_results``, ``batch_cancel``, ``batch_delete``, or ``other``.
    """
    path = urlsplit(uri).path.rstrip("/")
    if path == "/v1/messages":
        return "messages" if method == "POST" else "other"
    if path == "/v1/messages/count_tokens":
        return "count_tokens"
    match = _BATCH.match(path)
    if not match:
        return "other"
    batch_id, action = match.groups()
    if batch_id is None:
        return "batch_create" if method == "POST" else "batch_list"
    if action == "/results":
        return "batch_results"
    if action == "/cancel":
        return "batch_cancel"
    return "batch_delete" if method == "DELETE" else "batch_retrieve"


# --------------------------------------------------------------------------------------------
# reading


def load_cassette(path: Path | str) -> Cassette:
    """Read a cassette file of either format.

    Raises:
        FileNotFoundError: there is no such file.
        CassetteError: the file exists but cannot be read; the message names the interaction
            and what is wrong.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        head = raw[: err.start].decode("utf-8")
        raise CassetteError(
            "cassette cannot be read",
            file=str(path),
            why=_in_interaction(head, err.start, head.lstrip()[:1] in ("{", "["))
            + f"not UTF-8 text at byte {err.start}",
        ) from None
    return parse_cassette(text, path)


def parse_cassette(text: str, path: Path | str = "<string>") -> Cassette:
    """Parse cassette text (YAML or JSON, either format)."""
    path = Path(path)
    # Parsing builds tens of thousands of containers and no reference cycles: the cyclic
    # garbage collector would only rescan them, more often the longer the run (refcounting
    # still frees everything). Paused for the parse, restored after.
    collecting = gc.isenabled()
    gc.disable()
    try:
        data = _parse_document(text, path)
    finally:
        if collecting:
            gc.enable()
    if not isinstance(data, dict) or not isinstance(data.get("interactions"), list):
        kind = type(data).__name__
        raise CassetteError(
            "cassette cannot be read",
            file=str(path),
            why=f"expected a mapping with an 'interactions' list, found {kind}",
            fix="re-record it, or delete the file if it is not a cassette",
        )
    if data.get("format") == FORMAT:
        return Cassette(path, FORMAT, _read_ours(data["interactions"], path))
    if isinstance(data.get("format"), str) and str(data["format"]).startswith("pytest-tokenbudget/"):
        raise CassetteError(
            "cassette was written by a newer pytest-tokenbudget",
            file=str(path),
            why=f"format {data['format']!r}; this version reads {FORMAT!r}",
            fix="upgrade pytest-tokenbudget",
        )
    return Cassette(path, "vcrpy", _read_vcrpy(data["interactions"], path))


def _parse_document(text: str, path: Path) -> Any:
    stripped = text.lstrip()
    if not stripped:
        raise CassetteError(
            "cassette is empty",
            file=str(path),
            why="the file has no content (truncated write?)",
            fix="re-record it, or delete it",
        )
    if stripped[0] in "{[":
        try:
            return json.loads(text)
        except ValueError as err:
            line = getattr(err, "lineno", None)
            raise CassetteError(
                "cassette cannot be read",
                file=f"{path}" + (f", line {line}" if line else ""),
                why=_in_interaction(text, getattr(err, "pos", None), True) + f"invalid JSON: {err}",
                fix="re-record it",
            ) from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise CassetteError(
            "cassette cannot be read",
            file=f"{path}{where}",
            why=_in_interaction(text, getattr(mark, "index", None), False)
            + f"invalid YAML: {problem} (truncated or hand-edited?)",
            fix="re-record it",
        ) from None
    except (ValueError, binascii.Error) as err:
        raise CassetteError(
            "cassette cannot be read", file=str(path), why=f"invalid YAML value: {err}", fix="re-record it"
        ) from None


def _in_interaction(text: str, offset: int | None, is_json: bool) -> str:
    """``"interaction N: "`` for the interaction a syntax error at ``offset`` falls in, else ``""``.

    Interactions are the items of the top-level ``interactions`` list: in YAML (as PyYAML and
    vcrpy write it) the lines starting with ``- `` at column 0; in JSON the objects opened at
    depth 2.
    """
    if offset is None:
        return ""
    head = text[:offset]
    if not is_json:
        count = len(re.findall(r"^- ", head, re.MULTILINE))
    else:
        count, depth, in_string, escaped = 0, 0, False, False
        for char in head:
            if escaped:
                escaped = False
            elif in_string:
                escaped = char == "\\"
                in_string = char != '"'
            elif char == '"':
                in_string = True
            elif char in "{[":
                count += char == "{" and depth == 2
                depth += 1
            elif char in "}]":
                depth -= 1
    return f"interaction {count - 1}: " if count else ""


def _fail(path: Path, index: int, why: str) -> CassetteError:
    return CassetteError(
        "cassette cannot be read", file=str(path), why=f"interaction {index}: {why}", fix="re-record it"
    )


def _as_mapping(value: Any, path: Path, index: int, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, index, f"{what} is missing or not a mapping")
    return value


def _header_values(headers: Any, path: Path, index: int) -> dict[str, list[str]]:
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise _fail(path, index, "headers are not a mapping")
    out: dict[str, list[str]] = {}
    for name, value in headers.items():
        values = value if isinstance(value, list) else [value]
        out.setdefault(str(name).lower(), []).extend(str(v) for v in values)
    return out


def _to_bytes(value: Any, path: Path, index: int, what: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, dict | list):
        # Some serializers store JSON bodies parsed.
        try:
            return json.dumps(value).encode("utf-8")
        except (TypeError, ValueError) as err:  # e.g. bytes inside: a damaged vcrpy body mapping
            raise _fail(path, index, f"{what} is a mapping that is not JSON ({err})") from None
    raise _fail(path, index, f"{what} is a {type(value).__name__}, expected text or bytes")


def _decompress(raw: bytes, encodings: Sequence[str], path: Path, index: int) -> bytes:
    for encoding in reversed([e.strip().lower() for v in encodings for e in v.split(",") if e.strip()]):
        try:
            if encoding in ("gzip", "x-gzip"):
                raw = zlib.decompress(raw, zlib.MAX_WBITS | 16)
            elif encoding == "deflate":
                try:
                    raw = zlib.decompress(raw)
                except zlib.error:
                    raw = zlib.decompress(raw, -zlib.MAX_WBITS)
            elif encoding == "br":
                try:
                    import brotli  # type: ignore[import-not-found]
                except ImportError:
                    raise _fail(
                        path, index, "response body is brotli-compressed; install 'brotli' to read it"
                    ) from None
                raw = brotli.decompress(raw)
            elif encoding != "identity":
                raise _fail(path, index, f"unknown content-encoding {encoding!r}")
        except zlib.error as err:
            raise _fail(path, index, f"response body is not valid {encoding} data ({err})") from None
    return raw


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.timestamp()
    if isinstance(value, int | float):
        return float(value)
    text = str(value)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _read_vcrpy(items: list[Any], path: Path) -> list[Interaction]:
    out = []
    for index, item in enumerate(items):
        item = _as_mapping(item, path, index, "the interaction")
        request = _as_mapping(item.get("request"), path, index, "'request'")
        response = _as_mapping(item.get("response"), path, index, "'response'")
        if "method" not in request or "uri" not in request:
            raise _fail(path, index, "request has no 'method' or 'uri'")
        _check_uri(request["uri"], path, index)
        request_headers = {k: v[0] for k, v in _header_values(request.get("headers"), path, index).items() if v}
        request_raw = _to_bytes(
            _body_value(request.get("body"), path, index, "request body"), path, index, "request body"
        )
        if "status_code" in response:  # vcrpy's old httpx layout
            status, reason = response["status_code"], ""
            body_value: Any = response.get("content")
        else:
            status_value = _as_mapping(response.get("status"), path, index, "response 'status'")
            status, reason = status_value.get("code"), str(status_value.get("message") or "")
            body_value = _body_value(response.get("body"), path, index, "response body")
        if not isinstance(status, int):
            raise _fail(path, index, f"response status code {status!r} is not a number")
        response_headers = _header_values(response.get("headers"), path, index)
        raw = _to_bytes(body_value, path, index, "response body")
        encodings = response_headers.pop("content-encoding", [])
        raw = _decompress(raw, encodings, path, index)
        dates = response_headers.get("date")
        out.append(
            Interaction(
                index=index,
                method=str(request["method"]).upper(),
                uri=str(request["uri"]),
                request_headers=request_headers,
                request_body=Body(request_raw),
                status=status,
                reason=reason,
                response_headers=response_headers,
                response_body=Body(raw),
                recorded_at=_timestamp(item.get("recorded_at")) or (_timestamp(dates[0]) if dates else None),
            )
        )
    return out


def _check_uri(uri: Any, path: Path, index: int) -> None:
    # urlsplit raises ValueError on e.g. an unclosed "[": fail here rather than in the ledger.
    try:
        urlsplit(str(uri))
    except ValueError as err:
        raise _fail(path, index, f"request 'uri' {str(uri)!r} is not a URL ({err})") from None


def _body_value(body: Any, path: Path, index: int, what: str) -> Any:
    if isinstance(body, dict):
        if "base64_string" in body:
            try:
                return base64.b64decode(str(body["base64_string"]), validate=True)
            except (binascii.Error, ValueError):
                raise _fail(path, index, f"{what}: base64_string is not valid base64") from None
        if "parsed_body" in body:  # pydantic-ai's json_body_serializer
            return json.dumps(body["parsed_body"]).encode("utf-8")
        if "string" in body:
            return body["string"]
        return body
    return body


# --------------------------------------------------------------------------------------------
# our format: reading


def _read_ours(items: list[Any], path: Path) -> list[Interaction]:
    out: list[Interaction] = []
    encoders: dict[str, _Encoder] = {}
    for index, item in enumerate(items):
        item = _as_mapping(item, path, index, "the interaction")
        request = _as_mapping(item.get("request"), path, index, "'request'")
        response = _as_mapping(item.get("response"), path, index, "'response'")
        for key in ("method", "uri"):
            if not isinstance(request.get(key), str):
                raise _fail(path, index, f"request has no '{key}'")
        _check_uri(request["uri"], path, index)
        status = response.get("status")
        if not isinstance(status, int):
            raise _fail(path, index, f"response status {status!r} is not a number")
        request_body = _read_body(request.get("body"), out, path, index, "request", encoders)
        response_body = _read_body(response.get("body"), out, path, index, "response", None)
        headers = _header_values(request.get("headers"), path, index)
        out.append(
            Interaction(
                index=index,
                method=request["method"].upper(),
                uri=request["uri"],
                request_headers={k: v[0] for k, v in headers.items() if v},
                request_body=request_body,
                status=status,
                reason=str(response.get("reason") or ""),
                response_headers=_header_values(response.get("headers"), path, index),
                response_body=response_body,
                recorded_at=_timestamp(request.get("recorded_at")),
            )
        )
    return out


def _read_body(
    spec: Any,
    earlier: Sequence[Interaction],
    path: Path,
    index: int,
    side: str,
    encoders: dict[str, _Encoder] | None,
) -> Body:
    if spec is None:
        return Body(b"")
    if not isinstance(spec, dict):
        raise _fail(path, index, f"{side} body is not a mapping")
    style = spec.get("encoding", "compact")
    if style not in _STYLES:
        raise _fail(path, index, f"{side} body has unknown encoding {style!r}")
    encoder = encoders.setdefault(style, _Encoder(style)) if encoders is not None else None
    if "json" in spec:
        return Body(json_value=spec["json"], style=style, encoder=encoder)
    if "text" in spec:
        if not isinstance(spec["text"], str):
            raise _fail(path, index, f"{side} body 'text' is not text")
        return Body(spec["text"].encode("utf-8", "surrogatepass"))
    if "base64" in spec:
        try:
            return Body(base64.b64decode(str(spec["base64"]), validate=True))
        except (binascii.Error, ValueError):
            raise _fail(path, index, f"{side} body is not valid base64") from None
    if "extends" in spec:
        base_index = spec["extends"]
        if not isinstance(base_index, int) or not 0 <= base_index < len(earlier):
            raise _fail(path, index, f"{side} body extends interaction {base_index!r}, which does not come before it")
        try:
            base = earlier[base_index].request_body.json()
        except ValueError:
            raise _fail(path, index, f"{side} body extends interaction {base_index}, whose body is not JSON") from None
        try:
            value = apply_ops(base, spec.get("ops") or [])
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise _fail(path, index, f"{side} body: cannot apply its ops to interaction {base_index}: {err}") from None
        return Body(json_value=value, style=style, encoder=encoder)
    raise _fail(path, index, f"{side} body has none of json, text, base64, extends")


# --------------------------------------------------------------------------------------------
# structural deltas

_TOKEN = re.compile(r"\[(\d+)\]|\[(\"(?:[^\"\\]|\\.)*\")\]|\.?([A-Za-z_][A-Za-z0-9_]*)")


def _parse_path(text: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    if text == "$":
        return parts
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"bad path {text!r} at {pos}")
        index, quoted, name = match.groups()
        parts.append(int(index) if index is not None else json.loads(quoted) if quoted is not None else name)
        pos = match.end()
    return parts


def apply_ops(base: Any, ops: Iterable[Mapping[str, Any]]) -> Any:
    """Apply delta operations to a JSON value, copying only the containers on each path.

    Operations: ``{set: PATH, value: V}``, ``{drop: PATH}``, ``{append: PATH, items: [...]}``,
    ``{truncate: PATH, length: N}``. Paths look like ``messages[4].content[0].cache_control``.
    """
    root = base
    copied: set[int] = set()

    def writable(parts: Sequence[str | int]) -> Any:
        nonlocal root
        if id(root) not in copied:
            root = copy.copy(root)
            copied.add(id(root))
        node = root
        for part in parts:
            child = node[part]
            if id(child) not in copied:
                child = copy.copy(child)
                copied.add(id(child))
                node[part] = child
            node = child
        return node

    for op in ops:
        if "set" in op:
            parts = _parse_path(op["set"])
            if not parts:
                root = op["value"]
                continue
            writable(parts[:-1])[parts[-1]] = op["value"]
        elif "drop" in op:
            parts = _parse_path(op["drop"])
            del writable(parts[:-1])[parts[-1]]
        elif "append" in op:
            target = writable(_parse_path(op["append"]))
            if not isinstance(target, list):
                raise TypeError(f"{op['append']} is not a list")
            target.extend(op["items"])
        elif "truncate" in op:
            target = writable(_parse_path(op["truncate"]))
            if not isinstance(target, list):
                raise TypeError(f"{op['truncate']} is not a list")
            del target[int(op["length"]) :]
        else:
            raise ValueError(f"unknown op {sorted(op)}")
    return root


class _Same:
    """Equality that also compares key order and int/float/bool types: equal JSON text.

    Each container's text is computed once per comparison session (C-speed ``json.dumps``),
    which keeps diffing two long transcripts fast.
    """

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Any, str]] = {}

    def _text(self, value: Any) -> str:
        if not isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        hit = self._memo.get(id(value))
        if hit is None:
            hit = (value, json.dumps(value, ensure_ascii=False))
            self._memo[id(value)] = hit
        return hit[1]

    def __call__(self, a: Any, b: Any) -> bool:
        return a is b or (type(a) is type(b) and self._text(a) == self._text(b))


_MAX_EDITS = 3


def diff_ops(
    base: Any, new: Any, parts: list[str | int] | None = None, same: _Same | None = None
) -> list[dict[str, Any]]:
    """Operations that turn ``base`` into ``new`` (see :func:`apply_ops`)."""
    parts = parts or []
    same = same or _Same()
    path = format_path(parts)
    if same(base, new):
        return []
    if isinstance(base, dict) and isinstance(new, dict):
        kept = [k for k in base if k in new]
        if kept == [k for k in new if k in base] and list(new)[: len(kept)] == kept:
            ops: list[dict[str, Any]] = [{"drop": format_path([*parts, k])} for k in base if k not in new]
            for key in kept:
                ops.extend(diff_ops(base[key], new[key], [*parts, key], same))
            ops.extend({"set": format_path([*parts, k]), "value": new[k]} for k in new if k not in base)
            return ops
        return [{"set": path, "value": new}]
    if isinstance(base, list) and isinstance(new, list):
        common = min(len(base), len(new))
        edits: list[dict[str, Any]] = []
        changed = 0
        for i in range(common):
            if not same(base[i], new[i]):
                changed += 1
                if changed > _MAX_EDITS:
                    return [{"set": path, "value": new}]
                edits.extend(diff_ops(base[i], new[i], [*parts, i], same))
        if len(new) > len(base):
            edits.append({"append": path, "items": new[len(base) :]})
        elif len(new) < len(base):
            edits.insert(0, {"truncate": path, "length": len(new)})
        return edits
    return [{"set": path, "value": new}]


# --------------------------------------------------------------------------------------------
# writing


def _style_of(raw: bytes, value: Any) -> str | None:
    for style in _STYLES:
        try:
            if _encode(value, style) == raw:
                return style
        except (ValueError, UnicodeEncodeError):
            return None
    return None


def _normalise_uri(uri: str) -> str:
    # A loopback server (the emulator) listens on a random port: keep it out of the file so
    # re-recording an unchanged test changes nothing. Replay matches on method and path.
    return _LOOPBACK.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(4)}", uri)


class _Dumper(yaml.CSafeDumper if hasattr(yaml, "CSafeDumper") else yaml.SafeDumper):  # type: ignore[misc]
    """Block style, literal blocks for multi-line text, no line folding (diff-friendly)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_str)


class _Loader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """Safe loader; bodies may hold !!binary (vcrpy's gzip bodies)."""


def _body_spec(
    body: Body, json_ok: bool, base: tuple[int, Any] | None, secrets: Callable[[Any], Any]
) -> tuple[dict[str, Any], Any]:
    """The stored form of a body, and its parsed value (to serve as a later body's base)."""
    raw = body.raw
    if not raw:
        return {"text": ""}, None
    value = body.try_json() if json_ok else None
    if value is not None or raw.strip() == b"null":
        style = _style_of(raw, value)
        if style is not None:
            spec: dict[str, Any] = {}
            if base is not None and isinstance(value, dict) and isinstance(base[1], dict):
                ops = diff_ops(base[1], value)
                if _encode(apply_ops(base[1], ops), style) == raw and len(_encode(ops, "compact")) < len(raw):
                    spec = {"extends": base[0], "ops": secrets(ops)}
            if not spec:
                spec = {"json": secrets(value)}
            if style != "compact":
                spec["encoding"] = style
            return spec, value
    try:
        return {"text": secrets(raw.decode("utf-8"))}, None
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}, None


def _headers_out(headers: Mapping[str, Any], keep: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in keep:
        value = headers.get(name)
        if value is None or value == []:
            continue
        if isinstance(value, list):
            out[name] = value[0] if len(value) == 1 else list(value)
        else:
            out[name] = value
    return out


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _redactor(secrets: Iterable[str]) -> Callable[[Any], Any]:
    values = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)
    if not values:
        return lambda value: value
    pattern = re.compile("|".join(re.escape(v) for v in values))

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return pattern.sub(REDACTED, value) if pattern.search(value) else value
        if isinstance(value, dict):
            return {scrub(k): scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return scrub


def dump_cassette(interactions: Sequence[Interaction], *, secrets: Iterable[str] = ()) -> str:
    """Serialise interactions in our format.

    Args:
        interactions: what to write, in order.
        secrets: literal values (API keys...) to replace by ``<redacted>`` anywhere in the text.

    Raises:
        CassetteError: a secret would still be written (e.g. inside an undecodable body).
    """
    secret_list = [s for s in secrets if s and len(s) >= 8]
    scrub = _redactor(secret_list)
    items: list[dict[str, Any]] = []
    last_request: dict[tuple[str, str], tuple[int, Any]] = {}
    for position, interaction in enumerate(interactions):
        key = (interaction.method, interaction.path)
        spec, value = _body_spec(interaction.request_body, True, last_request.get(key), scrub)
        if isinstance(value, dict):
            last_request[key] = (position, value)
        request: dict[str, Any] = {"method": interaction.method, "uri": _normalise_uri(interaction.uri)}
        if interaction.recorded_at is not None:
            request["recorded_at"] = _iso(interaction.recorded_at)
        request["headers"] = _headers_out(interaction.request_headers, _KEEP_REQUEST_HEADERS)
        request["body"] = spec
        response_spec, _ = _body_spec(interaction.response_body, interaction.content_type.endswith("json"), None, scrub)
        response: dict[str, Any] = {"status": interaction.status}
        if interaction.reason and interaction.reason != "OK":
            response["reason"] = interaction.reason
        response["headers"] = _headers_out(interaction.response_headers, _KEEP_RESPONSE_HEADERS)
        response["body"] = response_spec
        items.append({"request": request, "response": response})
    document = {"format": FORMAT, "interactions": items}
    text = _HEADER_COMMENT + yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1_000_000, default_flow_style=False
    )
    leaked = [s for s in secret_list if s in text]
    if leaked:
        raise CassetteError(
            "refusing to write a cassette that contains a secret",
            why=f"{len(leaked)} secret value(s) survive redaction (e.g. inside binary data)",
            fix="keep API keys out of request and response bodies",
        )
    return text


def save_cassette(path: Path | str, interactions: Sequence[Interaction], *, secrets: Iterable[str] = ()) -> None:
    """Write a cassette atomically: the old file stays whole until the new one is complete."""
    path = Path(path)
    text = dump_cassette(interactions, secrets=secrets)
    write_atomic(path, text)


# --------------------------------------------------------------------------------------------
# vcrpy interfaces


def _from_vcr_dict(request: Mapping[str, Any], response: Mapping[str, Any], index: int) -> Interaction:
    headers = {str(k).lower(): (v[0] if isinstance(v, list) else v) for k, v in (request.get("headers") or {}).items()}
    body = request.get("body")
    raw = (
        body if isinstance(body, bytes) else (body or "").encode("utf-8") if isinstance(body, str | type(None)) else b""
    )
    response_headers = {
        str(k).lower(): [str(x) for x in (v if isinstance(v, list) else [v])]
        for k, v in (response.get("headers") or {}).items()
    }
    response_raw = (response.get("body") or {}).get("string") or b""
    if isinstance(response_raw, str):
        response_raw = response_raw.encode("utf-8")
    response_raw = _decompress(response_raw, response_headers.pop("content-encoding", []), Path("<vcrpy>"), index)
    status = response.get("status") or {}
    return Interaction(
        index=index,
        method=str(request.get("method", "GET")),
        uri=str(request.get("uri", "")),
        request_headers={k: str(v) for k, v in headers.items()},
        request_body=Body(raw),
        status=int(status.get("code", 200)),
        reason=str(status.get("message") or ""),
        response_headers=response_headers,
        response_body=Body(response_raw),
    )


def _to_vcr_dict(interaction: Interaction) -> dict[str, Any]:
    return {
        "request": {
            "method": interaction.method,
            "uri": interaction.uri,
            "body": interaction.request_body.raw,
            "headers": {k: [v] for k, v in interaction.request_headers.items()},
        },
        "response": {
            "status": {"code": interaction.status, "message": interaction.reason or "OK"},
            "headers": {k: list(v) for k, v in interaction.response_headers.items()},
            "body": {"string": interaction.response_body.raw},
        },
    }


class _VcrSerializer:
    """Our format through vcrpy's serializer interface.

    Register it to read or write our cassettes with plain vcrpy::

        my_vcr.register_serializer("tokenbudget", pytest_tokenbudget.cassette.vcr_serializer)
        my_vcr.use_cassette("x.yaml", serializer="tokenbudget")
    """

    def deserialize(self, cassette_string: str) -> dict[str, Any]:
        cassette = parse_cassette(cassette_string)
        return {"version": 1, "interactions": [_to_vcr_dict(i) for i in cassette.interactions]}

    def serialize(self, cassette_dict: Mapping[str, Any]) -> str:
        interactions = [
            _from_vcr_dict(item["request"], item["response"], index)
            for index, item in enumerate(cassette_dict.get("interactions", []))
        ]
        return dump_cassette(interactions)


vcr_serializer = _VcrSerializer()


class TokenBudgetPersister:
    """A vcrpy persister: atomic writes, and a corrupt file is an error rather than "no cassette"."""

    @classmethod
    def load_cassette(cls, cassette_path: str | Path, serializer: Any) -> tuple[list[Any], list[Any]]:
        from vcr.persisters.filesystem import CassetteNotFoundError
        from vcr.serialize import deserialize

        path = Path(cassette_path)
        if not path.is_file():
            raise CassetteNotFoundError()
        return deserialize(path.read_text(encoding="utf-8"), serializer)  # type: ignore[no-any-return]

    @staticmethod
    def save_cassette(cassette_path: str | Path, cassette_dict: Mapping[str, Any], serializer: Any) -> None:
        from vcr.serialize import serialize

        write_atomic(Path(cassette_path), serialize(cassette_dict, serializer))


def iter_cassette_files(paths: Iterable[Path | str]) -> Iterator[Path]:
    """Cassette files under the given files or folders (``.yaml``, ``.yml``, ``.json``), sorted."""
    for entry in paths:
        entry = Path(entry)
        if entry.is_dir():
            yield from sorted(p for p in entry.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
        else:
            yield entry
