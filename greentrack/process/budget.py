"""A run's budgets (``budget_kwh``, ``budget_grams``, ``budget_cost``): checked on the sampler
thread, never on the training thread.

:class:`BudgetWatch` is an engine watcher. At most once per ``counter_interval_s`` (the cadence at
which new energy is read) it prices the energy this tracker has measured so far with the
footprint function every output uses (:func:`greentrack.carbon.footprint.one_part`, at the
settings :func:`greentrack.carbon.resolve.settings_for` resolves): IT kWh (the run's
``energy_kwh``, what its summary and ``greentrack inventory --budget`` count: the hardware's energy,
before the PUE), location-based grams and cost (both with the PUE, as every report states them),
and compares each with its budget.

* **Forecast**: when the training meter's forecast of the whole run
  (:mod:`greentrack.carbon.forecast`) says, with its interval's *low* bound, that the run will
  pass a budget, one warning and a ``budget-forecast`` event, naming the step it was seen at and
  the step near which the budget runs out (at the estimate's rate). The low bound, so that a
  warning means even the favourable end of the interval passes: the estimate alone would cry
  wolf on a noisy start.
  Before the interval is known (three observations) there is no forecast warning.
* **At the budget**: one warning and a ``budget-reached`` event (the step, what was spent);
  :attr:`BudgetWatch.over` turns True (``tracker.over_budget``). With ``on_budget="stop"``,
  :attr:`BudgetWatch.stop` and ``tracker.budget_stop`` too, a bool the integrations read at each
  step end (Lightning then sets ``trainer.should_stop``, Hugging Face
  ``control.should_training_stop``). Nothing ever raises into training.

What counts: this tracker's energy since it started (its devices; a resumed segment counts from
its own start, a rank its own devices), spread evenly over its span for a time-resolved intensity.

Example:
    >>> tracker = greentrack.Tracker("runs/demo", budget_kwh=2.0,
    ...                              on_budget="stop")  # doctest: +SKIP
    >>> with tracker:                                   # doctest: +SKIP
    ...     for batch in loader:
    ...         with tracker.step():
    ...             train_step(batch)
    ...         if tracker.over_budget:
    ...             break
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from greentrack.carbon.footprint import Footprint, Settings, one_part
from greentrack.carbon.resolve import settings_for
from greentrack.common.config import Config
from greentrack.common.once import warn_once

log = logging.getLogger("greentrack")

#: How long the resolved carbon and price settings are kept (Electricity Maps' latest hour).
SETTINGS_TTL_S = 60.0
#: How often the forecast is read. Each read observes the run's position in the forecast, whose
#: rate is over its last 50 observations: read at the budget's cadence (5 Hz), that window would
#: shrink to seconds and swing with every validation pause. 15 s: Prometheus's usual scrape
#: interval, which observes it too.
FORECAST_EVERY_S = 15.0


class Kind(NamedTuple):
    """One budget: its Config field, the forecast's key and how it is shown."""

    name: str
    setting: str
    forecast_key: str
    unit: str


KINDS = (Kind("energy", "budget_kwh", "energy_kwh", "kWh"),
         Kind("emissions", "budget_grams", "emissions_g", "gCO2e"),
         Kind("cost", "budget_cost", "cost", ""))


def limits(config: Config) -> dict[str, float]:
    """The budgets ``config`` sets, by kind (``energy``, ``emissions``, ``cost``)."""
    return {k.name: float(getattr(config, k.setting)) for k in KINDS
            if getattr(config, k.setting) is not None}


def spent_of(fp: Footprint) -> dict[str, float | None]:
    """What a footprint spends of each kind: IT kWh (the summary's ``energy_kwh``), location-based
    grams and cost with the PUE (None: no intensity or no price to state it)."""
    return {"energy": fp.it_kwh, "emissions": fp.location_g,
            "cost": fp.cost.total if fp.cost is not None else None}


