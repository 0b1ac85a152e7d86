"""The names options resolve to: record modes, price-at modes and the baseline's file name.

A leaf module, so that declaring the options (at plugin load) imports nothing else.
"""

from __future__ import annotations

import enum

__all__ = ["BASELINE_NAME", "PriceAt", "RecordMode"]

BASELINE_NAME = "tokenbudget-baseline.json"


class RecordMode(enum.StrEnum):
    """When a test's traffic is recorded (vcrpy's modes).

    ``none``: replay only, never record (default). ``once``: record when the cassette does not
    exist, else replay only. ``new_episodes``: replay what is recorded, record the rest.
    ``all``: record everything again, replay nothing.
    """

    NONE = "none"
    ONCE = "once"
    NEW_EPISODES = "new_episodes"
    ALL = "all"


class PriceAt(enum.StrEnum):
    """When a turn is priced: at one fixed instant for the run, or at its recording time."""

    NOW = "now"
    RECORDED = "recorded"
