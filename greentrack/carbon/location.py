"""Where the run's electricity came from, and that grid's yearly carbon intensity.

Location comes only from explicit settings (no web geolocation): a country (ISO 3166 alpha-3 or
alpha-2, or its English name), a sub-national region where codecarbon's data has one (US state,
Canadian province, Chinese province, Nordic bidding zone), or a cloud ``PROVIDER:REGION``.
Intensities are codecarbon's maintained data, read at run time; each :class:`Factor` cites the
dataset and its year. Unknown names are a :class:`~greentrack.common.errors.ConfigError` with the
closest matches.

>>> yearly_factor(Config(country="FR")).g_per_kwh      # doctest: +SKIP
56.039
"""

from __future__ import annotations

import csv
import difflib
import functools
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from greentrack.common import codecarbon_data as cc
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data"
PROVIDER_ALIASES = {"gcp": "gcp", "google": "gcp", "googlecloud": "gcp", "aws": "aws",
                    "amazon": "aws", "azure": "azure", "microsoft": "azure"}
_NORDIC = {"SWE": "SE", "NOR": "NO", "FIN": "FI"}


@dataclass(frozen=True)
class Factor:
    """A carbon-intensity factor and where it comes from.

    Attributes:
        g_per_kwh: gCO2e per kWh.
        method: ``yearly-average``, ``time-resolved``, ``user-setting`` or ``world-average``.
        source: one line naming the dataset, its year and the entry used.
        dataset: the dataset's name (file or provider).
        year: the data year, when the dataset says.
        location: country/region/cloud as resolved (``country_iso3``, ``country_name``,
            ``region``, ``cloud_provider``, ``cloud_region``).
    """

    g_per_kwh: float
    method: str
    source: str
    dataset: str
    year: int | None = None
    location: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pycountry() -> Any:
    """pycountry (installed with codecarbon) for ISO alpha-2 codes and subdivisions, or None."""
    try:
        import pycountry
        return pycountry
    except ImportError:
        return None


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def _suggest(value: str, choices: dict[str, str], what: str) -> str:
    """``choices`` maps a normalized key to how it is shown."""
    close = difflib.get_close_matches(_norm(value), list(choices), n=4, cutoff=0.6)
    shown = list(dict.fromkeys(choices[c] for c in close))
    return f"unknown {what}" + (f"; did you mean {', '.join(shown)}?" if shown else "")


# -- country -------------------------------------------------------------------------------------

def resolve_country(value: str) -> str:
    """An ISO alpha-3 code present in codecarbon's global mix, from alpha-3, alpha-2 or name."""
    mix = cc.global_energy_mix()
    text = value.strip()
    if text.upper() in mix:
        return text.upper()
    if len(text) == 2:
        pycountry = _pycountry()
        found = pycountry.countries.get(alpha_2=text.upper()) if pycountry else None
        if found is not None and found.alpha_3 in mix:
            return str(found.alpha_3)
    by_name = {_norm(rec["country_name"]): code for code, rec in mix.items()}
    if _norm(text) in by_name:
        return by_name[_norm(text)]
    choices = {**{_norm(rec["country_name"]): f"{code} ({rec['country_name']})"
                  for code, rec in mix.items()},
               **{code.lower(): f"{code} ({rec['country_name']})" for code, rec in mix.items()}}
    raise ConfigError("country", value, _suggest(text, choices, "country") +
                      " (use an ISO 3166 alpha-3 or alpha-2 code, e.g. FRA or FR)")


# -- sub-national regions --------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _regions() -> dict[str, dict[str, str]]:
    """country alpha-3 -> {normalized alias -> canonical key in codecarbon's table}."""
    pycountry = _pycountry()
    out: dict[str, dict[str, str]] = {"USA": {}, "CAN": {}, "CHN": {}, "SWE": {}, "NOR": {}, "FIN": {}}
    for key, rec in cc.usa_states().items():
        if key.startswith("_") or not isinstance(rec, dict) or key == "usa":
            continue
        out["USA"][_norm(key)] = key
        code = str(rec.get("regionCode", ""))
        if code:
            out["USA"][code.lower()] = key
            out["USA"][f"us {code.lower()}"] = key
    for key in cc.canada_provinces():
        out["CAN"][_norm(key)] = key
    for sub in (pycountry.subdivisions.get(country_code="CA") if pycountry else None) or []:
        if _norm(sub.name) in out["CAN"]:
            canonical = out["CAN"][_norm(sub.name)]
            out["CAN"][_norm(sub.code)] = canonical          # "ca qc"
            out["CAN"][sub.code.split("-")[1].lower()] = canonical  # "qc"
    for zone in cc.nordic_zones()["data"]:
        for iso3, prefix in _NORDIC.items():
            if zone.startswith(prefix):
                out[iso3][_norm(zone)] = zone
    for code, rec in cc.china_provinces()["data"].items():
        out["CHN"][_norm(code)] = code
        for name in rec.get("names", []):
            out["CHN"][_norm(name)] = code
    return out


