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
from typing import Any

from greentrack.errors import ConfigError

log = logging.getLogger("greentrack")
MEMO_S = 60.0
_memo: dict[tuple[Any, ...], tuple[float, tuple[float, str] | None]] = {}
_lock = threading.Lock()


def live_intensity(config: Any) -> tuple[float, str] | None:
    """``(gCO2e/kWh, source)`` in force now (the world average, labelled, when no location is set).

    Never raises for a network or file problem (it falls back and logs once); raises
    :class:`~greentrack.errors.ConfigError` only for an invalid setting (unknown country...), so an
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


def _resolve(config: Any, now: float) -> tuple[float, str] | None:
    from greentrack.carbon.resolve import intensity_plan

    plan = intensity_plan(config)
    if plan.kind == "user":
        return float(config.carbon_intensity_g_per_kwh), "user setting (carbon_intensity_g_per_kwh)"
    if plan.kind == "csv":
        from greentrack.carbon.series import read_csv
        try:
            series = read_csv(config.intensity_csv)
            v = series.value_at(now)
            if v is not None:
                return v, f"{series.source}, interval covering now"
            log.info("greentrack: %s does not cover the current time", series.source)
        except ConfigError as e:
            log.warning("greentrack: intensity CSV unusable for live figures: %s", e)
    if plan.kind == "electricitymaps":
        from greentrack.carbon.electricitymaps import ElectricityMapsError
        try:
            got: tuple[float, str] = plan.client.latest()
            return got
        except ElectricityMapsError as e:
            log.warning("greentrack: live intensity falls back to yearly data: %s", e)
    elif plan.error:
        log.warning("greentrack: %s", plan.error)
    if plan.fallback is None:
        return None  # no location and no codecarbon data: no live emissions, not an error
    return plan.fallback.g_per_kwh, plan.fallback.source
