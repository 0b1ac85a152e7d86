"""Finding an HTTP body in a recorded request or response by its shape, whatever key holds it.

Recorders and their custom serializers put bodies in many places: vcrpy writes a request's text
under ``body`` and a response's under ``body.string`` (or ``body.base64_string``); pydantic-ai's
serializer stores the decoded JSON as ``parsed_body`` beside ``headers``; others store it under
``body`` as a YAML mapping, or under ``decoded``, ``json``, ``content``... And some keep a
``content-encoding: gzip`` header on a body they already decoded (browsers' HAR files do too).

So the finder looks at every value of the side that is not HTTP metadata (method, URL, headers,
status), down into nested mappings, undoes what was done to it (base64, gzip, deflate, br, zstd:
by the magic bytes, or by the header when the data is not already readable text), and keeps the
value shaped most like an Anthropic API body: a request's parameters (``model``, ``messages``,
``requests``), a response's message, error, batch or token count, an SSE stream, batch results
as JSON lines. When none is shaped like one, it falls back on vcrpy's own places, so a broken
body still gets the ledger's precise error ("not valid JSON", "broken SSE body").

This module knows no file format and no YAML: it takes one side of an interaction as loaded data
(mappings, lists, text, bytes) and returns a :class:`Found`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import importlib
import json
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._model import _UNSET, Body

__all__ = ["Found", "ShapeError", "Side", "decode_content", "describe", "find_body", "looks_like_api_body"]


class ShapeError(ValueError):
    """A body was found but cannot be decoded (bad base64, bad gzip, a missing decompressor)."""


class Side(enum.StrEnum):
    """Which half of an exchange a body belongs to."""

    REQUEST = "request"
    RESPONSE = "response"


class _Kind(enum.IntEnum):
    """What a candidate holds, in order of preference among fallbacks."""

    ABSENT = 0  # None
    EMPTY = 1  # b"" or ""
    DATA = 2  # text, bytes, or a mapping not shaped like an API body
    API = 3  # shaped like an Anthropic API body


@dataclass(frozen=True)
class Found:
    """A body found in a recorded side.

    Attributes:
        where: the dotted key path it was found at (``body.string``, ``parsed_body``); ``""``
            when the side holds no body at all.
        raw: the body's bytes, decoded (base64 and compression undone); ``None`` when the
            recording stored the body already parsed (see ``value``).
        value: the parsed JSON: as stored when ``raw`` is ``None``, else parsed from ``raw``
            (``_UNSET`` when ``raw`` is not JSON).
        api: whether it is shaped like an Anthropic API body.
        decoded: whether a content encoding (gzip...) was undone, or the body was stored already
            decoded: either way a ``content-encoding`` header no longer applies.
        conventional: not shaped like an API body, but found where vcrpy keeps bodies
            (``body``, ``body.string``...): a broken body, for the ledger to say what is broken.
    """

    where: str
    raw: bytes | None
    value: Any = _UNSET
    api: bool = False
    decoded: bool = False
    conventional: bool = False

    @property
    def present(self) -> bool:
        """Whether any body-like value was found."""
        return bool(self.where)

    def body(self) -> Body:
        """As a :class:`Body` (a stored-parsed value is re-encoded as compact JSON, as SDK 2.x sends it)."""
        if self.raw is not None:
            return Body(self.raw, json_value=self.value)
        return Body(json_value=self.value, style="compact")


# Keys that hold HTTP metadata, never a body (vcrpy, pytest-recording, Ruby VCR, HAR, pydantic-ai).
_METADATA = frozenset(
    {
        "method",
        "uri",
        "url",
        "headers",
        "status",
        "status_code",
        "statustext",
        "code",
        "message",
        "reason",
        "http_version",
        "httpversion",
        "recorded_at",
        "encoding",
        "querystring",
        "query",
        "cookies",
        "headerssize",
        "bodysize",
        "size",
        "mimetype",
        "compression",
        "comment",
        "redirecturl",
    }
)
_MAX_DEPTH = 4
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+|[A-Za-z0-9_\-=\s]+")
_SSE_LINE = re.compile(r"(?:event|data|id|retry):", re.ASCII)
_RESPONSE_TYPES = frozenset(
    {"message", "error", "message_batch", "message_batch_deleted", "model", "model_deleted", "message_count_tokens"}
)


# --------------------------------------------------------------------------------------------
# shapes


def looks_like_api_body(value: Any, side: Side) -> bool:
    """Whether a parsed JSON value has the shape of an Anthropic Messages API body of ``side``.

    Requests: a mapping with ``model``, ``messages`` (messages, count_tokens) or ``requests``
    (batch create). Responses: a mapping whose ``type`` names an API object (message, error,
    message_batch...), or with ``usage`` (a message), ``input_tokens`` (count_tokens),
    ``custom_id`` and ``result`` (a batch result), or a ``data`` list with ``has_more`` (a batch
    list page).
    """
    if not isinstance(value, Mapping):
        return False
    if side is Side.REQUEST:
        return (
            isinstance(value.get("messages"), list)
            or isinstance(value.get("requests"), list)
            or (isinstance(value.get("model"), str) and "max_tokens" in value)
        )
    kind = value.get("type")
    if isinstance(kind, str) and kind in _RESPONSE_TYPES:
        return True
    if isinstance(value.get("usage"), Mapping) and ("content" in value or "model" in value):
        return True
    if isinstance(value.get("input_tokens"), int) and len(value) <= 3:
        return True
    if "custom_id" in value and isinstance(value.get("result"), Mapping):  # one line of batch results
        return True
    return isinstance(value.get("data"), list) and "has_more" in value


def _text_shape(raw: bytes, side: Side) -> tuple[bool, Any]:
    """Whether bytes are text shaped like an API body, and their parsed JSON (``_UNSET`` when
    they are not one JSON document), kept so that the body is not parsed again."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False, _UNSET
    stripped = text.lstrip()
    if not stripped:
        return False, _UNSET
    if stripped[0] in "{[":
        try:
            value = json.loads(stripped)
        except ValueError:
            pass
        else:
            return looks_like_api_body(value, side), value
        # JSON lines: batch results, one {"custom_id", "result"} per line
        lines = [line for line in stripped.splitlines() if line.strip()]
        if side is Side.RESPONSE and len(lines) > 1:
            try:
                rows = [json.loads(line) for line in lines]
            except ValueError:
                return False, _UNSET
            return all(isinstance(row, dict) and "custom_id" in row for row in rows), _UNSET
        return False, _UNSET
    # A stream: its first line is an SSE field. A broken stream still counts, so that the ledger
    # names what is broken in it.
    return side is Side.RESPONSE and bool(_SSE_LINE.match(stripped)), _UNSET


