"""FLOPs per step (counted once, given, analytic), the peak table and MFU, the forecast."""

from __future__ import annotations

import csv
import logging
import math
import re
import subprocess
import sys

import pytest

from greentrack.carbon.forecast import Forecast, format_forecast
from greentrack.training.flops import (DTYPES, METHOD_ANALYTIC, METHOD_COUNTED, TABLE,
                                       FirstStepCounter, analytic, count, dtype_name, given, mfu,
                                       parameter_count, peak_flops)
from tests.helpers import python_env

torch = pytest.importorskip("torch")


def linear_step_flops(batch: int, n_in: int, n_out: int, input_grad: bool) -> int:
    # forward x@W: 2*b*i*o; backward dW: 2*b*i*o; dx (when x needs a gradient): 2*b*i*o
    return 2 * batch * n_in * n_out * (3 if input_grad else 2)


def test_counting_a_step_matches_the_matmul_arithmetic() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    x = torch.randn(8, 32)
    got = count(lambda: model(x).sum().backward())
    expected = linear_step_flops(8, 32, 64, False) + linear_step_flops(8, 64, 16, True)
    assert got.flops == expected and got.method == METHOD_COUNTED


def test_a_meta_device_copy_counts_the_same_without_computing() -> None:
    def build() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
    real = count(lambda: build()(torch.randn(4, 128)).sum().backward())
    with torch.device("meta"):
        meta_model, meta_x = build(), torch.randn(4, 128)
    meta = count(lambda: meta_model(meta_x).sum().backward())
    assert meta.flops == real.flops > 0
    assert all(p.device.type == "meta" for p in meta_model.parameters())


def test_first_step_counter_counts_one_step_then_stops() -> None:
    model = torch.nn.Linear(16, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    counter = FirstStepCounter()
    assert counter.start() and counter.active
    for _ in range(2):  # gradient accumulation: both micro-batches belong to the step
        model(torch.randn(4, 16)).sum().backward()
    opt.step()
    result = counter.stop()
    assert not counter.active and result is not None
    assert result.flops == 2 * linear_step_flops(4, 16, 16, False)
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    assert _get_current_dispatch_mode_stack() == []  # nothing left active after the step


def test_a_step_without_counted_ops_gives_none_and_says_why() -> None:
    counter = FirstStepCounter()
    counter.start()
    (torch.randn(10) * 2).sum()
    assert counter.stop() is None and "no matmul" in (counter.error or "")


def test_analytic_and_given_flops() -> None:
    est = analytic(n_params=124e6, tokens_per_step=16 * 1024)
    assert est.flops == 6 * 124e6 * 16 * 1024 and est.method == METHOD_ANALYTIC
    assert "Kaplan" in est.detail
    model = torch.nn.Linear(10, 10)
    assert parameter_count(model) == 110
    assert given(3e12).method == "user"


# -- the peak table --------------------------------------------------------------------------

def rows() -> list[dict[str, str]]:
    with TABLE.open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_peak_row_is_well_formed_and_sourced() -> None:
    table = rows()
    assert len(table) >= 40
    for row in table:
        re.compile(row["match"])
        assert row["dtype"] in DTYPES
        value = float(row["peak_flops_per_s"])
        assert 1e12 <= value <= 1e16 and math.isfinite(value)
        assert re.search(r"\((19|20)\d\d\)", row["source"]), row  # every row: source and year


@pytest.mark.parametrize("name, dtype, expected, device", [
    # Lightning's get_available_flops (lightning/fabric/utilities/throughput.py) for H100 SXM; dense,
    # per NVIDIA's H100 datasheet
    ("NVIDIA H100 80GB HBM3", "bfloat16", 9.895e14, "NVIDIA H100 SXM"),
    ("NVIDIA H100 80GB HBM3", "tf32", 4.945e14, "NVIDIA H100 SXM"),
    ("NVIDIA H100 80GB HBM3", "float32", 6.7e13, "NVIDIA H100 SXM"),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 3.12e14, "NVIDIA A100"),
    ("NVIDIA H100 PCIe", "bfloat16", 7.56e14, "NVIDIA H100 PCIe"),
    ("NVIDIA H100 NVL", "bfloat16", 8.355e14, "NVIDIA H100 NVL"),
    ("NVIDIA H200", "bfloat16", 9.895e14, "NVIDIA H200 SXM"),
    ("NVIDIA H200 NVL", "bfloat16", 8.355e14, "NVIDIA H200 NVL"),
    ("NVIDIA GH200 480GB", "bfloat16", 9.895e14, "NVIDIA GH200"),
    ("NVIDIA L40S", "bfloat16", 3.665e14, "NVIDIA L40S"),
    ("NVIDIA B200", "bfloat16", 2.25e15, "NVIDIA B200"),
    ("NVIDIA B200", "float8", 4.5e15, "NVIDIA B200"),
    ("AMD Instinct MI300X", "bfloat16", 1.3074e15, "AMD Instinct MI300X"),
    ("AMD Instinct MI300X", "float32", 1.634e14, "AMD Instinct MI300X"),
    ("NVIDIA L40", "bfloat16", 1.81e14, "NVIDIA L40"),
    ("NVIDIA L4", "bfloat16", 1.21e14, "NVIDIA L4"),
    ("NVIDIA A10", "float16", 1.25e14, "NVIDIA A10"),
    ("Tesla V100-SXM2-16GB", "float16", 1.25e14, "NVIDIA V100 SXM2"),
    ("Tesla T4", "float16", 6.5e13, "NVIDIA T4"),
])
def test_device_names_map_to_their_rows(name: str, dtype: str, expected: float, device: str) -> None:
    peak = peak_flops(name, dtype)
    assert peak is not None and peak.flops_per_s == expected and peak.device == device


