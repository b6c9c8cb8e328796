"""The inventory document (:mod:`greentrack.reports.inventory`) as text: its methodology
paragraph, Markdown, HTML (with the monthly chart), the breakdowns' CSV and the long-format CSV
(one row per run x month, and one per codecarbon row x month) for pandas, DuckDB or Spark.

Every number is the document's; this module only scales units for reading (Wh for the small,
MWh for the big) and lays them out.
"""

from __future__ import annotations

import csv
import io
import json
import re
from html import escape as _html
from pathlib import Path
from typing import Any

from greentrack.common.text import finite, json_text, md_escape, printable
from greentrack.common.units import ENERGY_UNITS, J_PER_KWH, energy_text, unit_for
from greentrack.reports import svg
from greentrack.reports.inventory_input import Period
from greentrack.reports.to_csv import cell

#: the inventory's output formats (``--format``) and the files each writes
FILES = {"json": ("inventory.json",), "md": ("inventory.md",), "html": ("inventory.html",),
         "csv": ("inventory.csv", "inventory-long.csv"), "parquet": ("inventory-long.parquet",)}
#: formats written only when their library is installed (``pip install 'greentrack[parquet]'``)
OPTIONAL = {"parquet": "pyarrow"}
#: the long-format export's columns (besides one per ``--by`` label key)
LONG = ("source", "run_id", "run_dirs", "status", "month", "hosts", "country", "it_kwh",
        "facility_kwh", "location_g", "market_g", "market_or_location_g", "cost", "currency",
        "gpu_hours", "measured_kwh", "estimated_kwh", "intensity_method", "pue")


def energy(kwh: float) -> str:
    """Energy in the unit that reads best, as every report writes it (mWh, Wh, kWh, MWh)."""
    return energy_text(kwh * J_PER_KWH, 4)


def mass(g: float) -> str:
    """CO2e in g, kg or t."""
    a = abs(g)
    for unit, scale in (("t", 1e6), ("kg", 1e3)):
        if a >= scale:
            return f"{g / scale:.4g} {unit} CO2e"
    return f"{g:.4g} g CO2e"


