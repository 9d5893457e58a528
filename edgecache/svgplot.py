"""A line chart as SVG text: a few series of (x, y) points, y a ratio from 0 to 1, x on a log scale when it can be.

Written by hand so that plotting needs no library: one <polyline> per series, axes with labelled ticks, a legend.
Every text that comes from a caller is escaped, so the document is well-formed whatever the labels hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 40, 60  # margins: axis labels left and below, the legend on the right
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    points: tuple[tuple[float, float], ...]  # (x, y), y in 0..1


def line_chart(title: str, axes: tuple[str, str], series: Sequence[Series], x_label: Callable[[float], str]) -> str:
    """The chart as an SVG document; `axes` are the x and y titles; x ticks at every x a series has, labelled by
    `x_label`."""
    x_title, y_title = axes
    xs = sorted({x for s in series for x, _ in s.points})
    scale = _x_scale(xs)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + scale(x) * plot_w

    def py(y: float) -> float:
        return TOP + (1 - min(1.0, max(0.0, y))) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2:.1f}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for tenth in range(11):  # y axis: 0% to 100%, a grid line every 10 points
        y = py(tenth / 10)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tenth * 10}%</text>')
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{escape(x_label(x))}</text>')
    out.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="black"/>')
    out.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>')
    out.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 14}" text-anchor="middle">{escape(x_title)}</text>')
    out.append(
        f'<text x="16" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + plot_h / 2:.1f})">{escape(y_title)}</text>'
    )
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(s.points))
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
            f"<title>{escape(s.label)}</title></polyline>"
        )
        ly = TOP + 10 + i * 20
        legend = f'x1="{WIDTH - RIGHT + 16}" y1="{ly}" x2="{WIDTH - RIGHT + 40}" y2="{ly}"'
        out.append(f'<line {legend} stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{WIDTH - RIGHT + 46}" y="{ly + 4}">{escape(s.label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _x_scale(xs: Sequence[float]) -> Callable[[float], float]:
    """x -> 0..1 across the plot: logarithmic when every x is positive (sizes grow by factors), else linear."""
    if len(xs) < 2:
        return lambda x: 0.5
    lo, hi = xs[0], xs[-1]
    if lo > 0:
        span = math.log(hi / lo)
        return lambda x: math.log(x / lo) / span
    return lambda x: (x - lo) / (hi - lo)
