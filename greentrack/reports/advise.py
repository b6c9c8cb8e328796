"""``greentrack advise``: where a run's energy could have gone further, ranked, each finding from
the run's own measurements (never guessed), with its evidence and a suggestion.

One function, :func:`advise`, computes the findings; ``greentrack advise`` prints them and the
report's ``opportunities`` section holds its top ones. Kinds:

* ``replayed``: the joules of training steps done again after resuming from a checkpoint taken
  before them (:meth:`greentrack.run.Run.replayed`): spent, and bought no progress.
* ``outside-steps``: the run's energy minus the energy inside step windows (steps of every phase
  are steps; the rest is "no step": input stalls, evaluation loops without steps, checkpointing,
  start-up).
* ``idle-gpu``: GPU time and joules at near-idle power (rule: :data:`IDLE_RULE`), per GPU, and
  GPUs that never worked.
* ``low-mfu``: only when the step rows carry MFU (FLOPs and the device's peak were known).
* ``start-time``: with an intensity series (``--intensity-csv``), the same power profile
  re-integrated at each start the series covers: the best start and the grams it saves.
* ``region``: the same energy at the yearly factors of the cloud provider's other regions, or
  without a cloud, of :data:`REGION_COUNTRIES`.
* ``power-limit``: only from a curve the run measured (``calibrate_power_limits``,
  :mod:`greentrack.process.calibration`; never guessed): the limit with the fewest joules per training
  step among those whose seconds per step are within ``max_slowdown`` of the reference (the
  original limit), when its saving exceeds :data:`SIGNIFICANT` standard errors of the difference;
  the joules at stake are that saving per step times the store's training steps.

``joules`` is the energy at stake (0 for ``start-time`` and ``region``: the same energy, other
grams); ``grams`` (with PUE) and ``cost`` (when a price is set) follow from it. Findings are
ranked by grams at stake when an intensity is known, else by joules.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Required, TypedDict

from greentrack.carbon.footprint import Footprint, Settings, footprint
from greentrack.carbon.location import (cloud_region_factors, country_factors, parse_cloud,
                                        world_average, yearly_factor)
from greentrack.carbon.runs import Explicit, profile_of_stores
from greentrack.carbon.schedule import best_start
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.common.units import J_PER_KWH, energy_text, mass_text, utc
from greentrack.reports.run_data import IDLE_MARGIN, IDLE_PEAK_SHARE, POWER_QUANTILE, resample

if TYPE_CHECKING:
    from greentrack.reports.run_data import RunData
    from greentrack.run import PowerLimitCurve

#: a GPU never worked: its peak within NEVER_SPREAD x its lowest, and under NEVER_PEER x the
#: highest peak of the run's GPUs (a lone flat GPU may be one at steady full load: not flagged)
NEVER_SPREAD = 1.25
NEVER_PEER = 0.5
IDLE_RULE = (f"a {{res}} s bucket (past ~3,000 buckets a GPU, a report time bin; a GPU's first "
             f"and last left out) is near-idle when its power "
             f"(energy / duration) is at most min({1 + IDLE_MARGIN:g} x the GPU's lowest bucket "
             f"power, {IDLE_PEAK_SHARE:g} x its peak bucket power), lowest and peak being the "
             f"{POWER_QUANTILE:.0%} and {1 - POWER_QUANTILE:.0%} quantiles of its bucket powers; "
             f"a GPU never worked when its peak is within {NEVER_SPREAD:g} x its lowest and under "
             f"{NEVER_PEER:g} x the highest peak of the run's GPUs")
#: the MFU the low-mfu finding measures against (well-tuned dense training reaches 0.4 to 0.6)
MFU_REFERENCE = 0.5
#: countries compared when the run names no cloud (a spread of low- and high-carbon grids)
REGION_COUNTRIES = ("SWE", "NOR", "FRA", "CHE", "CAN", "FIN", "GBR", "DEU", "USA", "JPN", "IND",
                    "AUS")
#: findings under this share of the run's energy are left out (start-time and region: grams)
MIN_SHARE = 0.01
#: how many findings the report's Opportunities section shows
TOP = 3
#: at most this many start times are tried
MAX_STARTS = 20000
#: the slowdown per step ``advise`` accepts for a lower power limit, by default (5%)
MAX_SLOWDOWN = 0.05
#: a power-limit saving counts only beyond this many standard errors of the difference of the
#: two means (about 95% one-sided for normal step energies)
SIGNIFICANT = 2.0


class Finding(TypedDict, total=False):
    """One finding of :func:`advise` (the report's ``opportunities``): what it is, the joules at
    stake and their share of the run, the evidence it rests on and what to do; priced from the
    run's footprint (``grams``, ``cost`` in ``currency``) where the footprint has them."""

    kind: Required[str]
    joules: Required[float]
    share: Required[float]
    evidence: Required[dict[str, Any]]
    suggestion: Required[str]
    grams: float
    cost: float
    currency: str | None
    _gpu_s: float  # GPU-seconds at stake (priced at the GPU-hour price, then dropped)


def _priced(f: Finding, fp: Footprint, gpu_s: float = 0.0) -> Finding:
    """A finding with the grams and cost of its joules (and GPU time): the run's footprint's
    share (:meth:`greentrack.carbon.footprint.Footprint.portion`)."""
    part = fp.portion(f["joules"], gpu_s)
    if part.grams is not None and "grams" not in f:
        f["grams"] = part.grams
    if part.cost is not None:
        f["cost"] = part.cost
        f["currency"] = part.currency
    return f


def advise(data: RunData, config: Config, fp: Footprint | None = None,
           max_slowdown: float = MAX_SLOWDOWN, explicit: Explicit = None) -> list[Finding]:
    """The findings of one run, ranked (see the module docstring). ``fp``: the run's footprint
    when the caller has it (the report), else computed here from ``explicit`` over the settings
    each store recorded (default: ``config``). ``max_slowdown``: the slower steps a
    ``power-limit`` finding may ask for (0.05: 5%).

    Raises:
        ConfigError: an invalid location, intensity CSV or price.
    """
    if fp is None:
        fp = run_footprint_of(data, config if explicit is None else explicit)
    total_j = fp.total_j
    found: list[Finding] = []
    if total_j > 0:
        for make in (_replayed, _outside_steps, _idle_gpu, _low_mfu,
                     lambda d, t: _power_limit(d, t, max_slowdown)):
            f = make(data, total_j)
            if f is not None and f["share"] >= MIN_SHARE:
                found.append(_priced(f, fp, float(f.pop("_gpu_s", 0.0))))
        for f in (_start_time(data, fp), _region(data, config, fp)):
            if f is not None:
                found.append(_priced(f, fp))
    known = fp.location_g is not None
    found.sort(key=lambda f: (f.get("grams", 0.0) if known else f["joules"], f["joules"]),
               reverse=True)
    return found


def run_footprint_of(data: RunData, explicit: Explicit) -> Footprint:
    """The footprint of the run a report read (its stores, bins and work)."""
    return footprint(profile_of_stores(data.stores, explicit, data.work))


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _replayed(data: RunData, total_j: float) -> Finding | None:
    s = data.summary
    steps, joules = float(s.get("replayed_steps") or 0.0), float(s.get("replayed_energy_j") or 0.0)
    if steps <= 0 or joules <= 0:
        return None
    return {
        "kind": "replayed", "joules": joules, "share": joules / total_j,
        "evidence": {"text": f"replayed after resume: {joules:.4g} J ({_pct(joules / total_j)} of "
                             f"the run's energy): {steps:.0f} training steps recorded, then done "
                             "again after resuming from a checkpoint taken before them",
                     "steps": steps, "energy_j": joules},
        "suggestion": "checkpoint more often (e.g. Lightning ModelCheckpoint(every_n_train_steps="
                      "...), HF save_steps; asynchronous checkpointing keeps it cheap) and resume "
                      "from the latest checkpoint: the steps after the last one are redone",
    }


def _outside_steps(data: RunData, total_j: float) -> Finding | None:
    if not data.phases:
        return None  # no step recorded: nothing to tell steps from the rest
    inside = data.steps_inside_j
    no_step_j = max(0.0, total_j - sum(inside.values()))
    outside_s = max(0.0, data.store_s - data.step_union_s)
    shares = {**{p: j / total_j for p, j in sorted(inside.items())}, "no step": no_step_j / total_j}
    phases = ", ".join(f"{p} {_pct(v)}" for p, v in shares.items())
    return {
        "kind": "outside-steps", "joules": no_step_j, "share": no_step_j / total_j,
        "evidence": {
            "text": f"{_pct(no_step_j / total_j)} of the run's energy was spent while no step ran: "
                    f"{outside_s:.4g} of {data.store_s:.4g} process-seconds were outside every step "
                    f"window; energy by phase: {phases}",
            "phase_share": shares, "outside_s": outside_s, "process_s": data.store_s,
            "steps_union_s": data.step_union_s,
            "overlapping_steps": data.step_sum_s > data.step_union_s * 1.001},
        "suggestion": "overlap input loading with compute (DataLoader num_workers, pin_memory, "
                      "prefetching), checkpoint asynchronously or less often, evaluate less often or "
                      "on a subset, and cache start-up work (downloads, tokenization, compilation)",
    }


def _idle_gpu(data: RunData, total_j: float) -> Finding | None:
    gpus = [g for g in data.gpu_power if g["low_w"] is not None]
    if not gpus:
        return None
    top = max(g["peak_w"] for g in gpus)
    per_gpu, idle_j, idle_s, never = [], 0.0, 0.0, []
    for g in gpus:
        lazy = g["peak_w"] <= g["low_w"] * NEVER_SPREAD and g["peak_w"] < top * NEVER_PEER
        s, j = (g["seconds"], g["energy_j"]) if lazy else (g["idle_s"], g["idle_j"])
        idle_j, idle_s = idle_j + j, idle_s + s
        if lazy:
            never.append(g["device"])
        per_gpu.append({"device": g["device"], "name": g["name"], "host": g["host"],
                        "lowest_w": g["low_w"], "peak_w": g["peak_w"],
                        "threshold_w": g["threshold_w"], "idle_s": s, "seconds": g["seconds"],
                        "idle_share": s / g["seconds"] if g["seconds"] > 0 else 0.0,
                        "idle_j": j, "never_worked": lazy})
    if idle_j <= 0:
        return None
    each = "; ".join(f"{p['device']}: {_pct(p['idle_share'])} of {p['seconds']:.4g} s near idle "
                     f"(<= {p['threshold_w']:.4g} W; lowest {p['lowest_w']:.4g} W, peak "
                     f"{p['peak_w']:.4g} W){', never worked' if p['never_worked'] else ''}"
                     for p in per_gpu)
    return {
        "kind": "idle-gpu", "joules": idle_j, "share": idle_j / total_j, "_gpu_s": idle_s,
        "evidence": {"text": f"{idle_s:.4g} GPU-seconds at near-idle power ({idle_j:.4g} J): {each}",
                     "rule": IDLE_RULE.format(res=f"{data.resolution_s:g}"),
                     "idle_gpu_seconds": idle_s, "gpus": per_gpu, "never_worked": never},
        "suggestion": ("release the GPUs that never worked (CUDA_VISIBLE_DEVICES, fewer processes) "
                       "and " if never else "") +
                      "keep the GPUs fed: larger batches or more data-loader workers, fewer "
                      "host-side syncs, and no GPU reserved while the job waits",
    }


def _low_mfu(data: RunData, total_j: float) -> Finding | None:
    if data.mfu is None or data.mfu >= MFU_REFERENCE:
        return None
    mfu = data.mfu
    gpu_j = sum(p.get("gpu_j", 0.0) for p in data.phases.values())
    base_j = gpu_j if gpu_j > 0 else sum(p["energy_j"] for p in data.phases.values())
    at_stake = base_j * (1.0 - mfu / MFU_REFERENCE)
    method = ", ".join(data.flops_methods) or "method not recorded"
    return {
        "kind": "low-mfu", "joules": at_stake, "share": at_stake / total_j,
        "evidence": {"text": f"measured MFU {mfu:.2g} (duration-weighted over the steps that "
                             f"carry it; its precision is that of the FLOPs: {method}, and of the "
                             f"device's peak); at MFU {MFU_REFERENCE:g} the same FLOPs would take "
                             f"{mfu / MFU_REFERENCE:.2g} x the step time: at most {at_stake:.4g} J "
                             f"of the steps' {'GPU ' if gpu_j > 0 else ''}energy, if power stayed "
                             "the same",
                     "mfu": mfu, "reference_mfu": MFU_REFERENCE, "flops_method": method,
                     "steps_energy_j": base_j},
        "suggestion": "mixed precision (bf16), fused kernels and torch.compile, a larger batch "
                      "per GPU, FlashAttention, and fewer host-device syncs usually raise MFU",
    }


def best_power_limit(curve: PowerLimitCurve, max_slowdown: float) -> dict[str, Any] | None:
    """On one measured curve: the limit with the fewest joules per step among those at most
    ``max_slowdown`` slower per step than the reference, its saving per step and that saving's
    standard error. None without a reference point (an unfinished calibration)."""
    ref = curve.reference
    if ref is None:
        return None
    allowed = [p for p in curve.points if p.s_per_step <= ref.s_per_step * (1.0 + max_slowdown)]
    best = min(allowed, key=lambda p: (p.j_per_step, p.reference is False))
    saving = ref.j_per_step - best.j_per_step
    se = math.sqrt(ref.j_per_step_sd ** 2 / ref.steps + best.j_per_step_sd ** 2 / best.steps)
    return {"limit_w": best.limit_w, "reference_w": ref.limit_w,
            "j_per_step": best.j_per_step, "reference_j_per_step": ref.j_per_step,
            "saving_j_per_step": saving, "saving_se_j": se,
            "saving_share": saving / ref.j_per_step if ref.j_per_step > 0 else 0.0,
            "slowdown": best.s_per_step / ref.s_per_step - 1.0 if ref.s_per_step > 0 else 0.0,
            "significant": best is not ref and saving > SIGNIFICANT * se,
            "train_steps": curve.train_steps, "saving_j": saving * curve.train_steps,
            "host": curve.host, "rank": curve.rank, "devices": list(curve.devices)}


def _power_limit(data: RunData, total_j: float, max_slowdown: float) -> Finding | None:
    picks = [b for b in (best_power_limit(c, max_slowdown) for c in data.power_limit_curves)
             if b is not None]
    good = [b for b in picks if b["significant"] and b["saving_j"] > 0]
    if not good:
        return None
    joules = sum(b["saving_j"] for b in good)
    each = "; ".join(
        f"{'+'.join(b['devices'])} ({b['host']} r{b['rank']}): {b['limit_w']:g} W instead of "
        f"{b['reference_w']:g} W: {b['j_per_step']:.4g} instead of {b['reference_j_per_step']:.4g} "
        f"J per step ({_pct(b['saving_share'])} less, +-{b['saving_se_j']:.2g} J), steps "
        f"{b['slowdown']:+.1%} in time, over {b['train_steps']} training steps"
        for b in good)
    limits = sorted({f"{b['limit_w']:g} W" for b in good})
    return {
        "kind": "power-limit", "joules": joules, "share": min(1.0, joules / total_j),
        "evidence": {"text": f"measured power-limit curve (calibrate_power_limits), within "
                             f"{_pct(max_slowdown)} slower steps: {each}",
                     "max_slowdown": max_slowdown, "best": good,
                     "curves": [c.as_dict() for c in data.power_limit_curves],
                     "rule": f"the limit with the fewest joules per training step whose seconds "
                             f"per step are at most {1 + max_slowdown:g} x the reference's (the "
                             f"original limit, measured last); kept when the saving exceeds "
                             f"{SIGNIFICANT:g} standard errors of the difference of the means"},
        "suggestion": f"set the GPU power limit to {' or '.join(limits)} for this workload "
                      f"(`nvidia-smi -pl W` as root, or NVML nvmlDeviceSetPowerManagementLimit), "
                      f"and restore it after: the same steps for fewer joules, each at most "
                      f"{_pct(max_slowdown)} slower",
    }


def _start_time(data: RunData, fp: Footprint) -> Finding | None:
    """The run's own energy profile moved to each start its intensity series covers: the best
    start's footprint against the run's (both :func:`greentrack.carbon.footprint.footprint`)."""
    settings = [s for _, s in fp.profile.parts]
    if not settings or any(s.series is None for s in settings):
        return None
    series = settings[-1].series
    assert series is not None
    fallback = settings[-1].factor.g_per_kwh if settings[-1].factor is not None else \
        sum(series.values) / len(series.values)
    as_run = fp.location_g
    if as_run is None:
        return None
    window = data.end_unix - data.start_unix  # the whole profile moves, pauses included
    width = max(data.bin_s, float(series.extra.get("interval_s") or 3600.0))
    n = max(1, int(math.ceil(max(window, 1e-9) / width)))
    profile = resample(data.bins, data.start_unix, width, n)
    end = series.ends[-1]
    starts = [s for s in series.starts if s + n * width <= end][:MAX_STARTS]
    # the search on the resampled profile (series.integrate, as every figure); the grams stated
    # are the footprint of the run's own profile moved to the chosen start
    choice = best_start(series, [(k * width, (k + 1) * width, e) for k, e in enumerate(profile)],
                        starts, fallback)
    if choice is None:
        return None
    best_t = choice.start_unix
    best_g = fp.shifted_by(best_t - data.start_unix).location_g
    if best_g is None:
        return None
    saving = as_run - best_g
    if saving <= 0 or saving < as_run * MIN_SHARE:
        return None
    hour = time.strftime("%H:%M", time.gmtime(best_t))
    return {
        "kind": "start-time", "joules": 0.0, "share": 0.0, "grams": saving,
        "evidence": {"text": f"the run's power profile re-integrated at {len(starts)} start times "
                             f"of {series.source}: as run (from {utc(data.start_unix)}) "
                             f"{mass_text(as_run, 4)}; best from {utc(best_t)} ({hour} UTC) "
                             f"{mass_text(best_g, 4)} "
                             f"(facility energy, PUE {fp.pue.value:g}; searched at {width:g} s bins)",
                     "series": series.source, "starts_tried": len(starts), "as_run_g": as_run,
                     "best_start": utc(best_t), "best_start_hour_utc": hour, "best_g": best_g,
                     "best_start_unix": best_t, "window_s": window},
        "suggestion": f"start at {hour} UTC (from {utc(best_t)} in this series) or schedule on a "
                      "low-carbon window: the same energy, fewer grams",
    }


def _region(data: RunData, config: Config, fp: Footprint) -> Finding | None:
    """The run's energy at the yearly factors of other regions (each a footprint at that factor,
    each part keeping its PUE) against its own location's yearly factor."""
    try:
        here = yearly_factor(config) or world_average()
        if config.cloud:
            provider = parse_cloud(config.cloud)[0]
            others = cloud_region_factors(provider)
            compared = f"the other {provider} regions (codecarbon's cloud data)"
            current = f"{provider}:{here.location.get('cloud_region')}"
        else:
            current = str(here.location.get("country_iso3") or "world average")
            others = [(c, f) for c, f in country_factors(REGION_COUNTRIES) if c != current]
            compared = "the countries " + ", ".join(code for code, _ in others)
    except ConfigError as e:
        if e.setting == "codecarbon":
            return None
        raise
    ranked = sorted((f.g_per_kwh, name, f) for name, f in others if name != current)
    if not ranked or fp.facility_kwh <= 0:
        return None
    as_run = fp.with_settings(partial(Settings.with_factor, factor=here)).location_g or 0.0
    best: list[dict[str, Any]] = []
    for g, name, factor in ranked[:3]:
        grams = fp.with_settings(partial(Settings.with_factor, factor=factor)).location_g or 0.0
        best.append({"region": name, "g_per_kwh": g, "grams": grams, "saving_g": as_run - grams})
    if best[0]["saving_g"] <= 0:
        return None
    b = best[0]
    return {
        "kind": "region", "joules": 0.0, "share": 0.0, "grams": b["saving_g"],
        "evidence": {"text": f"the run's {energy_text(fp.facility_kwh * J_PER_KWH, 4)} "
                             f"(facility energy, PUE {fp.pue.value:g}) at {current}'s yearly "
                             f"factor ({here.g_per_kwh:.4g} g/kWh) is {mass_text(as_run, 4)}; "
                             f"compared with {compared}: lowest {b['region']} at "
                             f"{b['g_per_kwh']:.4g} g/kWh, {mass_text(b['grams'], 4)}",
                     "current": current, "current_g_per_kwh": here.g_per_kwh,
                     "compared": compared, "best": best},
        "suggestion": f"run in {b['region']} (or another low-carbon region) when data residency "
                      "and latency allow: the same energy, fewer grams",
    }


def format_text(findings: list[Finding], data: RunData) -> str:
    """``greentrack advise``'s human output."""
    s = data.summary
    where = "+".join(map(str, s.get("run_dirs") or [s["run_dir"]]))  # every directory read
    lines = [f"greentrack advise: run {s['run_id']} ({where}): "
             f"{float(s['energy_j']['total'] or 0):.4g} J over {float(s['duration_s']):.4g} s"]
    if not findings:
        lines.append("no finding: nothing measured points at energy to save")
    for i, f in enumerate(findings, 1):
        stake = [f"{f['joules']:.4g} J ({_pct(f['share'])} of the run)"] if f["joules"] else []
        if "grams" in f:
            stake.append(mass_text(f["grams"], 4))
        if "cost" in f:
            stake.append(f"{f['cost']:.4g} {f.get('currency') or ''}".rstrip())
        lines += [f"{i}. {f['kind']}: {', '.join(stake)} at stake",
                  f"   evidence: {f['evidence']['text']}"]
        if "rule" in f["evidence"]:
            lines.append(f"   rule: {f['evidence']['rule']}")
        lines.append(f"   suggestion: {f['suggestion']}")
    if not any(f["kind"] == "power-limit" for f in findings):
        lines.append(_no_power_limit(data))
    return "\n".join(lines)


def _no_power_limit(data: RunData) -> str:
    """Why there is no power-limit finding, in one line."""
    curves = data.power_limit_curves
    if not curves:
        return ("(power-limit: needs a measured curve; this run has none: run with "
                "--calibrate-power-limits W,W... or Tracker(calibrate_power_limits=[...]))")
    if all(c.reference is None for c in curves):
        return ("(power-limit: the calibration did not reach its reference point (the original "
                "limit, measured last): no saving can be stated)")
    return ("(power-limit: on the measured curve no limit within the accepted slowdown saves "
            f"energy beyond the measurement's spread and {MIN_SHARE:.0%} of the run)")
