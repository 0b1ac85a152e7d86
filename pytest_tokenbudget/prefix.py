"""The prompt prefix that prompt caching depends on, and where two requests first differ.

A Messages request is cached as one prefix: ``tools``, then ``system``, then ``messages``, block
by block (docs prompt-caching). :func:`layout_of` flattens a request body into that order, each
block in a canonical form that keeps what the API keeps (text, key order inside tool schemas and
tool inputs, images by digest) and ignores what it ignores (JSON whitespace, the
``cache_control`` markers). A rolling SHA-256 over the canonical blocks gives each block a
*fingerprint*: the hash of everything up to and including it, stable across processes,
machines and Python versions.

Settings that invalidate a whole cache level are folded into the chain where that level starts:
the model before ``tools``; ``speed`` before ``system``; ``tool_choice``, thinking, effort and the
number of images before ``messages`` (Anthropic docs: Prompt caching, "What invalidates the
cache"). An explicit default
(``tool_choice: auto``, ``thinking: disabled``) equals omitting it.

UNSURE: the prompt-caching docs list toggling web search/fetch or citations as invalidating system and
messages only; here a server tool is one of ``tools``, so adding or removing it changes every level,
and citations settings live in the blocks that carry them.

UNSURE (the docs do not say): what counts as one "block" for the 20-position lookback. Here a block
is one tool, one system block or one content block of a message; a string ``system`` or string
message ``content`` counts as one text block and is fingerprinted as if it were
``{"type": "text", "text": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "Block",
    "Breakpoint",
    "Difference",
    "LayoutMemo",
    "PromptLayout",
    "content_kind",
    "first_difference",
    "format_path",
    "is_server_tool_result",
    "layout_of",
    "level_of_path",
]

Level = Literal["tools", "system", "messages"]
Ttl = Literal["5m", "1h"]
LEVELS: tuple[Level, ...] = ("tools", "system", "messages")
TTL_SECONDS: dict[str, int] = {"5m": 300, "1h": 3600}

_FORMAT = b"tokenbudget-prefix/1"
# Block types the API refuses a cache_control on (the docs list the blocks that cannot be marked).
_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})
_EXCERPT = 32
_THINKING = frozenset({"thinking", "redacted_thinking"})
# Result blocks of Anthropic's server tools (docs: web search, web fetch, code execution tools).
_SERVER_TOOL_RESULTS = frozenset(
    {
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
    }
)
# Results that are not a server tool's: the client's own, and MCP connector results (run
# elsewhere; the docs' extra breakpoint is stated for server tools only).
_CLIENT_TOOL_RESULTS = frozenset({"tool_result", "mcp_tool_result"})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Block:
    """One cacheable position of the prefix.

    Attributes:
        index: position in the flattened prefix (tools, system, messages).
        level: ``tools``, ``system`` or ``messages``.
        path: JSON path of the block in the request, e.g. ``messages[3].content[1]``.
        kind: the block's ``type`` (``tool`` for a tool definition).
        canonical: the bytes that are hashed: compact JSON in sent key order, without
            ``cache_control``, images replaced by their digest.
        ttl: ``5m``/``1h`` when the block carries an explicit ``cache_control``, else ``None``.
        markable: whether the API accepts a ``cache_control`` on this block.
        images: images and documents inside the block.
        chars: characters of text content (used for token estimates).
        source: the block as sent.
    """

    index: int
    level: Level
    path: str
    kind: str
    canonical: bytes
    ttl: Ttl | None
    markable: bool
    images: int
    chars: int
    source: Any = field(repr=False, compare=False)


def is_server_tool_result(kind: str) -> bool:
    """Whether a content block type is a server tool's result (``web_search_tool_result``,
    ``web_fetch_tool_result``, ``code_execution_tool_result``, ``bash_code_execution_tool_result``...):
    a block the API wrote into the transcript itself, after its own ``server_tool_use``."""
    return kind in _SERVER_TOOL_RESULTS or (kind.endswith("_tool_result") and kind not in _CLIENT_TOOL_RESULTS)


def content_kind(block: Block) -> str:
    """What a block holds, for token densities: ``tools`` (a tool definition), ``text``,
    ``tool_use`` (server tool calls too), ``tool_result`` (server tool results too) or ``other``."""
    if block.level == "tools":
        return "tools"
    if block.kind in ("text", "tool_use", "tool_result"):
        return block.kind
    if block.kind == "server_tool_use":
        return "tool_use"
    return "tool_result" if is_server_tool_result(block.kind) else "other"


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A cache breakpoint: a block whose prefix may be written to (and read from) the cache.

    Attributes:
        block: index of the block the breakpoint sits on.
        level: the block's level.
        path: the block's JSON path.
        ttl: ``5m`` or ``1h``.
        automatic: placed by the top-level ``cache_control`` (or by the API) rather than on the block.
        fingerprint: hash of the prefix up to and including the block.
        by_api: the API's own breakpoint after a server tool result (``automatic`` too).
    """

    block: int
    level: Level
    path: str
    ttl: Ttl
    automatic: bool
    fingerprint: str
    by_api: bool = False


