"""The emulator driven through the real anthropic SDK over real HTTP on 127.0.0.1.

Token arithmetic (``pytest_tokenbudget/emulator/_tokens.py``): an input block counts
``ceil(chars / 4)`` of its canonical form, compact JSON without ``cache_control``; the first
block of a message is preceded by its role and a NUL. A string ``content``/``system`` is the block
``{"type":"text","text":...}``. Lengths used below:

* ``{"type":"text","text":""}`` is 25 characters, so a text block of ``L`` characters is ``25 + L``
  and, as a message's first block, ``5 + 25 + L`` for ``user\\0`` or ``10 + 25 + L`` for
  ``assistant\\0``;
* ``{"name":"t0","description":"","input_schema":{"type":"object"}}`` is 63 characters.

Output: text counts ``ceil(len / 4)`` (at least 1); tool_use ``ceil(len(name + compact input) / 4)``.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_tokenbudget.emulator import DIAGNOSTICS_BETA, AnthropicEmulator, Clock, Reply

# What only the SDK's 1.x/2.x lines do (0.x sends the key as x-api-key, not a Bearer token, and
# its messages.create has no diagnostics= argument): these tests check the emulator against them.
_SDK_1_OR_LATER = pytest.mark.skipif(
    int(anthropic.__version__.split(".")[0]) < 1,
    reason=f"anthropic {anthropic.__version__}: a 1.x/2.x SDK behaviour (Bearer auth, diagnostics=)",
)

MODEL = "claude-sonnet-4-6"  # minimum cacheable prefix 1,024 tokens (Anthropic docs: Prompt caching)
# The plugin would record or replay this traffic; these tests talk to the emulator directly.
pytestmark = pytest.mark.token_budget(record=False)

HAIKU = "claude-haiku-4-5"  # minimum cacheable prefix 4,096 tokens
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z
EPHEMERAL = {"type": "ephemeral"}
EPHEMERAL_1H = {"type": "ephemeral", "ttl": "1h"}
HELLO = [{"role": "user", "content": "Hello"}]  # 5 + 25 + 5 = 35 chars -> 9 tokens
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the weather.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}  # 148 chars compact -> 37 tokens


def system_block(char: str, length: int, cache_control: dict[str, str] | None = None) -> dict[str, Any]:
    """A system text block of ``length`` characters (``25 + length`` canonical characters)."""
    block: dict[str, Any] = {"type": "text", "text": char * length}
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block


def usage_numbers(message: Any) -> tuple[int, int, int, int, int, int]:
    """(input, cache write, cache read, 5m write, 1h write, output) of a message's usage."""
    u = message.usage
    return (
        u.input_tokens,
        u.cache_creation_input_tokens,
        u.cache_read_input_tokens,
        u.cache_creation.ephemeral_5m_input_tokens,
        u.cache_creation.ephemeral_1h_input_tokens,
        u.output_tokens,
    )


@pytest.fixture
def emu() -> Iterator[AnthropicEmulator]:
    """An emulator on a frozen clock, so TTLs and batches move only when the test says."""
    with AnthropicEmulator(clock=Clock(START, frozen=True)) as emulator:
        yield emulator


@pytest.fixture
def client(emu: AnthropicEmulator) -> anthropic.Anthropic:
    """A sync SDK client on the emulator, without retries."""
    return anthropic.Anthropic(base_url=emu.base_url, api_key="test-key", max_retries=0)


# -------------------------------------------------------------------------------- messages


@_SDK_1_OR_LATER
def test_json_message_counts_tokens_and_shapes_the_message(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """A JSON message bills the documented synthetic counts and has the API's shape."""
    emu.script(Reply.text("Hello to you too!"))
    message = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    # input: "Hello" -> 9; output: "Hello to you too!" is 17 chars -> ceil(17/4) = 5
    assert usage_numbers(message) == (9, 0, 0, 0, 0, 5)
    assert message.usage.service_tier == "standard"
    assert message.id.startswith("msg_emu")
    assert len(message.id) == len("msg_emu") + 24
    assert message.model == MODEL
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert [block.to_dict() for block in message.content] == [{"type": "text", "text": "Hello to you too!"}]
    assert message._request_id is not None
    assert message._request_id.startswith("req_emu")
    assert emu.requests[-1].headers["authorization"] == "Bearer test-key"
    assert emu.pending_replies == 0


def test_json_response_is_gzipped_when_accepted(emu: AnthropicEmulator, client: anthropic.Anthropic) -> None:
    """The JSON body comes gzip-compressed as the live API sends it, and the SDK reads it."""
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.parse().usage.input_tokens == 9


def test_stream_true_sends_events_in_api_order(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """``stream=True`` yields message_start, one block in 24-character deltas, message_delta, message_stop."""
    text = "x" * 50  # deltas of 24, 24, 2 characters; output ceil(50/4) = 13
    emu.script(Reply.text(text))
    events = list(client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True))
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0].message
    assert start.content == []
    assert start.stop_reason is None
    assert (start.usage.input_tokens, start.usage.output_tokens) == (9, 1)  # output is a placeholder
    assert [event.delta.text for event in events[2:5]] == ["x" * 24, "x" * 24, "xx"]
    delta = events[6]
    assert delta.delta.stop_reason == "end_turn"
    assert (delta.usage.output_tokens, delta.usage.input_tokens, delta.usage.cache_read_input_tokens) == (13, 9, 0)
    assert emu.requests[-1].body["stream"] is True


