"""Forecast of a whole run's energy and duration from the steps done so far.

The forecast extrapolates the *recent* rate, joules and seconds per training step including
everything between steps (validation, checkpoints, data loading), over the steps still planned::

    energy_total = energy_so_far + (planned - done) x (dE / dsteps over the recent window)

The recent window (the last :data:`WINDOW` observations) follows a run whose speed changes (warm-up,
a longer sequence length) better than the run-wide mean. Emissions and cost follow from the energy
when the run has the settings for them: a location or factor (``country``, ``region``, ``cloud``,
``carbon_intensity_g_per_kwh``, ``intensity_csv``), resolved by :mod:`greentrack.carbon` as the
reports do and times the PUE, and an ``electricity_price`` (per kWh of facility energy, likewise);
without them they are ``None``.

Example:
    >>> f = Forecast(planned_steps=100)
    >>> f.observe(steps_done=0, energy_j=0.0, elapsed_s=0.0)
    >>> f.observe(steps_done=10, energy_j=500.0, elapsed_s=20.0)
    >>> est = f.estimate()
    >>> est["energy_j"], est["duration_s"]
    (5000.0, 200.0)
"""

from __future__ import annotations

import logging
from greentrack.units import J_PER_KWH
from collections import deque
from typing import Any

log = logging.getLogger("greentrack")

#: Observations kept for the recent rate.
WINDOW = 50


class Forecast:
    """Projects a run's totals from ``(steps done, energy, elapsed)`` observations.

    Args:
        planned_steps: optimizer steps the whole run will take (``None``: no forecast).
        carbon_g_per_kwh: grams CO2e per kWh of IT energy (PUE included), or ``None``.
        price_per_kwh: electricity price per kWh of IT energy (PUE included), or ``None``.
        currency: the price's currency, for display.
    """

    def __init__(self, planned_steps: int | None, *, carbon_g_per_kwh: float | None = None,
                 price_per_kwh: float | None = None, currency: str | None = None) -> None:
        self.planned_steps = planned_steps
        self.carbon_g_per_kwh = carbon_g_per_kwh
        self.price_per_kwh = price_per_kwh
        self.currency = currency
        self._obs: deque[tuple[int, float, float]] = deque(maxlen=WINDOW)

    def observe(self, steps_done: int, energy_j: float, elapsed_s: float) -> None:
        """Record the run's position: steps done, energy so far, seconds so far (all segments)."""
        if self._obs and steps_done < self._obs[-1][0]:
            return
        if self._obs and steps_done == self._obs[-1][0] and len(self._obs) > 1:
            self._obs[-1] = (steps_done, energy_j, elapsed_s)  # same step, newer totals
            return
        self._obs.append((steps_done, energy_j, elapsed_s))

    def estimate(self) -> dict[str, Any] | None:
        """``{energy_j, duration_s, remaining_s, emissions_g, cost, ...}`` for the whole run, or
        ``None`` before two observations or without planned steps."""
        if not self.planned_steps or len(self._obs) < 2:
            return None
        s0, e0, t0 = self._obs[0]
        s1, e1, t1 = self._obs[-1]
        if s1 <= s0:
            return None
        left = max(0, self.planned_steps - s1)
        energy = e1 + left * (e1 - e0) / (s1 - s0)
        duration = t1 + left * (t1 - t0) / (s1 - s0)
        kwh = energy / J_PER_KWH
        return {
            "steps_done": s1, "planned_steps": self.planned_steps,
            "energy_j": energy, "energy_kwh": kwh, "duration_s": duration,
            "remaining_s": duration - t1,
            "emissions_g": kwh * self.carbon_g_per_kwh if self.carbon_g_per_kwh is not None else None,
            "cost": kwh * self.price_per_kwh if self.price_per_kwh is not None else None,
            "currency": self.currency,
        }

    @classmethod
    def for_config(cls, planned_steps: int | None, config: Any) -> Forecast:
        """A forecast using the carbon and price settings of a :class:`greentrack.Config`."""
        g, price = _intensity(config), getattr(config, "electricity_price", None)
        pue = _pue(config) if g is not None or price is not None else 1.0
        return cls(planned_steps, carbon_g_per_kwh=None if g is None else g * pue,
                   price_per_kwh=None if price is None else float(price) * pue,
                   currency=getattr(config, "currency", None))


def _intensity(config: Any) -> float | None:
    """Grams CO2e per kWh of facility energy, by the precedence every output uses
    (:mod:`greentrack.carbon.resolve`), or None if it cannot be had."""
    try:
        from greentrack.carbon import live_intensity
        found = live_intensity(config)
    except Exception as e:  # noqa: BLE001 - a forecast is a convenience, never an error
        log.warning("greentrack: no carbon intensity for the forecast: %s", e)
        return None
    return None if found is None else float(found[0])


def _pue(config: Any) -> float:
    """Facility over IT energy: :func:`greentrack.carbon.resolve.pue_in_use`, as every output."""
    try:
        from greentrack.carbon.resolve import pue_in_use
        return float(pue_in_use(config)["value"])
    except Exception:  # noqa: BLE001 - an invalid location was refused at start already
        return 1.0


def format_forecast(est: dict[str, Any]) -> str:
    """One line for logs and progress displays."""
    parts = [f"step {est['steps_done']}/{est['planned_steps']}",
             f"forecast {est['energy_kwh'] * 1000:.3g} Wh",
             f"{est['duration_s'] / 60:.1f} min ({est['remaining_s'] / 60:.1f} min left)"]
    if est.get("emissions_g") is not None:
        parts.append(f"{est['emissions_g']:.3g} gCO2e")
    if est.get("cost") is not None:
        parts.append(f"{est['cost']:.3g} {est.get('currency') or ''}".rstrip())
    return "greentrack: " + ", ".join(parts)


__all__ = ["Forecast", "format_forecast"]
