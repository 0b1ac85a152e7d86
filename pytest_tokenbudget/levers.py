"""The four levers that make an agent cheap, and what each would save on a recorded run.

Levers are applied in this order, each measured on top of the ones before it, so savings never
double count: prompt caching, the Message Batches API, model tiering, context discipline.

How each is measured (:func:`advise`), on one test's ledger, at the report's prices:

1. **caching**: the *static prefix* of a model's turns is the longest run of prefix blocks that
   every turn of that model sends unchanged. When it is re-sent uncached (no breakpoint, a
   breakpoint that never hits because it sits after a volatile block, a breakpoint under the
   model's minimum) or cached with the wrong TTL (5m where the recorded gaps exceed 5 minutes,
   1h where 5m suffices), candidate edits are tried: a breakpoint on the static prefix's last
   markable block (5m, and 1h), breakpoints that never hit removed, and the existing breakpoints
   with the other TTL. Each candidate's requests are replayed through the cache analysis
   (:func:`pytest_tokenbudget.analysis.analyze` with the edited requests as *changed* ones: the
   recording's exact counts where the prefix is unchanged, the cache model for reads and
   writes), priced, and the cheapest one that saves is proposed, with its JSON path.
2. **batch**: a test marked batchable (``@pytest.mark.token_budget(batchable=True)`` or matched
   by a ``token_budget_batchable`` pattern) that makes real-time calls: the same turns, as left
   by lever 1, at batch prices (genai-prices' ``{"processing": "batch"}`` context).
3. **model_tier**: a turn on a larger model (not a Haiku, and dearer than the cheap tier) whose job looks cheap (a short
   output, a tool call with small arguments, a forced tool or output format whose schema is a
   fixed label set): the same usage priced at the cheap tier. A price difference, never a
   quality claim.
4. **context**: each large block (a tool result, document or image of at least
   :data:`LARGE_BLOCK_CHARS` characters) still sent after the turn that first carried it (the turn
   whose reply used it): it is replaced by a short stub in those later turns, the requests
   replayed through the cache analysis as in lever 1, and priced as levers 2 and 3 left them.

UNSURE, said rather than guessed: a block is taken as used only by the turn that first carries
it (later references are not detected: if a later turn needs it, keep it); the cheap tier's
tokenizer may count the same text differently (the estimate keeps the recorded counts); a batch
turn's cache hits are taken as in real time (the API calls batch caching best-effort).
"""

from __future__ import annotations

import copy
import enum
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from .analysis import analyze, apply_estimates
from .cache_model import minimum_cacheable
from .errors import TokenBudgetError
from .ledger import Ledger, Turn
from .prefix import Block, LayoutMemo, PromptLayout, layout_of
from .pricing import Pricer

__all__ = [
    "DEFAULT_CHEAP_MODEL",
    "FAST_GROWTH_FACTOR",
    "LARGE_BLOCK_CHARS",
    "STUB_TEXT",
    "Advice",
    "AdviceOptions",
    "Growth",
    "Lever",
    "LeverKind",
    "advise",
    "flag_growth",
    "suite_levers",
]

