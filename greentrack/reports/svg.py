"""Small, dependency-free SVG charts: lines over time and a histogram.

Each function returns one standalone ``<svg>`` element (inline in HTML, or a ``.svg`` file next
to the Markdown report). Values are downsampled by the caller; nothing here is quadratic.
"""

from __future__ import annotations

import math
from html import escape as _html_escape
from typing import Any

from greentrack.common.text import printable
from greentrack.common.units import ENERGY_UNITS, J_PER_KWH, unit_for

#: Chart size in SVG units and its text sizes: a chart fills the report's 980-px column at
#: about 1:1 (the HTML scales it to the page's width), so 14-unit text reads as 14 px.
W, H = 960, 400
FONT, TITLE_FONT, ROW = 14, 16, 19
#: legend text beside the axes, cut at this many characters
LEGEND_CHARS = 30
#: a y tick label's baseline sits this far below its tick (text centred on the tick)
TICK_LABEL_DY = 5


def escape(text: str) -> str:
    """Literal text in SVG (XML): markup escaped, control characters (invalid XML) as escapes."""
    return _html_escape(printable(text))


LEFT, RIGHT, TOP, BOTTOM = 84, 250, 40, 56
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
    # A label reads as its tick when it is off by a millionth of the step at most (a relative
    # tolerance let "9999999.88" stand for 9999999.875, above data starting there)
    step = min((b - a for a, b in zip(ticks, ticks[1:]) if b > a), default=abs(ticks[0]) if ticks
               else 1.0) or 1.0

    def exact(label: str, v: float) -> bool:
        return abs(float(label.replace(",", "")) - v) <= max(step * 1e-6, 1e-12 * abs(v))

    labels = [_fmt(v) for v in ticks]
    digits = 3
    while (len(set(labels)) < len(labels) or not all(map(exact, labels, ticks))) and digits <= 17:
        labels = [f"{v:.{digits}g}" for v in ticks]
        digits += 1
    return labels


def _frame(title: str, xlabel: str, ylabel: str, xt: list[float], yt: list[float],
           sx: object, sy: object) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="{FONT}">',
           f'<title>{escape(title)}</title>',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
           f'<text x="{LEFT}" y="22" font-size="{TITLE_FONT}" font-weight="bold">{escape(title)}</text>']
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>')
    for v, label in zip(xt, _tick_labels(xt)):
        x = sx(v)  # type: ignore[operator]
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" stroke="#333"/>'
                   f'<text x="{x:.1f}" y="{y0 + 20}" text-anchor="middle">{label}</text>')
    for v, label in zip(yt, _tick_labels(yt)):
        y = sy(v)  # type: ignore[operator]
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{x0 - 6}" y="{y + TICK_LABEL_DY:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.0f}" y="{H - 10}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="18" y="{(y0 + y1) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 18 {(y0 + y1) / 2:.0f})">{escape(ylabel)}</text>')
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
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        ly = TOP + ROW * i + 6
        if i < 16:
            out.append(f'<rect x="{x1 + 10}" y="{ly - 10}" width="12" height="12" fill="{color}"/>'
                       f'<text x="{x1 + 28}" y="{ly + 1}">{escape(label[:LEGEND_CHARS])}</text>')
    out.append("</svg>")


#: the colour of a horizontal level (a target) on :func:`xy_lines`
LEVEL_COLOR = "#c00000"


def xy_lines(title: str, series: list[tuple[str, list[float], list[float]]], xlabel: str,
             ylabel: str, level: tuple[str, float] | None = None) -> str:
    """One polyline per ``(label, xs, ys)``; both axes span the data (x from 0) and ``level``,
    a ``(label, y)`` drawn as a dashed horizontal line across the axes (a target)."""
    xs_all = [x for _, xs, _ in series for x in xs if math.isfinite(x)]
    ys_all = [y for _, _, ys in series for y in ys if math.isfinite(y)]
    if level is not None and math.isfinite(level[1]):
        ys_all.append(level[1])
    hi_x = max(xs_all, default=1.0) or 1.0
    lo_y, hi_y = min(ys_all, default=0.0), max(ys_all, default=1.0)
    if hi_y - lo_y <= 1e-9 * max(abs(lo_y), abs(hi_y)):  # flat, to the precision ticks can show
        lo_y, hi_y = lo_y - 0.5, hi_y + 0.5
    xt, yt = _nice_ticks(0.0, hi_x), _nice_ticks(lo_y, hi_y)
    top_x, lo_t, hi_t = max(xt[-1], hi_x), min(yt[0], lo_y), max(yt[-1], hi_y)
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP

    def sx(v: float) -> float:
        return x0 + v / top_x * (x1 - x0)

    def sy(v: float) -> float:
        return y0 - (v - lo_t) / ((hi_t - lo_t) or 1.0) * (y0 - y1)

    out = _frame(title, xlabel, ylabel, xt, [v for v in yt if lo_t <= v <= hi_t], sx, sy)
    if level is not None and math.isfinite(level[1]):
        y = sy(level[1])
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="{LEVEL_COLOR}" '
                   f'stroke-width="2" stroke-dasharray="8 5"/>')
        _legend_line(out, min(len(series), 16), LEVEL_COLOR, level[0], x1)
    _polylines(out, [(label, list(zip(xs, ys))) for label, xs, ys in series], sx, sy, x1)
    return "\n".join(out)


