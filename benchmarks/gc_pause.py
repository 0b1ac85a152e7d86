"""Whether pausing the cyclic garbage collector while a cassette is parsed pays off.

Usage::

    python benchmarks/gc_pause.py [--turns 25 100 200] [--vcrpy-turns 25 100] [--repeats 7]
                                  [--after 100000]

Cassettes are synthesized, no emulator, SDK client or network involved: the requests and
responses of an agent run of *N* turns as ``agent_run.py`` shapes them (a 16 KB system prompt,
eight tools, the whole transcript re-sent every turn and a 4 KB tool result added to it), written
with the package's own ``dump_cassette`` (``ours``, where each request is ``extends`` + ``ops``
on the one before) and in plain vcrpy's layout with vcrpy's YAML serializer (``vcrpy``, where
each request body is one string).

Each cassette text is parsed with ``parse_cassette`` in three ways, taking turns, ``--repeats``
times each, after a ``gc.collect()`` so that every run starts from the same collector state:

- ``on``: the collector runs as usual (a pause the package itself may have is switched off);
- ``load``: the collector is paused around the document parse only (``yaml.load`` or
  ``json.loads``); for these YAML cassettes, the scope of the package's own pause;
- ``whole``: the collector is paused around the whole ``parse_cassette`` call (the building of
  interactions and bodies included).

A pause does not only save work, it also defers it: whatever was allocated meanwhile is scanned
at the first collection after it. So each run goes on with a fixed amount of later work (it
allocates ``--after`` small lists, keeps them, then drops them), as the test that loaded the
cassette would, and ``+after`` is the time of the parse plus that work.

Two heaps are measured, as a parse meets them: ``imports``, with pytest, anthropic, vcrpy and
the package imported and nothing frozen (what a pytest session holds at least), and ``frozen``,
the same after ``gc.freeze()`` (the collector then only scans what the parse allocates).

Columns: the best (minimum) time in ms of ``on``, ``load`` and ``whole``; ``on/load`` and
``on/whole``, how much slower the parse is without the pause (1.10 = 10 % slower); the same for
``+after``; ``gc ms``, the time spent inside the collector during an ``on`` parse and its
collections by generation (from ``gc.callbacks``, median run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agent_run

from pytest_tokenbudget.cassette import Body, Interaction, dump_cassette, parse_cassette
from pytest_tokenbudget.cassette import _read as cassette_read
from pytest_tokenbudget.cassette._vcr import _to_vcr_dict

ARMS = ("on", "load", "whole")
URI = "https://api.anthropic.com/v1/messages"
START = 1_772_323_200.0  # 2026-03-01T00:00:00Z
# The package's own pause (a context manager in its reader), switched off while this script measures.
_PACKAGE_PAUSE = "_gc_paused"


# --------------------------------------------------------------------------------------------
# the cassettes


def _response(turn: int, turns: int) -> dict[str, Any]:
    if turn < turns:
        name, arguments, text = agent_run.tool_call(turn)
        content: list[dict[str, Any]] = [
            {"type": "text", "text": text},
            {"type": "tool_use", "id": f"toolu_{turn:06d}", "name": name, "input": arguments},
        ]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": agent_run.final_answer()}]
        stop = "end_turn"
    return {
        "id": f"msg_{turn:06d}",
        "type": "message",
        "role": "assistant",
        "model": agent_run.MODEL,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 3,
            "cache_creation_input_tokens": 1_200,
            "cache_read_input_tokens": 5_000 + 1_100 * turn,
            "output_tokens": 80,
        },
    }


def interactions(turns: int) -> list[Interaction]:
    """The ``turns + 1`` exchanges of an agent run, bodies encoded as the anthropic SDK sends them."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": agent_run.TASK}]
    out = []
    for turn in range(turns + 1):
        request = {
            "max_tokens": agent_run.MAX_TOKENS,
            "messages": messages,
            "model": agent_run.MODEL,
            "cache_control": {"type": "ephemeral"},
            "system": agent_run.SYSTEM,
            "tools": agent_run.TOOLS,
        }
        response = _response(turn, turns)
        out.append(
            Interaction(
                index=turn,
                method="POST",
                uri=URI,
                request_headers={"anthropic-version": "2023-06-01", "content-type": "application/json"},
                request_body=Body(json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode()),
                status=200,
                reason="OK",
                response_headers={"content-type": ["application/json"]},
                response_body=Body(json.dumps(response, separators=(",", ":")).encode()),
                recorded_at=START + 10 * turn,
            )
        )
        messages = [*messages, {"role": "assistant", "content": response["content"]}]
        if turn < turns:
            name = response["content"][1]["name"]
            result = {
                "type": "tool_result",
                "tool_use_id": f"toolu_{turn:06d}",
                "content": agent_run.tool_result(turn, name),
            }
            messages.append({"role": "user", "content": [result]})
    return out


def vcrpy_text(recorded: Sequence[Interaction]) -> str:
    """The cassette plain vcrpy writes for these exchanges (its layout, its YAML serializer)."""
    from vcr.serializers import compat, yamlserializer

    items = []
    for interaction in recorded:
        entry = _to_vcr_dict(interaction)
        items.append(
            {
                "request": compat.convert_to_unicode(entry["request"]),
                "response": compat.convert_to_unicode(entry["response"]),
            }
        )
    return str(yamlserializer.serialize({"version": 1, "interactions": items}))


# --------------------------------------------------------------------------------------------
# timing


@contextlib.contextmanager
def _paused() -> Iterator[None]:
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


