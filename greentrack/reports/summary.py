"""Totals of a run directory, for ``greentrack summary`` and :func:`greentrack.summarize`: a thin
layer over the read model :class:`greentrack.run.Run`, which merges ranks and resumed segments (its
docstring gives the rules), with the run's footprint (:mod:`greentrack.carbon.runs`: emissions,
cost, GPU-hours, per-step figures, each store at the settings it recorded)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from greentrack.carbon.footprint import Footprint
from greentrack.carbon.runs import Explicit, run_footprint
from greentrack.common.errors import ConfigError
from greentrack.common.jobinfo import describe
from greentrack.common.text import printable
from greentrack.common.units import J_PER_KWH, MASS_UNITS, energy_text, with_band
from greentrack.reports.methodology import overall_quality
from greentrack.run import RECORD_WARNINGS, Run, RunSummary
from greentrack.store.reader import STALE_AFTER_S, store_status


class PerStep(TypedDict):
    """The per-step figures with their named divisor (:class:`~greentrack.carbon.footprint.PerStep`)."""

    divisor: str
    count: float
    energy_j: float
    emissions_g: float | None
    cost: float | None


class FootprintSummary(TypedDict):
    """A footprint's figures, JSON-ready (``summary --json``, ``advise --json``)."""

    energy_j: float
    it_kwh: float
    facility_kwh: float
    pue: float
    pue_source: str
    emissions_location_g: float | None
    emissions_market_g: float | None
    intensity_g_per_kwh: float | None
    intensity_method: str | None
    intensity_source: str | None
    cost: float | None
    currency: str | None
    costs_by_currency: dict[str, float] | None
    gpu_hours: float
    optimizer_steps: int
    step_rows: int
    per_step: PerStep | None
    parts: int
    settings_differ: bool
    warnings: list[str]


class Summary(RunSummary):
    """The ``greentrack summary --json`` document: the record's totals and their footprint
    (None, with a warning, when a recorded setting cannot be resolved any more)."""

    footprint: FootprintSummary | None
    #: the run's budgets that it reached or was forecast to pass (:func:`budget_lines`)
    budget: list[dict[str, Any]]


__all__ = ["RECORD_WARNINGS", "STALE_AFTER_S", "budget_lines", "footprint_summary",
           "format_summary", "store_status", "summarize"]

#: the budget events (:mod:`greentrack.process.budget`)
BUDGET_EVENTS = ("budget-forecast", "budget-reached")


