"""``greentrack compare``: runs side by side, with ratios to the first.

What a user needs to judge a precision, batch-size or quantization change: joules per step, per
sample and per token, FLOPs per joule, MFU, duration, energy, emissions and cost. Each run's
figures come from its report document, so they match ``greentrack report`` exactly.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.common.text import md_escape, printable
from greentrack.common.units import J_PER_KWH
from greentrack.reports import svg
from greentrack.reports.build import sig
from greentrack.reports.document import report_document
from greentrack.run import Run, metric_points, run_dirs_of, to_target

#: (key, label, unit, lower_is_better; None: neither)
METRICS: tuple[tuple[str, str, str, bool | None], ...] = (
    ("duration_s", "duration", "s", True),
    ("energy_kwh", "IT energy", "kWh", True),
    ("steps", "steps", "", None),
    ("joules_per_step", "energy per step", "J", True),
    ("emissions_g_per_step", "emissions per step", "gCO2e", True),
    ("joules_per_sample", "energy per sample", "J", True),
    ("joules_per_token", "energy per token", "J", True),
    ("flops_per_joule", "FLOPs per joule", "FLOP/J", False),
    ("mfu", "MFU", "", False),
    ("emissions_location_kg", "emissions (location-based)", "kgCO2e", True),
    ("emissions_market_kg", "emissions (market-based)", "kgCO2e", True),
    ("sci_g", "SCI", "gCO2e", True),
    ("cost_total", "cost", "", True),
)


def _row(doc: dict[str, Any]) -> dict[str, Any]:
    s, c = doc["summary"], doc["compute"]
    return {"run_id": doc["run"]["run_id"], "run_dir": doc["run"]["run_dir"],
            "labels": dict(doc["run"].get("labels") or {}), "tokens": c["tokens"],
            "samples": c["samples"], "gpu_hours": c["gpu_hours"],
            "status": s["status"], "duration_s": s["duration_s"], "energy_kwh": s["energy_kwh"],
            # the count every per-step figure divides by (optimizer steps when the run has any)
            "steps": c["optimizer_steps"] if c.get("per_step_divisor") == "optimizer_steps"
            else c["steps"], "step_rows": c.get("step_rows", c["steps"]),
            "per_step_divisor": c.get("per_step_divisor"),
            "joules_per_step": c["joules_per_step"],
            "emissions_g_per_step": c.get("emissions_g_per_step"),
            "joules_per_sample": c["joules_per_sample"], "joules_per_token": c["joules_per_token"],
            "flops_per_joule": c["flops_per_joule"], "mfu": c["mfu"],
            "emissions_location_kg": s["emissions_location_kg"],
            "emissions_market_kg": s["emissions_market_kg"], "sci_g": s["sci_g"],
            "sci_unit": s["sci_unit"], "cost_total": s["cost_total"], "currency": s["currency"],
            "energy_basis": s["energy_basis"], "quality": s["quality"]}


#: Totals (not per-unit figures): their ratios only mean something for equal work.
TOTALS = frozenset({"duration_s", "energy_kwh", "emissions_location_kg", "emissions_market_kg",
                    "sci_g", "cost_total"})
#: Work is equal when every unit both runs count is within this relative difference.
EQUAL_WORK_REL = 0.01
_TARGET = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_./-]{0,63})\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*")


def parse_target(text: str) -> tuple[str, str, float]:
    """``"val_loss<=2.5"`` -> ``("val_loss", "<=", 2.5)``; a ConfigError naming ``--target``."""
    m = _TARGET.fullmatch(text or "")
    try:
        value = float(m.group(3)) if m else math.nan
    except ValueError:
        value = math.nan
    if m is None or not math.isfinite(value):
        raise ConfigError("--target", text, "must be METRIC<=X, METRIC>=X, METRIC<X or METRIC>X "
                          "with a finite number X, e.g. val_loss<=2.5")
    return m.group(1), m.group(2), value


def _name(run_dir: str) -> str:
    """A run's short name: its directory's, or its directories' joined by ``+``."""
    return "+".join(d.name for d in run_dirs_of(run_dir))


def same_path(run_dir: str | Path) -> str:
    """A run directory as given, normalized (``R/`` and ``./R`` read ``R``): each of the
    directories it joins with ``+``."""
    return "+".join(os.path.normpath(str(d)) for d in run_dirs_of(run_dir))


