"""codecarbon's maintained grid data, read at run time (never retyped), with its citation.

The files are the ones ``codecarbon.input.DataSource`` reads (same relative paths under the
installed package's ``data/``), located by :mod:`greentrack._codecarbon` without importing
codecarbon: its import probes GPU vendor libraries and prints to stdout, which must never reach a
training job's output (the live exporter calls this in the training process).
"""

from __future__ import annotations

import ast
import csv
import functools
from typing import Any

from greentrack import _codecarbon as base
from greentrack.errors import ConfigError

version = base.version
LBS_PER_MWH_TO_G_PER_KWH = 453.59237 / 1000.0  # 1 lb = 453.59237 g (exact); 1 MWh = 1000 kWh


def _json(*parts: str) -> Any:
    data = base.read_json(*parts)
    if data is None:
        raise ConfigError("codecarbon", version(), f"its data file data/{'/'.join(parts)} is missing; "
                          "reinstall codecarbon (pip install codecarbon)")
    return data


def global_energy_mix() -> dict[str, dict[str, Any]]:
    """ISO alpha-3 -> record with ``carbon_intensity`` (gCO2e/kWh), ``country_name``, ``year``."""
    return dict(_json("private_infra", "global_energy_mix.json"))


def usa_states() -> dict[str, Any]:
    """eGRID state factors in lbs/MWh, with ``_source`` (name, url, field, year)."""
    return dict(_json("private_infra", "2023", "usa_emissions.json"))


def canada_provinces() -> dict[str, Any]:
    """Generation mix (percent by source) per province."""
    return dict(_json("private_infra", "2023", "canada_energy_mix.json"))


def nordic_zones() -> dict[str, Any]:
    return dict(_json("private_infra", "nordic_emissions.json"))


def china_provinces() -> dict[str, Any]:
    return dict(_json("private_infra", "2023", "china_provincial_emissions.json"))


def per_source() -> dict[str, Any]:
    """Lifecycle gCO2e/kWh per generation source, incl. ``world_average`` and its source."""
    return dict(_json("private_infra", "carbon_intensity_per_source.json"))


@functools.lru_cache(maxsize=None)
def cloud_regions() -> tuple[dict[str, str], ...]:
    """Rows of codecarbon's ``data/cloud/impact.csv`` (``provider``, ``region``, ``impact``...)."""
    path = base.data_file("cloud", "impact.csv")
    if path is None:
        return ()
    with path.open(encoding="utf-8-sig", newline="") as f:
        return tuple(dict(r) for r in csv.DictReader(f))


# codecarbon's Canadian mix names -> its per-source factor names
_CANADA_SOURCES = {"naturalGas": "natural_gas", "hydro": "hydroelectricity", "biomass": "biomass",
                   "coal": "coal", "nuclear": "nuclear", "petroleum": "petroleum", "solar": "solar",
                   "wind": "wind"}


def canada_g_per_kwh(mix: dict[str, Any]) -> tuple[float, float]:
    """(gCO2e/kWh, share of generation that has a factor) of a province's mix: each source's share
    x codecarbon's lifecycle factor for it. Sources without a factor (tidal, other) count as 0, so
    the value is a lower bound when the returned coverage is below 1."""
    factors = per_source()
    total = float(mix.get("total") or 0.0) or sum(float(v) for k, v in mix.items() if k != "total")
    g = covered = 0.0
    for name, share in mix.items():
        key = _CANADA_SOURCES.get(name)
        if key is None or name == "total":
            continue
        g += float(share) / total * float(factors[key])
        covered += float(share) / total
    return g, covered


@functools.lru_cache(maxsize=1)
def emissions_csv_columns() -> list[str]:
    """The fields of codecarbon's ``EmissionsData`` (the ``emissions.csv`` header, in order), read
    from its installed source with ``ast`` rather than by importing codecarbon."""
    root = base.package_dir()
    path = root / "output_methods" / "emissions_data.py" if root else None
    if path is None or not path.is_file():
        raise ConfigError("codecarbon", version(), "output_methods/emissions_data.py not found; "
                          "reinstall codecarbon to write its emissions.csv layout")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "EmissionsData":
            return [st.target.id for st in node.body
                    if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)]
    raise ConfigError("codecarbon", version(), "has no EmissionsData class to take columns from")
