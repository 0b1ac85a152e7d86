"""The ledger's reading of usage: every field kept, streams assembled as the SDK does, batches per request."""

from __future__ import annotations

import json

from pytest_tokenbudget.cassette import Body, Interaction
from pytest_tokenbudget.ledger import turns_from


def _exchange(
    index: int, path: str, request: object, response: bytes, content_type: str, method: str = "POST"
) -> Interaction:
    return Interaction(
        index,
        method,
        f"https://api.anthropic.com{path}",
        {"anthropic-version": "2023-06-01"},
        Body(json.dumps(request).encode()),
        200,
        "OK",
        {"content-type": [content_type]},
        Body(response),
        1764028800.0 + index,
    )


def _sse(*events: tuple[str, dict[str, object]]) -> bytes:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


def test_unknown_usage_fields_are_kept_in_json_and_streamed_turns() -> None:
    """Usage fields the API adds later survive, in a JSON reply and in either stream event."""
    request = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    reply = {
        "id": "msg_1",
        "model": "claude-sonnet-4-6",
        "content": [],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 5,
            "output_tokens": 2,
            "brand_new_counter": 7,
            "speed": "fast",
            "inference_geo": "us",
            "server_tool_use": {"web_search_requests": 1},
        },
    }
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_2",
            "model": "claude-sonnet-4-6",
            "content": [],
            "usage": {"input_tokens": 9, "output_tokens": 1, "cache_read_input_tokens": 0, "novel_start": 3},
        },
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 12, "cache_read_input_tokens": 4, "novel_delta": 5, "input_tokens": None},
    }
    ledger = turns_from(
        [
            _exchange(0, "/v1/messages", request, json.dumps(reply).encode(), "application/json"),
            _exchange(
                1,
                "/v1/messages",
                {**request, "stream": True},
                _sse(("message_start", start), ("message_delta", delta), ("message_stop", {"type": "message_stop"})),
                "text/event-stream",
            ),
        ]
    )
    assert ledger[0].usage == reply["usage"]
    assert (ledger[0].speed, ledger[0].usage["inference_geo"]) == ("fast", "us")
    # Stream: start's usage, output_tokens and the cache counts overwritten by the delta (never
    # added), a null input_tokens ignored, unknown fields of both events kept.
    assert ledger[1].usage == {
        "input_tokens": 9,
        "output_tokens": 12,
        "cache_read_input_tokens": 4,
        "novel_start": 3,
        "novel_delta": 5,
    }
    assert [t.stream for t in ledger] == [False, True]


def test_batch_results_count_one_turn_per_succeeded_request() -> None:
    """A batch's results give one turn per succeeded request, with its params and the creation time."""
    params = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    created = {"id": "msgbatch_1", "processing_status": "in_progress"}
    results = "\n".join(
        json.dumps(line)
        for line in [
            {
                "custom_id": "a",
                "result": {
                    "type": "succeeded",
                    "message": {"model": "claude-haiku-4-5", "usage": {"input_tokens": 3, "output_tokens": 1}},
                },
            },
            {"custom_id": "b", "result": {"type": "errored", "error": {"type": "error"}}},
            {
                "custom_id": "c",
                "result": {
                    "type": "succeeded",
                    "message": {"model": "claude-haiku-4-5", "usage": {"input_tokens": 4, "output_tokens": 2}},
                },
            },
        ]
    ).encode()
    ledger = turns_from(
        [
            _exchange(
                0,
                "/v1/messages/batches",
                {"requests": [{"custom_id": c, "params": params} for c in "abc"]},
                json.dumps(created).encode(),
                "application/json",
            ),
            _exchange(1, "/v1/messages/batches/msgbatch_1/results", None, results, "application/binary", "GET"),
        ]
    )
    assert [(t.endpoint, t.custom_id, t.input_tokens, t.recorded_at) for t in ledger] == [
        ("batch", "a", 3, 1764028800.0),
        ("batch", "c", 4, 1764028800.0),
    ]
    assert ledger.by_model()["claude-haiku-4-5"].input_tokens == 7
    assert [e.endpoint for e in ledger.exchanges] == ["batch_create", "batch_results"]
