"""Budgets: limits on a test's tokens, cost and cache behaviour, and the gate's thresholds.

One meaning, three ways to say it: a marker ``@pytest.mark.token_budget(max_cost_usd=...)``, the
``token_ledger`` fixture's ``assert_budget(...)`` for inline checks, and a config file with
defaults and per-test patterns (:mod:`pytest_tokenbudget.config`). Keys and units are in
``schemas/config.schema.json`` (``$defs/budget``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from typing import Any

from ._validate import schema_problems
from .errors import ConfigError

__all__ = ["BUDGET_KEYS", "Budget", "check_budget", "parse_overrides", "where_tokens_went"]

BUDGET_KEYS = (
    "max_cost_usd",
    "max_input_tokens",
    "max_output_tokens",
    "max_turns",
    "min_cache_hit_rate",
    "prefix_stable",
    "max_cost_increase",
    "max_cost_increase_usd",
    "max_tokens_increase",
    "max_hit_rate_drop",
    "fail_on_prefix_change",
)
# Gate thresholds when nothing sets them.
DEFAULT_MAX_COST_INCREASE = 0.10
DEFAULT_MAX_HIT_RATE_DROP = 0.05


@dataclass(frozen=True)
class Budget:
    """Limits for one test; ``None`` means "not set" (a later source may set it)."""

    max_cost_usd: Decimal | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_turns: int | None = None
    min_cache_hit_rate: float | None = None
    prefix_stable: bool | None = None
    max_cost_increase: float | None = None
    max_cost_increase_usd: Decimal | None = None
    max_tokens_increase: float | None = None
    max_hit_rate_drop: float | None = None
    fail_on_prefix_change: bool | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str) -> Budget:
        """Validate keys and values (``schemas/config.schema.json#/$defs/budget``).

        Each distinct set of values is validated once per process (a suite repeats the same few
        markers thousands of times); an empty mapping is the empty budget.

        Raises:
            ConfigError: naming the bad key, where it came from, and the accepted keys.
        """
        if not data:
            return cls()
        try:
            problems = _problems(tuple(sorted((str(k), _freeze(v)) for k, v in data.items())), data)
        except TypeError:  # an unhashable value: validate it afresh
            problems = _schema_problems(data)
        if problems:
            why = problems[0][1].replace("defaults.", "", 1)
            raise ConfigError(
                "invalid token budget",
                file=where,
                why=why,
                details=[f"also: {p[1].replace('defaults.', '', 1)}" for p in problems[1:]],
                fix=f"use the accepted keys: {', '.join(BUDGET_KEYS)}",
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("max_cost_usd", "max_cost_increase_usd"):
                values[key] = Decimal(str(value))
            else:
                values[key] = value
        return cls(**values)

    def over(self, base: Budget) -> Budget:
        """This budget's values where set, ``base``'s elsewhere."""
        return replace(
            base, **{f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        )

    def is_empty(self) -> bool:
        """Nothing is set."""
        return all(getattr(self, f.name) is None for f in fields(self))

    @property
    def gate_cost_increase(self) -> float:
        """Relative cost growth the gate allows."""
        return DEFAULT_MAX_COST_INCREASE if self.max_cost_increase is None else self.max_cost_increase

    @property
    def gate_hit_rate_drop(self) -> float:
        """Drop of the hit rate (points) the gate allows."""
        return DEFAULT_MAX_HIT_RATE_DROP if self.max_hit_rate_drop is None else self.max_hit_rate_drop

    @property
    def gate_prefix_change(self) -> bool:
        """Whether the gate fails a changed cached prefix."""
        return True if self.fail_on_prefix_change is None else self.fail_on_prefix_change


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a marker value that keeps its JSON type (``True`` is not ``1``)."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    hash(value)
    return (type(value).__name__, value)


def _schema_problems(data: Mapping[str, Any]) -> tuple[tuple[Any, str], ...]:
    return tuple(schema_problems({"defaults": dict(data)}, None, "config.schema.json"))


_VALIDATED: dict[Hashable, tuple[tuple[Any, str], ...]] = {}


def _problems(key: tuple[tuple[str, Hashable], ...], data: Mapping[str, Any]) -> tuple[tuple[Any, str], ...]:
    """The schema problems of ``data`` (whose frozen form is ``key``), validated once per key."""
    found = _VALIDATED.get(key)
    if found is None:
        found = _VALIDATED[key] = _schema_problems(data)
    return found


def check_budget(
    budget: Budget,
    *,
    turns: int,
    total_input_tokens: int,
    output_tokens: int,
    cost_usd: Decimal | None,
    cache_hit_rate: float,
    prefix_breaks: Sequence[str],
    estimated: bool = False,
) -> list[str]:
    """The budget's breaches, one line each (empty when within budget).

    ``total_input_tokens`` is every input token (uncached + cache writes + cache reads), the
    quantity ``max_input_tokens`` limits.
    """
    breaches: list[str] = []
    mark = " (estimated)" if estimated else ""
    if budget.max_turns is not None and turns > budget.max_turns:
        breaches.append(f"{turns} turns, budget {budget.max_turns}")
    if budget.max_input_tokens is not None and total_input_tokens > budget.max_input_tokens:
        breaches.append(f"{total_input_tokens:,} input tokens{mark}, budget {budget.max_input_tokens:,}")
    if budget.max_output_tokens is not None and output_tokens > budget.max_output_tokens:
        breaches.append(f"{output_tokens:,} output tokens, budget {budget.max_output_tokens:,}")
    if budget.max_cost_usd is not None:
        if cost_usd is None:
            breaches.append(f"cost unknown (a model has no price), budget ${budget.max_cost_usd}")
        elif cost_usd > budget.max_cost_usd:
            breaches.append(f"cost ${cost_usd:.6f}{mark}, budget ${budget.max_cost_usd}")
    if budget.min_cache_hit_rate is not None and cache_hit_rate < budget.min_cache_hit_rate:
        breaches.append(f"cache hit rate {cache_hit_rate:.1%}{mark}, budget at least {budget.min_cache_hit_rate:.1%}")
    if budget.prefix_stable and prefix_breaks:
        breaches.append(f"prompt prefix is not byte-stable ({len(prefix_breaks)} break(s)): {prefix_breaks[0]}")
    return breaches


def where_tokens_went(rows: Sequence[Sequence[str]]) -> list[str]:
    """A compact per-turn table (rows already formatted) for failure messages."""
    header = ("turn", "model", "input", "cache write", "cache read", "output", "cost USD", "cache")
    table = [header, *rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = []
    for number, row in enumerate(table):
        cells = [
            str(c).ljust(w) if i in (0, 1, 7) else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def parse_overrides(expressions: Sequence[str], *, where: str) -> Budget:
    """``KEY=VALUE`` pairs (comma-separated, or one per expression) as a budget: the command
    line's thresholds (``--token-budget-threshold max_cost_increase=0.2``, ``tokenbudget gate
    --threshold ...``). Values are JSON (``0.2``, ``true``, ``1000``).

    Raises:
        ConfigError: a pair without ``=``, or a key or value the budget schema rejects.
    """
    import json

    values: dict[str, Any] = {}
    for expression in expressions:
        for pair in filter(None, (p.strip() for p in expression.split(","))):
            key, equals, raw = pair.partition("=")
            if not equals:
                raise ConfigError(
                    "invalid token budget",
                    file=where,
                    why=f"{pair!r} is not KEY=VALUE",
                    fix=f"write e.g. max_cost_increase=0.2; the keys: {', '.join(BUDGET_KEYS)}",
                )
            try:
                values[key.strip()] = json.loads(raw)
            except ValueError:
                values[key.strip()] = raw.strip()
    return Budget.from_mapping(values, where=where)
