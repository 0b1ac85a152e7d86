"""Prices of API turns in USD: genai-prices' bundled data, or a price override file.

One :class:`Pricer` prices every turn of a run the same way and says how in :attr:`Pricer.source`
(library version, override files, timestamp policy). Each turn gets a :class:`TurnCost`: the
total in USD (a ``Decimal``, never a float), its split into :data:`COMPONENTS`, and notes on
every rule applied or unsure.

Rules, per turn (sources: Anthropic's pricing and prompt-caching docs, genai-prices' ``Usage``):

- Tokens. Anthropic's ``input_tokens`` is only the uncached input; genai-prices wants the total
  (uncached + cache writes + cache reads) with cache reads and writes as parts of it, and the
  1-hour writes as part of the writes. The conversion happens here, from the usage dict, never
  from the SDK object (which silently drops the cache fields). Writes the ``cache_creation``
  breakdown does not put at 1 hour are 5-minute writes (:attr:`Turn.cache_write_5m_tokens`).
- Batch. A batch turn (``turn.endpoint == "batch"`` or ``usage.service_tier == "batch"``) is
  priced with genai-prices' ``{"processing": "batch"}`` context. genai-prices dates its batch
  prices (from 2026-10-14 for most models) and silently falls back to standard prices before;
  here the notes say so. Web search is never discounted.
- Fast mode (``usage.speed == "fast"``): ``{"speed": "fast"}`` context; a model without a fast
  price is priced as standard with an UNSURE note.
- Priority Tier (``usage.service_tier == "priority"``): no published per-token price; priced as
  standard with an UNSURE note.
- ``usage.inference_geo == "us"``: 1.1x on every token component for Claude 4.6 and later
  models (Opus 4.6, Sonnet 4.6, every 5.x model); web search is not uplifted.
- Long context: genai-prices applies the cliff (every token at the tier rate once the total
  input exceeds the tier start); the notes say when it applied.
- Web search: ``server_tool_use.web_search_requests`` at the model's rate (USD 10 per 1,000).
- Timestamp: prices are dated, so one instant is chosen per turn. Policy ``now`` (default)
  prices every turn at the same fixed instant (the ``now`` argument, else the Pricer's
  creation, UTC): a replayed cassette costs what it would cost today. Policy ``recorded``
  prices each turn at its ``recorded_at`` (falling back to that fixed instant, with a note).
- Unknown model: :class:`~pytest_tokenbudget.errors.PriceError` naming the model, the test and
  the override file to add it to; never a silent $0.
- ``usage.iterations`` (beta: compaction, advisor tool, server tool loops): the top level is the
  sum of the ``message`` entries, so those are not priced again; ``compaction`` and
  ``advisor_message`` entries are billed on top of it (Anthropic docs: compaction, advisor tool)
  and priced here, each as a usage of its own, into the ``iterations`` breakdown key and
  :attr:`TurnCost.iterations`. An advisor entry is priced at its own ``model``'s rates; a
  compaction entry names no model and is priced at the turn's (UNSURE); both take the turn's
  batch, fast and ``inference_geo`` context (UNSURE). A ``fallback_message`` entry is taken to be
  in the top level like ``message`` (UNSURE); an entry of an unknown type is not priced (noted).
  When the ``message``/``fallback_message`` entries do not sum to the top level, a note says so.
- Not priced (noted when present): code execution hours. Web fetches are billed as the tokens
  they add only (docs: pricing), so ``server_tool_use.web_fetch_requests`` costs nothing itself.

Override file (YAML; JSON is YAML too), validated against ``schemas/prices.schema.json``::

    # tokenbudget-prices.yaml; pass it with --token-budget-prices PATH or the
    # token_budget_prices ini key
    version: 1                       # optional, 1
    models:
      claude-sonnet-4-5:             # an exact model id, or the genai-prices entry it resolves to
        input_mtok: 2.4              # USD per million uncached input tokens (required)
        output_mtok: 12              # USD per million output tokens (required)
        cache_write_5m_mtok: 3.0     # optional; default 1.25 x input_mtok
        cache_write_1h_mtok: 4.8     # optional; default 2 x input_mtok
        cache_read_mtok: 0.24        # optional; default 0.1 x input_mtok
        web_search_per_1000: 10      # optional; USD per 1,000 searches, default 10
        batch_multiplier: 0.5        # optional; factor on token prices of batch turns, default 0.5
        fast_multiplier: 2           # optional; factor on token prices of fast turns
        inference_geo_multipliers:   # optional; replaces the built-in us: 1.1 rule
          us: 1.1
        note: 2026 enterprise contract   # optional; copied into each turn's notes
      my-private-model*:             # trailing * : every model id starting with my-private-model
        input_mtok: 1
        output_mtok: 5

Model keys match case-insensitively. Precedence: a key equal to the response's model, then a
key equal to the genai-prices entry the model resolves to (``claude-sonnet-4-5`` covers
``claude-sonnet-4-5-20250929``), then the longest ``*`` prefix. When several files name the same
key, the last file wins. Overrides win over genai-prices for the models they name (negotiated
rates) and add models it lacks. Override prices are flat: no long-context tiers. Defaulted cache
prices are named in the notes of the turns that use them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._modes import PriceAt
from ._validate import line_of, load_yaml
from .errors import ConfigError, PriceError
from .ledger import IterationUsage, TokenCounts, Turn, _dig, iterations_of, token_counts

if TYPE_CHECKING:  # genai-prices (and the HTTP client it imports) loads when a turn is first priced
    import genai_prices
    from genai_prices.types import ModelInfo, PriceCalculation, TieredPrices

__all__ = [
    "COMPONENTS",
    "DEFAULT_PRICE_FILE",
    "ITERATIONS",
    "TIMESTAMP_POLICIES",
    "UNATTRIBUTED",
    "IterationCost",
    "PriceFile",
    "PriceOverride",
    "PriceSource",
    "Pricer",
    "TurnCost",
    "load_price_file",
]

COMPONENTS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output", "web_search")
"""Keys of :attr:`TurnCost.breakdown`, always all present."""

ITERATIONS = "iterations"
"""Extra breakdown key, present only when ``usage.iterations`` has entries billed outside the
top-level counts (compaction, advisor): their USD, itemised in :attr:`TurnCost.iterations`."""

UNATTRIBUTED = "unattributed"
"""Extra breakdown key, present only if genai-prices' total differs from the component sum."""

