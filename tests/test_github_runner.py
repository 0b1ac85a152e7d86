"""The composite action run as a GitHub runner runs it: its steps' scripts, in a temporary repository
whose project lives in a subfolder, with the variables a runner sets and a local GitHub REST API.

The runner below does what GitHub does with ``action.yml``: it substitutes ``${{ ... }}``
expressions (inputs and their defaults, ``github.*``, ``steps.<id>.outputs.*``), honours ``if:``,
runs each ``run:`` script with ``bash --noprofile --norc -eo pipefail`` in its working directory
with a fresh ``GITHUB_OUTPUT`` file, and reads the action's outputs. ``uses:`` steps
(setup-python, upload-artifact) are GitHub's own and are skipped: the test's virtualenv is the
Python they would set up. Any expression it does not know fails the test, so the action cannot
grow one untested.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_tokenbudget._annotate import annotations_for, find_text
from pytest_tokenbudget._github import MARKER
from pytest_tokenbudget.cli import main
from pytest_tokenbudget.prefix import Difference

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

RULES = "".join(f"Rule {k}: be polite, check order {k} twice, and never refund without a receipt.\n" for k in range(60))
PROMPT = "You are the refund agent of the shop.\nCheck the order before refunding.\n" + RULES

EDITED = "Check the order, the receipt and the customer's last three orders before any refund."

AGENT = """
from pathlib import Path

import anthropic
from pytest_tokenbudget.emulator import Reply

SYSTEM_TEXT = (Path(__file__).parent.parent / "prompts" / "refund.txt").read_text()
QUESTION = "Where is my order 42?"


def ask(turns=3):
    client = anthropic.Anthropic()
    messages = [{"role": "user", "content": QUESTION}]
    for k in range(turns):
        reply = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=messages,
            system=[{"type": "text", "text": SYSTEM_TEXT, "cache_control": {"type": "ephemeral"}}],
        )
        messages += [{"role": "assistant", "content": reply.content[0].text},
                     {"role": "user", "content": f"And then? ({k})"}]


def test_refund(anthropic_emulator):
    anthropic_emulator.script(*[Reply.text(f"Step {k}: checking the order.") for k in range(3)])
    ask()