def _readable(raw: bytes) -> bool:
    """Whether bytes are already decoded text: JSON, JSON lines or SSE (so no encoding applies).

    Strict (the whole text must parse): compressed data may start with ``{`` by chance.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    stripped = text.strip()
    if not stripped:
        return False
    if _SSE_LINE.match(stripped):
        return True
    if stripped[0] not in "{[":
        return False
    try:
        json.loads(stripped)
        return True
    except ValueError:
        pass
    try:
        for line in stripped.splitlines():
            if line.strip():
                json.loads(line)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# content encodings


def _optional(*names: str) -> Any:
    """The first of these modules that imports, else ``None`` (brotli and zstd are optional)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _zstd_decompress(raw: bytes, what: str) -> bytes:
    module = _optional("compression.zstd")  # Python 3.14+
    if module is not None:
        return bytes(module.decompress(raw))
    module = _optional("zstandard")
    if module is None:
        raise ShapeError(f"{what} is zstd-compressed; install 'zstandard' to read it")
    # A streaming decompressor: frames without their content size in the header are allowed.
    return bytes(module.ZstdDecompressor().decompressobj().decompress(raw))


def _brotli_decompress(raw: bytes, what: str) -> bytes:
    module = _optional("brotli", "brotlicffi")
    if module is None:
        raise ShapeError(f"{what} is brotli-compressed; install 'brotli' to read it")
    return bytes(module.decompress(raw))


def _undo(raw: bytes, encoding: str, what: str) -> bytes:
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(raw, zlib.MAX_WBITS | 16)
        if encoding == "deflate":
            try:
                return zlib.decompress(raw)
            except zlib.error:
                return zlib.decompress(raw, -zlib.MAX_WBITS)
        if encoding == "br":
            return _brotli_decompress(raw, what)
        if encoding == "zstd":
            return _zstd_decompress(raw, what)
    except ShapeError:
        raise
    except Exception as err:  # zlib.error, brotli.error, zstd.ZstdError: each library its own
        raise ShapeError(f"{what} is not valid {encoding} data ({err})") from None
    raise ShapeError(f"{what}: unknown content-encoding {encoding!r}")


