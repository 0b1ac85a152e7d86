"""Errors a user can act on.

Every error names what failed, where (file, test, JSON path), why in numbers, and the command
that fixes it. The plugin shows :meth:`TokenBudgetError.render` without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CassetteError",
    "ConfigError",
    "MissingRecording",
    "PriceError",
    "ReplayInterrupt",
    "RequestMismatch",
    "TokenBudgetError",
    "TokenBudgetWarning",
]


class TokenBudgetError(Exception):
    """A problem the user can fix: bad input, a missing recording, a changed request.

    Args:
        what: one line saying what failed.
        file: the file concerned, if any (with ``, line N`` when known).
        test: the pytest node id concerned, if any.
        why: the reason, with numbers where there are any.
        fix: the command or edit that fixes it.
        details: extra lines printed after the fields (a diff, a table).
    """

    def __init__(
        self,
        what: str,
        *,
        file: str | None = None,
        test: str | None = None,
        why: str | None = None,
        fix: str | None = None,
        details: Sequence[str] = (),
    ) -> None:
        self.what = what
        self.file = file
        self.test = test
        self.why = why
        self.fix = fix
        self.details = list(details)
        super().__init__(self.render())

    def render(self) -> str:
        """The message as printed: a headline, then aligned ``file/test/why/fix`` fields."""
        lines = [f"tokenbudget: {self.what}"]
        for label, value in (("file", self.file), ("test", self.test), ("why", self.why)):
            if value:
                lines.append(f"  {label + ':':<5} {value}")
        lines.extend(f"  {line}" for line in self.details)
        if self.fix:
            lines.append(f"  {'fix:':<5} {self.fix}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class CassetteError(TokenBudgetError):
    """A cassette exists but cannot be read: bad YAML/JSON, bad base64 or gzip, a broken SSE body."""


class MissingRecording(TokenBudgetError):
    """Replay met a request for which the cassette holds no (unplayed) recording."""


class RequestMismatch(TokenBudgetError):
    """A request departs from its recording; ``difference`` says where."""

    def __init__(self, what: str, *, difference: object = None, **kwargs: object) -> None:
        self.difference = difference
        super().__init__(what, **kwargs)  # type: ignore[arg-type]


class ConfigError(TokenBudgetError):
    """An option, ini key, marker argument or config file is invalid."""


class PriceError(TokenBudgetError):
    """A model has no price, or a price file is invalid."""


class ReplayInterrupt(BaseException):
    """Carries a :class:`TokenBudgetError` out of the user's code.

    The anthropic SDK turns any ``Exception`` raised by its transport into a retried
    ``APIConnectionError``, which hides the cause and sleeps between retries. Like
    ``pytest.fail``'s exception, this one derives from ``BaseException`` so that it reaches
    pytest at once; the plugin reports ``error.render()`` without a traceback.
    """

    def __init__(self, error: TokenBudgetError) -> None:
        self.error = error
        super().__init__(error.render())


class TokenBudgetWarning(UserWarning):
    """Something the plugin could not do for a test that still ran (shown in pytest's warnings)."""