def _legend_line(out: list[str], row: int, color: str, label: str, x1: float) -> None:
    """A legend entry for a dashed line: a dash and its label."""
    ly = TOP + ROW * row + 6
    out.append(f'<line x1="{x1 + 8}" y1="{ly - 4}" x2="{x1 + 24}" y2="{ly - 4}" stroke="{color}" '
               f'stroke-width="2" stroke-dasharray="4 2"/><text x="{x1 + 28}" y="{ly + 1}">'
               f'{escape(label[:LEGEND_CHARS])}</text>')


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
                   f'stroke-dasharray="4 3"/><text x="{x1 + 10}" y="{TOP + ROW * i + 6}" '
                   f'fill="#d95f02">{escape(label)} {_fmt(v)} J</text>')
    out.append("</svg>")
    return "\n".join(out)


def bars(title: str, labels: list[str], values: list[float], ylabel: str) -> str:
    """One bar per category (``labels``, written under their bars, e.g. months) of ``values``;
    the value axis from 0 to the tick above the largest. A non-finite or negative value draws
    no bar."""
    shown = [v if math.isfinite(v) and v > 0 else 0.0 for v in values]
    top_v = max(shown, default=1.0) or 1.0
    yt = _nice_ticks(0.0, top_v * 1.05)
    top = max(yt[-1], top_v)
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    width = (x1 - x0) / max(len(labels), 1)

    def sy(v: float) -> float:
        return y0 - v / top * (y0 - y1)

    out = _frame(title, "", ylabel, [], yt, lambda v: x0, sy)
    every = max(1, math.ceil(len(labels) * 60 / (x1 - x0)))  # labels ~60 units apart at least
    for k, (label, v) in enumerate(zip(labels, shown)):
        a = x0 + k * width
        if v > 0:
            out.append(f'<rect x="{a + width * 0.1:.1f}" y="{sy(v):.1f}" width="{width * 0.8:.1f}" '
                       f'height="{y0 - sy(v):.1f}" fill="{PALETTE[0]}"><title>{escape(label)}: '
                       f'{_fmt(v)} {escape(ylabel)}</title></rect>')
        if k % every == 0:
            out.append(f'<text x="{a + width / 2:.1f}" y="{y0 + 20}" text-anchor="middle">'
                       f'{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def plots(doc: dict[str, Any]) -> dict[str, str]:
    """The report's three charts by name: ``power``, ``cumulative``, ``steps`` (when any)."""
    ts = doc["timeseries"]
    # the energy axis in the unit of its top value, as the tables write it (a second's run in
    # mWh, not 2e-05 kWh)
    joules = [v * J_PER_KWH for v in ts["cumulative_kwh"]]
    unit, per = unit_for(max(joules, default=0.0), ENERGY_UNITS)
    out = {
        "power": lines("Power over time by device", ts["t_s"],
                       [(s["label"], s["power_w"]) for s in ts["series"]], "power (W)"),
        "cumulative": lines("Cumulative IT energy", ts["t_s"],
                            [("all devices", [v / per for v in joules])], f"energy ({unit})"),
    }
    hist = doc["steps"].get("histogram")
    if hist:
        e = doc["steps"]["by_phase"][hist["phase"]]["energy_per_step_j"]
        out["steps"] = histogram(f"Energy per {hist['phase']} step ({doc['steps']['by_phase'][hist['phase']]['count']} steps)",
                                 hist["edges_j"], hist["counts"], "energy per step (J)",
                                 {k: e[k] for k in ("median", "p95") if e.get(k) is not None})
    return out


def _span_axis(lo: float, hi: float) -> tuple[float, str]:
    """The unit of a time axis from ``lo`` to ``hi`` seconds: ``(divisor, label)``."""
    for unit, div in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if hi - lo >= 2 * div:
            return div, f"time from the run's start ({unit})"
    return 1.0, "time from the run's start (s)"


def _legend(out: list[str], row: int, color: str, label: str, x1: float) -> None:
    ly = TOP + ROW * row + 6
    out.append(f'<rect x="{x1 + 10}" y="{ly - 10}" width="12" height="12" fill="{color}" '
               f'fill-opacity="0.6"/><text x="{x1 + 28}" y="{ly + 1}">{escape(label[:LEGEND_CHARS])}</text>')


def timeline(title: str, t_s: list[float], step_s: float, series: list[tuple[str, list[float]]],
             coverage: list[float] | None) -> str:
    """Power over time (a line per ``(label, watts)`` at cell centres ``t_s``, cells ``step_s``
    wide) and, along the time axis, a strip showing the share of each cell during which steps
    ran (darker: covered longer). The axes span the run and every value."""
    hi = max((t_s[-1] + step_s / 2) if t_s else 1.0, 1e-9)
    div, xlabel = _span_axis(0.0, hi)
    values = [v for _, vals in series for v in vals if math.isfinite(v)]
    top_v = max(values, default=1.0) or 1.0
    yt = _nice_ticks(0.0, top_v * 1.05)
    top = max(yt[-1], top_v)
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP

    def sx(v: float) -> float:  # v in axis units
        return x0 + v / (hi / div) * (x1 - x0)

    def sy(v: float) -> float:
        return y0 - v / top * (y0 - y1)

    # time spans the run exactly: no tick past its end
    out = _frame(title, xlabel, "power (W)", _within(_nice_ticks(0.0, hi / div), 0.0, hi / div),
                 yt, sx, sy)
    if coverage:
        strip = 8.0
        for k, share in enumerate(coverage):
            if share > 0:
                a, b = sx(k * step_s / div), sx(min((k + 1) * step_s, hi) / div)
                out.append(f'<rect x="{a:.1f}" y="{y0 - strip:.1f}" width="{max(b - a, 0.5):.1f}" '
                           f'height="{strip:.0f}" fill="#7570b3" '
                           f'fill-opacity="{min(1.0, share):.2f}"/>')
        _legend(out, min(len(series), 16), "#7570b3", "steps running", x1)
    _polylines(out, [(label, [(t / div, v) for t, v in zip(t_s, vals)]) for label, vals in series],
               sx, sy, x1)
    return "\n".join(out)


def windows(title: str, starts_s: list[float], ends_s: list[float], values: list[float],
            spans: list[tuple[str, float, float]], ylabel: str) -> str:
    """A step line of ``values`` over intervals ``[starts_s, ends_s)`` (seconds from the run's
    start, before it negative) and shaded ``(label, start_s, end_s)`` spans. The time axis spans
    the intervals and the spans, the value axis every value."""
    points = [(a, b, v) for a, b, v in zip(starts_s, ends_s, values)
              if math.isfinite(a) and math.isfinite(b) and math.isfinite(v)]
    lo = min([a for a, _, _ in points] + [a for _, a, _ in spans], default=0.0)
    hi = max([b for _, b, _ in points] + [b for _, _, b in spans], default=1.0)
    hi = hi if hi > lo else lo + 1.0
    div, xlabel = _span_axis(lo, hi)
    top_v = max((v for _, _, v in points), default=1.0) or 1.0
    yt = _nice_ticks(0.0, top_v * 1.05)
    top = max(yt[-1], top_v)
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP

    def sx(v: float) -> float:  # v in axis units
        return x0 + (v - lo / div) / ((hi - lo) / div) * (x1 - x0)

    def sy(v: float) -> float:
        return y0 - v / top * (y0 - y1)

    xt = [v for v in _nice_ticks(lo / div, hi / div) if lo / div <= v <= hi / div]
    out = _frame(title, xlabel, ylabel, xt, yt, sx, sy)
    colors = ("#999999", "#1b9e77", "#d95f02", "#7570b3")
    for i, (label, a, b) in enumerate(spans):
        color = colors[i % len(colors)]
        left, right = sx(a / div), sx(b / div)
        out.append(f'<rect x="{left:.1f}" y="{y1}" width="{max(right - left, 1.0):.1f}" '
                   f'height="{y0 - y1}" fill="{color}" fill-opacity="0.2" stroke="{color}"/>')
        _legend(out, 1 + i, color, label, x1)
    step_line = [(p, v) for a, b, v in points for p in (a / div, b / div)]
    _polylines(out, [("intensity", step_line)], sx, sy, x1)
    return "\n".join(out)


def opportunity_plots(doc: dict[str, Any]) -> dict[str, str]:
    """``timeline``: the run's power and when steps ran; ``start_window`` (when the report has
    a best start: an intensity series was given and a better start exists): the series, the
    run as it ran and the best start window."""
    ts = doc["timeseries"]
    out = {"timeline": timeline("Power over time and when steps ran", ts["t_s"], ts["step_s"],
                                [(s["label"], s["power_w"]) for s in ts["series"]],
                                ts.get("steps_coverage"))}
    w = doc.get("start_window")
    if w and w.get("series_start_s"):
        out["start_window"] = windows(
            "Carbon intensity: the run as it ran and the best start", w["series_start_s"],
            w["series_end_s"], w["series_g_per_kwh"],
            [("as run", 0.0, w["end_s"] - w["start_s"]), ("best start", w["start_s"], w["end_s"])],
            "gCO2e/kWh")
    return out
