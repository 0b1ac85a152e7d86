"""A deterministic coding agent whose transcript grows the way real agent transcripts do.

Every request re-sends a ~16 KB system prompt (with ``cache_control``), eight tools with rich
JSON schemas (the last one with ``cache_control``) and the whole conversation so far, and asks
for top-level automatic caching (``cache_control={"type": "ephemeral"}``). Every turn the model
calls a tool and the agent answers with a tool result of about 4 KB of varied text, so request
``k`` is about ``k * 4 KB`` longer than the first one.

Everything is a pure function of the turn number (``random.Random`` seeded per turn, no clock,
no environment), so two recordings of the same run send the same bytes.
"""

from __future__ import annotations

import json
import random
from typing import Any, cast

import anthropic
from anthropic.types import MessageParam, TextBlockParam, ToolParam

from pytest_tokenbudget.emulator import Reply

__all__ = [
    "MODEL",
    "SYSTEM",
    "TOOLS",
    "final_answer",
    "replies",
    "run_agent",
    "tool_call",
    "tool_result",
]

MODEL = "claude-sonnet-4-5"
MAX_TOKENS = 4096
TASK = "The nightly build of the payments service fails in test_refund_rounding. Find the cause and fix it."
SYSTEM_BYTES = 16_000
RESULT_BYTES = 4_000

_VOCABULARY = (
    "agent account adapter audit balance batch buffer build cache call cancel charge check client commit config "
    "context currency cursor customer deadline debit decimal deploy diff domain draft entry error event export "
    "fixture flag format gateway handler header index invoice job journal key ledger limit lock log merchant "
    "message method migration mock module network order owner parser patch payload payment pending policy "
    "price queue quota rate record refund region release report request response retry review rounding route "
    "schema scope service session settle shard signal snapshot source state status stream sum table task tax "
    "tenant test thread token total trace transfer update user value vendor version wallet webhook worker"
)
_WORDS = _VOCABULARY.split()


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def _system_prompt() -> str:
    rng = random.Random(1)
    parts = [
        "You are a senior software engineer working in the payments monorepo. You fix failing builds "
        "by reading code, running tests and editing files with the tools you are given. Think before "
        "each tool call, keep edits minimal, and never touch files outside the repository.\n"
    ]
    section = 0
    while sum(len(p) for p in parts) < SYSTEM_BYTES:
        section += 1
        parts.append(f"\n## Guideline {section}: {_sentence(rng, 4)}\n")
        for item in range(1, 5):
            parts.append(f"{item}. {_sentence(rng, rng.randint(12, 24))}\n")
    return "".join(parts)[:SYSTEM_BYTES]


