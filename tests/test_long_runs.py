"""Long agent runs: a 200-turn recording replays to the same ledger, stays linear in size, diffs small."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import NETWORK_GUARD, read_json

LONG_AGENT = """
import json
import os

import anthropic
from pytest_tokenbudget.emulator import Reply

TURNS = int(os.environ.get("AGENT_TURNS", "200"))
SYSTEM = [{"type": "text", "text": os.environ.get("AGENT_SYSTEM", "You audit invoices. ") * 300,
           "cache_control": {"type": "ephemeral"}}]
TOOLS = [{"name": "read_invoice", "description": "Read one invoice. " * 20,
          "input_schema": {"type": "object", "properties": {"number": {"type": "integer"}}}}]
CHANGED_TURN = int(os.environ.get("AGENT_CHANGE_AT", "-1"))


def result(k):
    lines = "".join(f"invoice {k} line {j}: amount {(k * 31 + j * 17) % 997}.00 EUR, status ok\\n" for j in range(60))
    return lines + ("(corrected)" if k == CHANGED_TURN else "")


def test_long_audit(anthropic_emulator, token_ledger):
    anthropic_emulator.script(*[Reply.tool_use("read_invoice", {"number": k}) for k in range(TURNS - 1)],
                              Reply.text("Audit done."))
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": "Audit every invoice."}]
    for k in range(TURNS):
        reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=128, system=SYSTEM, tools=TOOLS,
                                       messages=messages, cache_control={"type": "ephemeral"})
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True, mode="json")
                                                          for b in reply.content]})
        if reply.stop_reason != "tool_use":
            break
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": reply.content[0].id,
                                                      "content": result(k)}]})
    with open(os.environ["LEDGER_OUT"], "w") as out:
        json.dump({"turns": [dict(t.usage) for t in token_ledger.turns],
                   "verdicts": [t.verdict for t in token_ledger.cache_analysis().turns],
                   "final_request": len(json.dumps(messages))}, out)
"""


def _run(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 200-turn run recorded once through the emulator (shared by the module's tests)."""
    root = tmp_path_factory.mktemp("long")
    (root / "conftest.py").write_text(NETWORK_GUARD)
    (root / "test_long.py").write_text(LONG_AGENT)
    (root / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "AGENT_"))}
    env["LEDGER_OUT"] = str(root / "recorded.json")
    recorded = _run(root, env, "--token-budget-record=once")
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    return {"root": root, "env": env, "recorded": read_json(root / "recorded.json")}


def test_200_turn_run_replays_to_the_same_ledger(long_run: dict[str, Any]) -> None:
    """The 200-turn recording replays offline, with no key, to exactly the recorded ledger."""
    root, env = long_run["root"], dict(long_run["env"])
    env.update(LEDGER_OUT=str(root / "replayed.json"), TB_BLOCK_NETWORK="1")
    replay = _run(root, env)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    recorded, replayed = long_run["recorded"], read_json(root / "replayed.json")
    assert len(recorded["turns"]) == 200
    assert replayed == recorded
    assert recorded["verdicts"] == ["write"] + ["hit"] * 199


def test_cassette_grows_with_the_transcript_not_its_square(long_run: dict[str, Any]) -> None:
    """The cassette stays within 1.5x the final request plus all responses."""
    root = long_run["root"]
    cassette = root / "cassettes" / "test_long" / "test_long_audit.yaml"
    size = cassette.stat().st_size
    from pytest_tokenbudget.cassette import load_cassette

    interactions = load_cassette(cassette).interactions
    final_request = len(interactions[-1].request_body.raw)
    responses = sum(len(i.response_body.raw) for i in interactions)
    assert size <= 1.5 * (final_request + responses), (size, final_request, responses)
    every_request = sum(len(i.request_body.raw) for i in interactions)
    assert every_request > 50 * size  # what a plain vcrpy cassette would have stored


def test_a_changed_tool_result_is_named_exactly(long_run: dict[str, Any]) -> None:
    """A change deep in a long run fails replay at its JSON path and offset."""
    root, env = long_run["root"], dict(long_run["env"])
    env.update(LEDGER_OUT=str(root / "changed.json"), TB_BLOCK_NETWORK="1", AGENT_CHANGE_AT="150")
    replay = _run(root, env)
    assert replay.returncode == 1
    assert "why:  POST /v1/messages #152 differs at messages[302].content[0].content, offset 2983" in replay.stdout
    assert 'recorded: …"9: amount 668.00 EUR, status ok\\n"' in replay.stdout
    assert 'now:      …"9: amount 668.00 EUR, status ok\\n(corrected)"' in replay.stdout


def test_a_prompt_edit_is_a_small_cassette_diff(long_run: dict[str, Any], tmp_path: Path) -> None:
    """Re-recording after a one-word system prompt edit changes one body line, plus the recorded times."""
    root, env = long_run["root"], dict(long_run["env"])
    cassette = root / "cassettes" / "test_long" / "test_long_audit.yaml"
    before = cassette.read_text().splitlines()
    env.update(LEDGER_OUT=str(tmp_path / "edited.json"), AGENT_SYSTEM="You audit receipts. ")
    edited = _run(root, env, "--token-budget-record=all")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    after = cassette.read_text().splitlines()
    changed = [
        line
        for line in difflib.unified_diff(before, after, lineterm="", n=0)
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    body = [line for line in changed if "recorded_at:" not in line and "responded_at:" not in line]
    assert len(changed) - len(body) == 2 * 2 * 200  # request start and response end, - and +
    assert len(body) == 2
    assert body[0].startswith("-          text: 'You audit invoices. You audit invoices.")
    assert body[1].startswith("+          text: 'You audit receipts. You audit receipts.")
    assert json.loads((tmp_path / "edited.json").read_text())["verdicts"][:2] == ["write", "hit"]
