"""PUE, embodied emissions, cost and SCI: small formulas over defaults that carry their sources.

* PUE: facility energy = IT energy x PUE. The user's value, else the cloud provider's default,
  else the industry average for an unknown data centre (greentrack/data/pue.json).
* Embodied (SCI's M): M = TE x (TiR / EL) x (RR / ToR) per device: total embodied emissions TE,
  time reserved TiR (the run's device-seconds), expected lifespan EL, share of the device reserved
  RR/ToR. The Scope 3 note gives the hardware's whole embodied emissions, not amortized.
* SCI = (O + M) / R with O = facility kWh x location-based intensity (market instruments excluded).

Facility energy, emissions and cost are :mod:`greentrack.carbon.footprint`'s formulas.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.common.units import is_number, mass_text

DATA = Path(__file__).resolve().parents[1] / "data"
SECONDS_PER_YEAR = 365.25 * 86400.0
SCI_UNITS = ("run", "million-tokens", "flop")


@functools.lru_cache(maxsize=None)
def _data(name: str) -> dict[str, Any]:
    return dict(json.loads((DATA / name).read_text(encoding="utf-8")))


def resolve_pue(config: Config, location: dict[str, Any] | None) -> dict[str, Any]:
    """``{"value", "source", "default", "source_id"}``: the PUE in use, where it comes from
    (``source``: the full citation) and a short id of that source (``setting``, or the data
    source and its year: ``uptime-institute-2024``), bounded for metric labels."""
    if config.pue is not None:
        return {"value": float(config.pue), "source": "user setting (pue)", "default": False,
                "source_id": "setting"}
    table = _data("pue.json")
    provider = (location or {}).get("cloud_provider")
    entry = table["providers"].get(provider) if provider else None
    if entry is not None:
        return {"value": float(entry["pue"]), "default": True,
                "source": f"default for {entry['label']}: {entry['source']}",
                "source_id": str(entry["source_id"])}
    entry = table["unknown"]
    return {"value": float(entry["pue"]), "default": True,
            "source": f"default for an {entry['label']}: {entry['source']}",
            "source_id": str(entry["source_id"])}


def positive(name: str, value: Any, allowed: str = "must be a number > 0") -> float:
    if not is_number(value) or value <= 0:
        raise ConfigError(name, value, allowed)
    return float(value)


def embodied_settings(config: Config) -> dict[str, Any]:
    """Embodied defaults merged with ``config.extra['embodied']`` (gpu_kg, host_kg,
    lifespan_years, share), each with its source."""
    d = _data("embodied.json")
    user = dict((getattr(config, "extra", None) or {}).get("embodied") or {})
    known = {"gpu_kg", "host_kg", "lifespan_years", "share"}
    for key in user:
        if key not in known:
            raise ConfigError(f"embodied.{key}", user[key], f"unknown; known: {', '.join(sorted(known))}")
    out = {
        "gpu_kg": (d["gpu"]["kg_co2e"], d["gpu"]["source"]),
        "host_kg": (d["host"]["kg_co2e"], d["host"]["source"]),
        "lifespan_years": (d["lifespan_years"]["value"], d["lifespan_years"]["source"]),
        "share": (d["share"]["value"], d["share"]["source"]),
    }
    for key, value in user.items():
        v = positive(f"embodied.{key}", value)
        if key == "share" and v > 1:
            raise ConfigError("embodied.share", value, "must be in (0, 1]")
        out[key] = (v, "user setting")
    return {k: {"value": float(v), "source": s} for k, (v, s) in out.items()}


def embodied(s: Mapping[str, Any], gpu_seconds: float, host_seconds: float, n_gpus: int,
             n_hosts: int) -> dict[str, Any]:
    """SCI's amortized M and the Scope 3 note (hardware's whole embodied emissions), from
    :func:`embodied_settings` ``s``."""
    el_s = s["lifespan_years"]["value"] * SECONDS_PER_YEAR
    share = s["share"]["value"]
    devices = []
    for kind, count, seconds in (("gpu", n_gpus, gpu_seconds), ("host", n_hosts, host_seconds)):
        if count <= 0:
            continue
        te = s[f"{kind}_kg"]["value"]
        devices.append({"kind": kind, "count": count, "embodied_kg_each": te,
                        "source": s[f"{kind}_kg"]["source"], "reserved_s": seconds,
                        "amortized_kg": te * (seconds / el_s) * share})
    m_kg = sum(d["amortized_kg"] for d in devices)
    hardware_kg = sum(d["embodied_kg_each"] * d["count"] for d in devices)
    return {
        "sci_m_kg": m_kg,
        "formula": "M = TE x (TiR / EL) x (RR / ToR), summed over devices",
        "lifespan_years": s["lifespan_years"], "share": s["share"], "devices": devices,
        "scope3_note": {
            "hardware_embodied_kg": hardware_kg,
            "text": (f"The hardware used ({n_gpus} GPU(s), {n_hosts} host(s)) embodies about "
                     f"{mass_text(hardware_kg * 1e3)} of manufacturing emissions. Under the GHG "
                     "Protocol this belongs to the hardware owner's Scope 3 (category 2, capital "
                     "goods) in the year of purchase, not amortized; it is reported here apart "
                     "from SCI's amortized M and is not part of Scope 2."),
        },
    }


def sci(o_g: float, m_g: float, unit: str, tokens: float | None, flops: float | None) -> dict[str, Any]:
    """SCI = (O + M) / R in gCO2e per functional unit; every applicable unit, and the chosen one."""
    if unit not in SCI_UNITS:
        raise ConfigError("sci_unit", unit, f"must be one of {', '.join(SCI_UNITS)}")
    total = o_g + m_g
    per = {"run": total,
           "million-tokens": total / tokens * 1e6 if tokens else None,
           "flop": total / flops if flops else None}
    return {"o_g": o_g, "m_g": m_g, "functional_unit": unit, "score_g": per[unit],
            "per_run_g": per["run"], "per_million_tokens_g": per["million-tokens"],
            "per_flop_g": per["flop"],
            "formula": "SCI = (O + M) / R; O = facility kWh x location-based gCO2e/kWh "
                       "(market-based instruments excluded, ISO/IEC 21031:2024)"}
