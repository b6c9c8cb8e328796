"""The report document (JSON-ready dict, schema ``greentrack/schemas/report-v1.schema.json``).

Every output format renders this one document, so the figures are identical across formats.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from greentrack import __version__
from greentrack.carbon.accounting import sections
from greentrack.carbon.footprint import Footprint, footprint
from greentrack.carbon.runs import Explicit, profile_of_stores
from greentrack.common.config import Config
from greentrack.common.units import J_PER_KWH, days, quantile, utc
from greentrack.common.units import sig as sig  # re-exported: the reports' number format
from greentrack.reports.advise import TOP, advise
from greentrack.reports.forecasting import forecast_section, start_window
from greentrack.reports.methodology import (energy_basis, methodology, overall_quality, sampling,
                                            short_methodology)
from greentrack.reports.run_data import RunData, resample
from greentrack.reports.summary import budget_lines

FORMAT = "greentrack-report"
VERSION = "1.0"
SCHEMA = "greentrack/schemas/report-v1.schema.json"


def _timeseries(data: RunData) -> dict[str, Any]:
    n, width = data.plot_grid()
    groups: dict[str, list[tuple[float, float, float]]] = {}
    kinds: dict[str, str] = {}
    many = len(data.channels) > 16  # a big job: one line per host and kind
    for c in data.channels:
        key = f"{c.host} {c.kind}" if many else (c.key if len({x.host for x in data.channels}) > 1
                                                  else c.device)
        groups.setdefault(key, []).extend(c.bins)
        kinds[key] = c.kind
    series, cumulative = [], [0.0] * n
    for key, bins in groups.items():
        energy = resample(bins, data.start_unix, width, n)
        series.append({"label": key, "kind": kinds[key],
                       "power_w": [round(e / width, 3) for e in energy]})
        cumulative = [c + e for c, e in zip(cumulative, energy)]
    run_total, cum = 0.0, []
    for e in cumulative:
        run_total += e
        cum.append(float(f"{run_total / J_PER_KWH:.9g}"))
    return {"t0_unix": data.start_unix, "step_s": width,
            "t_s": [round((k + 0.5) * width, 3) for k in range(n)],
            "series": series, "cumulative_kwh": cum,
            # share of each cell during which a step (any phase) ran: when steps ran
            "steps_coverage": [round(min(1.0, c / width), 4) if width > 0 else 0.0
                               for c in data.step_cells] if data.step_cells else None}


def _steps(data: RunData) -> dict[str, Any]:
    by_phase: dict[str, dict[str, Any]] = {}
    for phase, p in data.phases.items():
        e = data.step_energies_j.get(phase, [])
        by_phase[phase] = {
            "count": int(p["n"]), "energy_j": p["energy_j"], "duration_s": p["duration_s"],
            "flops": p["flops"] if p["n_flops"] else None,
            "samples": p["samples"] if p["n_samples"] else None,
            "tokens": p["tokens"] if p["n_tokens"] else None,
            "energy_per_step_j": {"mean": p["energy_j"] / p["n"] if p["n"] else None,
                                  "median": quantile(e, 0.5) if e else None,
                                  "p5": quantile(e, 0.05) if e else None,
                                  "p95": quantile(e, 0.95) if e else None,
                                  "min": e[0] if e else None, "max": e[-1] if e else None},
        }
    main = "train" if "train" in by_phase else max(by_phase, key=lambda k: by_phase[k]["count"],
                                                     default=None)
    hist = None
    if main is not None and data.step_energies_j.get(main):
        hist = _histogram(data.step_energies_j[main])
        hist["phase"] = main
    return {"count": int(sum(p["n"] for p in data.phases.values())), "by_phase": by_phase,
            "main_phase": main, "histogram": hist}


def _histogram(vals: list[float], n_bins: int = 30) -> dict[str, Any]:
    lo, hi = vals[0], vals[-1]
    if hi <= lo:
        return {"edges_j": [lo, lo], "counts": [len(vals)]}
    width = (hi - lo) / n_bins
    counts = [0] * n_bins
    for v in vals:
        counts[min(int((v - lo) / width), n_bins - 1)] += 1
    return {"edges_j": [lo + k * width for k in range(n_bins + 1)], "counts": counts}


def _training_type(config: Config) -> dict[str, Any]:
    """The run's training type (``Config.training_type``) and how it is known."""
    value = getattr(config, "training_type", None)
    if value is None:
        return {"training_type": None, "training_type_basis": "not set (training_type setting)"}
    basis = (getattr(config, "extra", None) or {}).get("training_type_basis")
    return {"training_type": value,
            "training_type_basis": str(basis) if basis else "the training_type setting"}


