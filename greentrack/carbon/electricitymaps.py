"""Optional live intensity from the Electricity Maps API (v3), with an on-disk cache.

Off unless a token is set in ``GREENTRACK_ELECTRICITYMAPS_TOKEN``. The token is read from the
environment only (never from Config, whose settings are written into run stores and reports), is
sent only in the ``auth-token`` header, and is scrubbed from every message this module produces.

Settings (environment, or ``Config.extra``): ``GREENTRACK_ELECTRICITYMAPS_ZONE`` (default: from the
country/region/cloud location, e.g. ``FR``, ``SE-SE3``, ``CA-QC``), ``GREENTRACK_ELECTRICITYMAPS_URL``
(default ``https://api.electricitymaps.com``), ``GREENTRACK_CACHE_DIR`` (default
``~/.cache/greentrack``). Past hours are cached for good; the latest value for 10 minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from greentrack.carbon.series import IntensitySeries, parse_time
from greentrack.common.config import Config
from greentrack.common.errors import GreenTrackError
from greentrack.common.files import make_dirs
from greentrack.common.units import utc

DEFAULT_URL = "https://api.electricitymaps.com"
LATEST_TTL_S = 600.0
CHUNK_S = 7 * 86400.0  # past-range answers at most ~10 days of hourly data per request
FINAL_AFTER_S = 6 * 3600.0  # hours older than this are final and cached for good
TOKEN_ENV = "GREENTRACK_ELECTRICITYMAPS_TOKEN"


class ElectricityMapsError(GreenTrackError):
    """The API could not give an answer (network, HTTP status, unexpected body)."""


def _setting(config: Config, name: str) -> str | None:
    value = os.environ.get(f"GREENTRACK_{name.upper()}")
    if value:
        return value
    extra = getattr(config, "extra", None) or {}
    got = extra.get(name)
    return str(got) if got else None


def zone_for(config: Config, location: dict[str, Any] | None) -> str | None:
    """The Electricity Maps zone key: explicit setting, else derived from the location."""
    explicit = _setting(config, "electricitymaps_zone")
    if explicit:
        return explicit
    if not location or not location.get("country_iso3"):
        return None
    import pycountry
    country = pycountry.countries.get(alpha_3=location["country_iso3"])
    if country is None:
        return None
    a2, region = str(country.alpha_2), location.get("region")
    if region and location["country_iso3"] in ("SWE", "NOR"):
        return f"{a2}-{region}"
    if region and location["country_iso3"] == "CAN":
        for sub in pycountry.subdivisions.get(country_code="CA") or []:  # type: ignore[no-untyped-call]
            if sub.name.lower() == str(region).lower():
                return str(sub.code)
    if location["country_iso3"] == "USA":
        return None  # US zones are balancing authorities (US-CAL-CISO...): set the zone explicitly
    return a2


class ElectricityMaps:
    """A small client: ``latest()`` and ``past_range(start, end)``.

    Args:
        token: the API token (kept private: never logged, cached or returned).
        zone: zone key, e.g. ``FR``.
        base_url: API root (tests point it at a local server).
        cache_dir: where responses are cached.
        timeout_s: per request.
    """

    def __init__(self, token: str, zone: str, base_url: str = DEFAULT_URL,
                 cache_dir: Path | None = None, timeout_s: float = 5.0) -> None:
        self._token = token
        self.zone = zone
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, config: Config, location: dict[str, Any] | None) -> "ElectricityMaps | None":
        """A client when a token is set, else None. Raises ElectricityMapsError without a zone."""
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
        zone = zone_for(config, location)
        if not zone:
            raise ElectricityMapsError("no Electricity Maps zone: set GREENTRACK_ELECTRICITYMAPS_ZONE "
                                       "(e.g. FR, DE, US-CAL-CISO) or a country")
        cache = _setting(config, "cache_dir")
        cache_dir = Path(cache) if cache else Path.home() / ".cache" / "greentrack"
        return cls(token, zone, _setting(config, "electricitymaps_url") or DEFAULT_URL,
                   cache_dir / "electricitymaps")

    # -- HTTP + cache ------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _cache_path(self, path: str, params: dict[str, str]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps([self.base_url, path, sorted(params.items())])
        return self.cache_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def _get(self, path: str, params: dict[str, str], ttl_s: float | None) -> dict[str, Any]:
        cached = self._cache_path(path, params)
        if cached is not None and cached.exists():
            try:
                entry = json.loads(cached.read_text())
                if ttl_s is None or time.time() - float(entry["fetched_unix"]) < ttl_s:
                    return dict(entry["body"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged cache entry is refetched
        # urllib.request (with http.client and email) loads only when a run asks the API: a
        # tracker without Electricity Maps never pays its ~50 ms of imports
        import urllib.error
        import urllib.parse
        import urllib.request
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, headers={"auth-token": self._token,
                                                   "User-Agent": "greentrack"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise ElectricityMapsError(self._scrub(f"Electricity Maps {path} for zone {self.zone}: "
                                                   f"HTTP {e.code} {e.reason}")) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ElectricityMapsError(self._scrub(f"Electricity Maps {path} for zone {self.zone}: "
                                                   f"{getattr(e, 'reason', None) or e}")) from None
        if not isinstance(body, dict):
            raise ElectricityMapsError(f"Electricity Maps {path}: unexpected answer")
        if cached is not None:
            try:
                make_dirs(cached.parent)  # never group- or world-writable
                tmp = cached.with_suffix(".tmp")
                tmp.write_text(json.dumps({"fetched_unix": time.time(), "body": body}))
                os.replace(tmp, cached)
            except OSError:
                pass  # caching is best effort
        return body

    # -- API ---------------------------------------------------------------------------------
    def latest(self) -> tuple[float, str]:
        """(gCO2e/kWh, source line) of the zone's latest hour."""
        body = self._get("/v3/carbon-intensity/latest", {"zone": self.zone}, LATEST_TTL_S)
        value = body.get("carbonIntensity")
        if not isinstance(value, (int, float)):
            raise ElectricityMapsError("Electricity Maps latest: no carbonIntensity in the answer")
        kind = body.get("emissionFactorType", "lifecycle")
        return float(value), (f"Electricity Maps API, zone {self.zone}, {kind}, hour of "
                              f"{body.get('datetime', '?')}")

    def past_range(self, start_unix: float, end_unix: float) -> IntensitySeries:
        """Hourly intensities covering ``[start_unix, end_unix]`` (whole hours), as a series."""
        t0 = float(int(start_unix // 3600) * 3600)
        rows: dict[float, float] = {}
        kinds: set[str] = set()
        now = time.time()
        while t0 < end_unix:
            t1 = min(t0 + CHUNK_S, float(int(end_unix // 3600 + 1) * 3600))
            params = {"zone": self.zone, "start": utc(t0), "end": utc(t1),
                      "emissionFactorType": "direct"}
            body = self._get("/v3/carbon-intensity/past-range", params,
                             None if t1 < now - FINAL_AFTER_S else LATEST_TTL_S)
            for item in body.get("data") or body.get("history") or []:
                try:
                    rows[parse_time(str(item["datetime"]))] = float(item["carbonIntensity"])
                    kinds.add(str(item.get("emissionFactorType", "direct")))
                except (KeyError, TypeError, ValueError):
                    continue
            t0 = t1
        if not rows:
            raise ElectricityMapsError(f"Electricity Maps past-range for zone {self.zone}: no data "
                                       "for the run's period")
        starts = sorted(rows)
        ends = [b for b in starts[1:]] + [starts[-1] + 3600.0]
        ends = [min(e, s + 3600.0) for s, e in zip(starts, ends)]
        return IntensitySeries(starts, ends, [rows[s] for s in starts],
                               source=f"Electricity Maps API past-range, zone {self.zone}, "
                                      f"{'/'.join(sorted(kinds)) or 'direct'}, hourly",
                               zone=self.zone, column="carbonIntensity",
                               extra={"rows": len(starts), "interval_s": 3600.0})


