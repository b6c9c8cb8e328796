"""The Prometheus exporter in a tracked process: what /metrics says, and that nothing it does (a
taken port, a dead or hung Pushgateway, many steps or phases) can hurt training.

The real Prometheus and Pushgateway are in ``test_prometheus_servers.py``.
"""

from __future__ import annotations

import re
import logging
import math
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.exporters import default_job, sinks_for
from greentrack.exporters._collector import (INTENSITY_TTL_S, MAX_ID, STEP_ENERGY_BUCKETS_J,
                                             Intensity, pue_source_id)
from greentrack.exporters.prometheus import PrometheusExporter, gateway_url, listen_port
from greentrack.process.tracker import Tracker
from greentrack.store import StoreReader, store_paths
from tests.fakes.fake_pynvml import FakeNvml
from tests.helpers import FAST, families, python_env
from tests.servers import free_port, http_get, promtool

USER_INTENSITY = "user setting (carbon_intensity_g_per_kwh)"  # as every report says it

GPU_W = 300.0  # the fake_nvml fixture's H100 draws a constant 300 W


def wait_steps(tracker: Tracker, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while tracker.engine.steps_done < n and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.02)
    assert tracker.engine.steps_done >= n  # type: ignore[union-attr]


def events(run_dir: Path) -> list[dict[str, Any]]:
    return StoreReader(store_paths(run_dir)[0]).events()


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_metrics_pass_promtool_and_say_what_was_measured(tmp_path: Path, fake_nvml: FakeNvml) -> None:
    tracker = Tracker(tmp_path / "run", prometheus_port=0, carbon_intensity_g_per_kwh=250.0,
                      job="unit", pue=1.2, **FAST)
    with tracker:
        exporter = tracker.sinks[0]
        assert isinstance(exporter, PrometheusExporter) and exporter.port
        for i in range(12):
            with tracker.step(flops=2e9, samples=8, mfu=0.1 * (i % 3)):
                busy(0.01)
        with tracker.step("val", flops=5e8):
            busy(0.01)
        wait_steps(tracker, 13)
        engine = tracker.engine
        assert engine is not None
        # energy finalized before the scrape (cumulative): what the counter must at least show
        done_j = next(st.timeline.last for st in engine.states if st.kind == "gpu")
        t0 = time.monotonic() - engine.origin
        text = http_get(exporter.url).decode()
        t1 = time.monotonic() - tracker.engine.origin  # type: ignore[union-attr]

    fams = families(text)
    base = {"run": tracker.run_id, "job": "unit", "host": socket.gethostname(), "rank": "0"}
    energy = {s.labels["device"]: s for s in fams["greentrack_energy_joules"].samples}
    assert fams["greentrack_energy_joules"].type == "counter"
    gpu = energy["gpu0"]
    assert {k: gpu.labels[k] for k in base} == base
    assert gpu.labels["kind"] == "gpu" and gpu.labels["source"] == "measured"
    # the GPU drew 300 W since the tracker started: the counter holds at least what was final
    # before the scrape, at most 300 W until the scrape ended, and not much less than 300 W
    # since the start (finalization lags by a counter interval and a refresh, more under load)
    assert done_j <= gpu.value <= GPU_W * (t1 + 0.05)
    assert gpu.value >= GPU_W * (t0 - 1.0)
    estimated = [s for s in energy.values() if s.labels["kind"] in ("cpu", "dram")]
    assert estimated and all(s.labels["source"] == "estimated" for s in estimated)
    power = {s.labels["device"]: s.value for s in fams["greentrack_power_watts"].samples}
    assert power["gpu0"] == pytest.approx(GPU_W, rel=0.02)
    info = {s.labels["device"]: s.labels for s in fams["greentrack_device_info"].samples}
    assert info["gpu0"]["method"] == "nvml-energy-counter" and "H100" in info["gpu0"]["name"]

    steps = {s.labels["phase"]: s.value for s in fams["greentrack_steps"].samples}
    assert steps == {"train": 12.0, "val": 1.0}
    flops = {s.labels["phase"]: s.value for s in fams["greentrack_flops"].samples}
    assert flops == {"train": 12 * 2e9, "val": 5e8}
    assert [s.value for s in fams["greentrack_mfu_ratio"].samples] == [pytest.approx(0.2)]
    hist = fams["greentrack_step_energy_joules"]
    assert hist.type == "histogram"
    buckets = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["phase"] == "train"]
    assert len(buckets) == len(STEP_ENERGY_BUCKETS_J) + 1 and buckets[-1].value == 12
    total = next(s.value for s in hist.samples
                 if s.name.endswith("_sum") and s.labels["phase"] == "train")
    rows = [r for r in StoreReader(store_paths(tracker.run_dir)[0]).steps() if r["phase"] == "train"]
    assert total == pytest.approx(sum(r["gpu_j"] + r["cpu_j"] + r["dram_j"] for r in rows), rel=1e-6)

    joules = sum(s.value for s in energy.values())
    grams = fams["greentrack_emissions_grams"].samples[0].value
    assert grams == pytest.approx(joules / 3.6e6 * 1.2 * 250.0, rel=1e-9)
    intensity = fams["greentrack_carbon_intensity_grams_per_kilowatt_hour"].samples[0]
    assert intensity.value == 250.0 and intensity.labels["source"] == "user-setting"
    assert fams["greentrack_gpu_seconds"].samples[0].value == pytest.approx(t0, abs=0.3)
    assert fams["greentrack_sampler_errors"].samples[0].value == 0
    assert 0 <= fams["greentrack_last_sample_age_seconds"].samples[0].value < 0.5
    assert 0 < fams["greentrack_sampler_cpu_seconds"].samples[0].value < t0  # a share of a core
    assert fams["greentrack_sampler_slow_interval_seconds"].samples[0].value == \
        tracker.config.counter_interval_s
    assert all("step" not in name for s in fams.values() for x in s.samples for name in x.labels)
    check = promtool("check", "metrics", stdin=text)  # last: skips where promtool is missing
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check


