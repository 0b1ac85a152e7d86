"""How big and how fast the HTML report is for a long agent run.

Usage::

    python benchmarks/html_report.py [--turns 400] [--out DIR] [--repeats 5] [--no-browser]

Records ``agent_run.py``'s agent for ``--turns`` tool-calling turns through the emulator with
pytest-tokenbudget's recorder (a 16 KB cached system prompt, eight tools, automatic caching, a
4 KB tool result per turn), reads the cassette back into a priced report entry with its cache
analysis, then times :func:`render_html` (best of ``--repeats``) and measures the page: bytes,
gzipped bytes, SVG elements. When Chromium is installed it also opens the page headless with the
network off (``tests/chromium.py``) and times load until the charts are drawn. Prints one table;
writes the page to ``DIR/report.html``.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))

from agent_run import replies, run_agent  # noqa: E402  (after the sys.path lines)

API_KEY = "bench-key"


def record(turns: int, path: Path) -> float:
    """Record a ``turns``-turn run into ``path``; return the seconds it took."""
    import anthropic

    from pytest_tokenbudget.emulator import AnthropicEmulator
    from pytest_tokenbudget.record import Recorder, RecordMode

    path.unlink(missing_ok=True)
    started = time.perf_counter()
    with AnthropicEmulator() as emulator:
        emulator.script(*replies(turns))
        client = anthropic.Anthropic(base_url=emulator.base_url, api_key=API_KEY, max_retries=0)
        recorder = Recorder(path, test="bench", mode=RecordMode.ALL, clock=emulator.clock.now)
        with recorder.patched():
            run_agent(client, turns)
        recorder.save()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument(
        "--out", type=Path, default=None, help="where the cassette and the page go (default: a temp dir)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true", help="do not open the page in Chromium")
    args = parser.parse_args(argv)

    from pytest_tokenbudget.cassette import load_cassette
    from pytest_tokenbudget.ledger import turns_from
    from pytest_tokenbudget.pricing import Pricer
    from pytest_tokenbudget.reports import build_entry, build_report, render_html

    out = args.out or Path(tempfile.mkdtemp(prefix="tb-html-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    cassette = out / f"agent_{args.turns}.yaml"
    record_s = record(args.turns, cassette)

    started = time.perf_counter()
    ledger = turns_from(load_cassette(cassette).interactions, source=str(cassette))
    entry = build_entry("benchmarks/agent_run.py::agent", str(cassette), ledger, Pricer())
    report = build_report([entry], Pricer().source.as_dict())
    model_s = time.perf_counter() - started

    timings = []
    page = ""
    for _ in range(args.repeats):
        started = time.perf_counter()
        page = render_html(report)
        timings.append(time.perf_counter() - started)
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    data = page.encode("utf-8")
    chart = page[page.index('<svg class="chart"') : page.index("</svg>", page.index('<svg class="chart"'))]

    rows = [
        ("turns (requests)", f"{len(entry.turns):,}"),
        ("cassette bytes", f"{cassette.stat().st_size:,}"),
        ("record s (emulator, SDK, recorder)", f"{record_s:.2f}"),
        ("load + price + cache analysis s", f"{model_s:.3f}"),
        (f"render_html s (best of {args.repeats})", f"{min(timings):.4f}"),
        ("page bytes", f"{len(data):,}"),
        ("page bytes gzipped", f"{len(gzip.compress(data, 9)):,}"),
        ("chart bytes (the SVG)", f"{len(chart.encode()):,}"),
        ("chart SVG elements", f"{len(re.findall(r'<(?:path|polyline|rect|text)[ >]', chart)):,}"),
        ("turn table rows", f"{page.count('<tr><td>'):,}"),
    ]
    if not args.no_browser:
        from chromium import Chromium, chromium_binary, open_page

        binary = chromium_binary()
        if binary is None:
            rows.append(("Chromium load s", "skipped: chromium not installed"))
        else:
            with Chromium(binary) as browser:
                started = time.perf_counter()
                browser_page = open_page(browser, html_path.as_uri())
                drawn = browser_page.evaluate("document.body.dataset.charts")
                load_s = time.perf_counter() - started
                rows.append(("Chromium: open to charts drawn s", f"{load_s:.2f}"))
                rows.append(("Chromium: console errors", str(len(browser_page.errors))))
                rows.append(("Chromium: charts drawn", str(drawn)))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(f"page: {html_path}")
    if args.out is None:
        shutil.rmtree(out / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
