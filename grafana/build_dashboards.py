"""Writes grafana/dashboards/*.json from the panel lists below (stdlib only).

The committed JSON is the importable artifact; this script keeps the two dashboards consistent
(same variables, datasource references and label filters). ``tests/test_prometheus_dashboards.py``
fails when the committed files differ from what this script writes. Run after an edit:

    python3 grafana/build_dashboards.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", run=~"$run", host=~"$host"'  # every training-dashboard query filters on these
FLEET = 'job=~"$job", host=~"$host"'
INTENSITY_UNIT = "suffix: gCO2e/kWh"


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": f"{name}-values"},
            "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2, "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "hide": 0}


def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "refresh": 1, "hide": 0, "current": {}}


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
           fmt: str = "time_series") -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref,
            "instant": instant, "range": not instant, "format": fmt}


def panel(kind: str, title: str, description: str, targets: list[dict[str, Any]], unit: str,
          w: int, h: int, **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"type": kind, "title": title, "description": description, "datasource": DS,
                         "targets": targets, "gridPos": {"w": w, "h": h},
                         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                         "options": {}}
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    p.update(extra)
    return p


def right_axis(ref_legend: str, unit: str) -> dict[str, Any]:
    return {"matcher": {"id": "byFrameRefID", "options": ref_legend},
            "properties": [{"id": "custom.axisPlacement", "value": "right"},
                           {"id": "unit", "value": unit}]}


def training_panels() -> list[dict[str, Any]]:
    e = f"greentrack_energy_joules_total{{{SEL}}}"
    step_sum = f"greentrack_step_energy_joules_sum{{{SEL}}}"
    step_count = f"greentrack_step_energy_joules_count{{{SEL}}}"
    return [
        panel("stat", "Energy", "Energy of all selected devices since their trackers started "
              "(GPU + CPU + DRAM, measured and estimated).",
              [target(f"sum({e}) / 3600")], "watth", 4, 4),
        panel("stat", "Measured share", "Share of the energy read from hardware counters (NVML, "
              "RAPL); the rest is estimated (see the Devices table).",
              [target(f'(sum({e[:-1]}, source="measured"}}) or vector(0)) / sum({e})')],
              "percentunit", 4, 4),
        panel("stat", "Emissions", "Operational emissions so far: energy x PUE (when set) x "
              "the carbon intensity in use.",
              [target(f"sum(greentrack_emissions_grams_total{{{SEL}}})")], "massg", 4, 4),
        panel("stat", "Carbon intensity", "Grid carbon intensity in use (gCO2e/kWh) and its source.",
              [target(f"max by (source) (greentrack_carbon_intensity_grams_per_kilowatt_hour"
                      f"{{{SEL}}})", "{{source}}")], INTENSITY_UNIT, 4, 4),
        panel("stat", "GPU-hours", "Seconds since each tracker started times the GPUs it "
              "measures, in hours.",
              [target(f"sum(greentrack_gpu_seconds_total{{{SEL}}}) / 3600")], "h", 4, 4),
        panel("stat", "Steps", "Steps whose energy has been attributed, by phase.",
              [target(f"sum by (phase) (greentrack_steps_total{{{SEL}}})", "{{phase}}")],
              "none", 4, 4),
        panel("timeseries", "Power by device", "Latest power reading of each device; estimated "
              "devices are marked in the legend.",
              [target(f"sum by (host, kind, device, source) (greentrack_power_watts{{{SEL}}})",
                      "{{host}} {{device}} ({{source}})")], "watt", 12, 8),
        panel("timeseries", "Cumulative energy by kind", "Energy since the trackers started, "
              "summed by device kind.",
              [target(f"sum by (kind) ({e}) / 3600", "{{kind}}")], "watth", 12, 8),
        panel("timeseries", "Energy per step", "Mean joules per step (this process's devices) and "
              "the 90th percentile from the step-energy histogram.",
              [target(f"sum by (phase) (rate({step_sum}[$__rate_interval])) / sum by (phase) "
                      f"(rate({step_count}[$__rate_interval]))", "mean {{phase}}"),
               target(f"histogram_quantile(0.9, sum by (le, phase) (rate(greentrack_step_energy_"
                      f"joules_bucket{{{SEL}}}[$__rate_interval])))", "p90 {{phase}}", "B")],
              "joule", 8, 8),
        panel("timeseries", "FLOPs per joule", "FLOPs reported with steps divided by the energy "
              "attributed to those steps.",
              [target(f"sum by (run, phase) (rate(greentrack_flops_total{{{SEL}}}[$__rate_interval])"
                      f") / sum by (run, phase) (rate({step_sum}[$__rate_interval]))",
                      "{{run}} {{phase}}")], "short", 8, 8),
        panel("timeseries", "MFU", "Model FLOPs utilization of the latest step that reported one "
              "(achieved FLOP/s / the GPU's peak for the dtype).",
              [target(f"max by (host, rank, phase) (greentrack_mfu_ratio{{{SEL}}})",
                      "{{host}} rank {{rank}} {{phase}}")], "percentunit", 8, 8),
        panel("timeseries", "Emissions and carbon intensity", "Cumulative grams CO2e (left) and "
              "the intensity in use (right, gCO2e/kWh).",
              [target(f"sum(greentrack_emissions_grams_total{{{SEL}}})", "emissions"),
               target(f"max by (source) (greentrack_carbon_intensity_grams_per_kilowatt_hour"
                      f"{{{SEL}}})", "intensity ({{source}})", "B")], "massg", 12, 8,
              fieldConfig={"defaults": {"unit": "massg"},
                           "overrides": [right_axis("B", INTENSITY_UNIT)]}),
        panel("timeseries", "Sampler health", "Seconds since the last poll of the devices (left; "
              "should stay near the poll interval) and internal sampler errors (right).",
              [target(f"max by (host, rank) (greentrack_last_sample_age_seconds{{{SEL}}})",
                      "age {{host}} rank {{rank}}"),
               target(f"sum by (host, rank) (increase(greentrack_sampler_errors_total{{{SEL}}}"
                      "[$__rate_interval]))", "errors {{host}} rank {{rank}}", "B")], "s", 12, 8,
              fieldConfig={"defaults": {"unit": "s"}, "overrides": [right_axis("B", "none")]}),
        panel("timeseries", "Sampler cost", "Share of one core the sampler thread uses (left; "
              "greentrack's goal is under 1% with 8 GPUs) and the period of its energy-counter "
              "reads (right; above the setting when those reads cost more CPU than its budget).",
              [target(f"max by (host, rank) (rate(greentrack_sampler_cpu_seconds_total{{{SEL}}}"
                      "[$__rate_interval]))", "cpu {{host}} rank {{rank}}"),
               target(f"max by (host, rank) (greentrack_sampler_slow_interval_seconds{{{SEL}}})",
                      "slow reads every (s) {{host}} rank {{rank}}", "B")], "percentunit", 12, 8,
              fieldConfig={"defaults": {"unit": "percentunit"},
                           "overrides": [right_axis("B", "s")]}),
        panel("timeseries", "Device readings", "1 while a device's readings succeed, 0 during a "
              "gap or after it was lost (left); closed gaps in seconds (right).",
              [target(f"min by (host, device) (greentrack_device_up{{{SEL}}})", "up {{host}} "
                      "{{device}}"),
               target(f"sum by (host, device) (greentrack_device_gap_seconds_total{{{SEL}}})",
                      "gaps {{host}} {{device}}", "B")], "none", 12, 8,
              fieldConfig={"defaults": {"unit": "none"}, "overrides": [right_axis("B", "s")]}),
        panel("table", "Devices", "How each figure is obtained: method, measured or estimated, "
              "uncertainty band.",
              [target(f"max by (host, rank, kind, device, name, method, source, uncertainty) "
                      f"(greentrack_device_info{{{SEL}}})", instant=True, fmt="table")],
              "none", 12, 8,
              transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True,
                                                                                 "Value": True}}}]),
    ]


def fleet_panels() -> list[dict[str, Any]]:
    e = f"greentrack_energy_joules_total{{{FLEET}}}"
    return [
        panel("timeseries", "Power by job", "Latest power of all tracked devices, summed by job.",
              [target(f"sum by (job) (greentrack_power_watts{{{FLEET}}})", "{{job}}")],
              "watt", 12, 8),
        panel("timeseries", "Energy per step by job", "Mean joules per step over the last "
              "interval, by job.",
              [target(f"sum by (job) (rate(greentrack_step_energy_joules_sum{{{FLEET}}}"
                      f"[$__rate_interval])) / sum by (job) (rate(greentrack_step_energy_joules_"
                      f"count{{{FLEET}}}[$__rate_interval]))", "{{job}}")], "joule", 12, 8),
        panel("table", "Runs in the time range", "Energy (Wh), emissions (g), GPU-hours and steps "
              "of each run seen in the time range (the largest value each counter reached).",
              [target(f"sum by (job, run) (max_over_time({e}[$__range])) / 3600", "", "A", True,
                      "table"),
               target(f"sum by (job, run) (max_over_time(greentrack_emissions_grams_total"
                      f"{{{FLEET}}}[$__range]))", "", "B", True, "table"),
               target(f"sum by (job, run) (max_over_time(greentrack_gpu_seconds_total{{{FLEET}}}"
                      f"[$__range])) / 3600", "", "C", True, "table"),
               target(f"sum by (job, run) (max_over_time(greentrack_steps_total{{{FLEET}}}"
                      f"[$__range]))", "", "D", True, "table")], "none", 24, 8,
              transformations=[{"id": "merge", "options": {}},
                               {"id": "organize", "options": {
                                   "excludeByName": {"Time": True},
                                   "renameByName": {"Value #A": "energy (Wh)",
                                                    "Value #B": "emissions (g)",
                                                    "Value #C": "GPU-hours",
                                                    "Value #D": "steps"}}}]),
        panel("timeseries", "Emission rate by job", "Grams CO2e per hour, by job.",
              [target(f"sum by (job) (rate(greentrack_emissions_grams_total{{{FLEET}}}"
                      "[$__rate_interval])) * 3600", "{{job}}")], "massg", 12, 8),
        panel("timeseries", "Stale trackers", "Seconds since each tracker's sampler last polled; "
              "a growing line is a hung or dead tracker (pushed runs keep their last value).",
              [target(f"max by (job, host, rank) (greentrack_last_sample_age_seconds{{{FLEET}}})",
                      "{{job}} {{host}} rank {{rank}}")], "s", 12, 8),
    ]


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ids and left-to-right, top-to-bottom positions on Grafana's 24-column grid."""
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["id"], p["gridPos"] = i, {"x": x, "y": y, "w": w, "h": h}
        x, row_h = x + w, max(row_h, h)
    return panels


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
              panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {"uid": uid, "title": title, "description": description, "tags": ["greentrack", "energy"],
            "editable": True, "graphTooltip": 1, "refresh": "10s", "schemaVersion": 39,
            "version": 1, "time": {"from": "now-1h", "to": "now"}, "timezone": "",
            "templating": {"list": [datasource_variable(), *variables]},
            "annotations": {"list": []}, "links": [], "panels": layout(panels)}


def build() -> dict[str, dict[str, Any]]:
    job = variable("job", "Job", "label_values(greentrack_run_info, job)")
    run = variable("run", "Run", 'label_values(greentrack_run_info{job=~"$job"}, run)')
    host = variable("host", "Host", 'label_values(greentrack_run_info{job=~"$job", run=~"$run"}, '
                    'host)')
    fleet_host = variable("host", "Host", 'label_values(greentrack_run_info{job=~"$job"}, host)')
    return {
        "greentrack-training.json": dashboard(
            "greentrack-training", "greentrack / training run",
            "Power, energy, energy per step, FLOPs per joule, MFU, emissions and sampler health of "
            "tracked training runs.", [job, run, host], training_panels()),
        "greentrack-fleet.json": dashboard(
            "greentrack-fleet", "greentrack / fleet",
            "Power, energy and emissions of every tracked job.", [job, fleet_host],
            fleet_panels()),
    }


def main() -> None:
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for name, board in build().items():
        (out / name).write_text(json.dumps(board, indent=2) + "\n")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
