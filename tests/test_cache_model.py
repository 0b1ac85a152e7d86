"""The prompt prefix (prefix.py) and the caching rules (cache_model.py): unit and property tests."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pytest_tokenbudget.cache_model import (
    LOOKBACK_BLOCKS,
    CacheStore,
    diagnose,
    minimum_cacheable,
    simulate,
)
from pytest_tokenbudget.prefix import LayoutMemo, PromptLayout, first_difference, format_path, layout_of, level_of_path

MODEL = "claude-sonnet-4-6"
EPHEMERAL = {"type": "ephemeral"}
EPHEMERAL_1H = {"type": "ephemeral", "ttl": "1h"}
NOW = 1_800_000_000.0


def text(value: str, cache_control: dict[str, str] | None = None) -> dict[str, Any]:
    """A text block, optionally marked."""
    block: dict[str, Any] = {"type": "text", "text": value}
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block


def body_with_system(*blocks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A request whose prefix is the given system blocks then one user message."""
    return {
        "model": MODEL,
        "max_tokens": 10,
        "system": list(blocks),
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }


# -------------------------------------------------------------------------------- strategies

# Text without surrogates (they cannot be sent as UTF-8), short, any script.
words = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)


@st.composite
def tools(draw: st.DrawFn) -> dict[str, Any]:
    """A tool definition with a small input schema."""
    properties = draw(st.dictionaries(names, st.sampled_from([{"type": "string"}, {"type": "integer"}]), max_size=3))
    return {
        "name": draw(names),
        "description": draw(words),
        "input_schema": {"type": "object", "properties": properties},
    }


