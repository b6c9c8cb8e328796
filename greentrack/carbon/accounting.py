"""The report's carbon and cost sections, written from a :class:`~greentrack.carbon.footprint.
Footprint`: every figure here is the footprint's (nothing is multiplied again), with the words an
auditor needs beside it.

Scope 2 is reported both ways (GHG Protocol): location-based = facility kWh x I; market-based =
facility kWh x ``market_factor_g_per_kwh`` (contractual instruments), null when not given.
Embodied emissions (SCI's M, amortized) and the Scope 3 note come from
:func:`greentrack.carbon.factors.embodied`; SCI from :func:`greentrack.carbon.factors.sci`.
"""

from __future__ import annotations

from typing import Any

from greentrack.carbon import factors
from greentrack.carbon.footprint import Footprint
from greentrack.carbon.location import world_average
from greentrack.common.units import utc

#: Why electricity is billed on facility energy, and the trap of two prices.
COST_NOTE = ("electricity is billed on facility energy (IT x PUE); a cloud GPU-hour price usually "
             "already includes energy, so set only one of the two to avoid counting energy twice")


def _cost(fp: Footprint) -> dict[str, Any] | None:
    c = fp.cost
    if c is None:
        if not fp.costs:
            return None
        return {"currency": None, "electricity_price_per_kwh": None, "gpu_hour_price": None,
                "electricity": None, "gpu_hours": None, "total": None, "per_step": None,
                "per_million_tokens": None, "note": COST_NOTE,
                "by_currency": [{"currency": x.currency, "electricity": x.electricity,
                                 "gpu_hours": x.gpu_hours, "total": x.total} for x in fp.costs]}
    return {"currency": c.currency, "electricity_price_per_kwh": c.electricity_price_per_kwh,
            "gpu_hour_price": c.gpu_hour_price, "electricity": c.electricity,
            "gpu_hours": c.gpu_hours, "total": c.total,
            "per_step": fp.per_step.cost if fp.per_step is not None else None,
            "per_step_divisor": fp.per_step.divisor if fp.per_step is not None else None,
            "per_million_tokens": fp.per_token.cost * 1e6
            if fp.per_token is not None and fp.per_token.cost is not None else None,
            "note": COST_NOTE}


def parts(fp: Footprint) -> list[dict[str, Any]]:
    """Each part of the run at its own settings (one entry for a run of one set of settings)."""
    return [{"label": p.label, "start": utc(p.start_unix), "end": utc(p.end_unix),
             "it_kwh": p.it_kwh, "facility_kwh": p.facility_kwh, "pue": p.pue.value,
             "g_per_kwh": p.intensity.g_per_kwh if p.intensity is not None else None,
             "intensity_source": p.intensity.source if p.intensity is not None else None,
             "location_based_kg": None if p.location_g is None else p.location_g / 1000.0,
             "market_based_kg": None if p.market_g is None else p.market_g / 1000.0,
             "cost": p.cost.total if p.cost is not None else None,
             "currency": p.cost.currency if p.cost is not None else None,
             "gpu_hours": p.gpu_hours, "location": dict(p.settings.location)}
            for p in fp.parts]


#: where a market-based factor comes from: the user's contractual instruments (GHG Protocol
#: Scope 2 Guidance, 2015, ch. 6), never a table of greentrack's
MARKET_SOURCE = ("user setting (market_factor_g_per_kwh): contractual instruments, "
                 "supplier-specific or residual-mix factor")


def sections(fp: Footprint, sci_unit: str = "run") -> dict[str, Any]:
    """``location``, ``pue``, ``it_energy_kwh``, ``facility_energy_kwh``, ``intensity``,
    ``scope2``, ``embodied``, ``sci``, ``cost``, ``parts`` and ``warnings`` of the report.

    Raises:
        ConfigError: no intensity can be had (codecarbon's data missing and no factor set).
    """
    if fp.intensity is None or fp.location_g is None:
        world_average()  # raises the one-line error that names what is missing
        raise AssertionError("an intensity was resolvable")  # pragma: no cover
    first = fp.parts[0]
    market = [p.settings.market_g_per_kwh for p in fp.parts]
    w = fp.work
    emb = factors.embodied(first.settings.embodied, fp.gpu_seconds, w.host_seconds, w.n_gpus,
                           w.n_hosts)
    start = min(p.start_unix for p in fp.parts)
    end = max(p.end_unix for p in fp.parts)
    return {
        "location": dict(first.settings.location) if len(fp.parts) == 1 else
        dict(fp.parts[-1].settings.location),
        "pue": fp.pue.as_dict(),
        "it_energy_kwh": fp.it_kwh,
        "facility_energy_kwh": fp.facility_kwh,
        "intensity": {
            "location_based": fp.intensity.as_dict(),
            "market_based": None if fp.market_g is None else {
                # one factor throughout is stated as given; else the energy-weighted mean
                "g_per_kwh": market[0] if len(set(market)) == 1 or fp.facility_kwh <= 0
                else fp.market_g / fp.facility_kwh,
                "source": MARKET_SOURCE},
        },
        "scope2": {
            "location_based_kg": fp.location_g / 1000.0,
            "market_based_kg": None if fp.market_g is None else fp.market_g / 1000.0,
            "boundary": "electricity of the tracked devices (GPU, CPU package, DRAM) x PUE",
            "period": {"start": utc(start), "end": utc(end)},
            "formula": "kg = IT kWh x PUE x gCO2e/kWh / 1000"
                       + (", each part of the run at its own settings" if len(fp.parts) > 1
                          else ""),
        },
        "embodied": emb,
        "sci": factors.sci(fp.location_g, emb["sci_m_kg"] * 1000.0, sci_unit, w.tokens, w.flops),
        "cost": _cost(fp),
        "parts": parts(fp),
        "warnings": list(fp.warnings),
    }


__all__ = ["COST_NOTE", "MARKET_SOURCE", "parts", "sections"]
