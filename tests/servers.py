"""Real Prometheus and Pushgateway servers on 127.0.0.1 free ports, with temporary storage.

The binaries come from the Debian packages ``prometheus`` and ``prometheus-pushgateway`` (``.ci/run``
installs them). A missing binary skips the test with the reason, except in CI (``CI=true``), where
it fails: a green CI must mean the exporter was tested against the real servers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PROMETHEUS_YML = REPO / "grafana" / "prometheus.yml"


def require_binary(name: str) -> str:
    """Path of ``name``; skip (or fail when CI is "true") when it is not installed."""
    path = shutil.which(name)
    if path is None:
        reason = f"`{name}` is not installed (Debian: apt-get install prometheus prometheus-pushgateway)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the exporter tests against real servers")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return bytes(r.read())


def scrape_sums(url: str) -> dict[str, float]:
    """Each ``greentrack_*`` family of one scrape of ``url`` (a ``/metrics`` endpoint), summed over
    its series."""
    out: dict[str, float] = {}
    for line in http_get(url).decode().splitlines():
        m = re.match(r"^(greentrack_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            http_get(url, timeout=1.0)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


class Server:
    def __init__(self, argv: list[str], port: int, workdir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / "server.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     cwd=workdir)
        _wait_ready(self.url + "/-/ready", self.proc, self.log)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log_file.close()


class Pushgateway(Server):
    def __init__(self, binary: str, workdir: Path) -> None:
        port = free_port()
        # Its own persistence file: the Debian default (/var/lib/prometheus/pushgateway.data) would
        # carry this test's groups into every later gateway on the machine.
        super().__init__([binary, f"--web.listen-address=127.0.0.1:{port}",
                          f"--persistence.file={workdir / 'pushgateway.data'}"], port, workdir)

    def groups(self) -> list[dict[str, Any]]:
        """``/api/v1/metrics``: one entry per pushed group with its labels and metric families."""
        return list(json.loads(http_get(self.url + "/api/v1/metrics"))["data"])

    def metrics_text(self) -> str:
        return http_get(self.url + "/metrics").decode()


class Prometheus(Server):
    """Prometheus configured from the shipped ``grafana/prometheus.yml`` with its targets replaced
    (see :meth:`add_targets`) and a 1 s scrape interval."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.config_path = workdir / "prometheus.yml"
        self._targets: dict[str, list[str]] = {}
        self.config_path.write_text(yaml.safe_dump(self.config_from_shipped({})))
        port = free_port()
        super().__init__([binary, f"--config.file={self.config_path}",
                          f"--storage.tsdb.path={workdir / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
                          "--log.level=warn"], port, workdir)

    @staticmethod
    def config_from_shipped(targets: dict[str, list[str]]) -> dict[str, Any]:
        """The shipped config, scraping every second, each job's targets replaced by
        ``targets[job_name]`` (a job left out scrapes nothing)."""
        config = yaml.safe_load(SHIPPED_PROMETHEUS_YML.read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["scrape_timeout"] = "1s"
        config["global"]["evaluation_interval"] = "1s"  # recorded series within the test's seconds
        # the shipped rules, found from the shipped config's folder (the test's config is elsewhere)
        config["rule_files"] = [str(SHIPPED_PROMETHEUS_YML.parent / p)
                                for p in config.get("rule_files", [])]
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": targets.get(job["job_name"], [])}]
        return config

    def add_targets(self, targets: dict[str, list[str]]) -> None:
        """Add ``targets`` (job name -> host:port list) to the shipped scrape jobs and reload.
        Prometheus picks up new targets within 5 s (its discovery update period); targets it has
        already keep being scraped without that delay, so tests add theirs early."""
        new = {job: sorted(set(self._targets.get(job, [])) | set(hosts))
               for job, hosts in {**self._targets, **targets}.items()}
        if new == self._targets:
            return
        self._targets = new
        self.config_path.write_text(yaml.safe_dump(self.config_from_shipped(new)))
        req = urllib.request.Request(self.url + "/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            assert r.status == 200

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        body = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return list(self.api("query", **params)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                             step=step)["result"])

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        return list(self.api(f"label/{label}/values", **{"match[]": match, "start": f"{start:.3f}",
                                                           "end": f"{end:.3f}"}))

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_scrapes(self, expr: str, min_value: float, timeout: float = 20.0) -> None:
        """Wait until ``expr`` (an instant query) has a value >= ``min_value``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.query(expr)
            if last and float(last[0]["value"][1]) >= min_value:
                return
            time.sleep(0.2)
        raise AssertionError(f"{expr} did not reach {min_value} in {timeout} s: {last}; "
                             f"targets: {self.targets()}")


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    binary = require_binary("prometheus-pushgateway")
    server = Pushgateway(binary, tmp_path_factory.mktemp("pushgateway"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    server = Prometheus(binary, tmp_path_factory.mktemp("prometheus"))
    yield server
    server.stop()


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` (from the ``prometheus`` package)."""
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)
