"""``greentrack compare`` rendered: a text or Markdown table, or an HTML page with the metric
against cumulative energy, from the result of :func:`greentrack.reports.compare.compare`.

One column per run, named by :func:`~greentrack.reports.compare.run_names`; after each ratio its
noise band and the verdict (better, worse, within noise); notes said once each.
"""

from __future__ import annotations

from html import escape
from typing import Any

from greentrack.common.text import md_escape, printable
from greentrack.common.units import ENERGY_UNITS, J_PER_KWH, MASS_UNITS, sig, unit_for
from greentrack.reports import svg
from greentrack.reports.compare import METRICS


def ratio_text(ratio: float, band: dict[str, Any] | None, lower: bool | None) -> str:
    """``(x0.52, 0.45-0.6: better)``: the ratio, its noise band and the verdict; no verdict
    inside the band or without one (nor a band for a count, ``lower`` None). The band gets the
    digits that show it on the side of 1 the verdict says."""
    text = f" (x{ratio:.3g}"
    if lower is None:
        return text + ")"
    if band is None or band["within_noise"] is None:
        return text + ", noise unknown)"
    for digits in range(2, 7):
        lo, hi = f"{band['low']:.{digits}g}", f"{band['high']:.{digits}g}"
        if (float(lo) <= 1.0 <= float(hi)) == band["within_noise"]:
            break
    text += f", {lo}-{hi}"
    if band["within_noise"]:
        return text + ": within noise)"
    return text + (": better)" if (ratio < 1) == lower else ": worse)")


#: rows whose figures are scaled to one unit for the row: (factor to the base unit, units)
_SCALED = {"energy_kwh": (J_PER_KWH, ENERGY_UNITS, ""),
           "emissions_location_kg": (1e3, MASS_UNITS, "CO2e"),
           "emissions_market_kg": (1e3, MASS_UNITS, "CO2e"),
           "emissions_g_per_step": (1.0, MASS_UNITS, "CO2e"), "sci_g": (1.0, MASS_UNITS, "CO2e")}


def _row_unit(key: str, unit: str, values: list[float]) -> tuple[float, str]:
    """What a row's figures are divided by and the row's unit: energy and emissions in the unit
    that suits the largest of them (``common.units.unit_for``), the others as they are; a
    scaled row of n/a only has no unit to suit (none, rather than kgCO2e beside mgCO2e rows)."""
    if key not in _SCALED:
        return 1.0, unit
    if not values:
        return 1.0, ""
    to_base, units, suffix = _SCALED[key]
    name, per = unit_for(max(values, key=abs) * to_base, units)
    return per / to_base, name + suffix


