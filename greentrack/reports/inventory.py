"""``greentrack inventory``: a period's footprint across every run under some roots.

The document (schema ``greentrack/schemas/inventory-v1.schema.json``) holds, for the period:
totals (IT and facility energy, location- and market-based Scope 2, cost per currency, GPU-hours,
runs), the factors and PUEs behind them with their sources, breakdowns by label, host, country
and month, data quality (measured vs estimated energy, runs running or incomplete, runs without
a location, directories that could not be read), per-label budgets, codecarbon's rows as their
own source, each run's figures by month, and the methodology an auditor needs.

Every figure of a run is its footprint (:func:`greentrack.carbon.footprint.footprint`, through
:func:`greentrack.reports.inventory_runs.cut_footprint`): a run inside the period is counted as
its report counts it; one crossing an edge of the period or of a month is cut by its own energy
over time (:func:`greentrack.reports.inventory_runs.window_stores`). Sums over runs are sums of
those figures; nothing here applies a PUE or an intensity.

Example:
    >>> from greentrack.reports.inventory import inventory
    >>> from greentrack.reports.inventory_input import parse_period
    >>> doc = inventory(["runs/"], parse_period("2026-Q3"))   # doctest: +SKIP
    >>> doc["totals"]["facility_kwh"]                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from greentrack import __version__
from greentrack.carbon.accounting import MARKET_SOURCE
from greentrack.carbon.footprint import Footprint, PartFootprint
from greentrack.carbon.runs import Explicit, Memo
from greentrack.common.errors import ConfigError
from greentrack.common.units import J_PER_KWH, utc
from greentrack.reports.forecasting import forecast_section
from greentrack.reports.inventory_input import (Budget, CodecarbonRow, Period,
                                                codecarbon_section, read_codecarbon)
from greentrack.reports.inventory_runs import (Cut, cut_footprint, find_runs, host_cuts,
                                               window_stores)
from greentrack.reports.inventory_text import methodology
from greentrack.reports.run_data import read_run
from greentrack.run import Run

log = logging.getLogger("greentrack")

FORMAT = "greentrack-inventory"
VERSION = "1.1"
SCHEMA = "greentrack/schemas/inventory-v1.schema.json"
#: the breakdowns every inventory has, besides the label keys of ``--by``
DIMENSIONS = ("host", "country", "month")
ADDED = ("it_kwh", "facility_kwh", "location_g", "market_g", "market_covered_kwh",
         "market_or_location_g", "gpu_hours", "measured_kwh", "estimated_kwh")


def empty() -> dict[str, Any]:
    """Figures of nothing: what sums start from."""
    return {**dict.fromkeys(ADDED, 0.0), "cost": {}, "runs": 0}


def add(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    """``other``'s figures added to ``into`` (costs per currency, never across)."""
    for k in ADDED:
        into[k] += other[k]
    for cur, v in other["cost"].items():
        into["cost"][cur] = into["cost"].get(cur, 0.0) + v
    into["runs"] += other["runs"]


def _costs(costs: Iterable[Any]) -> dict[str, float]:
    return {c.currency or "": c.total for c in costs}


def figures(fp: Footprint, cut: Cut | None = None) -> dict[str, Any]:
    """A footprint's figures as the inventory adds them up."""
    market_kwh = sum(p.facility_kwh for p in fp.parts if p.market_g is not None)
    market = sum(p.market_g for p in fp.parts if p.market_g is not None)
    location = fp.location_g or 0.0
    return {"it_kwh": fp.it_kwh, "facility_kwh": fp.facility_kwh, "location_g": location,
            "market_g": market, "market_covered_kwh": market_kwh,
            "market_or_location_g": sum(p.market_g if p.market_g is not None
                                        else p.location_g or 0.0 for p in fp.parts),
            "cost": _costs(fp.costs), "gpu_hours": fp.gpu_hours,
            "measured_kwh": cut.measured_j / J_PER_KWH if cut else 0.0,
            "estimated_kwh": cut.estimated_j / J_PER_KWH if cut else 0.0, "runs": 1}


