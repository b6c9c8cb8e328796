"""``--format csv``: one row per run in codecarbon's ``emissions.csv`` layout.

The header is codecarbon's ``EmissionsData`` fields (:data:`greentrack.common.codecarbon_data.EMISSIONS_CSV_COLUMNS`,
checked against the installed codecarbon by the tests), so dashboards built on codecarbon's file
keep working. As in codecarbon, energies and powers include the PUE (codecarbon
multiplies them by its ``pue``; the ``pue`` column states it, greentrack's default 1.56 where
codecarbon's is 1.0), ``emissions`` is kg CO2e (location-based), ``emissions_rate`` kg/s,
powers are run averages in W and energies kWh. ``project_name`` is the ``project_name`` setting
(:data:`DEFAULT_PROJECT_NAME` when unset); a run charged the world average (no location) says
:data:`WORLD` in ``country_name``. Fields greentrack does not know stay empty.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from greentrack.common.codecarbon_data import emissions_csv_columns
from greentrack.common.units import J_PER_KWH

FILENAME = "emissions.csv"
#: ``project_name`` of a run whose ``project_name`` setting is unset (codecarbon's is "codecarbon")
DEFAULT_PROJECT_NAME = "greentrack"
#: ``country_name`` of a run charged the world-average intensity (no location set); its
#: ``country_iso_code`` stays empty: ISO 3166 has no code for the world
WORLD = "World"


def columns() -> list[str]:
    return list(emissions_csv_columns())


def row(doc: dict[str, Any]) -> dict[str, Any]:
    s, e, run, loc = doc["summary"], doc["energy"], doc["run"], doc["location"]
    pue, dur = float(s["pue"]), max(float(s["duration_s"]), 1e-9)
    # facility energy by kind, as codecarbon's columns hold it: the footprint's (each part of
    # the run at its own PUE)
    kwh = {k: v or 0.0 for k, v in e["by_kind_facility_kwh"].items()}
    hw = doc["compute"]["hardware"]
    cpu_model = ", ".join(hw["cpus"]) if hw["cpus"] else ""
    country = loc.get("country_name") or (WORLD if s.get("intensity_method") == "world-average"
                                          else "")
    return {
        "timestamp": run["ended_at"].rstrip("Z"),
        "project_name": run.get("project_name") or DEFAULT_PROJECT_NAME,
        "run_id": run["run_id"] or "", "experiment_id": "", "duration": s["duration_s"],
        "emissions": s["emissions_location_kg"], "emissions_rate": s["emissions_location_kg"] / dur,
        "cpu_power": kwh["cpu"] * J_PER_KWH / dur, "gpu_power": kwh["gpu"] * J_PER_KWH / dur,
        "ram_power": kwh["dram"] * J_PER_KWH / dur, "cpu_energy": kwh["cpu"], "gpu_energy": kwh["gpu"],
        "ram_energy": kwh["dram"], "energy_consumed": s["facility_energy_kwh"], "water_consumed": "",
        "country_name": country, "country_iso_code": loc.get("country_iso3", ""),
        "region": loc.get("region", "") or "", "cloud_provider": loc.get("cloud_provider", ""),
        "cloud_region": loc.get("cloud_region", ""), "os": run.get("platform") or "",
        "python_version": run.get("python") or "",
        "codecarbon_version": f"greentrack-{doc['generator']['version']}",
        "cpu_count": _blank(hw.get("cpu_count")), "cpu_model": cpu_model, "gpu_count": hw["gpu_count"],
        "gpu_model": "; ".join(f"{n} x {name}" for name, n in hw["gpus"].items()),
        "longitude": "", "latitude": "", "ram_total_size": _blank(hw.get("ram_total_gb")),
        "tracking_mode": run["mode"] if isinstance(run["mode"], str) else ",".join(run["mode"]),
        "on_cloud": "Y" if loc.get("cloud_provider") else "N", "pue": pue, "wue": "",
    }


def _blank(value: Any) -> Any:
    """A figure the run did not record is an empty cell (NaN in pandas), never a 0."""
    return "" if value is None else value


#: what makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """A string cell that a spreadsheet would run as a formula gets a leading single quote, as
    OWASP recommends; numbers (a negative one included) stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def render(docs: list[dict[str, Any]]) -> str:
    cols = columns()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for doc in docs:
        r = row(doc)
        writer.writerow({c: cell(r.get(c, "")) for c in cols})
    return buf.getvalue()


def write(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    path = out_dir / FILENAME
    path.write_text(render([doc]), encoding="utf-8")
    return [path]
