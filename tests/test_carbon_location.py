"""Location and yearly intensity: every figure equals what codecarbon's own DataSource returns."""

from __future__ import annotations

import pytest

from greentrack.carbon import factors
from greentrack.carbon.location import (parse_cloud, resolve_country, resolve_location,
                                        world_average, yearly_factor)
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError


@pytest.fixture(scope="module")
def ds():  # codecarbon's own loader, the reference these tests compare against
    from codecarbon.input import DataSource
    return DataSource()


@pytest.mark.parametrize("given", ["FRA", "fra", "FR", "fr", "France", " france "])
def test_country_codes_and_names_resolve_to_codecarbon_yearly_factor(ds, given: str) -> None:
    rec = ds.get_global_energy_mix_data()["FRA"]
    f = yearly_factor(Config(country=given))
    assert f.g_per_kwh == rec["carbon_intensity"]
    assert f.year == rec["year"] and str(rec["year"]) in f.source
    assert "global_energy_mix.json" in f.source and f.method == "yearly-average"
    assert f.location == {"country_iso3": "FRA", "country_name": "France"}


def test_every_country_in_codecarbon_resolves(ds) -> None:
    mix = ds.get_global_energy_mix_data()
    for code, rec in mix.items():
        assert yearly_factor(Config(country=code)).g_per_kwh == rec["carbon_intensity"]


def test_us_state_uses_egrid_converted_like_codecarbon(ds) -> None:
    from codecarbon.core.units import EmissionsPerKWh
    states = ds.get_country_emissions_data("usa")
    expected = EmissionsPerKWh.from_lbs_per_mWh(states["texas"]["emissions"]).kgs_per_kWh * 1000
    for kw in ({"country": "USA", "region": "TX"}, {"country": "US", "region": "texas"},
               {"region": "US-TX"}, {"region": "Texas"}):
        f = yearly_factor(Config(**kw))
        assert f.g_per_kwh == pytest.approx(expected, rel=1e-12)
        assert f.year == states["_source"]["year"] and "eGRID" in f.source
        assert f.location["region"] == "texas"


def test_canadian_province_is_its_mix_times_codecarbon_source_factors(ds) -> None:
    mix = ds.get_country_energy_mix_data("can")["alberta"]
    per = ds.get_carbon_intensity_per_source_data()
    names = {"naturalGas": "natural_gas", "hydro": "hydroelectricity", "biomass": "biomass",
             "coal": "coal", "nuclear": "nuclear", "petroleum": "petroleum", "solar": "solar",
             "wind": "wind"}
    expected = sum(mix[k] / mix["total"] * per[v] for k, v in names.items())
    for kw in ({"country": "CAN", "region": "AB"}, {"country": "CA", "region": "Alberta"},
               {"region": "CA-AB"}):
        assert yearly_factor(Config(**kw)).g_per_kwh == pytest.approx(expected, rel=1e-12)
    # hydro-heavy Quebec is far cleaner than coal/gas Alberta
    assert yearly_factor(Config(country="CAN", region="QC")).g_per_kwh < expected / 5


def test_nordic_zone_and_chinese_province(ds) -> None:
    nordic = ds.get_nordic_country_energy_mix_data()["data"]["SE3"]
    f = yearly_factor(Config(country="SE", region="se3"))
    assert f.g_per_kwh == nordic["emission_factor"] and f.year == nordic["year"]
    china = ds.get_china_provincial_emissions_data()["data"]["CN-BJ"]
    assert yearly_factor(Config(country="CHN", region="Beijing")).g_per_kwh == china["emission_factor"]


def test_gcp_region_uses_codecarbon_cloud_impact(ds) -> None:
    df = ds.get_cloud_emissions_data()
    row = df[(df["provider"] == "gcp") & (df["region"] == "europe-west9")].iloc[0]
    f = yearly_factor(Config(cloud="gcp:europe-west9"))
    assert f.g_per_kwh == float(row["impact"])
    assert f.location["cloud_provider"] == "gcp" and f.location["country_iso3"] == "FRA"
    assert yearly_factor(Config(cloud="google:europe-west9")).g_per_kwh == float(row["impact"])


def test_aws_and_azure_regions_map_to_codecarbon_location_data(ds) -> None:
    from codecarbon.core.units import EmissionsPerKWh
    virginia = ds.get_country_emissions_data("usa")["virginia"]["emissions"]
    aws = yearly_factor(Config(cloud="aws:us-east-1"))
    assert aws.g_per_kwh == pytest.approx(EmissionsPerKWh.from_lbs_per_mWh(virginia).kgs_per_kWh * 1000)
    assert "cloud_regions.csv" in aws.source and aws.location["cloud_region"] == "us-east-1"
    azure = yearly_factor(Config(cloud="azure:westeurope"))
    assert azure.g_per_kwh == ds.get_global_energy_mix_data()["NLD"]["carbon_intensity"]


def test_cloud_wins_over_country_and_no_location_is_none() -> None:
    f = yearly_factor(Config(country="USA", cloud="gcp:europe-west9"))
    assert f.location["cloud_region"] == "europe-west9"
    assert yearly_factor(Config()) is None and resolve_location(Config()) is None
    w = world_average()
    assert w.method == "world-average" and w.g_per_kwh == 475 and "no location" in w.source


@pytest.mark.parametrize("kw, setting, hint", [
    ({"country": "Frnace"}, "country", "FRA (France)"),
    ({"country": "Germny"}, "country", "DEU (Germany)"),
    ({"country": "ZZ"}, "country", "alpha-3"),
    ({"country": "USA", "region": "Californa"}, "region", "california"),
    ({"country": "FRA", "region": "Bretagne"}, "region", "no sub-national data for FRA"),
    ({"region": "Atlantis"}, "region", "sub-national data exists"),
    ({"cloud": "gcp:europe-west99"}, "cloud", "gcp:europe-west9"),
    ({"cloud": "aws:us-east-7"}, "cloud", "aws:us-east-1"),
    ({"cloud": "ibm:eu-de"}, "cloud", "known: gcp, aws, azure"),
    ({"cloud": "europe-west9"}, "cloud", "PROVIDER:REGION"),
])
def test_unknown_places_are_one_line_errors_with_close_matches(kw: dict, setting: str, hint: str) -> None:
    with pytest.raises(ConfigError) as e:
        yearly_factor(Config(**kw))
    assert e.value.setting == setting and hint in str(e.value) and "\n" not in str(e.value)


def test_resolvers_directly() -> None:
    assert resolve_country("gb") == "GBR"
    assert parse_cloud("Azure:SwedenCentral") == ("azure", "swedencentral")


def test_pue_defaults_carry_sources_and_user_value_wins() -> None:
    unknown = factors.resolve_pue(Config(), None)
    assert unknown["value"] == 1.56 and unknown["default"] and "Uptime Institute" in unknown["source"]
    for provider, pue in (("gcp:europe-west9", 1.12), ("aws:us-east-1", 1.2), ("azure:westeurope", 1.12)):
        cfg = Config(cloud=provider)
        got = factors.resolve_pue(cfg, resolve_location(cfg))
        assert got["value"] == pue and "Green Algorithms" in got["source"]
    user = factors.resolve_pue(Config(pue=1.3, cloud="gcp:europe-west9"), None)
    assert user == {"value": 1.3, "source": "user setting (pue)", "default": False,
                    "source_id": "setting"}