def part_figures(p: PartFootprint) -> dict[str, Any]:
    """One part's figures (a country's share of a run)."""
    return {"it_kwh": p.it_kwh, "facility_kwh": p.facility_kwh,
            "location_g": p.location_g or 0.0, "market_g": p.market_g or 0.0,
            "market_covered_kwh": p.facility_kwh if p.market_g is not None else 0.0,
            "market_or_location_g": p.market_g if p.market_g is not None else p.location_g or 0.0,
            "cost": _costs([p.cost] if p.cost is not None else []), "gpu_hours": p.gpu_hours,
            "measured_kwh": 0.0, "estimated_kwh": 0.0, "runs": 1}


def _country(p: PartFootprint) -> str:
    return str(p.settings.location.get("country_iso3") or "unknown")


def _countries(fp: Footprint, cut: Cut) -> dict[str, dict[str, Any]]:
    """A run's figures by the country of each part. The measured and estimated joules are
    known per store, not per part: a run of parts in several countries shares them out by
    each part's energy (a run in one country, the usual case, keeps them exactly)."""
    out: dict[str, dict[str, Any]] = {}
    for p in fp.parts:
        add(out.setdefault(_country(p), {**empty(), "runs": 0}), part_figures(p))
    for v in out.values():
        share = v["it_kwh"] / fp.it_kwh if fp.it_kwh > 0 else 1.0 / len(out)
        v.update(runs=1, measured_kwh=cut.measured_j / J_PER_KWH * share,
                 estimated_kwh=cut.estimated_j / J_PER_KWH * share)
    return out


def read_one(dirs: Sequence[Path], period: Period, explicit: Explicit, now: float,
             forecast: bool, months: list[tuple[str, float, float]] | None = None,
             memo: Memo | None = None) -> dict[str, Any] | None:
    """One run's line of the inventory, None when it used no energy in the period (``months``:
    the period's, :meth:`Period.months`, when already at hand; ``memo``: settings resolved for
    earlier runs under the same ``explicit``).

    Raises:
        ConfigError: the directories cannot be read as a run.
    """
    with Run.open(list(dirs), now=now) as run:
        stores = run.store_energies()
        cut = window_stores(run, stores, (period.start_unix, period.end_unix))
        if not cut.stores:
            return None
        fp = cut_footprint(run, cut, explicit, memo)
        by_month: dict[str, dict[str, Any]] = {}
        touched = [m for m in (period.months() if months is None else months)
                   if any(s.start_unix < m[2] and s.end_unix >= m[1] for s in cut.stores)]
        for label, a, b in touched:
            c = cut if len(touched) == 1 else window_stores(run, stores, (a, b))
            if c.stores:
                month_fp = fp if c is cut else cut_footprint(run, c, explicit, memo)
                by_month[label] = figures(month_fp, c)
        hosts = {seg.path: seg.host for seg in run.segments}
        per_host = host_cuts(cut, hosts)
        by_host = ({h: figures(fp, cut) for h in per_host} if len(per_host) == 1 else
                   {h: figures(cut_footprint(run, c, explicit, memo), c)
                    for h, c in per_host.items()})
        countries = _countries(fp, cut)
        total_j = float(run.energy_j()["total"] or 0.0)
        line: dict[str, Any] = {
            "run_id": run.run_id, "run_dirs": [str(d) for d in run.run_dirs],
            "status": run.status, "labels": run.labels, "hosts": list(per_host),
            "start": utc(run.start_unix), "end": utc(run.end_unix),
            "share_in_period": fp.total_j / total_j if total_j > 0 else 1.0,
            "whole": cut.whole, "copies": run.copies, "figures": figures(fp, cut),
            "months": by_month, "by_host": by_host, "countries": countries,
            "pue": fp.pue.as_dict(),
            "intensity": _intensity(fp),
            "market_g_per_kwh": sorted({p.settings.market_g_per_kwh for p in fp.parts
                                        if p.settings.market_g_per_kwh is not None}),
            "missing_location": any(p.intensity is not None and p.intensity.method
                                    == "world-average" for p in fp.parts),
            "factors": [_factor(p) for p in fp.parts], "warnings": list(fp.warnings),
            "forecast": None}
        if forecast and run.status in ("running", "incomplete"):
            line["forecast"] = _forecast(run, fp, total_j)
        return line