@dataclass(frozen=True, slots=True)
class PromptLayout:
    """A request's prefix as the cache sees it.

    Attributes:
        model: the requested model.
        blocks: the flattened blocks.
        chain: fingerprint after each block (``chain[i]`` covers blocks ``0..i``).
        breakpoints: explicit and automatic breakpoints, in prefix order.
        settings: per level, the settings folded into the chain where that level starts.
        problems: what the API would reject (400), e.g. five breakpoints.
    """

    model: str
    blocks: tuple[Block, ...]
    chain: tuple[str, ...]
    breakpoints: tuple[Breakpoint, ...]
    settings: Mapping[str, Mapping[str, Any]]
    problems: tuple[str, ...]
    level_starts: tuple[int, int, int] = (0, 0, 0)
    canonical_ends: tuple[int, ...] = ()

    def level_start(self, level: Level) -> int:
        """Index of the first block at or after ``level`` (``len(blocks)`` when none)."""
        return self.level_starts[LEVELS.index(level)]


# --------------------------------------------------------------------------------------------
# canonical form


def _digest_media(value: Any) -> tuple[Any, int]:
    """Replace base64 payloads of images/documents by their digest; count them."""
    if isinstance(value, dict):
        count = 0
        out: dict[str, Any] = {}
        kind = value.get("type")
        for key, item in value.items():
            if key == "cache_control":
                continue
            if key in ("input", "input_schema"):
                # Tool arguments and schemas are data: a key named cache_control there is no marker.
                out[key] = item
                continue
            if key == "source" and isinstance(item, dict) and kind in ("image", "document"):
                count += 1
                source = dict(item)
                data = source.get("data")
                if isinstance(data, str):
                    source["data"] = "sha256:" + hashlib.sha256(data.encode("utf-8")).hexdigest()
                out[key] = source
                continue
            new, inner = _digest_media(item)
            out[key] = new
            count += inner
        return out, count
    if isinstance(value, list):
        items = []
        count = 0
        for item in value:
            new, inner = _digest_media(item)
            items.append(new)
            count += inner
        return items, count
    return value, 0


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for k, v in value.items() if k not in ("type", "cache_control", "id"))
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return len(str(value)) if value is not None else 0


def _ttl_of(block: Any) -> Ttl | None:
    if not isinstance(block, dict):
        return None
    control = block.get("cache_control")
    if not isinstance(control, dict):
        return None
    return "1h" if control.get("ttl") == "1h" else "5m"


