"""The emulator's token counts: a documented, deterministic function of the content.

There is no local Claude tokenizer (Anthropic publishes none; count_tokens is an API call), so the emulator counts
synthetic tokens, chosen so tests can compute exact numbers by hand:

* an input block (one tool, one system block, one message content block) counts
  ``ceil(len(canonical) / 4)`` tokens, where ``canonical`` is the block's canonical form from
  :mod:`pytest_tokenbudget.prefix` (compact JSON in sent key order, without ``cache_control``;
  the first block of each message is preceded by its role and a NUL), measured in characters;
* each image or document inside a block adds 1,000 tokens;
* :attr:`AnthropicEmulator.chars_per_token` may set another divisor per kind of block
  (``tools``, ``text``, ``tool_use``, ``tool_result``, ``other``), for tests whose recordings
  should show content of different token densities, as a real tokenizer does (JSON counts
  more tokens per character than prose);
* an output block counts ``ceil(len(text) / 4)`` for text and thinking, and
  ``ceil(len(name + compact JSON of input) / 4)`` for ``tool_use``; at least 1 per block;
* a server tool's result block in a reply (``web_search_tool_result``...) counts no output: the
  server wrote it, not the model. UNSURE: the API bills it as input of the sampling iteration
  that follows within the same request (``usage.iterations``), which the emulator does not model.
  Sent back in a later request it is an input block like any other (one block for the lookback,
  counted at the ``tool_result`` density).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..prefix import Block, PromptLayout, content_kind, is_server_tool_result

IMAGE_TOKENS = 1000


def block_tokens(block: Block, chars_per_token: Mapping[str, float] | None = None) -> int:
    """Synthetic input tokens of one prefix block (4 characters a token unless ``chars_per_token``
    names the block's kind)."""
    divisor = (chars_per_token or {}).get(content_kind(block), 4)
    return math.ceil(len(block.canonical.decode("utf-8")) / divisor) + IMAGE_TOKENS * block.images


def cumulative_tokens(layout: PromptLayout, chars_per_token: Mapping[str, float] | None = None) -> list[int]:
    """Running totals of :func:`block_tokens` over the layout's blocks."""
    total = 0
    out = []
    for block in layout.blocks:
        total += block_tokens(block, chars_per_token)
        out.append(total)
    return out


def output_tokens(content: Iterable[Mapping[str, Any]]) -> int:
    """Synthetic output tokens of a reply's content blocks."""
    total = 0
    for block in content:
        kind = block.get("type")
        if is_server_tool_result(str(kind)):
            continue
        if kind == "text":
            text = str(block.get("text", ""))
        elif kind == "thinking":
            text = str(block.get("thinking", ""))
        elif kind in ("tool_use", "server_tool_use"):
            text = str(block.get("name", "")) + json.dumps(
                block.get("input", {}), separators=(",", ":"), ensure_ascii=False
            )
        else:
            text = json.dumps(block, separators=(",", ":"), ensure_ascii=False)
        total += max(1, math.ceil(len(text) / 4))
    return total