def _encodings(headers: Mapping[str, Sequence[str]]) -> list[str]:
    values = headers.get("content-encoding") or []
    return [e.strip().lower() for v in values for e in str(v).split(",") if e.strip()]


def decode_content(raw: bytes, encodings: Sequence[str], what: str = "the body") -> tuple[bytes, bool]:
    """Undo the content encodings of a body; say whether any was undone.

    ``encodings`` are the ``content-encoding`` header's values, in the order they were applied.
    Each is undone, last first, unless the data is already readable text (JSON, SSE): a stale
    header on a body the recorder already decoded. Gzip and zstd data are recognised by their
    magic bytes even without a header.

    Raises:
        ShapeError: the data is neither readable nor valid for its declared encoding, or needs
            a decompressor that is not installed.
    """
    undone = False
    for encoding in reversed([e.strip().lower() for v in encodings for e in v.split(",") if e.strip()]):
        if encoding == "identity":
            continue
        if _readable(raw):
            break
        raw = _undo(raw, encoding, what)
        undone = True
    for _ in range(3):  # undeclared compression, by magic bytes (nested at most a few times)
        if raw.startswith(_GZIP):
            encoding = "gzip"
        elif raw.startswith(_ZSTD):
            encoding = "zstd"
        else:
            break
        try:
            raw = _undo(raw, encoding, what)
        except ShapeError:
            break
        undone = True
    return raw, undone


def _maybe_base64(text: str, declared: bool) -> bytes | None:
    """The bytes a base64 text stands for, when it does stand for a body: compressed (by magic
    bytes, or any data when a content encoding is ``declared``) or readable."""
    compact = "".join(text.split())
    if len(compact) < 8 or not _BASE64.fullmatch(compact):
        return None
    try:
        raw = base64.b64decode(
            compact + "=" * (-len(compact) % 4),
            altchars=b"-_" if "-" in compact or "_" in compact else None,
            validate=True,
        )
    except (binascii.Error, ValueError):
        return None
    if declared or raw.startswith((_GZIP, _ZSTD)) or _readable(raw):
        return raw
    return None


# --------------------------------------------------------------------------------------------
# candidates


@dataclass(frozen=True)
class _Candidate:
    where: str
    depth: int
    kind: _Kind
    raw: bytes | None
    value: Any
    decoded: bool
    error: str | None = None


def _leaf(
    value: str | bytes | None,
    where: str,
    depth: int,
    side: Side,
    encodings: Sequence[str],
    base64_hint: bool,
    what: str,
) -> _Candidate:
    if value is None:
        return _Candidate(where, depth, _Kind.ABSENT, b"", _UNSET, False)
    decoded = False
    if isinstance(value, str):
        if base64_hint and not _readable(value.encode("utf-8", "surrogatepass")):
            try:
                raw = base64.b64decode("".join(value.split()), validate=True)
            except (binascii.Error, ValueError):
                name = where.rsplit(".", 1)[-1]
                return _Candidate(where, depth, _Kind.DATA, None, None, False, f"{what}: {name} is not valid base64")
        else:
            raw = value.encode("utf-8", "surrogatepass")
            if not _readable(raw):
                guessed = _maybe_base64(value, any(e != "identity" for e in encodings))
                if guessed is not None:
                    raw = guessed
    else:
        raw = value
    if not raw:
        return _Candidate(where, depth, _Kind.EMPTY, b"", _UNSET, False)
    try:
        raw, decoded = decode_content(raw, encodings, what)
    except ShapeError as err:
        return _Candidate(where, depth, _Kind.DATA, None, None, False, str(err))
    shape, parsed = _text_shape(raw, side)
    return _Candidate(where, depth, _Kind.API if shape else _Kind.DATA, raw, parsed, decoded)