@st.composite
def content_blocks(draw: st.DrawFn) -> dict[str, Any]:
    """A message content block: text, tool_use, tool_result or image."""
    kind = draw(st.sampled_from(["text", "text", "tool_use", "tool_result", "image"]))
    if kind == "text":
        return {"type": "text", "text": draw(words)}
    if kind == "tool_use":
        return {
            "type": "tool_use",
            "id": "toolu_" + draw(names),
            "name": draw(names),
            "input": draw(st.dictionaries(names, words | st.integers() | st.floats(allow_nan=False), max_size=3)),
        }
    if kind == "tool_result":
        return {"type": "tool_result", "tool_use_id": "toolu_" + draw(names), "content": draw(words)}
    return {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": draw(st.from_regex(r"[A-Za-z0-9+/]{4,16}", fullmatch=True)),
        },
    }


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A Messages request body: tools, a system list and 1-4 messages of 1-3 blocks (or a string)."""
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 100}
    tool_list = draw(st.lists(tools(), max_size=3))
    if tool_list:
        body["tools"] = tool_list
    system = draw(st.lists(words.map(text), max_size=3))
    if system:
        body["system"] = system
    messages = []
    for i in range(draw(st.integers(1, 4))):
        role = "user" if i % 2 == 0 else "assistant"
        if draw(st.booleans()):
            messages.append({"role": role, "content": draw(words)})
        else:
            messages.append({"role": role, "content": draw(st.lists(content_blocks(), min_size=1, max_size=3))})
    body["messages"] = messages
    return body


def mutable_strings(body: dict[str, Any]) -> list[tuple[int, list[str | int]]]:
    """(block index, JSON path of one string inside it) for every block of ``body``, in prefix order."""
    out: list[tuple[int, list[str | int]]] = []
    for i, _tool in enumerate(body.get("tools", [])):
        out.append((len(out), ["tools", i, "description"]))
    for i, _block in enumerate(body.get("system", [])):
        out.append((len(out), ["system", i, "text"]))
    for m, message in enumerate(body["messages"]):
        if isinstance(message["content"], str):
            out.append((len(out), ["messages", m, "content"]))
            continue
        for c, block in enumerate(message["content"]):
            field = {"text": ["text"], "tool_use": ["name"], "tool_result": ["content"], "image": ["source", "data"]}[
                block["type"]
            ]
            out.append((len(out), ["messages", m, "content", c, *field]))
    return out


def get_path(value: Any, path: list[str | int]) -> Any:
    """The value at ``path``."""
    for part in path:
        value = value[part]
    return value


def set_path(value: Any, path: list[str | int], new: Any) -> None:
    """Set the value at ``path``."""
    for part in path[:-1]:
        value = value[part]
    value[path[-1]] = new


def strip_markers(value: Any) -> Any:
    """``value`` without any cache_control key."""
    if isinstance(value, dict):
        return {k: strip_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [strip_markers(v) for v in value]
    return value


# -------------------------------------------------------------------------------- fingerprints


@given(body=bodies(), indent=st.sampled_from([None, 2]), ascii_only=st.booleans())
@settings(max_examples=150)
def test_fingerprints_survive_key_order_preserving_reserialisation(
    body: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    """Re-serialising with other whitespace or escaping (same key order) gives the same fingerprints."""
    again = json.loads(json.dumps(body, indent=indent, ensure_ascii=ascii_only, separators=(", ", ": ")))
    assert layout_of(again).chain == layout_of(body).chain
    assert [b.canonical for b in layout_of(again).blocks] == [b.canonical for b in layout_of(body).blocks]


@given(body=bodies(), data=st.data())
@settings(max_examples=150)
def test_fingerprints_ignore_cache_control_markers(body: dict[str, Any], data: st.DataObject) -> None:
    """Adding cache_control to any blocks (and at top level) leaves every fingerprint unchanged."""
    marked = copy.deepcopy(body)
    targets = mutable_strings(marked)
    chosen = data.draw(st.lists(st.sampled_from(targets), max_size=3, unique_by=lambda t: t[0]))
    for _index, path in chosen:
        if path[0] == "messages" and len(path) == 3:
            continue  # a string content has no block to mark
        block = get_path(marked, path[:4] if path[0] == "messages" else path[:2])
        block["cache_control"] = data.draw(st.sampled_from([EPHEMERAL, EPHEMERAL_1H]))
    if data.draw(st.booleans()):
        marked["cache_control"] = EPHEMERAL
    assert layout_of(marked).chain == layout_of(body).chain
    assert layout_of(strip_markers(marked)).chain == layout_of(body).chain


@given(body=bodies(), data=st.data())
@settings(max_examples=200)
@example(
    body={"model": MODEL, "max_tokens": 100, "system": [text("abc")], "messages": [{"role": "user", "content": "x"}]},
    data=None,
)
def test_changing_one_character_changes_that_block_and_later_ones(
    body: dict[str, Any], data: st.DataObject | None
) -> None:
    """A changed character changes the fingerprint of its block and every later one, never an earlier one."""
    targets = mutable_strings(body)
    index, path = data.draw(st.sampled_from(targets)) if data is not None else targets[0]
    old_string = get_path(body, path)
    position = data.draw(st.integers(0, len(old_string) - 1)) if data is not None else 1
    replacement = "a" if old_string[position] != "a" else "b"
    changed = copy.deepcopy(body)
    set_path(changed, path, old_string[:position] + replacement + old_string[position + 1 :])
    before, after = layout_of(body).chain, layout_of(changed).chain
    assert len(before) == len(after) == len(targets)
    assert before[:index] == after[:index]
    assert all(a != b for a, b in zip(before[index:], after[index:], strict=True))
    difference = first_difference(body, changed)
    assert difference is not None
    assert difference.path == format_path(path)
    assert difference.offset == position
    assert difference.kind == "changed"


@given(body=bodies(), choice=st.sampled_from([{"type": "any"}, {"type": "tool", "name": "x"}, {"type": "none"}]))
@settings(max_examples=100)
def test_tool_choice_changes_only_messages_fingerprints(body: dict[str, Any], choice: dict[str, str]) -> None:
    """tool_choice (other than auto) changes every messages-level fingerprint and no tools/system one."""
    before = layout_of(body)
    after = layout_of({**body, "tool_choice": choice})
    auto = layout_of({**body, "tool_choice": {"type": "auto"}})
    assert auto.chain == before.chain  # an explicit default equals omitting it
    start = before.level_start("messages")
    assert after.chain[:start] == before.chain[:start]
    assert all(a != b for a, b in zip(before.chain[start:], after.chain[start:], strict=True))
    assert len(before.chain) > start


@given(body=bodies())
@settings(max_examples=100)
def test_model_change_changes_every_fingerprint(body: dict[str, Any]) -> None:
    """Another model changes the fingerprint of every block (caches are per model)."""
    before = layout_of(body).chain
    after = layout_of({**body, "model": "claude-opus-4-8"}).chain
    assert all(a != b for a, b in zip(before, after, strict=True))


def test_speed_changes_system_and_messages_but_not_tools() -> None:
    """``speed: fast`` invalidates system and messages; ``standard`` equals omitting it."""
    body = {**body_with_system(text("sys")), "tools": [{"name": "t", "input_schema": {"type": "object"}}]}
    before = layout_of(body).chain
    fast = layout_of({**body, "speed": "fast"}).chain
    assert layout_of({**body, "speed": "standard"}).chain == before
    assert fast[0] == before[0]
    assert fast[1] != before[1]
    assert fast[2] != before[2]


def test_string_and_block_forms_fingerprint_alike() -> None:
    """A string system or content is fingerprinted as the equivalent single text block."""
    as_string = {"model": MODEL, "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]}
    as_blocks = {"model": MODEL, "system": [text("Be brief.")], "messages": [{"role": "user", "content": [text("Hi")]}]}
    assert layout_of(as_string).chain == layout_of(as_blocks).chain
    assert [b.path for b in layout_of(as_string).blocks] == ["system", "messages[0].content"]
    assert layout_of(as_string).blocks[1].canonical == b'user\x00{"type":"text","text":"Hi"}'


def test_key_reorder_in_a_tool_schema_changes_the_fingerprint() -> None:
    """Sorting keys of a tool's input_schema changes its fingerprint: the cache hashes sent key order."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = {
        "model": MODEL,
        "tools": [{"name": "t", "input_schema": schema}],
        "messages": [{"role": "user", "content": "x"}],
    }
    resorted = json.loads(json.dumps(body, sort_keys=True))
    assert layout_of(resorted).chain[0] != layout_of(body).chain[0]


