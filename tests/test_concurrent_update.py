"""Concurrent ``--token-budget-update`` runs: every run's entries land, none is pruned by another run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import filelock
import pytest
from conftest import NETWORK_GUARD, read_json

from pytest_tokenbudget import baseline as baseline_module
from pytest_tokenbudget.baseline import BaselineEntry, load_baseline, merge_baseline, update_baseline, write_baseline
from pytest_tokenbudget.errors import TokenBudgetError

pytestmark = pytest.mark.usefixtures("no_api_key")

TWENTY_CALLS = """
import anthropic
import pytest
from pytest_tokenbudget.emulator import Reply


@pytest.mark.parametrize("k", range(20))
def test_call(anthropic_emulator, k):
    anthropic_emulator.script(Reply.text(f"answer {k}"))
    reply = anthropic.Anthropic().messages.create(
        model="claude-sonnet-4-6", max_tokens=16,
        messages=[{"role": "user", "content": f"question {k} from {__name__}"}],
    )
    assert reply.content[0].text == f"answer {k}"
"""

# Seconds each update sleeps between reading the baseline and writing it (the test-only hook):
# long enough that, without the lock, both runs read before either writes.
PAUSE = "2"


def _entry(tokens: int) -> BaselineEntry:
    return BaselineEntry(1, tokens, 0, 0, 5, Decimal("0.0001"), 0.0)


def _recorded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, per_file: int) -> pytest.Pytester:
    """Two files of ``per_file`` tests, each making one call, recorded through the emulator; the network blocked after."""
    pytester.makeconftest(NETWORK_GUARD)
    body = TWENTY_CALLS.replace("range(20)", f"range({per_file})")
    pytester.makepyfile(test_a=body, test_b=body)
    pytester.runpytest("-p", "no:cacheprovider", "--token-budget-record=once").assert_outcomes(passed=2 * per_file)
    assert not (pytester.path / "tokenbudget-baseline.json").exists()
    monkeypatch.setenv("TB_BLOCK_NETWORK", "1")
    return pytester


@pytest.fixture
def recorded_40(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Two files of 20 tests, recorded."""
    return _recorded(pytester, monkeypatch, 20)