def _table(result: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows and notes of the comparison: one column per run, ``value (x ratio)``."""
    runs = result["runs"]
    base_dir = result["baseline"]
    headers = ["metric"] + [printable(r["name"], 60) + (" (baseline)" if r["run_dir"] == base_dir
                                                         else "") for r in runs]
    body = []
    for key, label, unit, lower in METRICS:
        values = [float(r[key]) for r in runs if isinstance(r[key], (int, float))]
        if key == "flops_per_joule" and not values:
            continue  # no run recorded FLOPs: no row (not a row of n/a)
        per, unit = _row_unit(key, unit, values)
        cells = [f"{label}{' (' + unit + ')' if unit else ''}"]
        if key == "steps":
            kinds = {r["per_step_divisor"] for r in runs}
            cells[0] = "optimizer steps" if kinds == {"optimizer_steps"} else \
                "step rows" if kinds == {"step_rows"} else "steps (see notes)"
        if key == "sci_g":
            cells[0] = f"SCI ({unit + ' ' if unit else ''}per {printable(runs[0]['sci_unit'])})"
        for r in runs:
            v = r[key]
            text = "n/a" if v is None else sig(float(v) / per, 4)
            if key == "cost_total" and v is not None:  # each run's own currency, beside its cost
                text += f" {printable(r['currency'] or '(no currency)', 20)}"
            ratio = r["ratios"][key]
            if r["run_dir"] != base_dir and ratio is not None:
                text += ratio_text(ratio, r["ratio_bands"].get(key), lower)
            cells.append(text)
        body.append(cells)
    body.append(["energy basis"] + [printable(r["energy_basis"]) for r in runs])
    body.append(["quality band"] + [f"{printable(r['quality'])} (+-{r['uncertainty_pct']:g}%)"
                                    for r in runs])
    body.insert(0, ["run"] + [printable(f"{r['run_dir']} ({r['run_id']})", 80) for r in runs])
    body.insert(0, ["labels"] + [printable(", ".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
                                           or "-", 60) for r in runs])
    if "target" in result:
        body += _target_rows(result)
    return headers, body, _notes(result)


def _target_rows(result: dict[str, Any]) -> list[list[str]]:
    runs = result["runs"]
    body = [[f"to {printable(result['target'], 80)}:"] + ["" for _ in runs]]
    for key, label, fmt in (("energy_kwh", "IT energy", 4), ("energy_j", "IT energy (J)", 4),
                            ("emissions_location_kg", "emissions", 3),
                            ("cost_total", "cost", 3), ("gpu_hours", "GPU-hours", 3),
                            ("duration_s", "wall time (s)", 4), ("steps", "steps", 4),
                            ("tokens", "tokens", 4)):
        reached = [float(r["to_target"][key]) for r in runs if r["to_target"]["reached"]
                   and isinstance(r["to_target"][key], (int, float))]
        per, unit = _row_unit(key, "", reached)
        cells = [f"  {label}{' (' + unit + ')' if unit else ''}"]
        for r in runs:
            t = r["to_target"]
            v = t[key]
            cells.append(sig(float(v) / per, fmt) if t["reached"] and isinstance(v, (int, float))
                         else "n/a" if t["reached"] else
                         (f"not reached (best {sig(t['best'], 4)})" if t["best"] is not None
                          else f"not reached ({printable(t['metric'], 40)} not recorded)"))
        body.append(cells)
    return body


def _notes(result: dict[str, Any]) -> list[str]:
    """What the table needs said once: the baseline, how bands are made, what is not compared."""
    runs = result["runs"]
    base = next(r for r in runs if r["run_dir"] == result["baseline"])
    others = [r for r in runs if r is not base]
    lines: list[str] = [f"ratios are to the baseline, {printable(base['name'], 60)} "
                        f"({printable(result['baseline'])}); after each ratio its noise band (the "
                        "two runs' quality bands and, for runs in a --group, how far their group's "
                        "runs spread, added in quadrature): within noise when the band holds 1"]
    for what, picked in (("cost", [r for r in others if "cost_total" in r["not_compared"]]),
                         ("steps", [r for r in others if "steps" in r["not_compared"]]),
                         ("work", [r for r in others if not r["equal_work"]])):
        if not picked:
            continue
        names = "; ".join(
            f"{printable(r['name'], 60)} (" + printable(
                r["currency"] or "no currency" if what == "cost" else r["per_step_divisor"]
                if what == "steps" else r["work_difference"], 200) + ")" for r in picked)
        lines.append({
            "cost": f"cost in another currency than the baseline's "
                    f"({printable(base['currency'] or 'no currency', 20)}): {names}: costs in "
                    "different currencies are not compared",
            "steps": f"per step divides by another count than the baseline's "
                     f"({base['per_step_divisor']}): {names}: per-step figures are not compared",
            "work": f"not the same work as the baseline: {names}: ratios of totals left out, "
                    "compare per step, sample or token"}[what])
    for name, g in (result.get("groups") or {}).items():
        parts = []
        for fig, st in g["figures"].items():
            text = f"{fig} {sig(st['mean'], 4)}"
            text += f" +/- {sig(st['spread'], 2)}" if st["spread"] is not None else " (one run)"
            vs = g["versus_baseline"].get(fig)
            if vs is not None:
                text += (f" (x{vs['ratio']:.3g}, " + ("within noise" if vs["within_noise"] else
                         "spread unknown" if vs["within_noise"] is None else
                         "better" if vs["difference"] < 0 else "worse") + ")")
            parts.append(text)
        lines.append(f"group {printable(name, 40)} ({len(g['runs'])} runs): " + "; ".join(parts))
    return lines


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table: one column per run, ``value (x ratio)`` after the first; then notes."""
    headers, body, notes = _table(result)
    widths = [max(len(row[i]) for row in [headers] + body) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines + notes)


def format_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table and notes (every cell literal text)."""
    headers, body, notes = _table(result)
    out = ["# greentrack compare", "",
           "| " + " | ".join(md_escape(h) for h in headers) + " |",
           "|" + " --- |" * len(headers)]
    out += ["| " + " | ".join(md_escape(c.strip()) for c in row) + " |" for row in body]
    out += [""] + [f"- {md_escape(n)}" for n in notes]
    return "\n".join(out) + "\n"


def format_html(result: dict[str, Any]) -> str:
    """A standalone HTML page: the table, the notes and, when runs recorded the metric, the
    metric against cumulative IT energy (in the unit of the largest), one line per run."""
    headers, body, notes = _table(result)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c.strip())}</td>" for c in row) + "</tr>\n"
                   for row in body)
    parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
             "<title>greentrack compare</title><style>body{font-family:sans-serif;margin:2em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:left}td:first-child{white-space:nowrap}"
             "svg{width:100%;height:auto;max-width:960px}</style></head><body>"
             "<h1>greentrack compare</h1>",
             "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>\n"
             + rows + "</table>",
             "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"]
    curves = result.get("curves")
    if curves and any(c["points"] for c in curves["runs"]):
        names = {r["run_dir"]: r["name"] for r in result["runs"]}
        # the energy axis in the unit of the largest energy drawn (mWh for a short run)
        top = max((p[0] for c in curves["runs"] for p in c["points"]), default=0.0)
        unit, per = unit_for(top * J_PER_KWH, ENERGY_UNITS)
        series = [(names.get(c["run_dir"], c["run_dir"]),
                   [p[0] * J_PER_KWH / per for p in c["points"]],
                   [p[1] for p in c["points"]]) for c in curves["runs"]]
        target = result.get("target") if result.get("target_metric") == curves["metric"] \
            else None
        level = (f"target {target}", float(result["target_value"])) if target else None
        parts.append(svg.xy_lines(f"{curves['metric']} against cumulative IT energy", series,
                                  f"cumulative IT energy ({unit})", curves["metric"],
                                  level=level))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
