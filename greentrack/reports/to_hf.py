"""``--format hf``: a Hugging Face model-card block, and the same block added to a card on disk.

The YAML front matter is built with ``huggingface_hub`` (``ModelCardData``; the optional extra
``greentrack[hf]``), so every figure is a YAML number however small or large (a hand-formatted
``2e-07`` is a string to PyYAML). It holds ``co2_eq_emissions`` as the Hub documents it
(https://huggingface.co/docs/hub/model-cards-co2): ``emissions`` in GRAMS of CO2e (the Hub's unit;
kilograms is a common bug: location-based Scope 2 of the facility energy), ``source``,
``training_type`` (``pre-training`` or ``fine-tuning``: the ``training_type`` setting, else
inferred by the Hugging Face integration, else left out), ``geographical_location`` and
``hardware_used``. Below it, an "Environmental impact" section in Markdown.

:func:`add_to_card` puts the block and the section into an existing ``README.md`` (the card a
``Trainer`` writes), keeping its other metadata and text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from greentrack.common.errors import ConfigError
from greentrack.common.text import md_escape
from greentrack.reports.build import sig

FILENAME = "model-card.md"
SECTION = "## Environmental impact"


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("--format", "hf", "needs huggingface_hub: pip install 'greentrack[hf]'") from None
    return huggingface_hub


def co2_eq_emissions(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``co2_eq_emissions`` metadata of the run: numbers as floats, unknown fields left out."""
    s, loc, c = doc["summary"], doc["location"], doc["compute"]
    li = doc["intensity"]["location_based"]
    place = ", ".join(str(x) for x in (loc.get("cloud_provider") and
                                        f"{loc['cloud_provider']}:{loc['cloud_region']}",
                                        loc.get("region"), loc.get("country_name")) if x) or "unknown"
    source = (f"greentrack {doc['generator']['version']} ({doc['energy']['basis']} energy; "
              f"{li['method']} intensity: {li['source']})")
    block = {"emissions": float(s["emissions_location_kg"]) * 1000.0, "source": source,
             "training_type": doc["run"].get("training_type"), "geographical_location": place,
             "hardware_used": c["hardware"]["text"]}
    return {k: v for k, v in block.items() if v is not None}


def metadata_yaml(doc: dict[str, Any]) -> str:
    """The card's YAML metadata (without the ``---`` fences), from ``huggingface_hub``."""
    return str(_hub().ModelCardData(co2_eq_emissions=co2_eq_emissions(doc)).to_yaml())


def section(doc: dict[str, Any]) -> str:
    """The "Environmental impact" Markdown section."""
    s, c, eu = doc["summary"], doc["compute"], doc["eu_ai_act"]
    li = doc["intensity"]["location_based"]
    grams = float(s["emissions_location_kg"]) * 1000.0
    run = doc["run"]
    market = s["emissions_market_kg"]
    e = md_escape  # values from the run (device names, sources) are literal text in Markdown
    body = [
        SECTION, "",
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
        f"- **Training type:** {e(run.get('training_type') or 'not stated')} "
        f"({e(run.get('training_type_basis') or 'training_type setting')}).",
        f"- **Quality band:** {doc['methodology']['uncertainty']['band']} "
        f"(+-{doc['methodology']['uncertainty']['pct']:g}%).", "",
        f"Methodology: {e(eu['methodology'])}", "",
    ]
    return "\n".join(body)


def render(doc: dict[str, Any]) -> str:
    """A model card holding only greentrack's block: metadata and section."""
    return f"---\n{metadata_yaml(doc)}\n---\n\n{section(doc)}"


def add_to_card(path: str | Path, doc: dict[str, Any]) -> None:
    """Set ``co2_eq_emissions`` in the model card at ``path`` (other metadata kept) and put the
    "Environmental impact" section in its text, replacing one already there (a card updated twice
    holds the latest figures once)."""
    hub = _hub()
    card = hub.ModelCard.load(Path(path))
    card.data.co2_eq_emissions = co2_eq_emissions(doc)
    text = card.text
    if SECTION in text:  # up to the next section of the same level, or the end
        head, _, rest = text.partition(SECTION)
        tail = rest.find("\n## ")
        text = head + section(doc).rstrip("\n") + ("\n" + rest[tail:] if tail >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section(doc)
    hub.ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}").save(Path(path))


def write(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    path = out_dir / FILENAME
    path.write_text(render(doc), encoding="utf-8")
    return [path]
