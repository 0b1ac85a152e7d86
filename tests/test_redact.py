"""The redactor (issue 16): encodings, split values, streams, URLs, headers; the writers' refusals."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pytest_tokenbudget._redact import REDACTED, Redactor
from pytest_tokenbudget.cassette import Body, Interaction, load_cassette, save_cassette
from pytest_tokenbudget.errors import CassetteError
from pytest_tokenbudget.record import SafePersister

SECRET = "sk-ant-api03-CANARY+/=~0123456789"


def _redactor() -> Redactor:
    return Redactor({SECRET: "$ANTHROPIC_API_KEY"})


@pytest.mark.parametrize("offset", [0, 1, 2])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_at_each_offset(offset: int, encode: object) -> None:
    """A secret inside a base64 blob is found wherever it starts in the encoded bytes."""
    blob = encode(b"x" * offset + SECRET.encode() + b"tail").decode()  # type: ignore[operator]
    found = _redactor().find(blob)
    assert [f.source for f in found] == ["$ANTHROPIC_API_KEY"]
    assert found[0].encoding.endswith(f"offset {offset}")
    assert SECRET not in _redactor().text(blob)
    assert REDACTED in _redactor().text(blob)


@pytest.mark.parametrize(
    "encoded",
    [
        quote(SECRET, safe=""),
        quote(SECRET),
        quote_plus(SECRET),
        quote(SECRET, safe="").replace("%2B", "%2b").replace("%2F", "%2f").replace("%3D", "%3d"),
        "".join(f"%{b:02X}" for b in SECRET.encode()),
        "".join(f"\\u{ord(c):04x}" for c in SECRET),
        "".join(f"\\u{ord(c):04X}" for c in SECRET),
        json.dumps(SECRET)[1:-1],
    ],
)
def test_percent_and_json_escapes(encoded: str) -> None:
    """Percent-encoded and JSON-escaped forms are replaced whole."""
    assert _redactor().text(f"a {encoded} b") == f"a {REDACTED} b"


def test_short_values_are_not_secrets() -> None:
    """Values under 8 characters are ignored (they would redact ordinary words)."""
    redactor = Redactor({"short": "$X", "": "$Y"})
    assert len(redactor) == 0
    assert redactor.text("short") == "short"


def test_split_over_two_content_blocks() -> None:
    """A secret split over two text blocks is redacted in both; other strings are untouched."""
    half = len(SECRET) // 2
    body = {
        "content": [{"type": "text", "text": "one " + SECRET[:half]}, {"type": "text", "text": SECRET[half:] + " two"}]
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    out = json.loads(_redactor().body(raw))
    assert out == {
        "content": [{"type": "text", "text": "one " + REDACTED}, {"type": "text", "text": REDACTED + " two"}]
    }


def test_json_body_keeps_its_bytes_when_nothing_is_split() -> None:
    """A raw secret is replaced in place: the rest of the body keeps its exact bytes."""
    raw = b'{"a": "x ' + SECRET.encode() + b' y",  "b": 1}'
    assert _redactor().body(raw) == b'{"a": "x <redacted> y",  "b": 1}'


def _sse(pieces: list[str]) -> bytes:
    events = [
        'event: message_start\ndata: {"type":"message_start"}',
        'event: content_block_start\ndata: {"type":"content_block_start","index":0}',
    ]
    for piece in pieces:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        events.append("event: content_block_delta\ndata: " + json.dumps(delta))
    events.append('event: message_stop\ndata: {"type": "message_stop"}')
    return ("\n\n".join(events) + "\n\n").encode()


def _texts(stream: bytes) -> list[str]:
    texts = []
    for line in stream.decode().split("\n"):
        if line.startswith("data:"):
            payload = json.loads(line[5:])  # every event still parses
            if payload["type"] == "content_block_delta":
                texts.append(payload["delta"]["text"])
    return texts


@given(
    before=st.text(alphabet="abc xyz", max_size=40),
    after=st.text(alphabet="abc xyz", max_size=40),
    size=st.integers(min_value=1, max_value=30),
)
@example(before="x" * 13, after=" ok", size=24)  # the emulator's chunking of a reply
def test_stream_split_over_deltas(before: str, after: str, size: int) -> None:
    """However the stream's deltas cut a secret, every piece of it goes and the events still parse."""
    text = before + SECRET + after
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    redacted = _redactor().body(_sse(pieces))
    texts = _texts(redacted)
    assert len(texts) == len(pieces)
    joined = "".join(texts)
    assert joined.startswith(before)
    assert joined.endswith(after)
    assert SECRET[: len(SECRET) // 2] not in joined
    assert SECRET[len(SECRET) // 2 :] not in joined
    assert redacted.count(b"event: ") == len(pieces) + 3
    assert b"message_stop" in redacted


def test_url_userinfo_and_query() -> None:
    """Userinfo and credential-like query values go whatever their length; other parameters stay."""
    redactor = Redactor()
    uri = "http://agent:pw@127.0.0.1:8080/v1/messages/batches?limit=2&key=k1&api_key=abcdefghij&sig=s"
    redactor.harvest_url(uri)
    assert redactor.url(uri) == (
        "http://<redacted>@127.0.0.1:8080/v1/messages/batches?limit=2&key=<redacted>&api_key=<redacted>&sig=<redacted>"
    )
    assert redactor.secrets == {"agent:pw": "URL userinfo", "abcdefghij": "query parameter api_key"}  # not "pw", "k1"


def test_headers_teach_their_credentials() -> None:
    """Bearer and Basic credentials, x-api-key and cookies become secrets, named by their header."""
    redactor = Redactor()
    basic = base64.b64encode(b"user:pass-word-123").decode()
    redactor.harvest_headers(
        {
            "authorization": f"Basic {basic}",
            "x-api-key": "sk-in-code-0000000",
            "cookie": "a=cookie-value-1; b=x",
            "anthropic-beta": "not-a-credential-header",
        }
    )
    assert redactor.secrets == {
        basic: "header authorization",
        "user:pass-word-123": "header authorization",
        "pass-word-123": "header authorization",
        "sk-in-code-0000000": "header x-api-key",
        "cookie-value-1": "header cookie",
    }


def test_environment_names_and_patterns() -> None:
    """Credential-like names are secrets; others only when named (a name or a pattern)."""
    environ = {"ANTHROPIC_API_KEY": "k" * 10, "PARTNER_ID": "p" * 10, "MYCO_X": "m" * 10, "HOME": "/home/someone"}
    assert Redactor.from_environment(environ).secrets == {"k" * 10: "$ANTHROPIC_API_KEY"}
    named = Redactor.from_environment(environ, names=["PARTNER_ID", "MYCO_*"])
    assert named.secrets == {"k" * 10: "$ANTHROPIC_API_KEY", "p" * 10: "$PARTNER_ID", "m" * 10: "$MYCO_X"}


def _interaction(response: bytes) -> Interaction:
    return Interaction(
        index=0,
        method="POST",
        uri="http://127.0.0.1:5000/v1/messages",
        request_headers={"x-api-key": SECRET, "content-type": "application/json"},
        request_body=Body(b'{"model":"claude-haiku-4-5"}'),
        status=200,
        reason="OK",
        response_headers={"content-type": ["application/octet-stream"]},
        response_body=Body(response),
    )


def test_writer_refuses_a_surviving_secret_once(tmp_path: Path) -> None:
    """A secret inside a binary body cannot be redacted: nothing is written, and the refusal
    names the file, the secret's source (the header that sent it) and the fix."""
    path = tmp_path / "cassettes" / "test_upload.yaml"
    binary = b"\xff\xfe" + SECRET.encode() + b"\x00"
    with pytest.raises(CassetteError) as caught:
        save_cassette(path, [_interaction(binary)], test="tests/test_upload.py::test_upload")
    message = caught.value.render()
    print(message)
    assert not path.exists()
    assert message.count("refusing to write") == 1
    assert f"file: {path}" in message
    assert "the value of header x-api-key survives redaction (base64, offset 2) at line 18" in message
    assert "fix:  keep the secret out of what the test sends and receives" in message
    assert SECRET not in message


def test_writer_redacts_what_it_can(tmp_path: Path) -> None:
    """A key sent in a header and echoed in a text body is redacted; the cassette loads back."""
    path = tmp_path / "c.yaml"
    save_cassette(path, [_interaction(b"echo " + SECRET.encode())])
    text = path.read_text()
    assert SECRET not in text
    assert "x-api-key" not in text
    assert load_cassette(path).interactions[0].response_body.raw == b"echo <redacted>"


class _Inner:
    def __init__(self) -> None:
        self.saved: list[tuple[str, dict[str, object]]] = []

    def save_cassette(self, path: str, data: dict[str, object], serializer: object) -> None:
        self.saved.append((path, data))


def test_pytest_recording_persister_filters_and_refuses(tmp_path: Path) -> None:
    """pytest-recording's cassettes lose their credential headers and secrets; a surviving one is refused."""
    from vcr.request import Request
    from vcr.serializers import yamlserializer

    inner = _Inner()
    persister = SafePersister(inner, Redactor())
    request = Request(
        "POST",
        "http://127.0.0.1/v1/messages",
        b'{"k":"' + SECRET.encode() + b'"}',
        {"authorization": f"Bearer {SECRET}"},
    )
    response = {"status": {"code": 200, "message": "OK"}, "headers": {"set-cookie": ["a=b"]}, "body": {"string": b"ok"}}
    persister.save_cassette(str(tmp_path / "t.yaml"), {"requests": [request], "responses": [response]}, yamlserializer)
    _, data = inner.saved[-1]
    safe_request = data["requests"][0]  # type: ignore[index]
    assert dict(safe_request.headers) == {}
    assert safe_request.body == b'{"k":"<redacted>"}'
    assert data["responses"][0]["headers"] == {}  # type: ignore[index]
    binary = {**response, "body": {"string": b"\xff" + SECRET.encode()}}
    with pytest.raises(CassetteError) as caught:
        persister.save_cassette(
            str(tmp_path / "u.yaml"), {"requests": [request], "responses": [binary]}, yamlserializer
        )
    assert f"file: {tmp_path / 'u.yaml'}" in caught.value.render()
    assert "header authorization" in caught.value.render()
