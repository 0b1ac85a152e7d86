"""The data model of a cassette: bodies, interactions, cassettes, and how stored bodies are rebuilt.

A body stored in our format is parsed JSON plus the name of the JSON encoding that rebuilds its
exact bytes (:data:`_STYLES`), or the operations that turn an earlier request's body into it
(:func:`apply_ops`). This module is the bottom of the subpackage: the reader, the writer and the
vcrpy adapters build on it, and it imports none of them.
"""

from __future__ import annotations

import bisect
import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._redact import REDACTED as REDACTED  # what a secret is replaced with in a written cassette
from .._yaml import MAX_CASSETTE_DEPTH, LoadProblem, check_depth

FORMAT = "pytest-tokenbudget/1"

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
            raw = self.raw
            try:
                value = json.loads(raw) if raw else None
            except RecursionError:
                raise ValueError("JSON nested too deeply for Python to read") from None
            if raw.count(b"[") + raw.count(b"{") > MAX_CASSETTE_DEPTH:  # else it cannot be that deep
                try:
                    check_depth(value, MAX_CASSETTE_DEPTH)
                except LoadProblem as problem:
                    raise ValueError(f"JSON {problem.why}") from None
            self._json = value
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
        responded_at: POSIX seconds when the response had been received in full (``None``: not
            recorded); the cache analysis makes a request's writes readable from then on.
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
    responded_at: float | None = None

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
        format: ``pytest-tokenbudget/1``, ``vcrpy``, ``har``, or ``none`` (a well-formed file
            that is not a recording, read with ``skip_unknown``).
        interactions: in recorded order.
        note: why the file holds no Anthropic API traffic (not a recording; no interaction to
            the API); ``None`` when it holds some.
    """

    path: Path
    format: str
    interactions: list[Interaction] = field(default_factory=list)
    note: str | None = None


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
# structural deltas: what ``extends: N`` + ``ops`` mean (the reader applies them, the writer
# checks with them that a delta rebuilds the body it stands for)

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
