"""``greentrack inventory``: a period's footprint across every run under ROOTs
(:mod:`greentrack.reports.inventory`), in JSON, Markdown, HTML and CSV.

Bad input (a period, a budget, a format, a root) ends in one line naming the setting, the value
and what is allowed (exit 2), before any run is read.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from greentrack.cli.reports import _guard, add_carbon_options, make_config
from greentrack.common.errors import ConfigError
from greentrack.common.files import staged_dir
from greentrack.common.text import printable
from greentrack.reports.inventory import DIMENSIONS, inventory
from greentrack.reports.inventory_input import parse_budget, parse_period
from greentrack.reports.inventory_text import FILES, OPTIONAL, write


def add_inventory(sub: Any) -> None:
    """Register ``inventory`` on the main parser's subparsers."""
    inv = sub.add_parser(
        "inventory", help="a period's footprint across every run under some directories",
        description="Walk ROOTs for run directories (node-local copies of a store counted once) "
                    "and write the period's carbon inventory: IT and facility energy, location- "
                    "and market-based Scope 2 with their factors, cost, GPU-hours, by label, "
                    "host, country and month, with data quality, budgets and the methodology. A "
                    "run crossing the period's edges is split by its own energy over time.")
    inv.add_argument("roots", nargs="+", metavar="ROOT", help="directories holding run directories")
    inv.add_argument("--period", required=True,
                     help="2026, 2026-Q3, 2026-07, 2026-07-14, or FROM..TO of those (UTC)")
    inv.add_argument("--by", metavar="KEY,...",
                     help="label keys to break down by (default: every label key found); host, "
                          "country and month always")
    inv.add_argument("--budget", action="append", metavar="KEY=VALUE:AMOUNT", default=[],
                     help="a label's budget for the period, e.g. project=foo:2MWh (IT energy), "
                          "team=nlp:5t (CO2e), project=foo:1200EUR (repeatable)")
    inv.add_argument("--emissions-csv", action="append", metavar="FILE", default=[],
                     dest="inv_emissions_csv",
                     help="codecarbon emissions.csv files: their rows are shown as their own "
                          "source, never added to the measured totals (repeatable)")
    inv.add_argument("--format", dest="inv_format", default="json,md,html,csv",
                     metavar="FMT,...",
                     help="comma list of json, md, html, csv, parquet (default json, md, html, "
                          "csv; csv writes the breakdowns and the long format: one row per run x "
                          "month; parquet the long format, with pyarrow installed)")
    inv.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="processes reading the runs (default: the CPUs this process may use, "
                          "at most 8; one for fewer than 200 runs a process)")
    inv.add_argument("--out", default="greentrack-inventory", metavar="DIR",
                     help="output directory (default greentrack-inventory)")
    add_carbon_options(inv)
    inv.set_defaults(handler=cmd_inventory)


def _formats(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names or any(n not in FILES for n in names):
        raise ConfigError("--format", text, f"must be a comma list of {', '.join(FILES)}")
    for name in names:
        library = OPTIONAL.get(name)
        if library is not None and importlib.util.find_spec(library) is None:
            raise ConfigError("--format", text, f"{name} needs {library}: pip install "
                              f"'greentrack[{name}]' (or leave {name} out)")
    return list(dict.fromkeys(names))


def _by(text: str | None) -> list[str] | None:
    if text is None:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise ConfigError("--by", text, "must be a comma list of label keys, e.g. project,team")
    return [k for k in keys if k not in DIMENSIONS]


def _jobs(n: int | None) -> int:
    if n is None:
        return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1))
    if not 1 <= n <= 256:
        raise ConfigError("--jobs", n, "must be a number of processes from 1 to 256")
    return n


def cmd_inventory(ns: argparse.Namespace) -> int:
    return _guard(_inventory, ns)


def _inventory(ns: argparse.Namespace) -> int:
    period = parse_period(ns.period)
    budgets = [parse_budget(b) for b in ns.budget]
    formats = _formats(ns.inv_format)
    by = _by(ns.by)
    jobs = _jobs(ns.jobs)
    explicit = make_config(ns)
    out = Path(ns.out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "exists and is not a directory")
    doc = inventory(ns.roots, period, by=by, explicit=explicit, budgets=budgets,
                    emissions_csv=ns.inv_emissions_csv, jobs=jobs)
    with staged_dir(out) as tmp:
        written = write(doc, formats, tmp)
    for path in written:
        print(printable(out / path.relative_to(tmp)))
    for u in doc["data_quality"]["unreadable"]:
        print(f"greentrack: warning: not read: {printable('+'.join(u['run_dirs']))}: "
              f"{printable(u['why'])}", file=sys.stderr)
    for w in doc["warnings"]:
        print(f"greentrack: warning: {printable(w)}", file=sys.stderr)
    return 0


__all__ = ["add_inventory", "cmd_inventory"]
