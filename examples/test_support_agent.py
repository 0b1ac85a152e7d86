"""Tests of the example agent. They replay from cassettes/ with no API key.

The cassettes were recorded against pytest-tokenbudget's local emulator, not the live API:
the replies below are scripted, and token counts are the emulator's synthetic counts. To record
your own agent against the live API, drop the emulator and run with
``--token-budget-record=once`` and ``ANTHROPIC_API_KEY`` set.
"""

from __future__ import annotations

import anthropic
from support_agent import ORDERS, handle_ticket, nightly_summaries, stream_reply

from pytest_tokenbudget.emulator import Reply

TICKET = "Order A-1042: the tent arrived torn. I want a refund for it."


def test_refund_ticket(anthropic_emulator, token_ledger):
    """The agent plans with Opus 5, then checks the order and refunds the line with Haiku."""
    anthropic_emulator.script(
        Reply.text("1. Look up A-1042. 2. Check delivery date. 3. Refund the tent line. 4. Confirm."),
        Reply.tool_use("get_order", {"order_id": "A-1042"}, text="Let me look up the order."),
        Reply.tool_use("refund_line", {"order_id": "A-1042", "line": 1, "amount_eur": 189.0}),
        Reply.text("Done: refund R-1 of 189.00 EUR for the Trail tent 2P on order A-1042."),
    )
    ORDERS["A-1042"]["refunds"].clear()
    outcome = handle_ticket(anthropic.Anthropic(), TICKET)
    assert outcome.tool_calls == ["get_order", "refund_line"]
    assert outcome.answer.startswith("Done: refund R-1")
    assert [t.model for t in token_ledger] == ["claude-opus-5"] + ["claude-haiku-4-5"] * 3


def test_streamed_answer(anthropic_emulator, token_ledger):
    """A live answer streams; its usage is assembled from the stream's events."""
    anthropic_emulator.script(Reply.text("Tents are refunded within 30 days of delivery if damaged."))
    text = stream_reply(anthropic.Anthropic(), "Can I return a damaged tent?")
    assert text.startswith("Tents are refunded")
    assert [t.stream for t in token_ledger] == [True]


def test_nightly_summaries(anthropic_emulator, token_ledger):
    """Three summaries go through one batch: three turns at the batch price."""
    anthropic_emulator.script(
        Reply.text("Torn tent refunded."), Reply.text("Late stove, tracking sent."), Reply.text("Size swap done.")
    )
    summaries = nightly_summaries(
        anthropic.Anthropic(),
        {"T-1": TICKET, "T-2": "Where is my stove? Order A-1050.", "T-3": "Boots too small, swap for 44."},
    )
    assert summaries["T-2"] == "Late stove, tracking sent."
    assert [t.endpoint for t in token_ledger] == ["batch", "batch", "batch"]
