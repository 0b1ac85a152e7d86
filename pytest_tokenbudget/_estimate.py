"""Token counts for a request that changed since it was recorded: exact where the recording
says, estimated only for the bytes that changed.

The recording tells exact token counts at a few places of each recorded prompt: its end (the
turn's input tokens, less the few tokens the API counts outside the blocks) and every cache
breakpoint whose prefix some turn read or wrote (the cache analysis learns them, by prefix
fingerprint). Between two such anchors lies a *segment* whose token count is known exactly.

From the segments of the whole recording this module learns

* a density (tokens per byte of canonical JSON) per kind of content: tool definitions, text
  (system and message text), ``tool_use`` inputs, ``tool_result`` contents, anything else; and
  tokens per image or document. The densities are fitted to every segment at once
  (multiplicative updates of a Poisson fit, which keeps them positive), so a recording whose
  segments mix kinds still separates them; a kind the recording never shows falls back to the
  recording's overall density;
* the tokens of each recorded block: a segment's exact count shared among its blocks by their
  fitted estimate (a one-block segment gives the block exactly).

A changed request is then counted block by block (:meth:`RecordedTokens.estimate`):

1. where the new prompt's prefix fingerprint equals a recorded one, the recorded count holds
   exactly (an unchanged prefix keeps its tokens, not a re-estimate);
2. a block whose bytes appear in the recording (moved, or after a changed block) keeps that
   block's recorded tokens;
3. a block that replaced a recorded block at the same path and of the same kind (an edited
   system prompt, a changed tool schema) is scaled from that block: recorded tokens times the
   ratio of their fitted estimates;
4. any other block (inserted) gets the fitted estimate of its kind.

Removed blocks simply are not counted. Tokens after the last block (the model's tail) are the
recording's own.

Tokenizers differ between model generations (Anthropic's migration guide: the tokenizer of
Claude Opus 4.7, also used by Opus 5, Fable 5, Mythos 5 and Mythos Preview, counts about
1.0-1.35x what earlier models count for the same text; Sonnet 5's about 1.3x Sonnet 4.6's).
When a changed request asks for a model of another generation than the recorded one, every
count is scaled by the ratio of the generations' factors below and the estimate says so.
UNSURE: the factors are the midpoints of those ranges; which generation Opus 4.8, the 5.x
point releases and Haiku 5.5 use is not documented (here: the newer one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .prefix import Block, PromptLayout, content_kind

__all__ = ["Estimate", "RecordedTokens", "tokenizer_factor"]

KINDS = ("tools", "text", "tool_use", "tool_result", "other")
_IMAGE = "image"
_BLOCK = "block"  # a segment's number of blocks (kept with its features; not a density)
# UNSURE: the API counts an image by its pixel size (about width x height / 750 tokens); a
# recording without images gives no density for them, so this stands in (the emulator's count).
_DEFAULT_IMAGE_TOKENS = 1000.0
_DEFAULT_DENSITY = 0.25
_FIT_ROUNDS = 60

# (pattern on the model id, tokenizer factor relative to the Claude 3 / 4 tokenizer, label)
_GENERATIONS: tuple[tuple[re.Pattern[str], float, str], ...] = (
    (re.compile(r"claude-sonnet-5|claude-haiku-5"), 1.3, "Sonnet 5 tokenizer, ~1.3x"),
    (
        re.compile(r"claude-(opus-4-[7-9]|opus-5|fable|mythos)"),
        1.175,
        "Opus 4.7 tokenizer, ~1.0-1.35x",
    ),
)


def tokenizer_factor(model: str) -> tuple[float, str]:
    """The model's tokenizer counts relative to the Claude 3 / 4 one, and which tokenizer it is."""
    for pattern, factor, label in _GENERATIONS:
        if pattern.search(model):
            return factor, label
    return 1.0, "Claude 3/4 tokenizer"


def _digest(block: Block) -> str:
    return hashlib.sha256(block.canonical).hexdigest()[:32]


@dataclass(frozen=True)
class Estimate:
    """A changed request's input tokens.

    Attributes:
        total: all input tokens.
        cumulative: tokens up to and including each block of the new layout.
        exact: per block, whether its cumulative count is the recording's own.
        method: how it was counted, in one line.
        model: the model the request now asks for, when it is not the recorded one (the turn
            is priced at it).
    """

    total: int
    cumulative: tuple[int, ...]
    exact: tuple[bool, ...]
    method: str
    model: str | None = None


@dataclass
class _Segment:
    features: dict[str, float]
    tokens: int
    blocks: list[Block]