# The cheapest current Haiku in genai-prices 0.2.3 ($0.10 / $0.50 per MTok).
DEFAULT_CHEAP_MODEL = "claude-haiku-5-5"
LARGE_BLOCK_CHARS = 8_000
"""A block this long (about 2,000 tokens) or holding an image or document counts as large."""
STUB_TEXT = "[elided: no longer needed]"
"""What a large block is replaced by in the turns after its use."""
SHORT_OUTPUT_TOKENS = 64
SMALL_TOOL_CALL_TOKENS = 128
_MAX_LARGE_BLOCKS = 5  # each one costs a replay of the run through the cache analysis
FAST_GROWTH_FACTOR = 3.0
"""A test grows "much faster than the rest" when its input grows this many times the suite's median."""


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
        saving_tokens: the tokens no longer billed at full price: for caching, input tokens
            moved off the uncached and cache-write prices; for batch and model tiering, every
            input and output token of the turns moved; for context, input tokens not sent.
        assumption: what the saving rests on, in one sentence.
        change: the concrete edit that pulls the lever.
        path: the JSON path of the request the change applies to, where there is one.
        turns: the (0-based) turns the saving comes from.
        cost_before_usd: the test's cost before this lever (after the earlier ones).
        tests: for a suite total, how many tests it sums (0 for one test's lever).
    """

    lever: LeverKind
    saving_usd: Decimal
    saving_tokens: int
    assumption: str
    change: str
    path: str | None = None
    turns: tuple[int, ...] = ()
    cost_before_usd: Decimal | None = None
    tests: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``tests[].levers[]``, ``totals.levers[]``)."""
        out: dict[str, Any] = {
            "lever": self.lever.value,
            "saving_usd": float(self.saving_usd),
            "saving_tokens": self.saving_tokens,
            "assumption": self.assumption,
            "change": self.change,
        }
        if self.path is not None:
            out["path"] = self.path
        if self.turns:
            out["turns"] = list(self.turns)
        if self.cost_before_usd is not None:
            out["cost_before_usd"] = float(self.cost_before_usd)
        if self.tests:
            out["tests"] = self.tests
        return out


@dataclass(frozen=True)
class AdviceOptions:
    """What the advisor is told about a test.

    Attributes:
        batchable: nobody waits on this test's calls (the marker's ``batchable=True`` or a
            ``token_budget_batchable`` pattern).
        cheap_model: the cheap tier turns are priced at.
    """

    batchable: bool = False
    cheap_model: str = DEFAULT_CHEAP_MODEL


@dataclass(frozen=True)
class Growth:
    """How a test's input grows per turn.

    Attributes:
        tokens_per_turn: least-squares slope of total input tokens over the turn index.
        turns: turns fitted.
        fast: grows more than :data:`FAST_GROWTH_FACTOR` times the suite's median (set by
            :func:`flag_growth`).
        suite_median: the median slope it was compared with.
    """

    tokens_per_turn: float
    turns: int
    fast: bool = False
    suite_median: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``tests[].input_growth``)."""
        return {
            "tokens_per_turn": round(self.tokens_per_turn, 3),
            "turns": self.turns,
            "fast": self.fast,
            "suite_median": None if self.suite_median is None else round(self.suite_median, 3),
        }


@dataclass(frozen=True)
class Advice:
    """One test's levers (only those that save), and its input growth."""

    levers: tuple[Lever, ...] = ()
    growth: Growth | None = None
    cost_usd: Decimal | None = None
    """The test's cost as recorded, at the report's prices."""


# ----------------------------------------------------------------------------------------------
# state carried from lever to lever


@dataclass(frozen=True)
class _State:
    requests: tuple[Any, ...]  # each turn's request body as edited so far
    usage: tuple[Mapping[str, Any], ...]
    model: tuple[str, ...]
    batch: tuple[bool, ...]


def _price(pricer: Pricer, turns: Sequence[Turn], state: _State, test: str | None) -> Decimal:
    total = Decimal(0)
    for turn, usage, model, batch in zip(turns, state.usage, state.model, state.batch, strict=True):
        priced = replace(turn, usage=usage, model=model, endpoint="batch" if batch else turn.endpoint)
        total += pricer.price(priced, test=test).cost_usd
    return total


def _estimate(turns: Sequence[Turn], requests: Sequence[Any]) -> list[Mapping[str, Any]] | None:
    """Usage of each turn when its request is ``requests[i]``, by the cache analysis."""
    changed = {
        turn.index: turn.request for turn, request in zip(turns, requests, strict=True) if request is not turn.request
    }
    if not changed:
        return [turn.usage for turn in turns]
    edited = [replace(turn, request=request) for turn, request in zip(turns, requests, strict=True)]
    try:
        analysis = analyze(edited, changed=changed)
    except (ValueError, KeyError, IndexError, TypeError):  # an edit the analysis cannot follow: no advice
        return None
    return [turn.usage for turn in apply_estimates(Ledger(edited), analysis).turns]


def _input_billed_full(usage: Mapping[str, Any]) -> int:
    return int(usage.get("input_tokens") or 0) + int(usage.get("cache_creation_input_tokens") or 0)