def test_the_sparse_entries_of_lightnings_table_are_halved_here() -> None:
    """Lightning #21677: its H200 and H100 NVL rows are sparse figures, a 2x MFU error."""
    pytest.importorskip("lightning")
    from lightning.fabric.utilities.throughput import _CUDA_FLOPS
    for theirs, name in (("h200 sxm1", "NVIDIA H200"), ("h200 nvl1", "NVIDIA H200 NVL")):
        ours = peak_flops(name, "bfloat16")
        assert ours is not None
        assert ours.flops_per_s == pytest.approx(_CUDA_FLOPS[theirs][torch.bfloat16] / 2, rel=0.02)
    for theirs, name in (("h100 sxm", "NVIDIA H100 80GB HBM3"), ("a100", "NVIDIA A100-PCIE-40GB")):
        ours = peak_flops(name, "bfloat16")
        assert ours is not None
        assert ours.flops_per_s == pytest.approx(_CUDA_FLOPS[theirs][torch.bfloat16], rel=0.01)


@pytest.mark.parametrize("name, dtype", [("NVIDIA A10G", "bfloat16"), ("Tesla T4", "bfloat16"),
                                         ("cpu device", "float32"), ("NVIDIA GB200", "bfloat16")])
def test_unknown_device_or_dtype_is_none_with_a_warning(name: str, dtype: str,
                                                        caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import greentrack.training.flops

    # the warning is once per process: earlier tests (a CPU trainer) may have used it up
    monkeypatch.setattr(greentrack.training.flops, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="greentrack"):
        assert peak_flops(name, dtype) is None
        assert peak_flops(name, dtype) is None
    warnings = [r for r in caplog.records if "no peak FLOP/s" in r.getMessage()]
    assert len(warnings) == 1 and name in warnings[0].getMessage()  # once, naming the device


def test_precisions_map_to_table_dtypes() -> None:
    assert dtype_name("bf16-mixed") == "bfloat16" == dtype_name(torch.bfloat16)
    assert dtype_name("16-mixed") == "float16" == dtype_name(torch.float16)
    assert dtype_name("transformer-engine") == "float8"
    assert dtype_name("32-true", device_type="cpu") == "float32"
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert dtype_name(torch.float32, "cuda") == "tf32"
        torch.set_float32_matmul_precision("highest")
        assert dtype_name(torch.float32, "cuda") == "float32"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_mfu() -> None:
    assert mfu(4.0e14, 2.0, 1.0e15) == pytest.approx(0.2)
    assert mfu(4.0e14, 1.0, 1.0e15, n_devices=4) == pytest.approx(0.1)
    assert mfu(None, 1.0, 1e15) is None and mfu(1e12, 0.0, 1e15) is None and mfu(1e12, 1.0, None) is None


# -- forecast --------------------------------------------------------------------------------

def test_forecast_extrapolates_the_recent_rate() -> None:
    f = Forecast(planned_steps=1000, carbon_g_per_kwh=400.0, price_per_kwh=0.2, currency="EUR")
    assert f.estimate() is None
    for step in range(0, 101, 10):  # warm-up at 2 J/step, then 1 J/step from step 50
        energy = 2.0 * min(step, 50) + 1.0 * max(0, step - 50)
        f.observe(step, energy, elapsed_s=step * 0.5)
    est = f.estimate()
    assert est is not None
    assert est["energy_j"] == pytest.approx(150.0 + 900 * (150.0 - 0.0) / 100)  # window: all
    assert est["duration_s"] == pytest.approx(500.0) and est["remaining_s"] == pytest.approx(450.0)
    assert est["emissions_g"] == pytest.approx(est["energy_j"] / 3.6e6 * 400.0)
    assert est["cost"] == pytest.approx(est["energy_j"] / 3.6e6 * 0.2)
    assert "gCO2e" in format_forecast(est) and "EUR" in format_forecast(est)
    recent = Forecast(planned_steps=2000)
    for step in range(0, 1001, 10):
        recent.observe(step, 2.0 * min(step, 50) + 1.0 * max(0, step - 50), step * 0.5)
    # the recent rate (1 J/step), not the run-wide mean (1.05 J/step)
    assert recent.estimate()["energy_j"] == pytest.approx(1050.0 + 1000 * 1.0)  # type: ignore[index]


def test_forecast_from_config_uses_intensity_and_pue() -> None:
    from greentrack.common.config import Config
    f = Forecast.for_config(10, Config(carbon_intensity_g_per_kwh=100.0, pue=1.5,
                                       electricity_price=0.3, currency="USD"))
    kwh = f.figures(3.6e6, 3600.0, 0.0, 2e9)  # 1 kWh of IT energy over an hour
    assert kwh["emissions_g"] == pytest.approx(150.0)  # facility energy: IT x PUE
    assert kwh["cost"] == pytest.approx(0.45) and f.currency == "USD"
    none = Forecast.for_config(10, Config())  # no location: the world average, as every report
    from greentrack.carbon.location import world_average
    got = none.figures(3.6e6, 3600.0, 0.0, 2e9)
    assert got["emissions_g"] == pytest.approx(world_average().g_per_kwh * 1.56)
    assert got["cost"] is None


def test_forecast_from_a_location_uses_the_reports_factors() -> None:
    carbon = pytest.importorskip("greentrack.carbon")
    from greentrack.carbon.factors import resolve_pue
    from greentrack.carbon.location import resolve_location
    from greentrack.common.config import Config
    cfg = Config(country="FRA")
    found = carbon.live_intensity(cfg)
    pue = resolve_pue(cfg, resolve_location(cfg))
    assert found is not None and pue["default"]  # no PUE set: the location's default, as reports
    f = Forecast.for_config(10, cfg)
    assert f.figures(3.6e6, 3600.0, 0.0, 2e9)["emissions_g"] == pytest.approx(found[0] * pue["value"])
    assert 20.0 < found[0] < 200.0  # France's low-carbon grid, from codecarbon's data


def test_importing_the_training_core_loads_no_framework() -> None:
    code = ("import sys, greentrack.training.flops, greentrack.training.stepmarks, greentrack.training.meter, "
            "greentrack.carbon.forecast, greentrack.integrations; "
            "bad = [m for m in ('torch', 'lightning', 'transformers', 'pynvml') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env=python_env())
