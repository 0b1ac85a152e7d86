"""The report as one self-contained HTML page: the suite's tests by cost, and per test its turns.

Everything is inline: the styles, one small script (hover read-outs) and the charts, drawn here
as SVG. The page loads nothing (its Content-Security-Policy forbids every fetch and allows only
the page's own style and script, by hash), so it opens offline, from a CI artifact or an e-mail.

Cassette content is untrusted (a test id, a model name, a cache reason quoting a prompt): every
text goes through :func:`html.escape`, and the CSP would stop an injected script anyway.

Size: a chart is a handful of SVG paths (one per token kind, one per cache verdict), not one
element per turn, so a 400-turn test costs a few tens of kilobytes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from collections.abc import Iterable, Sequence
from decimal import Decimal

from .._version import __version__
from ..analysis import Verdict
from ..levers import Lever, LeverKind
from .model import GateKind, GateLine, Report, TestEntry, TurnEntry
from .terminal import _int, _pct, _usd, source_line

__all__ = ["render_html"]

# The stacked series, bottom to top: (key, label, colour).
SERIES = (
    ("uncached", "uncached input", "#d1495b"),
    ("write", "cache write", "#edae49"),
    ("read", "cache read", "#00798c"),
    ("output", "output", "#6a4c93"),
)
_COST_PARTS = (
    ("uncached", ("input",)),
    ("write", ("cache_write_5m", "cache_write_1h")),
    ("read", ("cache_read",)),
    ("output", ("output", "web_search", "unattributed")),
)
_COLOUR = {key: colour for key, _, colour in SERIES}

# Verdict colours: green a hit, amber a first write, greys nothing to do, red money lost.
VERDICT_COLOURS = {
    Verdict.HIT: "#2a9d8f",
    Verdict.WRITE: "#edae49",
    Verdict.MISS_EXPECTED: "#b8b8b8",
    Verdict.NO_CACHE_CONTROL: "#dddddd",
    Verdict.WARM_FROM_OUTSIDE: "#5e60ce",
    Verdict.BELOW_MINIMUM: "#f4845f",
    Verdict.EXPIRED: "#e76f51",
    Verdict.PREFIX_CHANGED: "#c1121f",
    Verdict.MISS_UNEXPECTED: "#9d0208",
}
_NO_VERDICT = "#ffffff"

# Chart geometry (SVG user units; the SVG scales to the page's width).
_W, _H = 960, 236
_LEFT, _RIGHT, _TOP = 64, 72, 12
_PLOT_H = 170
_STRIP_Y, _STRIP_H = _TOP + _PLOT_H + 6, 10
_PLOT_W = _W - _LEFT - _RIGHT
_MIN_SLOTS = 12

_STYLE = """
:root{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#fafafa}
body{margin:0 auto;max-width:1100px;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 6px}
h3{font-size:15px;margin:0;font-weight:600;word-break:break-all}
.muted{color:#6e6e73}.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{padding:3px 8px;text-align:right;border-bottom:1px solid #e5e5ea;vertical-align:top}
th{font-weight:600;background:#f0f0f3;position:sticky;top:0}
td.t,th.t{text-align:left;white-space:nowrap}td.w{word-break:break-word;text-align:left;max-width:420px;white-space:normal}
a{color:#0b63c5;text-decoration:none}a:hover{text-decoration:underline}
section.test{background:#fff;border:1px solid #e5e5ea;border-radius:10px;padding:12px 16px;margin:16px 0}
.kpi{display:flex;gap:22px;flex-wrap:wrap;margin:6px 0 8px}.kpi b{display:block;font-size:16px}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;margin:4px 0}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px;vertical-align:-1px}
.sw-uncached{background:#d1495b}.sw-write{background:#edae49}.sw-read{background:#00798c}
.sw-output{background:#6a4c93}.sw-cost{background:#1d1d1f;height:2px!important;vertical-align:3px!important}
svg.chart{width:100%;height:auto;display:block}
svg text{font:11px system-ui,sans-serif;fill:#6e6e73}
.tip{position:fixed;pointer-events:none;background:#1d1d1f;color:#fff;padding:6px 9px;border-radius:6px;
font-size:12px;max-width:460px;display:none;z-index:9;white-space:pre-line}
details summary{cursor:pointer;color:#0b63c5;margin:6px 0}
.fail{color:#c1121f;font-weight:600}.v{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:4px}
""".strip()

# Hover read-out: the chart's turn under the pointer, from that turn's row of the turn table.
_SCRIPT = """
(function(){
var tip=document.createElement("div");tip.className="tip";document.body.appendChild(tip);
var charts=document.querySelectorAll("svg.chart");
charts.forEach(function(svg){
var n=+svg.dataset.n,x0=+svg.dataset.x0,bw=+svg.dataset.bw,mark=svg.querySelector(".mark");
var rows=document.getElementById(svg.dataset.table).tBodies[0].rows,head=
document.getElementById(svg.dataset.table).tHead.rows[0].cells;
function at(ev){var p=svg.createSVGPoint();p.x=ev.clientX;p.y=ev.clientY;
var q=p.matrixTransform(svg.getScreenCTM().inverse());return Math.floor((q.x-x0)/bw);}
svg.addEventListener("mousemove",function(ev){var i=at(ev);
if(i<0||i>=n){tip.style.display="none";mark.setAttribute("width","0");return;}
var r=rows[i].cells,t=[];
for(var k=0;k<r.length;k++){if(r[k].textContent)t.push(head[k].textContent+": "+r[k].textContent);}
tip.textContent=t.join("\\n");tip.style.display="block";
tip.style.left=Math.min(ev.clientX+14,window.innerWidth-470)+"px";tip.style.top=(ev.clientY+14)+"px";
mark.setAttribute("x",x0+i*bw);mark.setAttribute("width",bw);});
svg.addEventListener("mouseleave",function(){tip.style.display="none";mark.setAttribute("width","0");});
});
document.body.dataset.charts=String(charts.length);
})();
""".strip()


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _n(value: float) -> str:
    """A coordinate, short: 12.5, 3, 0.25."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _tokens(item: TurnEntry) -> dict[str, int]:
    turn = item.turn
    return {
        "uncached": turn.uncached_input_tokens,
        "write": turn.cache_creation_input_tokens,
        "read": turn.cache_read_input_tokens,
        "output": turn.output_tokens,
    }


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``: 1, 2, 2.5, 5 times a power of ten."""
    if top <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(top))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= top * (1 - 1e-12):
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def _short(value: float) -> str:
    """Axis labels: 1.2k, 35k, 1.5M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _chart(entry: TestEntry, table_id: str) -> str:
    """The per-turn chart: stacked token bars, the cumulative cost line, the verdict strip."""
    items = entry.turns
    n = len(items)
    bw = _PLOT_W / max(n, _MIN_SLOTS)  # a short test keeps narrow bars, left-aligned
    gap = bw * 0.15 if bw >= 4 else 0.0
    tokens = [_tokens(item) for item in items]
    top = _nice(max((sum(t.values()) for t in tokens), default=0))
    scale = _PLOT_H / top
    base = _TOP + _PLOT_H
    paths: dict[str, list[str]] = {key: [] for key, _, _ in SERIES}
    for i, counts in enumerate(tokens):
        y = float(base)
        x = _LEFT + i * bw + gap / 2
        for key, _, _ in SERIES:
            h = counts[key] * scale
            if h > 0:
                y -= h
                paths[key].append(f"M{_n(x)} {_n(y)}h{_n(bw - gap)}v{_n(h)}h-{_n(bw - gap)}z")
    out = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" data-n="{n}" data-x0="{_LEFT}" '
        f'data-bw="{bw:.6g}" data-table="{_e(table_id)}" '
        f'aria-label="tokens per turn and cumulative cost">'
    ]
    # Grid and the token axis.
    for k in range(5):
        value = top * k / 4
        y = base - value * scale
        out.append(f'<path d="M{_LEFT} {_n(y)}H{_LEFT + _PLOT_W}" stroke="#ececf0"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{_n(y + 4)}" text-anchor="end">{_short(value)}</text>')
    out.append(f'<text x="12" y="{_TOP + _PLOT_H / 2}" transform="rotate(-90 12 {_TOP + _PLOT_H / 2})" ')
    out[-1] += 'text-anchor="middle">tokens</text>'
    for key, label, colour in SERIES:
        if paths[key]:
            out.append(f'<path class="s-{key}" fill="{colour}" d="{"".join(paths[key])}"><title>{label}</title></path>')
    # Cumulative cost, on its own axis (right).
    costs = [item.cost.cost_usd if item.cost is not None else Decimal(0) for item in items]
    running: list[Decimal] = []
    total = Decimal(0)
    for cost in costs:
        total += cost
        running.append(total)
    cost_top = _nice(float(total)) if total > 0 else 1.0
    if total > 0:
        points = " ".join(
            f"{_n(_LEFT + (i + 0.5) * bw)},{_n(base - float(c) / cost_top * _PLOT_H)}" for i, c in enumerate(running)
        )
        if n == 1:  # one point draws nothing: a short level line across the bar
            level = _n(base - float(running[0]) / cost_top * _PLOT_H)
            points = f"{_n(_LEFT + gap / 2)},{level} {_n(_LEFT + bw - gap / 2)},{level}"
        out.append(
            f'<polyline class="cost" fill="none" stroke="#1d1d1f" stroke-width="2" points="{points}">'
            "<title>cumulative cost</title></polyline>"
        )
    decimals = max(2, 2 - math.floor(math.log10(cost_top)))  # $0.05 -> 4 places: $0.0125
    for k in range(5):
        value = cost_top * k / 4
        y = base - value / cost_top * _PLOT_H
        out.append(f'<text x="{_LEFT + _PLOT_W + 6}" y="{_n(y + 4)}">{f"${value:.{decimals}f}" if k else "$0"}</text>')
    # The verdict strip: one path per verdict.
    strips: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        colour = VERDICT_COLOURS[item.cache.verdict] if item.cache is not None else _NO_VERDICT
        strips.setdefault(colour, []).append(f"M{_n(_LEFT + i * bw)} {_STRIP_Y}h{_n(bw)}v{_STRIP_H}h-{_n(bw)}z")
    for colour, parts in strips.items():
        out.append(f'<path class="verdicts" fill="{colour}" d="{"".join(parts)}"/>')
    out.append(f'<text x="{_LEFT - 6}" y="{_STRIP_Y + 9}" text-anchor="end">cache</text>')
    # Turn axis: about eight labels.
    step = max(1, -(-n // 8))
    for i in range(0, n, step):
        label_x = _n(_LEFT + (i + 0.5) * bw)
        out.append(f'<text x="{label_x}" y="{_STRIP_Y + _STRIP_H + 16}" text-anchor="middle">{i}</text>')
    out.append(f'<text x="{_LEFT + _PLOT_W / 2}" y="{_H - 2}" text-anchor="middle">turn</text>')
    out.append(f'<rect class="mark" x="{_LEFT}" y="{_TOP}" width="0" height="{_PLOT_H}" fill="#0b63c5" opacity=".12"/>')
    out.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{_PLOT_W}" height="{_STRIP_Y + _STRIP_H - _TOP}" fill="none" ')
    out[-1] += 'pointer-events="all"/>'
    out.append("</svg>")
    return "".join(out)


def _cost_parts(entry: TestEntry) -> dict[str, Decimal]:
    parts = {key: Decimal(0) for key, _ in _COST_PARTS}
    for item in entry.turns:
        if item.cost is None:
            continue
        for key, names in _COST_PARTS:
            parts[key] += sum((item.cost.breakdown.get(name, Decimal(0)) for name in names), Decimal(0))
    return parts


def _cost_bar(entry: TestEntry, top: Decimal, width: int = 320) -> str:
    """One test's cost as a bar, split by what it paid for, scaled to the dearest test."""
    if entry.cost_usd is None or top <= 0:
        return '<span class="muted">unpriced</span>'
    x = 0.0
    rects = []
    for key, amount in _cost_parts(entry).items():
        w = float(amount / top) * width
        if w > 0:
            rects.append(f'<rect x="{_n(x)}" width="{_n(w)}" height="14" fill="{_COLOUR[key]}"/>')
            x += w
    return f'<svg class="bar" width="{width}" height="14" viewBox="0 0 {width} 14">{"".join(rects)}</svg>'


def _anchor(index: int) -> str:
    return f"t{index}"


def _legend() -> str:
    items = "".join(f'<span><i class="sw-{key}"></i>{label}</span>' for key, label, _ in SERIES)
    return f'<div class="legend">{items}<span><i class="sw-cost"></i>cumulative cost (right axis)</span></div>'


def _verdict_legend(entries: Iterable[TestEntry]) -> str:
    seen = {item.cache.verdict for entry in entries for item in entry.turns if item.cache is not None}
    items = "".join(f'<span><i class="v-{v.value}"></i>{_e(v.value)}</span>' for v in Verdict if v in seen)
    return f'<div class="legend">cache verdicts: {items}</div>' if items else ""


def _lever_rows(levers: Sequence[Lever]) -> str:
    rows = []
    for lever in levers:
        turns = ", ".join(str(t) for t in lever.turns)
        rows.append(
            f'<tr><td class="t">{_e(lever.lever.value)}</td><td>{_usd(lever.saving_usd)}</td>'
            f"<td>{_int(lever.saving_tokens)}</td><td class=w>{_e(lever.assumption)}</td>"
            f'<td class=w>{_e(lever.change)}</td><td class="t mono">{_e(lever.path or "")}</td>'
            f"<td class=w>{_e(turns)}</td></tr>"
        )
    return "".join(rows)


_LEVER_HEAD = (
    "<thead><tr><th class=t>lever</th><th>saving USD</th><th>saving tokens</th><th class=t>assumption</th>"
    "<th class=t>change</th><th class=t>JSON path</th><th class=t>turns</th></tr></thead>"
)
_ORDER_NOTE = (
    '<p class="muted">Levers are applied in this order (caching, batch, model tier, context), each measured on '
    "top of the ones before it: the savings add up without double counting.</p>"
)


def _suite_levers(entries: Sequence[TestEntry]) -> str:
    by_kind: dict[LeverKind, tuple[Decimal, int, int]] = {}
    for entry in entries:
        for lever in entry.levers:
            usd, tokens, tests = by_kind.get(lever.lever, (Decimal(0), 0, 0))
            by_kind[lever.lever] = (usd + lever.saving_usd, tokens + lever.saving_tokens, tests + 1)
    if not by_kind:
        return ""
    rows = "".join(
        f'<tr><td class="t">{_e(kind.value)}</td><td>{_usd(by_kind[kind][0])}</td><td>{_int(by_kind[kind][1])}</td>'
        f"<td>{by_kind[kind][2]}</td></tr>"
        for kind in LeverKind
        if kind in by_kind
    )
    usd = sum((v[0] for v in by_kind.values()), Decimal(0))
    tokens = sum(v[1] for v in by_kind.values())
    return (
        '<h2 id="levers">What each lever would save</h2>'
        '<table class="levers"><thead><tr><th class=t>lever</th><th>saving USD</th><th>saving tokens</th>'
        f"<th>tests</th></tr></thead><tbody>{rows}</tbody><tfoot><tr><td class=t><b>total</b></td>"
        f"<td><b>{_usd(usd)}</b></td><td><b>{_int(tokens)}</b></td><td></td></tr></tfoot></table>{_ORDER_NOTE}"
    )


def _turn_table(entry: TestEntry, table_id: str) -> str:
    rows = []
    running = Decimal(0)
    for item in entry.turns:
        turn = item.turn
        if item.cost is not None:
            running += item.cost.cost_usd
        verdict = item.cache.verdict.value if item.cache is not None else ""
        reason = item.cache.reason if item.cache is not None else ""
        dot = f'<i class="v v-{verdict}"></i>' if verdict else ""
        kind = turn.endpoint + (" stream" if turn.stream else "")
        rows.append(
            f"<tr><td>{turn.index}{'~' if turn.estimated else ''}</td><td class=t>{_e(turn.model)}</td>"
            f"<td class=t>{_e(kind)}</td><td>{_int(turn.uncached_input_tokens)}</td>"
            f"<td>{_int(turn.cache_creation_input_tokens)}</td><td>{_int(turn.cache_read_input_tokens)}</td>"
            f"<td>{_int(turn.output_tokens)}</td><td>{_usd(item.cost.cost_usd if item.cost else None)}</td>"
            f"<td>{_usd(running)}</td><td class=t>{dot}{_e(verdict)}</td><td class=w>{_e(reason)}</td></tr>"
        )
    return (
        f'<table id="{_e(table_id)}" class="turns"><thead><tr><th>turn</th><th class=t>model</th>'
        "<th class=t>endpoint</th><th>input</th><th>cache write</th><th>cache read</th><th>output</th>"
        "<th>cost USD</th><th>cumulative</th><th class=t>cache</th><th class=t>why</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _test_section(index: int, entry: TestEntry) -> str:
    table_id = f"turns-{index}"
    totals = entry.totals
    kpis = [
        ("cost", _usd(entry.cost_usd)),
        ("turns", _int(totals.turns)),
        ("input", _int(totals.uncached_input_tokens)),
        ("cache write", _int(totals.cache_creation_input_tokens)),
        ("cache read", _int(totals.cache_read_input_tokens)),
        ("output", _int(totals.output_tokens)),
        ("hit rate", _pct(totals.cache_hit_rate)),
    ]
    kpi = "".join(f"<div><span class=muted>{name}</span><b>{value}</b></div>" for name, value in kpis)
    cassette = (
        f'<div class="muted mono">{_e(entry.cassette)}</div>' if entry.cassette and entry.cassette != entry.id else ""
    )
    unpriced = sum(1 for item in entry.turns if item.cost is None)
    note = (
        f'<p class="muted">{unpriced} turn(s) could not be priced: they count $0 in the cost line.</p>'
        if unpriced
        else ""
    )
    levers = (
        f"<h4>Levers</h4><table class=levers>{_LEVER_HEAD}<tbody>{_lever_rows(entry.levers)}</tbody></table>"
        if entry.levers
        else ""
    )
    rows = len(entry.turns)
    return (
        f'<section class="test" id="{_anchor(index)}"><h3>{_e(entry.id)}</h3>{cassette}<div class="kpi">{kpi}</div>'
        f"{_chart(entry, table_id)}{note}{levers}"
        f"<details{' open' if rows <= 12 else ''}><summary>{rows} turn(s): tokens, cost and cache verdicts</summary>"
        f"{_turn_table(entry, table_id)}</details></section>"
    )


def _suite_table(entries: Sequence[TestEntry], report: Report) -> str:
    top = max((e.cost_usd for e in entries if e.cost_usd is not None), default=Decimal(0))
    rows = []
    for index, entry in enumerate(entries):
        rows.append(
            f'<tr><td class="t w"><a href="#{_anchor(index)}">{_e(entry.id)}</a></td><td>{_usd(entry.cost_usd)}</td>'
            f'<td class="t">{_cost_bar(entry, top)}</td><td>{_int(entry.totals.turns)}</td>'
            f"<td>{_int(entry.totals.total_input_tokens)}</td><td>{_int(entry.totals.output_tokens)}</td>"
            f"<td>{_pct(entry.cache_hit_rate)}</td></tr>"
        )
    totals = report.totals
    foot = (
        f"<tfoot><tr><td class=t><b>total</b></td><td><b>{_usd(report.cost_usd)}</b></td><td></td>"
        f"<td><b>{_int(totals.turns)}</b></td><td><b>{_int(totals.total_input_tokens)}</b></td>"
        f"<td><b>{_int(totals.output_tokens)}</b></td><td><b>{_pct(totals.cache_hit_rate)}</b></td></tr></tfoot>"
    )
    return (
        '<table class="suite"><thead><tr><th class=t>test (by cost)</th><th>cost USD</th>'
        "<th class=t>what it paid for</th><th>turns</th><th>all input</th><th>output</th><th>hit rate</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody>{foot}</table>"
    )


def _gate(gate: Sequence[GateLine]) -> str:
    if not gate:
        return ""
    items = "".join(
        f"<li{' class=fail' if line.kind is GateKind.FAIL else ''}>{_e(line.render())}</li>" for line in gate
    )
    return f'<h2 id="gate">Gate</h2><ul class="mono">{items}</ul>'


def _errors(report: Report) -> str:
    if not report.errors:
        return ""
    items = "".join(f"<li><pre>{_e(error.reason)}</pre></li>" for error in report.errors)
    return f'<h2 id="problems">{len(report.errors)} problem(s)</h2><ul>{items}</ul>'


def render_html(report: Report, *, gate: Sequence[GateLine] = (), title: str = "Token budget") -> str:
    """The report as one self-contained HTML document (no network: styles, script and SVG inline).

    Tests are sorted by cost (dearest first); each gets its per-turn chart (stacked bars of
    uncached input, cache writes, cache reads and output tokens, with the cumulative cost line and
    a strip of cache verdicts), its turn table, and its lever table when it has levers.
    """
    entries = report.sorted_tests()
    verdict_css = "".join(f".v-{v.value}{{background:{colour}}}" for v, colour in VERDICT_COLOURS.items())
    style = _STYLE + "\n" + verdict_css
    csp = (
        f"default-src 'none'; style-src {_csp_hash(style)}; script-src {_csp_hash(_SCRIPT)}; "
        "img-src 'none'; base-uri 'none'; form-action 'none'"
    )
    totals = report.totals
    summary = (
        f"{len(entries)} test(s), {_int(totals.turns)} turn(s), {_usd(report.cost_usd)}, "
        f"cache hit rate {_pct(totals.cache_hit_rate)}"
    )
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">{_e(summary)}<br>{_e(source_line(report.price_source))}; hit rate = cache reads / all '
        "input tokens (uncached + cache writes + cache reads)</p>",
        _gate(gate),
    ]
    if entries:
        body.append(f"<h2>Tests by cost</h2>{_legend()}{_suite_table(entries, report)}")
        body.append(_suite_levers(entries))
        body.append(f"<h2>Per test</h2>{_legend()}{_verdict_legend(entries)}")
        body.extend(_test_section(index, entry) for index, entry in enumerate(entries))
    else:
        body.append("<p>No Claude API turns.</p>")
    body.append(_errors(report))
    body.append(f'<p class="muted">pytest-tokenbudget {_e(__version__)}</p>')
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{csp}">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{style}</style></head><body>{''.join(body)}<script>{_SCRIPT}</script></body></html>\n"
    )
