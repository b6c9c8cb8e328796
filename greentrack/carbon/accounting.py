"""Carbon and cost accounting of one run, from its energy (never from hardware).

The location-based intensity I and the PUE follow :mod:`greentrack.carbon.resolve` (one precedence
for reports, live metrics and the forecast); a time series is integrated against the run's energy
over time.

Scope 2 is reported both ways (GHG Protocol): location-based = facility kWh x I; market-based =
facility kWh x ``market_factor_g_per_kwh`` (contractual instruments), null when not given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from greentrack.carbon import factors
from greentrack.carbon.location import Factor, resolve_location, world_average
from greentrack.carbon.resolve import intensity_plan, pue_in_use
from greentrack.carbon.series import IntensitySeries, integrate, read_csv
from greentrack.units import utc


@dataclass
class EnergyProfile:
    """What accounting needs from a run.

    Attributes:
        it_kwh: IT energy (all devices, all processes).
        bins: ``(start_unix, end_unix, energy_j)`` of the run's energy over wall time.
        start_unix / end_unix: the run's span.
        gpu_seconds / host_seconds: device time reserved (for embodied emissions and cost).
        n_gpus / n_hosts: distinct devices.
    """

    it_kwh: float
    bins: list[tuple[float, float, float]]
    start_unix: float
    end_unix: float
    gpu_seconds: float = 0.0
    host_seconds: float = 0.0
    n_gpus: int = 0
    n_hosts: int = 1
    steps: int = 0
    tokens: float | None = None
    flops: float | None = None
    warnings: list[str] = field(default_factory=list)


def _time_resolved(series: IntensitySeries, profile: EnergyProfile, fallback: Factor,
                   base: Factor | None, dataset: str, warnings: list[str]) -> dict[str, Any]:
    result = integrate(series, profile.bins, fallback.g_per_kwh)
    if result.covered_kwh <= 0 and result.energy_kwh > 0:
        a, b = series.span
        warnings.append(f"the intensity series ({series.source}) covers {utc(a)} to {utc(b)}, "
                        f"none of the run ({utc(profile.start_unix)} to {utc(profile.end_unix)}); "
                        f"used {fallback.source}")
        return {**fallback.as_dict(), "coverage": 0.0}
    if result.coverage < 0.999:
        warnings.append(f"the intensity series covers {result.coverage:.1%} of the run's energy; the "
                        f"rest is charged at {fallback.g_per_kwh:.1f} g/kWh ({fallback.method})")
    return {
        "g_per_kwh": result.effective_g_per_kwh, "method": "time-resolved",
        "source": f"{series.source}: {result.intervals_used} interval(s) integrated against the "
                  f"run's energy over time (energy-weighted mean)",
        "dataset": dataset, "year": int(time.gmtime(profile.start_unix).tm_year),
        "location": {**(base.location if base else {}), **({"zone": series.zone} if series.zone else {})},
        "coverage": result.coverage, "intervals_used": result.intervals_used,
        "series_interval_s": series.extra.get("interval_s"),
        "fallback": fallback.as_dict() if result.coverage < 0.999 else None,
    }


def location_intensity(config: Any, profile: EnergyProfile, warnings: list[str]) -> dict[str, Any]:
    """The location-based factor in use, as a JSON-ready dict (precedence:
    :func:`greentrack.carbon.resolve.intensity_plan`)."""
    plan = intensity_plan(config)
    base, fallback = plan.base, plan.fallback or world_average()  # a report needs the data
    if plan.kind == "user":
        return {"g_per_kwh": float(config.carbon_intensity_g_per_kwh), "method": "user-setting",
                "source": "user setting (carbon_intensity_g_per_kwh)", "dataset": "user",
                "year": None, "location": base.location if base else {}, "coverage": 1.0}
    if plan.kind == "csv":
        series = read_csv(config.intensity_csv)
        return _time_resolved(series, profile, fallback, base, "intensity CSV", warnings)
    if plan.kind == "electricitymaps":
        from greentrack.carbon.electricitymaps import ElectricityMapsError
        try:
            series = plan.client.past_range(profile.start_unix, profile.end_unix)
            return _time_resolved(series, profile, fallback, base, "Electricity Maps API", warnings)
        except ElectricityMapsError as e:
            warnings.append(f"{e}; used {fallback.source}")
    if plan.error:
        warnings.append(plan.error)
    if base is None:
        warnings.append("no location set (--country, --region, --cloud or --carbon-intensity): "
                        "emissions use the world average and are only indicative")
    return {**fallback.as_dict(), "coverage": 1.0}


def account(config: Any, profile: EnergyProfile, sci_unit: str = "run") -> dict[str, Any]:
    """Every carbon and cost figure of the run, each with its source.

    Raises:
        ConfigError: invalid location, intensity CSV, price or embodied setting.
    """
    warnings: list[str] = []
    location = resolve_location(config)
    pue = pue_in_use(config)
    facility_kwh = profile.it_kwh * pue["value"]
    loc = location_intensity(config, profile, warnings)
    market = config.market_factor_g_per_kwh
    emb = factors.embodied(config, profile.gpu_seconds, profile.host_seconds, profile.n_gpus,
                           profile.n_hosts)
    o_g = facility_kwh * loc["g_per_kwh"]
    return {
        "location": location or {},
        "pue": pue,
        "it_energy_kwh": profile.it_kwh,
        "facility_energy_kwh": facility_kwh,
        "intensity": {
            "location_based": loc,
            "market_based": None if market is None else {
                "g_per_kwh": float(market),
                "source": "user setting (market_factor_g_per_kwh): contractual instruments, "
                          "supplier-specific or residual-mix factor"},
        },
        "scope2": {
            "location_based_kg": o_g / 1000.0,
            "market_based_kg": None if market is None else facility_kwh * float(market) / 1000.0,
            "boundary": "electricity of the tracked devices (GPU, CPU package, DRAM) x PUE",
            "period": {"start": utc(profile.start_unix), "end": utc(profile.end_unix)},
            "formula": "kg = IT kWh x PUE x gCO2e/kWh / 1000",
        },
        "embodied": emb,
        "sci": factors.sci(o_g, emb["sci_m_kg"] * 1000.0, sci_unit, profile.tokens, profile.flops),
        "cost": factors.cost(config, facility_kwh, profile.gpu_seconds / 3600.0, profile.steps,
                             profile.tokens),
        "warnings": warnings,
    }