def _hardware(data: RunData) -> dict[str, Any]:
    # each device once, however many segments (a resumed run) or ranks measured it
    gpus = Counter(d.name for d in data.devices if d.kind == "gpu")
    cpus = Counter(d.name for d in data.devices if d.kind == "cpu")
    text = "; ".join([f"{n} x {name}" for name, n in gpus.items()] +
                     [f"CPU {name}" + (f" x {n}" if n > 1 else "") for name, n in cpus.items()])
    machines = list(data.machines.values())

    def total(key: str) -> float | None:  # summed over hosts; None unless every host recorded it
        return sum(m[key] for m in machines) if machines and all(key in m for m in machines) else None
    return {"gpus": dict(gpus), "gpu_count": sum(gpus.values()), "cpus": dict(cpus),
            "hosts": len(data.hosts), "text": text or "unknown",
            "cpu_count": total("cpu_count"), "ram_total_gb": total("ram_total_gb")}


def _devices(data: RunData) -> list[dict[str, Any]]:
    samples = Counter[str]()
    for c in data.channels:
        samples[c.identity] += c.samples
    hosts = len({d.host for d in data.devices})
    return [{"key": f"{d.host}/r{d.rank}/{d.device}" if hosts > 1 else d.device, "kind": d.kind,
             "device": d.device, "name": d.name, "host": d.host, "rank": d.rank,
             "method": d.method, "measured": d.measured, "source": d.source,
             "uncertainty": d.uncertainty, "energy_j": d.energy_j,
             "samples": samples[d.identity], "gap_s": d.gap_s, "segments": d.stores}
            for d in data.devices]


def _energy(data: RunData, devices: list[dict[str, Any]], fp: Footprint) -> dict[str, Any]:
    s = data.summary
    measured_j = sum(d["energy_j"] for d in devices if d["measured"])
    estimated_j = sum(d["energy_j"] for d in devices if not d["measured"])
    return {"total_j": fp.total_j, "it_kwh": fp.it_kwh, "facility_kwh": fp.facility_kwh,
            "by_kind_j": {k: fp.energy_j.get(k) for k in ("gpu", "cpu", "dram")},
            "by_kind_facility_kwh": {k: fp.kind_facility_kwh(k) for k in ("gpu", "cpu", "dram")},
            "measured_kwh": measured_j / J_PER_KWH, "estimated_kwh": estimated_j / J_PER_KWH,
            "basis": energy_basis(measured_j, estimated_j), "devices": devices,
            "gaps": int(s["gaps"]), "gap_s": sum(d["gap_s"] for d in devices),
            "steps_energy_j": float(s.get("steps_energy_j") or 0.0),
            # training steps done again after a resume (greentrack.run.Run.replayed)
            "replayed_steps": float(s.get("replayed_steps") or 0.0),
            "replayed_energy_j": float(s.get("replayed_energy_j") or 0.0)}


def _compute(data: RunData, steps: dict[str, Any], fp: Footprint) -> dict[str, Any]:
    s, hw, w = data.summary, _hardware(data), fp.work
    flops, tokens, samples = w.flops, w.tokens, w.samples
    recorded = "summed from per-step FLOPs recorded in the run's step rows"
    method = (f"{recorded} ({', '.join(data.flops_methods)})" if flops and data.flops_methods else
              f"{recorded} (method not recorded)" if flops else "not recorded (no step carried FLOPs)")
    per = fp.per_step
    return {
        "steps": steps["count"], "step_rows": w.step_rows, "optimizer_steps": w.optimizer_steps,
        # per optimizer step (one rank's train steps) when the run has any, as the integrations
        # log it; else per recorded step row of any phase: J, grams and cost per step alike
        "per_step_divisor": per.divisor if per is not None else None,
        "flops": flops, "flops_method": method, "samples": samples,
        "tokens": tokens, "gpu_count": hw["gpu_count"], "gpu_hours": fp.gpu_hours,
        "hardware": hw,
        "hardware_days": days(fp.gpu_seconds if hw["gpu_count"] else w.host_seconds),
        "wall_clock_days": days(float(s["duration_s"])),
        "joules_per_step": per.energy_j if per is not None else None,
        "emissions_g_per_step": per.emissions_g if per is not None else None,
        "joules_per_sample": fp.per_sample.energy_j if fp.per_sample is not None else None,
        "joules_per_token": fp.per_token.energy_j if fp.per_token is not None else None,
        "flops_per_joule": flops / fp.total_j if flops and fp.total_j > 0 else None,
        "mfu": data.mfu,
    }


