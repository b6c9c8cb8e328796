"""A run's footprint: every carbon, cost and compute figure, from its energy over time.

One pure function, :func:`footprint`, turns a :class:`Profile` (the run's energy by kind and over
wall time, in parts measured under one set of settings each, and the work it did) and the
:class:`Settings` that :func:`greentrack.carbon.resolve.settings_for` chose for each part into a
:class:`Footprint`. It reads no file and no clock. Every output calls it: ``Tracker.stop()``,
``greentrack summary``, each report format, the ``emissions.csv`` row, the model card, BoAmps,
``compare``, ``advise`` (a counterfactual is the same function with other settings or a shifted
profile), the forecast (an estimated profile) and the live exporter (the profile so far). Nothing
else multiplies by a PUE or an intensity.

The formulas (each written here once):

* facility energy = IT energy x PUE (the data centre's overhead; GHG Protocol boundary);
* location-based grams = facility kWh x the intensity. A yearly (or user) factor is a constant;
  a time series is integrated against the part's own energy over time
  (:func:`greentrack.carbon.series.integrate`): grams = facility kWh x the energy-weighted mean
  intensity of the series over the part's bins;
* market-based grams = facility kWh x the market factor (contractual instruments), when given;
* cost = facility kWh x electricity price + GPU-hours x GPU-hour price, in the part's currency;
* GPU-hours = GPU-seconds / 3600 (:func:`greentrack.common.units.hours`);
* a run of several parts (segments that recorded different settings) is the sum of its parts,
  each at its own settings; the effective PUE and intensity are the ratios of those sums.

Per-unit figures divide by one named count: per step by the run's optimizer steps (one rank's
training steps, all segments) when it has any, else by its recorded step rows (every rank and
phase); :attr:`Footprint.per_step` says which, and J, grams and cost per step share it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from greentrack.carbon.location import Factor
from greentrack.carbon.series import IntensitySeries, integrate
from greentrack.common.units import J_PER_KWH, hours, utc

#: ``(start_unix, end_unix, energy_j)``: energy spread evenly over a span of wall time.
Bin = tuple[float, float, float]
KINDS = ("gpu", "cpu", "dram")


@dataclass(frozen=True)
class Pue:
    """The power usage effectiveness applied to IT energy, and where it comes from."""

    value: float
    source: str
    default: bool
    #: a short id of ``source`` (``setting``, ``uptime-institute-2024``...): a bounded metric label
    source_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "default": self.default}


@dataclass(frozen=True)
class Prices:
    """Electricity per kWh of facility energy and GPU-hour prices, in ``currency``."""

    electricity_per_kwh: float | None = None
    gpu_hour: float | None = None
    currency: str | None = None

    @property
    def any(self) -> bool:
        return self.electricity_per_kwh is not None or self.gpu_hour is not None


@dataclass(frozen=True)
class Settings:
    """The carbon and cost settings of one part of a run, resolved (I/O done) by
    :func:`greentrack.carbon.resolve.settings_for`.

    Attributes:
        location: the place as resolved (``country_iso3``, ``region``, ``cloud_provider``...).
        pue: the PUE in use.
        factor: the location-based factor: the yearly, user or world-average one; with a
            ``series``, what the series falls back to outside its span. None only without
            codecarbon's data and without a series (no emissions can be stated).
        series: a time-resolved intensity (an intensity CSV, Electricity Maps' past hours).
        series_dataset: the series' dataset name (``intensity CSV``, ``Electricity Maps API``).
        market_g_per_kwh: the market-based factor (contractual instruments), when given.
        prices: electricity and GPU-hour prices.
        embodied: SCI's embodied settings (:func:`greentrack.carbon.factors.embodied_settings`).
        notes: what the resolution had to say (no location set, a source skipped), shown as
            warnings wherever the figures are.
        key: the recorded settings these were resolved from, canonical (tells parts apart).
    """

    location: Mapping[str, Any]
    pue: Pue
    factor: Factor | None
    series: IntensitySeries | None = None
    series_dataset: str | None = None
    market_g_per_kwh: float | None = None
    prices: Prices = field(default_factory=Prices)
    embodied: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    key: str = ""

    def with_factor(self, factor: Factor) -> "Settings":
        """The same settings at another constant intensity (a counterfactual region)."""
        return replace(self, factor=factor, series=None, series_dataset=None, notes=())


@dataclass(frozen=True)
class Part:
    """Energy measured under one set of settings (one or several stores of the run).

    Attributes:
        energy_j: joules by kind (``gpu``, ``cpu``, ``dram``; None: no device of that kind).
        start_unix / end_unix: the wall-clock span.
        bins: the energy over wall time; needed only to integrate a time series (an empty
            tuple: the energy is spread evenly over the span).
        gpu_seconds: GPU-seconds (per GPU, the time its stores measured it, once).
        label: which stores these are, for the report (``segments 1-2``).
    """

    energy_j: Mapping[str, float | None]
    start_unix: float
    end_unix: float
    bins: tuple[Bin, ...] = ()
    gpu_seconds: float = 0.0
    label: str = "run"

    @property
    def total_j(self) -> float:
        return float(sum(v for v in self.energy_j.values() if v is not None))


@dataclass(frozen=True)
class Work:
    """What the run did: the divisors of per-unit figures.

    Attributes:
        optimizer_steps: training steps as the framework counts them (one rank's ``train``
            steps over all segments).
        step_rows: recorded steps of every phase and rank (a coalesced row counts its steps).
        tokens / samples / flops: summed over the step rows that recorded them, else None.
        n_gpus / n_hosts: distinct devices (embodied emissions).
        host_seconds: seconds each host ran, summed over hosts (embodied emissions).
    """

    optimizer_steps: int = 0
    step_rows: int = 0
    tokens: float | None = None
    samples: float | None = None
    flops: float | None = None
    n_gpus: int = 0
    n_hosts: int = 1
    host_seconds: float = 0.0


@dataclass(frozen=True)
class Profile:
    """A run's energy in parts, each with its settings, and its work."""

    parts: tuple[tuple[Part, Settings], ...]
    work: Work = field(default_factory=Work)


@dataclass(frozen=True)
class Intensity:
    """The location-based intensity of a part (or of the whole run: the energy-weighted mean)."""

    g_per_kwh: float
    method: str
    source: str
    dataset: str
    year: int | None = None
    location: Mapping[str, Any] = field(default_factory=dict)
    coverage: float = 1.0
    intervals_used: int | None = None
    series_interval_s: float | None = None
    fallback: Factor | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "g_per_kwh": self.g_per_kwh, "method": self.method, "source": self.source,
            "dataset": self.dataset, "year": self.year, "location": dict(self.location),
            "coverage": self.coverage}
        if self.method == "time-resolved":
            out.update(intervals_used=self.intervals_used, series_interval_s=self.series_interval_s,
                       fallback=self.fallback.as_dict() if self.fallback is not None
                       and self.coverage < COVERED else None)
        return out


