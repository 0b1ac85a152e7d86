"""Four agents, each with one problem a lever fixes (the example for ``tokenbudget advise``).

Each problem is a module constant below; ``tests/test_levers_example.py`` copies this folder,
flips one constant, re-records, and checks with ``tokenbudget diff`` that the saving it bought is
what the advisor predicted.
"""

from __future__ import annotations

from typing import Any

import anthropic

# The four problems (False = the problem is there, as recorded in cassettes/).
CACHE_HANDBOOK = False  # caching: the 6k-token handbook is sent without a cache breakpoint
USE_BATCHES = False  # batch: the eval loop calls the real-time API one case at a time
CLASSIFY_MODEL = "claude-opus-5"  # model tiering: the label turns run on Opus
ELIDE_LOG = False  # context: the 60 KB log stays in the conversation after it was read

ANSWER_MODEL = "claude-sonnet-4-5"
PLAN_MODEL = "claude-opus-5"
STUB = "[elided: no longer needed]"  # what replaces the log once read

# About 24,000 characters: 6,000 tokens at the emulator's 4 characters a token.
HANDBOOK = "".join(
    f"Section {n}: refunds for damaged goods are paid within 14 days of the claim; keep the receipt. "
    for n in range(300)
)[:24_000]
LABELS = ["refund", "shipping", "account", "other"]
LABEL_TOOL = {
    "name": "set_label",
    "description": "Label the ticket.",
    "input_schema": {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": LABELS}},
        "required": ["label"],
    },
}
LOG_TOOL = {
    "name": "fetch_log",
    "description": "Fetch the deploy log.",
    "input_schema": {"type": "object", "properties": {"deploy": {"type": "string"}}, "required": ["deploy"]},
}
# 60,000 characters of deploy log.
DEPLOY_LOG = "".join(
    f"2026-11-20T10:{n % 60:02d}:00Z step {n:04d} ok: pulled layer, checksum verified\n" for n in range(1000)
)[:60_000]


def _text(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def _assistant(message: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": [b.model_dump(exclude_none=True, mode="json") for b in message.content]}


def answer_questions(client: anthropic.Anthropic, questions: list[str]) -> list[str]:
    """Answer each question against the handbook (the same long system prompt each call)."""
    block: dict[str, Any] = {"type": "text", "text": HANDBOOK}
    if CACHE_HANDBOOK:
        block["cache_control"] = {"type": "ephemeral"}
    answers = []
    for question in questions:
        reply = client.messages.create(
            model=ANSWER_MODEL, max_tokens=400, system=[block], messages=[{"role": "user", "content": question}]
        )
        answers.append(_text(reply))
    return answers


def _grade_params(case: dict[str, str]) -> dict[str, Any]:
    return {
        "model": ANSWER_MODEL,
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": f"Question: {case['question']}\nAnswer: {case['answer']}\nReply PASS or FAIL.",
            }
        ],
    }


def grade_answers(client: anthropic.Anthropic, cases: dict[str, dict[str, str]]) -> dict[str, str]:
    """An eval loop: grade each case (nobody waits on it)."""
    if not USE_BATCHES:
        return {case_id: _text(client.messages.create(**_grade_params(case))) for case_id, case in cases.items()}
    batch = client.messages.batches.create(
        requests=[{"custom_id": case_id, "params": _grade_params(case)} for case_id, case in cases.items()]
    )
    while batch.processing_status != "ended":
        batch = client.messages.batches.retrieve(batch.id)
    grades = {}
    for item in client.messages.batches.results(batch.id):
        if item.result.type == "succeeded":
            grades[item.custom_id] = _text(item.result.message)
    return {case_id: grades[case_id] for case_id in cases}


def triage(client: anthropic.Anthropic, tickets: list[str]) -> tuple[str, list[str]]:
    """Plan the day with Opus, then label each ticket (a classification against four labels)."""
    plan = client.messages.create(
        model=PLAN_MODEL,
        max_tokens=600,
        messages=[{"role": "user", "content": "Plan today's support shift for these tickets:\n" + "\n".join(tickets)}],
    )
    labels = []
    for ticket in tickets:
        reply = client.messages.create(
            model=CLASSIFY_MODEL,
            max_tokens=50,
            tools=[LABEL_TOOL],
            tool_choice={"type": "tool", "name": "set_label"},
            messages=[{"role": "user", "content": f"Label this ticket: {ticket}"}],
        )
        labels.append(next(str(b.input["label"]) for b in reply.content if b.type == "tool_use"))
    return _text(plan), labels


def investigate(client: anthropic.Anthropic, follow_ups: list[str]) -> list[str]:
    """Read the deploy log through a tool, then answer follow-up questions in the same conversation."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Why did deploy 7 fail?"}]
    reply = client.messages.create(model=ANSWER_MODEL, max_tokens=500, tools=[LOG_TOOL], messages=messages)
    messages.append(_assistant(reply))
    call = next(b for b in reply.content if b.type == "tool_use")
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": DEPLOY_LOG}]}
    )
    answers = []
    for question in [None, *follow_ups]:
        if question is not None:
            messages.append({"role": "user", "content": question})
        reply = client.messages.create(model=ANSWER_MODEL, max_tokens=500, tools=[LOG_TOOL], messages=messages)
        messages.append(_assistant(reply))
        answers.append(_text(reply))
        if ELIDE_LOG and question is None:  # the log was read: keep only a stub of it
            messages[2]["content"][0]["content"] = STUB
    return answers
