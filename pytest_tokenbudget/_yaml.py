"""The one safe loader for every file a user (or a pull request) can hand us: YAML and JSON.

Cassettes, the baseline, the config file and price files are committed to repositories and read
in CI, so they are untrusted input. Everything read goes through this module, which bounds what
a file may cost before any of it is used (issue 16):

* **size**: a file larger than its limit is refused before it is read
  (:data:`MAX_CASSETTE_BYTES` for cassettes, :data:`MAX_CONFIG_BYTES` for the rest);
* **depth**: collections nested deeper than the limit are refused (Python's own parsers and
  every recursive walk after them would otherwise end in ``RecursionError``; libyaml stops at
  1,000 levels);
* **aliases**: YAML anchors and aliases are accepted (PyYAML's dumper writes them for shared
  objects) but what they expand to is bounded: a document may not grow, through aliases, past
  twice its written size (or 10,000 nodes more, whichever is larger). An alias bomb (a
  "billion laughs" of nested aliases) is refused in milliseconds; a cycle (``&a [*a]``) is
  refused too;
* **types**: only the JSON types are built (strings, numbers, booleans, null, mappings,
  lists), plus ``!!binary`` in cassettes, where vcrpy writes gzip bodies with it. ``!!set``,
  ``!!omap``, ``!!pairs``, ``!!timestamp`` and any ``!custom`` tag are refused at their line;
  a plain scalar that looks like a date (``2025-01-01``) stays a string, so a date where a
  number is expected is the schema's clear "is not of type number".

The functions raise :class:`LoadProblem`: what is wrong plus the line and character offset when
known; each caller turns it into its own :class:`~pytest_tokenbudget.errors.TokenBudgetError`
(file, interaction, fix). YAML itself is imported when a file is first read.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml

__all__ = [
    "MAX_CASSETTE_BYTES",
    "MAX_CASSETTE_DEPTH",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "LoadProblem",
    "check_depth",
    "parse_json",
    "parse_yaml",
    "read_bytes",
    "read_text",
]

# A 200-turn agent cassette in our format is a few MB; vcrpy's (a full body per turn) tens of MB.
MAX_CASSETTE_BYTES = 256 * 1024 * 1024
# Config, prices and the baseline: a baseline of 10,000 tests is about 10 MB.
MAX_CONFIG_BYTES = 64 * 1024 * 1024
# Request bodies are stored parsed in our cassettes: tool input schemas and structured tool
# results nest, but not past a few dozen levels. libyaml refuses 1,000 on its own.
MAX_CASSETTE_DEPTH = 200
MAX_CONFIG_DEPTH = 32

# What aliases may add: twice the written document, or this many nodes, whichever is larger.
_ALIAS_ALLOWANCE = 10_000
# A scalar weighs one node per this many characters (an alias to a long string copies it).
_SCALAR_CHARS = 100

_STR = "tag:yaml.org,2002:str"
_JSON_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq", "merge")
)
_BINARY = "tag:yaml.org,2002:binary"
# Old vcrpy cassettes (Python 2 era) tag some strings; vcrpy still reads them as strings.
_PYTHON_STR = frozenset(("tag:yaml.org,2002:python/str", "tag:yaml.org,2002:python/unicode"))


def _allowed(binary: bool) -> frozenset[str]:
    return _JSON_TAGS | ({_BINARY} | _PYTHON_STR if binary else frozenset())


class LoadProblem(Exception):
    """A file is not acceptable input: ``why``, and where (``line`` from 1, ``offset`` in characters)."""

    def __init__(self, why: str, *, line: int | None = None, offset: int | None = None) -> None:
        self.why = why
        self.line = line
        self.offset = offset
        super().__init__(why)


def read_bytes(path: Path | str, *, max_bytes: int) -> bytes:
    """The bytes of a file, refusing one larger than ``max_bytes`` before reading it.

    Raises:
        FileNotFoundError: there is no such file (callers decide whether that is an error).
        LoadProblem: it is a directory, cannot be read, or is too large.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise LoadProblem(
                    f"the file is {size:,} bytes, over the {max_bytes:,}-byte limit for this kind of file"
                )
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise LoadProblem("it is a directory, not a file") from None
    except OSError as err:
        raise LoadProblem(f"cannot be read: {err.strerror or err}") from None
    if len(data) > max_bytes:  # grew while being read, or a special file with no size
        raise LoadProblem(f"the file is over the {max_bytes:,}-byte limit for this kind of file")
    return data