@dataclass(frozen=True)
class Cost:
    """Cost in one currency: electricity (facility kWh x price) and GPU-hours (x price)."""

    currency: str | None
    electricity: float | None
    gpu_hours: float | None
    electricity_price_per_kwh: float | None
    gpu_hour_price: float | None

    @property
    def total(self) -> float:
        return (self.electricity or 0.0) + (self.gpu_hours or 0.0)


@dataclass(frozen=True)
class PerUnit:
    """Figures per one unit of work, all divided by the same named ``count``."""

    divisor: str
    count: float
    energy_j: float
    emissions_g: float | None
    cost: float | None


@dataclass(frozen=True)
class PartFootprint:
    """One part's figures at its own settings."""

    label: str
    start_unix: float
    end_unix: float
    energy_j: Mapping[str, float | None]
    it_kwh: float
    facility_kwh: float
    pue: Pue
    intensity: Intensity | None
    location_g: float | None
    market_g: float | None
    cost: Cost | None
    gpu_hours: float
    settings: Settings


@dataclass(frozen=True)
class Footprint:
    """Every figure of a run (or part of one, or an estimate of one), each traceable.

    ``location_g`` is None only when no intensity can be had at all (neither codecarbon's data
    nor a series or a factor): never for a run without a location, which is charged the world
    average with its source. ``cost`` is None without any price; ``costs`` holds one
    :class:`Cost` per currency when parts were priced in different ones (never added).
    """

    energy_j: Mapping[str, float | None]
    it_kwh: float
    facility_kwh: float
    pue: Pue
    intensity: Intensity | None
    location_g: float | None
    market_g: float | None
    cost: Cost | None
    costs: tuple[Cost, ...]
    gpu_seconds: float
    gpu_hours: float
    per_step: PerUnit | None
    per_sample: PerUnit | None
    per_token: PerUnit | None
    work: Work
    parts: tuple[PartFootprint, ...]
    warnings: tuple[str, ...]
    #: what it was computed from: counterfactuals recompute it with one thing changed
    profile: Profile = field(repr=False, compare=False, default=Profile(()))

    # -- counterfactuals: the same function, one thing changed -------------------------------
    def with_settings(self, change: Callable[[Settings], Settings]) -> "Footprint":
        """The same energy at settings ``change(settings)`` of each part."""
        return footprint(Profile(tuple((p, change(s)) for p, s in self.profile.parts),
                                 self.profile.work))

    def at_intensity(self, g_per_kwh: float, source: str = "counterfactual") -> "Footprint":
        """The same energy (each part's PUE kept) at a constant intensity."""
        factor = Factor(float(g_per_kwh), "user-setting", source, "counterfactual")
        return self.with_settings(lambda s: s.with_factor(factor))

    def shifted_by(self, seconds: float) -> "Footprint":
        """The same energy profile, started ``seconds`` later, each part at its settings."""
        return footprint(Profile(tuple((shifted(p, seconds), s) for p, s in self.profile.parts),
                                 self.profile.work))

    @property
    def total_j(self) -> float:
        return float(self.energy_j.get("total") or 0.0)

    @property
    def settings_differ(self) -> bool:
        return len({p.settings.key for p in self.parts}) > 1

    @property
    def currency(self) -> str | None:
        return self.cost.currency if self.cost is not None else None

    def portion(self, energy_j: float, gpu_seconds: float = 0.0) -> "Portion":
        """The grams and cost of ``energy_j`` of this footprint's energy (spread over the run as
        its energy is) and ``gpu_seconds`` of its GPU time: what a finding puts at stake."""
        share = energy_j / self.total_j if self.total_j > 0 else 0.0
        gpu_share = gpu_seconds / self.gpu_seconds if self.gpu_seconds > 0 else 0.0
        c = self.cost
        elec = None if c is None or c.electricity is None or energy_j <= 0 else c.electricity * share
        gpu = None if c is None or c.gpu_hours is None or gpu_seconds <= 0 else c.gpu_hours * gpu_share
        cost = None if elec is None and gpu is None else (elec or 0.0) + (gpu or 0.0)
        grams = None if self.location_g is None else self.location_g * share
        return Portion(energy_j, grams, cost, self.currency)

    def kind_facility_kwh(self, kind: str) -> float | None:
        """A kind's facility energy (its IT energy x each part's PUE), None when not tracked."""
        if self.energy_j.get(kind) is None:
            return None
        return sum(facility_kwh(float(p.energy_j.get(kind) or 0.0) / J_PER_KWH, p.pue)
                   for p in self.parts)