def _identity(run_dir: str) -> str:
    """Which run a directory argument names, however spelled (relative, absolute, a link)."""
    return "+".join(os.path.realpath(d) for d in run_dirs_of(run_dir))


def _unique(dirs: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for d in dirs:
        seen.setdefault(_identity(d), d)
    return list(seen.values())


def parse_groups(items: list[str] | None, run_dirs: list[str]) -> dict[str, list[str]]:
    """``--group NAME=RUN,RUN`` options -> {name: run dirs}; runs named only in groups are added.
    A run is one run however it is spelled (a trailing slash from tab completion, ``./R``)."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        name, sep, runs = item.partition("=")
        dirs = [same_path(r.strip()) for r in runs.split(",") if r.strip()]
        if not sep or not name.strip() or not dirs:
            raise ConfigError("--group", item, "must be NAME=RUN_DIR[,RUN_DIR...]")
        out[name.strip()] = _unique(out.get(name.strip(), []) + dirs)
    return out


def work(row: dict[str, Any]) -> dict[str, float]:
    """The units of work a run counts: steps, samples, tokens (those it recorded)."""
    return {k: float(row[k]) for k in ("steps", "samples", "tokens")
            if isinstance(row.get(k), (int, float)) and row[k]}


def equal_work(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, str]:
    """Whether two runs did the same work (every unit both count within 1%), and the difference."""
    wa, wb = work(a), work(b)
    common = [k for k in ("tokens", "samples", "steps") if k in wa and k in wb]
    if not common:
        return False, "no unit of work recorded by both runs"
    diffs = [f"{k} {sig(wa[k], 4)} vs {sig(wb[k], 4)}" for k in common
             if abs(wa[k] - wb[k]) > EQUAL_WORK_REL * max(wa[k], wb[k])]
    return not diffs, "; ".join(diffs)


def compare(run_dirs: list[str | Path], config: Config | Mapping[str, Any] | None, sci_unit: str = "run",
            target: tuple[str, str, float] | None = None,
            groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Figures of each run and ``ratios`` (run / first run). Ratios of totals only for equal work
    (:func:`equal_work`), otherwise only per-unit ratios; with ``target``, each run's
    ``to_target``; with ``groups``, each group's mean and spread."""
    dirs = _unique([same_path(d) for d in run_dirs])
    named = {_identity(d): d for d in dirs}  # a member given before: its first spelling
    groups = {name: [named.setdefault(_identity(m), m) for m in members]
              for name, members in (groups or {}).items()}
    for members in groups.values():
        dirs += [m for m in members if m not in dirs]
    rows = [_row(report_document(d, config, sci_unit)) for d in dirs]
    for d, r in zip(dirs, rows):
        if len(run_dirs_of(d)) > 1:  # several directories of one run: named as given
            r["run_dir"] = d
    base = rows[0]
    for r in rows:
        same, diff = equal_work(r, base)
        r["equal_work"] = same
        r["work_difference"] = None if same else diff
        r["ratios"] = {}
        # money in two currencies is not a ratio; steps of two kinds are not one count
        apart = {"cost_total"} if r["currency"] != base["currency"] else set()
        if r["per_step_divisor"] != base["per_step_divisor"]:
            apart |= {"steps", "joules_per_step", "emissions_g_per_step"}
        r["not_compared"] = sorted(apart)
        for key, *_ in METRICS:
            a, b = r[key], base[key]
            ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b \
                and math.isfinite(a / b) and (same or key not in TOTALS) and key not in apart
            r["ratios"][key] = a / b if ok else None
        if target is not None:
            with Run.open(r["run_dir"]) as run:
                t = to_target(run, *target)
                total_j = float(run.energy_j()["total"] or 0.0)
            share = (t.energy_j / total_j) if t.reached and t.energy_j is not None and total_j else None
            r["to_target"] = {
                "metric": target[0], "target": f"{target[0]}{target[1]}{target[2]:g}",
                "reached": t.reached, "best": t.best, "energy_j": t.energy_j,
                "energy_kwh": None if t.energy_j is None else t.energy_j / J_PER_KWH,
                "emissions_location_kg": _share(r["emissions_location_kg"], share),
                "cost_total": _share(r["cost_total"], share),
                "gpu_hours": t.gpu_hours, "duration_s": t.duration_s, "steps": t.steps,
                "tokens": t.tokens, "samples": t.samples}
    out: dict[str, Any] = {"baseline": base["run_dir"], "metrics": [m[0] for m in METRICS],
                           "runs": rows}
    if target is not None:
        out["target"] = f"{target[0]}{target[1]}{target[2]:g}"
    if groups:
        out["groups"] = _groups(groups, {r["run_dir"]: r for r in rows}, target is not None)
    return out


def _share(total: Any, share: float | None) -> float | None:
    """A total pro rata of the energy spent until the target (emissions, cost)."""
    return float(total) * share if isinstance(total, (int, float)) and share is not None else None


#: What groups are compared on: energy per unit of work, and energy to the target when given.
GROUP_FIGURES = ("joules_per_step", "joules_per_sample", "joules_per_token")


def _groups(groups: dict[str, list[str]], rows: dict[str, dict[str, Any]],
            with_target: bool) -> dict[str, Any]:
    """Mean and spread (sample standard deviation; half the range for two runs is the same
    scale) of each group's figures, and each group against the first: a difference smaller
    than the two spreads together is ``within noise``."""
    figures = (("to_target_energy_j",) if with_target else ()) + GROUP_FIGURES
    stats: dict[str, Any] = {}
    for name, members in groups.items():
        g: dict[str, Any] = {"runs": members, "figures": {}}
        for fig in figures:
            vals = [_figure(rows[m], fig) for m in members]
            nums = [v for v in vals if v is not None]
            if not nums:
                continue
            mean = sum(nums) / len(nums)
            spread = (math.sqrt(sum((v - mean) ** 2 for v in nums) / (len(nums) - 1))
                      if len(nums) > 1 else None)
            g["figures"][fig] = {"mean": mean, "spread": spread, "n": len(nums),
                                 "of": len(members)}
        stats[name] = g
    first = next(iter(stats))
    for name, g in stats.items():
        g["versus_first"] = {}
        for fig, st in g["figures"].items():
            b = stats[first]["figures"].get(fig)
            if b is None or name == first or not b["mean"]:
                continue
            noise = (st["spread"] or 0.0) + (b["spread"] or 0.0)
            diff = st["mean"] - b["mean"]
            g["versus_first"][fig] = {
                "ratio": st["mean"] / b["mean"], "difference": diff,
                "within_noise": None if st["spread"] is None or b["spread"] is None
                else abs(diff) <= noise}
    return stats


def _figure(row: dict[str, Any], fig: str) -> float | None:
    if fig == "to_target_energy_j":
        t = row.get("to_target") or {}
        v = t.get("energy_j") if t.get("reached") else None
    else:
        v = row.get(fig)
    return float(v) if isinstance(v, (int, float)) else None


def _table(result: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows and notes of the comparison: one column per run, ``value (x ratio)``."""
    runs = result["runs"]
    headers = ["metric"] + [printable(f"{_name(r['run_dir'])} ({r['run_id']})", 60) for r in runs]
    body = []
    for key, label, unit, lower in METRICS:
        cells = [f"{label}{' (' + unit + ')' if unit else ''}"]
        if key == "steps":
            kinds = {r["per_step_divisor"] for r in runs}
            cells[0] = "optimizer steps" if kinds == {"optimizer_steps"} else \
                "step rows" if kinds == {"step_rows"} else "steps (see notes)"
        if key == "sci_g":
            cells[0] = f"SCI (gCO2e per {printable(runs[0]['sci_unit'])})"
        for i, r in enumerate(runs):
            v = r[key]
            text = "n/a" if v is None else sig(float(v), 4)
            if key == "cost_total" and v is not None:  # each run's own currency, beside its cost
                text += f" {printable(r['currency'] or '(no currency)', 20)}"
            ratio = r["ratios"][key]
            if i and ratio is not None:
                better = (ratio < 1) == lower if ratio != 1 and lower is not None else None
                text += f" (x{ratio:.3g}{'' if better is None else ', better' if better else ', worse'})"
            cells.append(text)
        body.append(cells)
    body.append(["energy basis"] + [printable(r["energy_basis"]) for r in runs])
    body.insert(0, ["labels"] + [printable(",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
                                           or "-", 60) for r in runs])
    if "target" in result:
        name = f"to {printable(result['target'], 80)}:"
        body.append([name] + ["" for _ in runs])
        for key, label, fmt in (("energy_kwh", "  IT energy (kWh)", 4), ("energy_j", "  IT energy (J)", 4),
                                ("emissions_location_kg", "  emissions (kgCO2e)", 3),
                                ("cost_total", "  cost", 3), ("gpu_hours", "  GPU-hours", 3),
                                ("duration_s", "  wall time (s)", 4), ("steps", "  steps", 4),
                                ("tokens", "  tokens", 4)):
            cells = [label]
            for r in runs:
                t = r["to_target"]
                v = t[key]
                cells.append(sig(float(v), fmt) if t["reached"] and isinstance(v, (int, float))
                             else "n/a" if t["reached"] else
                             (f"not reached (best {sig(t['best'], 4)})" if t["best"] is not None
                              else f"not reached ({printable(t['metric'], 40)} not recorded)"))
            body.append(cells)
    lines: list[str] = [f"ratios are to the first run ({printable(result['baseline'])})"]
    for r in runs[1:]:
        if "cost_total" in r["not_compared"]:
            lines.append(f"{printable(_name(r['run_dir']), 60)}: cost in "
                         f"{printable(r['currency'] or 'no currency', 20)}, the first run's in "
                         f"{printable(base_currency(runs), 20)}: costs in different currencies "
                         "are not compared")
        if "steps" in r["not_compared"]:
            lines.append(f"{printable(_name(r['run_dir']), 60)}: per step divides by "
                         f"{r['per_step_divisor']}, the first run's by "
                         f"{runs[0]['per_step_divisor']}: per-step figures are not compared")
        if not r["equal_work"]:
            lines.append(f"{printable(_name(r['run_dir']), 60)}: not the same work as the first "
                         f"run ({printable(r['work_difference'], 200)}): ratios of totals left out, "
                         "compare per step, sample or token")
    for name, g in (result.get("groups") or {}).items():
        parts = []
        for fig, st in g["figures"].items():
            text = f"{fig} {sig(st['mean'], 4)}"
            text += f" +/- {sig(st['spread'], 2)}" if st["spread"] is not None else " (one run)"
            vs = g["versus_first"].get(fig)
            if vs is not None:
                text += (f" (x{vs['ratio']:.3g}, " + ("within noise" if vs["within_noise"] else
                         "spread unknown" if vs["within_noise"] is None else
                         "better" if vs["difference"] < 0 else "worse") + ")")
            parts.append(text)
        lines.append(f"group {printable(name, 40)} ({len(g['runs'])} runs): " + "; ".join(parts))
    return headers, body, lines


def base_currency(runs: list[dict[str, Any]]) -> str:
    return str(runs[0]["currency"] or "no currency")


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
    metric against cumulative IT energy (kWh), one line per run."""
    from html import escape
    headers, body, notes = _table(result)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c.strip())}</td>" for c in row) + "</tr>\n"
                   for row in body)
    parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
             "<title>greentrack compare</title><style>body{font-family:sans-serif;margin:2em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:left}</style></head><body><h1>greentrack compare</h1>",
             "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>\n"
             + rows + "</table>",
             "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"]
    curves = result.get("curves")
    if curves and any(c["points"] for c in curves["runs"]):
        series = [(f"{_name(c['run_dir'])}", [p[0] for p in c["points"]],
                   [p[1] for p in c["points"]]) for c in curves["runs"]]
        parts.append(svg.xy_lines(f"{curves['metric']} against cumulative IT energy", series,
                                  "cumulative IT energy (kWh)", curves["metric"]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


#: Points per run in the ``curves`` of :func:`compare` (evenly thinned past this).
MAX_CURVE_POINTS = 500


def curves(run_dirs: list[str], metric: str) -> dict[str, Any]:
    """``metric`` against the run's cumulative IT energy (kWh) at each recording, per run."""
    out = []
    for d in run_dirs:
        with Run.open(d) as run:
            pts = metric_points(run, metric)
        step = max(1, len(pts) // MAX_CURVE_POINTS)
        out.append({"run_dir": d, "points": [(p.energy_j / J_PER_KWH, p.value)
                                             for p in pts[::step]]})
    return {"metric": metric, "runs": out}
