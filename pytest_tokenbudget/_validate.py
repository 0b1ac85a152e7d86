"""Reading a user's YAML file against a JSON Schema, with errors that name the key, file and line.

Every document validated here (the config file, markers, the baseline, price files) is first
walked for numbers that are not finite: NaN and infinities pass a JSON Schema ``minimum`` (every
comparison with NaN is false), and YAML (``.nan``), TOML (``nan``) and Python's ``json``
(``NaN``, ``Infinity``, ``1e999``) all read them. :func:`schema_problems` refuses them, one
rule for every file; the schemas bound the rest (counts, rates, USD).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import TokenBudgetError

if TYPE_CHECKING:  # YAML and the path formatter load when a file is first read
    import yaml


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``pytest_tokenbudget/schemas/``."""
    text = resources.files("pytest_tokenbudget").joinpath(f"schemas/{name}").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(schema_name: str) -> Any:
    # jsonschema costs ~30 ms to import: loaded when a file or marker is first checked.
    import jsonschema

    return jsonschema.Draft202012Validator(schema(schema_name))


def json_path(path: Sequence[Any]) -> str:
    """``models["claude-opus-4-5"].input_mtok`` style; ``$`` for the document."""
    from .prefix import format_path

    return format_path([p if isinstance(p, int) else str(p) for p in path])


def load_yaml(
    path: Path | str,
    schema_name: str,
    error: type[TokenBudgetError],
    *,
    what: str,
    fix: str,
    text: str | None = None,
) -> tuple[Any, yaml.Node]:
    """Parse a YAML (or JSON) file and validate it; return the data and its node tree (for lines).

    Raises:
        ``error``: the file cannot be read, is not YAML, is empty, repeats a key, or breaks the
            schema; the message names the file, the line, the JSON path of the bad key, and
            for an unknown key the nearest accepted one.
    """
    from ._yaml import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, LoadProblem, parse_yaml, read_text

    where = str(path)
    try:
        if text is None:
            try:
                text = read_text(path, max_bytes=MAX_CONFIG_BYTES)
            except FileNotFoundError as err:
                raise LoadProblem(str(err)) from None
    except LoadProblem as problem:
        line = f", line {problem.line}" if problem.line else ""
        raise error(f"{what} cannot be read", file=where + line, why=problem.why, fix=fix) from None
    try:
        data, root = parse_yaml(text, max_depth=MAX_CONFIG_DEPTH)
    except LoadProblem as problem:
        line = f", line {problem.line}" if problem.line else ""
        syntax = problem.why.startswith("invalid YAML")
        raise error(
            f"{what} is not valid YAML" if syntax else f"{what} is invalid",
            file=where + line,
            why=problem.why.removeprefix("invalid YAML: "),
            fix="fix the YAML syntax" if syntax else fix,
        ) from None
    if root is None:
        raise error(f"{what} is empty", file=where, why="no document in the file", fix=fix)
    check_keys(root, where, error, what)
    problems = schema_problems(data, root, schema_name)
    if problems:
        first_line, first = problems[0]
        raise error(
            f"{what} is invalid ({len(problems)} problem{'s' if len(problems) > 1 else ''})",
            file=where + (f", line {first_line}" if first_line else ""),
            why=first,
            details=[f"also: line {n}: {message}" if n else f"also: {message}" for n, message in problems[1:]],
            fix=f"correct the key or value (the schema is pytest_tokenbudget/schemas/{schema_name})",
        )
    return data, root


