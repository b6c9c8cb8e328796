"""``greentrack compare``: runs side by side, with ratios to a baseline and their noise bands.

What a user needs to judge a precision, batch-size or quantization change: joules per step, per
sample and per token, FLOPs per joule, MFU, duration, energy, emissions and cost. Each run's
figures come from its report document, so they match ``greentrack report`` exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.common.text import printable
from greentrack.common.units import J_PER_KWH, sig
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
            "energy_basis": s["energy_basis"], "quality": s["quality"],
            "uncertainty_pct": float(doc["methodology"]["uncertainty"]["pct"])}


#: Totals (not per-unit figures): their ratios only mean something for equal work.
TOTALS = frozenset({"duration_s", "energy_kwh", "emissions_location_kg", "emissions_market_kg",
                    "sci_g", "cost_total"})
#: Work is equal when every unit both runs count is within this relative difference.
EQUAL_WORK_REL = 0.01
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
            groups: dict[str, list[str]] | None = None,
            baseline: str | None = None) -> dict[str, Any]:
    """Figures of each run and ``ratios`` (run / baseline: ``baseline``, a compared run's
    directory or name, default the first) with each ratio's noise band (``ratio_bands``,
    :func:`ratio_band`). Ratios of totals only for equal work (:func:`equal_work`), otherwise
    only per-unit ratios; with ``target``, each run's ``to_target``; with ``groups``, each
    group's mean and spread. Each run has a short ``name`` (:func:`run_names`)."""
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
    by_dir = dict(zip(dirs, rows))
    member_of = {m: name for name, members in groups.items() for m in members}
    for r, name in zip(rows, run_names(rows, [member_of.get(d) for d in dirs])):
        r["name"] = name
    base = rows[_baseline_index(baseline, dirs, rows)]
    spreads = _relative_spreads(groups, by_dir)
    for d, r in zip(dirs, rows):
        same, diff = equal_work(r, base)
        r["equal_work"] = same
        r["work_difference"] = None if same else diff
        r["ratios"], r["ratio_bands"] = {}, {}
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
            r["ratio_bands"][key] = None if not ok or r is base else ratio_band(
                a / b, _noise(r, key, spreads.get(d, {})),
                _noise(base, key, spreads.get(dirs[rows.index(base)], {})))
        if target is not None:
            r["to_target"] = _to_target(r, target)
    out: dict[str, Any] = {"baseline": base["run_dir"], "baseline_name": base["name"],
                           "metrics": [m[0] for m in METRICS], "runs": rows}
    if target is not None:
        out["target"] = target_text(target)
        out["target_metric"], out["target_value"] = target[0], target[2]
    if groups:
        out["groups"] = _groups(groups, {r["run_dir"]: r for r in rows}, target is not None,
                                base["run_dir"])
    return out


def target_text(target: tuple[str, str, float]) -> str:
    """``--target`` as the reports echo it."""
    return f"{target[0]}{target[1]}{target[2]!r}"  # as given: 0.123456789, not 0.123457


def _to_target(r: dict[str, Any], target: tuple[str, str, float]) -> dict[str, Any]:
    with Run.open(r["run_dir"]) as run:
        t = to_target(run, *target)
        total_j = float(run.energy_j()["total"] or 0.0)
    share = (t.energy_j / total_j) if t.reached and t.energy_j is not None and total_j else None
    return {"metric": target[0], "target": target_text(target),
            "reached": t.reached, "best": t.best, "energy_j": t.energy_j,
            "energy_kwh": None if t.energy_j is None else t.energy_j / J_PER_KWH,
            "emissions_location_kg": _share(r["emissions_location_kg"], share),
            "cost_total": _share(r["cost_total"], share),
            "gpu_hours": t.gpu_hours, "duration_s": t.duration_s, "steps": t.steps,
            "tokens": t.tokens, "samples": t.samples}


def _baseline_index(baseline: str | None, dirs: list[str], rows: list[dict[str, Any]]) -> int:
    """Which compared run ``--baseline`` names: by its directory (however spelled) or its name."""
    if baseline is None:
        return 0
    want = _identity(same_path(baseline)) if baseline.strip() else None
    for i, d in enumerate(dirs):
        if want is not None and _identity(d) == want:
            return i
    for i, r in enumerate(rows):
        if r["name"] == baseline.strip():
            return i
    raise ConfigError("--baseline", baseline, "must be one of the compared runs, by directory or "
                      "name: " + ", ".join(printable(r["name"], 40) for r in rows))


