"""Hostile and broken input files (issue 16): a clear error or a correct result, in bounded time and memory.

A hypothesis fuzz over mutated cassettes (ours and vcrpy's, YAML and JSON), baselines, config
files (YAML and pyproject.toml) and price files: truncation, byte flips, inserted bytes (invalid
UTF-8 among them), deleted keys, swapped types, huge numbers, YAML alias bombs and deep nesting.
Every example runs the same code the plugin and the CLI run on such a file, in this process (no
pytest session per example), and must end in a :class:`TokenBudgetError` or a result that passes
the checks below, within 5 s and 200 MB of memory. Anything else (a traceback, a
hang, a silent wrong number) fails the test.

Examples: ``TB_FUZZ_EXAMPLES`` per target (default 200; cassettes get twice as many, pyproject.toml
half: 1,100 in all, plus the pinned ``@example`` cases); with ``TB_FUZZ_STATS=path`` the counts
(examples, errors, results, tracebacks, hangs, slowest, most memory) are appended to ``path``
as JSON lines.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
import resource
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_tokenbudget._yaml import LoadProblem, parse_yaml
from pytest_tokenbudget.baseline import compare, load_baseline, write_baseline
from pytest_tokenbudget.budgets import Budget
from pytest_tokenbudget.cassette import load_cassette
from pytest_tokenbudget.config import load_config
from pytest_tokenbudget.errors import TokenBudgetError
from pytest_tokenbudget.ledger import playback_problem, turns_from
from pytest_tokenbudget.pricing import Pricer
from pytest_tokenbudget.reports import build_entry, build_report, render_text, report_json

ROOT = Path(__file__).resolve().parent.parent
SEED_CASSETTES = sorted((ROOT / "cassettes").rglob("*.yaml"))
REAL_CASSETTES = Path("/work/shared/real-cassettes")  # read when present, never copied
EXAMPLES = int(os.environ.get("TB_FUZZ_EXAMPLES", "200"))
SECONDS = 5.0
MEMORY = 200 * 1024 * 1024

CONFIG = """\
defaults:
  max_cost_usd: 0.50
  max_cost_increase: 0.10
tests:
  "tests/test_agent.py::test_refund*":
    max_cost_usd: 0.05
    min_cache_hit_rate: 0.6
    prefix_stable: true
suite:
  max_cost_usd: 2.00
  fail_on: ["cost:5%", "hit_rate:0.05"]
baseline: tokenbudget-baseline.json
prices: [tokenbudget-prices.yaml]
"""

PRICES = """\
version: 1
models:
  claude-sonnet-4-6:
    input_mtok: 2.4
    output_mtok: 12
    cache_write_5m_mtok: 3.0
    cache_write_1h_mtok: 4.8
    cache_read_mtok: 0.24
    web_search_per_1000: 10
    batch_multiplier: 0.5
    inference_geo_multipliers:
      us: 1.1
    note: 2026 enterprise contract
  claude-haiku-4-5*:
    input_mtok: 1
    output_mtok: 5
"""

PYPROJECT = """\
[project]
name = "demo"

[tool.tokenbudget]
baseline = "tokenbudget-baseline.json"
prices = ["tokenbudget-prices.yaml"]

[tool.tokenbudget.defaults]
max_cost_usd = 0.5
max_cost_increase = 0.1

