"""Small, dependency-free SVG charts: lines over time and a histogram.

Each function returns one standalone ``<svg>`` element (inline in HTML, or a ``.svg`` file next
to the Markdown report). Values are downsampled by the caller; nothing here is quadratic.
"""

from __future__ import annotations

import math
from html import escape as _html_escape
from typing import Any

from greentrack._text import printable

W, H = 760, 300


def escape(text: str) -> str:
    """Literal text in SVG (XML): markup escaped, control characters (invalid XML) as escapes."""
    return _html_escape(printable(text))


LEFT, RIGHT, TOP, BOTTOM = 70, 170, 30, 45
PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
           "#1f78b4", "#b2df8a", "#fb9a99", "#cab2d6", "#ff7f00", "#6a3d9a", "#b15928", "#17becf")


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round ticks from the last one at or below ``lo`` to the first one at or above ``hi``, so
    an axis drawn from the first tick to the last covers every value in ``[lo, hi]``."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    if not (raw > 0 and math.isfinite(raw)):  # a span too small (subnormal) or too large to divide
        return [lo, hi]
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    k = math.floor(lo / step + 1e-9)
    out: list[float] = []
    while True:
        v = k * step
        out.append(float(f"{v:.12g}"))  # 0.30000000000000004 -> 0.3, at any magnitude
        if v >= hi - step * 1e-9:
            return out
        k += 1


def _within(ticks: list[float], lo: float, hi: float) -> list[float]:
    """The ticks inside ``[lo, hi]``: for an axis that spans the data exactly (time, bins)."""
    eps = (hi - lo) * 1e-9
    return [v for v in ticks if lo - eps <= v <= hi + eps]


def _fmt(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2g}"
    return f"{v:,.{0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 else 3}f}"


def _tick_labels(ticks: list[float]) -> list[str]:
    """Tick labels as :func:`_fmt` writes them, with more digits where one would not read as its
    tick (1,250,000 as "1.2e+06"; 0.0125 as "0.013") or two would read the same."""
    def exact(label: str, v: float) -> bool:
        return abs(float(label.replace(",", "")) - v) <= 1e-9 * abs(v)

    labels = [_fmt(v) for v in ticks]
    digits = 3
    while (len(set(labels)) < len(labels) or not all(map(exact, labels, ticks))) and digits <= 17:
        labels = [f"{v:.{digits}g}" for v in ticks]
        digits += 1
    return labels


def _frame(title: str, xlabel: str, ylabel: str, xt: list[float], yt: list[float],
           sx: object, sy: object) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">',
           f'<title>{escape(title)}</title>',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
           f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>']
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>')
    for v, label in zip(xt, _tick_labels(xt)):
        x = sx(v)  # type: ignore[operator]
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" stroke="#333"/>'
                   f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{label}</text>')
    for v, label in zip(yt, _tick_labels(yt)):
        y = sy(v)  # type: ignore[operator]
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.0f}" y="{H - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{(y0 + y1) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(y0 + y1) / 2:.0f})">{escape(ylabel)}</text>')
    return out


def _time_axis(t_s: list[float]) -> tuple[list[float], str, float]:
    span = max(t_s[-1] if t_s else 1.0, 1e-9)
    for unit, div in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if span >= 2 * div:
            return [v / div for v in t_s], f"time since start ({unit})", div
    return list(t_s), "time since start (s)", 1.0


def lines(title: str, t_s: list[float], series: list[tuple[str, list[float]]], ylabel: str) -> str:
    """One polyline per ``(label, values)`` against ``t_s`` (seconds since start)."""
    xs, xlabel, _ = _time_axis(t_s)
    ys_all = [v for _, vals in series for v in vals if math.isfinite(v)]
    lo_x, hi_x = 0.0, max((xs[-1] + xs[0]) if xs else 1.0, 1e-9)  # points are cell centres
    hi_y = max(ys_all, default=1.0) or 1.0
    yt = _nice_ticks(0.0, hi_y * 1.05)
    top = max(yt[-1], hi_y)
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP

    def sx(v: float) -> float:
        return x0 + (v - lo_x) / ((hi_x - lo_x) or 1.0) * (x1 - x0)

    def sy(v: float) -> float:
        return y0 - v / top * (y0 - y1)

    # time spans the full width; the y axis goes up to the tick above the highest value
    out = _frame(title, xlabel, ylabel, _within(_nice_ticks(lo_x, hi_x), lo_x, hi_x), yt, sx, sy)
    _polylines(out, [(label, list(zip(xs, vals))) for label, vals in series], sx, sy, x1)
    return "\n".join(out)


