"""Recordings made by other tools (issue 13): vcrpy custom serializers, HAR 1.2, vcrpy's JSON serializer.

Every file here is built by the test from the formats as their tools document them (vcrpy's
cassette layout, pydantic-ai's ``parsed_body`` serializer, HAR 1.2 as Polly.js, Playwright and
browser devtools write it); none is copied from a real recording.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import zlib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
import vcr
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from pytest_tokenbudget.cassette import iter_cassette_files, load_cassette
from pytest_tokenbudget.cassette._shape import _METADATA, Side, find_body
from pytest_tokenbudget.cli import main as cli_main
from pytest_tokenbudget.emulator import AnthropicEmulator, Reply
from pytest_tokenbudget.errors import CassetteError
from pytest_tokenbudget.ledger import turns_from
from pytest_tokenbudget.reports import validate_report

pytestmark = pytest.mark.token_budget(record=False)  # these tests read files; none records through the plugin

MODEL = "claude-sonnet-4-5-20250929"
API = "https://api.anthropic.com"
USER = [{"role": "user", "content": "Where is order 42?"}]


# -------------------------------------------------------------------------------- documented shapes


def params(stream: bool = False) -> dict[str, Any]:
    """A Messages API request body."""
    body: dict[str, Any] = {"max_tokens": 256, "messages": USER, "model": MODEL}
    if stream:
        body["stream"] = True
    return body


def message(usage: dict[str, Any], text: str = "It ships today.") -> dict[str, Any]:
    """A Messages API response body."""
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def sse(start_usage: dict[str, Any], delta_usage: dict[str, Any]) -> str:
    """A streamed message as the API sends it (SSE text)."""
    start = {**message(start_usage), "content": [], "stop_reason": None}
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta_usage}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


def vcr_headers(content_type: str = "application/json", **extra: str) -> dict[str, list[str]]:
    """vcrpy's headers: name -> list of values."""
    return {"content-type": [content_type], **{k.replace("_", "-"): [v] for k, v in extra.items()}}


def har_headers(content_type: str, **extra: str) -> list[dict[str, str]]:
    """HAR headers: a list of ``{name, value}``."""
    return [{"name": "content-type", "value": content_type}] + [
        {"name": k.replace("_", "-"), "value": v} for k, v in extra.items()
    ]


def har_entry(
    url: str,
    response_content: dict[str, Any],
    *,
    method: str = "POST",
    post: dict[str, Any] | None = None,
    status: int = 200,
    response_headers: list[dict[str, str]] | None = None,
    started: str = "2026-03-02T10:00:00.000Z",
) -> dict[str, Any]:
    """One HAR 1.2 entry (the fields the spec requires, plus the content)."""
    request: dict[str, Any] = {
        "method": method,
        "url": url,
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": har_headers("application/json", anthropic_version="2023-06-01"),
        "queryString": [],
        "headersSize": -1,
        "bodySize": -1,
    }
    if post is not None:
        request["postData"] = post
    return {
        "startedDateTime": started,
        "time": 812.5,
        "request": request,
        "response": {
            "status": status,
            "statusText": "OK",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": response_headers or har_headers(response_content.get("mimeType", "application/json")),
            "content": response_content,
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        },
        "cache": {},
        "timings": {"send": 0.1, "wait": 800.0, "receive": 12.4},
    }


def har(creator: str, entries: list[dict[str, Any]], **extra: Any) -> str:
    """A HAR 1.2 document."""
    return json.dumps(
        {"log": {"version": "1.2", "creator": {"name": creator, "version": "1.0"}, **extra, "entries": entries}},
        indent=2,
    )


def post_json(body: dict[str, Any]) -> dict[str, Any]:
    """HAR ``postData`` holding a JSON body."""
    return {"mimeType": "application/json", "text": json.dumps(body)}