def _normalised_settings(body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    tool_choice = body.get("tool_choice")
    if isinstance(tool_choice, dict) and tool_choice == {"type": "auto"}:
        tool_choice = None
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "disabled":
        thinking = None
    output_config = body.get("output_config")
    effort = output_config.get("effort") if isinstance(output_config, dict) else None
    speed = body.get("speed")
    if speed == "standard":
        speed = None
    return {
        "tools": {"model": body.get("model")},
        "system": {"speed": speed},
        "messages": {"tool_choice": tool_choice, "thinking": thinking, "effort": effort},
    }


def _message_blocks(
    m: int, message: Any, drop_thinking: bool = False
) -> Iterator[tuple[Level, str, Any, str | None, bool, Any]]:
    if not isinstance(message, dict):
        yield "messages", f"messages[{m}]", message, "?", False, message
        return
    role: str | None = str(message.get("role"))
    content = message.get("content")
    if isinstance(content, str):
        yield "messages", f"messages[{m}].content", {"type": "text", "text": content}, role, False, content
    elif isinstance(content, list):
        for c, block in enumerate(content):
            if drop_thinking and isinstance(block, dict) and block.get("type") in _THINKING:
                continue  # stripped by the model: the message starts at its next block
            yield "messages", f"messages[{m}].content[{c}]", block, role, True, block
            role = None


def _head_blocks(body: Mapping[str, Any]) -> Iterator[tuple[Level, str, Any, str | None, bool, Any]]:
    """(level, path, block, role-if-first-block-of-a-message, explicit-markable, identity) of tools and system.

    ``identity`` is the object a block comes from (the string itself for string content), used
    by :class:`LayoutMemo` to recognise a block already seen in an earlier request.
    """
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            yield "tools", f"tools[{i}]", tool, None, True, tool
    system = body.get("system")
    if isinstance(system, str):
        if system:
            yield "system", "system", {"type": "text", "text": system}, None, False, system
    elif isinstance(system, list):
        for i, block in enumerate(system):
            yield "system", f"system[{i}]", block, None, True, block


def _is_empty_text(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "text" and not block.get("text")


_Entry = tuple[Block, bytes, int]  # the block, its hashed chunk, its images


@dataclass
class _Run:
    """What the memo keeps of a model's last layout, to resume from."""

    tools: Any
    system: Any
    settings_key: str
    messages: list[Any]
    message_starts: list[int]  # block index where message i starts; one more at the end
    message_images: list[int]  # images in tools, system and messages[:i]
    blocks: list[Block]
    chunks: list[bytes]
    stream: list[bytes]
    states: list[Any]
    ends: list[int]
    chain: list[str]
    canonical_ends: list[int]
    problems: list[tuple[int, str]]
    explicit: list[Breakpoint]
    level_starts: tuple[int, int, int]
    messages_seed: int | None  # position of the messages-level seed in the stream
    images: int


class LayoutMemo:
    """Work shared by the layouts of one run's requests.

    Turn k+1 of an agent re-sends turn k's blocks. When they are the very same objects (a
    replayed cassette shares them) the memo resumes from the model's last layout: the tools,
    system and leading messages it shares are not walked again, and the fingerprint chain
    continues from the saved hash state, so a layout costs what is new in it. Equal copies (a
    request parsed afresh: recording, the emulator) are recognised by the block's JSON text,
    which costs one C-speed ``json.dumps`` instead of the canonicalisation.
    """

    def __init__(self) -> None:
        self._blocks: dict[tuple[Any, ...], tuple[Any, Block, bytes, int]] = {}
        self._content: dict[tuple[Any, ...], _Entry] = {}
        self._runs: dict[str, _Run] = {}

    def block(
        self, index: int, level: Level, path: str, block: Any, role: str | None, explicit: bool, anchor: Any
    ) -> _Entry:
        key = (id(anchor), index, path, role, explicit)
        hit = self._blocks.get(key)
        if hit is not None and hit[0] is anchor:
            return hit[1], hit[2], hit[3]
        content_key = (role, explicit, level, _dumps(anchor))
        known = self._content.get(content_key)
        if known is not None:
            made = (replace(known[0], index=index, path=path), known[1], known[2])
        else:
            made = _make_block(index, level, path, block, role, explicit)
            self._content[content_key] = made
        # The anchor is kept alive with the entry, so its id cannot be reused.
        self._blocks[key] = (anchor, *made)
        return made


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + len(payload).to_bytes(8, "big") + payload


def _seed(level: Level, settings: Mapping[str, Mapping[str, Any]]) -> bytes:
    return _chunk(b"\x01", _dumps({"level": level, **settings[level]}).encode("utf-8"))


def layout_of(body: Mapping[str, Any], memo: LayoutMemo | None = None, *, drop_thinking: bool = False) -> PromptLayout:
    """Flatten a Messages (or count_tokens) request body into its cache prefix.

    Args:
        body: the parsed JSON request body.
        memo: reuse work across the requests of one run (optional; results are the same).
        drop_thinking: leave ``thinking``/``redacted_thinking`` blocks of the messages out of the
            prefix (the model strips them; see :func:`pytest_tokenbudget.cache_model.cache_layout`).
            The other blocks keep their paths.

    Returns:
        The layout: blocks, fingerprint chain, breakpoints and what the API would reject.
    """
    memo = memo if memo is not None else LayoutMemo()
    settings = _normalised_settings(body)
    settings_key = _dumps(settings) + ("\x00drop-thinking" if drop_thinking else "")
    model = str(body.get("model", ""))
    raw_messages = body.get("messages")
    messages: list[Any] = raw_messages if isinstance(raw_messages, list) else []
    tools, system = body.get("tools"), body.get("system")
    run = memo._runs.get(model)
    kept_messages = 0
    if run is not None and run.tools is tools and run.system is system and run.settings_key == settings_key:
        limit = min(len(messages), len(run.messages))
        while kept_messages < limit and messages[kept_messages] is run.messages[kept_messages]:
            kept_messages += 1
    else:
        run = None

    # Blocks: reuse the head and the leading messages the last layout shares, build the rest.
    if run is not None:
        kept_blocks = run.message_starts[kept_messages]
        blocks = run.blocks[:kept_blocks]
        chunks = run.chunks[:kept_blocks]
        message_starts = run.message_starts[: kept_messages + 1]
        message_images = run.message_images[: kept_messages + 1]
        level_starts = run.level_starts
        problems = [p for p in run.problems if p[0] < kept_blocks]
    else:
        kept_blocks = 0
        blocks, chunks, problems = [], [], []
        head_images = 0
        for level, path, block, role, explicit, anchor in _head_blocks(body):
            made, chunk, images = memo.block(len(blocks), level, path, block, role, explicit, anchor)
            blocks.append(made)
            chunks.append(chunk)
            head_images += images
            _check_block(made, problems)
        system_start = sum(1 for b in blocks if b.level == "tools")
        level_starts = (0, system_start, len(blocks))
        message_starts = [len(blocks)]
        message_images = [head_images]
    images = message_images[-1]
    for m in range(kept_messages, len(messages)):
        for level, path, block, role, explicit, anchor in _message_blocks(m, messages[m], drop_thinking):
            made, chunk, block_images = memo.block(len(blocks), level, path, block, role, explicit, anchor)
            blocks.append(made)
            chunks.append(chunk)
            images += block_images
            _check_block(made, problems)
        message_starts.append(len(blocks))
        message_images.append(images)
    settings["messages"]["images"] = images

    # The stream hashed: each level's settings where the level starts, then each block. Resume
    # from the last layout where the blocks and the seeds before them are unchanged.
    resume_blocks = kept_blocks
    if run is not None and run.images != images:
        resume_blocks = min(resume_blocks, level_starts[2])  # the messages-level seed changed
    if run is not None and resume_blocks > 0:
        shared = run.ends[resume_blocks - 1]
        if run.messages_seed is not None and run.messages_seed < shared and run.images != images:
            shared = run.messages_seed
        stream = run.stream[:shared]
        ends = run.ends[:resume_blocks]
        states = run.states[:shared]
        chain = run.chain[:resume_blocks]
        canonical_ends = run.canonical_ends[:resume_blocks]
        current: Level | None = blocks[resume_blocks - 1].level
        messages_seed = run.messages_seed if run.messages_seed is not None and run.messages_seed < shared else None
    else:
        shared = 0
        stream, ends, states, chain, canonical_ends = [], [], [], [], []
        current = None
        messages_seed = None
    state = states[-1].copy() if states else hashlib.sha256(_FORMAT)
    total_chars = canonical_ends[-1] if canonical_ends else 0
    for number in range(resume_blocks, len(blocks)):
        block = blocks[number]
        while current != block.level:
            # Fold the settings of each level reached, including empty levels skipped over.
            current = LEVELS[0] if current is None else LEVELS[LEVELS.index(current) + 1]
            seed = _seed(current, settings)
            if current == "messages":
                messages_seed = len(stream)
            stream.append(seed)
            state.update(seed)
            states.append(state.copy())
        stream.append(chunks[number])
        state.update(chunks[number])
        states.append(state.copy())
        ends.append(len(stream))
        chain.append(state.hexdigest()[:32])
        total_chars += max(1, len(block.canonical))
        canonical_ends.append(total_chars)

    explicit_points = [p for p in run.explicit if p.block < resume_blocks] if run is not None else []
    explicit_points.extend(
        Breakpoint(b.index, b.level, b.path, b.ttl, False, chain[b.index])
        for b in blocks[resume_blocks:]
        if b.ttl is not None and b.markable
    )
    problem_lines = [text for _index, text in problems]
    breakpoints = _breakpoints(body, blocks, chain, explicit_points, problem_lines)
    memo._runs[model] = _Run(
        tools=tools,
        system=system,
        settings_key=settings_key,
        messages=list(messages),
        message_starts=message_starts,
        message_images=message_images,
        blocks=blocks,
        chunks=chunks,
        stream=stream,
        states=states,
        ends=ends,
        chain=chain,
        canonical_ends=canonical_ends,
        problems=problems,
        explicit=explicit_points,
        level_starts=level_starts,
        messages_seed=messages_seed,
        images=images,
    )
    return PromptLayout(
        model=model,
        blocks=tuple(blocks),
        chain=tuple(chain),
        breakpoints=tuple(breakpoints),
        settings=settings,
        problems=tuple(problem_lines),
        level_starts=level_starts,
        canonical_ends=tuple(canonical_ends),
    )


def _check_block(block: Block, problems: list[tuple[int, str]]) -> None:
    if block.ttl is not None and not block.markable:
        if _is_empty_text(block.source):  # the API's own error wording
            problems.append((block.index, f"{block.path}: cache_control cannot be set for empty text blocks"))
        else:
            problems.append((block.index, f"{block.path}: cache_control cannot be set on a {block.kind} block"))


def _make_block(
    index: int, level: Level, path: str, block: Any, role: str | None, explicit: bool
) -> tuple[Block, bytes, int]:
    canon, images = _digest_media(block)
    head = f"{role}\x00" if role is not None else ""
    canonical = (head + _dumps(canon)).encode("utf-8")
    kind = "tool" if level == "tools" else str(block.get("type") if isinstance(block, dict) else "?")
    made = Block(
        index=index,
        level=level,
        path=path,
        kind=kind,
        canonical=canonical,
        ttl=_ttl_of(block) if explicit else None,
        markable=kind not in _UNMARKABLE and not _is_empty_text(block),
        images=images,
        chars=_text_chars(canon) if images == 0 else _text_chars(_strip_media(canon)),
        source=block,
    )
    return made, _chunk(b"\x02", canonical), images


def _strip_media(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_media(v) for k, v in value.items() if k != "source"}
    if isinstance(value, list):
        return [_strip_media(v) for v in value]
    return value


def _breakpoints(
    body: Mapping[str, Any],
    blocks: Sequence[Block],
    chain: Sequence[str],
    explicit: Sequence[Breakpoint],
    problems: list[str],
) -> list[Breakpoint]:
    points = list(explicit)
    automatic = body.get("cache_control")
    if isinstance(automatic, dict) and blocks:
        ttl: Ttl = "1h" if automatic.get("ttl") == "1h" else "5m"
        # The automatic breakpoint goes on the last cacheable block, walking back over blocks
        # that cannot hold one (as the API places its automatic breakpoint).
        target = next((b for b in reversed(blocks) if b.markable), None)
        if target is not None:
            if target.ttl is not None:
                if target.ttl != ttl:
                    problems.append(
                        f"top-level cache_control ttl {ttl} conflicts with {target.ttl} already on {target.path}"
                    )
            elif len(points) >= 4:
                problems.append("top-level cache_control needs a free slot, but 4 blocks already have one")
            else:
                points.append(Breakpoint(target.index, target.level, target.path, ttl, True, chain[target.index]))
    points.sort(key=lambda p: p.block)
    if len(points) > 4:
        problems.append(f"A maximum of 4 blocks with cache_control may be provided. Found {len(points)}.")
    seen_5m = False
    for point in points:
        if point.ttl == "5m":
            seen_5m = True
        elif seen_5m:
            problems.append(
                f"{point.path}: a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
            )
            break
    if points:
        # Server tools: when a request has any cache_control, the API adds its own 5m breakpoint
        # after each server tool result (docs: tool use with prompt caching). UNSURE (the docs do
        # not say): whether these count against the 4 breakpoints (here: no, they are the API's),
        # and whether one also goes on a result that carries the user's own marker (here: the
        # user's marker stands, with its TTL).
        taken = {p.block for p in points}
        points.extend(
            Breakpoint(b.index, b.level, b.path, "5m", True, chain[b.index], by_api=True)
            for b in blocks
            if b.level == "messages" and is_server_tool_result(b.kind) and b.index not in taken
        )
        points.sort(key=lambda p: p.block)
    return points


# --------------------------------------------------------------------------------------------
# first difference

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def format_path(parts: Sequence[str | int]) -> str:
    """Render path parts as ``messages[4].content[1]`` (quoted keys where needed)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):  # match() would accept a trailing newline ("$")
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out or "$"


def level_of_path(path: str) -> str:
    """The cache level a JSON path belongs to: tools, system, messages, model, or settings."""
    head = re.split(r"[.\[]", path, maxsplit=1)[0]
    if head in ("tools", "system", "messages", "model"):
        return head
    return "settings"


@dataclass(frozen=True, slots=True)
class Difference:
    """Where a new request first departs from the recorded one.

    Attributes:
        path: JSON path of the first differing value, e.g. ``system[0].text``.
        offset: character offset inside that value when both sides are strings, else ``None``.
        before: excerpt of the recorded value around the difference.
        after: excerpt of the new value around the difference.
        kind: ``changed``, ``added``, ``removed``, ``type`` or ``reordered``.
    """

    path: str
    offset: int | None
    before: str
    after: str
    kind: str

    @property
    def level(self) -> str:
        """The cache level of :attr:`path` (``tools``, ``system``, ``messages``, ``model``, ``settings``)."""
        return level_of_path(self.path)

    def describe(self) -> str:
        """One line: path, offset and the before/after excerpts."""
        where = self.path + (f", offset {self.offset}" if self.offset is not None else "")
        if self.kind == "added":
            return f"{where}: added {self.after}"
        if self.kind == "removed":
            return f"{where}: removed {self.before}"
        return f"{where}: {self.before} -> {self.after}"


def _excerpt_value(value: Any) -> str:
    text = value if isinstance(value, str) else _dumps(value)
    text = json.dumps(text, ensure_ascii=False) if isinstance(value, str) else text
    return text if len(text) <= 2 * _EXCERPT + 8 else text[: 2 * _EXCERPT] + "…"


def _string_difference(path: str, old: str, new: str) -> Difference:
    limit = min(len(old), len(new))
    offset = next((i for i in range(limit) if old[i] != new[i]), limit)
    start = max(0, offset - _EXCERPT)

    def cut(text: str) -> str:
        piece = text[start : offset + _EXCERPT]
        shown = json.dumps(piece, ensure_ascii=False)
        return ("…" if start > 0 else "") + shown + ("…" if offset + _EXCERPT < len(text) else "")

    return Difference(path, offset, cut(old), cut(new), "changed")


def first_difference(old: Any, new: Any) -> Difference | None:
    """The first place, in document order, where ``new`` departs from ``old``.

    Dictionaries are compared in key order (a reordered key is a difference: it changes the
    bytes the cache hashes); strings give the character offset of the first differing character.

    Args:
        old: the recorded value (parsed JSON).
        new: the new value (parsed JSON).

    Returns:
        ``None`` when both are equal, key order included.
    """
    return _walk(old, new, [])


def _walk(old: Any, new: Any, parts: list[str | int]) -> Difference | None:
    if type(old) is not type(new) and not (_is_number(old) and _is_number(new)):
        return Difference(format_path(parts), None, _excerpt_value(old), _excerpt_value(new), "type")
    if isinstance(old, dict):
        old_keys = list(old)
        new_keys = list(new)
        for i in range(max(len(old_keys), len(new_keys))):
            ok = old_keys[i] if i < len(old_keys) else None
            nk = new_keys[i] if i < len(new_keys) else None
            if ok == nk and ok is not None:
                found = _walk(old[ok], new[nk], [*parts, ok])
                if found is not None:
                    return found
                continue
            if ok is not None and ok not in new:
                return Difference(format_path([*parts, ok]), None, _excerpt_value(old[ok]), "", "removed")
            if nk is not None and nk not in old:
                return Difference(format_path([*parts, nk]), None, "", _excerpt_value(new[nk]), "added")
            return Difference(
                format_path(parts),
                None,
                "keys " + ", ".join(map(str, old_keys[i : i + 4])),
                "keys " + ", ".join(map(str, new_keys[i : i + 4])),
                "reordered",
            )
        return None
    if isinstance(old, list):
        for i in range(min(len(old), len(new))):
            found = _walk(old[i], new[i], [*parts, i])
            if found is not None:
                return found
        if len(old) > len(new):
            return Difference(format_path([*parts, len(new)]), None, _excerpt_value(old[len(new)]), "", "removed")
        if len(new) > len(old):
            return Difference(format_path([*parts, len(old)]), None, "", _excerpt_value(new[len(old)]), "added")
        return None
    if isinstance(old, str):
        return None if old == new else _string_difference(format_path(parts), old, new)
    if old == new and type(old) is type(new) and (not isinstance(old, float) or _dumps(old) == _dumps(new)):
        return None  # floats by their bytes: 0.0 and -0.0 are equal but hash differently
    return Difference(format_path(parts), None, _excerpt_value(old), _excerpt_value(new), "changed")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