def test_a_tool_property_named_cache_control_is_part_of_the_prefix() -> None:
    """A schema property or tool input key named ``cache_control`` is data, so changing it changes the fingerprint."""

    def with_property(kind: str) -> dict[str, Any]:
        schema = {"type": "object", "properties": {"cache_control": {"type": kind}}}
        return {
            "model": MODEL,
            "tools": [{"name": "t", "input_schema": schema}],
            "messages": [{"role": "user", "content": "x"}],
        }

    assert layout_of(with_property("string")).chain[0] != layout_of(with_property("boolean")).chain[0]

    def with_input(value: str) -> dict[str, Any]:
        call = {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {"cache_control": value}}
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [call]}],
        }

    assert layout_of(with_input("on")).chain[1] != layout_of(with_input("off")).chain[1]


def test_images_count_invalidates_messages_only() -> None:
    """Adding an image to a later message changes every messages fingerprint (images added anywhere)."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    body = body_with_system(text("sys"))
    body["messages"] = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    more = copy.deepcopy(body)
    more["messages"].append({"role": "user", "content": [image]})
    before, after = layout_of(body).chain, layout_of(more).chain
    assert after[0] == before[0]
    assert after[1] != before[1]
    assert after[2] != before[2]
    assert layout_of(more).blocks[3].images == 1


# -------------------------------------------------------------------------------- breakpoints


def test_breakpoints_explicit_and_automatic() -> None:
    """Explicit markers become breakpoints in prefix order; top-level cache_control marks the last block."""
    body = body_with_system(text("a", EPHEMERAL_1H), text("b"), text("c", EPHEMERAL), cache_control=EPHEMERAL)
    layout = layout_of(body)
    assert [(p.block, p.path, p.ttl, p.automatic) for p in layout.breakpoints] == [
        (0, "system[0]", "1h", False),
        (2, "system[2]", "5m", False),
        (3, "messages[0].content", "5m", True),
    ]
    assert layout.problems == ()
    assert layout.breakpoints[2].fingerprint == layout.chain[3]


def test_automatic_breakpoint_skips_thinking_and_empty_text() -> None:
    """The automatic breakpoint walks back over blocks that cannot carry one."""
    body = {
        "model": MODEL,
        "cache_control": EPHEMERAL,
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [text("answer"), {"type": "thinking", "thinking": "t", "signature": "s"}, text("")],
            },
        ],
    }
    assert [p.path for p in layout_of(body).breakpoints] == ["messages[1].content[0]"]


@pytest.mark.parametrize(
    ("blocks", "extra", "problem"),
    [
        (
            [text(c, EPHEMERAL) for c in "abcde"],
            {},
            "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        ),
        (
            [text("a", EPHEMERAL), text("b", EPHEMERAL_1H)],
            {},
            "system[1]: a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block",
        ),
        ([text("", EPHEMERAL)], {}, "system[0]: cache_control cannot be set for empty text blocks"),
        (
            [text(c, EPHEMERAL) for c in "abcd"],
            {"cache_control": EPHEMERAL},
            "top-level cache_control needs a free slot, but 4 blocks already have one",
        ),
    ],
)
def test_layout_problems(blocks: list[dict[str, Any]], extra: dict[str, Any], problem: str) -> None:
    """What the API rejects is reported, with its message."""
    assert layout_of(body_with_system(*blocks, **extra)).problems == (problem,)


def test_automatic_on_already_marked_last_block() -> None:
    """Top-level cache_control on a last block already marked: same TTL is a no-op, another TTL a problem."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": [text("x", EPHEMERAL)]}]}
    assert len(layout_of({**body, "cache_control": EPHEMERAL}).breakpoints) == 1
    assert layout_of({**body, "cache_control": EPHEMERAL}).problems == ()
    assert layout_of({**body, "cache_control": EPHEMERAL_1H}).problems == (
        "top-level cache_control ttl 1h conflicts with 5m already on messages[0].content[0]",
    )


