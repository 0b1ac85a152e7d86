"""Writing our format (``format: pytest-tokenbudget/1``).

JSON bodies are stored parsed, so a prompt reads as YAML and a change shows as a small diff. A
request that extends an earlier one (an agent turn re-sends the transcript and adds to it) is
stored as ``extends: N`` plus the few operations that turn request N into this one
(:func:`diff_ops`), so a cassette grows with the transcript, not with its square. Every stored
body is checked to rebuild byte for byte when written; one that would not is stored verbatim.
Only an allow list of headers is written, and secrets are replaced by ``<redacted>`` (by the
session's :class:`~pytest_tokenbudget._redact.Redactor`: bodies as they are meant, streams
included, header values, URL userinfo and query values); a file in which one survives is refused.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from .._atomic import write_atomic
from .._redact import Redactor
from ..errors import CassetteError
from ..prefix import format_path
from ._model import _STYLES, FORMAT, Body, Interaction, _encode, apply_ops

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
_LOOPBACK = re.compile(r"^(https?://(?:[^@/]*@)?)(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)")

# --------------------------------------------------------------------------------------------
# structural deltas


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


def _scrubber(redactor: Redactor) -> Callable[[Any], Any]:
    if not len(redactor):
        return lambda value: value
    return lambda value: redactor.text(value) if isinstance(value, str) else redactor.value(value)


def _redacted(interaction: Interaction, redactor: Redactor) -> Interaction:
    """The interaction with its bodies redacted as they are meant (streams, split values, encodings)."""
    request = redactor.body(interaction.request_body.raw)
    response = redactor.body(interaction.response_body.raw)
    if request is interaction.request_body.raw and response is interaction.response_body.raw:
        return interaction
    return replace(interaction, request_body=Body(request), response_body=Body(response))


def _refusal(text: str, redactor: Redactor) -> CassetteError | None:
    """The writer's refusal when a known secret survives redaction: where, whose, and the fix."""
    found = redactor.find(text)
    if not found:
        return None
    first = found[0]
    line = text.count("\n", 0, first.offset) + 1
    sources = sorted({f.source for f in found})
    return CassetteError(
        "refusing to write a cassette that contains a secret",
        why=f"the value of {', '.join(sources)} survives redaction ({first.encoding}) at line {line}, e.g. inside "
        "a binary body; nothing was written",
        fix="keep the secret out of what the test sends and receives (or record this test with "
        "@pytest.mark.token_budget(record=False))",
    )


def dump_cassette(
    interactions: Sequence[Interaction], *, secrets: Iterable[str] = (), redactor: Redactor | None = None
) -> str:
    """Serialise interactions in our format.

    Args:
        interactions: what to write, in order.
        secrets: literal values (API keys...) to replace by ``<redacted>`` anywhere in the text.
        redactor: the session's redactor (it learns the credentials the interactions' headers
            and URLs carry); a new one by default.

    Raises:
        CassetteError: a secret would still be written (e.g. inside an undecodable body).
    """
    redactor = Redactor() if redactor is None else redactor
    for secret in secrets:
        redactor.add(secret, "given secret")
    for interaction in interactions:  # all first: a key sent in turn 3 is redacted in turn 0 too
        redactor.harvest_headers(interaction.request_headers)
        redactor.harvest_url(interaction.uri)
    scrub = _scrubber(redactor)
    items: list[dict[str, Any]] = []
    last_request: dict[tuple[str, str], tuple[int, Any]] = {}
    for position, original in enumerate(interactions):
        interaction = _redacted(original, redactor)
        key = (interaction.method, interaction.path)
        spec, value = _body_spec(interaction.request_body, True, last_request.get(key), scrub)
        if isinstance(value, dict):
            last_request[key] = (position, value)
        request: dict[str, Any] = {"method": interaction.method, "uri": _normalise_uri(redactor.url(interaction.uri))}
        if interaction.recorded_at is not None:
            request["recorded_at"] = _iso(interaction.recorded_at)
        request["headers"] = scrub(_headers_out(interaction.request_headers, _KEEP_REQUEST_HEADERS))
        request["body"] = spec
        response_spec, _ = _body_spec(interaction.response_body, interaction.content_type.endswith("json"), None, scrub)
        response: dict[str, Any] = {"status": interaction.status}
        if interaction.responded_at is not None:
            response["responded_at"] = _iso(interaction.responded_at)
        if interaction.reason and interaction.reason != "OK":
            response["reason"] = interaction.reason
        response["headers"] = scrub(_headers_out(interaction.response_headers, _KEEP_RESPONSE_HEADERS))
        response["body"] = response_spec
        items.append({"request": request, "response": response})
    document = {"format": FORMAT, "interactions": items}
    text = _HEADER_COMMENT + yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1_000_000, default_flow_style=False
    )
    refusal = _refusal(text, redactor)
    if refusal is not None:
        raise refusal
    return text


def save_cassette(
    path: Path | str,
    interactions: Sequence[Interaction],
    *,
    secrets: Iterable[str] = (),
    redactor: Redactor | None = None,
    test: str | None = None,
) -> None:
    """Write a cassette atomically: the old file stays whole until the new one is complete.

    Raises:
        CassetteError: a secret would still be written (the file is named, nothing is written).
    """
    path = Path(path)
    try:
        text = dump_cassette(interactions, secrets=secrets, redactor=redactor)
    except CassetteError as error:
        error.file = str(path)
        error.test = error.test or test
        raise
    write_atomic(path, text)