def test_port_in_use_is_a_recorded_warning_and_training_goes_on(
        tmp_path: Path, fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, logger="greentrack"):
            with Tracker(tmp_path / "run", prometheus_port=port, **FAST) as tracker:
                for _ in range(3):
                    with tracker.step():
                        busy(0.005)
                wait_steps(tracker, 3)
                assert tracker.sinks[0].port is None and tracker.sinks[0].url is None
    finally:
        taken.close()
    assert tracker.status == "completed" and tracker.summary()["steps"] == 3
    assert any(f"127.0.0.1:{port} is already in use" in r.getMessage() for r in caplog.records)
    kinds = {e["kind"]: e for e in events(tracker.run_dir)}
    assert "already in use" in kinds["exporter-error"]["message"]


def test_local_ranks_listen_on_base_port_plus_local_rank(
        tmp_path: Path, fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    assert listen_port(9400, {"LOCAL_RANK": "3"}) == 9403
    assert listen_port(9400, {}) == 9400 and listen_port(0, {"LOCAL_RANK": "3"}) == 0
    base = free_port()
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "5")
    with Tracker(tmp_path / "run", prometheus_port=base, **FAST) as tracker:
        exporter = tracker.sinks[0]
        if exporter.port is None:
            pytest.skip(f"port {base + 1} was taken by another process meanwhile")
        assert exporter.port == base + 1
        text = http_get(f"http://127.0.0.1:{base + 1}/metrics").decode()
    assert 'rank="5"' in text
    with pytest.raises(OSError):  # the endpoint is closed with the tracker
        http_get(f"http://127.0.0.1:{base + 1}/metrics", timeout=1.0)