SYSTEM: list[dict[str, Any]] = [
    {"type": "text", "text": _system_prompt(), "cache_control": {"type": "ephemeral"}},
]


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _tools() -> list[dict[str, Any]]:
    path = _string("Path relative to the repository root, e.g. services/payments/refund.py.")
    tools: list[dict[str, Any]] = [
        {
            "name": "read_file",
            "description": "Read a file of the repository, optionally a range of lines. Returns the text "
            "with line numbers. Use it before editing a file; large files are truncated at 2,000 lines.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "path": path,
                    "start_line": {"type": "integer", "minimum": 1, "description": "First line, from 1."},
                    "end_line": {"type": "integer", "minimum": 1, "description": "Last line, inclusive."},
                    "encoding": _string("Text encoding.", enum=["utf-8", "latin-1"], default="utf-8"),
                },
                "required": ["path"],
                "additionalProperties": False,
            },
        },
        {
            "name": "search_code",
            "description": "Search the repository with a regular expression (ripgrep syntax). Returns matching "
            "lines with their file and line number, at most max_results of them.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "pattern": _string("Regular expression."),
                    "glob": _string("Only files matching this glob, e.g. '**/*.py'."),
                    "case_sensitive": {"type": "boolean", "default": True},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    "context_lines": {"type": "integer", "minimum": 0, "maximum": 10, "default": 2},
                },
                "required": ["pattern"],
            },
        },
        {
            "name": "run_tests",
            "description": "Run the test suite or a selection of it with pytest and return the output: "
            "the summary, failures with their tracebacks, and captured logs of failing tests.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "selection": {"type": "array", "items": _string("A node id or a path."), "maxItems": 50},
                    "keyword": _string("A -k expression."),
                    "markers": _string("A -m expression."),
                    "fail_fast": {"type": "boolean", "default": False},
                    "timeout_seconds": {"type": "integer", "minimum": 10, "maximum": 3600, "default": 600},
                    "environment": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Extra environment variables for the run.",
                    },
                },
            },
        },
        {
            "name": "edit_file",
            "description": "Replace an exact, unique snippet of a file by another. Fails when the snippet is "
            "missing or appears more than once; read the file first and quote enough context.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "path": path,
                    "old_text": _string("The exact text to replace, unique in the file."),
                    "new_text": _string("The replacement text."),
                    "expected_replacements": {"type": "integer", "minimum": 1, "default": 1},
                },
                "required": ["path", "old_text", "new_text"],
                "additionalProperties": False,
            },
        },
        {
            "name": "list_directory",
            "description": "List a directory of the repository: names, sizes and kinds, optionally recursive "
            "down to a depth. Ignores files excluded by .gitignore.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "path": path,
                    "depth": {"type": "integer", "minimum": 1, "maximum": 6, "default": 1},
                    "include_hidden": {"type": "boolean", "default": False},
                    "sort": _string("Sort order.", enum=["name", "size", "modified"], default="name"),
                },
                "required": ["path"],
            },
        },
        {
            "name": "git_log",
            "description": "Show the commit history of a path: hash, author, date and subject, newest first; "
            "with patch=true also each commit's diff of that path.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "path": path,
                    "max_count": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
                    "since": _string("ISO date, e.g. 2026-01-31.", format="date"),
                    "author": _string("Only commits by this author (substring)."),
                    "patch": {"type": "boolean", "default": False},
                },
            },
        },
        {
            "name": "query_database",
            "description": "Run a read-only SQL query against the staging replica of the payments database "
            "and return at most 200 rows as a table. Writes are refused.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "sql": _string("A single SELECT statement."),
                    "parameters": {
                        "type": "array",
                        "items": {"type": ["string", "number", "boolean", "null"]},
                        "description": "Positional parameters for $1, $2...",
                    },
                    "database": _string("Which replica.", enum=["payments", "ledger", "reporting"]),
                    "row_limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                },
                "required": ["sql", "database"],
            },
        },
        {
            "name": "fetch_logs",
            "description": "Fetch log lines of a service from the log store for a time window, filtered by "
            "level and an optional text query. Returns timestamped lines, oldest first.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "service": _string("Service name.", enum=["payments-api", "refund-worker", "ledger-sync"]),
                    "start": _string("Start of the window, RFC 3339.", format="date-time"),
                    "end": _string("End of the window, RFC 3339.", format="date-time"),
                    "level": _string("Minimum level.", enum=["debug", "info", "warning", "error"]),
                    "query": _string("Free-text filter."),
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 200},
                },
                "required": ["service", "start", "end"],
            },
            "cache_control": {"type": "ephemeral"},
        },
    ]
    return tools


TOOLS: list[dict[str, Any]] = _tools()
_TOOL_NAMES = [str(tool["name"]) for tool in TOOLS]