def resolve_region(country: str | None, value: str) -> tuple[str, str]:
    """(country alpha-3, canonical region key). A region without a country is looked up in every
    country that has sub-national data and must match exactly one."""
    regions = _regions()
    key = _norm(value)
    if country is None:
        hits = [(c, table[key]) for c, table in regions.items() if key in table]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ConfigError("region", value, "matches regions of several countries "
                              f"({', '.join(c for c, _ in hits)}); set --country too")
        choices = {alias: canon for table in regions.values() for alias, canon in table.items()}
        raise ConfigError("region", value, _suggest(value, choices, "region") +
                          f" (sub-national data exists for {', '.join(regions)})")
    if country not in regions:
        raise ConfigError("region", value, f"codecarbon has no sub-national data for {country}; "
                          f"regions exist for {', '.join(regions)} (leave --region unset to use "
                          "the country's average)")
    table = regions[country]
    if key in table:
        return country, table[key]
    raise ConfigError("region", value, _suggest(value, {a: c for a, c in table.items()},
                                                f"region of {country}"))


def _region_factor(country: str, region: str) -> Factor:
    loc = {"country_iso3": country, "country_name": cc.global_energy_mix()[country]["country_name"],
           "region": region}
    if country == "USA":
        table = cc.usa_states()
        src = table.get("_source", {})
        g = float(table[region]["emissions"]) * cc.LBS_PER_MWH_TO_G_PER_KWH
        year = int(src["year"]) if "year" in src else None
        name = src.get("name", "EPA eGRID")
        return Factor(g, "yearly-average", f"{name} ({src.get('field', '')}), state {region}, via "
                      f"codecarbon {cc.version()} usa_emissions.json", name, year, loc)
    if country == "CAN":
        g, covered = cc.canada_g_per_kwh(cc.canada_provinces()[region])
        return Factor(g, "yearly-average", f"{region} generation mix (codecarbon {cc.version()} "
                      "canada_energy_mix.json, 2023 folder) x lifecycle factor per source "
                      f"(codecarbon carbon_intensity_per_source.json); {covered:.1%} of generation "
                      "has a factor", "codecarbon canada_energy_mix.json", 2023, loc)
    if country == "CHN":
        data = cc.china_provinces()
        rec, meta = data["data"][region], data.get("metadata", {})
        return Factor(float(rec["emission_factor"]), "yearly-average",
                      f"{meta.get('source', 'MEE/NBS provincial factors')} ({rec.get('description')}), "
                      f"via codecarbon {cc.version()}", "MEE/NBS provincial electricity CO2 factors",
                      int(rec.get("year") or meta.get("year") or 0) or None, loc)
    data = cc.nordic_zones()
    rec, meta = data["data"][region], data.get("metadata", {})
    return Factor(float(rec["emission_factor"]), "yearly-average",
                  f"{rec.get('description', region)}: {meta.get('source', 'ENTSO-E')}, via codecarbon "
                  f"{cc.version()} nordic_emissions.json", "codecarbon nordic_emissions.json",
                  int(rec["year"]) if rec.get("year") else None, loc)


def _country_factor(country: str) -> Factor:
    rec = cc.global_energy_mix()[country]
    return Factor(float(rec["carbon_intensity"]), "yearly-average",
                  f"{rec['country_name']} {rec.get('year')} grid average, Our World in Data energy "
                  f"dataset (Ember) via codecarbon {cc.version()} global_energy_mix.json",
                  "codecarbon global_energy_mix.json (Our World in Data / Ember)",
                  int(rec["year"]) if rec.get("year") else None,
                  {"country_iso3": country, "country_name": rec["country_name"]})


