"""Writes grafana/dashboards/*.json with Grafana's own typed builders (``grafana-foundation-sdk``).

The committed JSON is the importable artifact; this script keeps the two dashboards consistent
(same variables, datasource references, label filters and units). ``tests/test_prometheus_dashboards.py``
fails when the committed files differ from what this script writes, or when a panel or a table
column has no unit. Run after an edit (``pip install -e '.[dev]'`` installs the SDK):

    .venv/bin/python grafana/build_dashboards.py

The SDK is pinned to the release generated from Grafana 11.2's schema, the Grafana version of
docker-compose.yml (its versions are ``EPOCH!GRAFANA_VERSION``; an unpinned install picks the
largest epoch, whatever Grafana version that release targets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'job=~"$job", run=~"$run", host=~"$host"'  # every training-dashboard query filters on these
FLEET = 'job=~"$job", host=~"$host"'
# Grafana unit ids (Standard options > Unit); custom ones are "suffix:", "si:" (SI-scaled) and
# "count:" (K, M, B-scaled) followed by the unit.
INTENSITY_UNIT = "suffix: gCO2e/kWh"
G_PER_H = "si:g/h"
STEPS = "count:steps"
PUE_UNIT = "suffix: x IT energy"
# A run's counter total once per series: a resumed run's counters continue (same host, rank,
# device), and max by these labels keeps one value where a restart changed only the instance.
SERIES = "job, run, host, rank"
DEVICE_SERIES = f"{SERIES}, kind, device, source"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
           fmt: PromQueryFormat = PromQueryFormat.TIME_SERIES) -> gp.Dataquery:
    q = (gp.Dataquery().datasource(DS).expr(expr).legend_format(legend or "__auto").ref_id(ref)
         .format(fmt))
    return q.instant() if instant else q.range()


def _common(p: Any, title: str, description: str, targets: list[gp.Dataquery], unit: str,
            w: int, h: int) -> Any:
    p = p.title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
    for t in targets:
        p = p.with_target(t)
    return p


def stat_panel(title: str, description: str, targets: list[gp.Dataquery], unit: str) -> Any:
    return (_common(stat.Panel(), title, description, targets, unit, 4, 4)
            .reduce_options(gc.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
            .color_mode(cm.BigValueColorMode.VALUE).graph_mode(cm.BigValueGraphMode.AREA)
            .text_mode(cm.BigValueTextMode.AUTO))


def graph(title: str, description: str, targets: list[gp.Dataquery], unit: str, w: int,
          right: tuple[str, str] | None = None) -> Any:
    """A time series panel; ``right``: (refId, unit) of a query drawn on the right axis."""
    p = (_common(timeseries.Panel(), title, description, targets, unit, w, 8)
         .legend(gc.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                 .placement(cm.LegendPlacement.BOTTOM).show_legend(True)
                 .calcs(["lastNotNull", "max"]))
         .tooltip(gc.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                  .sort(cm.SortOrder.DESCENDING)))
    if right is not None:
        p = p.override_by_query(right[0], [dm.DynamicConfigValue("custom.axisPlacement", "right"),
                                           dm.DynamicConfigValue("unit", right[1])])
    return p


def table_panel(title: str, description: str, targets: list[gp.Dataquery], unit: str, w: int,
                transformations: list[dm.DataTransformerConfig],
                columns: dict[str, str] | None = None) -> Any:
    """A table; ``columns``: unit of each (renamed) value column."""
    p = _common(table.Panel(), title, description, targets, unit, w, 8)
    for t in transformations:
        p = p.with_transformation(t)
    for name, column_unit in (columns or {}).items():
        p = p.override_by_name(name, [dm.DynamicConfigValue("unit", column_unit)])
    return p


def training_panels() -> list[Any]:
    e = f"greentrack_energy_joules_total{{{SEL}}}"
    step_sum = f"greentrack_step_energy_joules_sum{{{SEL}}}"
    step_count = f"greentrack_step_energy_joules_count{{{SEL}}}"
    return [
        stat_panel("Energy", "Energy of all selected devices since their runs started (GPU + CPU "
                   "+ DRAM, measured and estimated; a resumed run's counters continue).",
                   [target(f"sum({e}) / 3600")], "watth"),
        stat_panel("Measured share", "Share of the energy read from hardware counters (NVML, "
                   "RAPL); the rest is estimated (see the Devices table).",
                   [target(f'(sum({e[:-1]}, source="measured"}}) or vector(0)) / sum({e})')],
                   "percentunit"),
        stat_panel("Emissions", "Operational emissions so far: energy x PUE (when set) x the "
                   "carbon intensity in use.",
                   [target(f"sum(greentrack_emissions_grams_total{{{SEL}}})")], "massg"),
        stat_panel("Carbon intensity", "Grid carbon intensity in use (gCO2e/kWh) and its source.",
                   [target(f"max by (source) (greentrack_carbon_intensity_grams_per_kilowatt_hour"
                           f"{{{SEL}}})", "{{source}}")], INTENSITY_UNIT),
        stat_panel("PUE", "Power usage effectiveness applied to IT energy for the emissions, and "
                   "a short id of its source (setting, or the data source and its year: "
                   "uptime-institute-2024; the report cites it in full).",
                   [target(f"max by (source) (greentrack_pue_ratio{{{SEL}}})", "{{source}}")],
                   PUE_UNIT),
        stat_panel("GPU-hours", "Seconds since each tracker started times the GPUs it measures, "
                   "in hours.", [target(f"sum(greentrack_gpu_seconds_total{{{SEL}}}) / 3600")], "h"),
        stat_panel("Steps", "Steps whose energy has been attributed, by phase.",
                   [target(f"sum by (phase) (greentrack_steps_total{{{SEL}}})", "{{phase}}")],
                   STEPS),
        graph("Power by device", "Latest power reading of each device; estimated devices are "
              "marked in the legend.",
              [target(f"sum by (host, kind, device, source) (greentrack_power_watts{{{SEL}}})",
                      "{{host}} {{device}} ({{source}})")], "watt", 12),
        graph("Power by kind, from the energy counters", "Rate of the energy counters over a "
              "minute (recording rule job_run_host_kind:greentrack_energy_joules:rate1m): the "
              "power the energy totals integrate, by run and device kind.",
              [target(f"sum by (run, kind) (job_run_host_kind:greentrack_energy_joules:rate1m"
                      f"{{{SEL}}})", "{{run}} {{kind}}")], "watt", 12),
        graph("Cumulative energy by kind", "Energy since the runs started, summed by device kind.",
              [target(f"sum by (kind) ({e}) / 3600", "{{kind}}")], "watth", 12),
        graph("Energy per step", "Mean joules per step (this process's devices) and the 90th "
              "percentile from the step-energy histogram.",
              [target(f"sum by (phase) (rate({step_sum}[$__rate_interval])) / sum by (phase) "
                      f"(rate({step_count}[$__rate_interval]))", "mean {{phase}}"),
               target(f"histogram_quantile(0.9, sum by (le, phase) (rate(greentrack_step_energy_"
                      f"joules_bucket{{{SEL}}}[$__rate_interval])))", "p90 {{phase}}", "B")],
              "joule", 12),
        graph("FLOPs per joule", "FLOPs reported with steps divided by the energy attributed to "
              "those steps.",
              [target(f"sum by (run, phase) (rate(greentrack_flops_total{{{SEL}}}[$__rate_interval])"
                      f") / sum by (run, phase) (rate({step_sum}[$__rate_interval]))",
                      "{{run}} {{phase}}")], "si:FLOP/J", 8),
        graph("MFU", "Model FLOPs utilization of the latest step that reported one (achieved "
              "FLOP/s / the GPU's peak for the dtype).",
              [target(f"max by (host, rank, phase) (greentrack_mfu_ratio{{{SEL}}})",
                      "{{host}} rank {{rank}} {{phase}}")], "percentunit", 8),
        graph("Forecast: whole-run energy", "The training integration's forecast of the whole "
              "run's IT energy (estimate, and the low and high bounds of its interval once known; "
              "greentrack_forecast_energy_joules) against the energy so far: the forecast lines "
              "should settle, and the energy so far should rise to them.",
              [target(f"max by (run, bound) (greentrack_forecast_energy_joules{{{SEL}}}) / 3600",
                      "{{run}} forecast {{bound}}"),
               target(f"sum by (run) ({e}) / 3600", "{{run}} so far", "B")], "watth", 12),
        graph("Forecast: whole-run emissions and end", "Forecast grams CO2e of the whole run "
              "(left; with PUE, when an intensity is known; greentrack_forecast_emissions_grams) "
              "and the forecast time left until the run ends (right; "
              "greentrack_forecast_end_time_seconds minus now), each with its interval's bounds.",
              [target(f"max by (run, bound) (greentrack_forecast_emissions_grams{{{SEL}}})",
                      "{{run}} grams {{bound}}"),
               target(f"max by (run, bound) (greentrack_forecast_end_time_seconds{{{SEL}}}) - "
                      "time()", "{{run}} time left {{bound}}", "B")], "massg", 12,
              right=("B", "s")),
        graph("Emissions and carbon intensity", "Cumulative grams CO2e (left) and the intensity "
              "in use (right, gCO2e/kWh).",
              [target(f"sum(greentrack_emissions_grams_total{{{SEL}}})", "emissions"),
               target(f"max by (source) (greentrack_carbon_intensity_grams_per_kilowatt_hour"
                      f"{{{SEL}}})", "intensity ({{source}})", "B")], "massg", 8,
              right=("B", INTENSITY_UNIT)),
        graph("Sampler health", "Seconds since the last poll of the devices (left; should stay "
              "near the poll interval) and internal sampler errors (right).",
              [target(f"max by (host, rank) (greentrack_last_sample_age_seconds{{{SEL}}})",
                      "age {{host}} rank {{rank}}"),
               target(f"sum by (host, rank) (increase(greentrack_sampler_errors_total{{{SEL}}}"
                      "[$__rate_interval]))", "errors {{host}} rank {{rank}}", "B")], "s", 12,
              right=("B", "count:errors")),
        graph("Sampler cost", "Share of one core the sampler thread uses (left; greentrack's goal "
              "is under 1% with 8 GPUs) and the period of its energy-counter reads (right; above "
              "the setting when those reads cost more CPU than its budget).",
              [target(f"max by (host, rank) (rate(greentrack_sampler_cpu_seconds_total{{{SEL}}}"
                      "[$__rate_interval]))", "cpu {{host}} rank {{rank}}"),
               target(f"max by (host, rank) (greentrack_sampler_slow_interval_seconds{{{SEL}}})",
                      "slow reads every (s) {{host}} rank {{rank}}", "B")], "percentunit", 12,
              right=("B", "s")),
        graph("Device readings", "1 (on) while a device's readings succeed, 0 (off) during a gap "
              "or after it was lost (left); closed gaps in seconds (right).",
              [target(f"min by (host, device) (greentrack_device_up{{{SEL}}})", "up {{host}} "
                      "{{device}}"),
               target(f"sum by (host, device) (greentrack_device_gap_seconds_total{{{SEL}}})",
                      "gaps {{host}} {{device}}", "B")], "bool_on_off", 12, right=("B", "s")),
        table_panel("Devices", "How each figure is obtained: method, measured or estimated, "
                    "uncertainty band.",
                    [target(f"max by (host, rank, kind, device, name, method, source, uncertainty)"
                            f" (greentrack_device_info{{{SEL}}})", instant=True,
                            fmt=PromQueryFormat.TABLE)], "string", 12,
                    [dm.DataTransformerConfig("organize", options={
                        "excludeByName": {"Time": True, "Value": True}})]),
    ]


def fleet_panels() -> list[Any]:
    def total(metric: str, labels: str) -> str:
        return (f"sum by (job, run) (max by ({labels}) (max_over_time({metric}{{{FLEET}}}"
                f"[$__range])))")

    columns = {"energy (Wh)": "watth", "emissions (g)": "massg", "GPU-hours": "h",
               "steps": STEPS}
    rate = "job_run_host_phase:greentrack_step_energy_joules"
    return [
        graph("Power by job", "Latest power of all tracked devices, summed by job (recording "
              "rule job_run_host:greentrack_power_watts:sum).",
              [target(f"sum by (job) (job_run_host:greentrack_power_watts:sum{{{FLEET}}})",
                      "{{job}}")], "watt", 12),
        graph("Energy per step by job", "Mean joules per step over the last minute, by job "
              f"(recording rules {rate}_sum:rate1m and _count:rate1m).",
              [target(f"sum by (job) ({rate}_sum:rate1m{{{FLEET}}}) / sum by (job) "
                      f"({rate}_count:rate1m{{{FLEET}}})", "{{job}}")], "joule", 12),
        table_panel("Runs in the time range", "Energy, emissions, GPU-hours and steps of each run "
                    "seen in the time range: the largest value each counter reached (a resumed "
                    "run's counters continue, so this is the run's total).",
                    [target(total("greentrack_energy_joules_total", DEVICE_SERIES) + " / 3600",
                            "", "A", True, PromQueryFormat.TABLE),
                     target(total("greentrack_emissions_grams_total", SERIES), "", "B", True,
                            PromQueryFormat.TABLE),
                     target(total("greentrack_gpu_seconds_total", SERIES) + " / 3600", "", "C",
                            True, PromQueryFormat.TABLE),
                     target(total("greentrack_steps_total", f"{SERIES}, phase"), "", "D", True,
                            PromQueryFormat.TABLE)], "watth", 24,
                    [dm.DataTransformerConfig("merge", options={}),
                     dm.DataTransformerConfig("organize", options={
                         "excludeByName": {"Time": True},
                         "renameByName": {"Value #A": "energy (Wh)", "Value #B": "emissions (g)",
                                          "Value #C": "GPU-hours", "Value #D": "steps"}})],
                    columns),
        graph("Emission rate by job", "Grams CO2e per hour, by job (recording rule "
              "job_run_host:greentrack_emissions_grams:rate1m).",
              [target(f"sum by (job) (job_run_host:greentrack_emissions_grams:rate1m{{{FLEET}}}) "
                      "* 3600", "{{job}}")], G_PER_H, 12),
        graph("Stale trackers", "Seconds since each running tracker's sampler last polled (scraped "
              "runs) or last pushed (pushed runs; a run that ended says so and leaves the graph); "
              "a growing line is a hung or dead tracker (alerts GreentrackSamplerStale, "
              "GreentrackPushedRunSilent).",
              # a pushed run's age is its push time's (the gateway keeps its last sampler age)
              [target(f"((time() - max by (job, run, host, rank) (push_time_seconds{{{FLEET}}})) "
                      f"and on (job, run, host, rank) max by (job, run, host, rank) "
                      f"(greentrack_run_running{{{FLEET}}}) == 1) or max by (job, run, host, rank) "
                      f"(greentrack_last_sample_age_seconds{{{FLEET}}})",
                      "{{job}} {{host}} rank {{rank}}")], "s", 12),
    ]


def variable(name: str, label: str, query: str) -> gd.QueryVariable:
    return (gd.QueryVariable(name).label(label).datasource(DS)
            .query({"query": query, "refId": f"{name}-values"})
            .multi(True).include_all(True).all_value(".*")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))


def dashboard(uid: str, title: str, description: str, variables: list[Any],
              panels: list[Any]) -> dict[str, Any]:
    board = (gd.Dashboard(title).uid(uid).description(description).tags(["greentrack", "energy"])
             .editable().tooltip(dm.DashboardCursorSync.CROSSHAIR).refresh("10s")
             .time("now-1h", "now").timezone("")
             .with_variable(gd.DatasourceVariable("datasource").label("Data source")
                            .type("prometheus")))
    for v in variables:
        board = board.with_variable(v)
    for i, p in enumerate(panels, start=1):  # the builder lays them out; ids are ours
        board = board.with_panel(p.id(i))
    # plain JSON: what Grafana imports, and what the tests read
    return dict(json.loads(json.dumps(board.build(), cls=JSONEncoder, sort_keys=True)))


def build() -> dict[str, dict[str, Any]]:
    job = variable("job", "Job", "label_values(greentrack_run_info, job)")
    run = variable("run", "Run", 'label_values(greentrack_run_info{job=~"$job"}, run)')
    host = variable("host", "Host", 'label_values(greentrack_run_info{job=~"$job", run=~"$run"}, '
                    'host)')
    fleet_host = variable("host", "Host", 'label_values(greentrack_run_info{job=~"$job"}, host)')
    return {
        "greentrack-training.json": dashboard(
            "greentrack-training", "greentrack / training run",
            "Power, energy, energy per step, FLOPs per joule, MFU, forecasts, emissions and "
            "sampler health of tracked training runs.", [job, run, host], training_panels()),
        "greentrack-fleet.json": dashboard(
            "greentrack-fleet", "greentrack / fleet",
            "Power, energy and emissions of every tracked job.", [job, fleet_host],
            fleet_panels()),
    }


def main() -> None:
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for name, board in build().items():
        (out / name).write_text(json.dumps(board, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
