"""Unit and property tests of the changed-request estimator (``pytest_tokenbudget._estimate``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pytest_tokenbudget._estimate import RecordedTokens, tokenizer_factor
from pytest_tokenbudget.prefix import PromptLayout, layout_of

TOOL = {"name": "lookup", "description": "Look an order up. " * 20, "input_schema": {"type": "object"}}


def _body(system: str, question: str, *, model: str = "claude-sonnet-4-6", tools: Any = (TOOL,)) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 64,
        "tools": list(tools),
        "system": [{"type": "text", "text": system}],
        "messages": [{"role": "user", "content": question}],
    }


def _tokens(layout: PromptLayout, density: dict[str, float]) -> list[int]:
    """Cumulative counts of a synthetic tokenizer with one density per kind."""
    out, total = [], 0.0
    for block in layout.blocks:
        kind = "tools" if block.level == "tools" else "text"
        total += density[kind] * len(block.canonical)
        out.append(round(total))
    return out


def _recorded(
    layouts: list[PromptLayout], density: dict[str, float], anchors_at: tuple[int, ...] = ()
) -> RecordedTokens:
    counts = RecordedTokens()
    for key, layout in enumerate(layouts):
        cumulative = _tokens(layout, density)
        anchors = [(i, cumulative[i]) for i in anchors_at if i < len(cumulative) - 1]
        anchors.append((len(cumulative) - 1, cumulative[-1]))
        counts.add(key, layout, anchors)
    counts.fit()
    return counts


def test_densities_per_kind_are_fitted_from_mixed_segments() -> None:
    """Tools at 0.4 tokens/byte and text at 0.25: whole-request counts of different mixes separate them."""
    density = {"tools": 0.4, "text": 0.25}
    layouts = [
        layout_of(_body("Be brief. " * n, "Where is order 42?", tools=[TOOL] * k))
        for n, k in ((10, 1), (80, 1), (30, 3))
    ]
    counts = _recorded(layouts, density)
    fitted = counts.densities["claude-sonnet-4-6"]
    assert abs(fitted["tools"] - 0.4) < 0.004
    assert abs(fitted["text"] - 0.25) < 0.004


def test_an_unchanged_prefix_keeps_its_recorded_count_and_only_the_edit_is_estimated() -> None:
    density = {"tools": 0.4, "text": 0.25}
    recorded = layout_of(_body("Be brief. " * 50, "Where is order 42?"))
    counts = _recorded([recorded], density, anchors_at=(1,))  # a breakpoint after the system prompt
    known = {recorded.chain[1]: _tokens(recorded, density)[1]}
    changed = layout_of(_body("Be brief. " * 50, "Where is order 42? It was a gift."))
    estimate = counts.estimate(changed, recorded_key=0, known=known, tail=0)
    assert estimate.cumulative[1] == _tokens(recorded, density)[1]
    assert estimate.exact == (False, True, False)  # the tool alone has no exact count; tools + system has
    assert estimate.total == _tokens(changed, density)[-1]
    assert estimate.method == (
        f"{estimate.total:,} input tokens: {_tokens(recorded, density)[1]:,} kept as recorded (2 unchanged block(s)); "
        f"estimated {estimate.total - estimate.cumulative[1]} for 1 changed block(s): messages[0].content edited "
        f"({_tokens(recorded, density)[2] - _tokens(recorded, density)[1]} -> "
        f"{estimate.total - estimate.cumulative[1]})"
    )


def test_a_switch_to_a_newer_tokenizer_is_scaled_and_said() -> None:
    assert tokenizer_factor("claude-opus-5") == (1.175, "Opus 4.7 tokenizer, ~1.0-1.35x")
    assert tokenizer_factor("claude-sonnet-5") == (1.3, "Sonnet 5 tokenizer, ~1.3x")
    assert tokenizer_factor("claude-haiku-4-5-20251001") == (1.0, "Claude 3/4 tokenizer")
    density = {"tools": 0.25, "text": 0.25}
    recorded = layout_of(_body("Be brief. " * 50, "Where is order 42?", model="claude-haiku-4-5"))
    counts = _recorded([recorded], density)
    switched = layout_of(_body("Be brief. " * 50, "Where is order 42?", model="claude-opus-5"))
    estimate = counts.estimate(switched, recorded_key=0, known={}, tail=0)
    assert estimate.total == round(_tokens(recorded, density)[-1] * 1.175)
    assert estimate.model == "claude-opus-5"
    assert estimate.method.endswith(
        "scaled x1.175 for the tokenizer of claude-opus-5 (Opus 4.7 tokenizer, ~1.0-1.35x; UNSURE) vs "
        "claude-haiku-4-5; priced at claude-opus-5, the model it now asks for (recorded: claude-haiku-4-5)"
    )


_text = st.text(alphabet="abcdefgh ,.", min_size=1, max_size=300)


@given(system=_text, question=_text, tools=st.integers(0, 3), total=st.integers(1, 100_000), tail=st.integers(0, 8))
def test_an_unchanged_request_is_estimated_at_exactly_its_recorded_count(
    system: str, question: str, tools: int, total: int, tail: int
) -> None:
    """Whatever the content and counts: re-estimating the recorded request itself gives its recorded total."""
    layout = layout_of(_body(system, question, tools=[TOOL] * tools))
    counts = RecordedTokens()
    counts.add(0, layout, [(len(layout.blocks) - 1, total - tail)] if total > tail else [(len(layout.blocks) - 1, 0)])
    counts.fit()
    estimate = counts.estimate(layout, recorded_key=0, known={}, tail=tail)
    assert estimate.total == max(total, tail)
    assert estimate.model is None
