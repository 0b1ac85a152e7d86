"""pytest-tokenbudget: record, replay and budget the tokens of Claude agents under pytest.

The pytest plugin (``pytest_tokenbudget.plugin``) loads on its own; this package exports what a
test or a script uses directly:

* :class:`TokenLedger`: what the ``token_ledger`` fixture returns (live turns, inline budget checks);
* :class:`Ledger`, :class:`Turn`, :class:`Totals`: a ledger's data;
* :class:`AnthropicEmulator`, :class:`Reply`, :class:`Clock`: the local API emulator;
* :class:`TokenBudgetError` and its subclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    CassetteError,
    ConfigError,
    MissingRecording,
    PriceError,
    RequestMismatch,
    TokenBudgetError,
)

if TYPE_CHECKING:
    from .assertions import TokenLedger
    from .emulator import AnthropicEmulator, Clock, Reply
    from .ledger import Ledger, Totals, Turn

__all__ = [
    "AnthropicEmulator",
    "CassetteError",
    "Clock",
    "ConfigError",
    "Ledger",
    "MissingRecording",
    "PriceError",
    "Reply",
    "RequestMismatch",
    "TokenBudgetError",
    "TokenLedger",
    "Totals",
    "Turn",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The emulator (an HTTP server) loads only when asked for.
    if name in ("AnthropicEmulator", "Clock", "Reply"):
        from . import emulator

        return getattr(emulator, name)
    if name in ("Ledger", "Totals", "Turn"):  # the ledger (and cassettes) load when first asked for
        from . import ledger

        return getattr(ledger, name)
    if name == "TokenLedger":  # prices and the cache analysis load only when asked for
        from .assertions import TokenLedger

        return TokenLedger
    raise AttributeError(f"module 'pytest_tokenbudget' has no attribute {name!r}")