DEFAULT_PRICE_FILE = "tokenbudget-prices.yaml"
"""The override file name suggested in error messages."""


TIMESTAMP_POLICIES = tuple(policy.value for policy in PriceAt)

_FLAG = "--token-budget-prices"
_INI = "token_budget_prices"
_PROVIDER = "anthropic"
_TOKEN_COMPONENTS = COMPONENTS[:-1]
_PER_UNIT = {name: Decimal(1_000_000) for name in _TOKEN_COMPONENTS} | {"web_search": Decimal(1000)}

# genai-prices price keys that price each component, most specific first. genai-prices charges a
# token at the most specific priced unit it belongs to (decompose.compute_leaf_values): a 1-hour
# write falls back to the generic cache-write price, then to the input price.
_GENAI_PRICE_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("input_mtok",),
    "cache_write_5m": ("cache_write_5m_mtok", "cache_write_mtok", "input_mtok"),
    "cache_write_1h": ("cache_write_1h_mtok", "cache_write_mtok", "input_mtok"),
    "cache_read": ("cache_read_mtok", "input_mtok"),
    "output": ("output_mtok",),
    "web_search": ("web_searches_kcount",),
}

# Anthropic's documented multipliers (docs: Pricing, Prompt caching, Batch processing). They are rules,
# not a price table: overrides default to them, and the notes say when they did.
_DEFAULT_CACHE_FACTORS = {
    "cache_write_5m_mtok": Decimal("1.25"),
    "cache_write_1h_mtok": Decimal("2"),
    "cache_read_mtok": Decimal("0.1"),
}
_DEFAULT_WEB_SEARCH_PER_1000 = Decimal(10)
_DEFAULT_BATCH_MULTIPLIER = Decimal("0.5")
_US_GEO_MULTIPLIER = Decimal("1.1")
_US_GEO_SINCE = (4, 6)

# claude-<family>-<major>[-<minor>], the minor being 1-2 digits (not a date): claude-opus-4-6,
# claude-opus-5, claude-haiku-4-5-20251001. Older ids (claude-3-5-sonnet) do not match.
_MODEL_VERSION = re.compile(r"^claude-[a-z]+-(\d+)(?:[-.](\d{1,2})(?!\d))?")