@dataclass
class RecordedTokens:
    """What a recording says about token counts (see the module docstring).

    Feed it every recorded prompt with :meth:`add` (after the cache analysis learnt its
    anchors), call :meth:`fit` once, then :meth:`estimate` each changed request.
    """

    densities: dict[str, dict[str, float]] = field(default_factory=dict)
    _segments: dict[str, list[_Segment]] = field(default_factory=dict)
    _seen: set[tuple[str, str]] = field(default_factory=set)
    _blocks: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    _recorded: dict[int, tuple[PromptLayout, list[tuple[int, int, int]]]] = field(default_factory=dict)
    _shares: dict[int, list[float]] = field(default_factory=dict)

    def add(self, key: int, layout: PromptLayout, anchors: Sequence[tuple[int, int]]) -> None:
        """One recorded prompt with its exact cumulative counts ``(block index, tokens)``
        (the end of the prompt among them), in block order; ``key`` names it for :meth:`estimate`."""
        segments = self._segments.setdefault(layout.model, [])
        previous = (-1, 0)
        chain = layout.chain
        bounds: list[tuple[int, int, int]] = []
        for index, tokens in anchors:
            if index <= previous[0] or tokens < previous[1]:
                continue
            start = previous[0] + 1
            span = (chain[start - 1] if start else "", chain[index])
            bounds.append((start, index, tokens - previous[1]))
            if span not in self._seen:
                self._seen.add(span)
                blocks = list(layout.blocks[start : index + 1])
                segments.append(_Segment(_features(blocks), tokens - previous[1], blocks))
            previous = (index, tokens)
        self._recorded[key] = (layout, bounds)

    def fit(self) -> None:
        """Fit the densities per model and share each segment's tokens among its blocks."""
        for model, segments in self._segments.items():
            densities = _fit(segments)
            self.densities[model] = densities
            for segment in segments:
                self._share(model, segment.blocks, segment.tokens, densities)
        for key, (layout, bounds) in self._recorded.items():
            densities = self.densities.get(layout.model) or _fallback(self.densities)
            per_block = [0.0] * len(layout.blocks)
            for start, end, tokens in bounds:
                per_block[start : end + 1] = _split(layout.blocks[start : end + 1], tokens, densities)
            self._shares[key] = per_block

    def _share(self, model: str, blocks: Sequence[Block], tokens: int, densities: Mapping[str, float]) -> None:
        for block, share in zip(blocks, _split(blocks, tokens, densities), strict=True):
            key = (model, _digest(block))
            known = self._blocks.get(key)
            if known is None or len(blocks) < known[1]:
                self._blocks[key] = (share, len(blocks))

    def estimate(
        self,
        layout: PromptLayout,
        *,
        recorded_key: int,
        known: Mapping[str, int],
        tail: int,
    ) -> Estimate:
        """Count a changed request's input tokens (see the module docstring).

        Args:
            layout: the request as it is sent now.
            recorded_key: the key its recording was :meth:`add`-ed under.
            known: exact cumulative tokens by prefix fingerprint (the cache analysis' anchors).
            tail: tokens the API counts after the last block, for the new model.
        """
        recorded, _bounds = self._recorded[recorded_key]
        recorded_shares = self._shares.get(recorded_key, [])
        old_model, new_model = recorded.model, layout.model
        old_factor, _old_label = tokenizer_factor(old_model)
        new_factor, new_label = tokenizer_factor(new_model)
        scale = new_factor / old_factor
        densities = self.densities.get(old_model) or _fallback(self.densities)
        old_digests = [_digest(b) for b in recorded.blocks]
        old_by_path = {
            b.path: (b, recorded_shares[i] if i < len(recorded_shares) else None, old_digests[i])
            for i, b in enumerate(recorded.blocks)
        }
        digests = [_digest(b) for b in layout.blocks]
        new_digests = set(digests)
        cumulative: list[int] = []
        exact: list[bool] = []
        running = 0.0
        kept = 0
        kept_tokens = 0.0
        changes: list[str] = []
        changed_tokens = 0.0
        replaced: set[str] = set()
        for index, block in enumerate(layout.blocks):
            anchor = known.get(layout.chain[index])
            if anchor is not None and anchor >= (cumulative[-1] if cumulative else 0):
                kept_tokens += anchor - running
                running = float(anchor)
                cumulative.append(anchor)
                exact.append(True)
                kept += 1
                continue
            tokens, how, old = self._block_tokens(block, digests[index], old_model, old_by_path, new_digests, densities)
            tokens *= scale
            if how == "kept":
                kept += 1
                kept_tokens += tokens
            else:
                changed_tokens += tokens
                if how == "scaled" and old is not None:
                    replaced.add(old[2])
                    changes.append(f"{block.path} edited ({round(old[1] or 0):,} -> {round(tokens):,})")
                else:
                    changes.append(f"{block.path} new (+{round(tokens):,})")
            running += tokens
            cumulative.append(round(running))
            exact.append(False)
        total = (cumulative[-1] if cumulative else 0) + round(tail * scale)
        gone = [
            (b.path, recorded_shares[i] if i < len(recorded_shares) else 0.0)
            for i, b in enumerate(recorded.blocks)
            if old_digests[i] not in new_digests and old_digests[i] not in replaced
        ]
        parts = [f"{total:,} input tokens: {round(kept_tokens):,} kept as recorded ({kept} unchanged block(s))"]
        if changes:
            shown = "; ".join(changes[:3]) + (f"; {len(changes) - 3} more" if len(changes) > 3 else "")
            parts.append(f"estimated {round(changed_tokens):,} for {len(changes)} changed block(s): {shown}")
        if gone:
            parts.append(f"{len(gone)} recorded block(s) no longer sent (-{round(sum(t for _p, t in gone)):,})")
        if tail:
            parts.append(f"{round(tail * scale)} outside the blocks")
        if scale != 1.0:
            parts.append(f"scaled x{scale:.3f} for the tokenizer of {new_model} ({new_label}; UNSURE) vs {old_model}")
        if new_model != old_model:
            parts.append(f"priced at {new_model}, the model it now asks for (recorded: {old_model})")
        return Estimate(
            total, tuple(cumulative), tuple(exact), "; ".join(parts), new_model if new_model != old_model else None
        )

    def _block_tokens(
        self,
        block: Block,
        digest: str,
        model: str,
        old_by_path: Mapping[str, tuple[Block, float | None, str]],
        new_digests: set[str],
        densities: Mapping[str, float],
    ) -> tuple[float, str, tuple[Block, float | None, str] | None]:
        """A block's tokens and how they were found: ``kept``, ``scaled`` (from the recorded
        block it replaced, also returned) or ``inserted``."""
        known = self._blocks.get((model, digest))
        if known is not None:
            return known[0], "kept", None
        counterpart = old_by_path.get(block.path)
        if counterpart is not None:
            old, old_tokens, old_digest = counterpart
            if (
                old_tokens is not None
                and content_kind(old) == content_kind(block)
                and old_digest not in new_digests
                and _predict(old, densities) > 0
            ):
                return old_tokens * _predict(block, densities) / _predict(old, densities), "scaled", counterpart
        return _predict(block, densities), "inserted", None