# -- cloud -------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _cloud_table() -> dict[tuple[str, str], dict[str, str]]:
    out: dict[tuple[str, str], dict[str, str]] = {}
    for row in cc.cloud_regions():
        out[(row["provider"].strip().lower(), row["region"].strip().lower())] = {**row, "_from": "codecarbon"}
    with open(DATA / "cloud_regions.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(line for line in f if not line.startswith("#")):
            out.setdefault((row["provider"], row["region"]), {**row, "_from": "greentrack"})
    return out


def parse_cloud(value: str) -> tuple[str, str]:
    """``PROVIDER:REGION`` -> (provider, region), both checked against the known regions."""
    provider, sep, region = value.strip().partition(":")
    if not sep or not region.strip():
        raise ConfigError("cloud", value, "must be PROVIDER:REGION, e.g. gcp:europe-west9, "
                          "aws:us-east-1, azure:westeurope")
    p = PROVIDER_ALIASES.get(provider.strip().lower().replace(" ", ""))
    if p is None:
        raise ConfigError("cloud", value, f"unknown provider {provider!r}; known: gcp, aws, azure")
    r = region.strip().lower()
    table = _cloud_table()
    if (p, r) not in table:
        choices = {_norm(reg): f"{prov}:{reg}" for prov, reg in table if prov == p}
        raise ConfigError("cloud", value, _suggest(r, choices, f"{p} region"))
    return p, r


def _cloud_factor(provider: str, region: str) -> Factor:
    row = _cloud_table()[(provider, region)]
    loc: dict[str, Any] = {"cloud_provider": provider, "cloud_region": region}
    if row["_from"] == "codecarbon":
        iso3 = row.get("countryIsoCode") or None
        loc.update(country_iso3=iso3, country_name=row.get("country_name"),
                   region=row.get("state") or row.get("city") or None)
        return Factor(float(row["impact"]), "yearly-average",
                      f"{row.get('providerName') or provider} region {region} grid intensity "
                      f"({row.get('source')}), via codecarbon {cc.version()} cloud/impact.csv",
                      "codecarbon cloud/impact.csv", None, loc)
    base = _region_factor(row["country_iso3"], row["subregion"]) if row["subregion"] \
        else _country_factor(row["country_iso3"])
    loc.update(base.location)
    return Factor(base.g_per_kwh, base.method,
                  f"{provider}:{region} is in {row['city']} ({row['country_iso3']}"
                  f"{'/' + row['subregion'] if row['subregion'] else ''}; greentrack "
                  f"data/cloud_regions.csv from the provider's region list); {base.source}",
                  base.dataset, base.year, loc)


# -- entry points --------------------------------------------------------------------------------------

def resolve_location(config: Config) -> dict[str, Any] | None:
    """Check ``country``/``region``/``cloud`` of a Config; the normalized location or None.

    Raises:
        ConfigError: an unknown country, region or cloud region (with close matches).
    """
    country = resolve_country(config.country) if config.country else None
    out: dict[str, Any] = {}
    if config.cloud:
        provider, region = parse_cloud(config.cloud)
        out.update(cloud_provider=provider, cloud_region=region)
    if config.region:
        country, region_key = resolve_region(country, config.region)
        out["region"] = region_key
    if country:
        out["country_iso3"] = country
        out["country_name"] = cc.global_energy_mix()[country]["country_name"]
    return out or None


def yearly_factor(config: Config) -> Factor | None:
    """The location-based yearly factor for a Config's location (cloud region first, then
    sub-national region, then country), or None when no location is set."""
    loc = resolve_location(config)
    if loc is None:
        return None
    if "cloud_provider" in loc:
        return _cloud_factor(loc["cloud_provider"], loc["cloud_region"])
    if "region" in loc:
        return _region_factor(loc["country_iso3"], loc["region"])
    return _country_factor(loc["country_iso3"])


def world_average() -> Factor:
    """codecarbon's world average, for a run with no location (labelled as such)."""
    src = cc.per_source()
    return Factor(float(src["world_average"]), "world-average",
                  f"world average ({src.get('world_average_source')}), via codecarbon "
                  f"{cc.version()} carbon_intensity_per_source.json; no location was set",
                  "codecarbon carbon_intensity_per_source.json (IEA 2019)", 2019, {})


def cloud_region_factors(provider: str) -> list[tuple[str, Factor]]:
    """``(PROVIDER:REGION, yearly factor)`` of every known region of one cloud provider
    (codecarbon's cloud data, then greentrack's region list), for comparing regions."""
    out = []
    for prov, region in sorted(_cloud_table()):
        if prov == provider:
            out.append((f"{prov}:{region}", _cloud_factor(prov, region)))
    return out


def country_factors(codes: tuple[str, ...]) -> list[tuple[str, Factor]]:
    """``(ISO alpha-3, yearly factor)`` of the countries in ``codes`` that codecarbon's global
    mix has (others are left out)."""
    mix = cc.global_energy_mix()
    return [(code, _country_factor(code)) for code in codes if code in mix]
