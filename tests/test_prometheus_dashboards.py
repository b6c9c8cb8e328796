"""The shipped Grafana files: dashboards as generated, variables wired, provisioning consistent with
the compose file. (That every panel query returns data is in test_prometheus_servers.py.)"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import yaml

from greentrack.exporters._collector import __doc__ as collector_doc

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"


def _build() -> dict[str, dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()  # type: ignore[no-any-return]


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    built = _build()
    committed = {p.name: json.loads(p.read_text()) for p in (GRAFANA / "dashboards").glob("*.json")}
    assert committed == built, "run `python3 grafana/build_dashboards.py` and commit the result"


def test_dashboards_select_datasource_job_run_and_host() -> None:
    for name, board in _build().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert {"job", "host"} <= set(variables)
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                for metric in re.findall(r"greentrack_\w+", target["expr"]):
                    # every metric selector carries the dashboard's label filters
                    assert re.search(metric + r'\{job=~"\$job"', target["expr"]), target["expr"]
                    if name == "greentrack-training.json":
                        assert 'run=~"$run"' in target["expr"]
                    # and names a metric the exporter documents
                    family = re.sub(r"_(bucket|sum|count)$", "", metric)
                    assert f"``{family}``" in (collector_doc or ""), family


def test_provisioning_matches_the_compose_file() -> None:
    compose = yaml.safe_load((GRAFANA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"prometheus", "pushgateway", "grafana"}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/greentrack.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == "./dashboards" and mounts["/etc/grafana/provisioning"] == "./provisioning"
    assert services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] \
        .startswith(path + "/")
    prom_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/greentrack.yaml").read_text())
    ds = datasource["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://127.0.0.1:9090"
    scrape = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    assert all(job["honor_labels"] for job in scrape["scrape_configs"])
