"""An example support agent: the kind of code pytest-tokenbudget is built to measure.

It uses the three cheapest levers there are:

* prompt caching: the tools and the long system prompt carry ``cache_control``, and the
  conversation uses top-level automatic caching, so every turn re-reads them at a tenth of the price;
* model tiering: a large model plans once, a small model runs the tool loop;
* the Message Batches API: nightly ticket summaries nobody waits for go at half price.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic

PLANNER_MODEL = "claude-opus-5"
WORKER_MODEL = "claude-haiku-4-5"

POLICY = "You are the support agent of Northwind Outfitters, an online shop for outdoor gear.\n" + "\n".join(
    f"Policy {n}: refunds for damaged items are granted within 30 days of delivery; "
    "refunds above 100 EUR need the order id, the damaged line and a photo reference; "
    "always check the order before refunding and never refund twice for the same line."
    for n in range(1, 81)
)

TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_order",
        "description": "Look up an order by id: its lines, prices, delivery date and refunds so far.",
        "input_schema": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "description": "Order id, like A-1042."}},
            "required": ["order_id"],
        },
    },
    {
        "name": "refund_line",
        "description": "Refund one line of an order. Returns the refund id.",
        "input_schema": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "line": {"type": "integer", "description": "Line number, from 1."},
                "amount_eur": {"type": "number"},
            },
            "required": ["order_id", "line", "amount_eur"],
        },
        "cache_control": {"type": "ephemeral"},
    },
]

SYSTEM: list[dict[str, Any]] = [{"type": "text", "text": POLICY, "cache_control": {"type": "ephemeral"}}]

ORDERS: dict[str, dict[str, Any]] = {
    "A-1042": {
        "delivered": "2026-11-18",
        "lines": [{"line": 1, "item": "Trail tent 2P", "eur": 189.0}, {"line": 2, "item": "Stove", "eur": 45.5}],
        "refunds": [],
    },
}


def run_tool(name: str, arguments: dict[str, Any]) -> str:
    """Execute a tool call against the in-memory shop."""
    order = ORDERS.get(str(arguments.get("order_id")))
    if order is None:
        return json.dumps({"error": "no such order"})
    if name == "get_order":
        return json.dumps(order)
    if name == "refund_line":
        order["refunds"].append({"line": arguments["line"], "eur": arguments["amount_eur"]})
        return json.dumps({"refund_id": f"R-{len(order['refunds'])}", "status": "ok"})
    return json.dumps({"error": f"unknown tool {name}"})


@dataclass
class Outcome:
    """What the agent did for one ticket."""

    plan: str
    answer: str
    tool_calls: list[str] = field(default_factory=list)


def _assistant(message: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": [b.model_dump(exclude_none=True, mode="json") for b in message.content]}


def handle_ticket(
    client: anthropic.Anthropic,
    ticket: str,
    *,
    max_turns: int = 8,
    tool: Callable[[str, dict[str, Any]], str] = run_tool,
) -> Outcome:
    """Plan with the large model, then let the small model work the ticket with tools."""
    plan = client.messages.create(
        model=PLANNER_MODEL,
        max_tokens=300,
        system=SYSTEM,
        messages=[{"role": "user", "content": f"Plan the steps for this ticket, briefly:\n{ticket}"}],
    )
    plan_text = plan.content[0].text if plan.content and plan.content[0].type == "text" else ""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": f"Ticket: {ticket}\nPlan: {plan_text}\nWork the ticket with the tools."}
    ]
    outcome = Outcome(plan=plan_text, answer="")
    for _ in range(max_turns):
        reply = client.messages.create(
            model=WORKER_MODEL,
            max_tokens=500,
            system=SYSTEM,
            tools=TOOLS,
            messages=messages,
            cache_control={"type": "ephemeral"},  # automatic caching: the breakpoint follows the conversation
        )
        messages.append(_assistant(reply))
        calls = [b for b in reply.content if b.type == "tool_use"]
        if not calls:
            outcome.answer = "".join(b.text for b in reply.content if b.type == "text")
            return outcome
        results = []
        for call in calls:
            outcome.tool_calls.append(call.name)
            results.append({"type": "tool_result", "tool_use_id": call.id, "content": tool(call.name, call.input)})
        messages.append({"role": "user", "content": results})
    raise RuntimeError(f"no answer after {max_turns} turns")


def stream_reply(client: anthropic.Anthropic, question: str) -> str:
    """Answer a customer live, streaming the reply."""
    with client.messages.stream(
        model=WORKER_MODEL, max_tokens=300, system=SYSTEM, messages=[{"role": "user", "content": question}]
    ) as stream:
        return "".join(stream.text_stream)


def nightly_summaries(client: anthropic.Anthropic, tickets: dict[str, str]) -> dict[str, str]:
    """Summarise closed tickets through the Message Batches API (half price, nobody waits)."""
    batch = client.messages.batches.create(
        requests=[
            {
                "custom_id": ticket_id,
                "params": {
                    "model": WORKER_MODEL,
                    "max_tokens": 120,
                    "messages": [{"role": "user", "content": f"Summarise this support ticket in one line:\n{text}"}],
                },
            }
            for ticket_id, text in tickets.items()
        ]
    )
    while batch.processing_status != "ended":
        batch = client.messages.batches.retrieve(batch.id)
    summaries = {}
    for item in client.messages.batches.results(batch.id):
        if item.result.type == "succeeded":
            summaries[item.custom_id] = "".join(b.text for b in item.result.message.content if b.type == "text")
    return summaries
