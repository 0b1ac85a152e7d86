"""The canary test (issue 16): a secret put into traffic each way an attacker would, recorded
through the emulator via the real SDK, and then every byte the plugin and pytest wrote (cassettes,
pytest-recording's cassette, baseline, JSON and Markdown reports, junit.xml, the pytest cache,
the terminal output) scanned for it, raw and in each encoding: 0 hits.

One pytest project records, replays, replays a changed prompt judged (gate lines) and unjudged
(the replay-mismatch message), in real subprocesses; each way is then its own test case.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import NETWORK_GUARD


def _canary(way: str, special: bool = True) -> str:
    # Distinct per way (a hit names its way), long enough to be split by the emulator's 24-character
    # stream chunks, and (where a URL allows it) with characters percent- and JSON-encoding change.
    digest = hashlib.sha256(way.encode()).hexdigest()[:20]
    return f"CANARY-{digest}" + ("+/=~" if special else "")


@dataclass(frozen=True)
class Way:
    """One way a secret gets into traffic."""

    name: str
    secret: str
    env: str | None = None  # the environment variable that holds it (None: only in the test's code)


WAYS = (
    Way("env key echoed in a JSON reply", _canary("reply"), "ANTHROPIC_API_KEY"),
    Way("env token echoed in a streamed reply, split over SSE deltas", _canary("stream"), "STREAM_TOKEN"),
    Way("env secret in streamed tool input, split over input_json deltas", _canary("tool"), "TOOL_SECRET"),
    Way("env token in the request body", _canary("body"), "SERVICE_TOKEN"),
    Way("password in the base URL's userinfo", _canary("userinfo", special=False)),
    Way("key in a ?key= query parameter", _canary("query", special=False)),
    Way("env token in an allow-listed header (anthropic-beta)", _canary("beta", special=False), "PARTNER_TOKEN"),
    Way("base64 of a secret at offsets 0, 1, 2 (standard and url-safe)", _canary("b64"), "B64_SECRET"),
    Way("percent-encoded secret", _canary("pct"), "PCT_SECRET"),
    Way("JSON \\u-escaped secret", _canary("uesc"), "UESC_SECRET"),
    Way("secret split across two content blocks", _canary("split"), "SPLIT_SECRET"),
    Way("api_key= passed in code, echoed in a body and in a changed prompt", _canary("code")),
    Way("env var named by token_budget_secret_env", _canary("named"), "MYCO_PARTNER"),
    Way("auth token in a cassette pytest-recording writes", _canary("vcr", special=False)),
    Way("env token in a failing test's assertion message and captured output", _canary("printed"), "PRINTED_TOKEN"),
)
_BY_NAME = {way.name: way for way in WAYS}


def _secret(fragment: str) -> str:
    return next(way.secret for way in WAYS if fragment in way.name)


AGENT = textwrap.dedent("""
    import base64
    import os
    from urllib.parse import quote

    import anthropic
    import pytest
    from pytest_tokenbudget.emulator import Reply

    MODEL = "claude-haiku-4-5"
    REPLAY = os.environ.get("PHASE") == "replay"
    PASSWORD = "@PASSWORD@"
    QUERY_KEY = "@QUERY_KEY@"
    CODE_KEY = "@CODE_KEY@"
    VCR_TOKEN = "@VCR_TOKEN@"
    TOOLS = [{"name": "login", "description": "Log in.", "input_schema": {"type": "object"}}]


    def ask(content, client=None, **kwargs):
        client = client or anthropic.Anthropic()
        return client.messages.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": content}], **kwargs
        )


    def test_reply(anthropic_emulator):
        key = os.environ["ANTHROPIC_API_KEY"]
        anthropic_emulator.script(Reply.text("your key is " + key))
        text = ask("what is my key?").content[0].text
        assert text == "your key is " + ("<redacted>" if REPLAY else key)


    def test_stream(anthropic_emulator):
        token = os.environ["STREAM_TOKEN"]
        anthropic_emulator.script(Reply.text("x" * 13 + token + " ok"))
        with anthropic.Anthropic().messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "echo"}]
        ) as stream:
            text = stream.get_final_message().content[0].text
        # The stream rebuilt after redaction still parses through the SDK.
        assert text == "x" * 13 + ("<redacted>" * 2 if REPLAY else token) + " ok"


    def test_tool(anthropic_emulator):
        secret = os.environ["TOOL_SECRET"]
        anthropic_emulator.script(Reply.tool_use("login", {"user": "bob", "password": secret}))
        with anthropic.Anthropic().messages.stream(
            model=MODEL, max_tokens=64, tools=TOOLS, messages=[{"role": "user", "content": "log in"}]
        ) as stream:
            call = stream.get_final_message().content[0]
        assert call.input["user"] == "bob"
        assert (secret not in call.input["password"]) if REPLAY else call.input["password"] == secret


    def test_body(anthropic_emulator):
        ask("call the API with token=" + os.environ["SERVICE_TOKEN"])


    def test_userinfo(anthropic_emulator):
        url = anthropic_emulator.base_url.replace("http://", "http://agent:" + PASSWORD + "@")
        ask("hello", client=anthropic.Anthropic(base_url=url))


    def test_query(anthropic_emulator):
        ask("hello", extra_query={"key": QUERY_KEY})


    def test_beta_header(anthropic_emulator):
        beta = "tools-2024-04-04," + os.environ["PARTNER_TOKEN"]
        ask("hello", client=anthropic.Anthropic(default_headers={"anthropic-beta": beta}))


    def test_base64(anthropic_emulator):
        secret = os.environ["B64_SECRET"].encode()
        blobs = [base64.b64encode(p + secret + b"!").decode() for p in (b"", b"a", b"ab")]
        blobs += [base64.urlsafe_b64encode(p + secret + b"!").decode() for p in (b"", b"a", b"ab")]
        anthropic_emulator.script(Reply.text("blobs: " + " ".join(blobs)))
        ask("attachments: " + " ".join(blobs))


    def test_percent(anthropic_emulator):
        secret = os.environ["PCT_SECRET"]
        anthropic_emulator.script(Reply.text("see https://x.test/?s=" + quote(secret, safe="")))
        ask("open https://x.test/?s=" + quote(secret, safe=""))


    def test_u_escape(anthropic_emulator):
        escaped = "".join(f"\\\\u{ord(c):04x}" for c in os.environ["UESC_SECRET"])
        anthropic_emulator.script(Reply.text('{"s": "' + escaped + '"}'))
        ask('parse {"s": "' + escaped + '"}')


    def test_split(anthropic_emulator):
        secret = os.environ["SPLIT_SECRET"]
        half = len(secret) // 2
        anthropic_emulator.script(
            Reply.blocks([{"type": "text", "text": "one " + secret[:half]}, {"type": "text", "text": secret[half:]}])
        )
        content = [{"type": "text", "text": "a " + secret[:half]}, {"type": "text", "text": secret[half:] + " b"}]
        ask(content)


    def test_api_key_in_code(anthropic_emulator):
        version = os.environ.get("PROMPT_VERSION", "1")
        anthropic_emulator.script(Reply.text("echo " + CODE_KEY))
        ask(f"v{version}: my key is {CODE_KEY}", client=anthropic.Anthropic(api_key=CODE_KEY))


    def test_named_env(anthropic_emulator):
        value = os.environ["MYCO_PARTNER"]
        anthropic_emulator.script(Reply.text("partner " + value))
        ask("partner is " + value)


    def test_prints(anthropic_emulator):
        token = os.environ["PRINTED_TOKEN"]
        print("the token is", token)
        ask("hello")
        assert os.environ.get("PROMPT_VERSION", "1") == "1", f"token {token} rejected"


    @pytest.fixture
    def vcr_config():
        return {"match_on": ["method", "path"]}


    @pytest.mark.vcr
    def test_vcr(anthropic_emulator):
        anthropic_emulator.script(Reply.text("token " + VCR_TOKEN))
        ask("my token is " + VCR_TOKEN, client=anthropic.Anthropic(api_key=None, auth_token=VCR_TOKEN))
