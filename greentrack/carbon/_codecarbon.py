"""codecarbon's maintained grid data, read at run time (never retyped), with its citation.

Files are located through ``codecarbon.input.DataSource`` and read with ``json``/``csv`` rather
than its pandas-backed getters, so a report (or the live exporter) does not pay for importing
pandas. Every loader returns plain dicts and caches them for the process.
"""

from __future__ import annotations

import csv
import functools
import json
from typing import Any

PACKAGE = "codecarbon"


def version() -> str:
    try:
        from importlib.metadata import version as _v
        return _v("codecarbon")
    except Exception:  # noqa: BLE001 - metadata only
        return "unknown"


def _path(relative: str) -> Any:
    from codecarbon.input import DataSource
    return DataSource.get_ressource_path(PACKAGE, relative)


@functools.lru_cache(maxsize=None)
def global_energy_mix() -> dict[str, dict[str, Any]]:
    """ISO alpha-3 -> record with ``carbon_intensity`` (gCO2e/kWh), ``country_name``, ``year``."""
    from codecarbon.input import DataSource
    with open(DataSource().global_energy_mix_data_path, encoding="utf-8") as f:
        return dict(json.load(f))


@functools.lru_cache(maxsize=None)
def usa_states() -> dict[str, Any]:
    """eGRID state factors in lbs/MWh, with ``_source`` (name, url, field, year)."""
    from codecarbon.input import DataSource
    return dict(DataSource().get_country_emissions_data("usa"))


@functools.lru_cache(maxsize=None)
def canada_provinces() -> dict[str, Any]:
    """Generation mix (percent by source) per province."""
    from codecarbon.input import DataSource
    return dict(DataSource().get_country_energy_mix_data("can"))


@functools.lru_cache(maxsize=None)
def nordic_zones() -> dict[str, Any]:
    with open(_path("data/private_infra/nordic_emissions.json"), encoding="utf-8") as f:
        return dict(json.load(f))


@functools.lru_cache(maxsize=None)
def china_provinces() -> dict[str, Any]:
    with open(_path("data/private_infra/2023/china_provincial_emissions.json"), encoding="utf-8") as f:
        return dict(json.load(f))


@functools.lru_cache(maxsize=None)
def per_source() -> dict[str, Any]:
    """Lifecycle gCO2e/kWh per generation source, incl. ``world_average`` and its source."""
    from codecarbon.input import DataSource
    with open(DataSource().carbon_intensity_per_source_path, encoding="utf-8") as f:
        return dict(json.load(f))


@functools.lru_cache(maxsize=None)
def cloud_regions() -> tuple[dict[str, str], ...]:
    """Rows of codecarbon's ``data/cloud/impact.csv`` (``provider``, ``region``, ``impact``...)."""
    from codecarbon.input import DataSource
    with open(DataSource().cloud_emissions_path, encoding="utf-8-sig", newline="") as f:
        return tuple(dict(r) for r in csv.DictReader(f))


def canada_g_per_kwh(mix: dict[str, Any]) -> float:
    """A province's generation mix to gCO2e/kWh with codecarbon's own conversion (its source
    factors for coal, petroleum and natural gas), so the figure matches codecarbon's."""
    from codecarbon.core.emissions import Emissions
    return float(Emissions._region_energy_mix_to_emissions_rate(mix).kgs_per_kWh) * 1000.0


def lbs_per_mwh_to_g_per_kwh(lbs_per_mwh: float) -> float:
    """eGRID's lbs/MWh to g/kWh with codecarbon's converter."""
    from codecarbon.core.units import EmissionsPerKWh
    return float(EmissionsPerKWh.from_lbs_per_mWh(lbs_per_mwh).kgs_per_kWh) * 1000.0