def test_stream_helper_matches_json_response(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """``messages.stream()`` assembles the same content and usage as a JSON request."""
    text = "The quick brown fox jumps over the lazy dog, twice over."  # 56 chars -> 14 tokens
    emu.script(Reply.text(text), Reply.text(text))
    json_message = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed_text == text
    assert usage_numbers(final) == usage_numbers(json_message) == (9, 0, 0, 0, 0, 14)
    assert final.content[0].to_dict() == json_message.content[0].to_dict()
    assert emu.requests[-1].headers["x-stainless-helper-method"] == "stream"


def test_thinking_block_streams_with_signature(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """A thinking block streams as thinking deltas then a signature delta, and is billed as output."""
    emu.script(Reply.text("Done.", thinking="Let me think."), Reply.text("Done.", thinking="Let me think."))
    with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        final = stream.get_final_message()
    json_message = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    # thinking "Let me think." 13 chars -> 4; text "Done." 5 chars -> 2
    assert final.usage.output_tokens == json_message.usage.output_tokens == 6
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == "Let me think."
    assert final.content[0].signature == json_message.content[0].signature
    assert final.content[0].signature.startswith("emu-sig-")


def test_async_client_create_and_stream(emu: AnthropicEmulator) -> None:
    """AsyncAnthropic gets the same JSON and streamed usage as the sync client."""

    async def run() -> tuple[Any, Any]:
        async with anthropic.AsyncAnthropic(base_url=emu.base_url, api_key="test-key", max_retries=0) as aclient:
            created = await aclient.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
            async with aclient.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
                final = await stream.get_final_message()
            return created, final

    emu.script(Reply.text("Bonjour"), Reply.text("Bonjour"))
    created, final = asyncio.run(run())
    # "Bonjour" 7 chars -> 2 output tokens
    assert usage_numbers(created) == usage_numbers(final) == (9, 0, 0, 0, 0, 2)
    assert final.content[0].text == "Bonjour"
    assert [r.headers["x-stainless-async"] for r in emu.requests] == ["async:asyncio", "async:asyncio"]


def test_tool_use_round_trip(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """A tool call and its result are billed block by block across the two turns."""
    emu.script(Reply.tool_use("get_weather", {"city": "Paris"}), Reply.text("Sunny."))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER_TOOL], messages=messages)
    # tool 148 chars -> 37; user text 29 chars: 5 + 25 + 29 = 59 -> 15; total 52
    # output: "get_weather" + '{"city":"Paris"}' = 11 + 16 = 27 chars -> 7
    assert usage_numbers(first) == (52, 0, 0, 0, 0, 7)
    assert first.stop_reason == "tool_use"
    call = first.content[0]
    assert call.type == "tool_use"
    assert call.name == "get_weather"
    assert call.input == {"city": "Paris"}
    assert call.id.startswith("toolu_emu")
    assert len(call.id) == 33
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}]},
    ]
    second = client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER_TOOL], messages=messages)
    # + assistant tool_use {"id":<33>,"input":{"city":"Paris"},"name":"get_weather","type":"tool_use"}
    #   106 chars + 10 -> 29; + user tool_result 89 chars + 5 = 94 -> 24; 52 + 29 + 24 = 105
    # output "Sunny." 6 chars -> 2
    assert usage_numbers(second) == (105, 0, 0, 0, 0, 2)
    assert second.content[0].text == "Sunny."
    sent = emu.requests[-1].body["messages"][1]["content"][0]
    assert (sent["type"], sent["id"], sent["input"]) == ("tool_use", call.id, {"city": "Paris"})


def test_streamed_tool_use_assembles_input(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """A streamed tool call starts with ``input: {}`` and an empty partial JSON, then assembles its input."""
    arguments = {"city": "Paris", "days": 3, "units": "metric", "detail": "hourly forecast please"}
    emu.script(Reply.tool_use("get_weather", arguments, text="Let me check."))
    events = list(
        client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER_TOOL], messages=HELLO, stream=True)
    )
    tool_start = next(e for e in events if e.type == "content_block_start" and e.index == 1)
    assert tool_start.content_block.input == {}
    partials = [e.delta.partial_json for e in events if e.type == "content_block_delta" and e.index == 1]
    assert partials[0] == ""
    assert "".join(partials) == '{"city":"Paris","days":3,"units":"metric","detail":"hourly forecast please"}'
    emu.script(Reply.tool_use("get_weather", arguments, text="Let me check."))
    with client.messages.stream(model=MODEL, max_tokens=100, tools=[WEATHER_TOOL], messages=HELLO) as stream:
        final = stream.get_final_message()
    assert final.content[1].input == arguments
    assert final.stop_reason == "tool_use"
    # "Let me check." 13 -> 4; "get_weather" + 76-char JSON = 87 -> 22; total 26
    assert final.usage.output_tokens == 26
    # tools 37 + "Hello" 9
    assert final.usage.input_tokens == 46


