"""The four levers that make an agent cheap, and what each would save on a recorded run.

Levers are applied in this order, each measured on top of the ones before it, so savings never
double count: prompt caching, the Message Batches API, model tiering, context discipline.

(Interface only for now: the advisor that fills these in lands with issue 14.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["Lever", "LeverKind"]


class LeverKind(enum.StrEnum):
    """The levers, in the order they are applied."""

    CACHING = "caching"
    BATCH = "batch"
    MODEL_TIER = "model_tier"
    CONTEXT = "context"


@dataclass(frozen=True)
class Lever:
    """One lever's saving on one test (or, summed, on the suite).

    Attributes:
        lever: which lever.
        saving_usd: what the run would have cost less, at the report's prices, on top of the
            levers before this one.
        saving_tokens: the tokens it would not have billed at full input price.
        assumption: what the saving rests on, in one sentence.
        change: the concrete edit that pulls the lever.
        path: the JSON path of the request the change applies to, where there is one.
        turns: the (0-based) turns the saving comes from.
    """

    lever: LeverKind
    saving_usd: Decimal
    saving_tokens: int
    assumption: str
    change: str
    path: str | None = None
    turns: tuple[int, ...] = ()
