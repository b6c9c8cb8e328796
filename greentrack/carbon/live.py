"""The carbon intensity in force now, for live gauges (the Prometheus exporter).

Same precedence as the report (:func:`greentrack.carbon.resolve.intensity_plan`), evaluated at the
current time: the user's factor; the intensity CSV's interval covering now; the Electricity Maps
latest value (cached 10 minutes on disk); the location's yearly factor; the world average. Results are memoized per setting
for a minute so a scrape never waits on files or the network more than once a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from greentrack.carbon.resolve import settings_for
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError

if TYPE_CHECKING:
    from greentrack.carbon.footprint import Settings

log = logging.getLogger("greentrack")
MEMO_S = 60.0
_memo: dict[tuple[Any, ...], tuple[float, tuple[float, str] | None]] = {}
_lock = threading.Lock()


def live_intensity(config: Config) -> tuple[float, str] | None:
    """``(gCO2e/kWh, source)`` in force now (the world average, labelled, when no location is set).

    Never raises for a network or file problem (it falls back and logs once); raises
    :class:`~greentrack.common.errors.ConfigError` only for an invalid setting (unknown country...), so an
    exporter can refuse a bad configuration at start.
    """
    import os
    key = (config.carbon_intensity_g_per_kwh, config.intensity_csv, config.country, config.region,
           config.cloud, os.environ.get("GREENTRACK_ELECTRICITYMAPS_TOKEN", "") != "",
           os.environ.get("GREENTRACK_ELECTRICITYMAPS_ZONE"),
           os.environ.get("GREENTRACK_ELECTRICITYMAPS_URL"), repr(getattr(config, "extra", None)))
    now = time.time()
    with _lock:
        hit = _memo.get(key)
        if hit is not None and now - hit[0] < MEMO_S:
            return hit[1]
    value = _resolve(config, now)
    with _lock:
        _memo[key] = (now, value)
    return value


def _resolve(config: Config, now: float) -> tuple[float, str] | None:
    try:
        settings = settings_for(config)
    except ConfigError as e:
        if not config.intensity_csv:
            raise
        log.warning("greentrack: intensity CSV unusable for live figures: %s", e)
        settings = settings_for(config.replace(intensity_csv=None))
    for note in settings.notes:  # a provider that failed: said; no location: the gauge's source
        if not note.startswith("no location set"):
            log.warning("greentrack: live intensity falls back: %s", note)
    return intensity_now(settings, now)


def intensity_now(settings: Settings | None, t_unix: float) -> tuple[float, str] | None:
    """``(gCO2e/kWh, source)`` in force at ``t_unix``: a series' interval holding it, else the
    factor (the location's, the user's, the world average); None without any."""
    if settings is None:
        return None
    if settings.series is not None:
        value = settings.series.value_at(t_unix)
        if value is not None:
            return value, f"{settings.series.source}, interval covering now"
        log.info("greentrack: %s does not cover the current time", settings.series.source)
    if settings.factor is None:
        return None  # no location and no codecarbon data: no live emissions, not an error
    return settings.factor.g_per_kwh, settings.factor.source


def intensity_source_id(settings: Settings | None, t_unix: float) -> str:
    """A short id of where the intensity in force at ``t_unix`` comes from, for a bounded metric
    label: the method, the country's ISO code and the data year where known
    (``yearly-average-fra-2023``, ``world-average-2023``, ``user-setting``, ``time-resolved``);
    ``unknown`` without one. The report cites the source in full."""
    if settings is None:
        return "unknown"
    if settings.series is not None and settings.series.value_at(t_unix) is not None:
        return "time-resolved"
    factor = settings.factor
    if factor is None:
        return "unknown"
    parts = [factor.method]
    iso = str(factor.location.get("country_iso3") or "")
    if factor.method == "yearly-average" and iso.isalpha() and len(iso) == 3:
        parts.append(iso.lower())
    if isinstance(factor.year, int) and 1900 < factor.year < 2200:
        parts.append(str(factor.year))
    sid = "-".join(parts)
    return sid if len(sid) <= 40 and sid.replace("-", "").isalnum() else "unknown"