""")

INI = "[pytest]\ntoken_budget_secret_env = MYCO_*\njunit_logging = all\n"
_INPUTS = {"test_leaky.py", "conftest.py", "pytest.ini"}


@dataclass(frozen=True)
class Written:
    """Every byte the runs wrote, by file (and the runs' terminal output), and what they printed."""

    files: dict[str, bytes]
    outputs: dict[str, str]
    returncodes: dict[str, int]


def _run(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """Record, replay, replay a changed prompt judged and unjudged; collect what was written."""
    project = tmp_path_factory.mktemp("leaky")
    source = (
        AGENT.replace("@PASSWORD@", _secret("userinfo"))
        .replace("@QUERY_KEY@", _secret("query"))
        .replace("@CODE_KEY@", _secret("in code"))
        .replace("@VCR_TOKEN@", _secret("pytest-recording"))
    )
    (project / "test_leaky.py").write_text(source)
    (project / "conftest.py").write_text(NETWORK_GUARD)
    (project / "pytest.ini").write_text(INI)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "PYTEST_", "TB_"))}
    env.update({way.env: way.secret for way in WAYS if way.env})
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the test module's bytecode holds its literals: not ours
    outputs, codes = {}, {}
    record = _run(
        project,
        env,
        "--token-budget-record=once",
        "--record-mode=once",
        "--token-budget-update",
        "--token-budget-json=record.json",
        "--token-budget-md=record.md",
        "--junitxml=junit-record.xml",
    )
    outputs["record"], codes["record"] = record.stdout + record.stderr, record.returncode
    replay_env = {**env, "PHASE": "replay", "TB_BLOCK_NETWORK": "1"}
    replay = _run(
        project,
        replay_env,
        "--block-network",
        "--token-budget",
        "--token-budget-json=replay.json",
        "--token-budget-md=replay.md",
        "--junitxml=junit-replay.xml",
    )
    outputs["replay"], codes["replay"] = replay.stdout + replay.stderr, replay.returncode
    changed_env = {**replay_env, "PROMPT_VERSION": "2"}
    judged = _run(
        project,
        changed_env,
        "--block-network",
        "--token-budget",
        "--token-budget-json=changed.json",
        "--token-budget-md=changed.md",
        "--junitxml=junit-changed.xml",
    )
    outputs["changed, judged"], codes["changed, judged"] = judged.stdout + judged.stderr, judged.returncode
    mismatch = _run(
        project, changed_env, "--block-network", "--junitxml=junit-mismatch.xml", "-k", "api_key_in_code or prints"
    )
    outputs["changed, mismatch"], codes["changed, mismatch"] = mismatch.stdout + mismatch.stderr, mismatch.returncode
    files = {
        str(path.relative_to(project)): path.read_bytes()
        for path in sorted(project.rglob("*"))
        if path.is_file() and path.name not in _INPUTS
    }
    return Written(files, outputs, codes)