@dataclass(frozen=True)
class Portion:
    """Part of a footprint: joules and the grams and cost they carry."""

    energy_j: float
    grams: float | None
    cost: float | None
    currency: str | None


#: a series covering at least this share of a part's energy counts as covering all of it
COVERED = 0.999


def facility_kwh(it_kwh: float, pue: Pue) -> float:
    """IT energy x PUE: the facility's energy (the one place a PUE is applied)."""
    return it_kwh * pue.value


def _intensity(part: Part, s: Settings, warnings: list[str]) -> Intensity | None:
    """The part's location-based intensity: constant, or the series integrated over its bins."""
    fallback = s.factor
    if s.series is None:
        if fallback is None:
            return None
        return Intensity(fallback.g_per_kwh, fallback.method, fallback.source, fallback.dataset,
                         fallback.year, dict(fallback.location))
    series = s.series
    bins = part.bins or ((part.start_unix, part.end_unix, part.total_j),)
    fb_g = fallback.g_per_kwh if fallback is not None else sum(series.values) / len(series.values)
    result = integrate(series, list(bins), fb_g)
    location = {**(fallback.location if fallback is not None and fallback.method != "world-average"
                   else {}), **({"zone": series.zone} if series.zone else {})}
    if result.covered_kwh <= 0 and result.energy_kwh > 0 and fallback is not None:
        a, b = series.span
        warnings.append(f"the intensity series ({series.source}) covers {utc(a)} to {utc(b)}, "
                        f"none of {part.label} ({utc(part.start_unix)} to {utc(part.end_unix)}); "
                        f"used {fallback.source}")
        return Intensity(fallback.g_per_kwh, fallback.method, fallback.source, fallback.dataset,
                         fallback.year, dict(fallback.location), coverage=0.0)
    if result.coverage < COVERED and result.energy_kwh > 0:
        warnings.append(f"the intensity series covers {result.coverage:.1%} of {part.label}'s "
                        f"energy; the rest is charged at {fb_g:.1f} g/kWh "
                        f"({fallback.method if fallback is not None else 'the series mean'})")
    return Intensity(
        result.effective_g_per_kwh, "time-resolved",
        f"{series.source}: {result.intervals_used} interval(s) integrated against the run's energy "
        "over time (energy-weighted mean)", s.series_dataset or "intensity series",
        int(utc(part.start_unix)[:4]), location, coverage=result.coverage,
        intervals_used=result.intervals_used,
        series_interval_s=series.extra.get("interval_s"), fallback=fallback)


