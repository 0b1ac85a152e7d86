"""GitHub Actions error annotations for a failing test: where they point, and how they are written.

A failing test gets one annotation on its own line and, when its request departs from the
recording and the new text can be found in the repository's source (a string literal in a
module, or a prompt file), one on the line of that text. Paths are relative to the repository
root (``GITHUB_WORKSPACE``, else the git work tree, else pytest's rootdir), because GitHub
places an annotation by its path from the repository root: a project in a subfolder
(``working-directory``) otherwise points at the wrong file.

The annotations are computed where the test ran (an xdist worker has the request) and printed
by the controller (a worker's stdout does not reach the log): they travel on the test report as
plain data (:class:`Annotation` as a dict).

Knows nothing of pytest.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .prefix import Difference
from .record import Recorder

__all__ = ["Annotation", "annotations_for", "commands", "find_text", "first_change", "repository_root", "value_at"]

# Files a prompt may live in, besides the test module.
_PROMPT_SUFFIXES = frozenset({".py", ".txt", ".md", ".prompt", ".j2", ".jinja", ".jinja2", ".yaml", ".yml", ".json"})
_SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".mypy_cache", "site-packages"})
_MAX_FILES = 2000
_MAX_BYTES = 1_000_000
# Windows of the new text around the first changed character, longest first: a window is found
# in a source line when the prompt is written there literally (escapes and concatenation aside).
_WINDOWS = (60, 40, 24, 16)


@dataclass(frozen=True)
class Annotation:
    """One ``::error`` line: file (from the repository root), 1-based line, title, message."""

    file: str
    line: int
    title: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Annotation:
        return cls(str(data["file"]), int(data["line"]), str(data["title"]), str(data["message"]))

    def command(self) -> str:
        """The workflow command GitHub reads from the log."""
        return (
            f"::error file={_property(self.file)},line={self.line},title={_property(self.title)}::{_data(self.message)}"
        )


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


@cache
def _git_root(directory: str) -> Path | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=directory, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(done.stdout.strip()).resolve() if done.returncode == 0 and done.stdout.strip() else None


def repository_root(start: Path, fallback: Path) -> Path:
    """The repository root for annotation paths: ``GITHUB_WORKSPACE`` when ``start`` is under it,
    else the git work tree holding ``start``, else ``fallback`` (pytest's rootdir)."""
    start = start.resolve()
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if workspace and start.is_relative_to(Path(workspace).resolve()):
        return Path(workspace).resolve()
    root = _git_root(str(start if start.is_dir() else start.parent))
    return root if root is not None else fallback.resolve()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


_PART = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def value_at(document: Any, path: str) -> Any:
    """The value at a JSON path as :func:`pytest_tokenbudget.prefix.format_path` writes it
    (``system[0].text``, ``metadata["user id"]``); ``None`` when it is not there."""
    position = 0
    value = document
    while position < len(path):
        match = _PART.match(path, position)
        if match is None:
            return None
        position = match.end()
        name, index, quoted = match.groups()
        key: str | int = int(index) if index is not None else (json.loads(quoted) if quoted is not None else name)
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _needles(text: str, offset: int) -> Iterator[str]:
    """Pieces of ``text`` around ``offset``, within its line, longest first."""
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    end = len(text) if end < 0 else end
    line = text[start:end]
    if line.strip() and len(line) <= _WINDOWS[0]:
        yield line.strip()
    at = offset - start
    for width in _WINDOWS:
        left = max(0, min(at - width // 2, len(line) - width))
        piece = line[left : left + width].strip()
        if len(piece) >= 8:
            yield piece


def _tracked(root: Path) -> list[Path] | None:
    """The files git tracks under ``root`` (``None`` outside a git work tree)."""
    try:
        done = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return [root / name for name in sorted(done.stdout.decode("utf-8", "replace").split("\0")) if name]


def _walked(root: Path, skip: Path | None) -> Iterator[Path]:
    for directory, names, files in os.walk(root):
        names[:] = sorted(
            n
            for n in names
            if n not in _SKIP_DIRS and not n.startswith(".") and (skip is None or Path(directory, n) != skip)
        )
        yield from (Path(directory, name) for name in sorted(files))


def _candidates(first: Path, root: Path, skip: Path | None) -> Iterator[Path]:
    """The test module, then the prompt files under ``root``: those git tracks when it is a work
    tree (not the reports this run writes), our own report files and the cassettes left out."""
    yield first
    tracked = _tracked(root)
    count = 0
    for path in tracked if tracked is not None else _walked(root, skip):
        if path == first or path.suffix not in _PROMPT_SUFFIXES or path.name.startswith("tokenbudget-"):
            continue
        if skip is not None and path.is_relative_to(skip):
            continue
        count += 1
        if count > _MAX_FILES:
            return
        yield path


def find_text(text: str, offset: int, files: Iterable[Path]) -> tuple[Path, int] | None:
    """The first file and 1-based line holding a piece of ``text`` around ``offset``."""
    needles = list(dict.fromkeys(_needles(text, offset)))
    if not needles:
        return None
    for path in files:
        try:
            if path.stat().st_size > _MAX_BYTES:
                continue
            lines = path.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for needle in needles:
            for number, line in enumerate(lines, 1):
                if needle in line:
                    return path, number
    return None


def annotations_for(
    *,
    test_name: str,
    test_file: Path,
    test_line: int,
    message: str,
    rootdir: Path,
    change: tuple[Difference, Any] | None = None,
    skip_dir: Path | None = None,
) -> list[Annotation]:
    """The annotations of a failing test.

    Args:
        test_name: the test's name (the title).
        test_file: its module, absolute.
        test_line: the 1-based line of the test.
        message: the failure, as pytest shows it.
        rootdir: pytest's rootdir (the fallback root, and where prompt files are looked for).
        change: the first difference from the recording and the request body now sent, when a
            request departs from its recording.
        skip_dir: a directory not to search for prompts (the cassettes).
    """
    root = repository_root(test_file, rootdir)
    title = f"token budget: {test_name}"
    out = [Annotation(_relative(test_file, root), test_line, title, message)]
    if change is None:
        return out
    difference, request = change
    new = value_at(request, difference.path)
    if not isinstance(new, str):
        return out
    offset = difference.offset if difference.offset is not None else 0
    found = find_text(new, offset, _candidates(test_file, rootdir, skip_dir))
    if found is not None:
        path, line = found
        out.append(
            Annotation(
                _relative(path, root),
                line,
                f"{title}: the prompt changed here",
                f"the request now departs from its recording at {difference.describe()}\n"
                f"(test {test_name}; see its annotation for the budget it breaks)",
            )
        )
    return out


def commands(annotations: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``::error`` lines of annotations carried as dicts."""
    return [Annotation.from_dict(a).command() for a in annotations]


def first_change(recorder: Recorder) -> tuple[Difference, Any] | None:
    """The first request of a recorder that departs from its recording: (difference, body now sent)."""
    for departure in recorder.departures:
        if departure.difference is not None:
            return departure.difference, departure.request.try_json()
    return None