# Usage per turn, as the API would report it (uncached input, cache writes, cache reads, output).
U_PYDANTIC_1 = {"input_tokens": 11, "output_tokens": 7}
U_PYDANTIC_2 = {
    "input_tokens": 5,
    "cache_creation_input_tokens": 1500,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 20,
}
U_MAPPING = {"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1500, "output_tokens": 30}
U_SSE_START = {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}
U_SSE_DELTA = {"output_tokens": 45}
U_POLLY = {"input_tokens": 40, "output_tokens": 12}
U_PLAYWRIGHT = {"input_tokens": 8, "output_tokens": 3}
U_VCR_JSON = {"input_tokens": 13, "output_tokens": 4}
U_BINARY = {"input_tokens": 17, "output_tokens": 5}
U_BASE64 = {"input_tokens": 19, "output_tokens": 6}


def pydantic_style() -> str:
    """A vcrpy cassette through a custom serializer (pydantic-ai's): decoded JSON as ``parsed_body``
    beside ``headers`` on both sides, no ``body`` key."""

    def item(usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "request": {
                "method": "POST",
                "uri": f"{API}/v1/messages",
                "headers": vcr_headers(),
                "parsed_body": params(),
            },
            "response": {
                "status": {"code": 200, "message": "OK"},
                "headers": vcr_headers(),
                "parsed_body": message(usage),
            },
        }

    return yaml.safe_dump({"interactions": [item(U_PYDANTIC_1), item(U_PYDANTIC_2)], "version": 1}, sort_keys=False)


def mapping_body_stale_encoding() -> str:
    """A custom serializer storing the body as a YAML mapping under ``body``, leaving the
    ``content-encoding: gzip`` header in place although the body is decoded."""
    data = {
        "interactions": [
            {
                "request": {"method": "POST", "uri": f"{API}/v1/messages", "headers": vcr_headers(), "body": params()},
                "response": {
                    "status": {"code": 200, "message": "OK"},
                    "headers": vcr_headers(content_encoding="gzip"),
                    "body": message(U_MAPPING),
                },
            }
        ],
        "version": 1,
    }
    return yaml.safe_dump(data, sort_keys=False)


def devtools_har() -> str:
    """A browser devtools HAR: a page, then a streamed API call whose SSE text the browser
    decoded, keeping its ``content-encoding: br`` header."""
    page = har_entry(
        "https://shop.example/app.js",
        {"size": 10, "mimeType": "application/javascript", "text": "console.log(1)"},
        method="GET",
    )
    text = sse(U_SSE_START, U_SSE_DELTA)
    stream = har_entry(
        f"{API}/v1/messages",
        {"size": len(text), "mimeType": "text/event-stream", "text": text},
        post=post_json(params(stream=True)),
        response_headers=har_headers("text/event-stream; charset=utf-8", content_encoding="br"),
        started="2026-03-02T10:00:01.000Z",
    )
    return har("WebInspector", [page, stream], pages=[])


def polly_har() -> str:
    """A Polly.js recording: the gzip body as base64 (``content.encoding: base64``), plus a count_tokens call."""
    raw = gzip.compress(json.dumps(message(U_POLLY)).encode(), mtime=0)
    turn = har_entry(
        f"{API}/v1/messages",
        {
            "size": len(raw),
            "mimeType": "application/json",
            "encoding": "base64",
            "text": base64.b64encode(raw).decode(),
        },
        post=post_json(params()),
        response_headers=har_headers("application/json", content_encoding="gzip"),
    )
    count = har_entry(
        f"{API}/v1/messages/count_tokens",
        {"size": 19, "mimeType": "application/json", "text": json.dumps({"input_tokens": 99})},
        post=post_json({"messages": USER, "model": MODEL}),
    )
    for number, entry in enumerate([turn, count]):
        entry["_id"] = f"polly-{number}"
        entry["_order"] = 0
    return har("Polly.JS", [turn, count])


def playwright_json() -> str:
    """A Playwright ``recordHar`` file saved as ``.json``: base64 content, an API behind a local proxy."""
    raw = json.dumps(message(U_PLAYWRIGHT)).encode()
    turn = har_entry(
        "http://localhost:8787/v1/messages",
        {
            "size": len(raw),
            "mimeType": "application/json",
            "encoding": "base64",
            "text": base64.b64encode(raw).decode(),
        },
        post=post_json(params()),
    )
    turn["_monotonicTime"] = 1234.5
    return har("Playwright", [turn], browser={"name": "chromium", "version": "131.0"}, pages=[])


def vcrpy_json_serializer() -> str:
    """vcrpy's own JSON serializer (``serializer="json"``): bodies as text."""
    data = {
        "interactions": [
            {
                "request": {
                    "body": json.dumps(params()),
                    "headers": vcr_headers(),
                    "method": "POST",
                    "uri": f"{API}/v1/messages",
                },
                "response": {
                    "body": {"string": json.dumps(message(U_VCR_JSON))},
                    "headers": vcr_headers(),
                    "status": {"code": 200, "message": "OK"},
                },
            }
        ],
        "version": 1,
    }
    return json.dumps(data, indent=4)


def vcrpy_binary() -> str:
    """Plain vcrpy YAML: a gzip body as ``!!binary``, then a ``base64_string`` body."""

    def item(body: dict[str, Any], headers: dict[str, list[str]]) -> dict[str, Any]:
        return {
            "request": {
                "body": json.dumps(params()),
                "headers": vcr_headers(),
                "method": "POST",
                "uri": f"{API}/v1/messages",
            },
            "response": {"body": body, "headers": headers, "status": {"code": 200, "message": "OK"}},
        }

    gz = gzip.compress(json.dumps(message(U_BINARY)).encode(), mtime=0)
    b64 = base64.b64encode(json.dumps(message(U_BASE64)).encode()).decode()
    data = {
        "interactions": [
            item({"string": gz}, vcr_headers(content_encoding="gzip")),
            item({"base64_string": b64}, vcr_headers()),
        ],
        "version": 1,
    }
    text = yaml.dump(data, Dumper=yaml.SafeDumper)
    assert "!!binary" in text
    return text


def not_anthropic() -> dict[str, str]:
    """Well-formed files with no Anthropic traffic: a package manifest, an OpenAI cassette, a page's HAR."""
    openai = {
        "interactions": [
            {
                "request": {
                    "body": "{}",
                    "headers": {},
                    "method": "POST",
                    "uri": "https://api.openai.com/v1/chat/completions",
                },
                "response": {"body": {"string": "{}"}, "headers": {}, "status": {"code": 200, "message": "OK"}},
            }
        ],
        "version": 1,
    }
    page = har_entry("https://shop.example/", {"size": 5, "mimeType": "text/html", "text": "<p>hi"}, method="GET")
    return {
        "other/package.json": json.dumps(
            {"name": "shop", "version": "1.0.0", "devDependencies": {"@pollyjs/core": "6"}}
        ),
        "other/openai.yaml": yaml.safe_dump(openai),
        "other/pages.har": har("Firefox", [page]),
    }


FOREIGN: dict[str, Callable[[], str]] = {
    "pydantic_ai/test_parsed_body.yaml": pydantic_style,
    "custom/test_mapping_body.yaml": mapping_body_stale_encoding,
    "devtools/session.har": devtools_har,
    "polly/recording.har": polly_har,
    "playwright/api.json": playwright_json,
    "vcrpy_json/test_json_serializer.json": vcrpy_json_serializer,
    "vcrpy_yaml/test_binary.yaml": vcrpy_binary,
}


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """A folder holding one file per format, and three well-formed files with no Anthropic traffic."""
    root = tmp_path / "foreign"
    files = {name: build() for name, build in FOREIGN.items()} | not_anthropic()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def report_json(capsys: pytest.CaptureFixture[str], *paths: str) -> tuple[int, dict[str, Any]]:
    """``tokenbudget report --json PATH...``: exit status and document."""
    status = cli_main(["report", *paths, "--json"])
    return status, json.loads(capsys.readouterr().out)


# -------------------------------------------------------------------------------- the report


def test_report_reads_every_foreign_format_with_hand_summed_usage(
    foreign: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tokenbudget report --json`` on one file per format reads all seven, skips the three without
    Anthropic traffic with a note, and sums usage to the hand count."""
    monkeypatch.chdir(foreign)
    status, doc = report_json(capsys, ".")
    assert status == 0
    assert doc["errors"] == []
    validate_report(doc)
    assert sorted(t["id"] for t in doc["tests"]) == sorted(FOREIGN)
    turns = {t["id"]: t["totals"]["turns"] for t in doc["tests"]}
    assert turns == {
        "pydantic_ai/test_parsed_body.yaml": 2,
        "custom/test_mapping_body.yaml": 1,
        "devtools/session.har": 1,
        "polly/recording.har": 1,  # count_tokens is not a billed turn
        "playwright/api.json": 1,
        "vcrpy_json/test_json_serializer.json": 1,
        "vcrpy_yaml/test_binary.yaml": 2,
    }
    # By hand: uncached input 11+5+5+20+40+8+13+17+19, writes 1500, reads 1500, output 7+20+30+45+12+3+4+5+6.
    totals = doc["totals"]
    assert totals["turns"] == 9
    assert totals["input_tokens"] == 138
    assert totals["cache_creation_input_tokens"] == 1500
    assert totals["cache_write_5m_tokens"] == 1500
    assert totals["cache_write_1h_tokens"] == 0
    assert totals["cache_read_input_tokens"] == 1500
    assert totals["output_tokens"] == 132
    assert totals["total_input_tokens"] == 3138
    # Sonnet 4.5 per MTok: $3 input, $3.75 5m write, $0.30 read, $15 output:
    # 138*3 + 1500*3.75 + 1500*0.30 + 132*15 = 8469 -> $0.008469
    assert Decimal(str(totals["cost_usd"])) == Decimal("0.008469")
    assert doc["notes"] == [
        {"path": "other/openai.yaml", "note": "1 interaction, none to the Anthropic API (hosts: api.openai.com)"},
        {"path": "other/package.json", "note": "not a recording: a mapping with keys name, version, devDependencies"},
        {"path": "other/pages.har", "note": "HAR file with 1 entry, none to the Anthropic API (hosts: shop.example)"},
    ]


def test_text_report_lists_the_skipped_files_as_notes(
    foreign: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table shows the seven recordings and names each skipped file under a note, exit 0."""
    monkeypatch.chdir(foreign)
    assert cli_main(["report", "."]) == 0
    out = capsys.readouterr().out
    assert "3 file(s) with no priced turn (not errors):" in out
    assert "  other/package.json: not a recording: a mapping with keys name, version, devDependencies" in out
    assert "problem(s)" not in out
    for name in FOREIGN:
        assert name in out


def test_devtools_stream_turn_and_stale_header(foreign: Path) -> None:
    """The HAR's SSE text is assembled into one streamed turn; the stale br header is dropped, the page ignored."""
    cassette = load_cassette(foreign / "devtools" / "session.har")
    assert cassette.format == "har"
    assert [(i.index, i.endpoint) for i in cassette.interactions] == [(1, "messages")]
    assert "content-encoding" not in cassette.interactions[0].response_headers
    (turn,) = turns_from(cassette.interactions).turns
    assert turn.stream
    assert (turn.uncached_input_tokens, turn.output_tokens) == (20, 45)
    assert turn.recorded_at == 1772445601.0


def test_iter_cassette_files_finds_har_and_json_but_not_hidden_folders(foreign: Path) -> None:
    """Folders yield .yaml/.yml/.json/.har files; hidden folders and node_modules are left out."""
    (foreign / ".git").mkdir()
    (foreign / ".git" / "config.json").write_text("{}")
    (foreign / "node_modules" / "x").mkdir(parents=True)
    (foreign / "node_modules" / "x" / "package.json").write_text("{}")
    (foreign / "notes.txt").write_text("not a recording")
    found = [p.relative_to(foreign).as_posix() for p in iter_cassette_files([foreign])]
    assert found == sorted(set(FOREIGN) | set(not_anthropic()))


# -------------------------------------------------------------------------------- recorded by vcrpy


class ParsedBodySerializer:
    """A vcrpy custom serializer in pydantic-ai's layout: JSON bodies decoded into ``parsed_body``
    beside ``headers``, their ``body`` removed; other bodies (the SSE stream) left as text. It
    gunzips what the server gzipped but leaves the ``content-encoding: gzip`` header in place."""

    @staticmethod
    def serialize(cassette_dict: dict[str, Any]) -> str:
        for interaction in cassette_dict["interactions"]:
            for data in interaction.values():
                headers = {k.lower(): v for k, v in (data.get("headers") or {}).items()}
                if not any("application/json" in str(v) for v in headers.get("content-type", [])):
                    continue
                body = data.get("body")
                body = body.get("string") if isinstance(body, dict) else body
                if isinstance(body, bytes) and body.startswith(b"\x1f\x8b"):
                    body = gzip.decompress(body)
                if body:
                    data["parsed_body"] = json.loads(body)
                    del data["body"]
        return yaml.safe_dump(cassette_dict, sort_keys=False, allow_unicode=True)

    @staticmethod
    def deserialize(cassette_string: str) -> dict[str, Any]:  # unused: the test only records
        raise NotImplementedError


def test_sdk_traffic_recorded_by_vcrpy_with_a_custom_serializer_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real SDK, recorded by plain vcrpy through a parsed_body serializer: the report's usage
    is what the SDK returned, turn by turn (JSON, stream, and a count_tokens call that is not billed)."""
    emulator = AnthropicEmulator().start()
    try:
        emulator.script(Reply.text("It ships today."), Reply.text("Tomorrow, then."))
        recorder = vcr.VCR(record_mode="all", match_on=["method", "path"])
        recorder.register_serializer("parsed", ParsedBodySerializer)
        path = tmp_path / "cassettes" / "test_parsed.yaml"
        client = anthropic.Anthropic(base_url=emulator.base_url, api_key="recorder-key", max_retries=0)
        with recorder.use_cassette(str(path), serializer="parsed"):
            first = client.messages.create(model=MODEL, max_tokens=64, messages=USER)
            with client.messages.stream(model=MODEL, max_tokens=64, messages=USER) as stream:
                second = stream.get_final_message()
            client.messages.count_tokens(model=MODEL, messages=USER)
    finally:
        emulator.stop()
    recorded = yaml.safe_load(path.read_text())["interactions"]
    # Requests: all three JSON. Responses: the two JSON ones; the stream stays text.
    assert [sorted(i["request"]) for i in recorded] == [["headers", "method", "parsed_body", "uri"]] * 3
    assert ["parsed_body" in i["response"] for i in recorded] == [True, False, True]
    assert recorded[0]["response"]["headers"]["content-encoding"] == ["gzip"]  # stale: the body is decoded
    monkeypatch.chdir(tmp_path)
    status, doc = report_json(capsys, "cassettes")
    assert status == 0
    (entry,) = doc["tests"]
    sent = [first.usage, second.usage]
    assert [(t["usage"]["input_tokens"], t["usage"]["output_tokens"], t["stream"]) for t in entry["turns"]] == [
        (u.input_tokens, u.output_tokens, streamed) for u, streamed in zip(sent, [False, True], strict=True)
    ]
    assert doc["totals"]["input_tokens"] == first.usage.input_tokens + second.usage.input_tokens
    assert doc["totals"]["output_tokens"] == first.usage.output_tokens + second.usage.output_tokens


# -------------------------------------------------------------------------------- errors


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_no_body_anywhere_names_what_was_found(tmp_path: Path) -> None:
    """A response with no body-like value is an error naming file, interaction and the keys seen."""
    data = yaml.safe_load(pydantic_style())
    del data["interactions"][1]["response"]["parsed_body"]
    data["interactions"][1]["response"]["body_bytes"] = [1, 2, 3]
    path = write(tmp_path, "odd.yaml", yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(CassetteError) as caught:
        load_cassette(path)
    message = str(caught.value)
    assert caught.value.file == str(path)
    assert (
        "interaction 1: no response body shaped like an API response (POST /v1/messages); the response has: "
        "status (mapping: code, message), headers (mapping: content-type), body_bytes (list of 3)"
    ) in message


def test_missing_request_body_names_what_was_found(tmp_path: Path) -> None:
    """A POST /v1/messages whose request holds no body at all says so, with the request's keys."""
    data = yaml.safe_load(pydantic_style())
    del data["interactions"][0]["request"]["parsed_body"]
    path = write(tmp_path, "odd.yaml", yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(CassetteError) as caught:
        load_cassette(path)
    assert caught.value.why == (
        "interaction 0: no request body found (POST /v1/messages); the request has: method (text, 4 characters), "
        "uri (text, 37 characters), headers (mapping: content-type)"
    )


def test_har_saved_without_content_is_an_error_naming_the_entry(tmp_path: Path) -> None:
    """A HAR whose API response has no text (saved without content) names the entry and the fix."""
    doc = json.loads(polly_har())
    del doc["log"]["entries"][0]["response"]["content"]["text"]
    path = write(tmp_path, "bare.har", json.dumps(doc))
    with pytest.raises(CassetteError) as caught:
        load_cassette(path)
    assert caught.value.why == (
        "entry 0: POST /v1/messages: the response was saved without its content "
        "(found: size (int), mimeType (text, 16 characters), encoding (text, 6 characters))"
    )
    assert caught.value.fix is not None
    assert "with content" in caught.value.fix


def test_har_bad_base64_is_an_error(tmp_path: Path) -> None:
    """Content marked base64 that is not base64 names the entry."""
    doc = json.loads(polly_har())
    doc["log"]["entries"][0]["response"]["content"]["text"] = "@@not base64@@"
    with pytest.raises(CassetteError, match="entry 0: response content is marked base64 but is not valid base64"):
        load_cassette(write(tmp_path, "bad.har", json.dumps(doc)))


def test_not_a_recording_is_an_error_for_a_tests_own_cassette(tmp_path: Path) -> None:
    """Without skip_unknown (a test's own cassette), a file that is not a recording stays an error."""
    path = write(tmp_path, "package.json", not_anthropic()["other/package.json"])
    with pytest.raises(CassetteError, match="expected a mapping with an 'interactions' list"):
        load_cassette(path)
    assert load_cassette(path, skip_unknown=True).note == (
        "not a recording: a mapping with keys name, version, devDependencies"
    )


def test_playwright_attached_content_is_read_from_beside_the_har(tmp_path: Path) -> None:
    """Playwright's ``content: 'attach'`` keeps bodies in files named by ``_file``; they are read from beside the HAR."""
    doc = json.loads(playwright_json())
    content = doc["log"]["entries"][0]["response"]["content"]
    del content["text"], content["encoding"]
    content["_file"] = "0f1e2d.dat"
    (tmp_path / "0f1e2d.dat").write_text(json.dumps(message(U_PLAYWRIGHT)))
    path = write(tmp_path, "attached.har", json.dumps(doc))
    (turn,) = turns_from(load_cassette(path).interactions).turns
    assert (turn.uncached_input_tokens, turn.output_tokens) == (8, 3)
    (tmp_path / "0f1e2d.dat").unlink()
    with pytest.raises(CassetteError, match=r"entry 0: response content is in the attached file '0f1e2d\.dat'"):
        load_cassette(path)


# -------------------------------------------------------------------------------- compression


def _compressors() -> dict[str, Callable[[bytes], bytes]]:
    out: dict[str, Callable[[bytes], bytes]] = {
        "gzip": lambda raw: gzip.compress(raw, mtime=0),
        "deflate": zlib.compress,
    }
    try:
        import brotli  # type: ignore[import-untyped, unused-ignore]

        out["br"] = brotli.compress
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-untyped, unused-ignore]

        out["zstd"] = zstandard.ZstdCompressor().compress
    except ImportError:
        pass
    return out


COMPRESSORS = _compressors()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_compressed_vcrpy_bodies_are_read(tmp_path: Path, encoding: str) -> None:
    """vcrpy ``!!binary`` bodies compressed with gzip, deflate, br or zstd are read (br and zstd need their package)."""
    if encoding not in COMPRESSORS:
        pytest.skip(f"no {encoding} compressor installed (pip install 'pytest-tokenbudget[compression]')")
    data = yaml.safe_load(vcrpy_binary())
    response = data["interactions"][0]["response"]
    response["body"] = {"string": COMPRESSORS[encoding](json.dumps(message(U_BINARY)).encode())}
    response["headers"]["content-encoding"] = [encoding]
    path = write(tmp_path, f"{encoding}.yaml", yaml.dump(data, Dumper=yaml.SafeDumper))
    ledger = turns_from(load_cassette(path).interactions)
    assert [(t.uncached_input_tokens, t.output_tokens) for t in ledger.turns] == [(17, 5), (19, 6)]


# -------------------------------------------------------------------------------- the shape finder

KEY = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=16
).filter(
    lambda k: k.lower() not in _METADATA  # the keys the finder never takes for a body
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
USAGE = st.fixed_dictionaries(
    {"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**5)},
    optional={"cache_read_input_tokens": st.integers(0, 10**6)},
)
BODIES = st.one_of(
    st.tuples(st.just(Side.RESPONSE), st.builds(message, USAGE, TEXT)),
    st.tuples(
        st.just(Side.REQUEST),
        st.builds(
            lambda text, n: {"model": MODEL, "max_tokens": n, "messages": [{"role": "user", "content": text}]},
            TEXT,
            st.integers(1, 64000),
        ),
    ),
)
# How the body is stored: parsed (a mapping), as text, or as bytes after a compression, maybe base64.
STORAGE = st.sampled_from(["mapping", "text", "bytes", *COMPRESSORS, *(f"base64+{c}" for c in COMPRESSORS), "base64"])


@given(
    body=BODIES,
    key=KEY,
    nested=st.booleans(),
    storage=STORAGE,
    declare=st.booleans(),
    noise=st.dictionaries(KEY, TEXT, max_size=2),
)
@example(
    body=(Side.RESPONSE, message({"input_tokens": 1, "output_tokens": 1})),
    key="parsed_body",
    nested=False,
    storage="mapping",
    declare=True,
    noise={},
)  # pydantic-ai's layout with a stale gzip header
@example(
    body=(Side.RESPONSE, message({"input_tokens": 1, "output_tokens": 1})),
    key="string",
    nested=True,
    storage="gzip",
    declare=False,
    noise={},
)  # vcrpy's own: body.string, gzip
def test_shape_finder_round_trips_any_key_and_encoding(
    body: tuple[Side, dict[str, Any]], key: str, nested: bool, storage: str, declare: bool, noise: dict[str, str]
) -> None:
    """Under any key (at the side's top level or inside a wrapper), stored parsed, as text, as bytes,
    compressed or base64, with or without its content-encoding header (stale when already decoded),
    the finder gives back the same JSON value."""
    side, value = body
    raw = json.dumps(value).encode()
    headers: dict[str, list[str]] = {}
    stored: Any
    if storage == "mapping":
        stored = value
        if declare:
            headers["content-encoding"] = ["gzip"]  # left in place by the serializer: stale
    elif storage == "text":
        stored = raw.decode()
        if declare:
            headers["content-encoding"] = ["br"]  # stale too: the text is already decoded
    elif storage == "bytes":
        stored = raw
    else:
        encoding = storage.removeprefix("base64+") if storage != "base64" else ""
        data = COMPRESSORS[encoding](raw) if encoding else raw
        # deflate and br have no magic bytes: they are read only when declared
        if encoding and (declare or encoding in ("deflate", "br")):
            headers["content-encoding"] = [encoding]
        stored = base64.b64encode(data).decode() if storage.startswith("base64") else data
    side_value: dict[str, Any] = {"method": "POST", "uri": f"{API}/v1/messages", "headers": {"x-noise": ["1"]}}
    # Noise: other values of no API shape beside the body (recorder comments, ids).
    holder: dict[str, Any] = {name: text for name, text in noise.items() if name != key}
    holder[key] = stored
    if nested:
        side_value["body"] = holder
    else:
        side_value.update(holder)
    found = find_body(side_value, side, headers)
    assert found.api
    assert found.body().json() == value


# -------------------------------------------------------------------------------- real recordings

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-cassettes"
REAL_FILES = sorted(REAL.rglob("*.yaml")) if REAL.is_dir() else []
# The snapshot in shared/real-cassettes when this was written (77 openllmetry cassettes) and what
# the report read from it; a different snapshot is still checked for coverage, not for these sums.
REAL_SNAPSHOT = {
    "files": 77,
    "turns": 90,
    "input_tokens": 18700,
    "cache_creation_input_tokens": 13980,
    "cache_read_input_tokens": 13980,
    "output_tokens": 12942,
}


@pytest.mark.skipif(not REAL_FILES, reason=f"no real recordings under {REAL}")
def test_report_reads_every_real_recording_that_holds_anthropic_traffic(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tokenbudget report --json`` on the real recordings reads every file that calls the
    Anthropic API (found here by a plain text scan, independently of the reader): none is an
    error, none is skipped."""
    monkeypatch.chdir(REAL)
    calls = re.compile(r"^\s*uri: \S*/v1/messages(/count_tokens|/batches\S*)?(\?\S*)?\s*$", re.MULTILINE)
    with_traffic = {p.relative_to(REAL).as_posix() for p in REAL_FILES if calls.search(p.read_text(encoding="utf-8"))}
    status, doc = report_json(capsys, ".")
    assert doc["errors"] == []
    assert status == 0
    assert {t["id"] for t in doc["tests"]} == with_traffic
    assert "notes" not in doc
    if len(REAL_FILES) == REAL_SNAPSHOT["files"]:
        totals = doc["totals"]
        assert {"files": len(doc["tests"]), **{k: totals[k] for k in REAL_SNAPSHOT if k != "files"}} == REAL_SNAPSHOT


# -------------------------------------------------------------------------------- damaged input


def _damage(text: str, edits: list[tuple[float, str]]) -> str:
    """``text`` with a character replaced at each relative offset."""
    for where, char in edits:
        offset = min(int(where * len(text)), len(text) - 1)
        text = text[:offset] + char + text[offset + 1 :]
    return text


@given(
    name=st.sampled_from(sorted(FOREIGN)),
    edits=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(list('"{}[]:,0a \n-\\'))), min_size=1, max_size=3),
)
def test_damaged_foreign_file_loads_or_raises_cassette_error(name: str, edits: list[tuple[float, str]]) -> None:
    """A damaged foreign file either loads and gives a ledger, or raises CassetteError naming it: never another exception."""
    from pytest_tokenbudget.cassette import parse_cassette

    text = _damage(FOREIGN[name](), edits)
    try:
        cassette = parse_cassette(text, name, skip_unknown=True)
        turns_from(cassette.interactions, source=name)
    except CassetteError as error:
        message = str(error)
    else:
        return
    assert name in message
