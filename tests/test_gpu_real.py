"""The real NVML path on a real NVIDIA GPU. Skipped, with the reason, where there is none.

Run on the H100 machine with ``python -m pytest tests/test_gpu_real.py -v -rs``; what it showed is
recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def _real_gpu_reason() -> str | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - any failure means: no usable GPU here
        return f"no NVIDIA GPU with NVML here ({type(e).__name__}: {e})"
    return None if n > 0 else "NVML found no GPU"


REASON = _real_gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def test_discovery_uses_the_energy_counter() -> None:
    from greentrack.common.config import Config
    from greentrack.samplers import discover
    found = discover(Config())
    gpus = [c for c in found.channels if c.info.kind == "gpu"]
    assert gpus, found.notes
    for ch in gpus:
        assert ch.info.method.startswith("nvml-energy-counter")  # Volta and newer
        assert ch.info.details["instant_power_field"]
        ch.close()


def test_total_matches_counter_delta_on_bursty_load(tmp_path: Path) -> None:
    """Busy/idle seconds and 50 ms bursts; greentrack's total within 1% of the counter delta."""
    torch = pytest.importorskip("torch")
    import pynvml

    import greentrack
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def burn(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            a @ a
            torch.cuda.synchronize()

    with greentrack.Tracker(tmp_path / "run", gpus=(0,)) as tracker:
        c0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        for _ in range(3):
            with tracker.step(phase="busy"):
                burn(1.0)
            with tracker.step(phase="idle"):
                time.sleep(1.0)
        for _ in range(10):
            burn(0.05)
            time.sleep(0.45)
        time.sleep(0.2)
        c1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        t_before = tracker.totals()["gpu"]
    s = greentrack.summarize(tmp_path / "run")
    counter_j = (c1 - c0) / 1000.0
    # the tracker's total covers start..stop, slightly more than c0..c1: compare the rate-free part
    assert s["energy_j"]["gpu"] >= counter_j * 0.99
    assert t_before == pytest.approx(counter_j, rel=0.03)
    from greentrack.store import StoreReader, store_paths
    steps = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    busy = [st for st in steps if st["phase"] == "busy"]
    assert all(st["gpu_j"] > 0 for st in busy)