def test_count_tokens_matches_create_and_caches_nothing(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """count_tokens returns the total input of the same request and writes no cache entry."""
    system = [system_block("s", 4099, EPHEMERAL)]  # 25 + 4099 = 4124 -> 1031
    counted = client.messages.count_tokens(model=MODEL, system=system, tools=[WEATHER_TOOL], messages=HELLO)
    assert counted.input_tokens == 37 + 1031 + 9
    created = client.messages.create(model=MODEL, max_tokens=10, system=system, tools=[WEATHER_TOOL], messages=HELLO)
    # the count did not write: this request writes tools + system (1068) and reads nothing
    assert usage_numbers(created) == (9, 1068, 0, 1068, 0, 1)


@given(text=st.text(min_size=1, max_size=200))
@example(text='"\\\n\u2028')
@example(text="\U0001f600é")
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_count_tokens_counts_characters_of_the_canonical_json(client: anthropic.Anthropic, text: str) -> None:
    """count_tokens is ceil(characters of the compact JSON block / 4), escapes included, for any text."""
    import json

    canonical = "user\0" + json.dumps({"type": "text", "text": text}, separators=(",", ":"), ensure_ascii=False)
    counted = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": text}])
    assert counted.input_tokens == math.ceil(len(canonical) / 4)


# -------------------------------------------------------------------------------- batches


def batch_request(custom_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch request for MODEL."""
    return {"custom_id": custom_id, "params": {"model": MODEL, "max_tokens": 100, "messages": messages}}


def test_batch_create_retrieve_results(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """A batch ends at once with batch_seconds=0; results hold one succeeded and one errored request."""
    emu.script(Reply.text("Batched answer"))  # 14 chars -> 4
    batch = client.messages.batches.create(requests=[batch_request("first", HELLO), batch_request("second", [])])
    assert batch.id.startswith("msgbatch_emu")
    assert batch.processing_status == "ended"
    assert batch.request_counts.to_dict() == {
        "processing": 0,
        "succeeded": 1,
        "errored": 1,
        "canceled": 0,
        "expired": 0,
    }
    assert batch.results_url == f"/v1/messages/batches/{batch.id}/results"
    assert batch.created_at == datetime.fromtimestamp(START, UTC)
    assert batch.expires_at == datetime.fromtimestamp(START, UTC) + timedelta(hours=24)
    retrieved = client.messages.batches.retrieve(batch.id)
    assert retrieved.to_dict() == batch.to_dict()
    results = list(client.messages.batches.results(batch.id))
    assert [r.custom_id for r in results] == ["first", "second"]
    succeeded, errored = results[0].result, results[1].result
    assert succeeded.type == "succeeded"
    assert succeeded.message.content[0].text == "Batched answer"
    assert usage_numbers(succeeded.message) == (9, 0, 0, 0, 0, 4)
    assert succeeded.message.usage.service_tier == "batch"
    assert errored.type == "errored"
    assert errored.error.to_dict() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "messages: at least one message is required"},
    }


def test_batch_stays_in_progress_until_clock_advanced(emu: AnthropicEmulator, client: anthropic.Anthropic) -> None:
    """With batch_seconds=60 a batch is in_progress (no results_url) until the clock reaches 60 s."""
    emu.batch_seconds = 60
    batch = client.messages.batches.create(requests=[batch_request("a", HELLO), batch_request("b", HELLO)])
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 2
    assert batch.request_counts.succeeded == 0
    assert batch.results_url is None
    assert batch.ended_at is None
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)
    emu.clock.advance(seconds=59)
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    emu.clock.advance(seconds=1)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.ended_at == datetime.fromtimestamp(START + 60, UTC)
    assert ended.request_counts.succeeded == 2
    assert [r.result.type for r in client.messages.batches.results(batch.id)] == ["succeeded", "succeeded"]


def test_batch_cancel_cancels_unprocessed_requests(emu: AnthropicEmulator, client: anthropic.Anthropic) -> None:
    """Canceling an in-progress batch answers "canceling", then it ends with every request canceled, nothing billed."""
    emu.batch_seconds = 3600
    batch = client.messages.batches.create(requests=[batch_request("a", HELLO), batch_request("b", HELLO)])
    emu.clock.advance(seconds=5)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.cancel_initiated_at == datetime.fromtimestamp(START + 5, UTC)
    assert canceling.processing_status == "canceling"
    canceled = client.messages.batches.retrieve(batch.id)
    assert canceled.processing_status == "ended"
    assert canceled.request_counts.canceled == 2
    assert canceled.request_counts.succeeded == 0
    assert [r.result.type for r in client.messages.batches.results(batch.id)] == ["canceled", "canceled"]


def test_batch_list_pages_and_delete(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """Listing pages (newest first) with has_more/after_id over every batch; a deleted batch is gone (404)."""
    created = [client.messages.batches.create(requests=[batch_request(f"r{i}", HELLO)]).id for i in range(3)]
    assert len(set(created)) == 3
    ids = created[::-1]  # the API lists the most recently created batches first
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[:2]
    assert page.has_more is True
    assert page.first_id == ids[0]
    assert page.last_id == ids[1]
    assert [b.id for b in client.messages.batches.list(limit=2)] == ids  # auto-paging via after_id
    deleted = client.messages.batches.delete(ids[0])
    assert (deleted.id, deleted.type) == (ids[0], "message_batch_deleted")
    assert [b.id for b in client.messages.batches.list()] == ids[1:]
    emu.batch_seconds = 3600
    busy = client.messages.batches.create(requests=[batch_request("busy", HELLO)])
    with pytest.raises(anthropic.BadRequestError, match="still processing: cancel it first"):
        client.messages.batches.delete(busy.id)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.batches.retrieve(ids[0])
    assert caught.value.status_code == 404
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_batch_refuses_streaming_and_duplicate_ids(client: anthropic.Anthropic) -> None:
    """A batch with a streaming request or a repeated custom_id is a 400."""
    streaming = batch_request("a", HELLO)
    streaming["params"]["stream"] = True
    with pytest.raises(anthropic.BadRequestError, match=r"requests\.0\.params\.stream: not supported in batches"):
        client.messages.batches.create(requests=[streaming])
    with pytest.raises(anthropic.BadRequestError, match=r"requests\.1\.custom_id: duplicate 'a'"):
        client.messages.batches.create(requests=[batch_request("a", HELLO), batch_request("a", HELLO)])


# -------------------------------------------------------------------------------- errors


def test_rate_limit_retry_after_is_honoured() -> None:
    """A 429 with retry-after-ms 600 is retried after 0.6 s, longer than the SDK's own first backoff (<= 0.5 s)."""
    with AnthropicEmulator() as emulator:  # wall clock: request times are real
        sdk = anthropic.Anthropic(base_url=emulator.base_url, api_key="test-key")  # max_retries=2
        emulator.script(Reply.error(429, retry_after=0.6), Reply.text("OK"))
        message = sdk.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert message.content[0].text == "OK"
    assert [r.headers["x-stainless-retry-count"] for r in emulator.requests] == ["0", "1"]
    gap = emulator.requests[1].at - emulator.requests[0].at
    # the default first backoff is 0.5 s x 0.75..1.0; only the header can make it 0.6 s or more
    assert 0.6 <= gap < 5


def test_rate_limit_without_retries_raises(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """With max_retries=0 a 429 raises RateLimitError with the API's error body and headers."""
    emu.script(Reply.error(429, retry_after=2))
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "2"
    assert error.response.headers["retry-after-ms"] == "2000"
    assert error.body["error"] == {
        "type": "rate_limit_error",
        "message": "Number of request tokens has exceeded your per-minute rate limit",
    }
    assert error.request_id is not None
    assert error.request_id.startswith("req_emu")


@pytest.mark.parametrize("max_retries", [0, 2])
def test_overloaded_raises_after_retries_exhausted(emu: AnthropicEmulator, max_retries: int) -> None:
    """529 is retried ``max_retries`` times, then raises OverloadedError; a later reply is untouched."""
    sdk = anthropic.Anthropic(base_url=emu.base_url, api_key="test-key", max_retries=max_retries)
    emu.script(*[Reply.error(529)] * (max_retries + 1), Reply.text("never sent"))
    with pytest.raises(anthropic.OverloadedError) as caught:
        sdk.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert caught.value.status_code == 529
    assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert len(emu.requests) == max_retries + 1
    assert emu.pending_replies == 1


def test_five_breakpoints_is_a_400(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """A fifth cache_control block is rejected with the API's message, and takes no scripted reply."""
    emu.script(Reply.text("unused"))
    system = [system_block("s", 10, EPHEMERAL) for _ in range(5)]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, system=system, messages=HELLO)
    assert caught.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    }
    assert emu.pending_replies == 1


def test_four_explicit_plus_automatic_is_a_400(client: anthropic.Anthropic) -> None:
    """Top-level cache_control needs a free slot: with four explicit breakpoints it is a 400."""
    system = [system_block("s", 10, EPHEMERAL) for _ in range(4)]
    with pytest.raises(anthropic.BadRequestError, match="4 blocks already have one"):
        client.messages.create(model=MODEL, max_tokens=10, system=system, messages=HELLO, cache_control=EPHEMERAL)


def test_1h_after_5m_is_a_400(client: anthropic.Anthropic) -> None:
    """A 1h breakpoint after a 5m one is rejected, naming the offending block."""
    system = [system_block("a", 10, EPHEMERAL), system_block("b", 10, EPHEMERAL_1H)]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, system=system, messages=HELLO)
    assert caught.value.body["error"]["message"] == (
        "system[1]: a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
    )


def test_cache_control_on_empty_text_is_a_400(client: anthropic.Anthropic) -> None:
    """cache_control on an empty text block is rejected with the API's wording."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "", "cache_control": EPHEMERAL}]}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=messages)
    assert caught.value.body["error"]["message"] == (
        "messages[0].content[0]: cache_control cannot be set for empty text blocks"
    )


@_SDK_1_OR_LATER
def test_missing_api_key_is_a_401(emu: AnthropicEmulator) -> None:
    """A request without credentials gets 401 authentication_error and is not retried."""
    sdk = anthropic.Anthropic(base_url=emu.base_url, api_key="test-key", max_retries=2)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdk.messages.create(
            model=MODEL, max_tokens=10, messages=HELLO, extra_headers={"Authorization": anthropic.Omit()}
        )
    assert caught.value.status_code == 401
    assert caught.value.body["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(emu.requests) == 1
    assert "authorization" not in emu.requests[0].headers


def test_stream_error_mid_stream_raises_api_status_error(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """An ``event: error`` after HTTP 200 raises APIStatusError (status 200) after the first block, no retry."""
    sdk = anthropic.Anthropic(base_url=emu.base_url, api_key="test-key", max_retries=2)
    emu.script(Reply.stream_error("partial answer", after_blocks=1))
    seen: list[str] = []
    stream = sdk.messages.create(model=MODEL, max_tokens=10, messages=HELLO, stream=True)
    with pytest.raises(anthropic.APIStatusError) as caught:
        seen.extend(event.type for event in stream)
    assert not isinstance(caught.value, anthropic.OverloadedError)
    assert caught.value.status_code == 200
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert seen == ["message_start", "content_block_start", "content_block_delta", "content_block_stop"]
    assert len(emu.requests) == 1


def test_stream_error_reply_to_a_json_request_is_a_529(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """A stream_error reply answers a non-streaming request with 529 overloaded."""
    emu.script(Reply.stream_error())
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)


# -------------------------------------------------------------------------------- prompt caching

BIG_TOOL = {"name": "t0", "description": "d" * 4033, "input_schema": {"type": "object"}}  # 63 + 4033 -> 1024


def test_explicit_breakpoints_on_tools_and_system(client: anthropic.Anthropic) -> None:
    """Breakpoints on a tool and a system block write, read back, and survive a system change up to the tools."""

    def send(system_char: str, description_char: str = "d") -> Any:
        tool = {**BIG_TOOL, "description": description_char * 4033, "cache_control": EPHEMERAL}
        return client.messages.create(
            model=MODEL,
            max_tokens=10,
            tools=[tool],
            system=[system_block(system_char, 1575, EPHEMERAL)],
            messages=HELLO,
        )

    # tool 4096 chars -> 1024 (exactly the minimum); system 25 + 1575 = 1600 -> 400; "Hello" 9
    assert usage_numbers(send("b")) == (9, 1424, 0, 1424, 0, 1)
    assert usage_numbers(send("b")) == (9, 0, 1424, 0, 0, 1)
    # system changed: its breakpoint walks back to the tools entry (1024), writes the system (400)
    assert usage_numbers(send("c")) == (9, 400, 1024, 400, 0, 1)
    # tools changed: everything after them is invalidated too
    assert usage_numbers(send("c", "z")) == (9, 1424, 0, 1424, 0, 1)


def test_automatic_cache_control_moves_forward(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """Top-level cache_control marks the last block each turn and reads the previous turn's prefix."""
    system = "s" * 4099  # 25 + 4099 = 4124 -> 1031
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Hello"}]  # 9
    first = client.messages.create(
        model=MODEL, max_tokens=10, system=system, messages=messages, cache_control=EPHEMERAL
    )
    assert emu.requests[-1].body["cache_control"] == EPHEMERAL
    assert usage_numbers(first) == (0, 1040, 0, 1040, 0, 1)
    # + assistant "OK": 10 + 25 + 2 = 37 -> 10; + user "How are you?": 5 + 25 + 12 = 42 -> 11
    messages += [{"role": "assistant", "content": "OK"}, {"role": "user", "content": "How are you?"}]
    second = client.messages.create(
        model=MODEL, max_tokens=10, system=system, messages=messages, cache_control=EPHEMERAL
    )
    assert usage_numbers(second) == (0, 21, 1040, 21, 0, 1)
    # + assistant "OK" 10; + user "Bye": 5 + 25 + 3 = 33 -> 9
    messages += [{"role": "assistant", "content": "OK"}, {"role": "user", "content": "Bye"}]
    third = client.messages.create(
        model=MODEL, max_tokens=10, system=system, messages=messages, cache_control=EPHEMERAL
    )
    assert usage_numbers(third) == (0, 19, 1061, 19, 0, 1)


def test_automatic_cache_control_with_1h_ttl(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """Top-level cache_control with ``ttl: 1h`` writes a 1h entry that is still read 6 minutes later."""
    system = "s" * 4099  # 1031; "Hello" 9

    def send() -> Any:
        return client.messages.create(
            model=MODEL, max_tokens=10, system=system, messages=HELLO, cache_control=EPHEMERAL_1H
        )

    assert usage_numbers(send()) == (0, 1040, 0, 0, 1040, 1)
    emu.clock.advance(minutes=6)
    assert usage_numbers(send()) == (0, 0, 1040, 0, 0, 1)


def test_5m_entry_expires_after_6_minutes_but_1h_survives(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """After 6 minutes the 5m segment is written again while the 1h prefix before it is read."""
    system = [system_block("a", 4099, EPHEMERAL_1H), system_block("b", 1575, EPHEMERAL)]  # 1031, 400

    def send() -> Any:
        return client.messages.create(model=MODEL, max_tokens=10, system=system, messages=HELLO)

    # A = 0, B = 1031 (1h writes 1031), C = 1431 (5m writes 400)
    assert usage_numbers(send()) == (9, 1431, 0, 400, 1031, 1)
    emu.clock.advance(minutes=6)
    assert usage_numbers(send()) == (9, 400, 1031, 400, 0, 1)
    # the 1h entry was refreshed 6 minutes in: it lives until minute 66
    emu.clock.advance(minutes=59, seconds=59)
    assert usage_numbers(send()) == (9, 400, 1031, 400, 0, 1)
    emu.clock.advance(minutes=61)
    assert usage_numbers(send()) == (9, 1431, 0, 400, 1031, 1)


def test_5m_ttl_is_refreshed_by_each_hit(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """Hits four minutes apart keep a 5m entry alive; a 5-minute gap after the last hit loses it."""
    system = [system_block("a", 4099, EPHEMERAL)]  # 1031

    def send() -> tuple[int, int]:
        usage = client.messages.create(model=MODEL, max_tokens=10, system=system, messages=HELLO).usage
        return usage.cache_creation_input_tokens, usage.cache_read_input_tokens

    assert send() == (1031, 0)
    emu.clock.advance(minutes=4)
    assert send() == (0, 1031)
    emu.clock.advance(minutes=4)  # 8 minutes after the write: alive only thanks to the refresh
    assert send() == (0, 1031)
    emu.clock.advance(minutes=5)  # exactly 5 minutes after the last hit: expired
    assert send() == (1031, 0)


@pytest.mark.parametrize(("length", "cached"), [(16355, False), (16359, True)])
def test_minimum_cacheable_length_haiku(client: anthropic.Anthropic, length: int, cached: bool) -> None:
    """claude-haiku-4-5 caches a 4,096-token prefix but not a 4,095-token one (both cache fields 0)."""
    # 25 + 16355 = 16380 -> 4095 tokens; 25 + 16359 = 16384 -> 4096 tokens
    tokens = math.ceil((25 + length) / 4)
    system = [system_block("h", length, EPHEMERAL)]
    first = client.messages.create(model=HAIKU, max_tokens=10, system=system, messages=HELLO)
    second = client.messages.create(model=HAIKU, max_tokens=10, system=system, messages=HELLO)
    if cached:
        assert usage_numbers(first) == (9, 4096, 0, 4096, 0, 1)
        assert usage_numbers(second) == (9, 0, 4096, 0, 0, 1)
    else:
        assert tokens == 4095
        assert usage_numbers(first) == usage_numbers(second) == (4095 + 9, 0, 0, 0, 0, 1)


def test_same_prefix_is_cached_per_model(client: anthropic.Anthropic) -> None:
    """An entry written for one model is not read by another (per-model cache)."""
    system = [system_block("a", 4099, EPHEMERAL)]
    client.messages.create(model=MODEL, max_tokens=10, system=system, messages=HELLO)
    other = client.messages.create(model="claude-opus-4-8", max_tokens=10, system=system, messages=HELLO)
    assert usage_numbers(other) == (9, 1031, 0, 1031, 0, 1)


@pytest.mark.parametrize(("moved", "hit"), [(19, True), (20, False)])
def test_lookback_reaches_20_blocks(client: anthropic.Anthropic, moved: int, hit: bool) -> None:
    """A breakpoint moved 19 blocks past the last write still reads it; moved 20 blocks it misses."""
    system = "s" * 4099  # 1031 tokens, block 0

    def content(marked: int) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": f"m{i:02d}"} for i in range(41)]
        blocks[marked] = {**blocks[marked], "cache_control": EPHEMERAL}
        return blocks

    # content[0]: 5 + 25 + 3 = 33 -> 9 (block 1); content[i > 0]: 25 + 3 = 28 -> 7 (block i + 1)
    # total = 1031 + 9 + 40 * 7 = 1320
    first = client.messages.create(
        model=MODEL, max_tokens=10, system=system, messages=[{"role": "user", "content": content(0)}]
    )
    assert usage_numbers(first) == (280, 1040, 0, 1040, 0, 1)
    second = client.messages.create(
        model=MODEL, max_tokens=10, system=system, messages=[{"role": "user", "content": content(moved)}]
    )
    marked_total = 1040 + moved * 7
    if hit:  # positions 20 down to 1 include the entry at block 1
        assert usage_numbers(second) == (1320 - marked_total, moved * 7, 1040, moved * 7, 0, 1)
    else:  # positions 21 down to 2 do not
        assert usage_numbers(second) == (1320 - marked_total, marked_total, 0, marked_total, 0, 1)


def test_prewarm_with_max_tokens_zero(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """max_tokens=0 writes the cache and returns no content; the next request reads it; streaming it is a 400."""
    emu.script(Reply.text("ignored"), Reply.text("Hi"))
    system = [system_block("a", 4099, EPHEMERAL)]
    warm = client.messages.create(model=MODEL, max_tokens=0, system=system, messages=HELLO)
    assert warm.content == []
    assert warm.stop_reason == "max_tokens"
    assert usage_numbers(warm) == (9, 1031, 0, 1031, 0, 0)
    real = client.messages.create(model=MODEL, max_tokens=10, system=system, messages=HELLO)
    assert usage_numbers(real) == (9, 0, 1031, 0, 0, 1)
    assert real.content[0].text == "Hi"
    with pytest.raises(anthropic.BadRequestError, match="max_tokens: 0 is not supported with stream: true"):
        client.messages.create(model=MODEL, max_tokens=0, system=system, messages=HELLO, stream=True)


# -------------------------------------------------------------------------------- diagnostics

DIAG_SYSTEM = [system_block("a", 4099), system_block("b", 1575)]  # 1031 + 400; with "Hello": 1440


def diagnosed(client: anthropic.Anthropic, previous: str | None, **params: Any) -> Any:
    """Send a beta request asking for cache diagnostics against ``previous``."""
    params.setdefault("system", DIAG_SYSTEM)
    params.setdefault("messages", HELLO)
    return client.beta.messages.create(
        model=MODEL, max_tokens=10, betas=[DIAGNOSTICS_BETA], diagnostics={"previous_message_id": previous}, **params
    )


def test_diagnostics_null_on_first_turn_and_on_extension(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """Diagnostics are null on turn 1 and when the next request extends the previous one."""
    first = diagnosed(client, None)
    assert emu.requests[-1].headers["anthropic-beta"] == DIAGNOSTICS_BETA
    assert first.to_dict()["diagnostics"] is None
    longer = [*HELLO, {"role": "assistant", "content": "OK"}, {"role": "user", "content": "More"}]
    second = diagnosed(client, first.id, messages=longer)
    assert second.to_dict()["diagnostics"] is None


def test_diagnostics_system_changed(client: anthropic.Anthropic) -> None:
    """Changing the second system block reports system_changed with the tokens from there on."""
    first = diagnosed(client, None)
    changed = [system_block("a", 4099), system_block("c", 1575)]
    second = diagnosed(client, first.id, system=changed)
    # previous total 1440, kept before the divergence 1031
    assert second.to_dict()["diagnostics"] == {
        "cache_miss_reason": {"type": "system_changed", "cache_missed_input_tokens": 409}
    }


def test_diagnostics_tools_and_model_changed(client: anthropic.Anthropic) -> None:
    """A changed tool reports tools_changed; a changed model reports model_changed over the whole prefix."""
    first = diagnosed(client, None, tools=[WEATHER_TOOL])
    other_tool = {**WEATHER_TOOL, "description": "Get the climate."}  # same length: 37 tokens
    second = diagnosed(client, first.id, tools=[other_tool])
    # previous total 37 + 1440 = 1477, all from the first tool on
    assert second.to_dict()["diagnostics"] == {
        "cache_miss_reason": {"type": "tools_changed", "cache_missed_input_tokens": 1477}
    }
    third = client.beta.messages.create(
        model="claude-opus-4-8",
        max_tokens=10,
        betas=[DIAGNOSTICS_BETA],
        diagnostics={"previous_message_id": second.id},
        system=DIAG_SYSTEM,
        messages=HELLO,
        tools=[other_tool],
    )
    assert third.to_dict()["diagnostics"] == {
        "cache_miss_reason": {"type": "model_changed", "cache_missed_input_tokens": 1477}
    }


def test_diagnostics_previous_message_not_found(client: anthropic.Anthropic) -> None:
    """An unknown previous_message_id reports previous_message_not_found without tokens."""
    message = diagnosed(client, "msg_unknown")
    assert message.to_dict()["diagnostics"] == {"cache_miss_reason": {"type": "previous_message_not_found"}}


def test_diagnostics_unavailable_when_only_tool_choice_differs(client: anthropic.Anthropic) -> None:
    """Only tool_choice differing gives ``unavailable``; an explicit ``auto`` equals omitting it."""
    first = diagnosed(client, None, tools=[WEATHER_TOOL])
    same = diagnosed(client, first.id, tools=[WEATHER_TOOL], tool_choice={"type": "auto"})
    assert same.to_dict()["diagnostics"] is None
    other = diagnosed(client, first.id, tools=[WEATHER_TOOL], tool_choice={"type": "any"})
    assert other.to_dict()["diagnostics"] == {"cache_miss_reason": {"type": "unavailable"}}


@_SDK_1_OR_LATER
def test_diagnostics_absent_without_beta_header(client: anthropic.Anthropic, emu: AnthropicEmulator) -> None:
    """Plain messages.create with diagnostics= sends no beta header, so the response has no diagnostics key."""
    message = client.messages.create(
        model=MODEL, max_tokens=10, messages=HELLO, diagnostics={"previous_message_id": None}
    )
    assert "anthropic-beta" not in emu.requests[-1].headers
    assert emu.requests[-1].body["diagnostics"] == {"previous_message_id": None}
    assert "diagnostics" not in message.to_dict()


def test_diagnostics_in_stream_come_on_message_start(client: anthropic.Anthropic) -> None:
    """A streamed beta request carries diagnostics on message_start."""
    first = diagnosed(client, None)
    events = list(
        client.beta.messages.create(
            model=MODEL,
            max_tokens=10,
            betas=[DIAGNOSTICS_BETA],
            diagnostics={"previous_message_id": first.id},
            system=[system_block("z", 4099), system_block("b", 1575)],
            messages=HELLO,
            stream=True,
        )
    )
    assert events[0].type == "message_start"
    assert events[0].message.to_dict()["diagnostics"] == {
        "cache_miss_reason": {"type": "system_changed", "cache_missed_input_tokens": 1440}
    }


# -------------------------------------------------------------------------------- determinism


def test_two_fresh_emulators_answer_identically() -> None:
    """The same requests to two fresh emulators give identical ids, bodies and request ids."""

    def run() -> list[Any]:
        with AnthropicEmulator(clock=Clock(START, frozen=True)) as emulator:
            sdk = anthropic.Anthropic(base_url=emulator.base_url, api_key="test-key", max_retries=0)
            emulator.script(Reply.tool_use("get_weather", {"city": "Paris"}), Reply.error(529), Reply.text("Hi"))
            out: list[Any] = []
            first = sdk.messages.with_raw_response.create(
                model=MODEL, max_tokens=10, tools=[WEATHER_TOOL], messages=HELLO
            )
            out += [first.headers["request-id"], first.parse().to_dict()]
            with pytest.raises(anthropic.OverloadedError) as caught:
                sdk.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
            out.append(caught.value.body)
            with sdk.messages.stream(
                model=MODEL, max_tokens=10, system=[system_block("a", 4099, EPHEMERAL)], messages=HELLO
            ) as stream:
                out.append(stream.get_final_message().to_dict())
            batch = sdk.messages.batches.create(requests=[batch_request("a", HELLO)])
            out += [batch.to_dict(), [r.to_dict() for r in sdk.messages.batches.results(batch.id)]]
            return out

    first_run, second_run = run(), run()
    assert first_run == second_run
    assert first_run[1]["id"] != first_run[3]["id"]
    assert first_run[1]["content"][0]["id"].startswith("toolu_emu")


def test_prewarm_is_refused_where_the_api_refuses_it(client: anthropic.Anthropic) -> None:
    """max_tokens=0 is a 400 with thinking enabled, a forced tool_choice or stream=True."""
    tool = {"name": "t", "description": "d", "input_schema": {"type": "object"}}
    with pytest.raises(anthropic.BadRequestError, match=r"max_tokens: 0 is not supported with thinking\.type: enabled"):
        client.messages.create(
            model=MODEL, max_tokens=0, messages=HELLO, thinking={"type": "enabled", "budget_tokens": 1024}
        )
    with pytest.raises(anthropic.BadRequestError, match="max_tokens: 0 is not supported with tool_choice any/tool"):
        client.messages.create(model=MODEL, max_tokens=0, messages=HELLO, tools=[tool], tool_choice={"type": "any"})
    with pytest.raises(anthropic.BadRequestError, match="max_tokens: 0 is not supported with stream: true"):
        client.messages.create(model=MODEL, max_tokens=0, messages=HELLO, stream=True)


def test_unforeseen_input_is_an_api_error_not_a_dropped_connection(emu: AnthropicEmulator) -> None:
    """A request the emulator cannot handle gets a 4xx/5xx with Anthropic's error body."""
    bad = emu.handle("GET", "/v1/messages/batches?limit=abc", {"x-api-key": "k"}, b"")
    assert bad.status == 400
    assert json.loads(bad.body)["error"] == {"type": "invalid_request_error", "message": "limit: must be an integer"}
    too_many = emu.handle("GET", "/v1/messages/batches?limit=5000", {"x-api-key": "k"}, b"")
    assert json.loads(too_many.body)["error"]["message"] == "limit: must be between 1 and 1000"