@contextlib.contextmanager
def _no_package_pause() -> Iterator[None]:
    """Switch off a GC pause inside the package, if it has one, so that this script owns the pause."""
    saved = getattr(cassette_read, _PACKAGE_PAUSE, None)
    if saved is not None:
        setattr(cassette_read, _PACKAGE_PAUSE, contextlib.nullcontext)
    try:
        yield
    finally:
        if saved is not None:
            setattr(cassette_read, _PACKAGE_PAUSE, saved)


@contextlib.contextmanager
def _document_paused() -> Iterator[None]:
    """Pause the collector around the package's document parse (``yaml.load`` or ``json.loads``)."""
    original = cassette_read._parse_document

    def paused(text: str, path: Path) -> Any:
        with _paused():
            return original(text, path)

    cassette_read._parse_document = paused
    try:
        yield
    finally:
        cassette_read._parse_document = original


class _GcClock:
    """Time spent inside the collector, and its collections by generation, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1


@dataclass
class Sample:
    """One timed run: the parse, the parse plus the later work, and the collector's share of the parse."""

    parse_s: float
    total_s: float
    gc_s: float
    collections: list[int] = field(default_factory=list)


def _run(arm: str, text: str, after: int) -> Sample:
    gc.collect()
    clock = _GcClock()
    gc.callbacks.append(clock)
    try:
        with _no_package_pause():
            if arm == "load":
                with _document_paused():
                    started = time.perf_counter()
                    cassette = parse_cassette(text)
                    parsed = time.perf_counter()
            elif arm == "whole":
                started = time.perf_counter()
                with _paused():
                    cassette = parse_cassette(text)
                parsed = time.perf_counter()
            else:
                started = time.perf_counter()
                cassette = parse_cassette(text)
                parsed = time.perf_counter()
            gc_s, collections = clock.seconds, list(clock.collections)
            kept = [[number] for number in range(after)]
            done = time.perf_counter()
    finally:
        gc.callbacks.remove(clock)
    del kept, cassette
    return Sample(parsed - started, done - started, gc_s, collections)


def measure(text: str, repeats: int, after: int) -> dict[str, list[Sample]]:
    """``repeats`` runs of each arm, the arms taking turns (after one untimed run of each)."""
    samples: dict[str, list[Sample]] = {arm: [] for arm in ARMS}
    for arm in ARMS:
        _run(arm, text, after)
    for _ in range(repeats):
        for arm in ARMS:
            samples[arm].append(_run(arm, text, after))
    return samples


# --------------------------------------------------------------------------------------------
# report


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _row(heap: str, kind: str, turns: int, text: str, samples: dict[str, list[Sample]]) -> list[str]:
    best = {arm: min(s.parse_s for s in samples[arm]) for arm in ARMS}
    total = {arm: min(s.total_s for s in samples[arm]) for arm in ARMS}
    on = sorted(samples["on"], key=lambda s: s.parse_s)[len(samples["on"]) // 2]
    return [
        heap,
        kind,
        str(turns),
        f"{len(text.encode()) / 1e6:.2f}",
        *(f"{best[arm] * 1e3:.1f}" for arm in ARMS),
        f"{best['on'] / best['load']:.2f}",
        f"{best['on'] / best['whole']:.2f}",
        *(f"{total[arm] * 1e3:.1f}" for arm in ARMS),
        f"{total['on'] / total['load']:.2f}",
        f"{on.gc_s * 1e3:.1f}",
        "/".join(str(n) for n in on.collections),
    ]


def _heap_objects() -> str:
    return f"{len(gc.get_objects()):,} tracked objects, {len(gc.get_objects(2)):,} in the oldest generation"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, nargs="+", default=[25, 100, 200], help="agent turns, our format")
    parser.add_argument("--vcrpy-turns", type=int, nargs="*", default=[25, 100], help="agent turns, vcrpy's format")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each arm (default 7)")
    parser.add_argument("--after", type=int, default=100_000, help="lists allocated after the parse (default 100000)")
    args = parser.parse_args(argv)

    import anthropic
    import pytest
    import vcr

    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    texts: list[tuple[str, int, str]] = []
    for turns in sorted(set(args.turns) | set(args.vcrpy_turns)):
        progress(f"building {turns} turns")
        recorded = interactions(turns)
        if turns in args.turns:
            texts.append(("ours", turns, dump_cassette(recorded)))
        if turns in args.vcrpy_turns:
            texts.append(("vcrpy", turns, vcrpy_text(recorded)))
        del recorded
    for kind, turns, text in texts:  # the synthesized cassettes read back as written
        assert len(parse_cassette(text).interactions) == turns + 1, (kind, turns)

    print(
        f"Python {platform.python_version()}, PyYAML {__import__('yaml').__version__} "
        f"(libyaml: {__import__('yaml').__with_libyaml__}), anthropic {anthropic.__version__}, "
        f"vcrpy {vcr.__version__}, pytest {pytest.__version__}; {args.repeats} repeats, "
        f"--after {args.after}; gc thresholds {gc.get_threshold()}"
    )
    header = [
        "heap", "format", "turns", "MB",
        "on ms", "load ms", "whole ms", "on/load", "on/whole",
        "on+after", "load+after", "whole+after", "on/load+a",
        "gc ms", "gen0/1/2",
    ]  # fmt: skip
    rows = []
    for heap in ("imports", "frozen"):
        gc.collect()
        if heap == "frozen":
            gc.freeze()
        print(f"heap {heap}: {_heap_objects()}")
        for kind, turns, text in texts:
            progress(f"{heap}: {kind} {turns} turns")
            rows.append(_row(heap, kind, turns, text, measure(text, args.repeats, args.after)))
        gc.unfreeze()
    print(_table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