@pytest.fixture
def recorded_4(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Two files of 2 tests, recorded."""
    return _recorded(pytester, monkeypatch, 2)


def test_two_concurrent_updates_keep_all_40_entries(recorded_40: pytest.Pytester) -> None:
    """Two processes update one baseline at once, each from its own file: all 40 entries are written.

    Each run sleeps between its read and its write (``_TOKENBUDGET_TEST_UPDATE_PAUSE``), so
    without the lock both read an empty baseline and the last writer drops the other's 20.
    """
    env = {**os.environ, "_TOKENBUDGET_TEST_UPDATE_PAUSE": PAUSE}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--token-budget-update", name],
            cwd=recorded_40.path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("test_a.py", "test_b.py")
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    for output in outputs:
        assert "20 passed" in output, output
        assert "baseline tokenbudget-baseline.json: 20 test(s) written" in output, output
        assert "Traceback" not in output
    document = read_json(recorded_40.path / "tokenbudget-baseline.json")
    assert len(document["tests"]) == 40
    assert sorted(document["tests"]) == sorted(
        f"{name}::test_call[{k}]" for name in ("test_a.py", "test_b.py") for k in range(20)
    )
    # The run that took the lock second merged into the first one's file and says it kept its 20.
    kept = [output for output in outputs if "kept 20 entries for tests that did not run" in output]
    assert len(kept) == 1, outputs
    assert "pruned" not in "".join(outputs)
    # Each entry is that test's own numbers: one turn, "answer 7" is 2 output tokens; the files' twins agree.
    entry = document["tests"]["test_a.py::test_call[7]"]
    assert (entry["turns"], entry["output_tokens"]) == (1, 2)
    assert all(
        document["tests"][f"test_a.py::test_call[{k}]"] == document["tests"][f"test_b.py::test_call[{k}]"]
        for k in range(20)
    )
    assert sorted(p.name for p in recorded_40.path.iterdir() if "baseline" in p.name) == [
        "tokenbudget-baseline.json",
        "tokenbudget-baseline.json.lock",
    ]


def test_a_lock_held_too_long_is_a_clear_error(recorded_4: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """When another run holds the lock past the timeout, the update stops naming the lock file and the fix."""
    path = recorded_4.path / "tokenbudget-baseline.json"
    recorded_4.runpytest("-p", "no:cacheprovider", "--token-budget-update", "test_a.py").assert_outcomes(passed=2)
    before = path.read_bytes()
    monkeypatch.setattr(baseline_module, "_LOCK_TIMEOUT", 0.2)
    lock = recorded_4.path / "tokenbudget-baseline.json.lock"
    with filelock.FileLock(lock):  # another run, in the middle of its update
        result = recorded_4.runpytest("-p", "no:cacheprovider", "--token-budget-update", "test_b.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[-4:] == [
        "Exit: tokenbudget: the token budget baseline is locked by another run",
        f"  file: {lock}",
        "  why:  another --token-budget-update held the lock for more than 0.2 s; this run's 2 entries were not written",
        f"  fix:  let the other run finish, then run this one again; if no other run is going, delete {lock}",
    ]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert path.read_bytes() == before
    # Once the lock is free the same update lands, next to the other file's entries.
    recorded_4.runpytest("-p", "no:cacheprovider", "--token-budget-update", "test_b.py").assert_outcomes(passed=2)
    assert sorted(read_json(path)["tests"]) == [
        "test_a.py::test_call[0]",
        "test_a.py::test_call[1]",
        "test_b.py::test_call[0]",
        "test_b.py::test_call[1]",
    ]


# ------------------------------------------------------------------ merge_baseline under concurrency


def test_an_entry_written_by_a_concurrent_run_is_never_pruned(tmp_path: Path) -> None:
    """Pruning only drops what this run saw at its start, unchanged; a concurrent run's new or rewritten entry stays."""
    (tmp_path / "test_x.py").write_text("")
    at_start = {"test_x.py::test_1": _entry(10), "test_x.py::test_2": _entry(20), "test_x.py::test_3": _entry(30)}
    on_disk = {
        **at_start,
        "test_x.py::test_2": _entry(21),  # rewritten by the other run
        "test_x.py::test_4": _entry(40),  # added by the other run (a test this run did not collect)
    }
    merged = merge_baseline(
        on_disk, {"test_x.py::test_1": _entry(11)}, collected=["test_x.py::test_1"], rootdir=tmp_path, known=at_start
    )
    assert merged.updated == ["test_x.py::test_1"]
    assert merged.pruned == ["test_x.py::test_3"]
    assert merged.stale == ["test_x.py::test_2", "test_x.py::test_4"]
    assert merged.entries == {
        "test_x.py::test_1": _entry(11),
        "test_x.py::test_2": _entry(21),
        "test_x.py::test_4": _entry(40),
    }
    # Without ``known`` (one run alone), the file read is what it saw: test_2 and test_4 are pruned too.
    alone = merge_baseline(
        on_disk, {"test_x.py::test_1": _entry(11)}, collected=["test_x.py::test_1"], rootdir=tmp_path
    )
    assert alone.pruned == ["test_x.py::test_2", "test_x.py::test_3", "test_x.py::test_4"]


def test_update_baseline_merges_into_the_file_as_it_is_under_the_lock(tmp_path: Path) -> None:
    """The file is read again under the lock: entries written after this run started are kept."""
    (tmp_path / "test_a.py").write_text("")
    (tmp_path / "test_b.py").write_text("")
    path = tmp_path / "tokenbudget-baseline.json"
    write_baseline(path, {"test_b.py::test_other": _entry(7)})  # written by another run after this one started
    merged = update_baseline(
        path, {"test_a.py::test_mine": _entry(3)}, collected=["test_a.py::test_mine"], rootdir=tmp_path, known={}
    )
    assert (merged.updated, merged.pruned, merged.stale) == (["test_a.py::test_mine"], [], ["test_b.py::test_other"])
    assert load_baseline(path) == {"test_a.py::test_mine": _entry(3), "test_b.py::test_other": _entry(7)}
    assert (tmp_path / "tokenbudget-baseline.json.lock").exists()


def test_update_baseline_in_a_new_directory_creates_it(tmp_path: Path) -> None:
    """A baseline path whose directory does not exist yet gets it (the lock file lives there too)."""
    path = tmp_path / "budgets" / "baseline.json"
    update_baseline(path, {"t.py::t": _entry(1)}, collected=["t.py::t"], rootdir=tmp_path, known={})
    assert json.loads(path.read_text())["tests"]["t.py::t"]["input_tokens"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["baseline.json", "baseline.json.lock"]


def test_update_baseline_lock_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock's timeout is an error naming the lock file, how long it waited, and what was not written."""
    path = tmp_path / "tokenbudget-baseline.json"
    monkeypatch.setattr(baseline_module, "_LOCK_TIMEOUT", 0.1)
    with filelock.FileLock(tmp_path / "tokenbudget-baseline.json.lock"), pytest.raises(TokenBudgetError) as info:
        update_baseline(path, {"t.py::t": _entry(1)}, collected=["t.py::t"], rootdir=tmp_path, known={})
    assert info.value.what == "the token budget baseline is locked by another run"
    assert info.value.file == str(tmp_path / "tokenbudget-baseline.json.lock")
    assert info.value.why == (
        "another --token-budget-update held the lock for more than 0.1 s; this run's 1 entry was not written"
    )
    assert not path.exists()