def _forms(secret: str) -> dict[str, bytes]:
    """The secret as it could leak: raw, base64 at each offset, percent, \\u-escaped, and its halves (split)."""
    data = secret.encode()
    forms = {"raw": data}
    for offset in range(3):
        start, end = -(-8 * offset // 6), 8 * (offset + len(data)) // 6
        standard = base64.b64encode(b"\0" * offset + data)[start:end]
        forms[f"base64@{offset}"] = standard
        forms[f"urlsafe-base64@{offset}"] = standard.replace(b"+", b"-").replace(b"/", b"_")
    forms["percent"] = quote(secret, safe="").encode()
    forms["percent, every byte"] = "".join(f"%{b:02X}" for b in data).encode()
    forms["\\u-escaped"] = "".join(f"\\u{ord(c):04x}" for c in secret).encode()
    half = len(secret) // 2
    forms["split, first half"] = data[:half]
    forms["split, second half"] = data[half:]
    return forms


@pytest.mark.parametrize(
    ("run", "code"), [("record", 0), ("replay", 0), ("changed, judged", 1), ("changed, mismatch", 1)]
)
def test_the_runs_end_as_expected(written: Written, run: str, code: int) -> None:
    """Recording and replaying pass (the redacted streams replay through the SDK; the replayed
    tests assert they read ``<redacted>``); with the changed prompt ``test_prints`` fails (its
    message holds a secret), and unjudged the changed request fails with the mismatch."""
    assert written.returncodes[run] == code, written.outputs[run]


def test_the_runs_wrote_every_kind_of_file(written: Written) -> None:
    """The scan covers cassettes (ours and pytest-recording's), baseline, reports, junit and the cache."""
    names = set(written.files)
    cassettes = {n for n in names if n.startswith("cassettes/")}
    assert len(cassettes) == 15
    assert "tokenbudget-baseline.json" in names
    assert {"record.json", "record.md", "replay.json", "replay.md", "changed.json", "changed.md"} <= names
    assert {"junit-record.xml", "junit-replay.xml", "junit-changed.xml", "junit-mismatch.xml"} <= names
    assert any(n.startswith(".pytest_cache/") for n in names)
    mismatch = written.files["junit-mismatch.xml"].decode()
    assert "a request departs from its recording" in mismatch
    assert "v2: my key is &lt;redacted&gt;" in mismatch  # the excerpt is there, redacted
    assert "token &lt;redacted&gt; rejected" in mismatch  # the user's own assertion message
    assert "the token is &lt;redacted&gt;" in mismatch  # captured output (junit_logging = all)
    vcr = written.files["cassettes/test_leaky/test_vcr.yaml"].decode().lower()
    assert "authorization" not in vcr
    assert "x-api-key" not in vcr


@pytest.mark.parametrize("way", [way.name for way in WAYS])
def test_no_canary_in_any_byte_written(written: Written, way: str) -> None:
    """The way's canary appears nowhere, raw or encoded, in any file written or any line printed."""
    secret = _BY_NAME[way].secret
    hits = []
    for form, needle in _forms(secret).items():
        hits.extend(f"{name} ({form})" for name, data in written.files.items() if needle in data)
        hits.extend(f"output of {run} ({form})" for run, text in written.outputs.items() if needle in text.encode())
    assert hits == []
