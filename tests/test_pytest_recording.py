"""pytest-tokenbudget loads beside pytest-recording and honours its ``--record-mode``."""

from __future__ import annotations

import textwrap

import pytest
from conftest import NETWORK_GUARD

pytestmark = pytest.mark.usefixtures("no_api_key")

AGENT = textwrap.dedent("""
    import anthropic
    import pytest
    from pytest_tokenbudget.emulator import Reply

    def ask():
        client = anthropic.Anthropic()
        return client.messages.create(model="claude-haiku-4-5", max_tokens=16,
                                      messages=[{"role": "user", "content": "hello"}])

    def test_ours(anthropic_emulator, token_ledger):
        anthropic_emulator.script(Reply.text("hi"))
        ask()
        assert [t.output_tokens for t in token_ledger] == [1]

    @pytest.fixture
    def vcr_config():
        # The emulator's port changes every run: match on method and path, as our plugin does.
        return {"match_on": ["method", "path"]}

    @pytest.mark.vcr
    def test_theirs(anthropic_emulator, token_ledger):
        anthropic_emulator.script(Reply.text("hello there"))
        ask()
        assert [t.output_tokens for t in token_ledger] == [3]
""")


def test_both_plugins_register_their_own_options(pytester: pytest.Pytester) -> None:
    """``--help`` lists pytest-recording's options once and ours beside them."""
    result = pytester.runpytest("--help")
    assert result.ret == 0
    out = result.stdout.str()
    assert out.count("--record-mode=") == 1
    assert out.count("--block-network") == 1
    assert "--token-budget-record=MODE" in out
    assert "--token-budget-cassette-dir=DIR" in out


def test_pytest_recording_record_mode_is_honoured(pytester: pytest.Pytester) -> None:
    """Without ``--token-budget-record``, pytest-recording's ``--record-mode=once`` records our cassettes too."""
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_pair=AGENT)
    pytester.runpytest("--record-mode=once", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    ours = pytester.path / "cassettes/test_pair/test_ours.yaml"
    theirs = pytester.path / "cassettes/test_pair/test_theirs.yaml"
    assert ours.read_text().startswith("# Recorded by pytest-tokenbudget")
    assert "format: pytest-tokenbudget/1" not in theirs.read_text()  # pytest-recording wrote it, plain vcrpy
    # Replay both offline: each plugin replays its own cassette, and our ledger reads theirs.
    pytester.runpytest("-p", "no:cacheprovider", "--block-network").assert_outcomes(passed=2)


def test_token_budget_record_wins_over_record_mode(pytester: pytest.Pytester) -> None:
    """``--token-budget-record`` takes precedence over ``--record-mode``."""
    pytester.makeconftest(NETWORK_GUARD)
    pytester.makepyfile(test_pair=AGENT)
    result = pytester.runpytest(
        "--record-mode=once", "--token-budget-record=none", "-p", "no:cacheprovider", "-k", "test_ours"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tokenbudget: no recording for a request*"])
