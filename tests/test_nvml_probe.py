"""bench/nvml_probe.py answers the first question for a GPU session (does the energy counter
refresh on the power sensor's tick?). Its analysis is checked here against the fake NVML, whose
counter refresh phase and read cost are set, so the probe cannot report what it did not see."""

from __future__ import annotations

import sys
import time

import pytest

from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace
from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

from nvml_probe import sample, summarize  # noqa: E402

#: the NVML probe's analysis over timed phases: out of `make test-fast`
pytestmark = pytest.mark.slow


def probe(**gpu: float) -> dict:
    fake = FakeNvml([FakeGpu(trace=PowerTrace([], idle_w=300.0), **gpu)])
    nv = fake.module()
    nv.nvmlInit()
    # the fake's refreshes run on time.monotonic: the probe must date reads on the same clock
    return summarize(sample(nv, nv.nvmlDeviceGetHandleByIndex(0), 2.0, clock=time.monotonic))


@pytest.mark.parametrize(("phase_s", "expected_ms"), [(0.0, 0.0), (0.025, 25.0), (0.07, -30.0)])
def test_probe_measures_the_counter_refresh_phase(phase_s: float, expected_ms: float) -> None:
    s = probe(counter_cost_s=0.003, counter_phase_s=phase_s)
    assert s["power_period_ms"] == pytest.approx(100.0, abs=3.0)
    assert s["counter_period_ms"] == pytest.approx(100.0, abs=3.0)
    assert s["counter_changes"] >= 15
    assert s["offset_ms"] == pytest.approx(expected_ms, abs=5.0)
    assert s["same_tick"] is (phase_s == 0.0)
    assert s["counter_wall_ms"][0] >= 3.0 and s["counter_read_spins"] is False


def test_probe_tells_a_counter_read_that_spins_from_one_that_waits() -> None:
    s = probe(counter_cpu_s=0.003)
    assert s["counter_cpu_ms"][0] >= 2.5 and s["counter_read_spins"] is True