# -------------------------------------------------------------------------------- first_difference


def test_first_difference_in_system_text_gives_offset() -> None:
    """A changed character in a system block is reported at its path and character offset."""
    old = body_with_system(text("You are a helpful assistant. Today is Monday."))
    new = body_with_system(text("You are a helpful assistant. Today is Tuesday."))
    difference = first_difference(old, new)
    assert difference is not None
    assert (difference.path, difference.offset, difference.kind, difference.level) == (
        "system[0].text",
        38,
        "changed",
        "system",
    )
    # excerpts run from 32 characters before the offset (6) to 32 after it
    assert difference.describe() == (
        'system[0].text, offset 38: …"e a helpful assistant. Today is Monday." -> '
        '…"e a helpful assistant. Today is Tuesday."'
    )


def test_first_difference_key_reorder_in_tool_schema() -> None:
    """Reordered keys of ``tools[3].input_schema`` are reported there as ``reordered``."""
    tool_list = [{"name": f"t{i}", "input_schema": {"type": "object", "properties": {}}} for i in range(4)]
    reordered = copy.deepcopy(tool_list)
    reordered[3]["input_schema"] = {"properties": {}, "type": "object"}
    difference = first_difference({"tools": tool_list}, {"tools": reordered})
    assert difference is not None
    assert (difference.path, difference.kind, difference.offset) == ("tools[3].input_schema", "reordered", None)
    assert (difference.before, difference.after) == ("keys type, properties", "keys properties, type")
    assert difference.level == "tools"


