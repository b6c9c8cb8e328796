"""``greentrack compare``: runs side by side, with ratios to the first.

What a user needs to judge a precision, batch-size or quantization change: joules per step, per
sample and per token, FLOPs per joule, MFU, duration, energy, emissions and cost. Each run's
figures come from its report document, so they match ``greentrack report`` exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from greentrack._text import printable
from greentrack.reports import report_document
from greentrack.reports.build import sig

#: (key, label, unit, lower_is_better; None: neither)
METRICS: tuple[tuple[str, str, str, bool | None], ...] = (
    ("duration_s", "duration", "s", True),
    ("energy_kwh", "IT energy", "kWh", True),
    ("steps", "steps", "", None),
    ("joules_per_step", "energy per step", "J", True),
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
            "status": s["status"], "duration_s": s["duration_s"], "energy_kwh": s["energy_kwh"],
            "steps": c["steps"], "joules_per_step": c["joules_per_step"],
            "joules_per_sample": c["joules_per_sample"], "joules_per_token": c["joules_per_token"],
            "flops_per_joule": c["flops_per_joule"], "mfu": c["mfu"],
            "emissions_location_kg": s["emissions_location_kg"],
            "emissions_market_kg": s["emissions_market_kg"], "sci_g": s["sci_g"],
            "sci_unit": s["sci_unit"], "cost_total": s["cost_total"], "currency": s["currency"],
            "energy_basis": s["energy_basis"], "quality": s["quality"]}


def compare(run_dirs: list[str | Path], config: Any, sci_unit: str = "run") -> dict[str, Any]:
    """Figures of each run and ``ratios`` (run / first run) for every metric both have."""
    rows = [_row(report_document(d, config, sci_unit)) for d in run_dirs]
    base = rows[0]
    for r in rows:
        r["ratios"] = {}
        for key, *_ in METRICS:
            a, b = r[key], base[key]
            r["ratios"][key] = (a / b if isinstance(a, (int, float)) and isinstance(b, (int, float))
                                and b and math.isfinite(a / b) else None)
    return {"baseline": base["run_dir"], "metrics": [m[0] for m in METRICS], "runs": rows}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table: one column per run, ``value (x ratio)`` after the first."""
    runs = result["runs"]
    headers = ["metric"] + [printable(f"{Path(r['run_dir']).name} ({r['run_id']})", 60) for r in runs]
    body = []
    for key, label, unit, lower in METRICS:
        cells = [f"{label}{' (' + unit + ')' if unit else ''}"]
        if key == "cost_total" and runs[0]["currency"]:
            cells[0] = f"cost ({printable(runs[0]['currency'], 20)})"
        if key == "sci_g":
            cells[0] = f"SCI (gCO2e per {printable(runs[0]['sci_unit'])})"
        for i, r in enumerate(runs):
            v = r[key]
            text = "n/a" if v is None else sig(float(v), 4)
            ratio = r["ratios"][key]
            if i and ratio is not None:
                better = (ratio < 1) == lower if ratio != 1 and lower is not None else None
                text += f" (x{ratio:.3g}{'' if better is None else ', better' if better else ', worse'})"
            cells.append(text)
        body.append(cells)
    body.append(["energy basis"] + [printable(r["energy_basis"]) for r in runs])
    widths = [max(len(row[i]) for row in [headers] + body) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    lines.append(f"ratios are to the first run ({printable(result['baseline'])})")
    return "\n".join(lines)