def read_text(path: Path | str, *, max_bytes: int) -> str:
    """A file's UTF-8 text (see :func:`read_bytes`); invalid UTF-8 is a :class:`LoadProblem` naming the line."""
    return decode(read_bytes(path, max_bytes=max_bytes))


def decode(data: bytes) -> str:
    """``data`` as UTF-8 text; invalid UTF-8 is a :class:`LoadProblem` naming its line and byte offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise LoadProblem(
            f"not UTF-8 text: byte {err.start} ({data[err.start : err.start + 1]!r}) on line {line}",
            line=line,
            offset=len(data[: err.start].decode("utf-8", "replace")),
        ) from None


# --------------------------------------------------------------------------------------------
# YAML

_LOADERS: dict[bool, Any] = {}


def _loader_class(binary: bool) -> Any:
    """A libyaml (or pure-Python) loader building only the accepted types; dates stay strings."""
    cached = _LOADERS.get(binary)
    if cached is not None:
        return cached
    import yaml

    parser: Any = getattr(importlib.import_module("yaml.cyaml"), "CParser", None) if yaml.__with_libyaml__ else None
    if parser is None:  # PyYAML without libyaml
        from yaml.composer import Composer
        from yaml.parser import Parser
        from yaml.reader import Reader
        from yaml.scanner import Scanner

        bases: tuple[type, ...] = (Reader, Scanner, Parser, Composer)
    else:
        bases = (parser,)

    class _Resolver(yaml.resolver.Resolver):
        pass

    # A copy of the implicit resolvers without the timestamp one: ``2025-01-01`` is a string.
    _Resolver.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
    }

    class _Constructor(yaml.constructor.SafeConstructor):
        pass

    # Only the accepted tags have constructors; the node walk refuses the others first, with
    # their line, so this is a second lock.
    allowed = _allowed(binary)
    _Constructor.yaml_constructors = {
        tag: constructor
        for tag, constructor in yaml.constructor.SafeConstructor.yaml_constructors.items()
        if tag in allowed
    }
    for tag in allowed & _PYTHON_STR:
        _Constructor.yaml_constructors[tag] = yaml.constructor.SafeConstructor.construct_yaml_str
    _Constructor.yaml_constructors[None] = yaml.constructor.SafeConstructor.construct_undefined

    def __init__(self: Any, stream: str) -> None:
        if parser is None:
            bases[0].__init__(self, stream)  # type: ignore[misc]
            for base in bases[1:]:
                base.__init__(self)  # type: ignore[misc]
        else:
            parser.__init__(self, stream)
        _Constructor.__init__(self)
        _Resolver.__init__(self)

    loader = type("_SafeLoader", (*bases, _Constructor, _Resolver), {"__init__": __init__})
    _LOADERS[binary] = loader
    return loader


def _where(node: yaml.Node) -> dict[str, int]:
    return {"line": node.start_mark.line + 1, "offset": node.start_mark.index}


def _inspect(root: yaml.Node, *, max_depth: int, binary: bool) -> None:
    """Walk the composed node graph once: tags, depth, cycles and alias expansion.

    Aliases make one node reachable along several paths; ``weight`` of a node is what it
    expands to (memoised per node, so a bomb is measured in time linear in the written nodes).
    """
    import yaml

    allowed = _allowed(binary)
    weight: dict[int, int] = {}
    on_path: set[int] = set()
    written = 0
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            if isinstance(node, yaml.MappingNode):
                total = 1 + sum(weight[id(k)] + weight[id(v)] for k, v in node.value)
            else:
                total = 1 + sum(weight[id(child)] for child in node.value)
            weight[key] = total  # an int: a bomb's weight is a big number, computed in no time
            continue
        if key in weight:
            continue
        if key in on_path:
            raise LoadProblem("a YAML alias refers to a collection that contains it (a cycle)", **_where(node))
        if node.tag not in allowed:
            raise LoadProblem(_tag_problem(node.tag, binary), **_where(node))
        if depth > max_depth:
            raise LoadProblem(f"nested more than {max_depth} levels deep", **_where(node))
        if isinstance(node, yaml.ScalarNode):
            written += 1 + len(node.value) // _SCALAR_CHARS
            weight[key] = 1 + len(node.value) // _SCALAR_CHARS
            continue
        written += 1
        on_path.add(key)
        stack.append((node, depth, True))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                stack.append((key_node, depth + 1, False))
                stack.append((value_node, depth + 1, False))
        else:
            stack.extend((child, depth + 1, False) for child in node.value)
    total = weight[id(root)]
    limit = 2 * written + _ALIAS_ALLOWANCE
    if total > limit:
        # Name the line of the smallest collection that alone expands past the limit.
        culprit = min(_walk(root), key=lambda n: (weight[id(n)] <= limit, weight[id(n)]))
        raise LoadProblem(
            f"YAML aliases expand the document past {total:,} nodes from {written:,} written "
            f"(the limit is twice the written size, or {_ALIAS_ALLOWANCE:,} more): an alias bomb?",
            **_where(culprit),
        )


def _walk(root: yaml.Node) -> Iterator[yaml.Node]:
    """Each collection node of the graph once."""
    import yaml

    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen or isinstance(node, yaml.ScalarNode):
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, yaml.MappingNode):
            stack.extend(child for pair in node.value for child in pair)
        else:
            stack.extend(node.value)


def _tag_problem(tag: str, binary: bool) -> str:
    short = tag.replace("tag:yaml.org,2002:", "!!")
    accepted = "strings, numbers, booleans, null, mappings and lists" + (" (and !!binary)" if binary else "")
    return f"YAML tag {short} is not accepted here: only {accepted}"


def parse_yaml(text: str, *, max_depth: int, binary: bool = False) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document safely; return its data and its node tree (for line numbers).

    Args:
        text: the document.
        max_depth: the deepest nesting accepted.
        binary: accept ``!!binary`` (bytes): cassettes only.

    Returns:
        ``(None, None)`` for an empty document.

    Raises:
        LoadProblem: the text is not YAML, holds a refused tag, nests too deep, expands too
            much through aliases, or has an unhashable key.
    """
    import yaml

    loader = _loader_class(binary)(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            problem = err.problem or err.context or str(err).splitlines()[0]
            if "maximum nesting depth" in str(err):
                problem = f"nested more than {max_depth} levels deep"
            raise LoadProblem(
                f"invalid YAML: {problem}",
                line=mark.line + 1 if mark is not None else None,
                offset=mark.index if mark is not None else None,
            ) from None
        except yaml.YAMLError as err:
            raise LoadProblem(f"invalid YAML: {str(err).splitlines()[0]}") from None
        except RecursionError:  # the pure-Python composer (no libyaml) recurses per level
            raise LoadProblem(f"nested more than {max_depth} levels deep") from None
        if root is None:
            return None, None
        _inspect(root, max_depth=max_depth, binary=binary)
        try:
            data = loader.construct_document(root)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            raise LoadProblem(
                f"invalid YAML value: {err.problem or err.context}",
                line=mark.line + 1 if mark is not None else None,
                offset=mark.index if mark is not None else None,
            ) from None
        except (yaml.YAMLError, ValueError, TypeError) as err:  # e.g. bad base64 in !!binary
            raise LoadProblem(f"invalid YAML value: {str(err).splitlines()[0]}") from None
    finally:
        loader.dispose()
    return data, root


# --------------------------------------------------------------------------------------------
# JSON


def parse_json(text: str | bytes, *, max_depth: int) -> Any:
    """Parse JSON, refusing nesting deeper than ``max_depth``.

    NaN and infinities are read (Python's ``json`` does); callers that need finite numbers
    check them where they read the value.

    Raises:
        LoadProblem: not JSON (line and offset named), or nested too deep.
    """
    try:
        data = json.loads(text)
    except RecursionError:
        raise LoadProblem(f"nested more than {max_depth} levels deep") from None
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise LoadProblem(f"invalid JSON: {err.msg} ({where})", line=err.lineno, offset=err.pos) from None
    except ValueError as err:  # bytes that are not UTF-8
        raise LoadProblem(f"invalid JSON: {err}") from None
    check_depth(data, max_depth)
    return data


def check_depth(data: Any, max_depth: int) -> None:
    """Refuse parsed data whose lists and mappings nest deeper than ``max_depth`` (iterative walk).

    Raises:
        LoadProblem: too deep.
    """
    if not isinstance(data, dict | list):
        return
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise LoadProblem(f"nested more than {max_depth} levels deep")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
