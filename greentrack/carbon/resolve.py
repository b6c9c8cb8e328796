"""The one place that decides which carbon and cost settings apply, and which intensity and PUE.

Live metrics (the Prometheus exporter), the forecast and every report call these functions, so the
same run with the same settings gives the same grams everywhere.

Precedence of a setting (:func:`config_for_run`): an explicit flag or argument, then the setting
recorded in the run when it started, then the environment (``GREENTRACK_*``), then the default.

Precedence of the location-based intensity (:func:`intensity_plan`):

1. ``carbon_intensity_g_per_kwh`` (the user's factor);
2. ``intensity_csv``: a time series (integrated against the run's energy over time; live: the
   interval covering now);
3. Electricity Maps when ``GREENTRACK_ELECTRICITYMAPS_TOKEN`` is set (past hours, or the latest);
4. the yearly factor of the cloud region, sub-national region or country (codecarbon's data);
5. codecarbon's world average, labelled "no location was set".

The PUE in use (:func:`settings_for`'s ``pue``): the ``pue`` setting, else the cloud provider's
default, else the default for an unknown data centre (1.56, Uptime Institute 2024); each with its
source, and always applied (by :mod:`greentrack.carbon.footprint` alone): facility energy = IT
energy x PUE, in live metrics and reports alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from greentrack.carbon.electricitymaps import ElectricityMaps, ElectricityMapsError
from greentrack.carbon.factors import embodied_settings, positive, resolve_pue
from greentrack.carbon.footprint import Prices, Pue, Settings
from greentrack.carbon.location import Factor, resolve_location, world_average, yearly_factor
from greentrack.carbon.series import read_csv
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError

#: The settings that decide carbon and cost figures (and are recorded with every run).
CARBON_FIELDS = ("country", "region", "cloud", "carbon_intensity_g_per_kwh", "intensity_csv",
                 "market_factor_g_per_kwh", "pue", "electricity_price", "gpu_hour_price",
                 "currency")


#: Settings recorded with a run that its disclosures state (the model card's training type, the
#: emissions.csv rows' project name).
DISCLOSURE_FIELDS = ("training_type", "project_name")

#: Country, region and cloud together name one place: a layer that sets any of them replaces all.
LOCATION_FIELDS = ("country", "region", "cloud")


def config_for_run(recorded: Mapping[str, Any] | None, explicit: Mapping[str, Any],
                   env: Mapping[str, str] | None = None) -> Config:
    """The Config to account a run with: ``explicit`` (flags) over the settings ``recorded`` in
    the run at start over the environment over defaults. ``extra`` tables merge the same way;
    country, region and cloud go together (``--country NO`` drops a recorded ``region=SE3``).

    Raises:
        ConfigError: an invalid value at any level.
    """
    base = Config.from_env(env)
    values: dict[str, Any] = {}
    extra = dict(base.extra)
    for layer in (recorded or {}, explicit):
        given = {k: v for k, v in layer.items() if k in CARBON_FIELDS + DISCLOSURE_FIELDS
                 and v is not None}
        if any(k in given for k in LOCATION_FIELDS):  # a location is one setting: all or none
            values.update(dict.fromkeys(LOCATION_FIELDS))
        if "training_type" in given:  # how a lower layer's value was inferred no longer applies
            extra.pop("training_type_basis", None)
        values.update(given)
        if isinstance(layer.get("extra"), dict):
            extra.update(layer["extra"])
    values.update({k: v for k, v in explicit.items() if k not in CARBON_FIELDS + DISCLOSURE_FIELDS
                   and k != "extra" and v is not None})
    return base.replace(**values, extra=extra)


@dataclass(frozen=True)
class IntensityPlan:
    """Which source gives the location-based intensity (see the module docstring).

    Attributes:
        kind: ``user``, ``csv``, ``electricitymaps``, ``yearly`` or ``world``.
        base: the location's yearly factor (None without a location); the fallback of a series.
        fallback: what a series falls back to: ``base``, else the world average (None without
            codecarbon's data).
        client: the Electricity Maps client, for ``electricitymaps``.
        error: why a better source was skipped (shown as a warning), or None.
    """

    kind: str
    base: Any
    fallback: Any
    client: Any = None
    error: str | None = None


def intensity_plan(config: Config) -> IntensityPlan:
    """Decide the intensity source for ``config``; validates the location settings.

    Raises:
        ConfigError: an unknown country, region or cloud region.
    """

    base = yearly_factor(config)  # validates country/region/cloud even when not used
    fallback = base or _world_average_or_none()
    if config.carbon_intensity_g_per_kwh is not None:
        return IntensityPlan("user", base, fallback)
    if config.intensity_csv:
        return IntensityPlan("csv", base, fallback)
    error = None
    try:
        client = ElectricityMaps.from_config(config, base.location if base else None)
        if client is not None:
            return IntensityPlan("electricitymaps", base, fallback, client)
    except ElectricityMapsError as e:
        error = f"{e}; used {fallback.source if fallback else 'no intensity'}"
    return IntensityPlan("yearly" if base is not None else "world", base, fallback, error=error)


def _world_average_or_none() -> Any:
    """codecarbon's world average, or None without codecarbon's data: measuring never needs
    codecarbon (a report does, and says so)."""
    try:
        return world_average()
    except ConfigError:
        return None


def settings_for(config: Config, span: tuple[float, float] | None = None,
                 key: str = "") -> "Settings":
    """Everything the footprint needs of ``config``, resolved: location, PUE, the intensity (a
    factor, or a series over ``span``; ``None`` for the live exporter: Electricity Maps' latest
    value), market factor, prices and embodied settings. All the I/O of carbon accounting
    happens here (codecarbon's tables, the intensity CSV, the Electricity Maps API), so
    :func:`greentrack.carbon.footprint.footprint` stays pure.

    Raises:
        ConfigError: an invalid location, intensity CSV, price or embodied setting.
    """

    location = resolve_location(config) or {}
    plan = intensity_plan(config)
    notes: list[str] = []
    factor, series, dataset = plan.fallback, None, None
    if plan.kind == "user" and config.carbon_intensity_g_per_kwh is not None:
        factor = Factor(float(config.carbon_intensity_g_per_kwh), "user-setting",
                        "user setting (carbon_intensity_g_per_kwh)", "user", None,
                        dict(plan.base.location) if plan.base else {})
    elif plan.kind == "csv" and config.intensity_csv:
        series, dataset = read_csv(config.intensity_csv), "intensity CSV"
    elif plan.kind == "electricitymaps":
        try:
            if span is None:
                value, source = plan.client.latest()
                factor = Factor(float(value), "time-resolved", source, "Electricity Maps API",
                                None, dict(plan.base.location) if plan.base else {})
            else:
                series, dataset = plan.client.past_range(*span), "Electricity Maps API"
        except ElectricityMapsError as e:
            notes.append(f"{e}; used {factor.source if factor else 'no intensity'}")
    if plan.error:
        notes.append(plan.error)
    at_fallback = series is None and factor is plan.fallback  # no better source was had
    if at_fallback and plan.base is None and plan.kind != "user":
        notes.append("no location set (--country, --region, --cloud or --carbon-intensity): "
                     "emissions use the world average and are only indicative")
    prices = [None if getattr(config, name, None) is None else
              positive(name, getattr(config, name), f"must be {what} > 0 (leave it unset for none)")
              for name, what in (("electricity_price", "a price per kWh"),
                                 ("gpu_hour_price", "a price per GPU-hour"))]
    market = getattr(config, "market_factor_g_per_kwh", None)
    return Settings(location=location, pue=Pue(**resolve_pue(config, location)), factor=factor,
                    series=series, series_dataset=dataset,
                    market_g_per_kwh=None if market is None else float(market),
                    prices=Prices(prices[0], prices[1], getattr(config, "currency", None)),
                    embodied=embodied_settings(config), notes=tuple(notes), key=key)


def settings_key(recorded: Mapping[str, Any] | None) -> str:
    """The carbon and price settings a store recorded, canonical: stores with the same key are
    counted at the same settings."""
    import json
    rec = recorded or {}
    picked = {k: rec.get(k) for k in CARBON_FIELDS + ("extra",) if rec.get(k) is not None}
    return json.dumps(picked, sort_keys=True, default=str)