def count(x: float) -> str:
    """A count or hours: grouped digits from 1000 on (``34,650``), else 4 significant figures."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def money(cost: dict[str, float]) -> str:
    return "; ".join(f"{v:,.2f} {c}".strip() for c, v in sorted(cost.items())) or "no price set"


def methodology(doc: dict[str, Any]) -> str:
    """The paragraph an auditor needs: boundary, PUE, intensity method per run, exclusions."""
    runs = doc["runs"]
    p = doc["period"]
    methods: dict[str, int] = {}
    for r in runs:
        for m in {f["method"] for f in r["factors"]}:
            methods[m] = methods.get(m, 0) + 1
    pues = sorted({(f["pue"], f["pue_source"]) for f in doc["factors"]})
    q = doc["data_quality"]
    market = sum(1 for r in runs if r["market_g_per_kwh"])
    return " ".join([
        f"Scope: the electricity used by the {len(runs)} greentrack training run(s) found under "
        f"{', '.join(doc['roots'])} between {p['start']} and {p['end']} (UTC, end excluded): "
        "each run's GPUs, CPU packages and memory as recorded by greentrack in every process "
        "of the run (measured by energy counters where readable, else estimated; the share of "
        "each is stated under data quality), node-local copies of a store counted once "
        f"({q['copies_counted_once']} copies here). Facility energy is IT energy x the PUE of "
        "each run's data centre: " + "; ".join(f"{v:g} ({s})" for v, s in pues) + ".",
        "Location-based Scope 2 (GHG Protocol Scope 2 Guidance, 2015) is facility energy x the "
        "grid intensity recorded for each run: " + ", ".join(
            f"{n} run(s) {m}" for m, n in sorted(methods.items())) + " (a time-resolved "
        "intensity is integrated against the run's energy over time). Market-based Scope 2 uses "
        f"the contractual factor set for {market} run(s); for the others the location-based "
        "figure stands in (the Guidance's hierarchy, without a residual mix), and the share "
        "covered by a contractual factor is stated.",
        f"A run crossing the start or end of the period ({q['cut_at_period_edges']} here) or of "
        f"a month ({q['split_across_months']} here) is split by its own energy over time (its "
        "stored samples), never by its start; "
        "its GPU-hours by time. Runs still running are counted up to the time of this inventory.",
        "Excluded: embodied emissions (Scope 3), networking, storage and idle machines no run "
        "tracked, work outside the roots, and directories that could not be read "
        f"({len(q['unreadable'])} here). codecarbon rows (emissions.csv) are shown apart, as "
        "codecarbon states them, never added to the measured totals."])


def _row(value: str, f: dict[str, Any]) -> list[str]:
    share = (f["market_covered_kwh"] / f["facility_kwh"]) if f["facility_kwh"] > 0 else 0.0
    return [md_escape(value), energy(f["it_kwh"]), energy(f["facility_kwh"]),
            mass(f["location_g"]), f"{mass(f['market_or_location_g'])} ({share:.0%} contractual)",
            money(f["cost"]), count(f["gpu_hours"]), count(f["runs"])]


HEAD = ["", "IT energy", "facility energy", "location-based", "market-based", "cost",
        "GPU-hours", "runs"]


def _table(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _quality_lines(q: dict[str, Any]) -> list[str]:
    share = q["measured_share"]
    out = [f"- Energy measured: {'n/a' if share is None else f'{share:.1%}'}, estimated: "
           f"{'n/a' if share is None else f'{1 - share:.1%}'}",
           f"- Runs found: {q['runs_found']}, outside the period: {q['runs_outside_period']}, "
           f"cut at the period's edges: {q['cut_at_period_edges']}, split across months: "
           f"{q['split_across_months']}, store copies "
           f"counted once: {q['copies_counted_once']}"]
    for name, what in (("running", "still running"), ("incomplete", "incomplete or failed"),
                       ("missing_location", "without a location (world-average intensity)")):
        out.append(f"- Runs {what}: {len(q[name])}")
        out.extend(f"  - `{md_escape(', '.join(r['run_dirs']))}` ({md_escape(r['run_id'])})"
                   for r in q[name][:50])
    out.extend(f"- Not read: `{md_escape(', '.join(u['run_dirs']))}`: {md_escape(u['why'])}"
               for u in q["unreadable"][:50])
    return out


def markdown(doc: dict[str, Any]) -> str:
    t, p = doc["totals"], doc["period"]
    out = [f"# Carbon inventory {md_escape(p['text'])} ({p['start']} to {p['end']})", "",
           *_table([_row("total", t)]), "",
           f"{t['runs']} run(s): " + ", ".join(f"{n} {s}" for s, n in
                                              sorted(t["runs_by_status"].items())), "",
           "## Factors and their sources", ""]
    out += [f"- {md_escape(f['country'])}, {md_escape(f['method'])}: "
            + ("no intensity" if f["g_per_kwh"] is None else f"{f['g_per_kwh']:.2f} g/kWh")
            + f", {md_escape(f['source'])}; PUE {f['pue']:g} ({md_escape(f['pue_source'])})"
            + (f"; market-based {f['market_g_per_kwh']:g} g/kWh, "
               f"{md_escape(f.get('market_source') or '')}" if f["market_g_per_kwh"] is not None
               else "") + f": {energy(f['facility_kwh'])} facility, {f['runs']} run part(s)"
            for f in doc["factors"]]
    for dim, rows in doc["breakdowns"].items():
        out += ["", f"## By {md_escape(dim)}", "", *_table([_row(r["value"], r) for r in rows])]
    if doc["budgets"]:
        out += ["", "## Budgets", "", "| budget | spent | left | forecast | status |",
                "|---|---|---|---|---|"]
        for b in doc["budgets"]:
            fc = b["forecast"]
            out.append(f"| {md_escape(b['text'])} | {_amount(b, b['spent'])} | "
                       f"{_amount(b, b['left'])} | "
                       + (f"{_amount(b, fc['estimate'])} ({_amount(b, fc['_low'])} to "
                          f"{_amount(b, fc['_high'])})" if fc else "none") + f" | {b['status']} |")
        uncounted = [b for b in doc["budgets"] if b.get("uncounted")]
        out += [""] if uncounted else []
        for b in uncounted:
            u = b["uncounted"]
            out.append(f"- {md_escape(b['text'])}: {len(u)} run(s) not counted, without a cost "
                       f"in {md_escape(b['unit'])}:")
            out.extend(f"  - `{md_escape('+'.join(x['run_dirs']))}` ("
                       + (f"priced in {md_escape(', '.join(x['currencies']))}"
                          if x["currencies"] else "no price set") + ")" for x in u[:50])
            out.extend([f"  - and {len(u) - 50} more (inventory.json)"] if len(u) > 50 else [])
    cc = doc["codecarbon"]
    if cc["files"]:
        out += ["", "## codecarbon rows (their own source, not in the totals above)", "",
                f"{cc['totals']['rows']} row(s): {energy(cc['totals']['energy_kwh'])}, "
                f"{mass(cc['totals']['emissions_g'])}, as codecarbon stated them"]
    out += ["", "## Data quality", "", *_quality_lines(doc["data_quality"]),
            "", "## Methodology", "", md_escape(doc["methodology"]), ""]
    out += [f"- warning: {md_escape(w)}" for w in doc["warnings"]]
    return "\n".join(out) + "\n"


def _amount(b: dict[str, Any], v: float) -> str:
    if b["measure"] == "energy_kwh":
        return energy(v)
    if b["measure"] == "emissions_g":
        return mass(v)
    return f"{v:,.2f} {b['unit']}"


def chart(doc: dict[str, Any]) -> str:
    """Facility energy by month: a bar per month of the period, in the unit of the largest."""
    months = {m["value"]: m["facility_kwh"] for m in doc["breakdowns"]["month"]}
    labels = [label for label, _, _ in _month_edges(doc)]
    unit, per = unit_for(max(months.values(), default=0.0) * J_PER_KWH, ENERGY_UNITS)
    return svg.bars("Facility energy by month", labels,
                    [months.get(label, 0.0) * J_PER_KWH / per for label in labels], unit)


def _month_edges(doc: dict[str, Any]) -> list[tuple[str, float, float]]:
    p = doc["period"]
    return Period(p["text"], p["start_unix"], p["end_unix"]).months()


def _plain(text: str) -> str:
    """Markdown text as the characters it stands for (escapes and code marks removed)."""
    return re.sub(r"\\(.)", r"\1", text.replace("`", ""))


def html(doc: dict[str, Any]) -> str:
    """The Markdown's content as a self-contained page, with the monthly chart."""
    body = []
    for line in markdown(doc).splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{_html(_plain(line[2:]))}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_html(_plain(line[3:]))}</h2>")
            if line == "## By month":
                body.append(f"<figure>{chart(doc)}</figure>")
        elif line.startswith("|"):
            cells = [_plain(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if set("".join(cells)) <= {"-"}:
                continue
            tag = "th" if body and not body[-1].startswith("<tr") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{_html(c)}</{tag}>" for c in cells) + "</tr>")
        elif line.lstrip().startswith("- "):
            body.append(f"<li>{_html(_plain(line.lstrip()[2:]))}</li>")
        elif line.strip():
            body.append(f"<p>{_html(_plain(line))}</p>")
    out: list[str] = []
    open_tag = ""
    for b in body:
        tag = "table" if b.startswith("<tr") else "ul" if b.startswith("<li") else ""
        if tag != open_tag:
            if open_tag:
                out.append(f"</{open_tag}>")
            if tag:
                out.append(f"<{tag}>")
            open_tag = tag
        out.append(b)
    if open_tag:
        out.append(f"</{open_tag}>")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>greentrack inventory "
            f"{_html(printable(doc['period']['text']))}</title><style>body{{font-family:sans-serif;"
            "max-width:70em;margin:auto}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
            "text-align:right}td:first-child{text-align:left}</style></head><body>"
            + "\n".join(out) + "</body></html>\n")


def breakdown_csv(doc: dict[str, Any]) -> str:
    """Every breakdown as rows: ``dimension, value`` and the figures (costs one column each)."""
    currencies = sorted({c for rows in doc["breakdowns"].values() for r in rows for c in r["cost"]})
    cols = ["dimension", "value", "it_kwh", "facility_kwh", "location_g", "market_g",
            "market_covered_kwh", "market_or_location_g", "gpu_hours", "measured_kwh",
            "estimated_kwh", "runs", *(f"cost_{c or 'unnamed'}" for c in currencies)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    rows = [("total", "total", doc["totals"])] + [
        (dim, r["value"], r) for dim, rs in doc["breakdowns"].items() for r in rs]
    for dim, value, f in rows:
        w.writerow([dim, cell(value), *(f[c] for c in cols[2:12]),
                    *(f["cost"].get(c, "") for c in currencies)])
    return buf.getvalue()


def long_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run x month (its label values in their own columns), then one per
    codecarbon run x month (its file as ``run_dirs``, its ``project_name`` as the label
    ``project``): the long format."""
    out = []
    for r in doc["runs"]:
        countries = "+".join(sorted(r["countries"]))
        for month, f in r["months"].items():
            cost = f["cost"]
            out.append({
                "source": "greentrack", "run_id": r["run_id"], "run_dirs": "+".join(r["run_dirs"]),
                "status": r["status"], "month": month, "hosts": "+".join(r["hosts"]),
                "country": countries, **{k: f[k] for k in LONG if k in f and k != "cost"},
                "cost": sum(cost.values()) if len(cost) == 1 else "",
                "currency": next(iter(cost)) if len(cost) == 1 else "",
                "intensity_method": (r["intensity"] or {}).get("method", ""),
                "pue": r["pue"]["value"],
                **{f"label_{k}": r["labels"].get(k, "") for k in doc["by"]}})
    for m in doc["codecarbon"]["by_run_month"]:
        out.append({"source": "codecarbon", "run_id": m["run_id"], "run_dirs": m["file"],
                    "month": m["month"], "country": m["country"],
                    "facility_kwh": m["energy_kwh"], "location_g": m["emissions_g"],
                    **({"label_project": m["project"]} if "project" in doc["by"] else {})})
    return out


def long_csv(doc: dict[str, Any]) -> str:
    cols = [*LONG, *(f"label_{k}" for k in doc["by"])]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", restval="")
    w.writeheader()
    for row in long_rows(doc):
        w.writerow({k: cell(v) for k, v in row.items()})
    return buf.getvalue()


#: the long format's columns that hold numbers (the rest are text; a blank is null)
_LONG_NUMBERS = frozenset({"it_kwh", "facility_kwh", "location_g", "market_g",
                           "market_or_location_g", "cost", "gpu_hours", "measured_kwh",
                           "estimated_kwh", "pue"})


def long_parquet(doc: dict[str, Any], path: Path) -> None:
    """The long format as Parquet (Apache Arrow's writer, pyarrow: imported here, as only this
    format needs it): the CSV's rows and columns, numbers as float64, text as strings, a blank
    as null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = [*LONG, *(f"label_{k}" for k in doc["by"])]
    rows = long_rows(doc)

    def value(row: dict[str, Any], c: str) -> Any:
        v = row.get(c)
        if v is None or v == "":
            return None
        return float(v) if c in _LONG_NUMBERS else str(v)

    table = pa.table({c: pa.array([value(r, c) for r in rows],
                                  pa.float64() if c in _LONG_NUMBERS else pa.string())
                      for c in cols})
    pq.write_table(table, path)


#: an inventory of more runs than this is written as compact JSON (one line)
INDENTED_RUNS = 1000


def json_of(doc: dict[str, Any]) -> str:
    """The JSON file: indented, or compact beyond :data:`INDENTED_RUNS` runs (Python's C encoder
    writes only compact JSON: 10,000 runs in a fraction of the 2 s the indented form takes)."""
    if len(doc["runs"]) <= INDENTED_RUNS:
        return json_text(doc)
    try:  # no copy of a large document unless it holds a non-finite number (then null)
        return json.dumps(doc, allow_nan=False, separators=(",", ":")) + "\n"
    except ValueError:
        return json.dumps(finite(doc), allow_nan=False, separators=(",", ":")) + "\n"


def write(doc: dict[str, Any], formats: list[str], out_dir: Path) -> list[Path]:
    """The files of ``formats`` into ``out_dir``; returns their paths."""
    render = {"inventory.json": json_of, "inventory.md": markdown, "inventory.html": html,
              "inventory.csv": breakdown_csv, "inventory-long.csv": long_csv}
    written = []
    for fmt in formats:
        for name in FILES[fmt]:
            path = out_dir / name
            if name.endswith(".parquet"):
                long_parquet(doc, path)
            else:
                path.write_text(render[name](doc), encoding="utf-8")
            written.append(path)
    return written


__all__ = ["FILES", "LONG", "OPTIONAL", "long_parquet", "breakdown_csv", "chart", "count", "energy", "html", "long_csv", "long_rows",
           "markdown", "mass", "methodology", "write"]
