"""The cassette reader (cassette.py) and the ledger (ledger.py): round trips, corrupt input, real recordings."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_tokenbudget.cassette import Body, Interaction, dump_cassette, load_cassette, parse_cassette
from pytest_tokenbudget.errors import CassetteError
from pytest_tokenbudget.ledger import turns_from

STYLES = {
    "compact": {"separators": (",", ":"), "ensure_ascii": False},
    "compact-ascii": {"separators": (",", ":"), "ensure_ascii": True},
    "spaced": {"separators": (", ", ": "), "ensure_ascii": False},
    "spaced-ascii": {"separators": (", ", ": "), "ensure_ascii": True},
}
MODEL = "claude-sonnet-4-6"
EPHEMERAL = {"type": "ephemeral"}
URI = "https://api.anthropic.com/v1/messages"


def encode(value: Any, style: str = "compact") -> bytes:
    """``value`` as JSON bytes in one of the SDKs' encodings."""
    return json.dumps(value, **STYLES[style]).encode("utf-8")  # type: ignore[arg-type]


def message_body(usage: dict[str, Any], text: str = "Hi!") -> dict[str, Any]:
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


def sse(*events: tuple[str, Any]) -> bytes:
    """An SSE body of ``(event, data)`` pairs."""
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def stream_body(start_usage: dict[str, Any], delta_usage: dict[str, Any], text: str = "Hi!") -> bytes:
    """A complete streamed message."""
    start = {**message_body(start_usage), "content": [], "stop_reason": None}
    return sse(
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": delta_usage,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )


def interaction(
    index: int,
    request: bytes,
    response: bytes,
    *,
    uri: str = URI,
    method: str = "POST",
    status: int = 200,
    content_type: str = "application/json",
    at: float | None = None,
) -> Interaction:
    """An Interaction as the recorder builds it."""
    return Interaction(
        index,
        method,
        uri,
        {"content-type": "application/json"},
        Body(request),
        status,
        "OK",
        {"content-type": [content_type]},
        Body(response),
        at,
    )


# -------------------------------------------------------------------------------- (a) round trips


def test_delta_encoding_of_a_growing_conversation() -> None:
    """A turn that extends the previous one is stored as ``extends`` + ops and rebuilds byte for byte."""
    first = {
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello", "cache_control": EPHEMERAL}]}],
        "model": MODEL,
    }
    second = copy.deepcopy(first)
    del second["messages"][0]["content"][0]["cache_control"]
    second["messages"] += [
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": [{"type": "text", "text": "Again", "cache_control": EPHEMERAL}]},
    ]
    usage = {"input_tokens": 9, "output_tokens": 1}
    items = [
        interaction(i, encode(body), encode(message_body(usage)), at=1_800_000_000.25 + i)
        for i, body in enumerate([first, second])
    ]
    text = dump_cassette(items)
    stored = yaml.safe_load(text)["interactions"][1]["request"]["body"]
    assert stored == {
        "extends": 0,
        "ops": [
            {"drop": "messages[0].content[0].cache_control"},
            {"append": "messages", "items": second["messages"][1:]},
        ],
    }
    parsed = parse_cassette(text, "conv.yaml")
    assert [i.request_body.raw for i in parsed.interactions] == [encode(first), encode(second)]
    assert [i.recorded_at for i in parsed.interactions] == [1_800_000_000.25, 1_800_000_001.25]
    assert parsed.format == "pytest-tokenbudget/1"


def test_loopback_port_is_dropped_and_volatile_headers_are_not_written() -> None:
    """The emulator's random port and secret or volatile headers never reach the file."""
    item = interaction(
        0,
        encode({"model": MODEL}),
        encode(message_body({"input_tokens": 1, "output_tokens": 1})),
        uri="http://127.0.0.1:54321/v1/messages",
    )
    item.request_headers.update({"authorization": "Bearer sk-ant-secret-value", "x-stainless-retry-count": "0"})
    item.response_headers["anthropic-organization-id"] = ["org-123"]
    text = dump_cassette([item], secrets=["sk-ant-secret-value"])
    assert "54321" not in text
    assert "secret" not in text
    assert "org-123" not in text
    assert parse_cassette(text).interactions[0].uri == "http://127.0.0.1/v1/messages"


@st.composite
def conversations(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """Request bodies of an agent run: a growing transcript with a moving breakpoint and odd edits."""
    unicode_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=0, max_size=15)
    numbers = st.floats(allow_nan=False) | st.integers(-(2**70), 2**70)
    tool = {
        "name": "lookup",
        "description": draw(unicode_text),
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    if draw(st.booleans()):
        tool = dict(reversed(list(tool.items())))
    body: dict[str, Any] = {
        "max_tokens": draw(st.integers(0, 64000)),
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": draw(unicode_text), "cache_control": EPHEMERAL}]}
        ],
        "model": MODEL,
        "system": draw(unicode_text),
        "temperature": draw(numbers),
        "tools": [tool],
    }
    order = draw(st.permutations(list(body)))
    body = {key: body[key] for key in order}
    out = []
    for _ in range(draw(st.integers(1, 6))):
        style = draw(st.sampled_from(sorted(STYLES)))
        path = draw(st.sampled_from(["/v1/messages", "/v1/messages", "/v1/messages/count_tokens"]))
        raw = encode(body, style)
        if draw(st.integers(0, 9)) == 0:
            raw = json.dumps(body, indent=1).encode()  # an encoding no style rebuilds: stored verbatim
        out.append((path, raw))
        body = copy.deepcopy(body)
        last = body["messages"][-1]["content"]
        if isinstance(last, list):
            last[-1].pop("cache_control", None)
        call = {
            "type": "tool_use",
            "id": "toolu_" + str(len(out)),
            "name": "lookup",
            "input": draw(st.dictionaries(st.text(max_size=4), unicode_text | numbers, max_size=3)),
        }
        body["messages"] += [
            {"role": "assistant", "content": draw(st.sampled_from([[call], draw(unicode_text)]))},
            {"role": "user", "content": [{"type": "text", "text": draw(unicode_text), "cache_control": EPHEMERAL}]},
        ]
        edit = draw(st.sampled_from(["none", "none", "temperature", "system", "truncate", "reorder"]))
        if edit == "temperature":
            body["temperature"] = draw(numbers)
        elif edit == "system":
            body["system"] = draw(unicode_text)
        elif edit == "truncate":
            body["messages"] = body["messages"][:1]
        elif edit == "reorder":
            body = dict(reversed(list(body.items())))
    return out


@given(requests=conversations(), stream=st.booleans())
@settings(max_examples=120, deadline=None)
@example(
    requests=[("/v1/messages", encode({"a\n": 1, "b": [1]})), ("/v1/messages", encode({"a\n": 2, "b": [1]}))],
    stream=False,
)
@example(
    requests=[("/v1/messages", encode({"t": "x\x85y\n"})), ("/v1/messages", encode({"t": "\u2028\n "}))], stream=True
)
def test_round_trip_is_byte_exact(requests: list[tuple[str, bytes]], stream: bool) -> None:
    """dump_cassette then parse_cassette gives every request and response body back byte for byte."""
    usage = {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 7, "output_tokens": 3}
    items = []
    for i, (path, raw) in enumerate(requests):
        if path.endswith("count_tokens"):
            response, kind = encode({"input_tokens": 19}), "application/json"
        elif stream:
            response, kind = stream_body(usage, {"output_tokens": 3}), "text/event-stream; charset=utf-8"
        else:
            response, kind = encode(message_body(usage)), "application/json"
        items.append(
            interaction(
                i, raw, response, uri="https://api.anthropic.com" + path, content_type=kind, at=1_800_000_000.0 + i
            )
        )
    text = dump_cassette(items)
    parsed = parse_cassette(text, "rt.yaml").interactions
    assert len(parsed) == len(items)
    for before, after in zip(items, parsed, strict=True):
        assert after.request_body.raw == before.request_body.raw
        assert after.response_body.raw == before.response_body.raw
        assert (after.method, after.uri, after.status, after.content_type) == (
            before.method,
            before.uri,
            before.status,
            before.content_type,
        )
    assert dump_cassette(parsed) == text  # reading and writing again changes nothing
    ledger = turns_from(parsed, source="rt.yaml")
    messages = sum(1 for path, _ in requests if path == "/v1/messages")
    assert [dict(turn.usage) for turn in ledger] == [usage] * messages


def test_undecodable_bodies_are_stored_as_base64() -> None:
    """Non-UTF-8 bodies survive as base64."""
    raw = bytes(range(256))
    parsed = parse_cassette(dump_cassette([interaction(0, raw, raw, content_type="application/octet-stream")]))
    assert parsed.interactions[0].request_body.raw == raw
    assert parsed.interactions[0].response_body.raw == raw


# -------------------------------------------------------------------------------- (b) corrupt input


def our_cassette() -> str:
    """A valid cassette of our format: a JSON turn, then a streamed turn extending it."""
    first = {"max_tokens": 10, "messages": [{"role": "user", "content": "Hello"}], "model": MODEL}
    second = {
        **first,
        "messages": [*first["messages"], {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Again"}],
        "stream": True,
    }
    usage = {"input_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}
    return dump_cassette(
        [
            interaction(0, encode(first), encode(message_body(usage)), at=1_800_000_000.0),
            interaction(
                1,
                encode(second),
                stream_body(usage, {"output_tokens": 2}),
                content_type="text/event-stream; charset=utf-8",
                at=1_800_000_001.0,
            ),
            interaction(
                2,
                encode(first),
                encode({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
                status=429,
            ),
        ]
    )


def vcr_cassette(response_body: Any, *, headers: dict[str, list[str]] | None = None, status: Any = None) -> str:
    """A vcrpy cassette holding one good JSON turn then one turn with the given response body."""
    usage = {"input_tokens": 9, "output_tokens": 1}
    good = {"string": gzip.compress(encode(message_body(usage)), mtime=0)}

    def item(body: Any, response_headers: dict[str, list[str]], code: Any) -> dict[str, Any]:
        response: dict[str, Any] = {"headers": response_headers, "body": body}
        if code is not None:
            response["status"] = code
        return {
            "request": {
                "method": "POST",
                "uri": URI,
                "headers": {"content-type": ["application/json"]},
                "body": json.dumps({"model": MODEL, "max_tokens": 10, "messages": []}),
            },
            "response": response,
        }

    data = {
        "interactions": [
            item(
                good,
                {"content-type": ["application/json"], "content-encoding": ["gzip"]},
                {"code": 200, "message": "OK"},
            ),
            item(response_body, headers or {"content-type": ["application/json"]}, status),
        ],
        "version": 1,
    }
    return yaml.dump(data, Dumper=yaml.SafeDumper)


def load_and_ledger(tmp_path: Path, text: str, name: str = "broken.yaml") -> None:
    """Write ``text`` to a file, load it and build its ledger."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    cassette = load_cassette(path)
    turns_from(cassette.interactions, source=path)


def expect_error(tmp_path: Path, text: str, index: int, why: str, name: str = "broken.yaml") -> CassetteError:
    """Loading ``text`` raises CassetteError naming the file, the interaction and ``why``."""
    with pytest.raises(CassetteError) as caught:
        load_and_ledger(tmp_path, text, name)
    message = str(caught.value)
    assert str(tmp_path / name) in message
    assert f"interaction {index}" in message
    assert why in message
    return caught.value


def test_valid_fixtures_load(tmp_path: Path) -> None:
    """The undamaged fixtures load, so each corruption below is what breaks them."""
    load_and_ledger(tmp_path, our_cassette())
    good = {"string": encode(message_body({"input_tokens": 1, "output_tokens": 1})).decode()}
    load_and_ledger(tmp_path, vcr_cassette(good, status={"code": 200, "message": "OK"}))
    ledger = turns_from(parse_cassette(our_cassette()).interactions)
    assert [(t.stream, t.output_tokens) for t in ledger] == [(False, 1), (True, 2)]
    assert [e.error_type for e in ledger.exchanges] == [None, None, "rate_limit_error"]


def test_truncated_yaml_names_the_interaction(tmp_path: Path) -> None:
    """A file cut inside a quoted string is invalid YAML; the error names the file, line and interaction."""
    text = our_cassette()
    cut = text.index("'2027-01-15T08:00:01") + 5  # inside interaction 1's quoted recorded_at
    error = expect_error(tmp_path, text[:cut], 1, "invalid YAML")
    assert error.file is not None
    assert re.search(r", line \d+$", error.file)


def test_truncated_between_interactions_names_the_incomplete_one(tmp_path: Path) -> None:
    """A file cut right after interaction 1's request has no response there."""
    text = our_cassette()
    cut = text.index("  response:", text.index("'2027-01-15T08:00:01"))
    expect_error(tmp_path, text[:cut], 1, "'response' is missing or not a mapping")


def test_bad_json_file_names_the_interaction(tmp_path: Path) -> None:
    """A JSON cassette with a syntax error inside interaction 1 names it."""
    data = yaml.safe_load(our_cassette())
    text = json.dumps(data, indent=1, default=str)
    at = text.rindex('"status": 200')  # interaction 1's (interaction 2 has 429)
    broken = text[:at] + '"status": 2 00' + text[at + len('"status": 200') :]
    expect_error(tmp_path, broken, 1, "invalid JSON", name="broken.json")


def test_bad_json_response_body(tmp_path: Path) -> None:
    """A JSON response that is not JSON fails in the ledger, naming file and interaction."""
    text = vcr_cassette({"string": '{"id": "msg_1", "usage": '}, status={"code": 200, "message": "OK"})
    expect_error(tmp_path, text, 1, "response body is not valid JSON")


def test_bad_base64_in_our_format(tmp_path: Path) -> None:
    """A base64 body that is not base64 is an error at load time."""
    text = our_cassette()
    data = yaml.safe_load(text)
    data["interactions"][1]["response"]["body"] = {"base64": "not*base64!"}
    expect_error(tmp_path, yaml.safe_dump(data), 1, "response body is not valid base64")


def test_bad_base64_string_in_vcrpy_format(tmp_path: Path) -> None:
    """A vcrpy ``base64_string`` body that is not base64 is an error at load time."""
    text = vcr_cassette({"base64_string": "@@@"}, status={"code": 200, "message": "OK"})
    expect_error(tmp_path, text, 1, "response body: base64_string is not valid base64")


def test_bad_binary_tag_names_the_interaction(tmp_path: Path) -> None:
    """A YAML ``!!binary`` value that is not base64 names the interaction it is in."""
    text = vcr_cassette({"string": b"placeholder"}, status={"code": 200, "message": "OK"})
    binary = base64.encodebytes(b"placeholder").decode().strip()
    assert text.count(binary) == 1
    expect_error(tmp_path, text.replace(binary, "@@@@"), 1, "cassette cannot be read")


def test_bad_gzip(tmp_path: Path) -> None:
    """A body marked ``content-encoding: gzip`` that is not gzip is an error at load time."""
    text = vcr_cassette(
        {"string": b"plainly not gzip"},
        status={"code": 200, "message": "OK"},
        headers={"content-type": ["application/json"], "content-encoding": ["gzip"]},
    )
    expect_error(tmp_path, text, 1, "response body is not valid gzip data")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            b"event: message_start\ndata: {not json}\n\n",
            "broken SSE body: event 0 (message_start) has data that is not JSON",
        ),
        (
            sse(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                )
            ),
            "broken SSE body: content_block_start before message_start",
        ),
        (b"", "broken SSE body: no message_start event"),
        (
            stream_body({"input_tokens": 1, "output_tokens": 1}, {"output_tokens": 2}).rsplit(
                b"event: message_stop", 1
            )[0],
            "broken SSE body: the stream ends before message_stop (truncated?)",
        ),
        (
            stream_body({"input_tokens": 1, "output_tokens": 1}, {"output_tokens": 2}).replace(
                b', "usage": {"output_tokens": 2}', b""
            ),
            "broken SSE body: message_delta has no usage",
        ),
    ],
)
def test_broken_sse_body(tmp_path: Path, body: bytes, why: str) -> None:
    """A stream that cannot be assembled into a message is a CassetteError naming the interaction."""
    text = vcr_cassette(
        {"string": body.decode()},
        status={"code": 200, "message": "OK"},
        headers={"content-type": ["text/event-stream; charset=utf-8"]},
    )
    expect_error(tmp_path, text, 1, why)


def test_missing_response_status(tmp_path: Path) -> None:
    """A response without a status is an error in either format."""
    data = yaml.safe_load(our_cassette())
    del data["interactions"][1]["response"]["status"]
    expect_error(tmp_path, yaml.safe_dump(data), 1, "response status code None is not an HTTP status (100 to 599)")
    expect_error(tmp_path, vcr_cassette({"string": "{}"}), 1, "response 'status' is missing or not a mapping")


def test_bad_extends_reference(tmp_path: Path) -> None:
    """A body extending a later interaction, or with ops that do not apply, is an error."""
    data = yaml.safe_load(our_cassette())
    data["interactions"][1]["request"]["body"] = {"extends": 2, "ops": []}
    expect_error(tmp_path, yaml.safe_dump(data), 1, "extends interaction 2, which does not come before it")
    data["interactions"][1]["request"]["body"] = {"extends": 0, "ops": [{"drop": "messages[7]"}]}
    expect_error(tmp_path, yaml.safe_dump(data), 1, "cannot apply its ops to interaction 0")


def test_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a CassetteError naming the interaction and the byte."""
    path = tmp_path / "latin1.yaml"
    data = our_cassette().encode("utf-8")
    at = data.index(b"Again")  # in interaction 1's request
    path.write_bytes(data[:at] + b"\xff" + data[at:])
    with pytest.raises(CassetteError, match=f"interaction 1: not UTF-8 text at byte {at}$") as caught:
        load_cassette(path)
    assert caught.value.file == str(path)


def test_invalid_uri_is_a_cassette_error(tmp_path: Path) -> None:
    """A request URI that cannot be parsed is reported at load time, not as a ValueError later."""
    data = yaml.safe_load(our_cassette())
    data["interactions"][1]["request"]["uri"] = "http://[::1/v1/messages"
    expect_error(tmp_path, yaml.safe_dump(data), 1, "request 'uri'")


DAMAGE = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "flip", "delete", "insert"]),
        st.floats(0, 1),
        st.sampled_from(list("\"'-:{}[]#&*!|>%@`, \n\t0123456789abcxyzé\\")),
    ),
    min_size=1,
    max_size=3,
)


def damaged(text: str, damage: list[tuple[str, float, str]]) -> str:
    """``text`` with each damage applied at a relative offset."""
    for kind, where, char in damage:
        offset = min(int(where * len(text)), max(len(text) - 1, 0))
        if kind == "truncate":
            text = text[:offset]
        elif kind == "flip":
            text = text[:offset] + char + text[offset + 1 :]
        elif kind == "delete":
            text = text[:offset] + text[offset + 1 :]
        else:
            text = text[:offset] + char + text[offset:]
    return text


VALID_TEXTS = {
    "ours": our_cassette(),
    "vcrpy": vcr_cassette(
        {"string": stream_body({"input_tokens": 3, "output_tokens": 1}, {"output_tokens": 5}).decode()},
        status={"code": 200, "message": "OK"},
        headers={"content-type": ["text/event-stream; charset=utf-8"]},
    ),
    "json": json.dumps(yaml.safe_load(our_cassette()), indent=1, default=str),
}


@given(kind=st.sampled_from(sorted(VALID_TEXTS)), damage=DAMAGE)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(kind="ours", damage=[("flip", 0.0889, "[")])  # "https://[pi.anthropic.com": urlsplit ValueError
@example(kind="vcrpy", damage=[("flip", 0.125, "0")])  # body mapping without "string", holding bytes
def test_damaged_cassette_loads_or_raises_cassette_error(kind: str, damage: list[tuple[str, float, str]]) -> None:
    """A damaged cassette either loads and gives a ledger, or raises CassetteError: never another exception."""
    text = damaged(VALID_TEXTS[kind], damage)
    try:
        cassette = parse_cassette(text, "damaged.yaml")
        turns_from(cassette.interactions, source="damaged.yaml")
    except CassetteError as error:
        message = str(error)
    else:
        return
    assert "damaged.yaml" in message


# -------------------------------------------------------------------------------- (c) real recordings

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-cassettes"
REAL_FILES = sorted(REAL.rglob("*.yaml")) if REAL.is_dir() else []
needs_real = pytest.mark.skipif(not REAL_FILES, reason=f"no real recordings under {REAL}")


def real_id(path: Path) -> str:
    """A short test id: folder/file."""
    return f"{path.parent.name}/{path.stem}"


def sdk_stream_usage(raw: bytes) -> dict[str, Any]:
    """The final usage the anthropic SDK assembles from a recorded stream."""
    from anthropic._streaming import SSEDecoder
    from anthropic.lib.streaming._messages import accumulate_event

    snapshot: Any = None
    buffers: dict[int, bytes] = {}
    for event in SSEDecoder().iter_bytes(iter([raw])):
        if event.event in (None, "ping"):  # what the SDK's Stream skips
            continue
        snapshot = accumulate_event(event=event.json(), current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    return snapshot.usage.to_dict()  # type: ignore[no-any-return]


@needs_real
@pytest.mark.parametrize("path", REAL_FILES or [Path("absent")], ids=real_id)
def test_real_recording_ledger_matches_response_usage(path: Path) -> None:
    """Every real recording loads; each turn's usage is its JSON body's, or what the SDK assembles from the stream."""
    cassette = load_cassette(path)
    ledger = turns_from(cassette.interactions, source=path)
    answered = [i for i in cassette.interactions if i.endpoint == "messages" and i.status == 200]
    assert [turn.exchange for turn in ledger] == [i.index for i in answered]
    for turn, item in zip(ledger, answered, strict=True):
        if turn.stream:
            assert dict(turn.usage) == sdk_stream_usage(item.response_body.raw)
        else:
            assert dict(turn.usage) == item.response_body.json()["usage"]
            assert turn.model == item.response_body.json()["model"]


@needs_real
def test_real_prompt_caching_write_then_read() -> None:
    """The documented prompt-caching recordings write the prefix on turn 1 and read it on turn 2."""
    folder = REAL / "openllmetry/packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_prompt_caching"
    files = sorted(folder.glob("*.yaml"))
    assert len(files) == 12
    for path in files:
        ledger = turns_from(load_cassette(path).interactions, source=path)
        first, second = ledger
        assert first.cache_creation_input_tokens == second.cache_read_input_tokens > 1000
        assert (first.cache_read_input_tokens, second.cache_creation_input_tokens) == (0, 0)
        assert first.input_tokens == second.input_tokens == 4
        assert first.stream == second.stream == ("stream" in path.name)
    legacy = turns_from(load_cassette(folder / "test_anthropic_prompt_caching_legacy.yaml").interactions)
    assert [dict(turn.usage) for turn in legacy] == [  # legacy usage fields kept as recorded
        {"input_tokens": 4, "cache_creation_input_tokens": 1163, "cache_read_input_tokens": 0, "output_tokens": 187},
        {"input_tokens": 4, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1163, "output_tokens": 202},
    ]
    assert legacy.totals().total_input_tokens == 2 * (4 + 1163)


@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 5),
            st.lists(
                st.one_of(
                    st.text(max_size=6), st.integers(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
                ),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=200, deadline=None)
def test_encoder_resumes_lists_and_matches_byte_exactly(steps: list[tuple[int, list[object]]]) -> None:
    """Bodies sharing list items with the previous one encode to json.dumps bytes and match only those."""
    from pytest_tokenbudget.cassette import Body, _Encoder

    encoder = _Encoder("compact")
    items: list[object] = []
    for keep, added in steps:
        items = items[:keep] + added
        value = {"max_tokens": 1, "messages": items, "model": "m"}
        expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        body = Body(json_value=value, encoder=encoder)
        assert body.raw == expected
        assert body.matches(expected)
        assert not body.matches(expected[:-1])
        assert not body.matches(expected + b"x")