def _intensity(fp: Footprint) -> dict[str, Any] | None:
    i = fp.intensity
    return None if i is None else {"g_per_kwh": i.g_per_kwh, "method": i.method,
                                   "source": i.source, "dataset": i.dataset, "year": i.year}


def _factor(p: PartFootprint) -> dict[str, Any]:
    i = p.intensity
    return {"method": i.method if i else "none", "source": i.source if i else "no intensity",
            "dataset": i.dataset if i else "", "year": i.year if i else None,
            "g_per_kwh": i.g_per_kwh if i else None, "country": _country(p),
            "pue": p.pue.value, "pue_source": p.pue.source, "pue_default": p.pue.default,
            "market_g_per_kwh": p.settings.market_g_per_kwh,
            "market_source": None if p.settings.market_g_per_kwh is None else MARKET_SOURCE,
            "facility_kwh": p.facility_kwh}


def _forecast(run: Run, fp: Footprint, total_j: float) -> dict[str, Any] | None:
    """What a running run still uses by its forecast (the report's, from its planned steps):
    IT kWh and, as a share of the forecast's own footprint, grams and cost. None without one."""
    try:
        data = read_run("+".join(str(d) for d in run.run_dirs))
        gpus = sum(1 for d in run.devices() if d.kind == "gpu")
        section = forecast_section(data, fp.parts[-1].settings, gpus)
    except ConfigError:
        return None
    if section is None or section.get("kind") != "now":
        return None
    est = section["estimate"]
    out: dict[str, Any] = {"made_at": section["made_at"], "level": section["level"],
                           "method": section["method"]}
    for s in ("", "_low", "_high"):
        e = est.get("energy_j" + s)
        left = None if e is None else max(0.0, e - total_j)
        share = left / e if left is not None and e else 0.0
        out["left_kwh" + s] = None if left is None else left / J_PER_KWH
        g, c = est.get("emissions_g" + s), est.get("cost" + s)
        out["left_g" + s] = None if g is None or left is None else g * share
        out["left_cost" + s] = None if c is None or left is None else c * share
    out["currency"] = section.get("currency")
    return out


#: a process of ``jobs`` reads at least this many runs (fewer: one process reads them all)
RUNS_PER_JOB = 200


def _read_all(task: tuple[list[list[Path]], Period, Explicit, float, bool]
              ) -> list[tuple[str, Any]]:
    """Each group of ``task``'s run directories read: ``("run", line)``, ``("outside", None)``
    or ``("unreadable", why)``; the settings resolved once for them all."""
    groups, period, explicit, now, forecast = task
    months, memo = period.months(), Memo()
    out: list[tuple[str, Any]] = []
    for dirs in groups:
        try:
            line = read_one(dirs, period, explicit, now, forecast, months, memo)
        except ConfigError as e:
            out.append(("unreadable", {"run_dirs": [str(d) for d in dirs], "why": str(e)}))
            continue
        out.append(("outside", None) if line is None else ("run", line))
    return out


