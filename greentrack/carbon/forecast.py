"""Forecast of a whole run's energy, emissions, cost and end time from the steps done so far,
each with an interval.

The forecast extrapolates the *recent* rate, joules and seconds per training step including
everything between steps (validation, checkpoints, data loading), over the steps still planned::

    energy_total = energy_so_far + (planned - done) x (dE / dsteps over the recent window)

The recent window (the last :data:`WINDOW` observations) follows a run whose speed changes (warm-up,
a longer sequence length) better than the run-wide mean. Emissions, cost and GPU-hours are the
footprint of the estimated run (:func:`greentrack.carbon.footprint.one_part`: its energy spread
over its span from start to the forecast end, the GPUs this process measures for the span), at
the settings :func:`greentrack.carbon.resolve.settings_for` resolves as for every output: the
intensity (a time series is integrated over the forecast span), the PUE, the prices. Without
an intensity or a price they are ``None``.

**Interval** (:data:`LEVEL`, two-sided): from the spread of the joules (and seconds) per step
between successive observations of the window. Each gap between observations covers ``k`` steps;
with steps independent and alike, its joules have mean ``k mu`` and variance ``k sigma^2``, so
``mu = sum dE / sum k`` and ``sigma^2 = sum((dE - mu k)^2 / k) / (m - 1)`` over the ``m`` gaps.
The steps left (``L``) then cost ``L mu`` with variance ``L sigma^2`` (their own spread) plus
``L^2 sigma^2 / n`` (the error of ``mu`` from ``n`` steps), and the bounds are ``+- t`` standard
deviations (Student's t, ``m - 1`` degrees of freedom). The interval needs two gaps (three
observations); before that the ``*_low``/``*_high`` keys are ``None``. It does not cover a change
of speed still to come (a longer sequence length later in the run), nor the uncertainty of the
intensity factor or of the measurement itself (see the report's methodology). Emissions and
cost bounds follow from the energy and duration bounds.

Example:
    >>> f = Forecast(planned_steps=100)
    >>> for steps, joules, seconds in ((0, 0.0, 0.0), (10, 500.0, 20.0), (20, 1000.0, 40.0)):
    ...     f.observe(steps_done=steps, energy_j=joules, elapsed_s=seconds)
    >>> est = f.estimate()
    >>> est["energy_j"], est["duration_s"], est["energy_j_low"], est["energy_j_high"]
    (5000.0, 200.0, 5000.0, 5000.0)
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any

from greentrack.carbon.footprint import NO_SETTINGS, Settings, one_part, plain_settings
from greentrack.carbon.resolve import settings_for
from greentrack.common.config import Config
from greentrack.common.once import run_key, warn_once
from greentrack.common.units import ENERGY_UNITS, MASS_UNITS, unit_for

log = logging.getLogger("greentrack")

#: Observations kept for the recent rate.
WINDOW = 50
#: Coverage of the forecast interval (two-sided).
LEVEL = 0.90
#: One-sided 0.95 quantiles of Student's t for 1..30 degrees of freedom (any statistics table,
#: e.g. NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2); beyond 30, the normal 1.645.
T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771,
       1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706,
       1.703, 1.701, 1.699, 1.697)
Z95 = 1.645
METHOD = ("recent rate (last {window} observations) x steps left; {level:.0%} interval from the "
          "spread of joules and seconds per step between observations (Student's t)")


def _t95(dof: int) -> float:
    return T95[dof - 1] if dof <= len(T95) else Z95


def _spread(gaps: list[tuple[int, float]], rate: float, steps_seen: int, left: int) -> float | None:
    """Half-width of the interval of ``left`` more steps at ``rate`` per step, from ``gaps`` of
    ``(steps, amount)`` (see the module docstring); None with fewer than two gaps."""
    if len(gaps) < 2 or steps_seen <= 0:
        return None
    var = sum((amount - rate * k) ** 2 / k for k, amount in gaps) / (len(gaps) - 1)
    return _t95(len(gaps) - 1) * math.sqrt(left * var + left * left * var / steps_seen)


class Forecast:
    """Projects a run's totals from ``(steps done, energy, elapsed)`` observations.

    Args:
        planned_steps: optimizer steps the whole run will take (``None``: no forecast).
        settings: the carbon and price settings (:func:`greentrack.carbon.resolve.settings_for`);
            default: none (energy, time and GPU-hours only), or the plain rates below.
        carbon_g_per_kwh: grams CO2e per kWh of IT energy (PUE included), instead of settings.
        price_per_kwh: electricity price per kWh of IT energy (PUE included), likewise.
        currency: the price's currency, for display.
        gpu_hour_price: price per GPU-hour, or ``None``.
        gpus: GPUs this process measures (GPU-seconds = duration x gpus).
    """

    def __init__(self, planned_steps: int | None, *, settings: Settings | None = None,
                 carbon_g_per_kwh: float | None = None, price_per_kwh: float | None = None,
                 currency: str | None = None, gpu_hour_price: float | None = None,
                 gpus: int = 0) -> None:
        self.planned_steps = planned_steps
        if settings is None:
            given = (carbon_g_per_kwh, price_per_kwh, gpu_hour_price, currency)
            settings = (plain_settings(carbon_g_per_kwh, price_per_kwh, gpu_hour_price, currency)
                        if any(v is not None for v in given) else NO_SETTINGS)
        self.settings = settings
        self.currency = settings.prices.currency
        self.gpus = gpus
        self._obs: deque[tuple[int, float, float, float]] = deque(maxlen=WINDOW)

    def observe(self, steps_done: int, energy_j: float, elapsed_s: float,
                now_unix: float | None = None) -> None:
        """Record the run's position: steps done, energy so far, seconds so far (all segments),
        at wall time ``now_unix`` (default: now; the end time is forecast from it)."""
        wall = time.time() if now_unix is None else now_unix
        if self._obs and steps_done < self._obs[-1][0]:
            return
        if self._obs and steps_done == self._obs[-1][0] and len(self._obs) > 1:
            self._obs[-1] = (steps_done, energy_j, elapsed_s, wall)  # same step, newer totals
            return
        self._obs.append((steps_done, energy_j, elapsed_s, wall))

    def estimate(self) -> dict[str, Any] | None:
        """The whole run: ``energy_j``, ``facility_kwh`` (PUE included), ``duration_s``,
        ``remaining_s``, ``end_unix``, ``gpu_hours``, ``emissions_g``, ``cost`` (electricity + GPU-hours; its parts
        ``cost_electricity``, ``cost_gpu_hours``), each of them with ``*_low`` and ``*_high``
        (the :data:`LEVEL` interval; None before three observations), and ``interval`` (level,
        method, observations). ``None`` before two observations or without planned steps."""
        if not self.planned_steps or len(self._obs) < 2:
            return None
        obs = list(self._obs)
        s0, e0, t0, _ = obs[0]
        s1, e1, t1, wall = obs[-1]
        if s1 <= s0:
            return None
        left = max(0, self.planned_steps - s1)
        rate_e, rate_t = (e1 - e0) / (s1 - s0), (t1 - t0) / (s1 - s0)
        gaps = [(b[0] - a[0], b[1] - a[1], b[2] - a[2]) for a, b in zip(obs, obs[1:])
                if b[0] > a[0]]
        half_e = _spread([(k, de) for k, de, _ in gaps], rate_e, s1 - s0, left)
        half_t = _spread([(k, dt) for k, _, dt in gaps], rate_t, s1 - s0, left)
        energy, duration = e1 + left * rate_e, t1 + left * rate_t
        out: dict[str, Any] = {
            "steps_done": s1, "planned_steps": self.planned_steps, "currency": self.currency,
            "interval": {"level": LEVEL, "method": METHOD.format(window=WINDOW, level=LEVEL),
                         "observations": len(obs), "known": half_e is not None}}
        bounds = {"": (energy, duration)}
        if half_e is not None and half_t is not None:
            bounds["_low"] = (max(e1, energy - half_e), max(t1, duration - half_t))
            bounds["_high"] = (energy + half_e, duration + half_t)
        for suffix in ("", "_low", "_high"):
            if suffix not in bounds:
                for key in ("energy_j", "energy_kwh", "facility_kwh", "duration_s", "remaining_s",
                            "end_unix", "gpu_hours", "gpu_seconds", "emissions_g", "cost",
                            "cost_electricity", "cost_gpu_hours"):
                    out[key + suffix] = None
                continue
            e, d = bounds[suffix]
            out.update({f"{k}{suffix}": v for k, v in self.figures(e, d, t1, wall).items()})
        return out

    def figures(self, energy_j: float, duration_s: float, elapsed_s: float,
                wall: float) -> dict[str, Any]:
        """Every figure of a run of ``energy_j`` and ``duration_s``, seen at ``elapsed_s`` (wall
        time ``wall``): the estimate and its bounds use it, and so does a report's check. The
        footprint of that run (:func:`greentrack.carbon.footprint.one_part`)."""
        start = wall - elapsed_s
        fp = one_part(energy_j, start, start + max(duration_s, 0.0), self.settings,
                      gpu_seconds=max(duration_s, 0.0) * self.gpus)
        c = fp.cost
        return {"energy_j": energy_j, "energy_kwh": fp.it_kwh, "facility_kwh": fp.facility_kwh,
                "duration_s": duration_s,
                "remaining_s": duration_s - elapsed_s, "end_unix": wall + duration_s - elapsed_s,
                "gpu_hours": fp.gpu_hours, "gpu_seconds": fp.gpu_seconds,
                "emissions_g": fp.location_g,
                "cost": None if c is None else c.total,
                "cost_electricity": None if c is None else c.electricity,
                "cost_gpu_hours": None if c is None or not self.gpus else c.gpu_hours}

    @classmethod
    def for_config(cls, planned_steps: int | None, config: Config, gpus: int = 0) -> Forecast:
        """A forecast at the carbon and price settings of a :class:`greentrack.Config`
        (resolved as every output resolves them), for a process measuring ``gpus`` GPUs."""
        try:
            settings = settings_for(config)
        except Exception as e:  # noqa: BLE001 - a forecast is a convenience, never an error
            # each meter of a run (a second fit(), a resumed run) asks again: said once per run
            warn_once(log, run_key(config.run_dir, config.run_id), "forecast-settings",
                      "greentrack: no carbon or price settings for the forecast: %s", e)
            settings = NO_SETTINGS
        return cls(planned_steps, settings=settings, gpus=gpus)


def _range(est: dict[str, Any], key: str, scale: float, fmt: str = ".3g") -> str:
    lo, hi = est.get(key + "_low"), est.get(key + "_high")
    if lo is None or hi is None:
        return ""
    return f" [{lo * scale:{fmt}}-{hi * scale:{fmt}}]"


HMS = "%H:%M:%S"


def format_forecast(est: dict[str, Any]) -> str:
    """One line for logs and progress displays; ``[low-high]`` is the interval (see
    :data:`LEVEL`), absent until three observations. Energy and emissions are in the unit of the
    estimate (``412 Wh``, ``27.7 mgCO2e``), their bounds in the same unit."""
    level = f" ({est['interval']['level']:.0%} intervals in [])" if est["interval"]["known"] \
        else " (interval after 3 observations)"
    energy, per_j = unit_for(est["energy_j"], ENERGY_UNITS)
    parts = [f"step {est['steps_done']}/{est['planned_steps']}",
             f"forecast {est['energy_j'] / per_j:.3g} {energy}{_range(est, 'energy_j', 1 / per_j)}",
             f"{est['duration_s'] / 60:.1f} min{_range(est, 'duration_s', 1 / 60, '.1f')} "
             f"({est['remaining_s'] / 60:.1f} min left)",
             "ends " + time.strftime(HMS, time.gmtime(est["end_unix"])) + " UTC"
             + (f" [{time.strftime(HMS, time.gmtime(est['end_unix_low']))}-"
                f"{time.strftime(HMS, time.gmtime(est['end_unix_high']))}]"
                if est.get("end_unix_low") is not None else "")]
    if est.get("emissions_g") is not None:
        mass, per_g = unit_for(est["emissions_g"], MASS_UNITS)
        parts.append(f"{est['emissions_g'] / per_g:.3g} {mass}CO2e"
                     f"{_range(est, 'emissions_g', 1 / per_g)}")
    if est.get("cost") is not None:
        parts.append((f"{est['cost']:.3g} {est.get('currency') or ''}".rstrip())
                     + _range(est, "cost", 1))
    return "greentrack: " + ", ".join(parts) + level


__all__ = ["Forecast", "format_forecast", "LEVEL", "WINDOW"]