def check_keys(
    node: yaml.Node, where: str, error: type[TokenBudgetError], what: str, path: tuple[str | int, ...] = ()
) -> None:
    """Reject non-string and repeated mapping keys (PyYAML keeps the last one silently)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
                raise error(
                    f"{what} is invalid",
                    file=f"{where}, line {line}",
                    why=f"{json_path(path)}: key {key_node.value!r} is not a string",
                    fix="quote the key",
                )
            if key_node.value in seen:
                raise error(
                    f"{what} is invalid",
                    file=f"{where}, line {line}",
                    why=f"{json_path((*path, key_node.value))}: repeated key (first on line {seen[key_node.value]})",
                    fix="keep one of the two entries",
                )
            seen[key_node.value] = line
            check_keys(value_node, where, error, what, (*path, key_node.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            check_keys(item, where, error, what, (*path, index))


def _is_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, Decimal) and not value.is_finite()


def non_finite(data: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """``(path, value)`` of every NaN or infinite number (float or Decimal) anywhere in ``data``, in order."""
    if _is_non_finite(data):
        yield path, data
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from non_finite(value, (*path, key if isinstance(key, int) else str(key)))
    elif isinstance(data, list | tuple):
        for index, item in enumerate(data):
            yield from non_finite(item, (*path, index))


def _nulled(data: Any) -> Any:
    """``data`` with every non-finite number replaced by ``None`` (comparing a Decimal NaN raises)."""
    if _is_non_finite(data):
        return None
    if isinstance(data, Mapping):
        return {key: _nulled(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_nulled(item) for item in data]
    if isinstance(data, tuple):
        return tuple(_nulled(item) for item in data)
    return data


def schema_problems(
    data: Any,
    root: yaml.Node | None,
    schema_name: str,
    *,
    locate: Callable[[Sequence[str | int]], int | None] | None = None,
) -> list[tuple[int | None, str]]:
    """Every schema violation, and every number that is not finite, as ``(line, message)``, sorted by line.

    Lines come from ``locate(path)`` when given (a JSON or TOML file), else from the YAML node
    tree ``root``. A non-finite value gets one message, not also the schema's for that value
    (the schema sees it as ``null``).
    """
    where = locate if locate is not None else lambda path: line_of(root, path)
    problems: list[tuple[int | None, str]] = []
    refused: set[tuple[str | int, ...]] = set()
    for path, value in non_finite(data):
        refused.add(path)
        shown = repr(value) if isinstance(value, float) else str(value)
        problems.append((where(path), f"{json_path(path)}: {shown} is not a finite number"))
    validator = _validator(schema_name)
    for err in validator.iter_errors(_nulled(data) if refused else data):
        path = tuple(err.absolute_path)
        if path in refused:
            continue
        if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
            allowed = sorted(err.schema.get("properties", {})) if isinstance(err.schema, Mapping) else []
            for key in sorted(str(k) for k in err.instance if k not in allowed):
                hint = difflib.get_close_matches(key, allowed, n=1)
                problems.append(
                    (
                        where((*path, key)),
                        f"{json_path((*path, key))}: unknown key {key!r}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; accepted: {', '.join(allowed)}",
                    )
                )
        elif "propertyNames" in err.schema_path:
            key = str(err.instance)
            problems.append(
                (
                    where((*path, key)),
                    f"{json_path((*path, key))}: bad key {key!r} ({err.schema.get('description', err.message)})",
                )
            )
        else:
            problems.append((where(path), f"{json_path(path)}: {err.message}"))
    return sorted(problems, key=lambda p: (p[0] or 0, p[1]))


def line_of(root: yaml.Node | None, path: Sequence[str | int]) -> int | None:
    """The line (from 1) of the key at ``path``, or of the document when ``path`` is empty."""
    if root is None:
        return None
    import yaml

    node = root
    line = root.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    line, node = key_node.start_mark.line + 1, value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def json_line_of(text: str, path: Sequence[str | int]) -> int | None:
    """The line (from 1) of the key (or array item) at ``path`` in the JSON document ``text``.

    ``None`` when the path is not in the text or the text is not JSON. Of a key given twice, the
    last one counts (as ``json.loads`` keeps it). Values on the way are skipped by the standard
    decoder, so the cost is one scan of the text, paid only when a problem is reported.
    """
    decoder = json.JSONDecoder()

    def space(at: int) -> int:
        match = _JSON_SPACE.match(text, at)
        return match.end() if match else at

    at = found = space(0)
    try:
        for part in path:
            if text.startswith("{", at):
                at, target = space(at + 1), None
                while not text.startswith("}", at):
                    key_at = at
                    key, at = decoder.raw_decode(text, at)
                    at = space(at)
                    if not text.startswith(":", at):
                        return None
                    at = space(at + 1)
                    if key == str(part):
                        target = (key_at, at)
                    at = space(decoder.raw_decode(text, at)[1])
                    if text.startswith(",", at):
                        at = space(at + 1)
                if target is None:
                    return None
                found, at = target
            elif text.startswith("[", at) and isinstance(part, int):
                at = space(at + 1)
                for _ in range(part):
                    at = space(decoder.raw_decode(text, at)[1])
                    if not text.startswith(",", at):
                        return None
                    at = space(at + 1)
                if text.startswith("]", at):
                    return None
                found = at
            else:
                return None
    except ValueError:
        return None
    return text.count("\n", 0, found) + 1
