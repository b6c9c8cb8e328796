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
from greentrack.common.config import Config
from greentrack.engine.engine import Engine
from greentrack.samplers._nvml import open_gpus
from greentrack.store import StoreWriter
from greentrack.store.layout import StepRow, prepare_run_dir
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace
from tests.fakes.powercap import LiveCounters, PowercapTree

REPO = Path(__file__).resolve().parents[1]
#: mypy --strict over both trees (tests/test_typing.py): 42 CPU-s on a cold cache, most of it
#: reading torch's, Lightning's and transformers' types. tests/conftest.py starts it with the
#: session and names its output directory in MYPY_RESULT.
MYPY = [sys.executable, "-m", "mypy", "--strict", "greentrack", "integrations/"]
MYPY_RESULT = "GREENTRACK_TEST_MYPY_RESULT"


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


def write_store(run_dir: Path, *, run_id: str, start_unix: float, duration_s: float,
                channels: tuple[tuple[str, float, bool], ...] = (("gpu", 300.0, True),),
                ramp: float = 0.0, resolution_s: float = 60.0, host: str = "gen-0",
                rank: int = 0, labels: dict[str, str] | None = None,
                settings: dict[str, Any] | None = None, status: str = "completed",
                steps: int = 0, planned_steps: int | None = None,
                now: float | None = None) -> Path:
    """A store of one process of a run, written through :class:`greentrack.store.StoreWriter` with
    synthetic power, for run sets too large or too long for real Trackers (an inventory's
    months). ``channels``: ``(kind, watts, measured)``; channel power grows linearly by
    ``ramp`` (x (1 + ramp t / duration)), so its energy over time is not its span's share of
    time. One sample per ``resolution_s``. ``status='running'`` leaves it open (heartbeat
    ``now``). ``steps`` training steps spread evenly over the span, ``planned_steps`` recorded as
    the training integrations do (a forecast's horizon). Returns the store's path; its channels'
    joules are ``watts x duration x (1 + ramp / 2)``."""
    prepare_run_dir(run_dir, run_id)
    meta: dict[str, Any] = {
        "run_id": run_id, "host": host, "boot_id": f"boot-{host}", "pid": 1, "rank": rank,
        "local_rank": 0, "world_size": 1, "started_unix": start_unix, "mode": "machine",
        "settings": {"resolution_s": resolution_s, **(settings or {})},
        "labels": dict(labels or {}), "status": status}
    writer = StoreWriter(run_dir, rank, meta)
    n = max(1, int(round(duration_s / resolution_s)))
    dt = duration_s / n
    for cid, (kind, watts, measured) in enumerate(channels, start=1):
        writer.add_channel(cid, {
            "kind": kind, "device": f"{kind}{cid}", "name": f"synthetic {kind}",
            "method": "nvml-energy-counter" if measured else "tdp-estimate",
            "measured": measured, "source": "synthetic", "uncertainty": "",
            "host_scope": kind != "gpu",
            "details": {"uuid": f"GPU-{run_id}-{host}-{cid}"} if kind == "gpu" else {}})
        total = 0.0
        for k in range(n):
            a, b = k * dt, (k + 1) * dt
            e = watts * (b - a) * (1.0 + ramp * (a + b) / 2.0 / duration_s)
            writer.add_sample(cid, a, dt, e)
            total += e
        writer.update_channel(cid, total, duration_s, 0.0, "ok")
    for k in range(steps):
        a = duration_s * k / max(steps, 1)
        writer.add_step(StepRow(k, "train", a, a + 1.0, 1.0, None, None, None, 0.0, None, 1.0,
                                None, "host", {}))
    if planned_steps is not None:
        writer.add_event(0.0, "info", "planned-steps", f"{planned_steps} optimizer steps planned",
                         details={"planned_steps": planned_steps})
    if status == "running":
        writer.set_meta({"heartbeat_unix": now if now is not None else time.time()})
    else:
        writer.set_meta({"duration_s": duration_s, "ended_unix": start_unix + duration_s})
    writer.flush()
    writer.close()
    return writer.path


def measured_s(run_dir: Path, kind: str | None = None) -> float:
    """Seconds the run's channels (of ``kind``, or all) measured: per store, the span of each
    channel's readings (first to last, as its sample buckets cover them) averaged over its
    channels; the union over stores.
    The run's ``duration_s`` is wider by each tracker's setup and teardown (the store is made
    before the first reading, closed after the last): ~5 ms quiet, 0.1-0.2 s on a loaded host, when
    no joule is read. Energy bounds of a constant fake power derive from this, not the duration."""
    from greentrack.run.model import union_length
    spans = []
    with greentrack.run.Run.open(run_dir) as r:
        for seg in r.segments:
            # a sample row is a bucket from t holding dt seconds of readings, contiguous when
            # nothing failed: the channel measured the dt-sum up to the last bucket's end
            rows = seg.reader.rows(
                "SELECT MAX(s.t + s.dt) - SUM(s.dt) AS lo, MAX(s.t + s.dt) AS hi FROM samples s "
                "JOIN channels c ON c.id = s.channel_id WHERE ? IS NULL OR c.kind = ? "
                "GROUP BY s.channel_id", (kind, kind))
            if rows:
                spans.append((seg.start_unix + sum(x["lo"] for x in rows) / len(rows),
                              seg.start_unix + sum(x["hi"] for x in rows) / len(rows)))
    return union_length(spans)


def run_sql(store: Path, *statements: str) -> None:
    """Run SQL statements on a store file directly, as a foreign writer (or damage) would."""
    conn = sqlite3.connect(store)
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()


def engine_on_a_fake_gpu(run_dir: Path, resolution_s: float = 1.0) -> tuple[Engine, StoreWriter]:
    """An :class:`~greentrack.engine.engine.Engine` over one fake H100, its store in ``run_dir``,
    on a clock stopped at 0 (a test feeds the timeline and calls ``_attribute``/``_flush``)."""
    fake = FakeNvml([FakeGpu(uuid="GPU-00000000-2222-3333-4444-555555555555")])
    channels, _ = open_gpus(None, env={}, pynvml=fake.module())
    config = Config(run_dir=run_dir, resolution_s=resolution_s)
    writer = StoreWriter(config.run_dir, 0, {"run_id": prepare_run_dir(run_dir),
                                             "settings": config.as_dict()})
    return Engine(list(channels), writer, config, origin=0.0, clock=lambda: 0.0), writer