def _split(blocks: Sequence[Block], tokens: int, densities: Mapping[str, float]) -> list[float]:
    """A segment's exact ``tokens`` shared among its blocks by their fitted estimates."""
    weights = [_predict(b, densities) for b in blocks]
    total = sum(weights)
    return [tokens * (weight / total if total else 1 / len(blocks)) for weight in weights]


def _features(blocks: Sequence[Block]) -> dict[str, float]:
    features: dict[str, float] = {_BLOCK: float(len(blocks))}
    for block in blocks:
        kind = content_kind(block)
        features[kind] = features.get(kind, 0.0) + len(block.canonical)
        if block.images:
            features[_IMAGE] = features.get(_IMAGE, 0.0) + block.images
    return features


def _predict(block: Block, densities: Mapping[str, float]) -> float:
    return (
        densities.get(content_kind(block), _DEFAULT_DENSITY) * len(block.canonical)
        + densities.get(_IMAGE, _DEFAULT_IMAGE_TOKENS) * block.images
    )


def _fit(segments: Sequence[_Segment]) -> dict[str, float]:
    """Densities per kind that explain the segments' exact counts.

    A kind that has segments of its own (nothing else in them) takes its density from those
    alone; the other kinds are then fitted to the mixed segments with those held (multiplicative
    updates of a Poisson fit, which keep densities positive). A kind the recording never shows
    keeps the recording's overall density.
    """
    chars = sum(v for s in segments for k, v in s.features.items() if k not in (_IMAGE, _BLOCK))
    images = sum(s.features.get(_IMAGE, 0.0) for s in segments)
    tokens = sum(s.tokens for s in segments)
    overall = max(tokens - _DEFAULT_IMAGE_TOKENS * images, 0.0) / chars if chars else _DEFAULT_DENSITY
    overall = overall or _DEFAULT_DENSITY
    densities = {kind: overall for kind in KINDS}
    densities[_IMAGE] = _DEFAULT_IMAGE_TOKENS
    held: set[str] = set()
    for kind in KINDS:
        pure = [s for s in segments if set(s.features) - {_BLOCK} == {kind} and s.features[kind] > 0]
        if pure:
            densities[kind] = max(sum(s.tokens for s in pure) / sum(s.features[kind] for s in pure), 1e-6)
            held.add(kind)
    free = {k for s in segments for k in s.features if k != _BLOCK} - held
    mixed = [s for s in segments if free & set(s.features)]
    for _ in range(_FIT_ROUNDS if mixed else 0):
        predicted = [sum(densities[k] * v for k, v in s.features.items() if k != _BLOCK) for s in mixed]
        fixed = [sum(densities[k] * v for k, v in s.features.items() if k in held) for s in mixed]
        for kind in free:
            weight = sum(s.features.get(kind, 0.0) for s in mixed)
            if not weight:
                continue
            # Each segment's tokens beyond the held kinds' share, against the free kinds' prediction.
            ratio = sum(
                s.features.get(kind, 0.0) * max(s.tokens - f, 0.0) / (p - f)
                for s, p, f in zip(mixed, predicted, fixed, strict=True)
                if p - f > 0
            )
            densities[kind] = max(densities[kind] * ratio / weight, 1e-6)
    return densities


def _fallback(densities: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    if densities:
        return dict(next(iter(densities.values())))
    out = dict.fromkeys(KINDS, _DEFAULT_DENSITY)
    out[_IMAGE] = _DEFAULT_IMAGE_TOKENS
    return out
