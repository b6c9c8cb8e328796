"""The optional Electricity Maps provider against a local HTTP server speaking its v3 API: the
token travels only in the auth-token header, answers are cached on disk, failures fall back with
a warning, and the token never appears in any output, log, cache or run file."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from greentrack.carbon import live
from greentrack.carbon.live import live_intensity
from greentrack.carbon.series import parse_time
from greentrack.common.config import Config
from tests.helpers import (clean_env, expected_integration, make_run, report_json, run_cli,
                           validate_own_schema)

TOKEN = "em-secret-token-7f3a9c"


def hourly_value(t_unix: float) -> float:
    return 100.0 + (int(t_unix // 3600) % 5) * 10.0


class FakeElectricityMaps:
    """A local server with the v3 endpoints greentrack uses; counts requests by path."""

    def __init__(self, token: str = TOKEN) -> None:
        self.expected_token = token
        self.hits: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urllib.parse.urlparse(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                outer.hits[url.path] += 1
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.headers.get("auth-token") != outer.expected_token:
                    return self._send(401, {"error": "unauthorized"})
                if url.path == "/v3/carbon-intensity/latest":
                    return self._send(200, {"zone": q["zone"], "carbonIntensity": 77,
                                            "datetime": "2026-11-25T10:00:00.000Z",
                                            "emissionFactorType": "lifecycle"})
                if url.path == "/v3/carbon-intensity/past-range":
                    a, b = parse_time(q["start"]), parse_time(q["end"])
                    data, t = [], a
                    while t < b:
                        data.append({"zone": q["zone"], "carbonIntensity": hourly_value(t),
                                     "datetime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t)),
                                     "emissionFactorType": q.get("emissionFactorType", "lifecycle")})
                        t += 3600
                    return self._send(200, {"zone": q["zone"], "data": data})
                return self._send(404, {"error": "not found"})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeElectricityMaps":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("emrun")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        yield make_run(root, steps=4)


@pytest.fixture
def em(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeElectricityMaps]:
    with clean_env(monkeypatch, tmp_path), FakeElectricityMaps() as server:
        monkeypatch.setenv("GREENTRACK_ELECTRICITYMAPS_TOKEN", TOKEN)
        monkeypatch.setenv("GREENTRACK_ELECTRICITYMAPS_URL", server.url)
        monkeypatch.setenv("GREENTRACK_CACHE_DIR", str(tmp_path / "cache"))
        live._memo.clear()
        yield server
        live._memo.clear()


def assert_no_token(*places: Path | str) -> None:
    for place in places:
        if isinstance(place, Path):
            files = [p for p in place.rglob("*") if p.is_file()] if place.is_dir() else [place]
            for f in files:
                assert TOKEN.encode() not in f.read_bytes(), f
        else:
            assert TOKEN not in place


def test_report_integrates_hourly_past_data_and_caches_it(cpu_run: Path, em: FakeElectricityMaps,
                                                         tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    code, out, err = run_cli(["report", str(cpu_run), "--country", "FR", "--format", "all",
                              "--out", str(tmp_path / "o1")])
    assert code == 0, err
    doc = report_json(tmp_path / "o1")
    validate_own_schema(doc)
    loc = doc["intensity"]["location_based"]
    assert loc["method"] == "time-resolved" and "Electricity Maps API" in loc["source"]
    assert loc["location"]["zone"] == "FR" and loc["coverage"] == pytest.approx(1.0)
    start = parse_time(doc["run"]["started_at"]) // 3600 * 3600
    rows = [(start + h * 3600, start + (h + 1) * 3600, hourly_value(start + h * 3600)) for h in range(-2, 3)]
    g, kwh = expected_integration(cpu_run, rows, fallback=-1.0)
    assert loc["g_per_kwh"] == pytest.approx(g / kwh, rel=1e-6)
    assert all(h.get("auth-token") == TOKEN for h in em.headers)
    assert all(TOKEN not in k and TOKEN not in v for h in em.headers for k, v in h.items()
               if k.lower() != "auth-token")
    first = em.hits["/v3/carbon-intensity/past-range"]
    assert first >= 1
    code, out2, err2 = run_cli(["report", str(cpu_run), "--country", "FR", "--format", "json",
                                "--out", str(tmp_path / "o2")])
    assert code == 0 and em.hits["/v3/carbon-intensity/past-range"] == first  # from the disk cache
    assert report_json(tmp_path / "o2")["summary"] == {**doc["summary"]}
    assert_no_token(tmp_path / "o1", tmp_path / "o2", tmp_path / "cache", cpu_run, out, err, out2,
                    err2, caplog.text)


def test_a_refused_token_falls_back_to_yearly_data_with_a_warning(cpu_run: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path), FakeElectricityMaps(token="another") as server:
        monkeypatch.setenv("GREENTRACK_ELECTRICITYMAPS_TOKEN", TOKEN)
        monkeypatch.setenv("GREENTRACK_ELECTRICITYMAPS_URL", server.url)
        monkeypatch.setenv("GREENTRACK_CACHE_DIR", str(tmp_path / "cache"))
        code, out, err = run_cli(["report", str(cpu_run), "--country", "FR", "--format", "json",
                                  "--out", str(tmp_path / "o")])
    assert code == 0
    doc = report_json(tmp_path / "o")
    assert doc["intensity"]["location_based"]["method"] == "yearly-average"
    assert any("HTTP 401" in w for w in doc["warnings"]) and "HTTP 401" in err
    assert_no_token(tmp_path / "o", out, err)


def test_us_location_needs_an_explicit_zone(cpu_run: Path, em: FakeElectricityMaps, tmp_path: Path) -> None:
    code, _, err = run_cli(["report", str(cpu_run), "--country", "USA", "--format", "json",
                            "--out", str(tmp_path / "o")])
    assert code == 0 and "GREENTRACK_ELECTRICITYMAPS_ZONE" in err
    assert em.hits["/v3/carbon-intensity/past-range"] == 0


def test_live_intensity_reads_latest_once_then_the_disk_cache(em: FakeElectricityMaps,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    value, source = live_intensity(Config(country="FR"))
    assert value == 77.0 and "Electricity Maps API, zone FR" in source
    assert em.hits["/v3/carbon-intensity/latest"] == 1
    live._memo.clear()
    assert live_intensity(Config(country="FR"))[0] == 77.0
    assert em.hits["/v3/carbon-intensity/latest"] == 1  # second process-level lookup: disk cache
    assert_no_token(source, caplog.text)


def test_live_intensity_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path):
        live._memo.clear()
        from codecarbon.input import DataSource
        fr = DataSource().get_global_energy_mix_data()["FRA"]["carbon_intensity"]
        value, source = live_intensity(Config(country="FR"))
        assert value == fr and "global_energy_mix.json" in source and "2023" in source
        # no location: the world average, labelled, as every report uses it (not None any more)
        from greentrack.carbon.location import world_average
        assert live_intensity(Config()) == (world_average().g_per_kwh, world_average().source)
        assert "no location was set" in world_average().source
        assert live_intensity(Config(carbon_intensity_g_per_kwh=12.5))[0] == 12.5
        now = time.time()
        csv = tmp_path / "i.csv"
        csv.write_text(f"start,end,g_per_kwh\n{now - 60},{now + 3600},33\n")
        value, source = live_intensity(Config(country="FR", intensity_csv=str(csv)))
        assert value == 33.0 and "i.csv" in source
        live._memo.clear()


def test_an_unreachable_server_never_raises_into_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with clean_env(monkeypatch, tmp_path):
        server = FakeElectricityMaps()
        url = server.url
        server.server.server_close()  # nothing listens there now
        monkeypatch.setenv("GREENTRACK_ELECTRICITYMAPS_TOKEN", TOKEN)
        monkeypatch.setenv("GREENTRACK_ELECTRICITYMAPS_URL", url)
        monkeypatch.setenv("GREENTRACK_CACHE_DIR", str(tmp_path / "cache"))
        live._memo.clear()
        value, source = live_intensity(Config(country="DE"))
        assert "global_energy_mix.json" in source and value > 0
        assert "falls back" in caplog.text
        assert_no_token(caplog.text, source)
        live._memo.clear()


def test_a_token_in_the_config_file_is_refused_without_echoing_it(cpu_run: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path):
        cfg = tmp_path / "g.toml"
        cfg.write_text(f'[electricitymaps]\ntoken = "{TOKEN}"\nzone = "FR"\n')
        code, out, err = run_cli(["report", str(cpu_run), "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert code == 2 and "GREENTRACK_ELECTRICITYMAPS_TOKEN" in err
    assert_no_token(out, err)
