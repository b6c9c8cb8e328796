"""The report's ``forecast`` and ``start_window`` sections.

``forecast``: :class:`greentrack.carbon.forecast.Forecast` (the live forecast's own code) fed with
observations read back from the run: the main phase's steps done (lowest rank) by the end of each
cell of the report's time grid (600 cells at most) and the energy until then (the stored time
series), as a logging cadence in time would observe them. For a run still going (``running``,
``incomplete``) with planned steps recorded, the forecast of the whole run now. For a run that
ended, a check: the forecast as it stood after the first :data:`CHECK_SHARE` of its steps,
against what the run then used until the end of the cell of its last step, and whether the
interval held it, to the grid's resolution (one cell, at most 1/600 of the run: ``resolution_s``);
an interval of zero width is not checked (no ``covered`` entry). The report's table checks the
printed numbers (:mod:`greentrack.reports.forecast_table`).
Emissions, cost and GPU-hours are the footprint of the forecast run at the settings in force at
the run's end (its last part's), as the live forecast computes them.

``start_window``: the best start of the ``start-time`` finding (``greentrack advise``), as
seconds from the run's start, for the html chart.
"""

from __future__ import annotations

from typing import Any

from greentrack.carbon.footprint import Footprint, Settings
from greentrack.carbon.forecast import WINDOW, Forecast
from greentrack.common.units import utc
from greentrack.reports.advise import Finding
from greentrack.reports.run_data import RunData

#: a finished run's forecast is checked as it stood after this share of its steps
CHECK_SHARE = 0.10
#: fewer step marks than this up to the check: no check (nothing to extrapolate from)
MIN_MARKS = 3
#: intervals of the intensity series kept for the start-window chart
SERIES_POINTS = 2000
FIGURES = ("energy_j", "duration_s", "end_unix", "gpu_hours", "emissions_g", "cost")


def forecast_section(data: RunData, settings: Settings, gpus: int) -> dict[str, Any] | None:
    """The report's ``forecast`` (see the module docstring), or None when the run has too few
    steps or (still going) no planned steps."""
    marks = data.step_marks
    if len(marks) < MIN_MARKS:
        return None
    going = data.summary["status"] in ("running", "incomplete")
    done = marks[-1][0]
    if going:
        if not data.planned_steps or data.planned_steps <= done:
            return None
        planned, source, upto = data.planned_steps, "recorded by the training integration", marks
    else:
        planned = data.planned_steps if data.planned_steps and data.planned_steps <= done else done
        source = ("recorded by the training integration" if planned == data.planned_steps
                  else "the steps the run took")
        cut = next((i for i, (n, _) in enumerate(marks) if n >= planned * CHECK_SHARE), 0)
        upto = marks[:max(cut, MIN_MARKS - 1) + 1]
        if upto[-1][0] >= planned:
            return None  # too few marks before the end: nothing was forecast
    f = Forecast(planned, settings=settings, gpus=gpus)
    upto = upto[-WINDOW:]
    energies = data.energy_until([t for _, t in upto])
    for (n, t), e in zip(upto, energies):
        f.observe(n, e, t - data.start_unix, now_unix=t)
    est = f.estimate()
    if est is None:
        return None
    out: dict[str, Any] = {
        "kind": "now" if going else "check", "phase": data.main_phase,
        "planned_steps": planned, "planned_source": source,
        "made_at_steps": upto[-1][0], "made_at": utc(upto[-1][1]),
        "level": est["interval"]["level"], "method": est["interval"]["method"],
        "interval_known": est["interval"]["known"], "currency": est["currency"],
        "estimate": {k + s: est[k + s] for k in FIGURES for s in ("", "_low", "_high")},
        "actual": None, "covered": None,
    }
    if not going:
        last_n, last_t = next(m for m in reversed(marks) if m[0] >= planned)
        energy = data.energy_until([last_t])[0]
        duration = last_t - data.start_unix
        actual = f.figures(energy, duration, duration, last_t)  # the same footprint
        out["actual"] = {k: actual[k] for k in FIGURES}
        out["actual"]["steps"] = last_n
        if est["interval"]["known"]:
            # the observations and the actual sit on the time grid: inside to one cell's share
            _, width = data.plot_grid()
            share = width / duration if duration > 0 else 0.0
            # an interval of zero width (observations too regular to show a spread) cannot
            # hold a measured value: not checked (the report says so instead of "NO")
            out["covered"] = {
                k: est[k + "_low"] - tol <= actual[k] <= est[k + "_high"] + tol
                for k in FIGURES if actual[k] is not None and est[k + "_low"] is not None
                and est[k + "_high"] > est[k + "_low"]
                for tol in (width if k == "end_unix" else abs(actual[k]) * share,)}
            out["resolution_s"] = width
    return out


def start_window(data: RunData, findings: list[Finding],
                 fp: Footprint) -> dict[str, Any] | None:
    """The best start of the ``start-time`` finding, in seconds from the run's start, with the
    intensity series around the run and that start (at most :data:`SERIES_POINTS` intervals)."""
    f = next((f for f in findings if f["kind"] == "start-time"), None)
    if f is None:
        return None
    ev = f["evidence"]
    start = float(ev["best_start_unix"]) - data.start_unix
    width = float(ev["window_s"])
    out: dict[str, Any] = {"start_s": start, "end_s": start + width,
                           "best_start": ev["best_start"], "saving_g": f["grams"],
                           "as_run_g": ev["as_run_g"], "best_g": ev["best_g"],
                           "series": ev["series"]}
    series = fp.parts[-1].settings.series  # the finding was made on it
    if series is None:
        return None
    margin = max(width, 3600.0)
    lo, hi = min(0.0, start) - margin, max(width, start + width) + margin
    shown = [(a - data.start_unix, b - data.start_unix, v)
             for a, b, v in zip(series.starts, series.ends, series.values)
             if b - data.start_unix > lo and a - data.start_unix < hi][:SERIES_POINTS]
    out["series_start_s"] = [a for a, _, _ in shown]
    out["series_end_s"] = [b for _, b, _ in shown]
    out["series_g_per_kwh"] = [v for _, _, v in shown]
    return out
