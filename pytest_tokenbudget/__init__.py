"""pytest-tokenbudget: record, replay and budget the tokens of Claude agents under pytest.

The pytest plugin (``pytest_tokenbudget.plugin``) loads on its own; this package exports what a
test or a script uses directly:

* :class:`Ledger`, :class:`Turn`, :class:`Totals`: the ``token_ledger`` fixture's types;
* :class:`AnthropicEmulator`, :class:`Reply`, :class:`Clock`: the local API emulator;
* :class:`TokenBudgetError` and its subclasses.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import (
    CassetteError,
    ConfigError,
    MissingRecording,
    PriceError,
    RequestMismatch,
    TokenBudgetError,
)
from .ledger import Ledger, Totals, Turn

try:
    __version__ = version("pytest-tokenbudget")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from .emulator import AnthropicEmulator, Clock, Reply

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
    "Totals",
    "Turn",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The emulator (an HTTP server) loads only when asked for.
    if name in ("AnthropicEmulator", "Clock", "Reply"):
        from . import emulator

        return getattr(emulator, name)
    raise AttributeError(f"module 'pytest_tokenbudget' has no attribute {name!r}")