def _read_groups(groups: list[list[Path]], period: Period, explicit: Explicit, now: float,
                 forecast: bool, jobs: int, per_job: int) -> list[tuple[str, Any]]:
    """Every group read, in order: by ``jobs`` processes (forked, each a contiguous share) when
    there are at least ``per_job`` runs for each, else here."""
    jobs = min(jobs, len(groups) // max(per_job, 1))
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return _read_all((groups, period, explicit, now, forecast))
    n = len(groups)
    shares = [(groups[k * n // jobs:(k + 1) * n // jobs], period, explicit, now, forecast)
              for k in range(jobs)]
    # An executor, not multiprocessing.Pool: a worker that dies (killed, out of memory, a
    # library's fork handler) breaks the executor, where Pool.map waited for it for ever (seen
    # in a forked test worker); the runs are then read here, and the document is the same.
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            return [r for part in pool.map(_read_all, shares) for r in part]
    except (BrokenProcessPool, OSError) as e:
        log.warning("greentrack: the inventory's reading processes failed (%s: %s); reading "
                    "the runs in this process", type(e).__name__, e)
        return _read_all((groups, period, explicit, now, forecast))


def inventory(roots: Sequence[str | Path], period: Period, *, by: Sequence[str] | None = None,
              explicit: Explicit = None, budgets: Sequence[Budget] = (),
              emissions_csv: Sequence[str | Path] = (), now: float | None = None,
              jobs: int = 1, per_job: int = RUNS_PER_JOB) -> dict[str, Any]:
    """The inventory document of the runs under ``roots`` for ``period`` (module docstring).
    ``jobs``: processes reading the runs (each at least ``per_job`` of them); the document is
    the same whatever their number.

    Raises:
        ConfigError: a root is missing, an ``emissions_csv`` cannot be read.
    """
    now = time.time() if now is None else now
    groups = find_runs(roots)
    cc_rows: list[CodecarbonRow] = []
    notes: list[str] = []
    for path in emissions_csv:
        rows, why = read_codecarbon(path)
        cc_rows.extend(rows)
        notes.extend(why)
    results = _read_groups(groups, period, explicit, now, bool(budgets), jobs, per_job)
    lines: list[dict[str, Any]] = [x for kind, x in results if kind == "run"]
    unreadable: list[dict[str, Any]] = [x for kind, x in results if kind == "unreadable"]
    outside = sum(1 for kind, _ in results if kind == "outside")
    keys = list(by) if by else sorted({k for line in lines for k in line["labels"]})
    doc: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "schema": SCHEMA,
        "generator": {"name": "greentrack", "version": __version__},
        "generated_at": utc(now), "period": period.as_dict(),
        "roots": [str(r) for r in roots], "by": keys,
        "totals": _totals(lines), "factors": _sources(lines),
        "breakdowns": _breakdowns(lines, keys),
        "codecarbon": codecarbon_section(cc_rows, period, {str(x["run_id"]) for x in lines}),
        "data_quality": _quality(lines, unreadable, outside, len(groups)),
        "budgets": [_budget(b, lines) for b in budgets],
        "runs": lines, "warnings": notes}
    notes.extend(_uncounted_notes(doc["budgets"]))
    doc["methodology"] = methodology(doc)
    return doc


def _totals(lines: list[dict[str, Any]]) -> dict[str, Any]:
    out = empty()
    statuses: dict[str, int] = {}
    for line in lines:
        add(out, line["figures"])
        statuses[line["status"]] = statuses.get(line["status"], 0) + 1
    out["runs_by_status"] = statuses
    return out


def _sources(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each distinct factor and PUE, with the facility energy and runs it applies to."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for line in lines:
        for f in line["factors"]:
            key = (f["method"], f["source"], f["g_per_kwh"], f["pue"], f["pue_source"],
                   f["market_g_per_kwh"])
            entry = out.setdefault(key, {**{k: v for k, v in f.items() if k != "facility_kwh"},
                                         "facility_kwh": 0.0, "runs": 0})
            entry["facility_kwh"] += f["facility_kwh"]
            entry["runs"] += 1
    return sorted(out.values(), key=lambda e: -e["facility_kwh"])


def _breakdowns(lines: list[dict[str, Any]], keys: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in (*keys, *DIMENSIONS)}
    for line in lines:
        for k in keys:
            value = str(line["labels"].get(k, "(none)"))
            add(out[k].setdefault(value, empty()), line["figures"])
        for dim, field in (("host", "by_host"), ("country", "countries"), ("month", "months")):
            for value, figs in line[field].items():
                add(out[dim].setdefault(value, empty()), figs)
    return {dim: [{"value": v, **f} for v, f in sorted(
        groups.items(), key=lambda kv: kv[0] if dim == "month" else -kv[1]["facility_kwh"])]
        for dim, groups in out.items()}


def _quality(lines: list[dict[str, Any]], unreadable: list[dict[str, Any]], outside: int,
             found: int) -> dict[str, Any]:
    measured = sum(x["figures"]["measured_kwh"] for x in lines)
    estimated = sum(x["figures"]["estimated_kwh"] for x in lines)
    known = measured + estimated

    def listed(test: Any) -> list[dict[str, Any]]:
        return [{"run_id": x["run_id"], "run_dirs": x["run_dirs"], "status": x["status"]}
                for x in lines if test(x)]
    return {"measured_kwh": measured, "estimated_kwh": estimated,
            "measured_share": measured / known if known > 0 else None,
            "estimated_share": estimated / known if known > 0 else None,
            "running": listed(lambda x: x["status"] == "running"),
            "incomplete": listed(lambda x: x["status"] in ("incomplete", "failed")),
            "missing_location": listed(lambda x: x["missing_location"]),
            "cut_at_period_edges": sum(1 for x in lines if not x["whole"]),
            "split_across_months": sum(1 for x in lines if len(x["months"]) > 1),
            "copies_counted_once": sum(x["copies"] for x in lines),
            "runs_found": found, "runs_outside_period": outside, "unreadable": unreadable}


def _spent(b: Budget, figs: Mapping[str, Any]) -> float:
    if b.measure == "energy_kwh":
        return float(figs["it_kwh"])
    if b.measure == "emissions_g":
        return float(figs["location_g"])
    return float(figs["cost"].get(b.currency or "", 0.0))


def _budget(b: Budget, lines: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [x for x in lines if str(x["labels"].get(b.key)) == b.value]
    spent = sum(_spent(b, x["figures"]) for x in mine)
    key = {"energy_kwh": "left_kwh", "emissions_g": "left_g", "cost": "left_cost"}[b.measure]
    running = [x for x in mine if x["status"] in ("running", "incomplete")]
    with_fc = [x for x in running if x["forecast"] is not None and x["forecast"][key] is not None
               and (b.measure != "cost" or x["forecast"]["currency"] == b.currency)]
    forecast = None
    if with_fc:
        forecast = {s or "estimate": spent + sum(_or(x["forecast"][key + s], x["forecast"][key])
                                                 for x in with_fc)
                    for s in ("", "_low", "_high")}
    projected = forecast["estimate"] if forecast else spent
    status = ("over" if spent > b.amount else "forecast over" if projected > b.amount
              else "within")
    # a cost budget counts the runs priced in its currency: the others (no price set, or
    # another currency, never converted) are listed, not silently counted as nothing
    uncounted = [{"run_id": x["run_id"], "run_dirs": x["run_dirs"],
                  "currencies": sorted(c for c in x["figures"]["cost"] if c)}
                 for x in mine if b.measure == "cost"
                 and b.currency not in x["figures"]["cost"]]
    return {"text": b.text, "key": b.key, "value": b.value, "measure": b.measure,
            "unit": b.unit, "amount": b.amount, "spent": spent, "left": b.amount - spent,
            "used_share": spent / b.amount, "runs": len(mine), "running": len(running),
            "running_without_forecast": [x["run_dirs"] for x in running if x not in with_fc],
            "forecast": forecast, "status": status, "uncounted": uncounted}


def _uncounted_notes(budgets: list[dict[str, Any]]) -> list[str]:
    """One warning per cost budget some of whose runs have no cost in its currency."""
    out = []
    for b in budgets:
        if b["uncounted"]:
            other = sorted({c for u in b["uncounted"] for c in u["currencies"]})
            out.append(f"budget {b['text']}: {len(b['uncounted'])} of its {b['runs']} run(s) "
                       f"have no cost in {b['unit']} (" + (f"priced in {', '.join(other)}, "
                                                           "never converted" if other else
                                                           "no price set")
                       + ("; or no price set" if other and any(not u["currencies"] for u in
                                                               b["uncounted"]) else "")
                       + "): not counted in its spent")
    return out


def _or(value: float | None, other: float) -> float:
    return other if value is None else value


__all__ = ["DIMENSIONS", "FORMAT", "RUNS_PER_JOB", "SCHEMA", "VERSION", "add", "empty",
           "figures", "inventory", "read_one"]
