"""Helpers shared by the tests: the repository, child-process environments, real run directories
(a real Tracker on a fake powercap tree and, when a GPU is wanted, the fake NVML), the CLI run in
process, report documents and schemas, scrape and merge helpers. Test modules import from here (and
fixtures come from conftest.py); no test module imports another.

Runs are made by a real Tracker (real sampler thread, real SQLite store) on a powercap tree whose
counters advance at known watts from another process.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import greentrack
from greentrack.cli import main
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace
from tests.fakes.powercap import LiveCounters, PowercapTree

REPO = Path(__file__).resolve().parents[1]


FAST = {"interval_s": 0.02, "counter_interval_s": 0.1, "flush_interval_s": 0.1}


def python_env(**extra: str) -> dict[str, str]:
    """Environment for child Python processes: this repo importable, greentrack settings fast."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def as_another_process(store: Path, host: str = "otherhost", rank: int = 1) -> None:
    """Make a copied store another process's: its meta names ``host``, ``rank`` and a segment from
    its file name (``<host>-r<rank>-<segment>.gtdb``), as a store that process wrote would. A plain
    copy is the same store (host, boot id, rank and segment), read once."""
    segment = store.stem.rsplit("-", 1)[-1]
    conn = sqlite3.connect(store)
    for key, value in (("host", host), ("rank", rank), ("segment", segment)):
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
    conn.commit()
    conn.close()


BOAMPS_DIR = REPO.parent / "shared" / "schemas" / "boamps"


SCHEMA = REPO / "greentrack" / "schemas" / "report-v1.schema.json"


RUN_FAST = {**FAST, "resolution_s": 0.1}


CLEAN_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES",
             "GREENTRACK_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "GREENTRACK_CONFIG",
             "GREENTRACK_ELECTRICITYMAPS_TOKEN", "GREENTRACK_ELECTRICITYMAPS_ZONE",
             "GREENTRACK_ELECTRICITYMAPS_URL", "GREENTRACK_CACHE_DIR", "GREENTRACK_COUNTRY",
             "GREENTRACK_REGION", "GREENTRACK_CLOUD", "GREENTRACK_CARBON_INTENSITY_G_PER_KWH",
             "GREENTRACK_INTENSITY_CSV", "GREENTRACK_MARKET_FACTOR_G_PER_KWH", "GREENTRACK_PUE",
             "GREENTRACK_ELECTRICITY_PRICE", "GREENTRACK_GPU_HOUR_PRICE", "GREENTRACK_CURRENCY")


@contextlib.contextmanager
def clean_env(mp: pytest.MonkeyPatch, root: Path) -> Iterator[None]:
    for name in CLEAN_ENV:
        mp.delenv(name, raising=False)
    mp.setenv("GREENTRACK_POWERCAP_ROOT", str(root / "no-powercap"))
    yield


def make_run(root: Path, name: str = "run", cpu_w: float = 40.0, dram_w: float = 4.0,
             gpu_w: float | None = None, steps: int = 8, step_s: float = 0.1,
             step_info: dict[str, Any] | None = None, **settings: Any) -> Path:
    """A finished run directory with known power. The caller's environment must be clean."""
    tree = PowercapTree(root / f"{name}-powercap")
    run_dir = root / name
    info = {"samples": 4, "tokens": 512, "flops": 2.0e9} if step_info is None else step_info
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        if gpu_w is not None:
            fake = FakeNvml([FakeGpu(trace=PowerTrace([], idle_w=gpu_w))])
            mp.setitem(sys.modules, "pynvml", fake.module())
        with LiveCounters(tree, {"intel-rapl:0": cpu_w, "intel-rapl:0:1": dram_w}):
            with greentrack.Tracker(run_dir, **{**RUN_FAST, **settings}) as tracker:
                for _ in range(steps):
                    with tracker.step(**info):
                        time.sleep(step_s)
    return run_dir


def make_lossy_run(run_dir: Path, losses: list[float], labels: dict[str, str], power_w: float,
                   root: Path) -> Path:
    """A finished run at ``power_w`` (CPU, + 4 W DRAM) with ``labels``, one 30-ms step per loss,
    each loss recorded after its step (``tracker.record``). The caller's environment must be
    clean."""
    tree = PowercapTree(root / f"{run_dir.parent.name}-{run_dir.name}-powercap")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        with LiveCounters(tree, {"intel-rapl:0": power_w, "intel-rapl:0:1": 4.0}):
            with greentrack.Tracker(run_dir, labels=labels, **RUN_FAST) as tr:
                for loss in losses:
                    with tr.step(samples=8, tokens=64):
                        time.sleep(0.03)
                    tr.record(loss=loss)
    return run_dir


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``greentrack ARGV`` in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def report_json(out_dir: Path) -> dict[str, Any]:
    return dict(json.loads((out_dir / "report.json").read_text(encoding="utf-8")))


def validate_own_schema(doc: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    Draft202012Validator(schema).validate(doc)


def boamps_validator() -> Any:
    """A draft-04 validator of BoAmps' report schema whose https $refs resolve to the local files."""
    if not BOAMPS_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"BoAmps schemas missing at {BOAMPS_DIR}")
        pytest.skip(f"BoAmps schemas not found at {BOAMPS_DIR} (../shared/schemas/boamps)")
    from jsonschema import Draft4Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4
    resources = []
    for path in sorted(BOAMPS_DIR.glob("*_schema.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((contents["id"], Resource.from_contents(contents, default_specification=DRAFT4)))
    registry = Registry().with_resources(resources)
    schema = json.loads((BOAMPS_DIR / "report_schema.json").read_text(encoding="utf-8"))
    return Draft4Validator(schema, registry=registry)


def samples_by_store(run_dir: Path) -> list[tuple[float, list[dict[str, Any]]]]:
    """(started_unix, raw sample rows) of each store, read with the store's own reader."""
    from greentrack.store import StoreReader, store_paths
    out = []
    for path in store_paths(run_dir):
        r = StoreReader(path)
        out.append((float(r.meta["started_unix"]), r.samples()))
        r.close()
    return out


def expected_integration(run_dir: Path, rows: list[tuple[float, float, float]],
                          fallback: float) -> tuple[float, float]:
    """(g, kWh) from the raw stored buckets, each spread over its span and split by overlap."""
    g = j = 0.0
    for s0, samples in samples_by_store(run_dir):
        for r in samples:
            a, b, e = s0 + r["t"], s0 + r["t"] + r["dt"], r["energy_j"]
            j += e
            inside = 0.0
            for lo, hi, v in rows:
                ov = min(b, hi) - max(a, lo)
                if ov > 0:
                    inside += e * ov / (b - a)
                    g += e * ov / (b - a) / 3.6e6 * v
            g += (e - inside) / 3.6e6 * fallback
    return g, j / 3.6e6


def node_run(monkeypatch: pytest.MonkeyPatch, run_dir: Path, host: str, run_id: str = "job-9",
             steps: int = 3) -> None:
    monkeypatch.setenv("GREENTRACK_HOSTNAME", host)
    monkeypatch.setenv("GREENTRACK_BOOT_ID", f"boot-{host}")
    with greentrack.Tracker(run_dir, run_id=run_id, **FAST) as t:
        for _ in range(steps):
            with t.step(samples=2):
                time.sleep(0.02)


def digest(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (the device locks in ``.owners`` too), by content."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def gt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greentrack", *args], capture_output=True,
                          text=True, env=python_env(), timeout=120)


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}
