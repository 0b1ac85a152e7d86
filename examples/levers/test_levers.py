"""One test per lever's problem; replayed from cassettes/ (recorded through the emulator).

pytest examples/levers --token-budget -p no:cacheprovider      # the report and its levers
tokenbudget advise examples/levers/cassettes                   # the same advice, from cassettes
"""

from __future__ import annotations

import anthropic
import levers_agent
import pytest

from pytest_tokenbudget.emulator import Reply

ANSWER = "Damaged goods are refunded within 14 days of the claim, provided the receipt is kept. " * 4
QUESTIONS = [f"Question {n}: how long does a refund for a damaged item take?" for n in range(5)]
CASES = {f"case-{n}": {"question": f"What is {n} + {n}?", "answer": str(2 * n)} for n in range(8)}
TICKETS = ["My parcel is late.", "Refund my torn tent.", "I cannot log in.", "Do you sell stoves?"]
FOLLOW_UPS = [f"Follow-up {n}: what should we change before the next deploy?" for n in range(10)]


def test_handbook_answers(anthropic_emulator, token_ledger):
    """Five questions against a 6k-token handbook sent as the system prompt."""
    anthropic_emulator.script(*[Reply.text(ANSWER) for _ in QUESTIONS])
    answers = levers_agent.answer_questions(anthropic.Anthropic(), QUESTIONS)
    assert answers == [ANSWER] * 5
    assert len(token_ledger) == 5


@pytest.mark.token_budget(batchable=True)
def test_eval_loop(anthropic_emulator, token_ledger):
    """An eval loop over eight cases: nobody waits on it."""
    anthropic_emulator.script(*[Reply.text("PASS") for _ in CASES])
    grades = levers_agent.grade_answers(anthropic.Anthropic(), CASES)
    assert set(grades.values()) == {"PASS"}
    assert len(token_ledger) == 8


def test_triage(anthropic_emulator, token_ledger):
    """Opus plans the shift, then labels four tickets one by one."""
    labels = ["shipping", "refund", "account", "other"]
    anthropic_emulator.script(
        Reply.text("Morning: late parcels and refunds first; then accounts; then questions. " * 12),
        *[Reply.tool_use("set_label", {"label": label}) for label in labels],
    )
    _plan, got = levers_agent.triage(anthropic.Anthropic(), TICKETS)
    assert got == labels
    assert len(token_ledger) == 5


def test_deploy_investigation(anthropic_emulator, token_ledger):
    """The agent reads a 60 KB deploy log once, then answers ten follow-ups with it still in context."""
    anthropic_emulator.script(
        Reply.tool_use("fetch_log", {"deploy": "7"}),
        Reply.text("Step 0412 timed out pulling a layer; the retry budget was exhausted. " * 8),
        *[
            Reply.text("Pin the base image and raise the pull timeout; add a retry with backoff. " * 8)
            for _ in FOLLOW_UPS
        ],
    )
    answers = levers_agent.investigate(anthropic.Anthropic(), FOLLOW_UPS)
    assert len(answers) == 11
    assert len(token_ledger) == 12
