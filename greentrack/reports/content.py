"""The human disclosure as format-neutral blocks, rendered by to_markdown and to_html.

Blocks: ``("h1"|"h2"|"p", text)``, ``("table", headers, rows)``, ``("list", items)``,
``("plot", name)``. Numbers are formatted here once, so both renderings say the same thing.
"""

from __future__ import annotations

from typing import Any

from greentrack.common.jobinfo import describe
from greentrack.common.units import (ENERGY_UNITS, J_PER_KWH, MASS_UNITS, hours, mass_text, sig,
                                     with_band)
from greentrack.reports.forecast_table import forecast_rows

Block = tuple[Any, ...]


def _n(x: float | None, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{sig(float(x), digits)}{(' ' + unit) if unit else ''}"


def _kwh(kwh: float | None, pct: float | None = None) -> str:
    """An energy given in kWh, in the unit that suits it, with its band when ``pct`` is given."""
    return "n/a" if kwh is None else with_band(kwh * J_PER_KWH, pct, ENERGY_UNITS)


def _kg(kg: float | None, pct: float | None = None) -> str:
    """Emissions given in kgCO2e, in the unit that suits them, with their band when given."""
    return "n/a" if kg is None else with_band(kg * 1e3, pct, MASS_UNITS, "CO2e")


def _money(x: float | None, currency: str | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.4g} {currency or '(no currency given)'}"


def _stake(o: dict[str, Any]) -> str:
    parts = [f"{_n(o['joules'], 'J')} ({o['share']:.1%} of the run)"] if o["joules"] else []
    if o.get("grams") is not None:
        parts.append(mass_text(o["grams"]))
    if o.get("cost") is not None:
        parts.append(_money(o["cost"], o.get("currency")))
    return ", ".join(parts)


def _greener(run: dict[str, Any]) -> list[Block]:
    g = run.get("start_when_greener")
    if not g:
        return []
    try:
        return [("p", f"Started when greener (greentrack run --start-when-greener): asked at "
                      f"{g['asked_at']}, waited {float(g['waited_s']):.0f} s for the start "
                      f"{g['chosen_start']}; forecast {_n(g['chosen_g_per_kwh'], 'gCO2e/kWh')} "
                      f"against {_n(g['now_g_per_kwh'])} at once, "
                      f"{float(g['expected_saving_share']):.1%} fewer grams expected "
                      f"({mass_text(g.get('expected_saving_g'))} for this run's facility energy; "
                      f"series {g['series']}).")]
    except (KeyError, TypeError, ValueError):
        return [("p", "Started when greener: the record of the wait is damaged.")]


def _budget(run: dict[str, Any]) -> list[Block]:
    """What the run's budgets did (``budget_kwh``, ``budget_grams``, ``budget_cost``)."""
    return [("p", f"Budget: {line.get('text', 'the record of the budget is damaged')}.")
            for line in run.get("budget") or [] if isinstance(line, dict)]


def _timeline(doc: dict[str, Any]) -> list[Block]:
    """The picture of the run's power, its steps and the best start window (html)."""
    out: list[Block] = [("p", "The run's power over time; the strip along the time axis is when "
                              "steps ran (darker: more of the interval)."), ("plot", "timeline")]
    w = doc.get("start_window")
    if w:
        out += [("p", f"The intensity series ({w['series']}) with the run as it ran and its best "
                      f"start window, from {w['best_start']}: {mass_text(w['best_g'])} instead "
                      f"of {mass_text(w['as_run_g'])}, {mass_text(w['saving_g'])} less."),
                ("plot", "start_window")]
    return out


def _replayed(e: dict[str, Any]) -> list[Block]:
    """The training steps a resume did again (greentrack.run.Run.replayed), when there are."""
    steps, joules = e.get("replayed_steps") or 0.0, e.get("replayed_energy_j") or 0.0
    if not steps:
        return []
    share = f" ({joules / e['total_j']:.1%} of the IT energy)" if e["total_j"] else ""
    return [("p", f"Replayed after resume: {steps:.0f} training steps were done again after "
                  f"resuming from a checkpoint taken before them: {_n(joules, 'J')}{share}, in "
                  "the totals (the energy was spent), counted once in the optimizer steps.")]


def _forecast(doc: dict[str, Any]) -> list[Block]:
    f = doc.get("forecast")
    if not f:
        return []
    level = f"{f['level']:.0%} interval"
    if f["kind"] == "check":
        intro = (f"The forecast as it stood after {f['made_at_steps']} of {f['planned_steps']} "
                 f"{f['phase']} steps ({f['made_at']}; planned steps: {f['planned_source']}), "
                 "against what the run used until the end of the time cell of its last step "
                 f"(one cell: {f.get('resolution_s', 0):.3g} s). Inside: the actual as printed "
                 "lies between the bounds as printed.")
        headers = ["figure", "forecast", level, "actual", "inside the interval"]
    else:
        intro = (f"The whole run ({f['planned_steps']} {f['phase']} steps, "
                 f"{f['planned_source']}), forecast from the {f['made_at_steps']} done by "
                 f"{f['made_at']}.")
        headers = ["figure", "forecast", level]
    return [("h2", "Forecast"), ("p", intro), ("table", headers, forecast_rows(f)),
            ("p", f"Method: {f['method']}.")]


def _sci(grams: float | None, sci: dict[str, Any], pct: float) -> str:
    """An SCI score in the unit that suits it, with the band of its operational part O (the
    embodied part M has no band); the score alone without O."""
    if grams is None:
        return "n/a"
    o, total = float(sci.get("o_g") or 0.0), float(sci.get("score_g") or 0.0)
    share = o / total if total > 0 else 0.0  # O's share of the score, the same for every R
    return with_band(grams, pct * share, MASS_UNITS, "CO2e")


def _divisor(c: dict[str, Any]) -> str:
    """What the per-step figures divide by, in words."""
    return {"optimizer_steps": "optimizer steps", "step_rows": "step rows"}.get(
        str(c.get("per_step_divisor")), "steps")


def blocks(doc: dict[str, Any]) -> list[Block]:
    s, run, e, c = doc["summary"], doc["run"], doc["energy"], doc["compute"]
    loc, market = doc["intensity"]["location_based"], doc["intensity"]["market_based"]
    emb, sci, cost, eu, meth = doc["embodied"], doc["sci"], doc["cost"], doc["eu_ai_act"], doc["methodology"]
    pct = float(meth["uncertainty"]["pct"])  # the run's quality band: every energy and emission
    out: list[Block] = [
        ("h1", f"Energy and carbon disclosure: run {run['run_id']}"),
        ("p", f"Status {run['status']}; {run['started_at']} to {run['ended_at']} "
              f"({_n(hours(run['duration_s']), 'h')}); {run['stores']} process store(s) on "
              f"{len(run['hosts'])} host(s). Generated by greentrack {doc['generator']['version']} at "
              f"{doc['generated_at']} (report format {doc['format']} v{doc['version']})."),
        *([("p", f"Job: {describe(run['job'])}.")] if describe(run.get("job") or {}) else []),
        ("p", "Labels: " + (", ".join(f"{k}={v}" for k, v in sorted(run.get("labels", {}).items()))
                            or "none (Tracker(labels=...), --label KEY=VALUE, GREENTRACK_LABELS)")),
        *_greener(run),
        *_budget(run),
        ("h2", "Summary"),
        ("table", ["figure", "value", "how obtained"], [
            ["IT energy", _kwh(s["energy_kwh"], pct), e["basis"]],
            ["PUE", f"{s['pue']:g}", doc["pue"]["source"]],
            ["Facility energy", _kwh(s["facility_energy_kwh"], pct), "IT energy x PUE"],
            ["Carbon intensity (location-based)", _n(s["carbon_intensity_g_per_kwh"], "gCO2e/kWh"),
             f"{loc['method']}: {loc['source']}"],
            ["Scope 2, location-based", _kg(s["emissions_location_kg"], pct),
             "facility kWh x intensity"],
            ["Scope 2, market-based", _kg(s["emissions_market_kg"], pct),
             market["source"] if market else "no market-based factor given (--market-factor)"],
            ["Embodied, amortized (SCI M)", _kg(s["embodied_kg"]),
             f"{emb['formula']} (no band: catalogue figures)"],
            [f"SCI per {sci['functional_unit']}", _sci(sci["score_g"], sci, pct),
             "(O + M) / R; the band is O's"],
            ["GPU-hours", _n(s["gpu_hours"]), "device time x GPUs, per process"],
            ["Training compute", _n(s["flops"], "FLOP"), c["flops_method"]],
            ["Cost", _money(s["cost_total"], s["currency"]), "see Cost"],
            ["Quality band", f"{meth['uncertainty']['band']} (+-{meth['uncertainty']['pct']:g}%)",
             meth["uncertainty"]["basis"]],
        ]),
    ]
    parts = doc.get("parts") or []
    if len(parts) > 1:  # segments that recorded different settings: each counted at its own
        out += [("h2", "Parts of the run at their own settings"),
                ("p", "The run's segments recorded different carbon or price settings (a resumed "
                      "run started with other flags): each part's energy is counted at the "
                      "settings it recorded, and the totals above are their sums."),
                ("table", ["part", "IT energy", "PUE", "intensity", "Scope 2, location-based",
                           "cost"],
                 [[f"{p['start']} to {p['end']}", _kwh(p["it_kwh"], pct), f"{p['pue']:g}",
                   _n(p["g_per_kwh"], "gCO2e/kWh"), _kg(p["location_based_kg"], pct),
                   _money(p["cost"], p["currency"])] for p in parts])]
    if doc["warnings"]:
        out += [("h2", "Warnings"), ("list", list(doc["warnings"]))]
    if doc.get("opportunities"):
        out += [("h2", "Opportunities"),
                ("p", "The top findings of greentrack advise, from this run's own measurements, "
                      "ranked by what is at stake."),
                ("table", ["finding", "at stake", "evidence", "suggestion"],
                 [[o["kind"], _stake(o), o["evidence"]["text"], o["suggestion"]]
                  for o in doc["opportunities"]])]
    out += _timeline(doc)
    out += _forecast(doc)
    out += [
        ("h2", "Energy"),
        ("p", f"Power over time: the mean power of each device over {_n(doc['timeseries']['step_s'])}-s "
              "intervals, measured and estimated devices alike (the table below says which is "
              "which). Cumulative IT energy: all devices summed, before PUE."),
        ("plot", "power"), ("plot", "cumulative"),
        ("table", ["device", "host / rank", "kind", "method", "measured", "energy (J)", "samples",
                   "gap (s)", "quality band"],
         [[d["name"] if d["name"] == d["device"] else f"{d['device']} ({d['name']})",
           f"{d.get('host', '')} / r{d.get('rank', 0)}", d["kind"], d["method"],
           "measured" if d["measured"] else "ESTIMATED", f"{d['energy_j']:,.1f}", str(d["samples"]),
           f"{d.get('gap_s', 0):g}", d["uncertainty"]] for d in e["devices"]]),
        *_replayed(e),
        ("h2", "Carbon: GHG Protocol Scope 2, both methods"),
        ("table", ["method", "factor (gCO2e/kWh)", "source", "emissions"], [
            ["location-based", _n(loc["g_per_kwh"]), f"{loc['source']} (dataset: {loc['dataset']}, "
             f"year {loc['year'] or 'n/a'})", _kg(doc["scope2"]["location_based_kg"], pct)],
            ["market-based", _n(market["g_per_kwh"]) if market else "n/a",
             market["source"] if market else "not given",
             _kg(doc["scope2"]["market_based_kg"], pct)],
        ]),
        ("p", f"Boundary: {doc['scope2']['boundary']}. Period: {doc['scope2']['period']['start']} to "
              f"{doc['scope2']['period']['end']}. PUE {doc['pue']['value']:g}: {doc['pue']['source']}."),
        ("h2", "Embodied emissions"),
        ("table", ["device", "count", "embodied each", "reserved (h)", "amortized", "source"],
         [[d["kind"], str(d["count"]), _kg(d["embodied_kg_each"]), _n(hours(d["reserved_s"])),
           _kg(d["amortized_kg"]), d["source"]] for d in emb["devices"]]),
        ("p", f"Lifespan {emb['lifespan_years']['value']:g} years ({emb['lifespan_years']['source']}); "
              f"share reserved {emb['share']['value']:g} ({emb['share']['source']})."),
        ("p", f"Scope 3 note: {emb['scope3_note']['text']}"),
        ("h2", "Software Carbon Intensity (ISO/IEC 21031:2024)"),
        ("table", ["functional unit R", "SCI per R (± O's band)"], [
            ["run", _sci(sci["per_run_g"], sci, pct)],
            ["million tokens", _sci(sci["per_million_tokens_g"], sci, pct)],
            ["FLOP", _sci(sci["per_flop_g"], sci, pct)]]),
        ("p", f"O = {_kg(sci['o_g'] / 1e3, pct)}, M = {_kg(sci['m_g'] / 1e3)}. "
              f"{sci['formula']}."),
    ]
    if cost:
        out += [("h2", "Cost"), ("table", ["item", "value"], [
            ["electricity", _money(cost["electricity"], cost["currency"])],
            ["GPU-hours", _money(cost["gpu_hours"], cost["currency"])],
            ["total", _money(cost["total"], cost["currency"])],
            [f"per step ({_divisor(c)})", _money(cost["per_step"], cost["currency"])],
            ["per million tokens", _money(cost["per_million_tokens"], cost["currency"])]]),
            ("p", cost["note"])]
    out += [
        ("h2", "Compute and efficiency"),
        ("table", ["figure", "value"], [
            ["optimizer steps (one rank's training steps, all segments)",
             str(c.get("optimizer_steps", "n/a"))],
            ["step rows (every phase and rank)", str(c.get("step_rows", c["steps"]))],
            ["FLOPs", _n(c["flops"])], ["samples", _n(c["samples"])],
            ["tokens", _n(c["tokens"])], ["hardware", c["hardware"]["text"]],
            [f"J per step (all the run's energy / {_divisor(c)})", _n(c["joules_per_step"])],
            [f"emissions per step (location-based / {_divisor(c)})",
             _kg(None if c.get("emissions_g_per_step") is None
                 else c["emissions_g_per_step"] / 1e3, pct)],
            ["J per sample (all the run's energy / samples)", _n(c["joules_per_sample"])],
            ["J per token (all the run's energy / tokens)", _n(c["joules_per_token"])],
            # no FLOPs recorded: no row (not 0, not n/a: there is nothing to divide)
            *([["FLOPs per J", _n(c["flops_per_joule"])]] if c["flops_per_joule"] is not None
              else []),
            ["MFU", _n(c["mfu"]) if c["mfu"] is not None else "not recorded"]]),
    ]
    hist = doc["steps"].get("histogram")
    if hist:
        own = doc["steps"]["by_phase"][hist["phase"]]["energy_per_step_j"]
        out += [("p", f"J per step above divides all the run's IT energy over its wall time (idle "
                      "time, data loading, evaluation and checkpoints included) by the steps. The "
                      f"histogram below shows each {hist['phase']} step's own energy, the joules "
                      f"inside its window only: median {_n(own['median'], 'J')}, p95 "
                      f"{_n(own['p95'], 'J')}."),
                ("plot", "steps")]
    if doc.get("power_limit_curves"):
        out += _power_limit_curves(doc["power_limit_curves"])
    out += [
        ("h2", "EU AI Act / GPAI Code of Practice fields"),
        ("table", ["field", "value"], [
            ["training energy", f"{eu['training_energy_mwh_text']} MWh (IT; "
                                f"{sig(eu['facility_energy_mwh'], 3)} MWh with PUE)"],
            ["measured or estimated", eu["energy_basis"]],
            ["training compute", f"{_n(eu['training_compute_flops'], 'FLOP')} ({eu['training_compute_method']})"],
            ["wall-clock time", f"{sig(eu['wall_clock_days'], 3)} days"],
            ["hardware time", f"{sig(eu['hardware_days'], 3)} {eu['hardware_days_unit']}"],
            ["hardware", eu["hardware"]]]),
        ("p", f"Methodology: {eu['methodology']}"),
        ("h2", "Methodology"),
        ("list", [f"Measured: {', '.join(meth['measured']) or 'nothing'}.",
                  f"Estimated: {', '.join(meth['estimated']) or 'nothing'}.",
                  f"Samples: {meth['samples_total']:,} stored buckets of {meth['resolution_s']:g} s "
                  f"({', '.join(f'{k}: {v:,}' for k, v in meth['sample_counts'].items())}).",
                  f"Sampling: {meth.get('sampling') or 'not recorded'}.",
                  f"Gaps: {meth['gaps']} ({meth['gap_s']:g} s of device time without readings).",
                  f"Quality band: {meth['uncertainty']['band']} (+-{meth['uncertainty']['pct']:g}%); "
                  f"{meth['uncertainty']['basis']}.",
                  f"Carbon intensity: {meth['intensity']}.",
                  f"Steps: {meth['steps']}."]),
    ]
    return out


def _pm(mean: float | None, sd: float | None) -> str:
    return "n/a" if mean is None else f"{sig(mean, 4)} +- {sig(sd or 0.0, 2)}"


def _power_limit_curves(curves: list[dict[str, Any]]) -> list[Block]:
    rows = []
    for c in curves:
        for p in c["points"]:
            rows.append([f"{'+'.join(c['devices'])} ({c['host']} r{c['rank']})",
                         f"{p['limit_w']:g}" + (" (original)" if p["reference"] else ""),
                         _pm(p["j_per_step"], p["j_per_step_sd"]),
                         _pm(p["gpu_j_per_step"], p["gpu_j_per_step_sd"]),
                         _pm(p["s_per_step"], p["s_per_step_sd"]),
                         f"{p['steps']} ({p['warmup_steps']} discarded before)"])
    incomplete = [c["store"] for c in curves if not c["complete"]]
    return [("h2", "Power-limit curve (measured)"),
            ("p", "Measured by calibrate_power_limits over the first training steps: each limit "
                  "set on the GPUs in turn, the original last (after it was restored); per step "
                  "the mean +- standard deviation of all joules this process measured (GPU apart) "
                  "and of seconds. The run ran at these limits while it calibrated."
                  + (f" Not finished (no reference point): {', '.join(incomplete)}."
                     if incomplete else "")),
            ("table", ["GPUs", "limit (W)", "J per step", "GPU J per step", "s per step",
                       "steps measured"], rows)]