def _eu_ai_act(doc: dict[str, Any]) -> dict[str, Any]:
    e, c = doc["energy"], doc["compute"]
    eu = {"training_energy_mwh": e["it_kwh"] / 1000.0,
          "training_energy_mwh_text": sig(e["it_kwh"] / 1000.0, 3, keep_zeros=True),
          "facility_energy_mwh": e["facility_kwh"] / 1000.0, "energy_basis": e["basis"],
          "training_compute_flops": c["flops"], "training_compute_method": c["flops_method"],
          "wall_clock_days": c["wall_clock_days"], "hardware_days": c["hardware_days"],
          "hardware_days_unit": "GPU-days" if c["gpu_count"] else "host-days (no GPU tracked)",
          "hardware": c["hardware"]["text"]}
    eu["methodology"] = short_methodology(doc)
    return eu


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    run, e, loc = doc["run"], doc["energy"], doc["intensity"]["location_based"]
    cost = doc["cost"]
    return {
        "status": run["status"], "duration_s": run["duration_s"], "energy_kwh": e["it_kwh"],
        "facility_energy_kwh": e["facility_kwh"], "pue": doc["pue"]["value"],
        "carbon_intensity_g_per_kwh": loc["g_per_kwh"], "intensity_method": loc["method"],
        "emissions_location_kg": doc["scope2"]["location_based_kg"],
        "emissions_market_kg": doc["scope2"]["market_based_kg"],
        "embodied_kg": doc["embodied"]["sci_m_kg"], "gpu_hours": doc["compute"]["gpu_hours"],
        "flops": doc["compute"]["flops"], "sci_g": doc["sci"]["score_g"],
        "sci_unit": doc["sci"]["functional_unit"], "cost_total": cost["total"] if cost else None,
        "currency": cost["currency"] if cost else None, "energy_basis": e["basis"],
        "quality": doc["methodology"]["uncertainty"]["band"],
    }


def build_report(data: RunData, config: Config, sci_unit: str = "run",
                 now: float | None = None, explicit: Explicit = None) -> dict[str, Any]:
    """The full report document of one run. ``config``: the run's settings (its first store's,
    under ``explicit``) for what is not a figure (training type, output options); the figures
    are the footprint of the run's stores, each at its own recorded settings under
    ``explicit`` (default: ``config``, overriding them all)."""
    s = data.summary
    steps = _steps(data)
    fp = footprint(profile_of_stores(data.stores, config if explicit is None else explicit,
                                     data.work))
    compute = _compute(data, steps, fp)
    acc = sections(fp, sci_unit)
    devices = _devices(data)
    energy = _energy(data, devices, fp)
    doc: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "schema": SCHEMA,
        "generated_at": utc(time.time() if now is None else now),
        "generator": {"name": "greentrack", "version": _version(),
                      "recorded_with": data.versions.get("greentrack")},
        "run": {"run_id": s["run_id"], "run_dir": str(data.run_dir), "status": s["status"],
                "started_at": utc(data.start_unix), "ended_at": utc(data.end_unix),
                "duration_s": float(s["duration_s"]), "stores": int(s["stores"]),
                "hosts": {h: round(v, 3) for h, v in data.hosts.items()}, "mode": s["mode"],
                "python": data.versions.get("python"), "platform": data.versions.get("platform"),
                "labels": dict(data.labels), "run_dirs": list(s.get("run_dirs") or []),
                "job": dict(s.get("job") or {}), **_training_type(config),
                "project_name": getattr(config, "project_name", None)},
        "energy": energy,
        **{k: acc[k] for k in ("pue", "location", "intensity", "scope2", "embodied", "sci", "cost",
                               "parts")},
        "compute": compute,
        "steps": steps,
        "timeseries_resolution_s": data.resolution_s,
        "timeseries": _timeseries(data),
        "methodology": methodology(devices, energy["gaps"], energy["gap_s"], overall_quality(devices),
                                   acc["intensity"]["location_based"], data.resolution_s,
                                   sampling(data.settings, data.stretched_slow_s)),
        "warnings": list(data.warnings) + acc["warnings"],
    }
    if s["status"] in ("running", "incomplete"):
        doc["warnings"].append(f"the run is {s['status']}: figures cover what was recorded so far")
    findings = advise(data, config, fp)
    doc["opportunities"] = findings[:TOP]
    doc["start_window"] = start_window(data, findings, fp)
    if data.greener_start is not None:  # greentrack run --start-when-greener: what it expected
        g = data.greener_start
        per_kwh = g.get("expected_saving_g_per_kwh")
        doc["run"]["start_when_greener"] = {
            **g, "expected_saving_g": fp.at_intensity(per_kwh).location_g
            if isinstance(per_kwh, (int, float)) else None}
    if data.budget_events:  # the run's budgets (greentrack.process.budget): what happened
        doc["run"]["budget"] = budget_lines(data.budget_events, {
            "energy": fp.facility_kwh, "emissions": fp.location_g,
            "cost": fp.cost.total if fp.cost is not None else None})
    doc["forecast"] = forecast_section(data, fp.parts[-1].settings, compute["gpu_count"])
    if data.power_limit_curves:  # measured by a calibration (greentrack.process.calibration) only
        doc["power_limit_curves"] = [c.as_dict() for c in data.power_limit_curves]
    doc["eu_ai_act"] = _eu_ai_act(doc)
    doc["summary"] = _summary(doc)
    return doc


def _version() -> str:
    return __version__