def test_first_difference_added_content_block() -> None:
    """A block appended to ``messages[4].content`` is reported as added at ``messages[4].content[1]``."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": [text(f"m{i}")]} for i in range(5)]
    grown = copy.deepcopy(messages)
    grown[4]["content"].append(text("more"))
    difference = first_difference({"messages": messages}, {"messages": grown})
    assert difference is not None
    assert (difference.path, difference.kind, difference.after) == (
        "messages[4].content[1]",
        "added",
        '{"type":"text","text":"more"}',
    )
    assert difference.describe() == 'messages[4].content[1]: added {"type":"text","text":"more"}'


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ({"a": 1}, {"a": 1}, None),
        ({"a": 1}, {"a": 1.0}, ("a", None, "changed")),
        ({"a": 1}, {"a": True}, ("a", None, "type")),
        ({"a": "abc"}, {"a": "abcd"}, ("a", 3, "changed")),
        ({"a": 1, "b": 2}, {"a": 1}, ("b", None, "removed")),
        ({"a": 1}, {"a": 1, "b": 2}, ("b", None, "added")),
        ({"x": [1, 2, 3]}, {"x": [1, 2]}, ("x[2]", None, "removed")),
        ({"p": {"my key": "v"}}, {"p": {"my key": "w"}}, ('p["my key"]', 0, "changed")),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, ("$", None, "reordered")),
        ({"a": 0.0}, {"a": -0.0}, ("a", None, "changed")),
    ],
)
def test_first_difference_cases(old: Any, new: Any, expected: tuple[str, int | None, str] | None) -> None:
    """Each kind of departure is reported at its path."""
    difference = first_difference(old, new)
    if expected is None:
        assert difference is None
    else:
        assert difference is not None
        assert (difference.path, difference.offset, difference.kind) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@given(old=json_values, new=json_values)
@settings(max_examples=300)
@example(old={"a\n": 1}, new={"a\n": 2})
@example(old=0.0, new=-0.0)
def test_first_difference_is_none_exactly_when_bytes_agree(old: Any, new: Any) -> None:
    """``first_difference`` is None exactly when both values serialise to the same bytes (key order included)."""
    same_bytes = json.dumps(old, ensure_ascii=False) == json.dumps(new, ensure_ascii=False)
    difference = first_difference(old, new)
    assert (difference is None) == same_bytes
    assert first_difference(old, copy.deepcopy(old)) is None


def test_format_path_quotes_what_is_not_an_identifier() -> None:
    """Identifiers are dotted, others JSON-quoted; a trailing newline is not an identifier."""
    assert format_path(["messages", 4, "content", 1]) == "messages[4].content[1]"
    assert format_path(["a b", "c"]) == '["a b"].c'
    assert format_path(["x", "ok\n"]) == 'x["ok\\n"]'
    assert format_path([]) == "$"
    assert level_of_path("messages[4].content[1]") == "messages"
    assert level_of_path("tool_choice") == "settings"


# -------------------------------------------------------------------------------- minimum length


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-haiku-4-5", (4096, True)),
        ("claude-haiku-4-5-20251001", (4096, True)),
        ("claude-opus-4-5-20251101", (4096, True)),
        ("claude-opus-4-6", (4096, True)),
        ("claude-opus-4-7", (2048, True)),
        ("claude-opus-4-8", (1024, True)),
        ("claude-opus-4-1-20250805", (1024, True)),
        ("claude-opus-4-20250514", (1024, True)),
        ("claude-sonnet-4-5@20250929", (1024, True)),
        ("claude-sonnet-4-6", (1024, True)),
        ("claude-sonnet-5", (1024, True)),
        ("claude-opus-5", (512, True)),
        ("claude-sonnet-5-5", (512, False)),
        ("claude-3-5-haiku-20241022", (2048, True)),
        ("claude-3-haiku-20240307", (2048, True)),
        ("CLAUDE-3-7-SONNET-20250219", (1024, True)),
        ("some-other-model", (1024, False)),
    ],
)
def test_minimum_cacheable(model: str, expected: tuple[int, bool]) -> None:
    """Minimums follow Anthropic docs: Prompt caching, "Cache limitations"; longer model prefixes win."""
    assert minimum_cacheable(model) == expected


# -------------------------------------------------------------------------------- simulate


def system_layout(*ttls: str | None, model: str = MODEL) -> Any:
    """A layout of one system block per entry (marked with that TTL, or unmarked) then one message."""
    blocks = [
        text(f"block {i}", None if ttl is None else {"type": "ephemeral", "ttl": ttl}) for i, ttl in enumerate(ttls)
    ]
    return layout_of({"model": model, "system": blocks, "messages": [{"role": "user", "content": "Hi"}]})


def test_simulate_worked_example_mixed_ttls() -> None:
    """A/B/C with 1h, 1h, 5m breakpoints after a hit at the first: reads A, 1h writes B-A, 5m writes C-B."""
    store = CacheStore()
    cumulative = [1000, 2000, 3000, 4000, 5000]  # 4 system blocks + the message
    # turn 1: only the first 1h breakpoint, at 2000 tokens (block 1)
    first = simulate(system_layout(None, "1h", None, None), cumulative, store, NOW, minimum=1024)
    assert (first.input_tokens, first.cache_read_input_tokens, first.cache_creation_1h, first.cache_creation_5m) == (
        3000,
        0,
        2000,
        0,
    )
    # turn 2: breakpoints 1h at block 1 (2000), 1h at block 2 (3000), 5m at block 3 (4000)
    # A = 2000 (hit), B = 3000 -> 1h writes 1000, C = 4000 -> 5m writes 1000, input 5000 - 4000 = 1000
    second = simulate(system_layout(None, "1h", "1h", "5m"), cumulative, store, NOW + 60, minimum=1024)
    assert (
        second.input_tokens,
        second.cache_read_input_tokens,
        second.cache_creation_1h,
        second.cache_creation_5m,
    ) == (1000, 2000, 1000, 1000)
    assert second.hit_block == 1
    assert [p.block for p in second.written] == [2, 3]
    assert second.usage() == {
        "input_tokens": 1000,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 2000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 1000},
    }
    assert second.total_input_tokens == 5000


def test_simulate_below_minimum_writes_nothing() -> None:
    """Breakpoints whose prefix is below the minimum write nothing and report so; later ones still write."""
    store = CacheStore()
    outcome = simulate(system_layout("1h", "5m"), [1000, 1100, 1110], store, NOW, minimum=1024)
    assert [p.block for p in outcome.below_minimum] == [0]
    assert [p.block for p in outcome.written] == [1]
    assert (outcome.cache_creation_1h, outcome.cache_creation_5m, outcome.input_tokens) == (0, 1100, 10)
    assert list(store.entries) == [system_layout("1h", "5m").chain[1]]


def test_simulate_lookback_boundary() -> None:
    """A breakpoint 19 blocks after a written entry reads it; 20 blocks after, it does not."""
    assert LOOKBACK_BLOCKS == 20
    ttls: list[str | None] = [None] * 30
    cumulative = [2000 + 10 * i for i in range(31)]
    for moved, expected_read in [(19, 2000), (20, 0)]:
        store = CacheStore()
        write = ttls.copy()
        write[0] = "5m"
        simulate(system_layout(*write), cumulative, store, NOW, minimum=1024)
        read = ttls.copy()
        read[moved] = "5m"
        outcome = simulate(system_layout(*read), cumulative, store, NOW + 1, minimum=1024)
        assert outcome.cache_read_input_tokens == expected_read
        assert outcome.cache_creation_input_tokens == cumulative[moved] - expected_read


def test_simulate_ttl_expiry_refresh_and_order() -> None:
    """A hit refreshes the TTL; an expired entry is reported; an entry is not live before its write."""
    store = CacheStore()
    layout = system_layout("5m")
    cumulative = [2000, 2010]
    simulate(layout, cumulative, store, NOW, minimum=1024)
    assert simulate(layout, cumulative, store, NOW - 1, minimum=1024).cache_read_input_tokens == 0
    store = CacheStore()
    simulate(layout, cumulative, store, NOW, minimum=1024)
    hit = simulate(layout, cumulative, store, NOW + 299, minimum=1024)
    assert (hit.cache_read_input_tokens, hit.hit_block) == (2000, 0)
    assert store.entries[layout.chain[0]].expires_at == NOW + 299 + 300
    late = simulate(layout, cumulative, store, NOW + 299 + 300, minimum=1024)
    assert (late.cache_read_input_tokens, late.cache_creation_5m, late.hit_expired) == (0, 2000, True)


def test_simulate_extra_input_tokens_are_uncached() -> None:
    """Tokens outside the blocks are always uncached input."""
    outcome = simulate(system_layout("5m"), [2000, 2010], CacheStore(), NOW, minimum=1024, extra_input_tokens=7)
    assert (outcome.total_input_tokens, outcome.input_tokens, outcome.cache_creation_5m) == (2017, 17, 2000)


@st.composite
def request_sequences(draw: st.DrawFn) -> list[tuple[list[str | None], list[int], float]]:
    """Requests over one growing prefix: marker TTLs per block (1h before 5m), block tokens, time step."""
    size = draw(st.integers(1, 30))
    tokens = draw(st.lists(st.integers(0, 600), min_size=size + 1, max_size=size + 1))
    cumulative = [sum(tokens[: i + 1]) for i in range(size + 1)]
    out = []
    for _ in range(draw(st.integers(1, 5))):
        marked = sorted(draw(st.lists(st.integers(0, size - 1), max_size=4, unique=True)))
        split = draw(st.integers(0, len(marked)))
        ttls: list[str | None] = [None] * size
        for n, block in enumerate(marked):
            ttls[block] = "1h" if n < split else "5m"
        out.append((ttls, cumulative, draw(st.sampled_from([0.0, 60.0, 299.0, 300.0, 400.0, 3600.0]))))
    return out


@given(sequence=request_sequences(), minimum=st.sampled_from([0, 512, 1024, 4096]))
@settings(max_examples=200)
def test_simulate_billing_identity(sequence: list[tuple[list[str | None], list[int], float]], minimum: int) -> None:
    """input + reads + 5m writes + 1h writes == total input, every part non-negative, for any request sequence."""
    store = CacheStore()
    now = NOW
    for ttls, cumulative, step in sequence:
        now += step
        layout = system_layout(*ttls)
        outcome = simulate(layout, cumulative, store, now, minimum=minimum)
        parts = (
            outcome.input_tokens,
            outcome.cache_read_input_tokens,
            outcome.cache_creation_5m,
            outcome.cache_creation_1h,
        )
        assert min(parts) >= 0
        assert sum(parts) == outcome.total_input_tokens == cumulative[-1]
        written = {p.block for p in outcome.written}
        assert written == {
            p.block
            for p in layout.breakpoints
            if cumulative[p.block] >= minimum and (outcome.hit_block is None or p.block > outcome.hit_block)
        }
        if outcome.hit_block is not None:
            assert outcome.cache_read_input_tokens == cumulative[outcome.hit_block]


# -------------------------------------------------------------------------------- diagnose


def test_diagnose_reasons() -> None:
    """diagnose names the earliest divergence with the previous prefix's tokens from there on."""
    base = body_with_system(text("a"), text("b"))
    previous = layout_of(base)
    cumulative = [100, 300, 310]
    assert diagnose(previous, cumulative, layout_of(base)) is None
    extended = copy.deepcopy(base)
    extended["messages"] += [{"role": "assistant", "content": "ok"}]
    assert diagnose(previous, cumulative, layout_of(extended)) is None
    assert diagnose(previous, cumulative, layout_of(body_with_system(text("a"), text("c")))) == {
        "type": "system_changed",
        "cache_missed_input_tokens": 210,
    }
    changed_message = copy.deepcopy(base)
    changed_message["messages"][0]["content"] = "Ho"
    assert diagnose(previous, cumulative, layout_of(changed_message)) == {
        "type": "messages_changed",
        "cache_missed_input_tokens": 10,
    }
    assert diagnose(previous, cumulative, layout_of({**base, "model": "claude-opus-4-8"})) == {
        "type": "model_changed",
        "cache_missed_input_tokens": 310,
    }
    assert diagnose(previous, cumulative, layout_of({**base, "speed": "fast"})) == {
        "type": "model_changed",
        "cache_missed_input_tokens": 310,
    }
    assert diagnose(
        previous, cumulative, layout_of({**base, "thinking": {"type": "enabled", "budget_tokens": 1024}})
    ) == {"type": "unavailable"}
    assert diagnose(previous, cumulative, layout_of({**base, "tools": [{"name": "t", "input_schema": {}}]})) == {
        "type": "tools_changed",
        "cache_missed_input_tokens": 310,
    }


