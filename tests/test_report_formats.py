"""Every output format validated: own JSON Schema, BoAmps' official schemas, codecarbon's CSV
header, the model card's YAML, well-formed SVG/HTML; and the CLI end to end from `greentrack run`."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest
import yaml

import greentrack
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import (BOAMPS_DIR, boamps_validator, clean_env, make_run, python_env,
                           report_json, run_cli, validate_own_schema)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("formats")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        run = make_run(root, gpu_w=250.0)
        cfg = root / "greentrack.toml"
        cfg.write_text('country = "DE"\npue = 1.3\nmarket_factor_g_per_kwh = 35.0\n'
                       'electricity_price = 0.25\ncurrency = "EUR"\n'
                       '[hf]\ntraining_type = "fine-tuning"\n'
                       '[boamps]\ntask_family = "text generation"\npublisher = "ACME lab"\n')
        code, out, err = run_cli(["report", str(run), "--format", "all", "--out", str(root / "out"),
                                  "--config", str(cfg)])
        assert code == 0, err
        yield root / "out"


@pytest.mark.slow
def test_all_formats_are_written(outputs: Path) -> None:
    names = {p.name for p in outputs.iterdir()}
    assert {"report.json", "report.md", "report.html", "emissions.csv", "boamps-report.json",
            "model-card.md", "report-power.svg", "report-cumulative.svg", "report-steps.svg"} <= names


def test_json_report_validates_and_the_schema_is_not_vacuous(outputs: Path) -> None:
    doc = report_json(outputs)
    validate_own_schema(doc)
    assert doc["format"] == "greentrack-report" and doc["version"].startswith("1.")
    for path, bad in ((("summary", "energy_kwh"), None), (("summary", "pue"), 0.5),
                      (("intensity", "location_based", "method"), "guess")):
        broken = copy.deepcopy(doc)
        node = broken
        for key in path[:-1]:
            node = node[key]
        if bad is None:
            del node[path[-1]]
        else:
            node[path[-1]] = bad
        with pytest.raises(jsonschema.ValidationError):
            validate_own_schema(broken)


def test_boamps_report_is_valid_against_the_official_schemas(outputs: Path) -> None:
    validator = boamps_validator()
    # the validator resolves the https $refs to the local files: the shipped example passes and a
    # measure without its required powerConsumption fails
    example = json.loads((BOAMPS_DIR / "energy-report-llm-inference.json").read_text())
    validator.validate(example)
    report = json.loads((outputs / "boamps-report.json").read_text())
    validator.validate(report)
    broken = copy.deepcopy(report)
    del broken["measures"][0]["powerConsumption"]
    assert not validator.is_valid(broken)
    doc = report_json(outputs)
    m = report["measures"][0]
    assert m["powerConsumption"] == doc["summary"]["energy_kwh"]
    assert m["measurementMethod"] == "greentrack" and m["gpuTrackingMode"] == "nvml-energy-counter"
    assert report["environment"]["country"] == "germany"
    assert report["environment"]["powerSourceCarbonIntensity"] == doc["summary"]["carbon_intensity_g_per_kwh"]
    assert report["quality"] == doc["summary"]["quality"]
    assert report["task"]["taskFamily"] == "text generation"
    assert report["header"]["publisher"]["name"] == "ACME lab"
    assert {c["componentType"] for c in report["infrastructure"]["components"]} == {"gpu", "cpu", "ram"}


def test_csv_has_codecarbons_columns_and_the_reports_figures(outputs: Path) -> None:
    from codecarbon.output_methods.emissions_data import EmissionsData
    columns = [f.name for f in dataclasses.fields(EmissionsData)]
    with (outputs / "emissions.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == columns and len(rows) == 1
    row, s = rows[0], report_json(outputs)["summary"]
    assert float(row["emissions"]) == pytest.approx(s["emissions_location_kg"])
    assert float(row["energy_consumed"]) == pytest.approx(s["facility_energy_kwh"])
    parts = sum(float(row[k]) for k in ("cpu_energy", "gpu_energy", "ram_energy"))
    assert parts == pytest.approx(s["facility_energy_kwh"], rel=1e-9)  # energies include PUE
    assert float(row["duration"]) == pytest.approx(s["duration_s"])
    assert float(row["pue"]) == 1.3 and row["country_iso_code"] == "DEU"
    assert row["gpu_count"] == "1" and "H100" in row["gpu_model"]
    assert float(row["gpu_power"]) == pytest.approx(250.0 * 1.3, rel=0.2)


def test_model_card_yaml_is_in_grams(outputs: Path) -> None:
    text = (outputs / "model-card.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    co2 = front["co2_eq_emissions"]
    s = report_json(outputs)["summary"]
    assert co2["emissions"] == pytest.approx(s["emissions_location_kg"] * 1000.0, rel=1e-5)
    assert set(co2) == {"emissions", "source", "training_type", "geographical_location", "hardware_used"}
    assert co2["training_type"] == "fine-tuning" and co2["geographical_location"] == "Germany"
    assert "H100" in co2["hardware_used"] and "greentrack" in co2["source"]
    assert "## Environmental impact" in text and "market-based" in text


class _Checker(HTMLParser):
    VOID = {"meta", "br", "img", "hr", "input", "link", "rect", "line", "polyline", "path"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.svgs += tag == "svg"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()


def test_html_and_markdown_disclosures(outputs: Path) -> None:
    html = (outputs / "report.html").read_text()
    checker = _Checker()
    checker.feed(html)
    assert checker.svgs == 4 and not checker.stack  # power, cumulative, steps, timeline
    md = (outputs / "report.md").read_text()
    doc = report_json(outputs)
    for text in (html, md):
        for needed in ("Scope 2", "market-based", "location-based", "Embodied", "SCI", "EU AI Act",
                       "Methodology", "nvml-energy-counter", "rapl-powercap", "high (+-10%)",
                       "Uptime Institute" if doc["pue"]["default"] else "user setting (pue)",
                       "global_energy_mix.json", str(doc["methodology"]["samples_total"])):
            assert needed in text, needed
    for name in ("power", "cumulative", "steps", "timeline"):
        assert f"](report-{name}.svg)" in md
        root = ET.parse(outputs / f"report-{name}.svg").getroot()  # well-formed XML
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    power = ET.parse(outputs / "report-power.svg").getroot()
    lines = power.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == len(doc["timeseries"]["series"]) == 3  # gpu0, package-0, dram-0


@pytest.mark.slow
def test_cli_end_to_end_from_greentrack_run_with_env_file_and_flags(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        run_dir = tmp_path / "cli-run"
        env = python_env(**tree.env, GREENTRACK_INTERVAL_S="0.02", GREENTRACK_COUNTER_INTERVAL_S="0.1",
                         GREENTRACK_MARKET_FACTOR_G_PER_KWH="99", GREENTRACK_PUE="1.4")
        for name in ("GREENTRACK_CONFIG", "GREENTRACK_ELECTRICITYMAPS_TOKEN", "RANK", "LOCAL_RANK"):
            env.pop(name, None)
        with LiveCounters(tree, {"intel-rapl:0": 30.0, "intel-rapl:0:1": 3.0}):
            proc = subprocess.run([sys.executable, "-m", "greentrack", "run", "--run-dir", str(run_dir),
                                   "--country", "SE", "--region", "SE3", "--quiet", "--",
                                   sys.executable, "-c", "import time; time.sleep(0.6)"],
                                  env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        cfg = tmp_path / "g.toml"
        cfg.write_text("[greentrack]\npue = 1.25\ncountry = 'FR'\n[report]\nsci_unit = 'flop'\n")
        proc = subprocess.run([sys.executable, "-m", "greentrack", "report", str(run_dir), "--out",
                               str(tmp_path / "out"), "--config", str(cfg), "--country", "NO",
                               "--format", "json,csv"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        doc = report_json(tmp_path / "out")
        validate_own_schema(doc)
        summ = greentrack.summarize(run_dir)
        assert doc["summary"]["energy_kwh"] == summ["energy_kwh"] > 0
        # flags beat the file, the file beats the environment, the environment fills the rest
        assert doc["location"]["country_iso3"] == "NOR"
        assert doc["summary"]["pue"] == 1.25
        assert doc["intensity"]["market_based"]["g_per_kwh"] == 99.0
        assert doc["summary"]["sci_unit"] == "flop" and doc["summary"]["sci_g"] is None  # no FLOPs
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["emissions.csv", "report.json"]
        # the carbon settings given to `greentrack run` are recorded with the run
        from greentrack.store import StoreReader, store_paths
        settings = StoreReader(store_paths(run_dir)[0]).meta["settings"]
        assert settings["country"] == "SE" and settings["region"] == "SE3"


def test_estimated_energy_is_labelled_as_such_in_every_format(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path):  # no powercap tree, no GPU: CPU and DRAM are estimates
        run = tmp_path / "est"
        with greentrack.Tracker(run, interval_s=0.02, counter_interval_s=0.1) as tracker:
            for _ in range(3):
                with tracker.step():
                    sum(i * i for i in range(20000))
        code, out, err = run_cli(["report", str(run), "--country", "FR", "--out", str(tmp_path / "o")])
    assert code == 0, err
    doc = report_json(tmp_path / "o")
    validate_own_schema(doc)
    assert doc["summary"]["energy_basis"] == doc["eu_ai_act"]["energy_basis"] == "estimated"
    assert doc["summary"]["quality"] == "low" and doc["energy"]["measured_kwh"] == 0
    assert doc["methodology"]["estimated"] and not doc["methodology"]["measured"]
    assert "ESTIMATED" in (tmp_path / "o" / "report.md").read_text()
    assert "ESTIMATED" in (tmp_path / "o" / "report.html").read_text()
    assert json.loads((tmp_path / "o" / "boamps-report.json").read_text())["quality"] == "low"
    card = yaml.safe_load((tmp_path / "o" / "model-card.md").read_text().split("---\n")[1])
    assert "estimated energy" in card["co2_eq_emissions"]["source"]
    assert "Estimated:" in doc["eu_ai_act"]["methodology"]