def run_names(rows: list[dict[str, Any]], group_names: list[str | None]) -> list[str]:
    """Each run's short name, unique among the compared runs: its labels that differ between
    them (``precision=bf16-mixed``), else its group's name, else the part of its directory that
    tells it apart (``sweep/bf16/greentrack`` and ``sweep/fp32/greentrack``: ``bf16``, ``fp32``);
    a name two runs would share gets that part (then the run id) added."""
    labels = [r["labels"] for r in rows]
    keys = sorted({k for lab in labels for k in lab})
    differ = [k for k in keys if len({lab.get(k) for lab in labels}) > 1]
    parts = _distinct_parts([r["run_dir"] for r in rows])
    names = []
    for lab, group, part in zip(labels, group_names, parts):
        text = ",".join(f"{k}={lab[k]}" for k in differ if k in lab)
        names.append(printable(text or group or part, 60))
    for extra in (parts, [r["run_id"] for r in rows]):
        seen = [n for n in names]
        names = [n if seen.count(n) == 1 or n == e else f"{n} ({printable(e, 40)})"
                 for n, e in zip(names, extra)]
    return names


def _distinct_parts(run_dirs: list[str]) -> list[str]:
    """The directories without the leading and trailing path components they all share (at
    least the last component each)."""
    split = [[p for p in str(d).replace(os.sep, "/").split("/") if p not in ("", ".")]
             or [str(d)] for d in run_dirs]
    if len(split) < 2:
        return [s[-1] for s in split]
    shortest = min(len(s) for s in split)
    head = 0
    while head < shortest - 1 and len({s[head] for s in split}) == 1:
        head += 1
    tail = 0
    while tail < shortest - head - 1 and len({s[len(s) - 1 - tail] for s in split}) == 1:
        tail += 1
    return ["/".join(s[head:len(s) - tail]) for s in split]


#: Figures that carry the run's measured energy, hence its quality band (BoAmps' +-10/25/50%).
ENERGY_FIGURES = frozenset({"energy_kwh", "joules_per_step", "emissions_g_per_step",
                            "joules_per_sample", "joules_per_token", "flops_per_joule",
                            "emissions_location_kg", "emissions_market_kg", "sci_g",
                            "cost_total"})


def _relative_spreads(groups: dict[str, list[str]],
                      rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per run directory, how far the runs of its group (two or more) spread on each figure:
    their range relative to the smallest, ``max / min - 1``. Repeats of one setting are then
    within noise of each other, whichever two are compared (a standard deviation from two or
    three runs is too uncertain to call one of them better)."""
    out: dict[str, dict[str, float]] = {}
    for members in groups.values():
        for key, *_ in METRICS:
            vals = [abs(float(rows[m][key])) for m in members
                    if isinstance(rows[m][key], (int, float))]
            if len(vals) < 2 or not min(vals):
                continue
            for m in members:
                out.setdefault(m, {}).setdefault(key, max(vals) / min(vals) - 1.0)
    return out


def _noise(row: dict[str, Any], key: str, spread: dict[str, float]) -> float | None:
    """A run's relative uncertainty of one figure: the larger of its measurement's quality band
    (figures from energy) and its group's relative range; None when neither is known."""
    parts = [v for v in (row["uncertainty_pct"] / 100.0 if key in ENERGY_FIGURES else None,
                         spread.get(key)) if v is not None]
    return max(parts) if parts else None


def ratio_band(ratio: float, noise: float | None, base_noise: float | None) -> dict[str, Any]:
    """``ratio`` with its noise band: the two runs' relative uncertainties added in quadrature,
    ``u``, give ``ratio / (1 + u)`` to ``ratio * (1 + u)``; ``within_noise`` when the band holds
    1 (None, and no verdict, when either uncertainty is unknown)."""
    if noise is None or base_noise is None:
        return {"low": None, "high": None, "rel": None, "within_noise": None}
    u = math.hypot(noise, base_noise)
    low, high = ratio / (1.0 + u), ratio * (1.0 + u)
    return {"low": low, "high": high, "rel": u, "within_noise": low <= 1.0 <= high}


def _share(total: Any, share: float | None) -> float | None:
    """A total pro rata of the energy spent until the target (emissions, cost)."""
    return float(total) * share if isinstance(total, (int, float)) and share is not None else None


#: What groups are compared on: energy per unit of work, and energy to the target when given.
GROUP_FIGURES = ("joules_per_step", "joules_per_sample", "joules_per_token")


def _groups(groups: dict[str, list[str]], rows: dict[str, dict[str, Any]],
            with_target: bool, baseline: str) -> dict[str, Any]:
    """Mean and spread (sample standard deviation; half the range for two runs is the same
    scale) of each group's figures, and each group against the baseline's group (the first
    group when the baseline run is in none): a difference smaller than the two spreads together
    is ``within noise``."""
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
    first = next((n for n, g in stats.items() if baseline in g["runs"]), next(iter(stats)))
    for name, g in stats.items():
        g["versus_baseline"] = {}
        for fig, st in g["figures"].items():
            b = stats[first]["figures"].get(fig)
            if b is None or name == first or not b["mean"]:
                continue
            noise = (st["spread"] or 0.0) + (b["spread"] or 0.0)
            diff = st["mean"] - b["mean"]
            g["versus_baseline"][fig] = {
                "group": first, "ratio": st["mean"] / b["mean"], "difference": diff,
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