[tool.tokenbudget.tests."tests/test_agent.py::test_refund*"]
max_cost_usd = 0.05
min_cache_hit_rate = 0.6
"""

# Values swapped in for an existing one: wrong types, out-of-range and non-finite numbers,
# YAML-only types. ``None`` deletes the key instead.
SWAPS: list[Any] = [
    None,
    True,
    False,
    -1,
    0,
    -(10**6),
    10**30,
    2**63,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "text",
    "2025-01-01",
    "1e999",
    [],
    {},
    [1, 2],
    {"a": 1},
    0.5,
    b"\x00binary",  # YAML !!binary
    frozenset({"a"}),  # YAML !!set
    datetime.date(2025, 1, 1),  # YAML !!timestamp
    datetime.datetime(9999, 12, 31, 23, 59, 59),
]
# Keys worth aiming at (the rest are found by chance): the values the code reads.
TARGETED = {
    "status",
    "code",
    "recorded_at",
    "usage",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "ephemeral_1h_input_tokens",
    "ephemeral_5m_input_tokens",
    "cache_creation",
    "server_tool_use",
    "web_search_requests",
    "headers",
    "content-type",
    "content-encoding",
    "body",
    "json",
    "text",
    "base64",
    "extends",
    "ops",
    "encoding",
    "string",
    "method",
    "uri",
    "model",
    "content",
    "messages",
    "stream",
    "interactions",
    "format",
    "tests",
    "turns",
    "cost_usd",
    "cache_hit_rate",
    "cached_prefixes",
    "breakpoints",
    "tokens",
    "fingerprint",
    "schema_version",
    "defaults",
    "suite",
    "fail_on",
    "max_cost_usd",
    "min_cache_hit_rate",
    "models",
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "batch_multiplier",
    "inference_geo_multipliers",
    "prices",
    "baseline",
}

STATS: Counter[str] = Counter()


# --------------------------------------------------------------------------------------------
# the guard: time, memory, outcome


class Hang(Exception):
    """An example ran past its time limit."""


@contextlib.contextmanager
def _limits(target: str) -> Iterator[None]:
    """Fail the example past ``SECONDS`` (SIGALRM, then ``Hang``) or ``MEMORY`` of growth of the process."""

    def _alarm(signum: int, frame: Any) -> None:
        raise Hang(f"{target}: over {SECONDS} s")

    before = _memory_before()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, SECONDS)
    started = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - started
    grown = _status_kb("VmHWM") * 1024 - before
    STATS[f"{target}:max_ms"] = max(STATS[f"{target}:max_ms"], round(elapsed * 1000))
    STATS[f"{target}:max_mb"] = max(STATS[f"{target}:max_mb"], grown // 2**20)
    assert grown < MEMORY, f"{target}: the process grew by {grown / 2**20:.0f} MB"


def _judge(target: str, run: Callable[[], Any]) -> Any:
    """Run one example: a TokenBudgetError (rendered, one message) or a result; anything else fails."""
    STATS[f"{target}:examples"] += 1
    refused: TokenBudgetError | None = None
    try:
        with _limits(target):
            result = run()
    except TokenBudgetError as error:
        refused = error
    except Hang:
        STATS[f"{target}:hangs"] += 1
        raise
    except Exception:
        STATS[f"{target}:tracebacks"] += 1
        raise
    if refused is None:
        STATS[f"{target}:results"] += 1
        return result
    text = refused.render()
    assert text.startswith("tokenbudget: "), text
    assert "Traceback" not in text, text
    assert "During handling" not in text, text
    assert refused.file or refused.test, f"{target}: the error names no file: {text}"
    STATS[f"{target}:errors"] += 1
    return None


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _memory_before() -> int:
    """Resident bytes now, with the peak reset to it (Linux: ``5`` into clear_refs resets VmHWM).

    Where that is refused, the process's lifetime peak stands in: a looser bound.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return _status_kb("VmRSS") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(scope="module", autouse=True)
def _stats() -> Iterator[None]:
    try:
        yield
    finally:
        out = os.environ.get("TB_FUZZ_STATS")
        if out:
            with open(out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(dict(sorted(STATS.items()))) + "\n")


# --------------------------------------------------------------------------------------------
# mutations


