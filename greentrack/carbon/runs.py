"""A run's footprint from its read model: each store's energy at the settings it recorded.

:func:`profile_of` groups a run's stores by the carbon and price settings each recorded when it
started (a resumed run whose segments ran with other settings has several parts), resolves each
group once (:func:`greentrack.carbon.resolve.settings_for`: explicit flags over the recorded
settings over the environment over defaults) and returns the :class:`~greentrack.carbon.footprint.
Profile` that :func:`~greentrack.carbon.footprint.footprint` turns into figures. Energy over time
(bins) is read only when a part's intensity is a time series, on the grid of
:attr:`greentrack.run.Run.bin_s`, so ``Tracker.stop()`` and the report integrate the same bins.

:func:`run_footprint` is the whole path for a run directory's :class:`~greentrack.run.Run`;
:func:`totals` makes the :class:`Totals` that :meth:`greentrack.Tracker.stop` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greentrack.carbon.footprint import Footprint, Part, Profile, Settings, Work, footprint
from greentrack.carbon.resolve import config_for_run, settings_for, settings_key
from greentrack.common.config import Config
from greentrack.common.units import J_PER_KWH, utc
from greentrack.run import Run, StoreEnergy

#: The explicit settings of a command or call: a mapping of flags, or a whole Config (its carbon
#: and price fields that are set override every store's recorded ones).
Explicit = Mapping[str, Any] | Config | None


def explicit_of(explicit: Explicit) -> dict[str, Any]:
    """``explicit`` as flags: a Config's set fields, a mapping as it is."""
    if explicit is None:
        return {}
    if isinstance(explicit, Config):
        d = explicit.as_dict()
        return {k: v for k, v in d.items() if v is not None and (k != "extra" or v)}
    return dict(explicit)


def _groups(stores: Sequence[StoreEnergy], explicit: Explicit
            ) -> list[tuple[Config, str, list[StoreEnergy]]]:
    """Stores grouped by the settings that apply to them, in order of first start."""
    flags = explicit_of(explicit)
    configs: dict[str, Config] = {}
    keys: dict[str, str] = {}  # recorded settings -> the key of those that apply (once each)
    groups: dict[str, list[StoreEnergy]] = {}
    for store in sorted(stores, key=lambda s: s.start_unix):
        recorded = settings_key(store.settings)
        if recorded not in configs:
            configs[recorded] = config_for_run(store.settings, flags)
            keys[recorded] = settings_key(configs[recorded].as_dict())
        groups.setdefault(keys[recorded], []).append(store)
    by_key = {keys[r]: c for r, c in configs.items()}
    return [(by_key[k], k, members) for k, members in groups.items()]


def _part(members: Sequence[StoreEnergy], label: str) -> Part:
    energy: dict[str, float | None] = {}
    for s in members:
        for kind, v in s.energy_j.items():
            energy[kind] = (energy.get(kind) or 0.0) + v if v is not None else energy.get(kind)
    return Part(energy, min(s.start_unix for s in members), max(s.end_unix for s in members),
                tuple(b for s in members for b in s.bins),
                float(sum(s.gpu_seconds for s in members)), label)


def profile_of_stores(stores: Sequence[StoreEnergy], explicit: Explicit, work: Work,
                      read_bins: Callable[[], Sequence[StoreEnergy]] | None = None) -> Profile:
    """The :class:`~greentrack.carbon.footprint.Profile` of ``stores``: in parts by the settings
    that apply to them, each resolved once. When a part's intensity is a time series and its
    stores carry no bins, ``read_bins`` gives the stores again with their energy over time.

    Raises:
        ConfigError: an invalid recorded or explicit setting (location, CSV, price).
    """
    groups = _groups(stores, explicit)
    several = len(groups) > 1
    resolved: list[tuple[Part, Settings]] = []
    for cfg, key, members in groups:
        start = min(s.start_unix for s in members)
        end = max(s.end_unix for s in members)
        label = f"the part from {utc(start)}" if several else "the run"
        resolved.append((_part(members, label), settings_for(cfg, (start, end), key)))
    if read_bins is not None and any(s.series is not None and not p.bins and p.total_j > 0
                                     for p, s in resolved):
        with_bins = {s.path: s for s in read_bins()}
        resolved = [(_part([with_bins.get(m.path, m) for m in members], p.label), s)
                    for (p, s), (_, _, members) in zip(resolved, groups)]
    return Profile(tuple(resolved), work)


def profile_of(run: Run, explicit: Explicit = None, *, work: Work | None = None) -> Profile:
    """The open run's profile (:func:`profile_of_stores`); its bins are read only when a time
    series needs them (on :attr:`greentrack.run.Run.bin_s`, the report's grid)."""
    return profile_of_stores(run.store_energies(), explicit,
                             work if work is not None else work_of(run),
                             lambda: run.store_energies(run.energy_bins()))


