"""A real Prometheus scrapes a real tracked training run; every query of every shipped dashboard
panel returns data through the Prometheus HTTP API; a pushed run shows up in a real Pushgateway
and, through it, in Prometheus; ``promtool`` checks the shipped config.

Servers start once per module on 127.0.0.1 free ports (``tests/servers.py``). The tracked run uses
the fake H100 (measured, 300 W) and the CPU/DRAM estimates of a machine without RAPL, so the
dashboards show both measured and estimated devices.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from greentrack.carbon.forecast import Forecast
from greentrack.process.tracker import Tracker
from tests.fakes.fake_pynvml import FakeNvml
from tests.helpers import FAST, python_env
from tests.servers import (SHIPPED_PROMETHEUS_YML, Prometheus, Pushgateway, http_get,  # noqa: F401
                           prometheus, promtool, pushgateway)

pytestmark = [pytest.mark.servers, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
INTENSITY = 56.0  # g/kWh, set so the emissions panels have data
NOMINAL_PEAK_FLOPS = 1e11  # a stated CPU peak for the test's MFU figure (real runs: the GPU table)
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval for a 1 s scrape interval: 4 x scrape interval
PLANNED_STEPS = 100_000  # the forecast's horizon: far beyond the test's steps


def train(tracker: Tracker, enough: Callable[[], bool], min_s: float = 3.0,
          max_s: float = 30.0) -> dict[str, Any]:
    """A small MLP trained on CPU with real steps, for at least ``min_s`` and until ``enough()``
    (asked every 0.5 s); FLOPs counted once with FlopCounterMode."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(512, 128), torch.randint(0, 10, (512,))
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    train_flops = float(counter.get_total_flops())
    opt.zero_grad()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    val_flops = float(counter.get_total_flops())
    losses, steps, flops = [], {"train": 0, "val": 0}, 0.0
    start = next_check = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_check:
            next_check = now + 0.5
            if now - start >= max_s or (now - start >= min_s and enough()):
                break
        token = tracker.begin_step("train", flops=train_flops, samples=len(x))
        t = time.perf_counter()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        tracker.end_step(token, mfu=train_flops / (time.perf_counter() - t) / NOMINAL_PEAK_FLOPS)
        losses.append(loss.item())
        steps["train"] += 1
        flops += train_flops
        if steps["train"] % 20 == 0:
            with tracker.step("val", flops=val_flops), torch.no_grad():
                model(x)
            steps["val"] += 1
            flops += val_flops
    assert losses[-1] < losses[0]  # it did learn
    return {"steps": steps, "flops": flops}


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    left = re.findall(r"\$\{?\w+", expr)
    assert not left, f"unknown dashboard variables {left} in {expr}"
    return expr


def has_data(result: list[dict[str, Any]]) -> bool:
    points = [v for s in result for v in ([s["value"]] if "value" in s else s.get("values", []))]
    return any(math.isfinite(float(v[1])) for v in points)


