"""Faults (issue 16): a write killed midway leaves a temp file that the next write removes and no
reader sees; two processes appending to one cassette both land."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_tokenbudget._atomic import TEMP_PATTERN, remove_stale_temps, write_atomic
from pytest_tokenbudget.cassette import Body, Interaction, iter_cassette_files, load_cassette, save_cassette

KILLED_WRITER = """
import os, sys, tempfile
from pathlib import Path
from typing import Any
import pytest_tokenbudget._atomic as atomic

# Stop dead inside write_atomic, after the temp file is written and before the rename: what
# SIGKILL or a power cut does (no finally runs).
real_replace = os.replace
def killed(src, dst):
    os.kill(os.getpid(), 9)
os.replace = killed
atomic.write_atomic(Path(sys.argv[1]), b"new content\\n")
"""


def _kill_mid_write(path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], check=False)
    assert result.returncode == -signal.SIGKILL


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_killed_write_leaves_the_old_file_and_the_next_write_removes_its_temp(tmp_path: Path) -> None:
    """The old cassette stays whole; the leftover ``.name.XXXXXXXX.PID.tmp`` goes at the next write of that file."""
    cassette = tmp_path / "test_refund.yaml"
    cassette.write_text("old content\n")
    _kill_mid_write(cassette)
    left = _temps(tmp_path)
    assert len(left) == 1
    assert left[0].startswith(".test_refund.yaml.")
    assert cassette.read_text() == "old content\n"
    other = tmp_path / "test_other.yaml"
    write_atomic(other, "other\n")  # another file's write leaves it alone
    assert _temps(tmp_path) == left
    write_atomic(cassette, "newer\n")
    assert _temps(tmp_path) == []
    assert cassette.read_text() == "newer\n"


def test_a_live_writers_temp_file_is_kept(tmp_path: Path) -> None:
    """A temp file whose process is alive (another run writing the same file now) is not removed."""
    cassette = tmp_path / "test_refund.yaml"
    live = tmp_path / f".test_refund.yaml.abcd1234.{os.getppid()}.tmp"
    live.write_text("half")
    dead = tmp_path / ".test_refund.yaml.efgh5678.tmp"  # no pid (an older version's), ten minutes old
    dead.write_text("half")
    os.utime(dead, (time.time() - 601, time.time() - 601))
    assert remove_stale_temps(cassette) == [dead]
    assert live.exists()


def test_readers_ignore_temp_files(tmp_path: Path) -> None:
    """``tokenbudget report cassettes/`` and replay never read a leftover temp file."""
    folder = tmp_path / "cassettes"
    folder.mkdir()
    (folder / "test_refund.yaml").write_text("format: pytest-tokenbudget/1\ninteractions: []\n")
    (folder / ".test_refund.yaml.abcd1234.4242.tmp").write_text("interactions: [")
    assert list(iter_cassette_files([folder])) == [folder / "test_refund.yaml"]


def test_the_readme_gitignore_pattern_matches_the_temp_files(tmp_path: Path) -> None:
    """``git check-ignore`` with the README's pattern ignores every temp name write_atomic makes, and no cassette."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(TEMP_PATTERN + "\n")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    assert f"\n{TEMP_PATTERN}\n" in readme
    names = [
        "cassettes/test_x/.test_refund.yaml.k2j_9a0b.4242.tmp",
        ".tokenbudget-baseline.json.abcd1234.17.tmp",
        "cassettes/.old.yaml.abcd1234.tmp",
    ]
    kept = ["cassettes/test_x/test_refund.yaml", "tokenbudget-baseline.json"]
    result = subprocess.run(
        ["git", "-C", str(tmp_path), "check-ignore", "--no-index", *names, *kept],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout.splitlines() == names


# ------------------------------------------------------------------ two writers, one cassette


def _interaction(index: int, text: str) -> Interaction:
    return Interaction(
        index=index,
        method="POST",
        uri="http://127.0.0.1/v1/messages",
        request_headers={"content-type": "application/json"},
        request_body=Body(f'{{"q":"{text}"}}'.encode()),
        status=200,
        reason="OK",
        response_headers={"content-type": ["application/json"]},
        response_body=Body(b'{"ok":true}'),
    )


def _append_episode(path: str, text: str, barrier: Any) -> None:
    from pytest_tokenbudget._modes import RecordMode
    from pytest_tokenbudget.record import open_recorder

    recorder = open_recorder(
        Path(path), test="t", mode=RecordMode.NEW_EPISODES, continue_on_mismatch=False, allow_unused=True
    )
    barrier.wait()  # both runs have loaded the cassette before either writes
    recorder.recorded.append(_interaction(0, text))
    recorder.save()


@pytest.mark.parametrize("run", range(3))
def test_two_runs_appending_to_one_cassette_lose_nothing(tmp_path: Path, run: int) -> None:
    """Two ``--token-budget-record=new_episodes`` runs that loaded the same cassette: both new episodes land."""
    path = tmp_path / "test_refund.yaml"
    save_cassette(path, [_interaction(0, "first")])
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_append_episode, args=(str(path), name, barrier)) for name in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    bodies = sorted(i.request_body.raw.decode() for i in load_cassette(path).interactions)
    assert bodies == ['{"q":"a"}', '{"q":"b"}', '{"q":"first"}']
    assert _temps(tmp_path) == []


KILLER_LOOP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pytest_tokenbudget._atomic import write_atomic
    n = 0
    while True:
        write_atomic(Path(sys.argv[1]), ("x" * 200000 + str(n)).encode())
        n += 1
    """
)


def test_killed_writers_never_leave_a_torn_file(tmp_path: Path) -> None:
    """Writers killed at random moments (20 times): the file is always a whole version, and one more write cleans up."""
    path = tmp_path / "tokenbudget-baseline.json"
    write_atomic(path, b"x" * 200000 + b"start")
    for attempt in range(20):
        writer = subprocess.Popen([sys.executable, "-c", KILLER_LOOP, str(path)])
        time.sleep(0.3 + attempt * 0.01)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        content = path.read_bytes()
        assert content.startswith(b"x" * 200000), attempt
        assert content[200000:].isalnum(), attempt
    write_atomic(path, b"final")
    assert _temps(tmp_path) == []