def _cost(s: Settings, fac_kwh: float, gpu_h: float) -> Cost | None:
    p = s.prices
    if not p.any:
        return None
    return Cost(p.currency,
                fac_kwh * p.electricity_per_kwh if p.electricity_per_kwh is not None else None,
                gpu_h * p.gpu_hour if p.gpu_hour is not None else None,
                p.electricity_per_kwh, p.gpu_hour)


def _part(part: Part, s: Settings, warnings: list[str]) -> PartFootprint:
    it = part.total_j / J_PER_KWH
    fac = facility_kwh(it, s.pue)
    inten = _intensity(part, s, warnings)
    gpu_h = hours(part.gpu_seconds)
    return PartFootprint(
        label=part.label, start_unix=part.start_unix, end_unix=part.end_unix,
        energy_j=dict(part.energy_j), it_kwh=it,
        facility_kwh=fac, pue=s.pue, intensity=inten,
        location_g=None if inten is None else fac * inten.g_per_kwh,
        market_g=None if s.market_g_per_kwh is None else fac * s.market_g_per_kwh,
        cost=_cost(s, fac, gpu_h), gpu_hours=gpu_h, settings=s)


def _sum_costs(parts: Sequence[PartFootprint], warnings: list[str]) -> tuple[Cost | None,
                                                                           tuple[Cost, ...]]:
    by_currency: dict[str | None, list[Cost]] = {}
    for p in parts:
        if p.cost is not None:
            by_currency.setdefault(p.cost.currency, []).append(p.cost)
    costs = []
    for currency, items in by_currency.items():
        def add(name: str) -> float | None:
            vals = [getattr(c, name) for c in items if getattr(c, name) is not None]
            return float(sum(vals)) if vals else None

        prices_e = {c.electricity_price_per_kwh for c in items}
        prices_g = {c.gpu_hour_price for c in items}
        costs.append(Cost(currency, add("electricity"), add("gpu_hours"),
                          prices_e.pop() if len(prices_e) == 1 else None,
                          prices_g.pop() if len(prices_g) == 1 else None))
    if len(costs) > 1:
        warnings.append("the run's segments are priced in different currencies ("
                        + ", ".join(str(c.currency or "unnamed") for c in costs)
                        + "): costs are given per currency and never added")
        return None, tuple(costs)
    priced = [p for p in parts if p.cost is not None]
    if costs and len(priced) < len(parts):
        warnings.append(f"{len(parts) - len(priced)} of the run's {len(parts)} parts recorded no "
                        "price: the cost covers the priced parts only")
    return (costs[0] if costs else None), tuple(costs)


def _whole_intensity(parts: Sequence[PartFootprint], fac: float,
                     grams: float | None) -> Intensity | None:
    known = [p.intensity for p in parts if p.intensity is not None]
    if grams is None or not known:
        return None
    if len(known) == len(parts) and len({(i.g_per_kwh, i.method, i.source) for i in known}) == 1:
        return known[0]  # one intensity throughout (a constant factor, or one part's series)
    sources = list(dict.fromkeys(f"{p.label}: {p.intensity.source}" for p in parts
                                 if p.intensity is not None))
    methods = sorted({i.method for i in known})
    covered = sum(p.facility_kwh * p.intensity.coverage for p in parts
                  if p.intensity is not None)
    return Intensity(grams / fac if fac > 0 else known[0].g_per_kwh,
                     methods[0] if len(methods) == 1 else "per-segment",
                     "energy-weighted over the run's parts, each at its own recorded settings: "
                     + "; ".join(sources), "; ".join(dict.fromkeys(i.dataset for i in known)),
                     None, {}, coverage=covered / fac if fac > 0 else 1.0)


def _per(divisor: str, count: float, energy_j: float, grams: float | None,
         cost: Cost | None) -> PerUnit | None:
    if not count:
        return None
    return PerUnit(divisor, count, energy_j / count, None if grams is None else grams / count,
                   None if cost is None else cost.total / count)


