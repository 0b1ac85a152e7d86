"""Fitting terminal lines to a width: shorten names in the middle, wrap prose, keep commands whole.

Three rules (issue 15, item 5):

- a name the user reads but need not copy (a node id, a cassette path) too long for its room is
  shortened in the *middle* with ``…``, so its start (the folder) and its end (the test name) stay;
- prose (a gate message, a reason) is wrapped at spaces onto indented continuation lines, never cut;
- a command the user copies (``pytest …``, ``tokenbudget …``) is never shortened nor broken: it goes
  whole on a line of its own, which may be longer than the width (the terminal wraps it, and a
  copy of it still runs).

``width=None`` everywhere means "no limit" (the lines as they were before widths were known).
"""

from __future__ import annotations

import re
import shutil

__all__ = ["ELLIPSIS", "shorten_middle", "terminal_width", "wrap"]

ELLIPSIS = "…"

# Where a command the user must copy starts inside a message: it runs to the end of the message
# (accept_command and the update hints put it last).
_COMMAND = re.compile(r"(?:^|(?<=\s))(?:pytest|tokenbudget) (?=\S)")


def terminal_width() -> int:
    """The terminal's width for the CLI: ``COLUMNS`` first, then the terminal, else 80."""
    return shutil.get_terminal_size((80, 24)).columns


def shorten_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, its middle replaced by ``…`` when too long.

    The end gets the larger part and, where it fits, the whole last segment after ``::`` or ``/``
    (the test name, the cassette's file name), with at least a quarter of the room kept for the start.
    """
    if len(text) <= width:
        return text
    if width <= 0:
        return ""
    keep = width - 1
    tail = keep - keep // 2
    anchor = max(text.rfind("::"), text.rfind("/"))
    if anchor > 0:
        tail = max(tail, min(len(text) - anchor, keep - keep // 4))
    head = keep - tail
    return text[:head] + ELLIPSIS + (text[len(text) - tail :] if tail else "")


def wrap(text: str, width: int | None, *, first: str = "", rest: str | None = None) -> list[str]:
    """``first + text`` wrapped at spaces into lines of at most ``width`` (continuations start
    with ``rest``, default: ``first`` and two more spaces).

    A word longer than the room stays whole (a path, a URL), and a command (``pytest …``,
    ``tokenbudget …``) to the end of ``text`` is one unbreakable piece on a line of its own when
    it does not fit after the words before it.
    """
    line = first + text
    if width is None or len(line) <= width:
        return [line]
    rest = first + "  " if rest is None else rest
    match = _COMMAND.search(text)
    prose, command = (text[: match.start()], text[match.start() :]) if match else (text, "")
    pieces = prose.split()
    if command:
        pieces.append(command)
    lines: list[str] = []
    current, empty = first, True
    for piece in pieces:
        candidate = current + piece if empty else current + " " + piece
        if empty or len(candidate) <= width:
            current, empty = candidate, False
            continue
        lines.append(current)
        current = rest + piece
    lines.append(current)
    return lines
