"""Reading cassettes of either format.

* **vcrpy** cassettes (plain vcrpy, pytest-recording, custom serializers such as pydantic-ai's
  ``parsed_body``), YAML or JSON: each body is found by its shape wherever it is stored
  (:mod:`._shape`): text, YAML ``!!binary``, ``base64_string``, parsed JSON under any key,
  gzip/deflate (with ``brotli`` or ``zstandard`` installed, br and zstd) compressed, or vcrpy's
  old httpx layout (``status_code``/``content``).
* **HAR 1.2** files (Polly.js, Playwright, browser devtools): their Anthropic API entries
  (:mod:`._har`).
* **pytest-tokenbudget** cassettes (``format: pytest-tokenbudget/1``): bodies as parsed JSON,
  text, base64, or ``extends: N`` plus operations on an earlier request's body.

A file that cannot be read is a :class:`~pytest_tokenbudget.errors.CassetteError` naming the
interaction and what is wrong, never an empty cassette. A well-formed file that holds no
Anthropic API traffic is read with a :attr:`Cassette.note` saying so (with ``skip_unknown``,
also one that is not a recording at all).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._yaml import MAX_CASSETTE_BYTES, MAX_CASSETTE_DEPTH, LoadProblem, parse_json, parse_yaml, read_bytes
from ..errors import CassetteError
from ._har import is_har, read_har
from ._model import _STYLES, FORMAT, Body, Cassette, Interaction, _Encoder, apply_ops, endpoint_of
from ._shape import ShapeError, Side, decode_content, describe, find_body

# --------------------------------------------------------------------------------------------
# reading


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block, restoring its previous state after.

    Loading a cassette's YAML builds tens of thousands of containers and no reference cycles: the
    collector would only rescan them, with full collections of the whole heap more often the
    longer the run (reference counting still frees everything). ``benchmarks/gc_pause.py``
    measures it: with pytest, anthropic and vcrpy imported, a 200-turn agent cassette parses in
    about half the time with the pause, a 25- to 100-turn one in about 10 % less.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def load_cassette(path: Path | str, *, skip_unknown: bool = False) -> Cassette:
    """Read a cassette file of any format read here.

    Args:
        path: the file.
        skip_unknown: a well-formed JSON or YAML document that is not a recording gives an
            empty cassette of format ``none`` with a note, instead of an error (``tokenbudget
            report`` on a folder); a test's own cassette is read without it.

    Raises:
        FileNotFoundError: there is no such file.
        CassetteError: the file exists but cannot be read; the message names the interaction
            and what is wrong.
    """
    path = Path(path)
    try:
        raw = read_bytes(path, max_bytes=MAX_CASSETTE_BYTES)
    except LoadProblem as problem:
        raise CassetteError(
            "cassette cannot be read", file=str(path), why=problem.why, fix="point the test at a cassette file"
        ) from None
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
    return parse_cassette(text, path, skip_unknown=skip_unknown)


def parse_cassette(text: str, path: Path | str = "<string>", *, skip_unknown: bool = False) -> Cassette:
    """Parse cassette text (YAML or JSON, any format read here; see :func:`load_cassette`)."""
    path = Path(path)
    data = _parse_document(text, path)
    if is_har(data):
        interactions, note = read_har(data, path)
        return Cassette(path, "har", interactions, note)
    if isinstance(data, list) and data and all(isinstance(i, dict) and "request" in i for i in data):
        data = {"interactions": data}  # vcrpy before 1.0 wrote the list of interactions alone
    if not isinstance(data, dict) or not isinstance(data.get("interactions"), list):
        kind = type(data).__name__
        if skip_unknown and not (isinstance(data, dict) and "interactions" in data):
            return Cassette(path, "none", [], f"not a recording: {_document_kind(data)}")
        raise CassetteError(
            "cassette cannot be read",
            file=str(path),
            why=f"expected a mapping with an 'interactions' list, found {kind}",
            fix="re-record it, or delete the file if it is not a cassette",
        )
    if data.get("format") == FORMAT:
        if "!!binary" in text or "tag:yaml.org,2002:binary" in text:  # we never write it
            _refuse_bytes(data["interactions"], path)
        return Cassette(path, FORMAT, _read_ours(data["interactions"], path))
    if isinstance(data.get("format"), str) and str(data["format"]).startswith("pytest-tokenbudget/"):
        raise CassetteError(
            "cassette was written by a newer pytest-tokenbudget",
            file=str(path),
            why=f"format {data['format']!r}; this version reads {FORMAT!r}",
            fix="upgrade pytest-tokenbudget",
        )
    interactions = _read_vcrpy(data["interactions"], path)
    return Cassette(path, "vcrpy", interactions, traffic_note(interactions))


def _document_kind(data: Any) -> str:
    """What a document that is not a recording holds, for the note that skips it."""
    if isinstance(data, dict):
        keys = ", ".join(str(k) for k in list(data)[:8]) + (", ..." if len(data) > 8 else "")
        return f"a mapping with keys {keys}" if keys else "an empty mapping"
    if isinstance(data, list):
        return f"a list of {len(data)} items"
    return f"a {type(data).__name__}"


def traffic_note(interactions: Sequence[Interaction]) -> str | None:
    """A note when no interaction is an Anthropic API call (``None`` when some is)."""
    if any(i.endpoint != "other" for i in interactions):
        return None
    if not interactions:
        return "a recording with no interactions"
    hosts: list[str] = []
    for item in interactions:
        try:
            host = urlsplit(item.uri).hostname or "?"
        except ValueError:
            host = "?"
        if host not in hosts:
            hosts.append(host)
    named = ", ".join(hosts[:3]) + (", ..." if len(hosts) > 3 else "")
    count = len(interactions)
    return f"{count} interaction{'s' if count != 1 else ''}, none to the Anthropic API (hosts: {named})"


def _refuse_bytes(interactions: list[Any], path: Path) -> None:
    """Our format stores JSON and text only: a ``!!binary`` value would break the body's JSON."""
    for index, item in enumerate(interactions):
        stack = [item]
        while stack:
            value = stack.pop()
            if isinstance(value, bytes):
                raise _fail(path, index, "holds a YAML !!binary value; this format stores only JSON and text")
            if isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)


def _parse_document(text: str, path: Path) -> Any:
    stripped = text.lstrip()
    if not stripped:
        raise CassetteError(
            "cassette is empty",
            file=str(path),
            why="the file has no content (truncated write?)",
            fix="re-record it, or delete it",
        )
    is_json = stripped[0] in "{["
    # One safe loader for every file we read (pytest_tokenbudget._yaml): size, depth, aliases
    # and tags bounded; !!binary is vcrpy's (gzip bodies).
    try:
        if is_json:
            return parse_json(text, max_depth=MAX_CASSETTE_DEPTH)
        with _gc_paused():
            return parse_yaml(text, max_depth=MAX_CASSETTE_DEPTH, binary=True)[0]
    except LoadProblem as problem:
        truncated = " (truncated or hand-edited?)" if problem.why.startswith("invalid ") else ""
        raise CassetteError(
            "cassette cannot be read",
            file=f"{path}" + (f", line {problem.line}" if problem.line else ""),
            why=_in_interaction(text, problem.offset, is_json) + problem.why + truncated,
            fix="re-record it",
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
        for item in values:
            # Played back to the SDK as HTTP headers: text only, one line each.
            if isinstance(item, dict | list | bytes) or (isinstance(item, str) and _HEADER_BREAK.search(item)):
                raise _fail(path, index, f"header {str(name)!r} has a value that is not one line of text: {item!r:.60}")
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise _fail(path, index, f"header name {name!r:.60} is not a valid HTTP header name")
        out.setdefault(name.lower(), []).extend(str(v) for v in values)
    return out


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_BREAK = re.compile(r"[\r\n\x00]")


def _status(value: Any, path: Path, index: int) -> int:
    """An HTTP status code: an integer from 100 to 599 (the SDK treats anything else as a broken connection)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise _fail(path, index, f"response status code {value!r:.60} is not an HTTP status (100 to 599)")
    return value


def _decompress(raw: bytes, encodings: Sequence[str], path: Path, index: int) -> bytes:
    """Undo a response's declared content encodings (a body that is already readable text is kept)."""
    try:
        return decode_content(raw, encodings, "response body")[0]
    except ShapeError as err:
        raise _fail(path, index, str(err)) from None


# POSIX seconds of 0001-01-01 and 9999-12-31T23:59:59 UTC: what a datetime can hold.
_EARLIEST, _LATEST = -62135596800.0, 253402300799.0


def _timestamp(value: Any, path: Path | None = None, index: int = 0) -> float | None:
    """POSIX seconds of a recorded time: a number, an ISO 8601 string or an HTTP date.

    With ``path`` (the ``recorded_at`` field), a value that is not a time, or is out of the
    range of dates, is an error naming the interaction; without (a ``date`` header), it is
    ``None``.
    """
    if value is None:
        return None
    seconds: float | None = None
    try:
        if isinstance(value, datetime):
            seconds = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                moment = parsedate_to_datetime(value)
            seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError, OverflowError, OSError, IndexError):
        seconds = None
    if seconds is not None and math.isfinite(seconds) and _EARLIEST <= seconds <= _LATEST:
        return seconds
    if path is not None:
        raise _fail(path, index, f"'recorded_at' {value!r:.60} is not a time (a number of seconds or an ISO 8601 date)")
    return None


# Endpoints whose request carries a body, and those whose successful response does.
_REQUEST_BODY = frozenset({"messages", "count_tokens", "batch_create"})


def _find(
    side_value: Mapping[str, Any],
    side: Side,
    headers: Mapping[str, list[str]],
    path: Path,
    index: int,
    required: str | None,
) -> Body:
    """A side's body (:func:`._shape.find_body`).

    ``required`` (the call, e.g. ``POST /v1/messages``) when an API call's side must carry a
    body: then finding none, or only a value of another shape away from vcrpy's own keys, is an
    error saying what the side holds.
    """
    try:
        found = find_body(side_value, side, headers)
    except ShapeError as err:
        raise _fail(path, index, str(err)) from None
    if required is not None and not (found.api or found.conventional):
        what = f"no {side} body found" if not found.present else f"no {side} body shaped like an API {side}"
        raise CassetteError(
            "cassette cannot be read",
            file=str(path),
            why=f"interaction {index}: {what} ({required}); the {side} has: {describe(side_value)}",
            fix="store bodies as text, bytes or parsed JSON under any key (vcrpy's body.string, a "
            "serializer's parsed_body), or re-record it",
        )
    return found.body()


def _read_vcrpy(items: list[Any], path: Path) -> list[Interaction]:
    out = []
    for index, item in enumerate(items):
        item = _as_mapping(item, path, index, "the interaction")
        request = _as_mapping(item.get("request"), path, index, "'request'")
        response = _as_mapping(item.get("response"), path, index, "'response'")
        if "method" not in request or "uri" not in request:
            raise _fail(path, index, "request has no 'method' or 'uri'")
        if not isinstance(request["method"], str) or not isinstance(request["uri"], str):
            raise _fail(path, index, "request 'method' and 'uri' must be text")
        _check_uri(request["uri"], path, index)
        method = str(request["method"]).upper()
        endpoint = endpoint_of(method, str(request["uri"]))
        request_header_values = _header_values(request.get("headers"), path, index)
        request_headers = {k: v[0] for k, v in request_header_values.items() if v}
        if "status_code" in response:  # vcrpy's old httpx layout
            status, reason = response["status_code"], ""
        else:
            status_value = _as_mapping(response.get("status"), path, index, "response 'status'")
            status, reason = status_value.get("code"), str(status_value.get("message") or "")
        status = _status(status, path, index)
        response_headers = _header_values(response.get("headers"), path, index)
        call = f"{method} {urlsplit(str(request['uri'])).path}"
        needs_request = endpoint in _REQUEST_BODY and method == "POST"
        request_body = _find(request, Side.REQUEST, request_header_values, path, index, call if needs_request else None)
        needs_response = endpoint != "other" and status == 200
        response_body = _find(response, Side.RESPONSE, response_headers, path, index, call if needs_response else None)
        # The body is decoded now (or was stored decoded): its content-encoding no longer applies.
        response_headers.pop("content-encoding", None)
        dates = response_headers.get("date")
        recorded_at = _timestamp(item.get("recorded_at"), path, index)
        out.append(
            Interaction(
                index=index,
                method=method,
                uri=str(request["uri"]),
                request_headers=request_headers,
                request_body=request_body,
                status=status,
                reason=reason,
                response_headers=response_headers,
                response_body=response_body,
                recorded_at=recorded_at if recorded_at is not None else _timestamp(dates[0]) if dates else None,
            )
        )
    return out


def _check_uri(uri: Any, path: Path, index: int) -> None:
    # urlsplit raises ValueError on e.g. an unclosed "[": fail here rather than in the ledger.
    try:
        urlsplit(str(uri))
    except ValueError as err:
        raise _fail(path, index, f"request 'uri' {str(uri)!r} is not a URL ({err})") from None


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
        status = _status(response.get("status"), path, index)
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
                recorded_at=_timestamp(request.get("recorded_at"), path, index),
                responded_at=_timestamp(response.get("responded_at"), path, index),
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
# cassette files


_SUFFIXES = (".yaml", ".yml", ".json", ".har")
_SKIPPED_DIRS = frozenset({"node_modules", "__pycache__"})


def iter_cassette_files(paths: Iterable[Path | str]) -> Iterator[Path]:
    """Recording files under the given files or folders, sorted.

    In folders: ``.yaml``, ``.yml``, ``.json`` and ``.har`` files, leaving out hidden folders
    (``.git``, ``.venv``...), ``node_modules`` and ``__pycache__``. A file named is always read.
    """
    for entry in paths:
        entry = Path(entry)
        if entry.is_dir():
            yield from sorted(
                p
                for p in entry.rglob("*")
                if p.suffix.lower() in _SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") or part in _SKIPPED_DIRS for part in p.relative_to(entry).parts[:-1])
            )
        else:
            yield entry
