"""``--format hf``: a Hugging Face model-card block.

The YAML front matter holds ``co2_eq_emissions`` in GRAMS (the Hub's unit; kilograms is a common
bug): ``emissions`` (location-based Scope 2, facility energy), ``source``, ``training_type``,
``geographical_location``, ``hardware_used``. Below it, an "Environmental impact" section in
Markdown. ``training_type`` comes from the config file's ``[hf]`` table, else ``unspecified``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from greentrack._text import md_escape
from greentrack.reports.build import sig

FILENAME = "model-card.md"


def _yaml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def render(doc: dict[str, Any], opts: dict[str, Any] | None = None) -> str:
    o = dict(opts or {})
    s, loc, c, eu = doc["summary"], doc["location"], doc["compute"], doc["eu_ai_act"]
    li = doc["intensity"]["location_based"]
    grams = s["emissions_location_kg"] * 1000.0
    place = ", ".join(str(x) for x in (loc.get("cloud_provider") and
                                        f"{loc['cloud_provider']}:{loc['cloud_region']}",
                                        loc.get("region"), loc.get("country_name")) if x) or "unknown"
    source = (f"greentrack {doc['generator']['version']} ({doc['energy']['basis']} energy; "
              f"{li['method']} intensity: {li['source']})")
    yaml = "\n".join([
        "---",
        "co2_eq_emissions:",
        f"  emissions: {grams:.6g}",
        f"  source: {_yaml_str(source)}",
        f"  training_type: {_yaml_str(str(o.get('training_type', 'unspecified')))}",
        f"  geographical_location: {_yaml_str(place)}",
        f"  hardware_used: {_yaml_str(c['hardware']['text'])}",
        "---",
    ])
    market = s["emissions_market_kg"]
    e = md_escape  # values from the run (device names, sources) are literal text in Markdown
    body = [
        "## Environmental impact", "",
        f"Training this model used {sig(s['energy_kwh'], 3)} kWh of electricity on the tracked "
        f"devices ({e(doc['energy']['basis'])}), {sig(s['facility_energy_kwh'], 3)} kWh including "
        f"data-centre overhead (PUE {s['pue']:g}), over {sig(eu['wall_clock_days'], 3)} days and "
        f"{sig(eu['hardware_days'], 3)} {e(eu['hardware_days_unit'])} on {e(c['hardware']['text'])}.", "",
        f"- **Emissions (location-based, Scope 2):** {sig(grams, 3)} gCO2e at "
        f"{sig(s['carbon_intensity_g_per_kwh'], 3)} gCO2e/kWh ({e(li['source'])}).",
        "- **Emissions (market-based):** " + (f"{sig(market * 1000.0, 3)} gCO2e." if market is not None
                                               else "not reported (no contractual factor given)."),
        f"- **Embodied hardware emissions, amortized (SCI M):** {sig(s['embodied_kg'] * 1000.0, 3)} gCO2e.",
        f"- **SCI per {e(s['sci_unit'])}:** {sig(s['sci_g'], 3) if s['sci_g'] is not None else 'n/a'} gCO2e.",
        f"- **Training compute:** {sig(c['flops'], 3) + ' FLOP' if c['flops'] else 'not recorded'}.",
        f"- **Uncertainty:** {doc['methodology']['uncertainty']['band']} "
        f"(+-{doc['methodology']['uncertainty']['pct']:g}%).", "",
        f"Methodology: {e(eu['methodology'])}", "",
    ]
    return yaml + "\n\n" + "\n".join(body)


def write(doc: dict[str, Any], out_dir: Path, opts: dict[str, Any] | None = None) -> list[Path]:
    path = out_dir / FILENAME
    path.write_text(render(doc, opts), encoding="utf-8")
    return [path]