def footprint(profile: Profile) -> Footprint:
    """Every figure of ``profile`` (see the module docstring). Pure: reads nothing else."""
    warnings: list[str] = []
    parts = tuple(_part(p, s, warnings) for p, s in profile.parts)
    for _, s in profile.parts:
        warnings.extend(n for n in s.notes if n not in warnings)
    energy: dict[str, float | None] = dict.fromkeys(KINDS)
    for p, _ in profile.parts:
        for kind in KINDS:
            v = p.energy_j.get(kind)
            if v is not None:
                energy[kind] = (energy[kind] or 0.0) + float(v)
    total_j = float(sum(p.total_j for p, _ in profile.parts))
    energy["total"] = total_j
    it = total_j / J_PER_KWH
    fac = sum(p.facility_kwh for p in parts)
    grams = (None if not parts or any(p.location_g is None for p in parts)
             else sum(p.location_g for p in parts if p.location_g is not None))
    market = (None if not parts or any(p.market_g is None for p in parts)
              else sum(p.market_g for p in parts if p.market_g is not None))
    if parts and market is None and any(p.market_g is not None for p in parts):
        warnings.append("a market-based factor was recorded for some of the run's parts only: "
                        "no market-based total")
    cost, costs = _sum_costs(parts, warnings)
    if len({p.settings.key for p in parts}) > 1:
        warnings.append("the run's segments recorded different carbon or price settings: each "
                        "part's energy is counted at its own settings ("
                        + "; ".join(f"{p.label}: PUE {p.pue.value:g}"
                                    + (f", {p.intensity.g_per_kwh:.4g} g/kWh"
                                       if p.intensity is not None else "") for p in parts) + ")")
    pue = parts[0].pue if len({p.pue for p in parts}) == 1 else Pue(
        fac / it if it > 0 else parts[0].pue.value, "per segment: " + "; ".join(
            f"{p.label} {p.pue.value:g} ({p.pue.source})" for p in parts), False, "per-segment")
    gpu_s = float(sum(p.gpu_seconds for p, _ in profile.parts))
    w = profile.work
    steps = (("optimizer_steps", w.optimizer_steps) if w.optimizer_steps
             else ("step_rows", w.step_rows))
    fp = Footprint(
        energy_j=energy, it_kwh=it, facility_kwh=fac, pue=pue,
        intensity=_whole_intensity(parts, fac, grams), location_g=grams, market_g=market,
        cost=cost, costs=costs, gpu_seconds=gpu_s, gpu_hours=hours(gpu_s),
        per_step=_per(*steps, total_j, grams, cost),
        per_sample=_per("samples", w.samples or 0.0, total_j, grams, cost),
        per_token=_per("tokens", w.tokens or 0.0, total_j, grams, cost),
        work=w, parts=parts, warnings=tuple(warnings), profile=profile)
    return fp


def one_part(energy_j: Mapping[str, float | None] | float, start_unix: float, end_unix: float,
             settings: Settings, *, gpu_seconds: float = 0.0, bins: Sequence[Bin] = (),
             work: Work | None = None, label: str = "run") -> Footprint:
    """The footprint of energy measured (or estimated) under one set of settings: a forecast, a
    counterfactual, the energy since the last scrape. ``energy_j``: joules by kind, or a total."""
    kinds = ({"estimated": float(energy_j)} if isinstance(energy_j, (int, float)) else energy_j)
    part = Part(kinds, start_unix, end_unix, tuple(bins), gpu_seconds, label)
    return footprint(Profile(((part, settings),), work or Work()))


#: No carbon or price settings: a footprint of energy and GPU-hours only.
NO_SETTINGS = Settings(location={}, pue=Pue(1.0, "not applied (no settings)", True, "none"), factor=None)


def plain_settings(g_per_kwh: float | None = None, price_per_kwh: float | None = None,
                   gpu_hour_price: float | None = None, currency: str | None = None,
                   source: str = "given rates") -> Settings:
    """Settings from plain rates per kWh of IT energy (a PUE already in them: applied as 1)."""
    factor = None if g_per_kwh is None else Factor(float(g_per_kwh), "user-setting", source,
                                                   "user")
    return Settings(location={}, pue=Pue(1.0, "included in the given rates", False, "given-rates"),
                    factor=factor, prices=Prices(price_per_kwh, gpu_hour_price, currency))


def shifted(part: Part, by_s: float) -> Part:
    """The same part started ``by_s`` seconds later (a counterfactual start time)."""
    return replace(part, start_unix=part.start_unix + by_s, end_unix=part.end_unix + by_s,
                   bins=tuple((a + by_s, b + by_s, e) for a, b, e in part.bins))


__all__ = ["NO_SETTINGS", "Bin", "Cost", "Footprint", "Intensity", "Part", "PartFootprint", "PerUnit",
           "Portion", "Profile", "Prices", "Pue", "Settings", "Work", "facility_kwh", "footprint",
           "one_part", "plain_settings", "shifted"]