def _paths(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value in ``data`` (bodies included), depth-first."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*path, key)
            yield from _paths(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield (*path, index)
            yield from _paths(value, (*path, index))


def _with(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``data`` with the value at ``path`` replaced (``None`` with ``delete`` deletes it)."""
    out = copy.deepcopy(data)
    node = out
    for part in path[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()
_PLACEHOLDER = "__tokenbudget_fuzz__"


def _bomb(levels: int) -> str:
    """Anchors ``&b0`` .. ``&b{levels}``, each nine aliases of the one before (a "billion laughs")."""
    lines = ['_b0: &b0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"_b{n}: &b{n} [{', '.join([f'*b{n - 1}'] * 9)}]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _dump(data: Any, kind: str) -> str:
    if kind == "json":
        return json.dumps(data, indent=1, default=str)
    return yaml.safe_dump(_settable(data), sort_keys=False, allow_unicode=True, width=120)


def _settable(data: Any) -> Any:
    """``frozenset`` as ``set`` (what ``safe_dump`` writes as ``!!set``)."""
    if isinstance(data, frozenset):
        return set(data)
    if isinstance(data, dict):
        return {key: _settable(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_settable(value) for value in data]
    return data


MUTATIONS = ("truncate", "flip", "insert", "delete_key", "swap", "swap_targeted", "alias_bomb", "deep", "huge", "twice")
BYTE_MUTATIONS = ("truncate", "flip", "insert")


@st.composite
def mutated(draw: st.DrawFn, seeds: list[tuple[str, str]], kind: str, hows: tuple[str, ...] = MUTATIONS) -> bytes:
    """A seed file, mutated one way (or two): the bytes to write."""
    name, text = draw(st.sampled_from(seeds))
    raw = text.encode("utf-8")
    how = draw(st.sampled_from(hows))
    if how == "twice":  # a structural change, then a byte-level one
        raw = draw(mutated([(name, text)], kind, tuple(h for h in hows if h != "twice")))
        how = draw(st.sampled_from(BYTE_MUTATIONS if raw else ("insert",)))
    if how == "truncate":
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    if how == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    if how == "insert":
        at = draw(st.integers(0, len(raw)))
        junk = draw(
            st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\n  - ", b": ", b"{", b"&a ", b"*a"])
        )
        return raw[:at] + junk + raw[at:]
    data = _parse_seed(text, kind)
    paths = list(_paths(data))
    if how in ("delete_key", "swap", "huge", "deep", "alias_bomb"):
        path = draw(st.sampled_from(paths))
    else:
        aimed = [p for p in paths if isinstance(p[-1], str) and p[-1] in TARGETED] or paths
        path = draw(st.sampled_from(aimed))
    if how == "delete_key":
        return _dump(_with(data, path, _DELETE), kind).encode("utf-8")
    if how in ("swap", "swap_targeted"):
        value = draw(st.sampled_from(SWAPS))
        return _dump(_with(data, path, _DELETE if value is None and draw(st.booleans()) else value), kind).encode()
    if how == "huge":
        literal = draw(st.sampled_from(["9" * 5000, "1e999", "-1e999", "1" + "0" * 400, "0." + "0" * 400 + "1"]))
        return (
            _dump(_with(data, path, _PLACEHOLDER), kind)
            .replace(json.dumps(_PLACEHOLDER), literal)
            .replace(_PLACEHOLDER, literal)
            .encode()
        )
    if how == "deep":
        depth = draw(st.sampled_from([30, 100, 250, 999, 1001, 5000, 50000]))
        literal = "[" * depth + "]" * depth
        return (
            _dump(_with(data, path, _PLACEHOLDER), kind)
            .replace(json.dumps(_PLACEHOLDER), literal)
            .replace(_PLACEHOLDER, literal)
            .encode()
        )
    # alias bomb (YAML only; in JSON the anchors are plain junk)
    levels = draw(st.integers(2, 9))
    body = _dump(_with(data, path, _PLACEHOLDER), "yaml").replace(_PLACEHOLDER, f"*b{levels}")
    if isinstance(data, dict):
        return (_bomb(levels) + body).encode()
    return (f"- {_bomb(levels).replace(chr(10), chr(10) + '  ')}\n" + body).encode()


_PARSED: dict[tuple[str, str], Any] = {}


def _parse_seed(text: str, kind: str) -> Any:
    key = (text, kind)
    if key not in _PARSED:
        _PARSED[key] = json.loads(text) if kind == "json" else yaml.safe_load(text)
    return _PARSED[key]


# --------------------------------------------------------------------------------------------
# seeds


def _vcrpy_seeds() -> list[tuple[str, str]]:
    """Our seed cassettes in vcrpy's YAML and JSON layouts, gzip bodies as !!binary."""
    import gzip

    from vcr.serializers import jsonserializer, yamlserializer

    seeds = []
    cassette = load_cassette(SEED_CASSETTES[0])
    interactions = []
    for item in cassette.interactions[:3]:
        interactions.append(
            {
                "request": {
                    "method": item.method,
                    "uri": item.uri,
                    "body": item.request_body.raw.decode("utf-8"),
                    "headers": {k: [v] for k, v in item.request_headers.items()},
                },
                "response": {
                    "status": {"code": item.status, "message": item.reason or "OK"},
                    "headers": {**{k: list(v) for k, v in item.response_headers.items()}, "content-encoding": ["gzip"]},
                    "body": {"string": gzip.compress(item.response_body.raw, mtime=0)},
                },
            }
        )
    document = {"interactions": interactions, "version": 1}
    seeds.append(("vcrpy.yaml", yamlserializer.serialize(document)))
    for entry in interactions:
        entry["response"]["headers"].pop("content-encoding")
        entry["response"]["body"]["string"] = gzip.decompress(entry["response"]["body"]["string"]).decode()
    seeds.append(("vcrpy.json", jsonserializer.serialize(document)))
    return seeds


def _cassette_seeds() -> list[tuple[str, str]]:
    seeds = [(p.name, p.read_text("utf-8")) for p in SEED_CASSETTES]
    seeds += _vcrpy_seeds()
    if REAL_CASSETTES.is_dir():
        real = sorted(REAL_CASSETTES.rglob("*.yaml"), key=lambda p: p.stat().st_size)
        seeds += [(p.name, p.read_text("utf-8")) for p in real[:: max(len(real) // 4, 1)][:4]]
    return seeds


CASSETTES = _cassette_seeds()
YAML_CASSETTES = [s for s in CASSETTES if not s[0].endswith(".json")]
JSON_CASSETTES = [s for s in CASSETTES if s[0].endswith(".json")]
BASELINE = [("tokenbudget-baseline.json", (ROOT / "tokenbudget-baseline.json").read_text("utf-8"))]


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    """A pricer with genai-prices' data loaded (its first import is slow and large: not the example's cost)."""
    loaded = Pricer()
    for seed in SEED_CASSETTES:
        for turn in turns_from(load_cassette(seed).interactions).turns:
            loaded.price(turn)
    return loaded


def _fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz", numbered=True)


# --------------------------------------------------------------------------------------------
# what each example runs, and what a correct result is


def _check_totals(totals: Any) -> None:
    for name in (
        "turns",
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    ):
        value = getattr(totals, name)
        assert type(value) is int, (name, value)
        assert value >= 0, (name, value)
    assert 0.0 <= totals.cache_hit_rate <= 1.0, totals.cache_hit_rate


def _report_cassette(path: Path, pricer: Pricer) -> Any:
    """What ``tokenbudget report --json -v`` and a replay do with a cassette, checked."""
    cassette = load_cassette(path)
    for interaction in cassette.interactions:
        playback_problem(interaction)  # must answer, not raise
    ledger = turns_from(cassette.interactions, source=str(path))
    entry = build_entry(path.name, path.name, ledger, pricer)
    report = build_report([entry], pricer.source.as_dict(), [])
    json.dumps(report_json(report), allow_nan=False)  # the JSON report has finite numbers only
    render_text(report, verbose=True)
    _check_totals(ledger.totals())
    for turn in ledger.turns:
        assert turn.recorded_at is None or math.isfinite(turn.recorded_at)
        turn.recorded_datetime  # noqa: B018 (must not overflow)
    if entry.cost_usd is not None:
        assert entry.cost_usd.is_finite(), entry.cost_usd
        assert entry.cost_usd >= 0, entry.cost_usd
    return entry


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


@settings(max_examples=2 * EXAMPLES, suppress_health_check=list(HealthCheck), deadline=None, derandomize=True)
@given(data=mutated(YAML_CASSETTES, "yaml") | mutated(JSON_CASSETTES, "json"))
@example(data=(_bomb(9) + "interactions: *b9\n").encode())  # the issue's 28 KB bomb, shrunk
@example(data=b"interactions:\n- request: {method: POST, uri: 'http://x/v1/messages'}\n  response: {status: 200}\n")
@example(  # the issue's TypeError: !!binary as the model of our format's body
    data=SEED_CASSETTES[-1].read_bytes().replace(b"model: claude", b"model: !!binary aGVsbG8= #", 2)
)
def test_mutated_cassettes(data: bytes, tmp_path_factory: pytest.TempPathFactory, pricer: Pricer) -> None:
    """A mutated cassette is a CassetteError naming the file, or a report with sane numbers."""
    path = _write(_fresh(tmp_path_factory), "test_x.json" if data.lstrip()[:1] in (b"{", b"[") else "test_x.yaml", data)
    _judge("cassette", lambda: _report_cassette(path, pricer))


def _baseline_round_trip(path: Path) -> Any:
    entries = load_baseline(path)
    assert entries is not None
    for entry in entries.values():
        compare(entry, entry, Budget())
        assert min(entry.turns, entry.output_tokens, entry.uncached_input_tokens, entry.cache_read_input_tokens) >= 0
        assert entry.cost_usd is None or entry.cost_usd.is_finite(), entry.cost_usd
        assert entry.cost_usd is None or entry.cost_usd >= 0, entry.cost_usd
        assert math.isfinite(entry.cache_hit_rate)
    again = path.with_name("again.json")
    write_baseline(again, entries)
    assert load_baseline(again) == entries  # what is read is what is written back
    return entries


@settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck), deadline=None, derandomize=True)
@given(data=mutated(BASELINE, "json"))
@example(data=b'{"schema_version": 1, "tests": {"t": {"turns": 1e999}}}')
@example(data=b"[" * 100000)
def test_mutated_baselines(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A mutated baseline is a ConfigError naming the file, or entries that round-trip."""
    path = _write(_fresh(tmp_path_factory), "tokenbudget-baseline.json", data)
    _judge("baseline", lambda: _baseline_round_trip(path))


def _config(path: Path, explicit: str | None) -> Any:
    config = load_config(path.parent, explicit)
    budget = config.budget_for("tests/test_agent.py::test_refund_ticket")
    for value in (budget.max_cost_usd, budget.max_cost_increase_usd):
        assert value is None or (isinstance(value, Decimal) and value.is_finite() and value >= 0)
    return config


@settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck), deadline=None, derandomize=True)
@given(data=mutated([("tokenbudget.yaml", CONFIG)], "yaml"))
@example(data=(_bomb(9) + "defaults: *b9\n").encode())
@example(data=b"defaults: !!set {max_cost_usd}\n")
def test_mutated_configs(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A mutated tokenbudget.yaml is a ConfigError naming the file, or a config with sane budgets."""
    path = _write(_fresh(tmp_path_factory), "tokenbudget.yaml", data)
    _judge("config", lambda: _config(path, "tokenbudget.yaml"))


@settings(max_examples=EXAMPLES // 2, suppress_health_check=list(HealthCheck), deadline=None, derandomize=True)
@given(data=mutated([("pyproject.toml", PYPROJECT)], "toml", BYTE_MUTATIONS))
@example(data=b"[tool.tokenbudget]\nbaseline = \xff\n")
@example(data=b"[tool.tokenbudget]\nprices = " + b"[" * 5000 + b"]" * 5000 + b"\n")
def test_mutated_pyproject(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A mutated pyproject.toml is a ConfigError naming the file, or a config with sane budgets."""
    path = _write(_fresh(tmp_path_factory), "pyproject.toml", data)
    _judge("pyproject", lambda: _config(path, None))


def _prices(path: Path, pricer: Pricer) -> Any:
    custom = Pricer(override_files=[path])
    ledger = turns_from(load_cassette(SEED_CASSETTES[-1]).interactions)
    for turn in ledger.turns:
        try:
            cost = custom.price(turn)
        except TokenBudgetError:
            continue  # no price for the model: named, not a crash
        assert cost.cost_usd.is_finite(), cost.cost_usd
        assert cost.cost_usd >= 0, cost.cost_usd
    return custom


@settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck), deadline=None, derandomize=True)
@given(data=mutated([("tokenbudget-prices.yaml", PRICES)], "yaml"))
@example(data=(_bomb(9) + "models: *b9\n").encode())
@example(data=b"models:\n  claude-sonnet-4-6: {input_mtok: .nan, output_mtok: .inf}\n")
def test_mutated_prices(data: bytes, tmp_path_factory: pytest.TempPathFactory, pricer: Pricer) -> None:
    """A mutated price file is a PriceError naming the file, or prices that are finite and not negative."""
    path = _write(_fresh(tmp_path_factory), "tokenbudget-prices.yaml", data)
    _judge("prices", lambda: _prices(path, pricer))


# --------------------------------------------------------------------------------------------
# the loader itself


def test_the_alias_bomb_of_the_issue_fails_fast() -> None:
    """A 28 KB cassette holding a billion-laughs alias bomb in a request body is refused in well under a second."""
    seed = yaml.safe_load(SEED_CASSETTES[0].read_text("utf-8"))
    seed["interactions"][0]["request"]["body"] = {"json": _PLACEHOLDER}
    text = _bomb(9) + yaml.safe_dump(seed, sort_keys=False).replace(_PLACEHOLDER, "*b9")
    started = time.perf_counter()
    with pytest.raises(LoadProblem) as caught:
        parse_yaml(text, max_depth=200, binary=True)
    assert time.perf_counter() - started < 1.0
    assert caught.value.why.startswith("YAML aliases expand the document past "), caught.value.why
    assert caught.value.why.endswith("(the limit is twice the written size, or 10,000 more): an alias bomb?")
