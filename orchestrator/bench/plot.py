"""The latency-throughput curve of a sweep as SVG: TTFT p95 and TPOT p95 (two panels) against output tokens/s,
one point per level, labelled with its concurrency or rate. Pure: summaries in, text out (the style of
``render/heatmap.py``: plain SVG written by hand, no plotting library)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from orchestrator.bench.stats import LevelSummary

PANEL_W, PANEL_H, LEFT, TOP, GAP = 380, 260, 70, 60, 90
COLOURS = {"TTFT p95": "rgb(200,80,40)", "TPOT p95": "rgb(40,110,190)"}


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above value (axis end)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= value:
            return m * 10**exp
    return 10 ** (exp + 1)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


Point = tuple[float, float, str]
"""(output tokens/s, latency in ms, level label)."""


def _panel(out: list[str], x0: float, title: str, points: list[Point], x_max: float) -> None:
    colour = COLOURS[title]
    y_max = _nice_max(max((p[1] for p in points), default=0.0))

    def sx(v: float) -> float:
        return x0 + v / x_max * PANEL_W

    def sy(v: float) -> float:
        return TOP + PANEL_H - v / y_max * PANEL_H

    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{TOP - 12}" text-anchor="middle" font-weight="bold">'
               f'{escape(title)} (ms)</text>')
    out.append(f'<rect x="{x0}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>')
    for i in range(5):
        xv, yv = x_max * i / 4, y_max * i / 4
        out.append(f'<line x1="{x0}" x2="{x0 + PANEL_W}" y1="{sy(yv)}" y2="{sy(yv)}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 6}" y="{sy(yv) + 4}" text-anchor="end">{_fmt(yv)}</text>')
        out.append(f'<text x="{sx(xv)}" y="{TOP + PANEL_H + 16}" text-anchor="middle">{_fmt(xv)}</text>')
    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{TOP + PANEL_H + 36}" text-anchor="middle">'
               'output tokens/s</text>')
    if not points:
        out.append(f'<text x="{x0 + 10}" y="{TOP + 20}">no successful requests</text>')
        return
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y, _) in enumerate(points))
    out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
    for x, y, label in points:
        out.append(f'<g><title>{escape(label)}: {_fmt(x)} tok/s, {_fmt(y)} ms</title>'
                   f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{colour}"/>'
                   f'<text x="{sx(x) + 6:.1f}" y="{sy(y) - 6:.1f}" fill="#333">{escape(label)}</text></g>')


def curve_svg(title: str, levels: Sequence[LevelSummary]) -> str:
    def series(get: Callable[[LevelSummary], float | None]) -> list[Point]:
        out = []
        for lv in levels:
            value = get(lv)
            if value is not None:
                label = f"c={lv.concurrency}" if lv.concurrency is not None else f"{lv.rate:g} req/s"
                out.append((lv.output_tokens_per_second, value * 1000, label))
        return out

    ttft = series(lambda lv: lv.ttft_s.p95 if lv.ttft_s else None)
    tpot = series(lambda lv: lv.tpot_s.p95 if lv.tpot_s else None)
    x_max = _nice_max(max((lv.output_tokens_per_second for lv in levels), default=0.0))
    width, height = LEFT + 2 * PANEL_W + GAP + 30, TOP + PANEL_H + 80
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="Helvetica, Arial, sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>']
    _panel(out, LEFT, "TTFT p95", ttft, x_max)
    _panel(out, LEFT + PANEL_W + GAP, "TPOT p95", tpot, x_max)
    out.append(f'<text x="10" y="{height - 12}">One point per load level (c = concurrent streams); '
               'hover a point for its figures.</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
