"""Shared fixtures: hardware fakes at their module/filesystem boundary, and run helpers."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace
from tests.fakes.powercap import PowercapTree

REPO = Path(__file__).resolve().parents[1]
# This test session's runs meet only each other: another test session on the same machine (CI
# beside a developer's terminal) must not show up as a second run measuring the host.
os.environ["GREENTRACK_LEASE_DIR"] = tempfile.mkdtemp(prefix="greentrack-test-leases-")
FAST = {"interval_s": 0.02, "counter_interval_s": 0.1, "flush_interval_s": 0.1}


@pytest.fixture
def no_host_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty powercap root and no launcher variables: CPU/DRAM fall back to estimates."""
    root = tmp_path / "no-powercap"
    monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(root))
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES",
                 "GREENTRACK_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    return root


@pytest.fixture
def powercap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> PowercapTree:
    tree = PowercapTree(tmp_path / "powercap")
    monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
    return tree


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> Iterator[FakeNvml]:
    """One fake H100 drawing 300 W, installed as ``pynvml`` for the code under test."""
    fake = FakeNvml([FakeGpu(trace=PowerTrace([], idle_w=300.0))])
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    yield fake
    for gpu in fake.gpus:  # never leave a sampler thread blocked on a hung fake read
        if gpu.hang is not None:
            gpu.hang.set()


@pytest.fixture(autouse=True)
def no_leftover_sampler_threads() -> Iterator[None]:
    yield
    left = [t for t in threading.enumerate() if t.name == "greentrack-sampler" and t.is_alive()]
    assert not left, f"sampler threads left running: {left}"


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
    import json
    import sqlite3
    segment = store.stem.rsplit("-", 1)[-1]
    conn = sqlite3.connect(store)
    for key, value in (("host", host), ("rank", rank), ("segment", segment)):
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
    conn.commit()
    conn.close()