def _total_input(usage: Mapping[str, Any]) -> int:
    return sum(
        int(usage.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _money(value: Decimal) -> str:
    return f"${value:,.4f}"


# ----------------------------------------------------------------------------------------------
# editing requests by JSON path

_PATH = re.compile(r"^(tools|system|messages)(?:\[(\d+)\])?(?:\.content(?:\[(\d+)\])?)?$")


def _edit_block(body: dict[str, Any], path: str, edit: Any) -> bool:
    """Apply ``edit(block) -> block`` to the block at ``path`` of ``body`` (in place; string
    ``system`` or message ``content`` become a one-block list). False when the path is not found."""
    match = _PATH.match(path)
    if match is None:
        return False
    level, first, second = match.group(1), match.group(2), match.group(3)
    if level == "system" and first is None:
        system = body.get("system")
        if isinstance(system, str):
            body["system"] = [edit({"type": "text", "text": system})]
            return True
        return False
    container = body.get(level)
    if not isinstance(container, list) or first is None or int(first) >= len(container):
        return False
    if level != "messages":
        container[int(first)] = edit(dict(container[int(first)]))
        return True
    message = dict(container[int(first)])
    content = message.get("content")
    if second is None:
        if not isinstance(content, str):
            return False
        message["content"] = [edit({"type": "text", "text": content})]
    else:
        if not isinstance(content, list) or int(second) >= len(content):
            return False
        content = list(content)
        content[int(second)] = edit(dict(content[int(second)]))
        message["content"] = content
    container[int(first)] = message
    return True


def _with_control(ttl: str) -> Any:
    def edit(block: dict[str, Any]) -> dict[str, Any]:
        control: dict[str, Any] = {"type": "ephemeral"}
        if ttl == "1h":
            control["ttl"] = "1h"
        return {**block, "cache_control": control}

    return edit


def _without_control(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control"}


def _copy_body(body: Any) -> dict[str, Any]:
    out: dict[str, Any] = copy.copy(dict(body))
    for key in ("tools", "system", "messages"):
        if isinstance(out.get(key), list):
            out[key] = list(out[key])
    return out


# ----------------------------------------------------------------------------------------------
# lever 1: caching


@dataclass(frozen=True)
class _Candidate:
    requests: tuple[Any, ...]
    change: str
    path: str | None
    problem: str


def _layouts(turns: Sequence[Turn], memo: LayoutMemo) -> list[PromptLayout | None]:
    out: list[PromptLayout | None] = []
    for turn in turns:
        request = turn.request
        if isinstance(request, Mapping) and isinstance(request.get("messages"), list):
            body = dict(request)
            body.setdefault("model", turn.requested_model or turn.model)
            out.append(layout_of(body, memo))
        else:
            out.append(None)
    return out


def _static_block(layouts: Sequence[PromptLayout]) -> Block | None:
    """The last markable block of the prefix every layout shares (string ``system`` or message
    content counts: it can be made a block list)."""
    first = layouts[0]
    common = len(first.chain)
    for layout in layouts[1:]:
        limit = min(common, len(layout.chain))
        common = next((i for i in range(limit) if layout.chain[i] != first.chain[i]), limit)
    for block in reversed(first.blocks[:common]):
        if block.markable or block.path == "system" or block.path.endswith(".content"):
            return block
    return None


def _gaps(turns: Sequence[Turn]) -> list[float]:
    times = [t.recorded_at for t in turns if t.recorded_at is not None]
    return [b - a for a, b in itertools.pairwise(times)]


def _caching_candidates(turns: Sequence[Turn], layouts: Sequence[PromptLayout | None]) -> list[_Candidate]:
    by_model: dict[str, list[int]] = {}
    for position, layout in enumerate(layouts):
        if layout is not None:
            by_model.setdefault(layout.model, []).append(position)
    candidates: list[_Candidate] = []
    for model, positions in by_model.items():
        if len(positions) < 2:
            continue
        group = [layouts[p] for p in positions]
        present = [layout for layout in group if layout is not None]
        block = _static_block(present)
        gaps = _gaps([turns[p] for p in positions])
        long_gaps = sum(1 for gap in gaps if gap > 300)
        read_fingerprints = _read_fingerprints(turns, positions, present)
        never_hit = sorted(
            {p.path for layout in present for p in layout.breakpoints if not p.automatic}
            - {p.path for layout in present for p in layout.breakpoints if p.fingerprint in read_fingerprints}
        )
        # A breakpoint already on the static block: only its TTL can be wrong (tried below).
        existing = block is not None and any(
            p.block == block.index and not p.automatic for layout in present for p in layout.breakpoints
        )
        if block is not None and not existing:
            minimum = minimum_cacheable(model)[0]
            for ttl in ("5m", "1h") if long_gaps else ("5m",):  # 1h pays only across gaps over 5 min
                requests = list(t.request for t in turns)
                for p in positions:
                    body = _copy_body(requests[p])
                    for path in never_hit:
                        if path != block.path:
                            _edit_block(body, path, _without_control)
                    _edit_block(body, block.path, _with_control(ttl))
                    requests[p] = body
                moved = [path for path in never_hit if path != block.path]
                problem = _caching_problem(present, block, moved, ttl, long_gaps, minimum)
                ttl_text = ', "ttl": "1h"' if ttl == "1h" else ""
                change = f'add "cache_control": {{"type": "ephemeral"{ttl_text}}} to {block.path}'
                if moved:
                    change += f" and remove it from {', '.join(moved)} (never read)"
                candidates.append(_Candidate(tuple(requests), change, block.path, problem))
        # The existing breakpoints with the other TTL.
        ttls = {p.ttl for layout in present for p in layout.breakpoints}
        if len(ttls) == 1 and not any(p.automatic for layout in present for p in layout.breakpoints):
            (ttl,) = ttls
            other = "5m" if ttl == "1h" else "1h"
            # Only a TTL that fits the recorded gaps can save: 1h when some gap exceeds 5 minutes,
            # 5m when none does (each candidate costs a replay of the whole run).
            if (other == "1h") != (long_gaps > 0):
                continue
            paths = sorted({p.path for layout in present for p in layout.breakpoints})
            requests = list(t.request for t in turns)
            for p in positions:
                body = _copy_body(requests[p])
                for path in paths:
                    _edit_block(body, path, _with_control(other))
                requests[p] = body
            why = (
                f"{long_gaps} recorded gap(s) between turns exceed 5 minutes, so 5m entries expire"
                if other == "1h"
                else "every recorded gap between turns is under 5 minutes: 1h writes pay 2x for nothing"
            )
            candidates.append(
                _Candidate(
                    tuple(requests),
                    f"set the ttl of the breakpoint(s) at {', '.join(paths)} to {other}",
                    paths[0] if paths else None,
                    why,
                )
            )
    return candidates


def _read_fingerprints(turns: Sequence[Turn], positions: Sequence[int], layouts: Sequence[PromptLayout]) -> set[str]:
    """Fingerprints of breakpoints some turn read up to or past (by recorded cache reads)."""
    read: set[str] = set()
    for p, layout in zip(positions, layouts, strict=True):
        if turns[p].cache_read_input_tokens:
            read.update(point.fingerprint for point in layout.breakpoints)
    # A breakpoint counts as hit when a later turn with a read carries the same fingerprint.
    seen: dict[str, int] = {}
    for layout in layouts:
        for point in layout.breakpoints:
            seen[point.fingerprint] = seen.get(point.fingerprint, 0) + 1
    return {fp for fp in read if seen.get(fp, 0) > 1}


def _caching_problem(
    layouts: Sequence[PromptLayout], block: Block, moved: Sequence[str], ttl: str, long_gaps: int, minimum: int
) -> str:
    breakpoints = [p for layout in layouts for p in layout.breakpoints]
    if not breakpoints:
        problem = f"the static prefix up to {block.path} is re-sent uncached in {len(layouts)} turns (no breakpoint)"
    elif moved:
        problem = (
            f"the breakpoint at {', '.join(moved)} sits after a block that changes every turn: it writes and never "
            f"hits, while the static prefix up to {block.path} is re-sent uncached"
        )
    else:
        problem = (
            f"the breakpoint(s) at {', '.join(sorted({p.path for p in breakpoints}))} cache less than the static "
            f"prefix up to {block.path} (a prefix under the minimum of {minimum:,} tokens caches nothing)"
        )
    if ttl == "1h" and long_gaps:
        problem += f"; {long_gaps} recorded gap(s) between turns exceed 5 minutes, hence a 1h TTL"
    return problem


def _caching(
    turns: Sequence[Turn], state: _State, pricer: Pricer, test: str | None, before: Decimal, memo: LayoutMemo
) -> tuple[Lever | None, _State]:
    layouts = _layouts(turns, memo)
    best: tuple[Decimal, _Candidate, list[Mapping[str, Any]]] | None = None
    for candidate in _caching_candidates(turns, layouts):
        usage = _estimate(turns, candidate.requests)
        if usage is None:
            continue
        cost = _price(pricer, turns, replace(state, usage=tuple(usage)), test)
        if cost < before and (best is None or cost < best[0]):
            best = (cost, candidate, usage)
    if best is None:
        return None, state
    cost, candidate, usage = best
    moved = sum(_input_billed_full(a) - _input_billed_full(b) for a, b in zip(state.usage, usage, strict=True))
    changed_turns = tuple(
        t.index for t, old, new in zip(turns, state.usage, usage, strict=True) if _total_input(old) and old != new
    )
    lever = Lever(
        LeverKind.CACHING,
        before - cost,
        moved,
        f"{candidate.problem}; replayed by the cache model at the recorded turn times "
        f"(run cost {_money(before)} -> {_money(cost)})",
        candidate.change,
        candidate.path,
        changed_turns,
        before,
    )
    return lever, replace(state, requests=candidate.requests, usage=tuple(usage))


# ----------------------------------------------------------------------------------------------
# lever 2: batch


def _batch(
    turns: Sequence[Turn], state: _State, pricer: Pricer, test: str | None, before: Decimal, options: AdviceOptions
) -> tuple[Lever | None, _State]:
    if not options.batchable:
        return None, state
    moved = tuple(i for i, (turn, batch) in enumerate(zip(turns, state.batch, strict=True)) if not batch)
    if not moved:
        return None, state
    after = replace(state, batch=tuple(True for _ in state.batch))
    cost = _price(pricer, turns, after, test)
    if cost >= before:
        return None, state
    tokens = sum(_total_input(state.usage[i]) + int(state.usage[i].get("output_tokens") or 0) for i in moved)
    lever = Lever(
        LeverKind.BATCH,
        before - cost,
        tokens,
        f"the test is marked batchable: nobody waits on its {len(moved)} real-time call(s); the same turns at "
        "batch prices, cache hits as recorded (batch caching is best-effort)",
        f"send these {len(moved)} requests through the Message Batches API "
        "(client.messages.batches.create(requests=[{custom_id, params}, ...]))",
        None,
        tuple(turns[i].index for i in moved),
        before,
    )
    return lever, after


# ----------------------------------------------------------------------------------------------
# lever 3: model tiering


def _labels(request: Mapping[str, Any]) -> list[str] | None:
    """The fixed label set of a forced tool or output format, if its schema has one."""
    schemas: list[Any] = []
    choice = request.get("tool_choice")
    raw_tools = request.get("tools")
    tools: list[Any] = raw_tools if isinstance(raw_tools, list) else []
    if isinstance(choice, Mapping) and choice.get("type") in ("tool", "any"):
        for tool in tools:
            if isinstance(tool, Mapping) and (choice.get("type") == "any" or tool.get("name") == choice.get("name")):
                schemas.append(tool.get("input_schema"))
    output = request.get("output_config")
    if isinstance(output, Mapping) and isinstance(output.get("format"), Mapping):
        schemas.append(output["format"].get("schema"))
    for schema in schemas:
        found = _find_enum(schema)
        if found:
            return found
    return None


def _find_enum(schema: Any) -> list[str] | None:
    if isinstance(schema, Mapping):
        values = schema.get("enum")
        if isinstance(values, list) and values:
            return [str(v) for v in values]
        for value in schema.values():
            found = _find_enum(value)
            if found:
                return found
    elif isinstance(schema, list):
        for value in schema:
            found = _find_enum(value)
            if found:
                return found
    return None


def _cheap_job(turn: Turn, usage: Mapping[str, Any]) -> str | None:
    output = int(usage.get("output_tokens") or 0)
    request = turn.request if isinstance(turn.request, Mapping) else {}
    labels = _labels(request)
    if labels:
        shown = ", ".join(labels[:6]) + (", ..." if len(labels) > 6 else "")
        return f"classification against a fixed label set ({shown})"
    if turn.stop_reason == "tool_use" and output <= SMALL_TOOL_CALL_TOKENS:
        return f"a tool call with small arguments ({output} output tokens)"
    if output <= SHORT_OUTPUT_TOKENS:
        return f"a short output ({output} tokens)"
    return None


def _unit_price(pricer: Pricer, model: str) -> Decimal | None:
    try:
        return pricer.price_usage(model, {"input_tokens": 1_000, "output_tokens": 1_000}).cost_usd
    except TokenBudgetError:
        return None


def _tier(
    turns: Sequence[Turn], state: _State, pricer: Pricer, test: str | None, before: Decimal, options: AdviceOptions
) -> tuple[Lever | None, _State]:
    cheap = options.cheap_model
    cheap_price = _unit_price(pricer, cheap)
    if cheap_price is None:
        return None, state
    prices: dict[str, Decimal | None] = {}
    moved: list[int] = []
    jobs: dict[str, int] = {}
    for i, turn in enumerate(turns):
        model = state.model[i]
        if model not in prices:
            prices[model] = _unit_price(pricer, model)
        price = prices[model]
        # A larger model: not a Haiku (a Haiku is already the small tier), and dearer than the cheap tier.
        if price is None or price <= cheap_price or model == cheap or "haiku" in model.lower():
            continue
        job = _cheap_job(turn, state.usage[i])
        if job is not None:
            moved.append(i)
            # Counted by kind of job; a label set is kept (it says what is classified).
            key = job if job.startswith("classification") else job.split(" (")[0]
            jobs[key] = jobs.get(key, 0) + 1
    if not moved:
        return None, state
    after = replace(state, model=tuple(cheap if i in moved else m for i, m in enumerate(state.model)))
    cost = _price(pricer, turns, after, test)
    if cost >= before:
        return None, state
    models = sorted({state.model[i] for i in moved})
    tokens = sum(_total_input(state.usage[i]) + int(state.usage[i].get("output_tokens") or 0) for i in moved)
    why = "; ".join(f"{count} x {job}" for job, count in sorted(jobs.items()))
    lever = Lever(
        LeverKind.MODEL_TIER,
        before - cost,
        tokens,
        f"{len(moved)} turn(s) on {', '.join(models)} look cheap ({why}): the same tokens priced at {cheap}; "
        "a price difference, not a claim that the cheaper model answers as well (its tokenizer may count "
        "differently)",
        f'send these turns with "model": "{cheap}" (the cheap tier)',
        "model",
        tuple(turns[i].index for i in moved),
        before,
    )
    return lever, after


# ----------------------------------------------------------------------------------------------
# lever 4: context discipline


@dataclass(frozen=True)
class _Large:
    digest: bytes
    path: str
    first: int  # position of the first turn carrying it
    kind: str
    chars: int


def _large_blocks(layouts: Sequence[PromptLayout | None]) -> list[_Large]:
    seen: dict[bytes, _Large] = {}
    for position, layout in enumerate(layouts):
        if layout is None:
            continue
        for block in layout.blocks:
            if block.level != "messages" or block.kind not in ("tool_result", "document", "image"):
                continue
            if len(block.canonical) < LARGE_BLOCK_CHARS and not block.images:
                continue
            if block.canonical not in seen:
                seen[block.canonical] = _Large(block.canonical, block.path, position, block.kind, len(block.canonical))
    return sorted(seen.values(), key=lambda b: (-b.chars, b.first))[:_MAX_LARGE_BLOCKS]


def _stub(block: dict[str, Any]) -> dict[str, Any]:
    if block.get("type") == "tool_result":
        return {k: (STUB_TEXT if k == "content" else v) for k, v in block.items()}
    return {"type": "text", "text": STUB_TEXT}


def _context(
    turns: Sequence[Turn], state: _State, pricer: Pricer, test: str | None, before: Decimal, memo: LayoutMemo
) -> tuple[list[Lever], _State]:
    levers: list[Lever] = []
    base_layouts = _layouts([replace(t, request=r) for t, r in zip(turns, state.requests, strict=True)], memo)
    for large in _large_blocks(base_layouts):
        requests = list(state.requests)
        later: list[int] = []
        for position in range(large.first + 1, len(turns)):
            layout = base_layouts[position]
            if layout is None:
                continue
            block = next((b for b in layout.blocks if b.canonical == large.digest), None)
            if block is None:
                continue
            body = _copy_body(requests[position])
            if _edit_block(body, block.path, _stub):
                requests[position] = body
                later.append(position)
        if not later:
            continue
        usage = _estimate(turns, requests)
        if usage is None:
            continue
        after = replace(state, requests=tuple(requests), usage=tuple(usage))
        cost = _price(pricer, turns, after, test)
        if cost >= before:
            continue
        tokens = sum(_total_input(a) - _total_input(b) for a, b in zip(state.usage, usage, strict=True))
        first = turns[large.first].index
        what = {"tool_result": "tool result", "image": "image", "document": "document"}.get(large.kind, large.kind)
        levers.append(
            Lever(
                LeverKind.CONTEXT,
                before - cost,
                tokens,
                f"the {what} at {large.path} ({large.chars:,} characters) was used by turn {first} and re-billed "
                f"in {len(later)} later turn(s) that do not refer to it (taken as unused after turn {first}); "
                f"replayed by the cache model with it stubbed out",
                f"after turn {first}, replace the {what} at {large.path} with a short stub "
                f"({STUB_TEXT!r}), or summarise it, or run that step in a subagent",
                large.path,
                tuple(turns[p].index for p in later),
                before,
            )
        )
        state, before = after, cost
    return levers, state


def _growth(turns: Sequence[Turn]) -> Growth | None:
    if len(turns) < 3:
        return None
    xs = list(range(len(turns)))
    ys = [t.total_input_tokens for t in turns]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
    return Growth(slope, len(turns))


# ----------------------------------------------------------------------------------------------
# the advisor


def advise(ledger: Ledger, pricer: Pricer, options: AdviceOptions | None = None, *, test: str | None = None) -> Advice:
    """Each lever's saving on one test, measured in order on top of the ones before.

    Args:
        ledger: the test's turns, with their request bodies (without them only batch and
            model tiering can be judged, on output size alone).
        pricer: the report's prices.
        options: whether the test is batchable, and the cheap tier.
        test: the node id, named in price errors.

    Returns:
        The levers that save (in lever order; context may list several blocks), and the test's
        input growth. No levers when a turn cannot be priced.
    """
    options = options or AdviceOptions()
    turns = list(ledger.turns)
    growth = _growth(turns)
    if not turns:
        return Advice((), growth)
    state = _State(
        tuple(t.request for t in turns),
        tuple(t.usage for t in turns),
        tuple(t.model for t in turns),
        tuple(t.endpoint == "batch" or t.service_tier == "batch" for t in turns),
    )
    try:
        recorded = before = _price(pricer, turns, state, test)
    except TokenBudgetError:
        return Advice((), growth)
    levers: list[Lever] = []
    has_requests = ledger.has_requests
    memo = LayoutMemo()  # the layouts of every edit share their unchanged blocks
    try:
        if has_requests:
            lever, state = _caching(turns, state, pricer, test, before, memo)
            if lever is not None:
                levers.append(lever)
                before -= lever.saving_usd
        lever, state = _batch(turns, state, pricer, test, before, options)
        if lever is not None:
            levers.append(lever)
            before -= lever.saving_usd
        lever, state = _tier(turns, state, pricer, test, before, options)
        if lever is not None:
            levers.append(lever)
            before -= lever.saving_usd
        if has_requests:
            context, state = _context(turns, state, pricer, test, before, memo)
            levers.extend(context)
    except TokenBudgetError:
        return Advice(tuple(levers), growth, recorded)
    return Advice(tuple(levers), growth, recorded)


def suite_levers(per_test: Iterable[Sequence[Lever]]) -> tuple[Lever, ...]:
    """The suite's saving per lever: each lever summed over the tests (in lever order)."""
    sums: dict[LeverKind, tuple[Decimal, int, int, set[int]]] = {}
    for test_number, levers in enumerate(per_test):
        for lever in levers:
            usd, tokens, count, tests = sums.get(lever.lever, (Decimal(0), 0, 0, set()))
            sums[lever.lever] = (usd + lever.saving_usd, tokens + lever.saving_tokens, count + 1, tests | {test_number})
    out = []
    for kind in LeverKind:
        if kind not in sums:
            continue
        usd, tokens, count, tests = sums[kind]
        out.append(
            Lever(
                kind,
                usd,
                tokens,
                f"sum over {len(tests)} test(s), each measured on top of the levers before it",
                f"{count} change(s): see each test",
                tests=len(tests),
            )
        )
    return tuple(out)


def flag_growth(growths: Mapping[str, Growth]) -> dict[str, Growth]:
    """Mark the tests whose input grows much faster than the suite's median (at least 3 tests of
    3+ turns are needed for a median worth comparing with)."""
    if len(growths) < 3:
        return dict(growths)
    slopes = sorted(g.tokens_per_turn for g in growths.values())
    middle = len(slopes) // 2
    median = slopes[middle] if len(slopes) % 2 else (slopes[middle - 1] + slopes[middle]) / 2
    out = {}
    for name, growth in growths.items():
        fast = growth.tokens_per_turn > FAST_GROWTH_FACTOR * max(median, 1.0) and growth.tokens_per_turn > 0
        out[name] = replace(growth, fast=fast, suite_median=median)
    return out
