"""Inline SVG charts for the report: bars (stacked or not), a timeline and a heatmap.

Pure functions from plain data to SVG text, with no plotting dependency. Every
chart is an ``<svg role="img">`` carrying the caller's ``id`` and ``aria-label``;
the marks carry a class (``bar``, ``span``, ``cell``) and a ``<title>`` tooltip, so
a test or a screen reader can count and read them.

>>> svg = bar_chart(element_id="plot-x", label="demo", slots=3,
...                 bars=[Bar(0, (("n", 2.0),), "first"), Bar(2, (("n", 5.0),), "third")],
...                 x_ticks=[(0, "a"), (2, "c")], x_label="x", y_label="count")
>>> svg.count('class="bar"'), 'id="plot-x"' in svg, 'aria-label="demo"' in svg
(2, True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

__all__ = [
    "PALETTE",
    "Bar",
    "HeatCell",
    "Span",
    "bar_chart",
    "heatmap",
    "nice_step",
    "time_ticks",
    "timeline",
]

#: Series colours (colour-blind friendly, Okabe-Ito order).
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")

_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar at an x slot: stacked ``(series, value)`` segments, bottom first."""

    slot: int
    segments: tuple[tuple[str, float], ...]
    title: str


@dataclass(frozen=True, slots=True)
class Span:
    """One timeline row: a label and a time interval in epoch seconds."""

    label: str
    start: float
    end: float
    title: str


@dataclass(frozen=True, slots=True)
class HeatCell:
    """One heatmap cell; ``value`` None marks a cell that is set but has no count."""

    row: str
    col: str
    value: float | None
    title: str


def nice_step(span: float, target: int = 5) -> float:
    """A 1-2-5 step that splits ``span`` into about ``target`` intervals.

    >>> nice_step(100), nice_step(7), nice_step(0.3), nice_step(0)
    (20.0, 2.0, 0.1, 1.0)
    """
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(round(m * mag, 12))
    return float(10 * mag)  # pragma: no cover - the loop always returns


def fmt_num(v: float) -> str:
    """Short number text: ``12``, ``2.5``, ``1.2k``.

    >>> fmt_num(12.0), fmt_num(2.5), fmt_num(1234), fmt_num(-3.25)
    ('12', '2.5', '1.2k', '-3.25')
    """
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.2f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


_TIME_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400)