# -------------------------------------------------------------------------------- incremental layouts

_message_strategy = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant"]),
        "content": st.one_of(
            st.text(max_size=20),
            st.lists(
                st.one_of(
                    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(min_size=1, max_size=20)}),
                    st.fixed_dictionaries(
                        {
                            "type": st.just("text"),
                            "text": st.text(min_size=1, max_size=20),
                            "cache_control": st.just({"type": "ephemeral"}),
                        }
                    ),
                    st.fixed_dictionaries(
                        {
                            "type": st.just("image"),
                            "source": st.fixed_dictionaries(
                                {
                                    "type": st.just("base64"),
                                    "media_type": st.just("image/png"),
                                    "data": st.text(max_size=8),
                                }
                            ),
                        }
                    ),
                    st.fixed_dictionaries(
                        {"type": st.just("thinking"), "thinking": st.text(max_size=10), "signature": st.just("s")}
                    ),
                ),
                min_size=1,
                max_size=3,
            ),
        ),
    }
)


def _layout_facts(layout: PromptLayout) -> tuple[object, ...]:
    return (
        [(b.index, b.level, b.path, b.kind, b.canonical, b.ttl, b.markable, b.images) for b in layout.blocks],
        layout.chain,
        layout.breakpoints,
        layout.settings,
        layout.problems,
        layout.level_starts,
        layout.canonical_ends,
    )