class BudgetWatch:
    """Checks a tracker's budgets on the sampler thread (an engine watcher).

    Args:
        tracker: the started :class:`greentrack.Tracker` (its ``totals()``, ``forecast_sources``,
            ``steps_done()`` and engine are read).
        config: its settings (budgets, ``on_budget``, carbon and prices).
        lookup: resolves the settings (default :func:`settings_for`); tests pass their own.
        clock: monotonic seconds.

    Attributes:
        over: a budget has been reached (``tracker.over_budget``).
        stop: ``over`` and ``on_budget="stop"``: the integrations stop training at the step end.
    """

    def __init__(self, tracker: Any, config: Config,
                 lookup: Callable[[Config], Settings] = settings_for,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tracker, self.config, self._lookup, self._clock = tracker, config, lookup, clock
        self.limits = limits(config)
        self.on_budget = config.on_budget
        self.over = False
        self.stop = False
        #: the latest figures, by kind: spent so far, and the forecast's low bound (or None)
        self.spent: dict[str, float | None] = dict.fromkeys(self.limits)
        self.forecast_low: dict[str, float | None] = dict.fromkeys(self.limits)
        self.currency: str | None = config.currency
        self._reached: set[str] = set()
        self._forecast_said: set[str] = set()
        self._settings: Settings | None = None
        self._settings_until = float("-inf")
        self._next = float("-inf")
        self._next_forecast = float("-inf")
        #: seconds between forecast reads (:data:`FORECAST_EVERY_S`)
        self.forecast_every_s = FORECAST_EVERY_S
        self._failed = False

    def __call__(self, now: float) -> None:
        """Engine watcher: check when due (every ``counter_interval_s``)."""
        if now < self._next:
            return
        self._next = now + self.config.counter_interval_s
        self.check(now)

    def settings(self) -> Settings | None:
        if self._clock() >= self._settings_until:
            self._settings_until = self._clock() + SETTINGS_TTL_S
            try:
                self._settings = self._lookup(self.config)
                self.currency = self._settings.prices.currency or self.currency
            except Exception as e:  # noqa: BLE001 - the budget is a convenience, never an error
                if not self._failed:
                    self._failed = True
                    self._say("warning", "budget-error", f"budget not checked: no carbon or "
                              f"price settings ({type(e).__name__}: {e})")
        return self._settings

    def check(self, now: float | None = None) -> None:
        """Price what was spent by ``now`` (the engine's monotonic clock; default: the clock),
        compare it and the forecast with each budget."""
        settings = self.settings()
        engine = self.tracker.engine
        if settings is None or engine is None:
            return
        clock = self._clock() if now is None else now
        channels = engine.snapshot()
        start = float(engine.origin_unix)
        now_unix = start + max(0.0, clock - float(engine.origin))
        gpus = sum(1 for ch in channels if ch.kind == "gpu")
        fp = one_part(float(sum(ch.energy_j for ch in channels)), start, now_unix, settings,
                      gpu_seconds=max(0.0, now_unix - start) * gpus)
        spent = spent_of(fp)
        step = int(self.tracker.steps_done())
        est = None
        if clock >= self._next_forecast:
            self._next_forecast = clock + self.forecast_every_s
            est = self._estimate()
        for kind in KINDS:
            if kind.name not in self.limits:
                continue
            budget = self.limits[kind.name]
            value = spent[kind.name]
            before = self.spent.get(kind.name)  # at the previous check
            self.spent[kind.name] = value
            if est is not None:
                found = est.get(kind.forecast_key + "_low")
                self.forecast_low[kind.name] = None if found is None else float(found)
            low = self.forecast_low[kind.name]
            if value is None or kind.name in self._reached:
                continue
            if value >= budget:
                self._reach(kind, budget, value, step, before)
            elif (est is not None and low is not None and low > budget
                  and kind.name not in self._forecast_said):
                self._forecast(kind, budget, value, low, int(est["steps_done"]), est)

    def _estimate(self) -> dict[str, Any] | None:
        sources = getattr(self.tracker, "forecast_sources", None) or []
        try:
            est = sources[0]() if sources else None
        except Exception as e:  # noqa: BLE001 - no forecast then
            log.debug("greentrack: no forecast for the budget: %s", e)
            return None
        return est if isinstance(est, dict) and est.get("steps_done") is not None else None

    def _reach(self, kind: Kind, budget: float, value: float, step: int,
               before: float | None = None) -> None:
        """``before``: what was spent at the previous check (the budget was crossed between the
        two: what the run spent past it is one check interval's energy at most)."""
        self._reached.add(kind.name)
        self.over = True  # first: the training thread reads these at its next step end
        if self.on_budget == "stop":
            self.stop = True
            self.tracker.budget_stop = True
        action = ("training stops at the end of this step (or where the loop reads "
                  "tracker.over_budget)" if self.on_budget == "stop" else
                  "training goes on (on_budget=warn)")
        self._say("warning", "budget-reached",
                  f"{kind.setting}={budget:g} reached at step {step}: "
                  f"{_shown(value, kind, self.currency)} spent; {action}", budget=budget,
                  spent=value, spent_before=before, step=step, unit=self._unit(kind),
                  budget_kind=kind.name,
                  setting=kind.setting, action=self.on_budget)

    def _forecast(self, kind: Kind, budget: float, value: float, low: float, step: int,
                  est: dict[str, Any]) -> None:
        self._forecast_said.add(kind.name)
        planned = int(est.get("planned_steps") or 0)
        # the step near which the budget runs out, at the forecast's (central) rate from here
        whole = est.get(kind.forecast_key)
        whole = low if whole is None else float(whole)
        at = (step + (budget - value) / (whole - value) * (planned - step)
              if whole > value and planned > step else None)
        near = f", near step {int(at)} of {planned}" if at is not None else ""
        self._say("warning", "budget-forecast",
                  f"at step {step}, the forecast says the run will pass {kind.setting}="
                  f"{budget:g}: at least {_shown(low, kind, self.currency)} (the low bound of its "
                  f"interval){near}", budget=budget, spent=value, forecast_low=low, step=step,
                  reached_near_step=None if at is None else int(at), planned_steps=planned,
                  unit=self._unit(kind), budget_kind=kind.name, setting=kind.setting)

    def _unit(self, kind: Kind) -> str:
        return kind.unit or (self.currency or "")

    def _say(self, level: str, event: str, message: str, **details: Any) -> None:
        engine = self.tracker.engine
        warn_once(log, engine.run_key if engine is not None else "", f"{event}:{message}",
                  "greentrack: %s", message)
        if engine is not None:
            engine.event(level, event, message, **details)

    def status(self) -> list[dict[str, Any]]:
        """Each budget now, for the Prometheus gauges: kind, budget, spent, forecast low, unit."""
        return [{"kind": k.name, "budget": self.limits[k.name], "spent": self.spent[k.name],
                 "forecast_low": self.forecast_low[k.name], "unit": self._unit(k)}
                for k in KINDS if k.name in self.limits]


def _shown(value: float, kind: Kind, currency: str | None) -> str:
    unit = kind.unit or (currency or "")
    return f"{value:.4g} {unit}".rstrip()


def watch(tracker: Any, config: Config) -> BudgetWatch | None:
    """A watcher for ``config``'s budgets, or None when it sets none."""
    return BudgetWatch(tracker, config) if limits(config) else None


__all__ = ["BudgetWatch", "KINDS", "limits", "spent_of", "watch"]
