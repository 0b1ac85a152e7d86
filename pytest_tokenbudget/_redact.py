"""One redactor for everything the plugin writes or prints: cassettes, reports, gate lines, junit.

A :class:`Redactor` holds every secret seen in the session, each with where it came from (the
environment variable's name, the header, the URL), and replaces it by ``<redacted>`` in what is
meant, not only in raw bytes:

* the literal value, and its encodings: JSON string escapes (``\\"``, ``\\u00XX`` for every
  character), percent-encoding (``quote``, ``quote_plus``, every byte as ``%XX``; upper and lower
  hex), and base64 (standard and URL-safe) at the three byte offsets a value can start at inside
  an encoded blob (the characters that depend on the secret alone);
* a secret split over several strings: the text of consecutive JSON strings (two content blocks)
  and of a stream's deltas (``text_delta``, ``input_json_delta``, ``thinking_delta``) is searched
  as one text, and each piece that holds part of a match is redacted;
* URL userinfo (``http://user:pass@host``) and the values of query parameters whose name says
  they are credentials (``?key=``, ``?token=``...), whatever their length.

Values shorter than 8 characters are not searched for in free text (too many false hits); the
URL and query redaction is structural and has no minimum.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "SECRET_NAME",
    "Found",
    "Redactor",
    "encoded_forms",
    "is_credential_header",
]

REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 8
PLACEHOLDER_API_KEY = "tokenbudget-replay-placeholder"
EMULATOR_API_KEY = "emulator-key"  # the anthropic_emulator fixture's dummy key
_NOT_SECRETS = frozenset({PLACEHOLDER_API_KEY, EMULATOR_API_KEY})
# An environment variable whose name matches holds a secret.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
# A header whose name matches carries a credential (authorization, x-api-key, proxy-authorization...).
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|password|credential|session", re.IGNORECASE)
# A query parameter whose name matches carries a credential.
_SECRET_QUERY = re.compile(r"key|token|secret|passw|credential|auth|sig|session", re.IGNORECASE)
# Keys whose string values are prose: consecutive ones (content blocks, messages) are read as one
# text, so a secret split over two blocks is found. Other strings (types, roles, ids) sit between
# them in document order and are redacted one by one.
_PROSE_KEYS = frozenset({"text", "thinking", "content", "system", "partial_json"})
# Stream deltas whose strings are pieces of one text.
_END = 4
_DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


@dataclass(frozen=True, slots=True)
class Found:
    """A secret found in a text: where it came from, in which encoding, and where in the text."""

    source: str
    encoding: str
    offset: int


def _b64_middles(data: bytes) -> list[tuple[str, str]]:
    """The base64 characters that depend on ``data`` alone, for each of the 3 offsets it can start at."""
    forms = []
    for offset in range(3):
        start = -(-8 * offset // 6)  # ceil: first character made only of the secret's bits
        end = 8 * (offset + len(data)) // 6  # floor: past the last such character
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")[start:end]
        forms.append((encoded, f"base64, offset {offset}"))
        urlsafe = encoded.replace("+", "-").replace("/", "_")
        if urlsafe != encoded:
            forms.append((urlsafe, f"url-safe base64, offset {offset}"))
    return forms


def _u_escaped(value: str) -> str:
    units = value.encode("utf-16-be")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


def encoded_forms(value: str) -> list[tuple[str, str]]:
    """``value`` and the encodings of it the redactor looks for, as ``(text, encoding name)``."""
    forms: list[tuple[str, str]] = [(value, "raw")]
    forms.append((json.dumps(value, ensure_ascii=False)[1:-1], "JSON string"))
    forms.append((json.dumps(value, ensure_ascii=True)[1:-1], "JSON \\u-escaped"))
    escaped = _u_escaped(value)
    forms.append((escaped, "JSON \\u-escaped"))
    forms.append((escaped.upper().replace("\\U", "\\u"), "JSON \\u-escaped"))
    data = value.encode("utf-8")
    for text in (quote(value, safe=""), quote(value), quote_plus(value)):
        forms.append((text, "percent-encoded"))
        forms.append((re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text), "percent-encoded"))
    forms.append(("".join(f"%{b:02X}" for b in data), "percent-encoded"))
    forms.append(("".join(f"%{b:02x}" for b in data), "percent-encoded"))
    forms.extend(_b64_middles(data))
    # Each form as it appears inside a JSON string on the wire (a \u-escaped text in a prompt is
    # sent with its backslashes escaped).
    forms.extend((json.dumps(text, ensure_ascii=False)[1:-1], f"{name} in a JSON string") for text, name in list(forms))
    seen: set[str] = set()
    unique = []
    for text, name in forms:
        if text and text not in seen:
            seen.add(text)
            unique.append((text, name))
    return unique


class Redactor:
    """The secrets of a session and the one way they are redacted everywhere.

    Args:
        secrets: known secret values and their source (e.g. ``{"sk-...": "$ANTHROPIC_API_KEY"}``).
    """

    def __init__(self, secrets: Mapping[str, str] | None = None, *, env_names: Iterable[str] = ()) -> None:
        self.env_names = tuple(n for n in env_names if n)
        self._sources: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None
        self._bytes_pattern: re.Pattern[bytes] | None = None
        self._forms: dict[str, tuple[str, str]] = {}
        self._ends: set[str] = set()
        self._needles: tuple[list[bytes], list[str]] | None = None
        for value, source in (secrets or {}).items():
            self.add(value, source)

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, *, names: Iterable[str] = (), values: Iterable[str] = ()
    ) -> Redactor:
        """The values of environment variables that look like credentials (8 characters or more),
        of those named in ``names`` (names or ``fnmatch`` patterns, any value), and ``values``."""
        redactor = cls(env_names=names)
        redactor.read_environment(environ)
        for value in values:
            redactor.add(value, "configured secret")
        return redactor

    def read_environment(self, environ: Mapping[str, str] | None = None) -> None:
        """Add the environment's credentials: variables whose name looks like one, and those
        :attr:`env_names` names (names or ``fnmatch`` patterns)."""
        environ = os.environ if environ is None else environ
        for key, value in environ.items():
            if SECRET_NAME.search(key) or any(fnmatch.fnmatchcase(key, p) for p in self.env_names):
                self.add(value, f"${key}")

    # ------------------------------------------------------------------ the secrets

    @property
    def secrets(self) -> dict[str, str]:
        """Every secret value and its source."""
        return dict(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def add(self, value: str, source: str) -> bool:
        """Add a secret (ignored when shorter than 8 characters or already known); say whether it was new."""
        value = value.strip()
        if len(value) < MIN_SECRET_LENGTH or value in self._sources or value in _NOT_SECRETS:
            return False
        if value == REDACTED or REDACTED in value:
            return False
        self._sources[value] = source
        for text, encoding in encoded_forms(value):
            if len(text) >= MIN_SECRET_LENGTH:
                self._forms.setdefault(text, (source, encoding))
        for text in (value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]):
            self._ends.update((text[:_END], text[-_END:]))
        self._pattern = None
        self._bytes_pattern = None
        self._needles = None
        return True

    def update(self, other: Redactor | Mapping[str, str]) -> None:
        """Add every secret of ``other``."""
        for value, source in (other.secrets if isinstance(other, Redactor) else other).items():
            self.add(value, source)

    def harvest_headers(self, headers: Mapping[str, Any]) -> None:
        """Learn the credentials a request sends in its headers (``Bearer``/``Basic`` decoded)."""
        for name, raw in headers.items():
            name = str(name).lower()
            if not _SECRET_HEADER.search(name):
                continue
            for value in raw if isinstance(raw, list | tuple) else [raw]:
                self._harvest_header(name, str(value))

    def _harvest_header(self, name: str, value: str) -> None:
        source = f"header {name}"
        scheme, _, credential = value.strip().partition(" ")
        if credential and scheme.lower() in ("bearer", "token"):
            self.add(credential, source)
        elif credential and scheme.lower() == "basic":
            self.add(credential, source)
            try:
                user, _, password = base64.b64decode(credential, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return
            self.add(f"{user}:{password}", source)
            self.add(password, source)
        elif "cookie" in name:
            for part in value.split(";"):
                self.add(part.partition("=")[2], source)
        else:
            self.add(value, source)

    def harvest_url(self, uri: str) -> None:
        """Learn the password in a URL's userinfo and its credential-like query values."""
        parts = urlsplit(uri)
        if parts.password:
            self.add(parts.password, "URL userinfo")
            self.add(f"{parts.username}:{parts.password}", "URL userinfo")
        for name, value in _query_pairs(parts.query):
            if _SECRET_QUERY.search(name):
                self.add(value, f"query parameter {name}")

    # ------------------------------------------------------------------ redaction

    def _text_pattern(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._forms:
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(f) for f in ordered))
        return self._pattern

    def _raw_pattern(self) -> re.Pattern[bytes] | None:
        if self._bytes_pattern is None and self._forms:
            ordered = sorted((f.encode("utf-8") for f in self._forms), key=len, reverse=True)
            self._bytes_pattern = re.compile(b"|".join(re.escape(f) for f in ordered))
        return self._bytes_pattern

    def text(self, value: str) -> str:
        """``value`` with every known secret, in every encoding, replaced by ``<redacted>``."""
        pattern = self._text_pattern()
        if pattern is None or not value:
            return value
        return pattern.sub(REDACTED, value)

    def raw(self, value: bytes) -> bytes:
        """:meth:`text` on bytes."""
        pattern = self._raw_pattern()
        if pattern is None or not value:
            return value
        return pattern.sub(REDACTED.encode("utf-8"), value)

    def find(self, value: str) -> list[Found]:
        """Every known secret still in ``value``, in any encoding."""
        pattern = self._text_pattern()
        if pattern is None:
            return []
        found = []
        for match in pattern.finditer(value):
            source, encoding = self._forms[match.group(0)]
            found.append(Found(source, encoding, match.start()))
        return found

    def pieces(self, pieces: list[str]) -> list[str] | None:
        """Redact a text that arrives in pieces (a stream's deltas, consecutive content blocks):
        each piece holding part of a secret loses that part. ``None`` when nothing is found."""
        pattern = self._text_pattern()
        if pattern is None or not pieces:
            return None
        joined = "".join(pieces)
        spans = [m.span() for m in pattern.finditer(joined)]
        if not spans:
            return None
        out = []
        start = 0
        for piece in pieces:
            end = start + len(piece)
            cuts = [(max(a, start) - start, min(b, end) - start) for a, b in spans if a < end and b > start]
            if cuts:
                kept, at = [], 0
                for a, b in cuts:
                    kept.append(piece[at:a])
                    kept.append(REDACTED)
                    at = b
                kept.append(piece[at:])
                piece = "".join(kept)
            out.append(piece)
            start = end
        return out

    def value(self, value: Any) -> Any:
        """A parsed JSON value with every secret redacted, also one split over consecutive strings."""
        if self._text_pattern() is None:
            return value
        strings: list[str] = []
        _collect(value, strings, None)
        redacted = self.pieces(strings)
        replacements = iter(redacted if redacted is not None else strings)
        return _rebuild(value, replacements, self.text, None)

    def url(self, uri: str) -> str:
        """``uri`` without userinfo and credential-like query values, and known secrets redacted."""
        try:
            parts = urlsplit(uri)
        except ValueError:
            return self.text(uri)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
        query = parts.query
        if query:
            pairs = []
            for piece in query.split("&"):
                name, eq, value = piece.partition("=")
                pairs.append(f"{name}={REDACTED}" if eq and value and _SECRET_QUERY.search(name) else piece)
            query = "&".join(pairs)
        return self.text(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))

    def body(self, raw: bytes) -> bytes:
        """A request or response body with every secret redacted, keeping its format: a JSON body
        stays JSON (re-encoded compactly only when a secret was split over strings), and an SSE
        stream stays a stream the SDK can read (only the events holding a secret are rewritten)."""
        if not raw or not self._forms:
            return raw
        stream = raw.lstrip()[:6].startswith((b"event:", b"data:", b":"))
        if not stream and not self._could_hold(raw):
            return raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw  # binary: the writer's final check refuses it if a secret is inside
        redacted = self.text(text)
        stripped = redacted.lstrip()
        if stripped.startswith(("event:", "data:", ":")):
            redacted = self._stream(redacted)
        elif stripped[:1] in ("{", "["):
            redacted = self._json(text, redacted)
        return redacted.encode("utf-8") if redacted != text else raw

    def _needle_lists(self) -> tuple[list[bytes], list[str]]:
        if self._needles is None:
            self._needles = ([f.encode("utf-8") for f in self._forms], sorted(self._ends))
        return self._needles

    def _could_hold(self, raw: bytes) -> bool:
        """Whether ``raw`` could hold a secret, whole (some form of it) or split (its ends).
        Plain substring tests: on replay's hot path they cost a fraction of a regex pass."""
        forms, ends = self._needle_lists()
        return any(f in raw for f in forms) or any(e.encode("utf-8") in raw for e in ends)

    def _maybe_split(self, text: str) -> bool:
        """Whether ``text`` could hold a secret split over strings: a split leaves the secret's
        first or last 4 characters whole in one of them (a body's strings are whole blocks and
        messages; streams, whose deltas can be shorter, are always read as one text)."""
        return any(e in text for e in self._needle_lists()[1])

    def _json(self, original: str, redacted: str) -> str:
        if redacted == original and not self._maybe_split(original):
            return redacted  # the hot path (replay compares every request): no parse
        try:
            value = json.loads(redacted)
        except ValueError:
            try:
                value = json.loads(original)
            except ValueError:
                return redacted  # not JSON after all
        again = self.value(value)
        if again == value and _valid_json(redacted):
            return redacted
        return json.dumps(again, separators=(",", ":"), ensure_ascii=False)

    def _stream(self, text: str) -> str:
        events = text.split("\n\n")
        found: list[tuple[int, int, dict[str, Any], str]] = []  # (event, line, payload, field)
        parsed: dict[tuple[int, int], dict[str, Any]] = {}
        for e, event in enumerate(events):
            lines = event.split("\n")
            for n, line in enumerate(lines):
                if not line.startswith("data:"):
                    continue
                try:
                    payload = json.loads(line[5:])
                except ValueError:
                    continue
                if not isinstance(payload, dict):
                    continue
                parsed[(e, n)] = payload
                delta = payload.get("delta")
                if isinstance(delta, dict):
                    name = _DELTA_FIELDS.get(str(delta.get("type")))
                    if name is not None and isinstance(delta.get(name), str):
                        found.append((e, n, payload, name))
        changed: set[tuple[int, int]] = set()
        redacted = self.pieces([p["delta"][name] for _, _, p, name in found])
        if redacted is not None:
            for (e, n, payload, name), piece in zip(found, redacted, strict=True):
                if piece != payload["delta"][name]:
                    payload["delta"][name] = piece
                    changed.add((e, n))
        for (e, n), payload in parsed.items():  # a secret split over strings inside one event
            if (e, n) in changed:
                continue
            again = self.value(payload)
            if again != payload:
                parsed[(e, n)] = again
                changed.add((e, n))
        if not changed:
            return text
        out = [event.split("\n") for event in events]
        for e, n in changed:
            end = "\r" if out[e][n].endswith("\r") else ""
            out[e][n] = "data: " + json.dumps(parsed[(e, n)], separators=(",", ":"), ensure_ascii=False) + end
        return "\n\n".join("\n".join(lines) for lines in out)


def is_credential_header(name: str) -> bool:
    """Whether a header carries a credential by its name (``authorization``, ``x-api-key``, cookies...)."""
    return bool(_SECRET_HEADER.search(name))


def _query_pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    try:
        return parse_qsl(query, keep_blank_values=False)
    except ValueError:
        return []


def _valid_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _collect(value: Any, out: list[str], key: str | None) -> None:
    """The prose strings of a JSON value, in document order."""
    if isinstance(value, str):
        if key in _PROSE_KEYS:
            out.append(value)
    elif isinstance(value, dict):
        for name, item in value.items():
            _collect(item, out, name)
    elif isinstance(value, list):
        for item in value:
            _collect(item, out, key)


def _rebuild(value: Any, prose: Any, text: Any, key: str | None) -> Any:
    """``value`` with its prose strings taken from ``prose`` and every other string through ``text``."""
    if isinstance(value, str):
        return next(prose) if key in _PROSE_KEYS else text(value)
    if isinstance(value, dict):
        return {text(k): _rebuild(v, prose, text, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuild(v, prose, text, key) for v in value]
    return value