def _polylines(out: list[str], series: list[tuple[str, list[tuple[float, float]]]],
               sx: Any, sy: Any, x1: float) -> None:
    """A coloured polyline per ``(label, points)`` (non-finite points skipped), a legend for the
    first 16, and the closing tag."""
    for i, (label, points) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points
                       if math.isfinite(x) and math.isfinite(y))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        ly = TOP + 14 * i + 6
        if i < 16:
            out.append(f'<rect x="{x1 + 10}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                       f'<text x="{x1 + 24}" y="{ly + 1}">{escape(label[:22])}</text>')
    out.append("</svg>")


def xy_lines(title: str, series: list[tuple[str, list[float], list[float]]], xlabel: str,
             ylabel: str) -> str:
    """One polyline per ``(label, xs, ys)``; both axes span the data (x from 0)."""
    xs_all = [x for _, xs, _ in series for x in xs if math.isfinite(x)]
    ys_all = [y for _, _, ys in series for y in ys if math.isfinite(y)]
    hi_x = max(xs_all, default=1.0) or 1.0
    lo_y, hi_y = min(ys_all, default=0.0), max(ys_all, default=1.0)
    if hi_y <= lo_y:
        lo_y, hi_y = lo_y - 0.5, hi_y + 0.5
    xt, yt = _nice_ticks(0.0, hi_x), _nice_ticks(lo_y, hi_y)
    top_x, lo_t, hi_t = max(xt[-1], hi_x), min(yt[0], lo_y), max(yt[-1], hi_y)
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP

    def sx(v: float) -> float:
        return x0 + v / top_x * (x1 - x0)

    def sy(v: float) -> float:
        return y0 - (v - lo_t) / ((hi_t - lo_t) or 1.0) * (y0 - y1)

    out = _frame(title, xlabel, ylabel, xt, [v for v in yt if lo_t <= v <= hi_t], sx, sy)
    _polylines(out, [(label, list(zip(xs, ys))) for label, xs, ys in series], sx, sy, x1)
    return "\n".join(out)


def histogram(title: str, edges: list[float], counts: list[int], xlabel: str,
              marks: dict[str, float] | None = None) -> str:
    """Bars over ``edges`` (len(counts) + 1), with optional labelled vertical marks."""
    lo, hi = edges[0], edges[-1]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    top_c = max(counts, default=1) or 1
    yt = [float(v) for v in _nice_ticks(0.0, max(top_c * 1.05, 5.0))]  # whole steps per tick
    top = max(yt[-1], top_c)
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP

    def sx(v: float) -> float:
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    def sy(v: float) -> float:
        return y0 - v / top * (y0 - y1)

    out = _frame(title, xlabel, "steps", _within(_nice_ticks(lo, hi), lo, hi), yt, sx, sy)
    for k, c in enumerate(counts):
        if c <= 0:
            continue
        a, b = sx(edges[k]), sx(edges[min(k + 1, len(edges) - 1)] if len(edges) > 1 else hi)
        out.append(f'<rect x="{a:.1f}" y="{sy(c):.1f}" width="{max(b - a - 1, 1):.1f}" '
                   f'height="{y0 - sy(c):.1f}" fill="#1b9e77"/>')
    for i, (label, v) in enumerate((marks or {}).items()):
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="#d95f02" '
                   f'stroke-dasharray="4 3"/><text x="{x1 + 10}" y="{TOP + 14 * i + 6}" '
                   f'fill="#d95f02">{escape(label)} {_fmt(v)} J</text>')
    out.append("</svg>")
    return "\n".join(out)


def plots(doc: dict[str, Any]) -> dict[str, str]:
    """The report's three charts by name: ``power``, ``cumulative``, ``steps`` (when any)."""
    ts = doc["timeseries"]
    out = {
        "power": lines("Power over time by device", ts["t_s"],
                       [(s["label"], s["power_w"]) for s in ts["series"]], "power (W)"),
        "cumulative": lines("Cumulative IT energy", ts["t_s"],
                            [("all devices", ts["cumulative_kwh"])], "energy (kWh)"),
    }
    hist = doc["steps"].get("histogram")
    if hist:
        e = doc["steps"]["by_phase"][hist["phase"]]["energy_per_step_j"]
        out["steps"] = histogram(f"Energy per {hist['phase']} step ({doc['steps']['by_phase'][hist['phase']]['count']} steps)",
                                 hist["edges_j"], hist["counts"], "energy per step (J)",
                                 {k: e[k] for k in ("median", "p95") if e.get(k) is not None})
    return out
