"""An SVG heat map of a matrix: variants x hardware, coloured by decode speed. Pure: cells in, text out."""

from __future__ import annotations

import math
from html import escape

from orchestrator.estimate.matrix import Cell

CELL_W, CELL_H, LEFT, TOP = 92, 34, 150, 170


def _colour(tps: float, lo: float, hi: float) -> str:
    """Yellow (slow) to deep green (fast), on a log scale."""
    x = 0.5 if hi <= lo else (math.log(tps) - math.log(lo)) / (math.log(hi) - math.log(lo))
    r, g, b = (round(250 - 210 * x), round(220 - 80 * x), round(90 - 30 * x))
    return f"rgb({r},{g},{b})"


def heatmap_svg(title: str, cells: list[Cell]) -> str:
    variants = list(dict.fromkeys(c.variant for c in cells))
    hardware = list(dict.fromkeys(c.hardware for c in cells))
    speeds = [c.decode_tokens_per_second for c in cells if c.decode_tokens_per_second]
    lo, hi = (min(speeds), max(speeds)) if speeds else (1.0, 1.0)
    width, height = LEFT + CELL_W * len(hardware) + 20, TOP + CELL_H * len(variants) + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="Helvetica, Arial, sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>']
    for j, h in enumerate(hardware):
        x = LEFT + j * CELL_W + CELL_W / 2
        out.append(f'<text transform="translate({x},{TOP - 8}) rotate(-50)">{escape(h)}</text>')
    by_key = {(c.variant, c.hardware): c for c in cells}
    for i, v in enumerate(variants):
        y = TOP + i * CELL_H
        out.append(f'<text x="{LEFT - 8}" y="{y + CELL_H / 2 + 4}" text-anchor="end">{escape(v)}</text>')
        for j, h in enumerate(hardware):
            c = by_key[(v, h)]
            x = LEFT + j * CELL_W
            if c.support == "unknown":
                fill, label, sub = "rgb(250,215,160)", "unknown", "fits" if c.fits else "no fit"
            elif c.fits and c.decode_tokens_per_second:
                fill, label = _colour(c.decode_tokens_per_second, lo, hi), f"{c.decode_tokens_per_second:.0f} tok/s"
                sub = f"{c.devices} dev"
            elif c.fits:
                fill, label, sub = "rgb(200,220,240)", "fits", f"{c.devices} dev, speed ?"
            elif c.support == "supported":
                fill, label, sub = "rgb(235,235,235)", "no fit", ""
            else:
                fill, label, sub = "rgb(120,120,120)", "unsupported", ""
            tip = escape(c.why_not or f"{v} on {h}")
            out.append(f'<g><title>{tip}</title><rect x="{x}" y="{y}" width="{CELL_W - 2}" height="{CELL_H - 2}" '
                       f'fill="{fill}"/><text x="{x + 4}" y="{y + 14}">{escape(label)}</text>'
                       f'<text x="{x + 4}" y="{y + 27}" fill="#333">{escape(sub)}</text></g>')
    y = TOP + CELL_H * len(variants) + 24
    out.append(f'<text x="10" y="{y}">Colour: batch-1 decode speed (log scale, yellow slow, green fast); light grey: '
               f'does not fit; dark grey: no engine for the format; orange: support not published. Hover a cell for the reason.</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
