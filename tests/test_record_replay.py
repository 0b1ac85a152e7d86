"""End to end: record a real agent through the emulator, replay it with no key and no network."""

from __future__ import annotations

import pytest
from conftest import read_json, write_agent_project

pytestmark = pytest.mark.usefixtures("no_api_key")

CASSETTE = "cassettes/test_agent/test_support_agent.yaml"


def _record(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--token-budget-record=once", "-p", "no:cacheprovider", *args)


def test_record_then_replay_offline_gives_identical_ledgers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 5-turn tool-using agent recorded through the emulator replays offline with the same ledger."""
    write_agent_project(pytester)
    monkeypatch.setenv("LEDGER_OUT", str(pytester.path / "recorded.json"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-canary-recording-key-0123456789")
    _record(pytester).assert_outcomes(passed=1)
    recorded = read_json(pytester.path / "recorded.json")
    assert (pytester.path / CASSETTE).is_file()

    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("LEDGER_OUT", str(pytester.path / "replayed.json"))
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    replay = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    replay.assert_outcomes(passed=1)
    replayed = read_json(pytester.path / "replayed.json")

    assert replayed["turns"] == recorded["turns"]
    assert replayed["emulator_requests"] == 0
    assert recorded["emulator_requests"] == 10
    assert [(t["endpoint"], t["stream"]) for t in recorded["turns"]] == [
        ("messages", False),
        ("messages", True),
        ("messages", False),
        ("messages", True),
        ("messages", False),
        ("batch", False),
    ]
    usage = [
        (
            t["usage"]["input_tokens"],
            t["usage"]["cache_creation_input_tokens"],
            t["usage"]["cache_read_input_tokens"],
            t["usage"]["output_tokens"],
        )
        for t in recorded["turns"]
    ]
    assert usage == EXPECTED_USAGE


# (uncached input, cache write, cache read, output) per turn, from the emulator's documented
# token function: turn 1 writes tools+system, later turns read them back.
EXPECTED_USAGE = [
    (19, 1872, 0, 8),
    (79, 0, 1872, 17),
    (152, 0, 1872, 8),
    (213, 0, 1872, 9),
    (257, 0, 1872, 10),
    (13, 0, 0, 5),  # the batch request: Haiku, no cache_control
]