def time_ticks(start: float, end: float, target: int = 6, min_step: int = 60) -> list[tuple[float, str]]:
    """Round tick positions (epoch s) and UTC labels between ``start`` and ``end``.

    >>> [t for _, t in time_ticks(0, 4 * 3600)]
    ['01-01 00:00', '01-01 01:00', '01-01 02:00', '01-01 03:00', '01-01 04:00']
    >>> len(time_ticks(0, 3600)), len(time_ticks(0, 3600, min_step=3600))
    (5, 2)
    """
    span = max(end - start, 60.0)
    step = next((s for s in _TIME_STEPS if span / s <= target and s >= min_step), _TIME_STEPS[-1])
    first = math.ceil(start / step) * step
    fmt = "%m-%d %H:%M" if step < 86400 else "%Y-%m-%d"
    n = int((end - first) // step) + 1
    return [(first + i * step, datetime.fromtimestamp(first + i * step, UTC).strftime(fmt))
            for i in range(max(0, n))]


def _svg_open(element_id: str, label: str, width: int, height: int) -> str:
    return (
        f'<svg id="{escape(element_id)}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" {_FONT}>'
        f"<title>{escape(label)}</title>"
    )


def _text(x: float, y: float, s: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def _legend(colors: Mapping[str, str], x: float, y: float) -> str:
    out = []
    for i, (name, color) in enumerate(colors.items()):
        lx = x + i * 130
        out.append(f'<rect x="{lx:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{color}"/>')
        out.append(_text(lx + 14, y, name, "start"))
    return f'<g class="legend">{"".join(out)}</g>'


def bar_chart(
    *,
    element_id: str,
    label: str,
    slots: int,
    bars: Sequence[Bar],
    x_ticks: Sequence[tuple[float, str]],
    x_label: str,
    y_label: str,
    colors: Mapping[str, str] | None = None,
    width: int = 960,
    height: int = 300,
) -> str:
    """Bars at ``slots`` evenly spaced positions; one ``rect.bar`` per non-zero segment.

    ``x_ticks`` label slot edges: ``(k, text)`` is drawn at the left edge of slot
    ``k`` (``k == slots`` is the right end of the axis).
    """
    left, right, bottom = 56, 16, 46
    top = 28 if colors else 12
    pw, ph = width - left - right, height - top - bottom
    slot_w = pw / max(1, slots)
    ymax = max((sum(v for _, v in b.segments) for b in bars), default=0.0)
    step = nice_step(ymax)
    ytop = max(step, math.ceil(ymax / step) * step)
    out = [_svg_open(element_id, label, width, height)]
    if colors:
        out.append(_legend(colors, left, 14))
    for i in range(int(ytop / step) + 1):
        y = top + ph - ph * (i * step) / ytop
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(_text(left - 6, y + 4, fmt_num(i * step), "end"))
    gap = min(2.0, slot_w * 0.15)
    for b in bars:
        x, base = left + b.slot * slot_w + gap / 2, float(top + ph)
        for series, value in b.segments:
            if value <= 0:
                continue
            h = ph * value / ytop
            base -= h
            color = (colors or {}).get(series, PALETTE[0])
            out.append(
                f'<rect class="bar" data-series="{escape(series)}" data-value="{value:g}" '
                f'x="{x:.1f}" y="{base:.1f}" width="{max(1.0, slot_w - gap):.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{escape(b.title)}</title></rect>'
            )
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#555"/>')
    for k, text in x_ticks:
        x = left + k * slot_w
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#555"/>')
        out.append(_text(x, top + ph + 16, text))
    out.append(_text(left + pw / 2, height - 6, x_label))
    out.append(_text(14, top + ph / 2, y_label, extra=f' transform="rotate(-90 14 {top + ph / 2:.1f})"'))
    out.append("</svg>")
    return "".join(out)


def timeline(
    *,
    element_id: str,
    label: str,
    spans: Sequence[Span],
    x_label: str,
    width: int = 960,
    row_h: int = 18,
) -> str:
    """One ``rect.span`` per row from ``start`` to ``end`` on a shared UTC time axis."""
    left, right, top, bottom = 190, 16, 8, 40
    pw = width - left - right
    height = top + bottom + row_h * len(spans)
    t0 = min((s.start for s in spans), default=0.0)
    t1 = max((s.end for s in spans), default=0.0)
    pad = max(60.0, (t1 - t0) * 0.02)
    t0, t1 = t0 - pad, t1 + pad

    def x(t: float) -> float:
        return left + pw * (t - t0) / (t1 - t0)

    out = [_svg_open(element_id, label, width, height)]
    axis_y = top + row_h * len(spans)
    for t, text in time_ticks(t0, t1):
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{axis_y}" stroke="#e4e4e4"/>')
        out.append(_text(x(t), axis_y + 14, text))
    for i, s in enumerate(spans):
        y = top + i * row_h
        x0, x1 = x(s.start), x(s.end)
        out.append(_text(left - 6, y + row_h * 0.7, s.label, "end"))
        out.append(
            f'<rect class="span" x="{x0:.1f}" y="{y + 3:.1f}" width="{max(3.0, x1 - x0):.1f}" '
            f'height="{row_h - 6}" rx="2" fill="{PALETTE[i % 2 * 5]}">'
            f"<title>{escape(s.title)}</title></rect>"
        )
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{axis_y}" y2="{axis_y}" stroke="#555"/>')
    out.append(_text(left + pw / 2, height - 6, x_label))
    out.append("</svg>")
    return "".join(out)


def _shade(frac: float) -> str:
    """Sequential colour from pale yellow (0) to dark red (1)."""
    lo, hi = (255, 237, 160), (177, 0, 38)
    f = min(1.0, max(0.0, frac))
    r, g, b = (round(a + (c - a) * f) for a, c in zip(lo, hi, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(
    *,
    element_id: str,
    label: str,
    rows: Sequence[str],
    cols: Sequence[str],
    cells: Sequence[HeatCell],
    x_label: str,
    value_label: str,
    vmax: float | None = None,
    width: int = 960,
    row_h: int = 22,
) -> str:
    """A ``rows`` × ``cols`` grid; one ``rect.cell`` per given cell, shaded by value.

    The shade runs from 0 to ``vmax`` (default: the largest value).
    """
    left, right, top, bottom = 190, 16, 30, 40
    pw = width - left - right
    cw = pw / max(1, len(cols))
    height = top + bottom + row_h * len(rows)
    vmax = vmax or max((c.value for c in cells if c.value is not None), default=0.0) or 1.0
    ri = {r: i for i, r in enumerate(rows)}
    ci = {c: i for i, c in enumerate(cols)}
    out = [_svg_open(element_id, label, width, height)]
    out.append(_text(left, 14, f"shade: {value_label}, 0 to {fmt_num(vmax)}; grey: flagged hour "
                     "without a measured rate", "start"))
    for r, i in ri.items():
        y = top + i * row_h
        out.append(f'<rect x="{left}" y="{y}" width="{pw}" height="{row_h}" fill="#f6f6f6" '
                   'stroke="#fff"/>')
        out.append(_text(left - 6, y + row_h * 0.68, r, "end"))
    for c in cells:
        if c.row not in ri or c.col not in ci:
            continue
        fill = "#9e9e9e" if c.value is None else _shade(0.15 + 0.85 * c.value / vmax)
        out.append(
            f'<rect class="cell" data-row="{escape(c.row)}" data-col="{escape(c.col)}" '
            f'x="{left + ci[c.col] * cw:.1f}" y="{top + ri[c.row] * row_h}" width="{cw:.1f}" '
            f'height="{row_h}" fill="{fill}" stroke="#fff"><title>{escape(c.title)}</title></rect>'
        )
    axis_y = top + row_h * len(rows)
    for name, i in ci.items():
        out.append(_text(left + (i + 0.5) * cw, axis_y + 14, name))
    out.append(_text(left + pw / 2, height - 6, x_label))
    out.append("</svg>")
    return "".join(out)
