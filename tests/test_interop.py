"""Our cassettes through plain vcrpy's own interfaces; atomic writes under interruption; the CLI as a module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anthropic
import pytest
import vcr

from pytest_tokenbudget import _atomic
from pytest_tokenbudget.cassette import TokenBudgetPersister, load_cassette, vcr_serializer

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "cassettes" / "test_support_agent" / "test_streamed_answer.yaml"

pytestmark = pytest.mark.token_budget(record=False)  # these tests drive vcrpy themselves


def test_plain_vcrpy_replays_our_cassette_through_its_serializer_interface(tmp_path: Path) -> None:
    """With our serializer and persister registered, plain vcrpy replays a shipped cassette for the SDK."""
    my_vcr = vcr.VCR(record_mode="none", match_on=["method", "path"])
    my_vcr.register_serializer("tokenbudget", vcr_serializer)
    my_vcr.register_persister(TokenBudgetPersister)
    with my_vcr.use_cassette(str(SHIPPED), serializer="tokenbudget") as cassette:
        client = anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="unused", max_retries=0)
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=300,
            messages=[{"role": "user", "content": "Can I return a damaged tent?"}],
        ) as stream:
            text = "".join(stream.text_stream)
        assert cassette.play_count == 1
    assert text == "Tents are refunded within 30 days of delivery if damaged."


def test_plain_vcrpy_writes_our_format_atomically(tmp_path: Path) -> None:
    """vcrpy saving through our serializer and persister writes a cassette we read back byte-exactly."""
    interactions = load_cassette(SHIPPED).interactions
    data = vcr_serializer.deserialize(SHIPPED.read_text())
    target = tmp_path / "copy.yaml"
    from vcr.serialize import deserialize

    requests, responses = deserialize(SHIPPED.read_text(), vcr_serializer)[:2]
    TokenBudgetPersister.save_cassette(target, {"requests": requests, "responses": responses}, vcr_serializer)
    copied = load_cassette(target).interactions
    assert [i.request_body.raw for i in copied] == [i.request_body.raw for i in interactions]
    assert [i.response_body.raw for i in copied] == [i.response_body.raw for i in interactions]
    assert len(data["interactions"]) == len(interactions)


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt in the middle of a write leaves the previous file as it was, and no temp file."""
    target = tmp_path / "cassette.yaml"
    target.write_text("old contents\n")
    os.chmod(target, 0o640)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _atomic.write_atomic(target, "new contents\n")
    assert target.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cassette.yaml"]
    monkeypatch.undo()
    _atomic.write_atomic(target, "new contents\n")
    assert target.read_text() == "new contents\n"
    assert target.stat().st_mode & 0o777 == 0o640


def test_the_cli_runs_as_a_module() -> None:
    """``python -m pytest_tokenbudget report`` prints the report of the shipped cassettes."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest_tokenbudget", "report", "cassettes"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "total                            8    135       14,912      10,191      99     40.4%  $0.044963" in done.stdout
    )