def panel_targets(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for panel in board["panels"]:
        out += [(panel["title"], t) for t in panel.get("targets", [])]
        for inner in panel.get("panels", []):  # collapsed rows keep their panels inside
            out += [(inner["title"], t) for t in inner.get("targets", [])]
    return out


def variable_query(var: dict[str, Any]) -> tuple[str, str]:
    """``label_values(SELECTOR, LABEL)`` of a Grafana query variable."""
    query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert m, f"variable {var['name']}: unsupported query {query}"
    return m.group(1), m.group(2)


def test_prometheus_scrapes_a_training_run_and_every_panel_has_data(
        tmp_path: Path, fake_nvml: FakeNvml, prometheus: Prometheus,
        pushgateway: Pushgateway) -> None:
    tracker = Tracker(tmp_path / "run", prometheus_port=0, job="pull-test",
                      carbon_intensity_g_per_kwh=INTENSITY, **FAST)
    tracker.start()
    # the whole run's forecast, as a training integration's meter offers it to the exporter
    # (greentrack.training.meter): the same Forecast, fed the steps done and the energy so far
    forecast, t0 = Forecast.for_config(PLANNED_STEPS, tracker.config), time.monotonic()

    def forecast_now() -> dict[str, Any] | None:
        assert tracker.engine is not None
        forecast.observe(tracker.engine.steps_done, tracker.totals()["total"],
                         time.monotonic() - t0)
        return forecast.estimate()

    tracker.forecast_sources.append(forecast_now)
    try:
        exporter = tracker.sinks[0]
        target = f"127.0.0.1:{exporter.port}"
        # the gateway too, now, so that the push test finds it already discovered
        prometheus.add_targets({"greentrack": [target],
                                "pushgateway": [pushgateway.url.removeprefix("http://")]})
        sel = f'run="{tracker.run_id}"'
        t_start = time.time()
        # Train while Prometheus finds the target (its discovery updates every 5 s) and until it
        # has scraped the steps counter 5 times, so rate() panels have points.
        done = train(tracker, lambda: bool(prometheus.query(
            f"count_over_time(greentrack_steps_total{{{sel}, phase=\"train\"}}[1m]) >= 5")))
        n_steps = sum(done["steps"].values())
        deadline = time.monotonic() + 5
        while tracker.engine.steps_done < n_steps and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
        before = tracker.totals()["total"]
        prometheus.wait_scrapes(f"sum(greentrack_steps_total{{{sel}}})", n_steps)
        after = tracker.totals()["total"]
        t_end = time.time()

        text = http_get(exporter.url).decode()
        check = promtool("check", "metrics", stdin=text)
        assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check

        # honor_labels (shipped config) keeps the tracker's job label
        assert prometheus.query(f'greentrack_run_info{{job="pull-test", {sel}}}', t_end)
        assert not prometheus.query(f"greentrack_run_info{{exported_job!=\"\", {sel}}}", t_end)
        # the figures arrive intact
        flops = prometheus.query(f"sum(greentrack_flops_total{{{sel}}})", t_end)
        assert float(flops[0]["value"][1]) == pytest.approx(done["flops"], rel=1e-9)
        energy = float(prometheus.query(f"sum(greentrack_energy_joules_total{{{sel}}})",
                                        t_end)[0]["value"][1])
        assert before - 1.0 <= energy <= after + 1.0
        grams = float(prometheus.query(f"sum(greentrack_emissions_grams_total{{{sel}}})",
                                       t_end)[0]["value"][1])
        pue = prometheus.query(f"greentrack_pue_ratio{{{sel}}}", t_end)
        assert float(pue[0]["value"][1]) == 1.56
        assert pue[0]["metric"]["source"] == "uptime-institute-2024"  # a short id, not a URL
        bounds = {r["metric"]["bound"] for r in prometheus.query(
            f"greentrack_forecast_energy_joules{{{sel}}}", t_end)}
        assert bounds == {"estimate", "low", "high"}
        # the report's formula: IT energy x PUE in use (the documented default) x intensity
        assert grams == pytest.approx(energy * 1.56 * INTENSITY / 3.6e6, rel=1e-6)
        sources = {r["metric"]["source"] for r in prometheus.query(
            f"greentrack_energy_joules_total{{{sel}}}", t_end)}
        assert sources == {"measured", "estimated"}

        values = {"job": "pull-test", "run": re.escape(tracker.run_id or ""),
                  "host": re.escape(socket.gethostname()), "datasource": "unused",
                  "__rate_interval": RATE_INTERVAL, "__interval": "1s",
                  "__range": f"{math.ceil(t_end - t_start)}s"}
        empty, evaluated = [], 0
        for path in DASHBOARDS:
            board = json.loads(path.read_text())
            for var in board["templating"]["list"]:
                if var["type"] != "query":
                    continue
                selector, label = variable_query(var)
                got = prometheus.label_values(label, substitute(selector, values), t_start, t_end)
                expected = {"job": "pull-test", "run": tracker.run_id,
                            "host": socket.gethostname()}[var["name"]]
                assert expected in got, (path.name, var["name"], got)
            for title, tgt in panel_targets(board):
                expr = substitute(tgt["expr"], values)
                if tgt.get("instant"):
                    result = prometheus.query(expr, t_end)
                else:
                    result = prometheus.query_range(expr, t_start, t_end, 1.0)
                evaluated += 1
                if not has_data(result):
                    empty.append(f"{path.name} / {title} / {tgt['refId']}: {expr}")
        assert evaluated >= 20
        assert not empty, "panels without data:\n" + "\n".join(empty)
    finally:
        tracker.stop()


def test_a_pushed_run_shows_up_in_the_pushgateway_and_in_prometheus(
        tmp_path: Path, fake_nvml: FakeNvml, pushgateway: Pushgateway,
        prometheus: Prometheus) -> None:
    tracker = Tracker(tmp_path / "run", pushgateway_url=pushgateway.url, push_interval_s=0.3,
                      job="push-test", carbon_intensity_g_per_kwh=INTENSITY, **FAST)
    tracker.start()
    try:
        for _ in range(10):
            with tracker.step(flops=1e9):
                time.sleep(0.01)

        def group() -> dict[str, Any] | None:
            for g in pushgateway.groups():
                if g["labels"] == {"job": "push-test", "run": tracker.run_id,
                                   "host": socket.gethostname(), "rank": "0"}:
                    return g
            return None

        deadline = time.monotonic() + 5
        while group() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group() is not None, "no push while the run was going"
    finally:
        tracker.stop()
    final = group()
    assert final is not None
    steps = final["greentrack_steps_total"]["metrics"]
    assert [float(m["value"]) for m in steps] == [10.0]  # the final push carries final totals
    assert "greentrack_energy_joules_total" in final and "push_time_seconds" in final
    gateway_text = pushgateway.metrics_text()
    check = promtool("check", "metrics", stdin="\n".join(
        line for line in gateway_text.splitlines()
        if "greentrack_" in line) + "\n")  # only our families: the gateway's own are not ours
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check

    gw = pushgateway.url.removeprefix("http://")
    prometheus.add_targets({"pushgateway": [gw]})
    sel = f'job="push-test", run="{tracker.run_id}", rank="0"'
    prometheus.wait_scrapes(f"sum(greentrack_steps_total{{{sel}}})", 10)
    flops = prometheus.query(f"sum(greentrack_flops_total{{{sel}}})")
    assert float(flops[0]["value"][1]) == 10 * 1e9


def test_greentrack_run_pushes_with_the_cli_options(tmp_path: Path, no_host_env: Path,
                                                    pushgateway: Pushgateway) -> None:
    env = python_env(GREENTRACK_POWERCAP_ROOT=str(no_host_env), GREENTRACK_INTERVAL_S="0.02",
                     GREENTRACK_COUNTER_INTERVAL_S="0.1", GREENTRACK_FLUSH_INTERVAL_S="0.1",
                     GREENTRACK_PUSH_INTERVAL_S="0.5")
    proc = subprocess.run([sys.executable, "-m", "greentrack", "run", "--run-dir",
                           str(tmp_path / "run"), "--run-id", "cli-run", "--job", "cli-test",
                           "--pushgateway", pushgateway.url, "--prometheus-port", "0", "--quiet",
                           "--", sys.executable, "-c", "import time; time.sleep(1.0)"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"Prometheus metrics of rank 0 at http://127\.0\.0\.1:\d+/metrics",
                     proc.stderr), proc.stderr
    labels = [g["labels"] for g in pushgateway.groups()]
    assert {"job": "cli-test", "run": "cli-run", "host": socket.gethostname(), "rank": "0"} in labels


def test_shipped_prometheus_config_passes_promtool() -> None:
    check = promtool("check", "config", str(SHIPPED_PROMETHEUS_YML))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr
