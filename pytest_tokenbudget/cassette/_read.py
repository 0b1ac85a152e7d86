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
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..errors import CassetteError
from ._har import is_har, read_har
from ._model import _STYLES, FORMAT, Body, Cassette, Interaction, _Encoder, apply_ops, endpoint_of
from ._shape import ShapeError, Side, decode_content, describe, find_body


class _Loader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """Safe loader; bodies may hold !!binary (vcrpy's gzip bodies)."""


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
        with _gc_paused():
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


def _decompress(raw: bytes, encodings: Sequence[str], path: Path, index: int) -> bytes:
    """Undo a response's declared content encodings (a body that is already readable text is kept)."""
    try:
        return decode_content(raw, encodings, "response body")[0]
    except ShapeError as err:
        raise _fail(path, index, str(err)) from None


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
        if not isinstance(status, int):
            raise _fail(path, index, f"response status code {status!r} is not a number")
        response_headers = _header_values(response.get("headers"), path, index)
        call = f"{method} {urlsplit(str(request['uri'])).path}"
        needs_request = endpoint in _REQUEST_BODY and method == "POST"
        request_body = _find(request, Side.REQUEST, request_header_values, path, index, call if needs_request else None)
        needs_response = endpoint != "other" and status == 200
        response_body = _find(response, Side.RESPONSE, response_headers, path, index, call if needs_response else None)
        # The body is decoded now (or was stored decoded): its content-encoding no longer applies.
        response_headers.pop("content-encoding", None)
        dates = response_headers.get("date")
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
                responded_at=_timestamp(response.get("responded_at")),
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