def _candidates(side_value: Mapping[str, Any], side: Side, encodings: Sequence[str]) -> Iterator[_Candidate]:
    """Every value of the side that could be its body, depth first in key order."""

    def walk(mapping: Mapping[Any, Any], prefix: str, depth: int) -> Iterator[_Candidate]:
        encoding = mapping.get("encoding")
        base64_sibling = isinstance(encoding, str) and encoding.lower() == "base64"
        for key, value in mapping.items():
            name = str(key)
            if name.lower() in _METADATA:
                continue
            where = f"{prefix}.{name}" if prefix else name
            if isinstance(value, str | bytes) or value is None:
                hint = base64_sibling or "base64" in name.lower() or "b64" in name.lower()
                yield _leaf(value, where, depth, side, encodings, hint and isinstance(value, str), what)
            elif isinstance(value, Mapping | list):
                try:
                    json.dumps(value)
                    jsonable = True
                except (TypeError, ValueError, RecursionError):  # bytes inside; nesting too deep
                    jsonable = False
                api = jsonable and looks_like_api_body(value, side)
                if jsonable:
                    # Stored parsed: already decoded, whatever the headers say.
                    yield _Candidate(where, depth, _Kind.API if api else _Kind.DATA, None, value, True)
                # An API-shaped mapping is the body: its parts (texts, usage) are not candidates.
                if isinstance(value, Mapping) and not api and depth < _MAX_DEPTH:
                    yield from walk(value, where, depth + 1)

    what = f"{side} body"
    yield from walk(side_value, "", 1)


def _conventional(candidates: Sequence[_Candidate]) -> _Candidate | None:
    """vcrpy's own places, in the order it reads them (the fallback for bodies of no API shape)."""
    by_where = {c.where: c for c in candidates}
    for where in ("body.base64_string", "body.string", "body", "content", "body.parsed_body", "parsed_body"):
        candidate = by_where.get(where)
        if candidate is None:
            continue
        # ``body`` as a mapping: its ``string``/``base64_string`` came first; a mapping that
        # holds neither is the body itself, stored parsed.
        if (
            where == "body"
            and candidate.raw is None
            and candidate.kind is not _Kind.ABSENT
            and any(c.where.startswith("body.") and c.kind > _Kind.ABSENT for c in candidates)
        ):
            continue
        return candidate
    return None


def find_body(side_value: Mapping[str, Any], side: Side, headers: Mapping[str, Sequence[str]]) -> Found:
    """Find the body of one recorded side (a vcrpy ``request`` or ``response`` mapping).

    Args:
        side_value: the side as loaded.
        side: which side it is (the shapes differ).
        headers: its headers, lower-case name -> values (for ``content-encoding``).

    Returns:
        The body shaped most like an Anthropic API body; else the one at vcrpy's own keys;
        else the first non-empty value; ``Found("", b"")`` when the side holds none.

    Raises:
        ShapeError: the chosen body cannot be decoded (e.g. ``base64_string`` that is not
            base64, a gzip header on data that is neither gzip nor readable text).
    """
    encodings = _encodings(headers)
    candidates = list(_candidates(side_value, side, encodings))
    api = [c for c in candidates if c.kind is _Kind.API]
    conventional = False
    if api:
        best = min(api, key=lambda c: c.depth)  # the whole body, not a part of it (e.g. its usage)
    else:
        fallback = _conventional(candidates)
        conventional = fallback is not None
        if fallback is None:
            filled = [c for c in candidates if c.kind is _Kind.DATA]
            fallback = min(filled, key=lambda c: c.depth) if filled else None
        if fallback is None:
            empty = [c for c in candidates if c.kind is _Kind.EMPTY]
            return Found(empty[0].where, b"") if empty else Found("", b"")
        best = fallback
    if best.error is not None:
        raise ShapeError(best.error)
    return Found(best.where, best.raw, best.value, best.kind is _Kind.API, best.decoded, conventional)


def describe(side_value: Any) -> str:
    """What a side holds, for an error saying nothing fits: its keys, with the kind of each value.

    >>> describe({"status": {"code": 200}, "headers": {}, "body_bytes": [1, 2]})
    'status (mapping: code), headers (mapping), body_bytes (list of 2)'
    """
    if not isinstance(side_value, Mapping):
        return f"a {type(side_value).__name__}, not a mapping"
    if not side_value:
        return "no keys"
    parts = []
    for key, value in list(side_value.items())[:12]:
        parts.append(f"{key} ({_kind_of(value)})")
    more = len(side_value) - 12
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def _kind_of(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = ", ".join(str(k) for k in list(value)[:6])
        return f"mapping: {keys}" + (", ..." if len(value) > 6 else "") if keys else "mapping"
    if isinstance(value, list):
        return f"list of {len(value)}"
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    if isinstance(value, str):
        return f"text, {len(value)} characters"
    if value is None:
        return "null"
    return type(value).__name__
