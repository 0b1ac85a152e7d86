"""Reading HAR 1.2 files (Polly.js, Playwright ``recordHar``, browser devtools) as cassettes.

A HAR file is a JSON document ``{"log": {"version", "creator", "entries": [...]}}``; each entry
has a ``request`` (``method``, ``url``, ``headers`` as a list of ``{name, value}``, and
``postData.text``) and a ``response`` (``status``, ``statusText``, ``headers``, and
``content.text``, base64 when ``content.encoding`` is ``"base64"``). Playwright, when told to
attach content, writes it to a file beside the HAR and names it in ``content._file`` (or
``postData._file``).

Only entries to the Anthropic API count (``/v1/messages``, ``/v1/messages/count_tokens``,
``/v1/messages/batches...``, on any host): a browser's HAR holds pages, scripts and images
too. Those are passed over without reading their content, so nothing in them can fail the file.
Each interaction's ``index`` is its entry's position in ``log.entries``, the number errors name.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import CassetteError
from ._model import Body, Interaction, endpoint_of
from ._shape import ShapeError, decode_content, describe

__all__ = ["is_har", "read_har"]


def is_har(data: Any) -> bool:
    """Whether a loaded JSON document is a HAR file: a ``log`` mapping with an ``entries`` list."""
    return isinstance(data, Mapping) and isinstance(data.get("log"), Mapping) and "entries" in data["log"]


def _fail(path: Path, number: int, why: str, fix: str = "re-record it") -> CassetteError:
    return CassetteError("HAR file cannot be read", file=str(path), why=f"entry {number}: {why}", fix=fix)


def _headers(value: Any) -> dict[str, list[str]]:
    """HAR headers (a list of ``{name, value}``) as lower-case name -> values."""
    out: dict[str, list[str]] = {}
    if not isinstance(value, list):
        return out
    for item in value:
        if isinstance(item, Mapping) and "name" in item:
            out.setdefault(str(item["name"]).lower(), []).append(str(item.get("value", "")))
    return out


def _content(
    holder: Any, headers: Mapping[str, list[str]], path: Path, number: int, what: str
) -> tuple[bytes, bool] | None:
    """The bytes of ``postData`` or ``content``, decoded; ``None`` when it holds no text at all."""
    if not isinstance(holder, Mapping):
        return None
    text = holder.get("text")
    attached = holder.get("_file")
    if text is None and isinstance(attached, str):
        file = path.parent / attached
        try:
            raw = file.read_bytes()
        except OSError as err:
            raise _fail(
                path,
                number,
                f"{what} is in the attached file {attached!r}, which cannot be read ({err.strerror})",
                fix="keep the HAR's attached files beside it (Playwright: recordHar content 'attach')",
            ) from None
        encoded = False
    elif isinstance(text, str):
        encoded = str(holder.get("encoding") or "").lower() == "base64"
        if encoded:
            try:
                raw = base64.b64decode("".join(text.split()), validate=True)
            except (binascii.Error, ValueError):
                raise _fail(path, number, f"{what} is marked base64 but is not valid base64") from None
        else:
            raw = text.encode("utf-8", "surrogatepass")
    else:
        return None
    try:
        raw, undone = decode_content(raw, headers.get("content-encoding") or [], what)
    except ShapeError as err:
        raise _fail(path, number, str(err)) from None
    return raw, undone


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def read_har(data: Mapping[str, Any], path: Path) -> tuple[list[Interaction], str | None]:
    """The Anthropic API interactions of a HAR document, and a note when it holds none.

    Raises:
        CassetteError: ``log.entries`` is not a list, or an entry to the Anthropic API cannot be
            read (no response status, bad base64, a body that is not valid gzip, a response
            saved without its content); the message names the entry.
    """
    entries = data["log"].get("entries")
    if not isinstance(entries, list):
        raise CassetteError(
            "HAR file cannot be read",
            file=str(path),
            why=f"'log.entries' is {type(entries).__name__}, not a list",
            fix="export the HAR again",
        )
    out: list[Interaction] = []
    hosts: Counter[str] = Counter()
    unreadable = 0
    for number, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, Mapping) else None
        url = request.get("url") if isinstance(request, Mapping) else None
        if not isinstance(request, Mapping) or not isinstance(url, str):
            unreadable += 1
            continue
        method = str(request.get("method") or "GET").upper()
        try:
            endpoint = endpoint_of(method, url)
            host = urlsplit(url).hostname or "?"
        except ValueError:
            unreadable += 1
            continue
        if endpoint == "other":
            hosts[host] += 1
            continue
        out.append(_interaction(entry, request, method, url, endpoint, number, path))
    if out:
        return out, None
    note = f"HAR file with {len(entries)} entr{'ies' if len(entries) != 1 else 'y'}, none to the Anthropic API"
    if hosts:
        named = ", ".join(host for host, _ in hosts.most_common(3))
        note += f" (hosts: {named}{', ...' if len(hosts) > 3 else ''})"
    if unreadable:
        note += f"; {unreadable} without a request URL"
    return out, note


def _interaction(
    entry: Mapping[str, Any],
    request: Mapping[str, Any],
    method: str,
    url: str,
    endpoint: str,
    number: int,
    path: Path,
) -> Interaction:
    response = entry.get("response")
    if not isinstance(response, Mapping):
        raise _fail(path, number, f"{method} {urlsplit(url).path}: 'response' is missing or not a mapping")
    status = response.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        raise _fail(path, number, f"response status {status!r} is not a number")
    request_headers = _headers(request.get("headers"))
    response_headers = _headers(response.get("headers"))
    request_body = _content(request.get("postData"), request_headers, path, number, "request postData")
    content = response.get("content")
    response_body = _content(content, response_headers, path, number, "response content")
    if response_body is None and status == 200:
        found = describe(content) if isinstance(content, Mapping) else "no 'content' mapping"
        raise _fail(
            path,
            number,
            f"{method} {urlsplit(url).path}: the response was saved without its content (found: {found})",
            fix="export the HAR with content (devtools: 'Save all as HAR with content'; Playwright: recordHar "
            "content 'embed' or 'attach')",
        )
    if request_body is None and method == "POST" and endpoint in ("messages", "count_tokens", "batch_create"):
        found = describe(request.get("postData")) if isinstance(request.get("postData"), Mapping) else "no postData"
        raise _fail(path, number, f"{method} {urlsplit(url).path}: the request has no postData text (found: {found})")
    response_raw, undone = response_body if response_body is not None else (b"", False)
    if undone or response_raw:
        # The body is decoded now (by us, or by the browser that saved it): the header no longer applies.
        response_headers.pop("content-encoding", None)
    if "content-type" not in response_headers and isinstance(content, Mapping) and content.get("mimeType"):
        response_headers["content-type"] = [str(content["mimeType"])]
    return Interaction(
        index=number,
        method=method,
        uri=url,
        request_headers={k: v[0] for k, v in request_headers.items() if v},
        request_body=Body(request_body[0] if request_body is not None else b""),
        status=status,
        reason=str(response.get("statusText") or ""),
        response_headers=response_headers,
        response_body=Body(response_raw),
        recorded_at=_timestamp(entry.get("startedDateTime")),
    )