_COUNT_PATHS: tuple[tuple[str, ...], ...] = (
    ("input_tokens",),
    ("cache_creation_input_tokens",),
    ("cache_read_input_tokens",),
    ("output_tokens",),
    ("cache_creation", "ephemeral_5m_input_tokens"),
    ("cache_creation", "ephemeral_1h_input_tokens"),
    ("server_tool_use", "web_search_requests"),
)


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class PriceSource:
    """What priced a run; goes into reports.

    Attributes:
        library: ``"genai-prices"``.
        version: genai-prices' version.
        override_files: the price override files, in the order given (later ones win).
        timestamp_policy: ``"now"`` or ``"recorded"``.
        priced_at: the fixed instant (UTC) turns are priced at under ``"now"``; ``None`` under
            ``"recorded"``.
    """

    library: str
    version: str
    override_files: tuple[str, ...]
    timestamp_policy: str
    priced_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``priced_at`` as ISO 8601 or ``None``."""
        return {
            "library": self.library,
            "version": self.version,
            "override_files": list(self.override_files),
            "timestamp_policy": self.timestamp_policy,
            "priced_at": self.priced_at.isoformat() if self.priced_at is not None else None,
        }


@dataclass(frozen=True)
class IterationCost:
    """The price of one ``usage.iterations`` entry billed outside the top-level counts.

    Attributes:
        position: index in ``usage.iterations``.
        kind: ``compaction`` or ``advisor_message``.
        model: the model it was priced at (the entry's, else the turn's).
        counts: its billed quantities.
        cost_usd: its USD (included in the turn's ``cost_usd``).
        breakdown: USD per component (:data:`COMPONENTS`).
        model_ref: the genai-prices entry or override key that priced it.
    """

    position: int
    kind: str
    model: str
    counts: TokenCounts
    cost_usd: Decimal
    breakdown: dict[str, Decimal] = field(hash=False)
    model_ref: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict; amounts as decimal strings (exact)."""
        return {
            "position": self.position,
            "type": self.kind,
            "model": self.model,
            "model_ref": self.model_ref,
            "cost_usd": str(self.cost_usd),
            "breakdown": {name: str(value) for name, value in self.breakdown.items()},
        }


@dataclass(frozen=True)
class TurnCost:
    """The price of one turn.

    Attributes:
        cost_usd: total in USD.
        breakdown: USD per component, every key of :data:`COMPONENTS` present (``Decimal("0")``
            when unused): ``input`` (uncached input), ``cache_write_5m``, ``cache_write_1h``,
            ``cache_read``, ``output``, ``web_search``. They sum exactly to ``cost_usd``. An
            ``unattributed`` key appears only if genai-prices' total differs from the sum of
            the components computed from its prices (a genai-prices change; noted).
        model_ref: the genai-prices entry that matched (e.g. ``claude-sonnet-4-5``), or the
            override key.
        source: ``"genai-prices"`` or the override file's path.
        notes: rules applied or unsure, e.g. ``"batch: 50% of standard token prices"``.
        iterations: the ``usage.iterations`` entries billed outside the top level, each priced
            (their sum is ``breakdown["iterations"]``).
    """

    cost_usd: Decimal
    breakdown: dict[str, Decimal] = field(hash=False)
    model_ref: str
    source: str
    notes: tuple[str, ...] = ()
    iterations: tuple[IterationCost, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict; amounts as decimal strings (exact)."""
        out: dict[str, Any] = {
            "cost_usd": str(self.cost_usd),
            "breakdown": {name: str(value) for name, value in self.breakdown.items()},
            "model_ref": self.model_ref,
            "source": self.source,
            "notes": list(self.notes),
        }
        if self.iterations:
            out["iterations"] = [item.as_dict() for item in self.iterations]
        return out


# --------------------------------------------------------------------------------------------
# override files


@dataclass(frozen=True)
class PriceOverride:
    """The prices of one model from an override file. Token prices in USD per million tokens.

    Attributes:
        pattern: the key as written (a trailing ``*`` makes it a prefix).
        file: the file it comes from.
        line: the line of its key in that file, from 1.
        input_mtok: uncached input.
        output_mtok: output.
        cache_write_5m_mtok: 5-minute cache writes.
        cache_write_1h_mtok: 1-hour cache writes.
        cache_read_mtok: cache reads.
        web_search_per_1000: USD per 1,000 web searches.
        batch_multiplier: factor on token prices for batch turns.
        fast_multiplier: factor on token prices for fast-mode turns, if given.
        inference_geo_multipliers: factor on token prices per ``inference_geo`` (lower case), if
            given; replaces the built-in ``us`` rule.
        defaulted: the price keys that took their default.
        note: free text copied into notes.
    """

    pattern: str
    file: str
    line: int | None
    input_mtok: Decimal
    output_mtok: Decimal
    cache_write_5m_mtok: Decimal
    cache_write_1h_mtok: Decimal
    cache_read_mtok: Decimal
    web_search_per_1000: Decimal
    batch_multiplier: Decimal
    fast_multiplier: Decimal | None = None
    inference_geo_multipliers: Mapping[str, Decimal] | None = field(default=None, hash=False)
    defaulted: frozenset[str] = frozenset()
    note: str | None = None

    @property
    def is_prefix(self) -> bool:
        """Whether the key ends in ``*``."""
        return self.pattern.endswith("*")

    @property
    def key(self) -> str:
        """The lower-case id or prefix (without ``*``) the key matches."""
        return self.pattern.rstrip("*").lower()

    def rates(self) -> dict[str, Decimal]:
        """Standard prices per component: USD per million tokens, web search per 1,000."""
        return {
            "input": self.input_mtok,
            "cache_write_5m": self.cache_write_5m_mtok,
            "cache_write_1h": self.cache_write_1h_mtok,
            "cache_read": self.cache_read_mtok,
            "output": self.output_mtok,
            "web_search": self.web_search_per_1000,
        }


@dataclass(frozen=True)
class PriceFile:
    """A parsed, validated override file.

    Attributes:
        path: the file.
        version: its format version (1).
        models: its entries, in file order.
    """

    path: str
    version: int
    models: tuple[PriceOverride, ...]


def load_price_file(path: Path | str) -> PriceFile:
    """Read and validate a price override file (format in the module docstring).

    Args:
        path: the YAML (or JSON) file.

    Returns:
        The file's prices as Decimals, defaults filled in.

    Raises:
        PriceError: the file cannot be read, is not YAML, repeats a key, or breaks the schema;
            the message names the file and line, the JSON path of the bad key and what is
            accepted.
    """
    where = str(path)
    data, root = load_yaml(
        path,
        "prices.schema.json",
        PriceError,
        what="price file",
        fix=f"check the path given to {_FLAG} / {_INI}, and the format in pytest_tokenbudget.pricing",
    )
    models = tuple(
        _override(where, str(name), entry, line_of(root, ("models", str(name))))
        for name, entry in data["models"].items()
    )
    return PriceFile(where, int(data.get("version", 1)), models)


def _decimal(value: Any) -> Decimal:
    # YAML floats come as Python floats; repr gives back the digits as written (shortest repr).
    # NaN and infinities never get here: load_yaml's schema check refuses them at their line.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _override(where: str, name: str, entry: Mapping[str, Any], line: int | None) -> PriceOverride:
    def number(key: str) -> Decimal:
        return _decimal(entry[key])

    input_mtok = number("input_mtok")
    cache = {
        key: number(key) if key in entry else input_mtok * factor for key, factor in _DEFAULT_CACHE_FACTORS.items()
    }
    geo = entry.get("inference_geo_multipliers")
    return PriceOverride(
        pattern=name,
        file=where,
        line=line,
        input_mtok=input_mtok,
        output_mtok=number("output_mtok"),
        cache_write_5m_mtok=cache["cache_write_5m_mtok"],
        cache_write_1h_mtok=cache["cache_write_1h_mtok"],
        cache_read_mtok=cache["cache_read_mtok"],
        web_search_per_1000=number("web_search_per_1000")
        if "web_search_per_1000" in entry
        else _DEFAULT_WEB_SEARCH_PER_1000,
        batch_multiplier=number("batch_multiplier") if "batch_multiplier" in entry else _DEFAULT_BATCH_MULTIPLIER,
        fast_multiplier=number("fast_multiplier") if "fast_multiplier" in entry else None,
        inference_geo_multipliers=None if geo is None else {str(k).lower(): _decimal(v) for k, v in geo.items()},
        defaulted=frozenset(
            [k for k in _DEFAULT_CACHE_FACTORS if k not in entry]
            + [k for k in ("web_search_per_1000", "batch_multiplier") if k not in entry]
        ),
        note=entry.get("note"),
    )


# --------------------------------------------------------------------------------------------
# usage


def _by_component(counts: TokenCounts) -> dict[str, int]:
    return {
        "input": counts.uncached_input_tokens,
        "cache_write_5m": counts.cache_write_5m_tokens,
        "cache_write_1h": counts.cache_write_1h_tokens,
        "cache_read": counts.cache_read_tokens,
        "output": counts.output_tokens,
        "web_search": counts.web_search_requests,
    }


@functools.cache
def _genai_version() -> str:
    """genai-prices' version, read without importing it."""
    return importlib.metadata.version("genai-prices")


def _genai_usage(counts: TokenCounts) -> genai_prices.Usage:
    # genai-prices' input_tokens is the TOTAL input: cache reads and writes are parts of it, and
    # the 1-hour writes are part of the writes (genai-prices' Usage docstring).
    import genai_prices

    return genai_prices.Usage(
        input_tokens=counts.total_input_tokens,
        cache_write_tokens=counts.cache_write_tokens,
        cache_write_5m_tokens=counts.cache_write_5m_tokens,
        cache_write_1h_tokens=counts.cache_write_1h_tokens,
        cache_read_tokens=counts.cache_read_tokens,
        output_tokens=counts.output_tokens,
        web_searches=counts.web_search_requests,
    )


def _checked_counts(model: str, usage: Mapping[str, Any], test: str | None) -> TokenCounts:
    """The usage's counts (:func:`~pytest_tokenbudget.ledger.token_counts`), refusing negative ones."""
    for path in _COUNT_PATHS:
        value = _dig(usage, *path)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise PriceError(
                "usage cannot be priced",
                test=test,
                why=f"model {model!r}: usage.{'.'.join(path)} is {value}",
                fix="re-record the turn (a usage count cannot be negative)",
            )
    return token_counts(usage)


def _model_version(model: str) -> tuple[int, int] | None:
    match = _MODEL_VERSION.match(model.lower())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _percent(factor: Decimal) -> str:
    return format((factor * 100).normalize(), "f") + "%"


def _factor(value: Decimal) -> str:
    return "x" + format(value.normalize(), "f")


# --------------------------------------------------------------------------------------------
# the pricer


@dataclass
class _Priced:
    """Intermediate result: standard-context amounts and notes, before the geo uplift."""

    amounts: dict[str, Decimal]
    model_ref: str
    source: str
    notes: list[str]
    geo_rules: Mapping[str, Decimal] | None
    geo_model: str


class Pricer:
    """Prices turns with genai-prices' bundled data and optional override files.

    Args:
        override_files: price override files (format in the module docstring); later files win
            for a key they share.
        timestamp_policy: ``"now"`` prices every turn at one fixed instant; ``"recorded"`` at
            each turn's ``recorded_at``.
        now: the fixed instant (naive means UTC); default: when the Pricer is created.

    Raises:
        ConfigError: unknown ``timestamp_policy``.
        PriceError: an override file cannot be read or is invalid.

    Attributes:
        source: what prices the run, for reports.
    """

    def __init__(
        self,
        *,
        override_files: Sequence[Path | str] = (),
        timestamp_policy: str = "now",
        now: datetime | None = None,
    ) -> None:
        if timestamp_policy not in TIMESTAMP_POLICIES:
            raise ConfigError(
                "invalid price timestamp policy",
                why=f"got {timestamp_policy!r}; accepted: {', '.join(TIMESTAMP_POLICIES)}",
                fix="use 'now' (price every turn today) or 'recorded' (at its recording time)",
            )
        self._now = _utc(now) if now is not None else datetime.now(UTC)
        self._policy = timestamp_policy
        self._files = tuple(load_price_file(path) for path in override_files)
        self._exact: dict[str, PriceOverride] = {}
        self._prefixes: dict[str, PriceOverride] = {}
        for price_file in self._files:  # later files replace earlier ones
            for entry in price_file.models:
                (self._prefixes if entry.is_prefix else self._exact)[entry.key] = entry
        self.source = PriceSource(
            library="genai-prices",
            version=_genai_version(),
            override_files=tuple(f.path for f in self._files),
            timestamp_policy=timestamp_policy,
            priced_at=self._now if timestamp_policy == "now" else None,
        )

    def price(self, turn: Turn, *, test: str | None = None) -> TurnCost:
        """Price one turn of a ledger.

        Args:
            turn: the turn; priced by its answering ``model``; a batch turn at batch prices.
            test: the pytest node id, named in errors.

        Returns:
            The cost in USD with its breakdown and notes.

        Raises:
            PriceError: no price for the model, or a usage count is negative.
        """
        notes: list[str] = []
        at = self._now
        if self._policy == "recorded":
            if turn.recorded_at is not None:
                at = datetime.fromtimestamp(turn.recorded_at, UTC)
            else:
                notes.append(f"no recorded time: priced at {self._now.isoformat()} (now)")
        if turn.incomplete:
            notes.append("stream ended with an error event: priced on the usage received so far")
        cost = self.price_usage(turn.model, turn.usage, batch=turn.endpoint == "batch", at=at, test=test)
        if not notes:
            return cost
        return replace(cost, notes=(*notes, *cost.notes))

    def price_usage(
        self,
        model: str,
        usage: Mapping[str, Any],
        *,
        batch: bool = False,
        at: datetime | None = None,
        test: str | None = None,
    ) -> TurnCost:
        """Price one usage object (the API's ``usage``, as a dict).

        Args:
            model: the model that answered.
            usage: the usage dict; missing fields count 0.
            batch: a Message Batches result (also when ``usage.service_tier == "batch"``).
            at: the instant prices are taken at (naive means UTC); default: the Pricer's fixed
                instant, whatever the policy.
            test: the pytest node id, named in errors.

        Returns:
            The cost in USD with its breakdown and notes.

        Raises:
            PriceError: no price for the model, or a usage count is negative.
        """
        at = _utc(at) if at is not None else self._now
        counts = _checked_counts(model, usage, test)
        tier = usage.get("service_tier")
        batch = batch or tier == "batch"
        fast = usage.get("speed") == "fast"
        context: dict[str, str] = {}
        if batch:
            context["processing"] = "batch"
        if fast:
            context["speed"] = "fast"
        import genai_prices

        calc: PriceCalculation | None
        try:
            calc = genai_prices.calc_price(
                _genai_usage(counts),
                model,
                provider_id=_PROVIDER,
                genai_request_timestamp=at,
                price_context=context or None,
            )
        except LookupError:
            calc = None
        override = self._find_override(model, calc.model.id if calc is not None else None)
        if override is not None:
            priced = self._price_override(override, model, counts, batch=batch, fast=fast)
        elif calc is not None:
            priced = self._price_genai(calc, counts, at, batch=batch, fast=fast)
        else:
            raise self._unknown_model(model, test)
        notes = priced.notes
        if batch and fast:
            notes.append("batch and fast mode together (the API refuses speed in batches; UNSURE)")
        if tier == "priority":
            notes.append("priority tier: priced as standard (UNSURE)")

        amounts = priced.amounts
        geo = usage.get("inference_geo")
        factor = _geo_multiplier(geo, priced.geo_rules, priced.geo_model)
        if factor != 1:
            amounts = {
                name: value * factor if name in _TOKEN_COMPONENTS and value else value
                for name, value in amounts.items()
            }
            notes.append(f"inference_geo {geo}: {_factor(factor)} on token prices")
        iterations = iterations_of(usage)
        priced_iterations = tuple(
            self._price_iteration(item, model, usage, batch=batch, at=at, test=test)
            for item in iterations
            if item.billed_outside_top_level
        )
        notes.extend(_iteration_notes(model, counts, iterations, priced_iterations))
        if priced_iterations:
            amounts = {**amounts, ITERATIONS: sum((item.cost_usd for item in priced_iterations), Decimal(0))}
        total = sum(amounts.values(), Decimal(0))
        return TurnCost(total, amounts, priced.model_ref, priced.source, tuple(notes), priced_iterations)

    def _price_iteration(
        self,
        item: IterationUsage,
        model: str,
        usage: Mapping[str, Any],
        *,
        batch: bool,
        at: datetime,
        test: str | None,
    ) -> IterationCost:
        """One iteration billed outside the top level, priced as a usage of its own.

        It takes the turn's ``service_tier``, ``speed`` and ``inference_geo`` (UNSURE: the entries
        carry none of their own), and its own ``model`` when it names one (advisor entries do).
        """
        context = {key: usage[key] for key in ("service_tier", "speed", "inference_geo") if key in usage}
        own = {key: value for key, value in item.usage.items() if key not in ("type", "model", "iterations")}
        cost = self.price_usage(item.model or model, {**own, **context}, batch=batch, at=at, test=test)
        return IterationCost(
            item.position,
            item.kind,
            item.model or model,
            item.counts,
            cost.cost_usd,
            cost.breakdown,
            cost.model_ref,
        )

    # ----------------------------------------------------------------------------------------

    def _find_override(self, model: str, genai_id: str | None) -> PriceOverride | None:
        # Precedence: exact id, then the genai-prices entry, then the longest prefix.
        name = model.lower()
        if name in self._exact:
            return self._exact[name]
        if genai_id is not None and genai_id.lower() in self._exact:
            return self._exact[genai_id.lower()]
        prefixes = [key for key in self._prefixes if name.startswith(key)]
        return self._prefixes[max(prefixes, key=len)] if prefixes else None

    def _price_genai(
        self, calc: PriceCalculation, counts: TokenCounts, at: datetime, *, batch: bool, fast: bool
    ) -> _Priced:
        model = calc.model
        notes: list[str] = []
        if batch:
            notes.append(_variant_note("batch", "processing", "batch", model, at))
        if fast:
            notes.append(_variant_note("fast mode", "speed", "fast", model, at))
        amounts, tier_start = _genai_amounts(calc, counts)
        if tier_start is not None:
            notes.append(
                f"long context tier above {tier_start:,} input tokens "
                f"({counts.total_input_tokens:,} input tokens: every token at the tier rate)"
            )
        if counts.web_search_requests and getattr(calc.model_price, "web_searches_kcount", None) is None:
            notes.append(
                f"web search: genai-prices has no web search price for {model.id}; "
                f"{counts.web_search_requests} searches priced $0 (UNSURE)"
            )
        difference = calc.total_price - sum(amounts.values(), Decimal(0))
        if difference:
            # Trust genai-prices' total; keep the difference visible rather than spread it.
            amounts[UNATTRIBUTED] = difference
            notes.append(
                f"genai-prices total ${calc.total_price} differs from its per-component prices by "
                f"${difference}: shown as '{UNATTRIBUTED}'"
            )
        return _Priced(amounts, model.id, "genai-prices", notes, None, model.id)

    def _price_override(
        self, override: PriceOverride, model: str, counts: TokenCounts, *, batch: bool, fast: bool
    ) -> _Priced:
        notes = [
            f"override {override.pattern!r} from {override.file}"
            + (f" (line {override.line})" if override.line else "")
        ]
        if override.note:
            notes.append(f"override note: {override.note}")
        factor = Decimal(1)
        if batch:
            factor *= override.batch_multiplier
            default = " (default)" if "batch_multiplier" in override.defaulted else ""
            notes.append(
                f"batch: {_percent(override.batch_multiplier)} of standard token prices{default}; "
                "web search at full price"
            )
        if fast:
            if override.fast_multiplier is None:
                notes.append("fast mode: the override sets no fast_multiplier; priced as standard (UNSURE)")
            else:
                factor *= override.fast_multiplier
                notes.append(f"fast mode: {_factor(override.fast_multiplier)} on token prices")
        rates = override.rates()
        used = _by_component(counts)
        for key, multiple in _DEFAULT_CACHE_FACTORS.items():
            component = key.removesuffix("_mtok")
            if key in override.defaulted and used[component]:
                notes.append(f"{component}: override sets no {key}; default {_factor(multiple)} input_mtok")
        if "web_search_per_1000" in override.defaulted and counts.web_search_requests:
            notes.append(f"web_search: override sets no web_search_per_1000; default ${_DEFAULT_WEB_SEARCH_PER_1000}")
        amounts = {
            name: rates[name] * (factor if name in _TOKEN_COMPONENTS else 1) * used[name] / _PER_UNIT[name]
            if used[name]
            else Decimal(0)
            for name in COMPONENTS
        }
        return _Priced(amounts, override.pattern, override.file, notes, override.inference_geo_multipliers, model)

    def _unknown_model(self, model: str, test: str | None) -> PriceError:
        files = [f.path for f in self._files]
        if files:
            target = " or ".join(files)
            fix = f"add {model!r} under `models:` in {target} (format above)"
        else:
            fix = (
                f"add {model!r} to a price override file, e.g. {DEFAULT_PRICE_FILE} (format above), and pass "
                f"it: pytest {_FLAG} {DEFAULT_PRICE_FILE}, or set {_INI} = {DEFAULT_PRICE_FILE} in your ini"
            )
        return PriceError(
            f"no price for model {model!r}",
            test=test,
            why=f"genai-prices {_genai_version()} has no price for {model!r} (provider {_PROVIDER}), "
            + ("and no override file names it" if files else "and no price override file is in use"),
            details=[
                "models:",
                f"  {model}:",
                "    input_mtok: <USD per million input tokens>",
                "    output_mtok: <USD per million output tokens>",
            ],
            fix=fix,
        )


def _tier_rate(price: Decimal | TieredPrices, total_input: int) -> tuple[Decimal, int | None]:
    """The rate that applies, and the tier start when a tier (not the base) applies.

    Cliff pricing, as genai-prices' ``calc_unit_price``: the highest tier whose start the total
    input exceeds prices every token.
    """
    from genai_prices.types import TieredPrices

    if isinstance(price, TieredPrices):
        for tier in reversed(price.tiers):
            if total_input > tier.start:
                return tier.price, tier.start
        return price.base, None
    return price, None


def _genai_amounts(calc: PriceCalculation, counts: TokenCounts) -> tuple[dict[str, Decimal], int | None]:
    """USD per component from the matched genai-prices price, and the tier start if one applied."""
    used = _by_component(counts)
    amounts: dict[str, Decimal] = {}
    tier_start: int | None = None
    for name in COMPONENTS:
        amount = Decimal(0)
        for key in _GENAI_PRICE_KEYS[name] if used[name] else ():
            price = getattr(calc.model_price, key, None)
            if price is None:
                continue
            rate, start = _tier_rate(price, counts.total_input_tokens)
            if start is not None:
                tier_start = start
            amount = rate * Decimal(used[name]) / _PER_UNIT[name]
            break
        amounts[name] = amount
    return amounts, tier_start


def _variant_note(label: str, key: str, value: str, model: ModelInfo, at: datetime) -> str:
    """Say whether genai-prices' price variant for ``{key: value}`` applied, and why not."""
    from genai_prices.types import StartDateConstraint, TieredPrices

    variant = next((v for v in model.price_variants or () if v.when.get(key) == value), None)
    if variant is None:
        return f"{label}: genai-prices has no {label} price for {model.id}; priced at standard rates (UNSURE)"
    constraint = variant.constraint
    if constraint is not None and not constraint.active(at):
        since = (
            f" only from {constraint.start_date.isoformat()}"
            if isinstance(constraint, StartDateConstraint)
            else " at other times of day"
        )
        return (
            f"{label}: genai-prices has {label} prices for {model.id}{since}; priced at standard rates "
            f"for {at.date().isoformat()} (UNSURE; see the timestamp policy)"
        )
    standard = model.get_prices(at).input_mtok
    special = variant.prices.input_mtok
    if standard is None or special is None:
        return f"{label}: genai-prices {label} prices for {model.id}"
    base = standard.base if isinstance(standard, TieredPrices) else standard
    ratio = (special.base if isinstance(special, TieredPrices) else special) / base if base else Decimal(0)
    extra = "; web search at full price" if key == "processing" else ""
    return f"{label}: {_percent(ratio)} of standard token prices (genai-prices){extra}"


def _geo_multiplier(geo: Any, rules: Mapping[str, Decimal] | None, model: str) -> Decimal:
    if not isinstance(geo, str):
        return Decimal(1)
    if rules is not None:
        return rules.get(geo.lower(), Decimal(1))
    version = _model_version(model)
    if geo.lower() == "us" and version is not None and version >= _US_GEO_SINCE:
        return _US_GEO_MULTIPLIER
    return Decimal(1)


def _iteration_notes(
    model: str,
    counts: TokenCounts,
    iterations: Sequence[IterationUsage],
    priced: Sequence[IterationCost],
) -> list[str]:
    """What the pricing of ``usage.iterations`` assumed, and where the data disagrees with it."""
    if not iterations:
        return []
    notes = []
    for item in priced:
        whose = "its own model" if item.model != model else "the turn's model"
        unsure = " (UNSURE: the entry names no model)" if item.kind == "compaction" else ""
        notes.append(
            f"usage.iterations[{item.position}] {item.kind}: {item.counts.total_input_tokens:,} input + "
            f"{item.counts.output_tokens:,} output tokens billed outside the top-level usage, priced at "
            f"{whose} {item.model} (${item.cost_usd}){unsure}"
        )
    if priced:
        notes.append("usage.iterations: the turn's service tier, speed and inference_geo applied to them (UNSURE)")
    kinds = [i.kind for i in iterations if not i.in_top_level and not i.billed_outside_top_level]
    if kinds:
        counted = ", ".join(f"{kinds.count(kind)} {kind}" for kind in sorted(set(kinds)))
        notes.append(f"usage.iterations: {counted} of an unknown type not priced (UNSURE)")
    if any(i.kind == "fallback_message" for i in iterations):
        notes.append("usage.iterations: fallback_message taken as part of the top-level usage (UNSURE)")
    inside = [i.counts for i in iterations if i.in_top_level]
    if inside:
        summed = (
            sum(c.uncached_input_tokens for c in inside),
            sum(c.cache_write_tokens for c in inside),
            sum(c.cache_read_tokens for c in inside),
            sum(c.output_tokens for c in inside),
        )
        top = (counts.uncached_input_tokens, counts.cache_write_tokens, counts.cache_read_tokens, counts.output_tokens)
        if summed != top:
            notes.append(
                "usage.iterations: message entries sum to input/cache write/cache read/output "
                f"{'/'.join(map(str, summed))}, the top level says {'/'.join(map(str, top))}; "
                "priced from the top level (UNSURE)"
            )
    return notes