def test_greeting(anthropic_emulator):
    anthropic_emulator.script(Reply.text("Hello!"))
    anthropic.Anthropic().messages.create(
        model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
"""


# ---------------------------------------------------------------------------------- the REST API


@dataclass
class _GitHub:
    """Issue comments of one pull request, and every call made."""

    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    comments: dict[int, str] = field(default_factory=dict)
    read_only: bool = False
    url: str = ""


def _handler(state: _GitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> dict[str, Any] | None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            state.calls.append((self.command, self.path, self.headers.get("Authorization")))
            return body

        def do_GET(self) -> None:
            self._record()
            match = re.fullmatch(r"/repos/o/r/issues/7/comments\?per_page=100&page=(\d+)", self.path)
            if match is None:
                return self._answer(404, {"message": "Not Found"})
            page = [{"id": i, "body": b} for i, b in sorted(state.comments.items())][
                (int(match[1]) - 1) * 100 : int(match[1]) * 100
            ]
            return self._answer(200, page)

        def do_POST(self) -> None:
            body = self._record()
            if state.read_only:
                return self._answer(403, {"message": "Resource not accessible by integration"})
            if self.path != "/repos/o/r/issues/7/comments" or body is None:
                return self._answer(404, {"message": "Not Found"})
            number = len(state.comments) + 1
            state.comments[number] = body["body"]
            return self._answer(201, {"id": number, "html_url": f"https://github.test/o/r/pull/7#c{number}"})

        def do_PATCH(self) -> None:
            body = self._record()
            match = re.fullmatch(r"/repos/o/r/issues/comments/(\d+)", self.path)
            if match is None or int(match[1]) not in state.comments or body is None:
                return self._answer(404, {"message": "Not Found"})
            state.comments[int(match[1])] = body["body"]
            return self._answer(200, {"id": int(match[1]), "html_url": f"https://github.test/o/r/pull/7#c{match[1]}"})

    return Handler


@pytest.fixture(scope="module")
def github() -> Iterator[_GitHub]:
    """A local GitHub REST API on 127.0.0.1 that records the calls."""
    state = _GitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------------- the runner


@dataclass
class _Run:
    log: str
    outputs: dict[str, str]
    steps: list[tuple[str, int | None]]
    failed: bool


_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _run_action(workspace: Path, inputs: dict[str, str], env: dict[str, str], event: dict[str, Any]) -> _Run:
    action = yaml.safe_load((REPO / "action.yml").read_text())
    declared = action["inputs"]
    assert set(inputs) <= set(declared), set(inputs) - set(declared)
    steps_out: dict[str, dict[str, str]] = {}

    def value(expression: str) -> str:
        if expression == "always()":
            return "true"
        if expression.startswith("inputs."):
            name = expression.removeprefix("inputs.")
            return inputs[name] if name in inputs else substitute(str(declared[name].get("default", "")))
        if expression == "github.action_path":
            return str(REPO)
        if expression == "github.token":
            return env["GITHUB_TOKEN"]
        if expression.startswith("github.event."):
            found: Any = event
            for key in expression.removeprefix("github.event.").split("."):
                found = found.get(key) if isinstance(found, dict) else None
            return "" if found is None else str(found)
        match = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expression)
        if match:
            return steps_out.get(match[1], {}).get(match[2], "")
        raise AssertionError(f"the test runner does not know the expression {expression!r}")

    def substitute(text: str) -> str:
        return _EXPRESSION.sub(lambda m: value(m[1]), text)

    log: list[str] = []
    done: list[tuple[str, int | None]] = []
    failed = False
    for number, step in enumerate(action["runs"]["steps"]):
        condition = step.get("if")
        if (substitute(condition) != "true") if condition else failed:
            done.append((step["name"], None))
            continue
        if "uses" in step:
            done.append((step["name"], None))
            continue
        output = workspace.parent / f"output-{number}"
        output.write_text("")
        step_env = {**env, "GITHUB_OUTPUT": str(output)}
        step_env.update({k: substitute(str(v)) for k, v in (step.get("env") or {}).items()})
        script = workspace.parent / f"step-{number}.sh"
        script.write_text(substitute(step["run"]))
        cwd = workspace / substitute(step.get("working-directory", "."))
        done_step = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        log.append(done_step.stdout + done_step.stderr)
        done.append((step["name"], done_step.returncode))
        failed = failed or done_step.returncode != 0
        if "id" in step:
            steps_out[step["id"]] = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    outputs = {name: substitute(str(spec["value"])) for name, spec in action["outputs"].items()}
    return _Run("".join(log), outputs, done, failed)


def _environment(
    tmp: Path, github: _GitHub, event: dict[str, Any], workspace: Path, name: str = "event.json"
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "ANTHROPIC_", "GITHUB_", "COV_", "TB_")) and k != "COLUMNS"
    }
    event_path = tmp / name
    event_path.write_text(json.dumps(event))
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "GITHUB_ACTIONS": "true",
            "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_STEP_SUMMARY": str(tmp / "summary.md"),
            "GITHUB_EVENT_PATH": str(event_path),
            "GITHUB_EVENT_NAME": "pull_request",
            "GITHUB_API_URL": github.url,
            "GITHUB_REPOSITORY": "o/r",
            "GITHUB_TOKEN": "test-token",
            "RUNNER_TEMP": str(tmp),
        }
    )
    return env


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@dataclass
class _Repository:
    workspace: Path
    tmp: Path
    base_sha: str
    event: dict[str, Any]
    runs: list[_Run]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, github: _GitHub) -> _Repository:
    """A repository whose project is in proj/: recorded and baselined on the base commit; the pull
    request edits the system prompt file inside the cached prefix. The action runs twice (two
    pushes): once plainly, once under ``-n 2``."""
    tmp = tmp_path_factory.mktemp("runner")
    workspace = tmp / "repo"
    project = workspace / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "prompts").mkdir()
    (project / "prompts" / "refund.txt").write_text(PROMPT)
    (project / "tests" / "test_refund.py").write_text(AGENT)
    (project / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    _git(workspace, "init", "-q")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ANTHROPIC_", "GITHUB_"))}
    record = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--token-budget-record=once",
            "--token-budget-update",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert record.returncode == 0, record.stdout + record.stderr
    _git(workspace, "add", "-A")
    _git(workspace, "commit", "-qm", "base")
    base_sha = _git(workspace, "rev-parse", "HEAD")
    (project / "prompts" / "refund.txt").write_text(PROMPT.replace("Check the order before refunding.", EDITED))
    _git(workspace, "commit", "-qam", "the pull request")
    event = {
        "number": 7,
        "pull_request": {
            "number": 7,
            "base": {"sha": base_sha, "repo": {"full_name": "o/r"}},
            "head": {"sha": _git(workspace, "rev-parse", "HEAD"), "repo": {"full_name": "o/r"}},
        },
    }
    runs = []
    for extra in ("-p no:cacheprovider", "-p no:cacheprovider -n 2"):
        environment = _environment(tmp, github, event, workspace)
        runs.append(_run_action(workspace, {"working-directory": "proj", "pytest-args": extra}, environment, event))
    return _Repository(workspace, tmp, base_sha, event, runs)


def _annotations(log: str) -> list[str]:
    return [line.split("::", 2)[1] for line in log.splitlines() if line.startswith("::error ")]


# ---------------------------------------------------------------------------------- the tests


def test_annotations_come_once_per_failing_test_from_the_repository_root(repository: _Repository) -> None:
    """With and without -n 2: one annotation on the test's line, one on the prompt file's changed
    line, both with paths from the repository root (the project is in proj/)."""
    expected = [
        "error file=proj/tests/test_refund.py,line=23,title=token budget%3A test_refund",
        "error file=proj/prompts/refund.txt,line=2,title=token budget%3A test_refund%3A the prompt changed here",
    ]
    for run in repository.runs:
        assert _annotations(run.log) == expected, run.log
        assert "the request now departs from its recording at system[0].text, offset 53" in run.log


def test_the_job_fails_after_the_comment_and_the_outputs_are_set(repository: _Repository) -> None:
    """The gate step records pytest's status; the summary step still runs; the last step fails the job."""
    for run in repository.runs:
        assert run.steps == [
            ("Set up Python", None),
            ("Install pytest-tokenbudget and the project", 0),
            ("Replay and judge the token budget", 0),
            ("Outputs and the pull request comment", 0),
            ("Upload the report", None),
            ("The gate's verdict", 1),
        ]
        assert "pytest-tokenbudget is already installed" in run.log
        assert run.outputs == {
            "report": "proj/tokenbudget-report.json",
            "total-cost": run.outputs["total-cost"],
            "cost-change": run.outputs["cost-change"],
            "verdict": "fail",
        }
    first, second = repository.runs
    assert (first.outputs["total-cost"], first.outputs["cost-change"]) == ("0.005991", "+0.000057")
    assert second.outputs == first.outputs
    summary = (repository.tmp / "summary.md").read_text()
    assert summary.count("## Token budget\n") == 2  # one per run, appended


def test_the_comment_is_created_once_then_updated(repository: _Repository, github: _GitHub) -> None:
    """The first push creates the comment, the second finds it by its marker and edits it."""
    assert [(method, path) for method, path, _auth in github.calls] == [
        ("GET", "/repos/o/r/issues/7/comments?per_page=100&page=1"),
        ("POST", "/repos/o/r/issues/7/comments"),
        ("GET", "/repos/o/r/issues/7/comments?per_page=100&page=1"),
        ("PATCH", "/repos/o/r/issues/comments/1"),
    ]
    assert {auth for _m, _p, auth in github.calls} == {"Bearer test-token"}
    assert list(github.comments) == [1]
    body = github.comments[1]
    assert body.startswith(MARKER + "\n## Token budget: :x: fail\n")
    assert "| cost | $0.005935 | $0.005991 | +$0.000057 (+1.0%) |\n| tokens | 3,766 | 3,805 | +39 (+1.0%) |" in body
    assert (
        "| `tests/test_refund.py::test_refund` | $0.005917 | $0.005973 | +$0.000057 (+1.0%) | 3,795 (+39) "
        "| 64.5% (was 64.5%) |"
    ) in body
    assert "- :x: `tests/test_refund.py::test_refund`" in body
    assert "  - turn 0: system[0].text, offset 53: " in body
    assert body == (repository.workspace / "proj" / "tokenbudget-comment.md").read_text()
    assert "tokenbudget: pull request comment updated: https://github.test/o/r/pull/7#c1" in repository.runs[1].log


def test_tokenbudget_gate_on_the_report_says_what_pytest_said(
    repository: _Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same rules on the two files: the same failures and notes, and exit 1."""
    project = repository.workspace / "proj"
    report = json.loads((project / "tokenbudget-report.json").read_text())
    said = [f"  {line['test']}: FAIL {line['text']}" for line in report["gate"] if line["kind"] == "fail"]
    base = repository.tmp / "base-baseline.json"
    base.write_text(_git(repository.workspace, "show", f"{repository.base_sha}:proj/tokenbudget-baseline.json"))
    status = main(["gate", str(base), str(project / "tokenbudget-report.json")])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert [line for line in out if ": FAIL " in line] == said
    assert len(said) == 2


def test_a_fork_or_a_read_only_token_skips_the_comment_without_failing(
    repository: _Repository, github: _GitHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fork's pull request: no REST call, a clear note, exit 0; a 403 on the write: the same."""
    project = repository.workspace / "proj"
    event = json.loads(json.dumps(repository.event))
    event["pull_request"]["head"]["repo"]["full_name"] = "someone/r"
    env = _environment(repository.tmp, github, event, repository.workspace, "fork-event.json")
    env["GITHUB_OUTPUT"] = str(repository.tmp / "fork-output")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls = len(github.calls)
    assert main(["comment", str(project / "tokenbudget-report.json")]) == 0
    out = capsys.readouterr().out
    assert "tokenbudget: no pull request comment: pull request from the fork someone/r: the workflow's token" in out
    assert "::notice title=token budget::no pull request comment" in out
    assert len(github.calls) == calls
    assert "verdict=fail\n" in (repository.tmp / "fork-output").read_text()

    monkeypatch.setenv("GITHUB_EVENT_PATH", str(repository.tmp / "event.json"))
    github.read_only = True
    saved = dict(github.comments)
    github.comments.clear()
    try:
        assert main(["comment", str(project / "tokenbudget-report.json")]) == 0
    finally:
        github.read_only = False
        github.comments.update(saved)
    out = capsys.readouterr().out
    assert "tokenbudget: no pull request comment: the token cannot write to the pull request (read-only" in out
    assert "HTTP 403" in out


def test_a_changed_literal_is_found_on_its_line(tmp_path: Path) -> None:
    """A prompt written as a string literal in the test module: the annotation points at its line."""
    module = tmp_path / "test_agent.py"
    module.write_text('import x\n\nSYSTEM = (\n    "You are terse. "\n    "Answer in French."\n)\n')
    request = {"system": "You are terse. Answer in French."}
    found = annotations_for(
        test_name="test_agent",
        test_file=module,
        test_line=9,
        message="over budget",
        rootdir=tmp_path,
        change=(Difference("system", 25, '"terse. Answer in Eng"…', '"terse. Answer in Fre"…', "changed"), request),
    )
    assert [(a.file, a.line) for a in found] == [("test_agent.py", 9), ("test_agent.py", 5)]
    assert find_text("nothing like it anywhere", 3, [module]) is None