@given(
    first=st.lists(_message_strategy, min_size=1, max_size=4),
    steps=st.lists(
        st.tuples(
            st.integers(0, 6),
            st.lists(_message_strategy, max_size=3),
            st.booleans(),
            st.booleans(),
            st.sampled_from(["claude-sonnet-4-6", "claude-haiku-4-5"]),
        ),
        min_size=1,
        max_size=6,
    ),
)
@settings(max_examples=150, deadline=None)
def test_memoised_layouts_equal_fresh_ones(first: list[dict], steps: list[tuple]) -> None:  # type: ignore[type-arg]
    """Layouts resumed from a memo (shared tools, system and leading messages) equal layouts computed afresh."""
    tools = [
        {"name": "t", "description": "d", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
    ]
    system = [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    memo = LayoutMemo()
    messages = list(first)
    for keep, added, new_system, automatic, model in steps:
        messages = messages[: max(1, min(keep, len(messages)))] + added
        if new_system:
            system = [{"type": "text", "text": "sys2"}]
        body: dict[str, object] = {
            "model": model,
            "max_tokens": 1,
            "tools": tools,
            "system": system,
            "messages": messages,
        }
        if automatic:
            body["cache_control"] = {"type": "ephemeral"}
        assert _layout_facts(layout_of(body, memo)) == _layout_facts(layout_of(body))