class HungGateway:
    """A TCP server that accepts connections and never answers: the worst Pushgateway."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("gateway", ["hung", "refused"])
def test_a_dead_or_hung_pushgateway_neither_slows_nor_breaks_training(
        tmp_path: Path, fake_nvml: FakeNvml, gateway: str) -> None:
    hung = HungGateway() if gateway == "hung" else None
    url = hung.url if hung else f"http://127.0.0.1:{free_port()}"  # nothing listens there
    work_s, n = 0.01, 80

    def loop(tracker: Tracker | None) -> list[float]:
        durations = []
        for _ in range(n):
            t = time.perf_counter()
            if tracker is None:
                busy(work_s)
            else:
                with tracker.step():
                    busy(work_s)
            durations.append(time.perf_counter() - t)
        return durations

    try:
        baseline = sum(loop(None))
        tracker = Tracker(tmp_path / "run", pushgateway_url=url, push_interval_s=0.2, **FAST)
        tracker.start()
        durations = loop(tracker)
        t = time.perf_counter()
        tracker.stop()
        stop_s = time.perf_counter() - t
    finally:
        if hung:
            hung.close()
    # A push blocked on the gateway would hold a step for its whole timeout (0.2 s here).
    assert max(durations) < 0.15, max(durations)
    assert sum(durations) < baseline * 1.5 + 0.2, (sum(durations), baseline)
    assert stop_s < 0.2 + 0.5 + 1.0  # the final push waits at most timeout + 0.5 s
    assert tracker.status == "completed" and tracker.summary()["steps"] == n
    exporter = tracker.sinks[0]
    assert exporter.pusher.pushes == 0 and exporter.collector.push.failures >= 2
    if hung:
        assert hung.accepted  # the pushes did reach the hung server
    push_errors = [e for e in events(tracker.run_dir) if e["kind"] == "push-error"]
    assert push_errors and url in push_errors[0]["message"]


def test_labels_stay_bounded_whatever_the_steps(tmp_path: Path, fake_nvml: FakeNvml) -> None:
    with Tracker(tmp_path / "run", prometheus_port=0, **FAST) as tracker:
        exporter = tracker.sinks[0]
        for _ in range(5):
            with tracker.step():
                pass
        wait_steps(tracker, 5)
        before = families(http_get(exporter.url).decode())
        for i in range(300):
            with tracker.step(f"phase-{i % 20}"):
                pass
        wait_steps(tracker, 305)
        after = families(http_get(exporter.url).decode())
    phases = {s.labels["phase"] for s in after["greentrack_steps"].samples}
    assert len(phases) == 8 + 1 and "other" in phases  # 8 named phases, the rest pooled
    assert sum(s.value for s in after["greentrack_steps"].samples) == 305
    for name, fam in after.items():
        if name not in ("greentrack_steps", "greentrack_step_energy_joules", "greentrack_flops"):
            assert len(fam.samples) == len(before[name].samples), name


def test_bad_pushgateway_url_is_a_one_line_config_error(tmp_path: Path, no_host_env: Path) -> None:
    with pytest.raises(ConfigError) as e:
        Tracker(tmp_path / "run", pushgateway_url="ftp://gw:9091", **FAST).start()
    assert str(e.value).startswith("pushgateway_url='ftp://gw:9091' is invalid") and "\n" not in str(e.value)
    assert gateway_url("gw.internal:9091") == "http://gw.internal:9091"
    assert gateway_url("https://gw:9091/") == "https://gw:9091"
    for bad in ("", "http://", "http://gw:notaport", "http://gw:9091/?x=1"):
        with pytest.raises(ConfigError):
            gateway_url(bad)
    cli = subprocess.run([sys.executable, "-m", "greentrack", "run", "--run-dir",
                          str(tmp_path / "cli"), "--pushgateway", "nope://x", "--", "true"],
                         capture_output=True, text=True, env=python_env(**no_host_env_env(no_host_env)),
                         timeout=60)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr.splitlines()[-1].startswith("greentrack: pushgateway_url='nope://x' is invalid")


def test_an_invalid_location_fails_the_start_before_training(tmp_path: Path,
                                                             no_host_env: Path) -> None:
    pytest.importorskip("greentrack.carbon", reason="greentrack.carbon provides live intensities")
    with pytest.raises(ConfigError, match="country='XXX' is invalid"):
        Tracker(tmp_path / "run", prometheus_port=0, country="XXX", **FAST).start()


def test_intensity_from_the_location_when_no_figure_is_given(tmp_path: Path,
                                                            fake_nvml: FakeNvml) -> None:
    carbon = pytest.importorskip("greentrack.carbon")
    expected = carbon.live_intensity(Config(country="FRA"))
    with Tracker(tmp_path / "run", prometheus_port=0, country="FRA", **FAST) as tracker:
        time.sleep(0.3)  # a few GPU readings
        fams = families(http_get(tracker.sinks[0].url).decode())
    sample = fams["greentrack_carbon_intensity_grams_per_kilowatt_hour"].samples[0]
    assert sample.value == expected[0]
    # a short id (the report cites the source in full): method, country, the data's year
    assert re.fullmatch(r"yearly-average-fra(-20\d\d)?", sample.labels["source"]), sample.labels
    assert fams["greentrack_emissions_grams"].samples[0].value > 0


def test_world_average_intensity_label_is_a_short_id_not_a_cut_sentence(
        tmp_path: Path, fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    """The world average's source is 166 characters: the label was cut at 160, mid-word."""
    for name in ("GREENTRACK_COUNTRY", "GREENTRACK_REGION", "GREENTRACK_CARBON_INTENSITY_G_PER_KWH"):
        monkeypatch.delenv(name, raising=False)
    with Tracker(tmp_path / "run", prometheus_port=0, **FAST) as tracker:
        time.sleep(0.3)
        fams = families(http_get(tracker.sinks[0].url).decode())
    label = fams["greentrack_carbon_intensity_grams_per_kilowatt_hour"].samples[0].labels["source"]
    assert re.fullmatch(r"world-average(-20\d\d)?", label), label


def no_host_env_env(root: Path) -> dict[str, str]:
    return {"GREENTRACK_POWERCAP_ROOT": str(root), "GREENTRACK_INTERVAL_S": "0.02",
            "GREENTRACK_COUNTER_INTERVAL_S": "0.1", "GREENTRACK_FLUSH_INTERVAL_S": "0.1"}


