"""codecarbon's maintained data (CPU TDP, grid intensities, cloud regions): the one module that
reads it, located and read without importing codecarbon, cited with :func:`version`.

Importing ``codecarbon`` loads GPU libraries (``amdsmi``) that print to stdout and log warnings on
machines without them: a tracker must never write into the user's training output. The data files
ship inside the installed package, so greentrack locates and reads them directly. They remain
codecarbon's data (never retyped here); :func:`version` is cited wherever they are used.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from greentrack.common.errors import ConfigError


@functools.lru_cache(maxsize=1)
def package_dir() -> Path | None:
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=1)
def version() -> str:
    """The installed codecarbon's version, cited with its data (read once: a metadata scan that
    every start and report cited, and an inventory resolves the settings of thousands of runs)."""
    import importlib.metadata  # ~20 ms of email parsing modules: when cited, not at import

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


def cpu_power_table() -> list[tuple[str, float]]:
    """``(name, TDP W)`` rows of codecarbon's ``data/hardware/cpu_power.csv``: read once per
    process and file version (:func:`cpu_table_key`), not at every tracker start."""
    key = cpu_table_key()
    if key is None:
        return []
    rows = _CPU_TABLES.get(key)
    if rows is None:
        rows = _CPU_TABLES[key] = _read_cpu_table(Path(key[0]))
    return rows


def cpu_table_key() -> tuple[str, int] | None:
    """(path, mtime in ns) of codecarbon's CPU table, or None when it is missing: what a lookup
    in it may be cached under (a reinstalled codecarbon is read again)."""
    path = data_file("hardware", "cpu_power.csv")
    try:
        return (str(path), path.stat().st_mtime_ns) if path is not None else None
    except OSError:
        return None


_CPU_TABLES: dict[tuple[str, int], list[tuple[str, float]]] = {}


def _read_cpu_table(path: Path) -> list[tuple[str, float]]:
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


#: codecarbon's ``emissions.csv`` header: the fields of ``EmissionsData``, in order, as
#: codecarbon 3.3.2 defines them (``codecarbon/output_methods/emissions_data.py``, MIT licence,
#: https://github.com/mlco2/codecarbon). Kept here rather than read from codecarbon's source or
#: imported (importing codecarbon prints to stdout on machines without AMD's library);
#: ``tests/test_codecarbon_habits.py`` checks it against the installed codecarbon's dataclass, so
#: an upgrade that changes the columns fails the tests, not a user's file. A file written by
#: another version (other columns) is read and extended, never truncated
#: (:mod:`greentrack.reports.emissions_log`).
EMISSIONS_CSV_COLUMNS = (
    "timestamp", "project_name", "run_id", "experiment_id", "duration", "emissions",
    "emissions_rate", "cpu_power", "gpu_power", "ram_power", "cpu_energy", "gpu_energy",
    "ram_energy", "energy_consumed", "water_consumed", "country_name", "country_iso_code",
    "region", "cloud_provider", "cloud_region", "os", "python_version", "codecarbon_version",
    "cpu_count", "cpu_model", "gpu_count", "gpu_model", "longitude", "latitude", "ram_total_size",
    "tracking_mode", "cpu_utilization_percent", "gpu_utilization_percent",
    "ram_utilization_percent", "ram_used_gb", "on_cloud", "pue", "wue")
EMISSIONS_CSV_VERSION = "3.3.2"


def emissions_csv_columns() -> list[str]:
    """The ``emissions.csv`` header (:data:`EMISSIONS_CSV_COLUMNS`)."""
    return list(EMISSIONS_CSV_COLUMNS)