def budget_lines(events: Sequence[Mapping[str, Any]],
                 spent: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Each budget a run reached or was forecast to pass, from its ``budget-*`` events, with
    what the whole run spent of it (``spent``: ``energy`` in facility kWh, ``emissions`` in
    grams, ``cost``, as its footprint states them) and a sentence saying what happened."""
    by_setting: dict[str, dict[str, Any]] = {}
    for e in events:
        try:
            d = json.loads(e.get("details") or "{}")
            setting, kind = str(d["setting"]), str(d["budget_kind"])
            line = by_setting.setdefault(setting, {
                "setting": setting, "kind": kind, "budget": float(d["budget"]),
                "unit": str(d.get("unit") or ""), "spent": spent.get(kind),
                "reached_step": None, "stopped": False, "forecast_step": None,
                "forecast_low": None})
            if e["kind"] == "budget-reached":
                line["reached_step"] = int(d["step"])
                line["stopped"] = d.get("action") == "stop"
            elif line["forecast_step"] is None:
                line["forecast_step"] = int(d["step"])
                line["forecast_low"] = float(d["forecast_low"])
        except (KeyError, TypeError, ValueError):
            continue  # a damaged event: the others still say what happened
    for line in by_setting.values():
        unit, run = line["unit"], line["spent"]
        said = [f"{line['setting']}={line['budget']:g} {unit}".rstrip() + ": "
                + (f"{run:.4g} {unit}".rstrip() + " spent by the run" if run is not None
                   else "spent unknown")]
        if line["forecast_step"] is not None:
            low = f"{line['forecast_low']:.4g} {unit}".rstrip()
            said.append(f"at step {line['forecast_step']} the forecast said it would pass it "
                        f"(at least {low})")
        if line["reached_step"] is not None:
            said.append(f"reached at step {line['reached_step']}; "
                        + ("the run was stopped by its budget" if line["stopped"]
                           else "the run went on (on_budget=warn)"))
        line["text"] = "; ".join(said)
    return list(by_setting.values())


def summarize(run_dir: str | Path | Sequence[str | Path],
              explicit: Explicit = None) -> Summary:
    """The run's totals as a JSON-ready dict (the ``greentrack summary --json`` document), with
    its ``footprint`` (:func:`footprint_summary`, with its own ``warnings`` about the figures;
    None, with a warning, when a recorded setting cannot be resolved any more, e.g. an intensity
    CSV since deleted).

    Args:
        run_dir: a run directory, or several directories of one run (node-local directories:
            each store counted once, see :meth:`greentrack.run.Run.open`).
        explicit: settings over those each store recorded (as ``greentrack report``'s flags).

    Raises:
        ConfigError: ``run_dir`` is missing, holds no run, or none of its stores can be read
        (one that cannot is a warning when another can); directories of different runs.
    """
    with Run.open(run_dir) as run:
        out = Summary(**run.summary(), footprint=None, budget=[])
        try:
            out["footprint"] = footprint_summary(run_footprint(run, explicit))
        except ConfigError as e:  # the record is still summed; its emissions cannot be
            out["warnings"].append(f"no emissions or cost: {e}")
        f = out["footprint"]
        out["budget"] = budget_lines(run.events(*BUDGET_EVENTS), {
            "energy": f["facility_kwh"] if f else None,
            "emissions": f["emissions_location_g"] if f else None,
            "cost": f["cost"] if f else None})
        return out


def footprint_summary(fp: Footprint) -> FootprintSummary:
    """The footprint's figures, JSON-ready (``summary --json``, ``advise --json``)."""
    inten, per = fp.intensity, fp.per_step
    return {
        "energy_j": fp.total_j, "it_kwh": fp.it_kwh, "facility_kwh": fp.facility_kwh,
        "pue": fp.pue.value, "pue_source": fp.pue.source,
        "emissions_location_g": fp.location_g, "emissions_market_g": fp.market_g,
        "intensity_g_per_kwh": inten.g_per_kwh if inten is not None else None,
        "intensity_method": inten.method if inten is not None else None,
        "intensity_source": inten.source if inten is not None else None,
        "cost": fp.cost.total if fp.cost is not None else None, "currency": fp.currency,
        "costs_by_currency": {str(c.currency): c.total for c in fp.costs} if len(fp.costs) > 1
        else None,
        "gpu_hours": fp.gpu_hours, "optimizer_steps": fp.work.optimizer_steps,
        "step_rows": fp.work.step_rows,
        "per_step": None if per is None else PerStep(
            divisor=per.divisor, count=per.count, energy_j=per.energy_j,
            emissions_g=per.emissions_g, cost=per.cost),
        "parts": len(fp.parts), "settings_differ": fp.settings_differ,
        # about the figures (no location set, settings that differ between segments); the
        # record's own warnings (gaps, damage) are the summary's ``warnings``
        "warnings": list(fp.warnings),
    }


def format_summary(s: Summary) -> str:
    """Human-readable summary: totals, then how each figure was obtained. Every value read from
    the run is shown printable (a run id or a device name cannot move the cursor or add a line)."""
    p = printable
    e = {k: ("none" if v is None else f"{v:.1f} J") for k, v in s["energy_j"].items()}
    lines = [
        f"greentrack run {p(s['run_id'])}  status={p(s['status'])}  mode={p(s['mode'])}",
        *([f"  job        {p(describe(s['job']), 300)}"] if describe(s.get("job") or {}) else []),
        *([f"  hosts      {len(s['hosts'])}: {p(', '.join(s['hosts']), 300)}"]
          if len(s.get("hosts") or []) > 1 else []),
        f"  duration   {s['duration_s']:.1f} s   steps {s['steps']} (optimizer steps "
        f"{s['optimizer_steps']})   GPU-seconds {s['gpu_seconds']:.1f}",
        f"  energy     {e['total']} ({energy_text(s['energy_kwh'] * J_PER_KWH)})   "
        f"gpu {e['gpu']}   cpu {e['cpu']}   dram {e['dram']}",
        "  sources:",
    ]
    hosts = len(s.get("hosts") or []) > 1
    for src in s["sources"]:
        tag = "measured" if src["measured"] else "ESTIMATED"
        where = f"{p(src['host'], 40)}:" if hosts else ""
        lines.append(f"    {p(src['kind']):<4} {where}{p(src['device']):<13} {tag:<9} {p(src['method'])}  "
                     f"[{p(str(src['uncertainty'] or '').split(':')[0])}]")
    f = s.get("footprint")
    if f:
        money = (f"   cost {f['cost']:.4g} {p(f['currency'] or '')}".rstrip()
                 if f["cost"] is not None else "")
        # the emissions in the unit that suits them, with the run's quality band, as the report
        pct = overall_quality(list(s["sources"]))["pct"]
        grams = with_band(f["emissions_location_g"], pct, MASS_UNITS, "CO2e")
        lines.insert(lines.index("  sources:"), f"  emissions  {grams} (location-based, "
                        f"{f['intensity_g_per_kwh']:.4g} g/kWh x PUE {f['pue']:g}; "
                        f"{p(f['intensity_method'])})   GPU-hours {f['gpu_hours']:.4g}{money}"
                     if f["emissions_location_g"] is not None else
                     f"  emissions  unknown (no intensity data)   GPU-hours {f['gpu_hours']:.4g}")
    if s.get("replayed_steps"):
        total = float(s["energy_j"]["total"] or 0.0)
        share = f", {s['replayed_energy_j'] / total:.1%} of the run" if total > 0 else ""
        lines.insert(lines.index("  sources:"),
                     f"  replayed   {s['replayed_steps']:.0f} training steps done again after "
                     f"resuming from an earlier checkpoint: {s['replayed_energy_j']:.1f} J"
                     f"{share} (in the energy above; counted once in the optimizer steps)")
    for b in s.get("budget") or []:
        lines.insert(lines.index("  sources:"), f"  budget     {p(b['text'], 300)}")
    if s["gaps"]:
        lines.append(f"  gaps: {s['gaps']} (see the run's events)")
    lines.extend(f"  warning: {p(w)}" for w in s["warnings"])
    return "\n".join(lines)
