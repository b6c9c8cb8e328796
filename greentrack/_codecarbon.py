"""codecarbon's maintained data (CPU TDP, grid intensities, cloud regions): the one module that
reads it, located and read without importing codecarbon, cited with :func:`version`.

Importing ``codecarbon`` loads GPU libraries (``amdsmi``) that print to stdout and log warnings on
machines without them: a tracker must never write into the user's training output. The data files
ship inside the installed package, so greentrack locates and reads them directly. They remain
codecarbon's data (never retyped here); :func:`version` is cited wherever they are used.
"""

from __future__ import annotations

import ast
import csv
import functools
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

from greentrack.errors import ConfigError


@functools.lru_cache(maxsize=1)
def package_dir() -> Path | None:
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def version() -> str:
    try:
        return importlib.metadata.version("codecarbon")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def data_file(*parts: str) -> Path | None:
    """Path of a file under ``codecarbon/data/``, or None if codecarbon or the file is missing."""
    root = package_dir()
    path = root.joinpath("data", *parts) if root else None
    return path if path is not None and path.is_file() else None


@functools.lru_cache(maxsize=None)
def read_json(*parts: str) -> Any:
    path = data_file(*parts)
    return json.loads(path.read_text()) if path else None


@functools.lru_cache(maxsize=1)
def cpu_power_table() -> list[tuple[str, float]]:
    """``(name, TDP W)`` rows of codecarbon's ``data/hardware/cpu_power.csv``."""
    path = data_file("hardware", "cpu_power.csv")
    if path is None:
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append((row["Name"], float(row["TDP"])))
            except (KeyError, TypeError, ValueError):
                continue  # the table has a few malformed entries ('27.29.5'): skip, never guess
    return rows


# -- grid data (greentrack.carbon): the files codecarbon.input.DataSource reads ------------------

LBS_PER_MWH_TO_G_PER_KWH = 453.59237 / 1000.0  # 1 lb = 453.59237 g (exact); 1 MWh = 1000 kWh


def _json(*parts: str) -> Any:
    data = read_json(*parts)
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
    path = data_file("cloud", "impact.csv")
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
    root = package_dir()
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
