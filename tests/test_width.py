"""Output that fits the terminal (issue 15, item 5): names shortened in the middle, prose wrapped,
commands whole, and a 50-turn ``-v`` table folded."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NETWORK_GUARD
from hypothesis import example, given
from hypothesis import strategies as st
from test_long_runs import LONG_AGENT

from pytest_tokenbudget.reports._width import ELLIPSIS, shorten_middle, wrap

TEST_ID = "tests/agents/invoices/test_quarterly_invoice_audit_agent.py::test_audits_every_invoice_of_the_quarter"


# ---------------------------------------------------------------- the helper


@given(st.text(min_size=0, max_size=300), st.integers(min_value=0, max_value=200))
@example(TEST_ID, 40)
@example("ab", 1)
def test_shorten_middle_fits_and_keeps_both_ends(text: str, width: int) -> None:
    """If a text is shortened, then it fits the width and keeps its first and last characters."""
    short = shorten_middle(text, width)
    assert len(short) <= width
    if len(text) <= width:
        assert short == text
    elif width >= 3:
        assert short[0] == text[0]
        assert short[-1] == text[-1]
        head, _, tail = short.partition(ELLIPSIS)
        assert text.startswith(head)
        assert text.endswith(tail)
        assert len(head) + len(tail) == width - 1


def test_shorten_middle_keeps_the_test_name_whole_when_it_fits() -> None:
    """If the test name fits in three quarters of the room, then it is kept whole."""
    assert shorten_middle(TEST_ID, 60) == "tests/agents/invo…::test_audits_every_invoice_of_the_quarter"
    assert shorten_middle(TEST_ID, 30) == "tests/a…invoice_of_the_quarter"


@given(st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=12), min_size=1, max_size=30))
def test_wrap_keeps_every_word_and_the_width(words: list[str]) -> None:
    """If prose is wrapped, then its words are all there, in order, and no line passes the width."""
    lines = wrap(" ".join(words), 30, first="  ", rest="    ")
    assert " ".join(" ".join(lines).split()) == " ".join(words)
    assert all(len(line) <= 30 for line in lines)


def test_wrap_puts_a_command_whole_on_its_own_line() -> None:
    """If a message ends in a command, then the command is never broken, even past the width."""
    command = f"pytest {TEST_ID} --token-budget-record=all --token-budget-update"
    lines = wrap(f"the baseline holds estimates; measure them with a key: {command}", 40, first="  ", rest="    ")
    assert lines == ["  the baseline holds estimates; measure", "    them with a key:", "    " + command]


# ---------------------------------------------------------------- end to end


def _write_project(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(NETWORK_GUARD)
    folder = pytester.mkpydir("tests") / "agents" / "invoices"
    folder.mkdir(parents=True)
    body = LONG_AGENT.replace("def test_long_audit", "def test_audits_every_invoice_of_the_quarter")
    (folder / "test_quarterly_invoice_audit_agent.py").write_text(body)
    # the cheap tier is the model the agent runs on: no lever to advise, the report is what is measured here
    pytester.makeini("[pytest]\ntoken_budget_cheap_model = claude-sonnet-4-6\n")


@pytest.fixture
def fifty_turns(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A 50-turn agent (a tool call a turn, every turn after the first a cache hit) recorded through
    the emulator, with its baseline written; then no key and no network."""
    _write_project(pytester)
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "AGENT_CHANGE_AT", "AGENT_SYSTEM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENT_TURNS", "50")
    monkeypatch.setenv("LEDGER_OUT", str(pytester.path / "ledger.json"))
    pytester.runpytest("--token-budget-record=once", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.runpytest("--token-budget", "--token-budget-update", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    return pytester


def _section(result: pytest.RunResult) -> list[str]:
    """The token budget section, without its heading, and with today's date as DATE."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("=") and " token budget " in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("=="))
    return [re.sub(r"\(\d{4}-\d\d-\d\d\)", "(DATE)", line) for line in lines[start + 1 : end]]


def _fits(lines: list[str], width: int) -> None:
    """No line passes the width, but a whole command."""
    assert [line for line in lines if len(line) > width and " pytest " not in line] == []


FOLDED_60 = [
    "test",
    "               cache     cache          hit      cost",
    "  turns input  write      read output  rate       USD",
    "  ----- ----- ------ --------- ------ ----- ---------",
    "tests/agents/invo…::test_audits_every_invoice_of_the_quarter",
    "     50     0 40,586 1,012,064    336 96.1% $0.460857",
    "",
    "tests/agents/invo…::test_audits_every_invoice_of_the_quarter",
    "  (cassettes/tes…t_audits_every_invoice_of_the_quarter.yaml)",
    "  input tokens per turn: ▂▂▂▃▃▃▄▄▄▄▅▅▅▅▆▆▆▇▇▇▇████",
    "    (1,639 to 40,586; one mark = 2 turns, their max)",
    "  model: claude-sonnet-4-6, endpoint: messages",
    "  turn",
    "                   cache     cache             cost",
    "    cache   input  write      read output       USD",
    "    ------- ----- ------ --------- ------ ---------",
    "  0",
    "    write       0  1,639         0      6 $0.006236",
    "  1-49",
    "    hit ×49     0 38,947 1,012,064    330 $0.454620",
    "  turn 0: first write: 1,639 tokens cached at system[0]",
    "    (5m), messages[0].content (5m)",
    "",
    "prices: genai-prices 0.2.3, today's prices (DATE)",
    "hit rate = cache reads / all input tokens (uncached + cache",
    "  writes + cache reads)",
    "",
    "baseline: 1 of 1 entry checked",
]


def test_a_50_turn_table_folds_and_fits_60_columns(
    fifty_turns: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the terminal is 60 wide, then every report line fits it: the table stacks each name above
    its numbers, names lose their middle, and the 49 hits after the first write are one row."""
    monkeypatch.setenv("COLUMNS", "60")
    result = fifty_turns.runpytest("-v", "--token-budget", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    section = _section(result)
    assert section == FOLDED_60
    _fits(section, 60)


FOLDED_200 = [
    "test                                                                                                   turns  input"
    "  cache write  cache read  output  hit rate   cost USD",
    "-----------------------------------------------------------------------------------------------------  -----  -----"
    "  -----------  ----------  ------  --------  ---------",
    f"{TEST_ID}     50      0       40,586   1,012,064     336     96.1%  $0.460857",
    "",
    f"{TEST_ID}  (cassettes/test_quarterly_invoice_audit_agent/test_audits_every_invoice_of_the_quarter.yaml)",
    "  input tokens per turn: ▂▂▂▂▂▂▃▃▃▃▃▃▃▄▄▄▄▄▄▄▅▅▅▅▅▅▅▅▆▆▆▆▆▆▆▇▇▇▇▇▇▇████████  (1,639 to 40,586)",
    "  turn  model              endpoint  cache    input  cache write  cache read  output   cost USD",
    "  ----  -----------------  --------  -------  -----  -----------  ----------  ------  ---------",
    "  0     claude-sonnet-4-6  messages  write        0        1,639           0       6  $0.006236",
    "  1-49  claude-sonnet-4-6  messages  hit ×49      0       38,947   1,012,064     330  $0.454620",
    "  turn 0: first write: 1,639 tokens cached at system[0] (5m), messages[0].content (5m)",
    "",
    "prices: genai-prices 0.2.3, today's prices (DATE)",
    "hit rate = cache reads / all input tokens (uncached + cache writes + cache reads)",
    "",
    "baseline: 1 of 1 entry checked",
]


def test_200_columns_keep_the_whole_names_on_one_line(
    fifty_turns: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the terminal is 200 wide, then the table is one line a test, names whole, the run still folded."""
    monkeypatch.setenv("COLUMNS", "200")
    result = fifty_turns.runpytest("-v", "--token-budget", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    section = _section(result)
    assert section == FOLDED_200
    _fits(section, 200)


GATE_60 = [
    "gate:",
    "  tests/a…invoice_of_the_quarter: FAIL turn 21:",
    '      messages[42].content[0].content, offset 2924: …"9:',
    '      amount 626.00 EUR, status ok\\n" -> …"9: amount 626.00',
    '      EUR, status ok\\n(corrected)"; the prefix cached at',
    "      messages[42].content[0] (18,244 tokens) is no longer",
    "      sent",
    "  tests/a…invoice_of_the_quarter: FAIL every live",
    "      conversation rebuilds its cache: 40,586 cached tokens",
    "      thrown away per run, about $0.140022 more per",
    "      conversation",
    "  tests/a…invoice_of_the_quarter: cost $0.460893 (estimated)",
    "      vs baseline $0.460857 (+$0.000036, +0.0%)",
]


def test_gate_lines_wrap_in_pytest_and_in_tokenbudget_gate(
    fifty_turns: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a tool result changes at turn 21 and the terminal is 60 wide, then the gate's lines wrap
    under a shortened test id, in pytest and in ``tokenbudget gate`` alike (COLUMNS for both)."""
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setenv("AGENT_CHANGE_AT", "20")
    result = fifty_turns.runpytest("--token-budget", "--token-budget-json=report.json", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    section = _section(result)
    start = section.index("gate:")
    assert section[start : start + len(GATE_60)] == GATE_60
    _fits(section, 60)
    path = Path(fifty_turns.path)
    cli = subprocess.run(
        [sys.executable, "-m", "pytest_tokenbudget", "gate", "tokenbudget-baseline.json", "report.json"],
        cwd=path,
        capture_output=True,
        text=True,
        env={"COLUMNS": "60", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert cli.returncode == 1, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[: len(GATE_60)] == GATE_60
    assert lines[-1] == "tokenbudget gate: 1 test(s) judged, 1 fail (exit 1)"
    _fits(lines, 60)


def test_json_and_markdown_do_not_depend_on_the_width(
    fifty_turns: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the same run is reported at 60 and at 200 columns, then its JSON and Markdown are the same bytes."""
    files = {}
    for columns in ("60", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        args = (f"--token-budget-json=r{columns}.json", f"--token-budget-md=r{columns}.md", "-p", "no:cacheprovider")
        fifty_turns.runpytest("-v", "--token-budget", *args).assert_outcomes(passed=1)
        texts = [(fifty_turns.path / f"r{columns}.{kind}").read_text() for kind in ("json", "md")]
        # The times of the run differ from run to run; nothing else may.
        files[columns] = [re.sub(r"\d{4}-\d\d-\d\dT[\d:.+Z]+", "TIME", text) for text in texts]
    assert files["60"] == files["200"]
    assert (
        "`tests/agents/invoices/test_quarterly_invoice_audit_agent.py::test_audits_every_invoice_of_the_quarter`"
        in (files["60"][1])
    )