def tool_call(turn: int) -> tuple[str, dict[str, Any], str]:
    """The tool the model calls on ``turn`` (from 0): name, input, and the text before the call."""
    rng = random.Random(10_000 + turn)
    name = _TOOL_NAMES[turn % len(_TOOL_NAMES)]
    module = f"services/payments/{rng.choice(_WORDS)}_{rng.choice(_WORDS)}.py"
    inputs: dict[str, dict[str, Any]] = {
        "read_file": {"path": module, "start_line": 1 + 40 * (turn % 7), "end_line": 120 + 40 * (turn % 7)},
        "search_code": {"pattern": rf"def {rng.choice(_WORDS)}_\w+\(", "glob": "**/*.py", "max_results": 50},
        "run_tests": {"selection": [f"tests/test_{rng.choice(_WORDS)}.py"], "fail_fast": turn % 2 == 0},
        "edit_file": {"path": module, "old_text": _sentence(rng, 6), "new_text": _sentence(rng, 7)},
        "list_directory": {"path": f"services/{rng.choice(_WORDS)}", "depth": 1 + turn % 3},
        "git_log": {"path": module, "max_count": 10 + turn % 20, "patch": turn % 3 == 0},
        "query_database": {
            "sql": f"SELECT id, amount FROM {rng.choice(_WORDS)}s WHERE id = $1",
            "parameters": [turn],
            "database": "payments",
        },
        "fetch_logs": {
            "service": "refund-worker",
            "start": "2026-03-01T00:00:00Z",
            "end": "2026-03-01T06:00:00Z",
            "level": "warning",
        },
    }
    return name, inputs[name], f"Step {turn + 1}: {_sentence(rng, 10)}"


def tool_result(turn: int, name: str) -> str:
    """What the tool returns on ``turn``: about 4 KB of text that differs every turn."""
    rng = random.Random(20_000 + turn)
    lines: list[str] = [f"# {name} (turn {turn + 1})"]
    size = len(lines[0])
    number = 0
    while size < RESULT_BYTES:
        number += 1
        if name in ("read_file", "edit_file", "git_log"):
            indent = " " * (4 * rng.randint(0, 3))
            line = f"{number:4d}  {indent}{rng.choice(_WORDS)}_{rng.choice(_WORDS)} = {_sentence(rng, 5)}"
        elif name in ("search_code", "list_directory"):
            line = f"services/{rng.choice(_WORDS)}/{rng.choice(_WORDS)}.py:{rng.randint(1, 900)}: {_sentence(rng, 8)}"
        elif name == "query_database":
            line = json.dumps(
                {
                    "id": rng.randint(1, 10**9),
                    "amount": f"{rng.randint(0, 99999) / 100:.2f}",
                    "state": rng.choice(_WORDS),
                    "note": _sentence(rng, 6),
                }
            )
        else:
            line = (
                f"2026-03-01T0{rng.randint(0, 5)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}Z "
                f"{rng.choice(['WARNING', 'ERROR'])} {_sentence(rng, 10)}"
            )
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)[:RESULT_BYTES]


def final_answer() -> str:
    """The model's last message."""
    return "The refund rounding used float arithmetic; it now uses Decimal with ROUND_HALF_EVEN. All tests pass."


def replies(turns: int) -> list[Reply]:
    """The emulator script of a run: ``turns`` tool calls, then the final answer."""
    script = []
    for turn in range(turns):
        name, arguments, text = tool_call(turn)
        script.append(Reply.tool_use(name, arguments, text=text))
    script.append(Reply.text(final_answer()))
    return script


def run_agent(client: anthropic.Anthropic, turns: int) -> int:
    """Run the agent loop until the model stops calling tools; return the number of requests sent.

    Raises:
        RuntimeError: the model called a tool other than the scripted one, or did not stop.
    """
    messages: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
    for request in range(turns + 2):
        response = client.messages.create(
            model=MODEL,
            max_tokens=MAX_TOKENS,
            system=cast("list[TextBlockParam]", SYSTEM),
            tools=cast("list[ToolParam]", TOOLS),
            messages=cast("list[MessageParam]", messages),
            cache_control={"type": "ephemeral"},
        )
        messages.append(
            {
                "role": "assistant",
                "content": [block.model_dump(mode="json", exclude_none=True) for block in response.content],
            }
        )
        calls = [block for block in response.content if block.type == "tool_use"]
        if response.stop_reason != "tool_use" or not calls:
            return request + 1
        results = []
        for call in calls:
            if call.name != tool_call(request)[0]:
                raise RuntimeError(f"turn {request}: unexpected tool {call.name!r}")
            results.append({"type": "tool_result", "tool_use_id": call.id, "content": tool_result(request, call.name)})
        messages.append({"role": "user", "content": results})
    raise RuntimeError(f"the model did not stop after {turns + 1} requests")