def test_job_label_comes_from_the_scheduler() -> None:
    assert default_job({"SLURM_JOB_ID": "4242", "HOSTNAME": "node7"}) == "4242"
    assert default_job({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "train-x7k2p"}) == "train-x7k2p"
    assert default_job({"HOSTNAME": "workstation"}) == "greentrack"
    assert sinks_for(Config()) == []
    assert len(sinks_for(Config(pushgateway_url="http://127.0.0.1:9091"))) == 1


def test_intensity_lookup_is_cached_and_its_failures_reported_once() -> None:
    from greentrack.carbon.footprint import plain_settings
    calls: list[float] = []
    errors: list[str] = []
    now = [0.0]
    answers: list[Any] = [plain_settings(300.0, source="zone FR, 2024"),
                          RuntimeError("provider down"), plain_settings(280.0, source="zone FR")]

    def lookup(config: Config) -> Any:
        calls.append(now[0])
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    source = Intensity(Config(), errors.append, lookup=lookup, clock=lambda: now[0])
    assert source.current() == (300.0, "zone FR, 2024")
    now[0] = INTENSITY_TTL_S / 2
    assert source.current() == (300.0, "zone FR, 2024") and len(calls) == 1  # cached
    now[0] = INTENSITY_TTL_S * 1.5
    assert source.current() == (300.0, "zone FR, 2024")  # failed: last value kept
    assert len(errors) == 1 and "provider down" in errors[0]
    now[0] = INTENSITY_TTL_S * 3
    assert source.current() == (280.0, "zone FR")
    fixed = Intensity(Config(carbon_intensity_g_per_kwh=56.0), errors.append)  # the real lookup
    assert fixed.current() == (56.0, USER_INTENSITY) and len(calls) == 3  # explicit figure wins


def test_each_tracker_has_its_own_registry_and_import_stays_light(tmp_path: Path,
                                                                  fake_nvml: FakeNvml) -> None:
    from prometheus_client import REGISTRY, generate_latest
    with Tracker(tmp_path / "a", prometheus_port=0, **FAST) as a:
        with Tracker(tmp_path / "b", prometheus_port=0, **FAST) as b:
            assert a.sinks[0].registry is not b.sinks[0].registry
            assert a.sinks[0].port != b.sinks[0].port
            text_b = http_get(b.sinks[0].url).decode()
            assert f'run="{b.run_id}"' in text_b and f'run="{a.run_id}"' not in text_b
    assert b"greentrack_" not in generate_latest(REGISTRY)
    code = ("import sys, greentrack, greentrack.exporters; "
            "assert 'prometheus_client' not in sys.modules, 'imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True, env=python_env(), timeout=60)


def test_step_energy_buckets_suit_training_steps() -> None:
    b = STEP_ENERGY_BUCKETS_J
    assert list(b) == sorted(b) and b[0] <= 0.1 and b[-1] >= 1e5
    # no decade from 0.1 J to 100 kJ is left with fewer than two bucket edges
    for decade in range(-1, 5):
        assert sum(10.0 ** decade <= x < 10.0 ** (decade + 1) for x in b) >= 2
    assert all(math.isfinite(x) for x in b)


def test_pue_source_label_is_a_short_id_and_the_report_cites_the_source(
        tmp_path: Path, fake_nvml: FakeNvml) -> None:
    """Issue 26: the PUE gauge's source label was the citation's URL cut mid-word. It is a short
    id of the data source and its year (a handful of values); the report keeps the citation."""
    import json

    from greentrack.carbon.factors import DATA
    from greentrack.carbon.resolve import settings_for
    from greentrack.reports import report_document

    with Tracker(tmp_path / "run", prometheus_port=0, carbon_intensity_g_per_kwh=100.0,
                 **FAST) as tracker:
        with tracker.step():
            busy(0.05)
        wait_steps(tracker, 1)
        pue = families(http_get(tracker.sinks[0].url).decode())["greentrack_pue_ratio"]
    assert [(s.labels["source"], s.value) for s in pue.samples] == [("uptime-institute-2024", 1.56)]
    cited = report_document(tmp_path / "run", {})["pue"]["source"]
    assert "Uptime Institute" in cited and "https://" in cited  # in full, in the report
    ids = {pue_source_id(settings_for(Config(**kw))) for kw in (
        {}, {"pue": 1.3}, {"cloud": "gcp:europe-west9"}, {"cloud": "aws:us-east-1"})}
    assert ids == {"uptime-institute-2024", "setting", "green-algorithms-2023"}
    table = json.loads((DATA / "pue.json").read_text())
    for entry in [table["unknown"], *table["providers"].values()]:  # every entry has its id
        sid = entry["source_id"]
        assert len(sid) <= MAX_ID and sid.endswith(str(entry["year"])) and sid == sid.lower()
