"""The words of a disclosure: what was measured, what estimated, and how sure we are.

Uncertainty uses BoAmps' quality bands (high +-10%, medium +-25%, low +-50%); each channel carries
its band from the sampler that produced it, and the run's band is the energy-weighted mean.
"""

from __future__ import annotations

from typing import Any

BANDS = {"high": 10.0, "medium": 25.0, "low": 50.0}


def band_of(uncertainty: str) -> str:
    head = (uncertainty or "").strip().lower()
    for band in BANDS:
        if head.startswith(band):
            return band
    return "low"


def overall_quality(devices: list[dict[str, Any]]) -> dict[str, Any]:
    """Energy-weighted uncertainty of the run and its band."""
    total = sum(d["energy_j"] for d in devices)
    if total <= 0:
        return {"band": "low", "pct": 50.0, "bands": BANDS,
                "basis": "no energy recorded: lowest band"}
    pct = sum(d["energy_j"] * BANDS[band_of(d["uncertainty"])] for d in devices) / total
    band = next(b for b, p in BANDS.items() if pct <= p + 1e-9)
    return {"band": band, "pct": round(pct, 2), "bands": BANDS,
            "basis": "energy-weighted mean of each device's band (BoAmps: high +-10%, medium "
                     "+-25%, low +-50%)"}


def energy_basis(measured_j: float, estimated_j: float) -> str:
    if estimated_j <= 0:
        return "measured"
    if measured_j <= 0:
        return "estimated"
    return f"partly estimated ({estimated_j / (measured_j + estimated_j):.0%} of energy estimated)"


def _methods(devices: list[dict[str, Any]], measured: bool) -> list[str]:
    seen: dict[str, str] = {}
    for d in devices:
        if d["measured"] == measured:
            seen.setdefault(f"{d['kind']}: {d['method']}", d["source"] or d["method"])
    return [f"{k} ({v})" for k, v in seen.items()]


def short_methodology(doc: dict[str, Any]) -> str:
    """About 100 words for the EU AI Act / GPAI Code of Practice model documentation form."""
    e, c, run = doc["energy"], doc["compute"], doc["run"]
    measured = sorted({d["method"] for d in e["devices"] if d["measured"]})
    estimated = sorted({f"{d['kind']} ({d['method']})" for d in e["devices"] if not d["measured"]})
    parts = [
        f"Energy was recorded by greentrack {doc['generator']['version']} in every training "
        f"process ({run['stores']} store(s) on {len(run['hosts'])} host(s)), summed without double "
        f"counting: one process per node reads host CPU and memory.",
        (f"Measured: {', '.join(measured)}, read on a background thread and stored in "
         f"{doc['timeseries_resolution_s']:g} s buckets." if measured else
         "No device energy was measured."),
        (f"Estimated: {', '.join(estimated)}." if estimated else "Nothing was estimated."),
        f"Facility energy applies a PUE of {doc['pue']['value']:g} ({'default' if doc['pue']['default'] else 'site value'}).",
        f"Training compute: {c['flops_method']}.",
        f"Quality band: {doc['methodology']['uncertainty']['band']} "
        f"(+-{doc['methodology']['uncertainty']['pct']:g}%).",
    ]
    return " ".join(parts)


def sampling(settings: dict[str, Any], stretched: dict[str, float]) -> str:
    """How often devices were read, and where the slow cadence was stretched (and why)."""
    fast, slow = settings.get("interval_s"), settings.get("counter_interval_s")
    if fast is None or slow is None:
        return "cadence not recorded"
    text = (f"fast polls every {float(fast):g} s (GPU instant power, RAPL counters), slow reads "
            f"every {float(slow):g} s (NVML energy counters, utilization estimates)")
    if stretched:
        text += ("; slow reads were stretched to " + ", ".join(
            f"{v:g} s in {k}" for k, v in sorted(stretched.items())) + " because they cost more "
            "CPU than the sampler's budget (events of kind slow-cadence): totals stay exact, "
            "per-step energy leans more on instant power")
    return text


def methodology(devices: list[dict[str, Any]], gaps: int, gap_s: float, quality: dict[str, Any],
                intensity: dict[str, Any], resolution_s: float, cadence: str = "") -> dict[str, Any]:
    samples = sum(d["samples"] for d in devices)
    return {
        "sampling": cadence,
        "measured": _methods(devices, True),
        "estimated": _methods(devices, False),
        "sample_counts": {d["key"]: d["samples"] for d in devices},
        "samples_total": samples,
        "resolution_s": resolution_s,
        "gaps": gaps,
        "gap_s": gap_s,
        "uncertainty": quality,
        "intensity": (f"{intensity['method']}: {intensity['source']}"),
        "steps": ("each step's energy is the device energy between the step's start and end "
                  "(GPU timeline where the integration records it), interpolated between the "
                  "sampler's final readings; steps shorter than the ~100 ms NVML update are "
                  "apportioned, not measured"),
    }
