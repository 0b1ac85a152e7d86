"""A local Anthropic API emulator for tests: real HTTP on 127.0.0.1, driven by the official SDK.

See :class:`AnthropicEmulator`; the ``anthropic_emulator`` pytest fixture gives one per test.
Token counts are synthetic and exact (:mod:`pytest_tokenbudget.emulator._tokens`).
"""

from ._replies import Clock, Reply
from ._server import DIAGNOSTICS_BETA, AnthropicEmulator, EmulatedRequest
from ._tokens import IMAGE_TOKENS, block_tokens, cumulative_tokens, output_tokens

__all__ = [
    "DIAGNOSTICS_BETA",
    "IMAGE_TOKENS",
    "AnthropicEmulator",
    "Clock",
    "EmulatedRequest",
    "Reply",
    "block_tokens",
    "cumulative_tokens",
    "output_tokens",
]