def work_of(run: Run, n_gpus: int | None = None) -> Work:
    """The run's work (:class:`~greentrack.carbon.footprint.Work`) from its step rows."""
    sums = run.phase_sums()

    def total(key: str) -> float | None:
        vals = [p[key] for p in sums.values() if p.get(f"n_{key}", 0) > 0]
        return float(sum(vals)) if vals else None

    gpus = n_gpus if n_gpus is not None else sum(1 for d in run.devices() if d.kind == "gpu")
    hosts = run.host_seconds
    return Work(optimizer_steps=run.optimizer_steps(),
                step_rows=int(sum(p["n"] for p in sums.values())), tokens=total("tokens"),
                samples=total("samples"), flops=total("flops"), n_gpus=gpus,
                n_hosts=len(hosts), host_seconds=float(sum(hosts.values())))


def run_footprint(run: Run, explicit: Explicit = None) -> Footprint:
    """The footprint of an open run (see the module docstring)."""
    return footprint(profile_of(run, explicit))


@dataclass(frozen=True)
class Totals:
    """A run's totals in code, as :meth:`greentrack.Tracker.stop` returns them: the same
    footprint as ``greentrack summary --json`` and every report.

    Attributes:
        energy_j: joules by kind (``gpu``, ``cpu``, ``dram``; None: not tracked) and ``total``.
        emissions_g: location-based grams CO2e (facility energy x intensity; the world average,
            named in ``intensity_source``, when no location was set). None only without any
            intensity data at all.
        emissions_kg: the same in kilograms (what codecarbon's ``stop()`` returns).
        market_emissions_g: market-based grams, when a market factor was set.
        intensity_g_per_kwh / intensity_source: the (energy-weighted) intensity and its source.
        pue: the PUE applied (energy-weighted when segments differ).
        facility_energy_kwh: IT energy x PUE.
        cost / currency: electricity and GPU-hour cost, when a price was set.
        steps: recorded step rows (every phase and rank); optimizer_steps: training steps as
            the framework counts them (one rank's). ``joules_per_step`` divides by the latter
            when there are any (``per_step_divisor`` says which).
        warnings: what the figures' reader should know (no location, mixed settings...).
    """

    run_id: str | None
    run_dir: str
    status: str
    duration_s: float
    energy_j: dict[str, float | None]
    energy_kwh: float
    steps: int
    optimizer_steps: int
    gpu_hours: float
    emissions_g: float | None = None
    market_emissions_g: float | None = None
    intensity_g_per_kwh: float | None = None
    intensity_source: str | None = None
    pue: float | None = None
    facility_energy_kwh: float | None = None
    cost: float | None = None
    currency: str | None = None
    joules_per_step: float | None = None
    per_step_divisor: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def emissions_kg(self) -> float | None:
        return None if self.emissions_g is None else self.emissions_g / 1000.0

    def __float__(self) -> float:
        """Kilograms CO2e, as codecarbon's ``tracker.stop()`` returns (``float(totals)``)."""
        return float(self.emissions_kg or 0.0)


def totals(run: Run, explicit: Explicit = None) -> Totals:
    """The run's :class:`Totals` (every store; each at the settings it recorded unless
    ``explicit`` overrides them)."""
    fp = run_footprint(run, explicit)
    return totals_of(fp, run_id=run.run_id, run_dir=str(run.run_dir), status=run.status,
                     duration_s=run.duration_s)


def totals_of(fp: Footprint, *, run_id: str | None, run_dir: str, status: str,
              duration_s: float) -> Totals:
    per = fp.per_step
    return Totals(
        run_id=run_id, run_dir=run_dir, status=status, duration_s=duration_s,
        energy_j=dict(fp.energy_j), energy_kwh=fp.total_j / J_PER_KWH, steps=fp.work.step_rows,
        optimizer_steps=fp.work.optimizer_steps, gpu_hours=fp.gpu_hours,
        emissions_g=fp.location_g, market_emissions_g=fp.market_g,
        intensity_g_per_kwh=fp.intensity.g_per_kwh if fp.intensity is not None else None,
        intensity_source=fp.intensity.source if fp.intensity is not None else None,
        pue=fp.pue.value, facility_energy_kwh=fp.facility_kwh,
        cost=fp.cost.total if fp.cost is not None else None, currency=fp.currency,
        joules_per_step=per.energy_j if per is not None else None,
        per_step_divisor=per.divisor if per is not None else None, warnings=fp.warnings)


__all__ = ["Explicit", "Totals", "explicit_of", "profile_of", "profile_of_stores", "run_footprint",
           "totals",
           "totals_of", "work_of"]
