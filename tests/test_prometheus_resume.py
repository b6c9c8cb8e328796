"""A run resumed in a second process: its counters continue from the recorded totals, so a real
Prometheus scraping both segments gives the run's total with ``max_over_time`` (the fleet table)
and ``increase`` over the whole run, not the last segment's."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from greentrack.run import Run
from tests.conftest import python_env
from tests.servers import Prometheus, free_port, prometheus  # noqa: F401

pytestmark = [pytest.mark.servers, pytest.mark.slow]

INTENSITY = 56.0
SEGMENT = """
import sys, time
from pathlib import Path
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace
sys.modules["pynvml"] = FakeNvml([FakeGpu(trace=PowerTrace([], idle_w=300.0))]).module()
import greentrack
run_dir, port, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
begin, release = Path(sys.argv[4] + ".begin"), Path(sys.argv[4])
tracker = greentrack.Tracker(run_dir, prometheus_port=port, job="resume-test", run_id="resumed",
                             carbon_intensity_g_per_kwh=%r, interval_s=0.02,
                             counter_interval_s=0.1, flush_interval_s=0.1)
tracker.start()
deadline = time.monotonic() + 60
while not begin.exists() and time.monotonic() < deadline:  # until Prometheus scrapes this process
    time.sleep(0.05)
for _ in range(steps):
    with tracker.step("train", flops=1e9):
        time.sleep(0.1)
deadline = time.monotonic() + 60
while not release.exists() and time.monotonic() < deadline:  # until Prometheus has the steps
    time.sleep(0.05)
tracker.stop()
""" % INTENSITY


def segment(tmp_path: Path, run_dir: Path, port: int, steps: int, prom: Prometheus,
            expect_steps: int, name: str) -> tuple[float, float]:
    """Run one segment in its own process; returns (start, end) Unix times."""
    script = tmp_path / "segment.py"
    script.write_text(SEGMENT)
    release = tmp_path / f"release-{name}"
    env = python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "no-powercap"))
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), str(port), str(steps),
                             str(release)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        prom.wait_scrapes('greentrack_run_start_time_seconds{run="resumed"}', t0, timeout=40)
        Path(f"{release}.begin").touch()
        prom.wait_scrapes(f'greentrack_steps_total{{run="resumed", phase="train"}}', expect_steps,
                          timeout=40)
        time.sleep(2.5)  # a few more scrapes of the finished segment
    finally:
        release.touch()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return t0, time.time()


def test_a_resumed_run_continues_its_counters_in_prometheus(tmp_path: Path,
                                                            prometheus: Prometheus) -> None:
    port = free_port()
    prometheus.add_targets({"greentrack": [f"127.0.0.1:{port}"]})
    run_dir = tmp_path / "run"
    start, end1 = segment(tmp_path, run_dir, port, 30, prometheus, 30, "one")
    with Run.open(run_dir) as run:
        first_j = float(run.energy_j()["total"] or 0.0)
    time.sleep(2.0)  # the target is down between the segments, as a restarted job is
    _, end = segment(tmp_path, run_dir, port, 20, prometheus, 50, "two")
    with Run.open(run_dir) as run:
        assert len(run.segments) == 2 and run.steps_by_phase() == {"train": 50}
        total_j = float(run.energy_j()["total"] or 0.0)
        gpu_s = run.gpu_seconds
        watts = total_j / run.duration_s

    rng = f"{int(end - start) + 5}s"
    sel = 'job="resume-test", run="resumed"'

    def value(expr: str) -> float:
        got = prometheus.query(expr, end)
        assert len(got) == 1, (expr, got)
        return float(got[0]["value"][1])

    # one series per device across both segments (same host, rank and port)
    assert len(prometheus.query(f"greentrack_energy_joules_total{{{sel}}}[{rng}]", end)) == 3
    # the fleet table's figure: the largest value each counter reached
    assert value(f'max_over_time(greentrack_steps_total{{{sel}, phase="train"}}[{rng}])') == 50
    assert value(f"max_over_time(greentrack_step_energy_joules_count{{{sel}}}[{rng}])") == 50
    assert value(f"max_over_time(greentrack_flops_total{{{sel}}}[{rng}])") == 50 * 1e9
    fleet = value(f"sum by (job, run) (max by (job, run, host, rank, kind, device, source) "
                  f"(max_over_time(greentrack_energy_joules_total{{{sel}}}[{rng}])))")
    # what the stores recorded, less at most the energy after the last scrape (1 s scrapes)
    assert first_j < total_j - 3 * watts, "the first segment must be large enough to tell"
    assert total_j - 3 * watts <= fleet <= total_j + 1e-6, (fleet, total_j, first_j)
    gpu = value(f"max_over_time(greentrack_gpu_seconds_total{{{sel}}}[{rng}])")
    assert gpu_s - 3 <= gpu <= gpu_s + 0.5, (gpu, gpu_s)
    grams = value(f"max_over_time(greentrack_emissions_grams_total{{{sel}}}[{rng}])")
    assert grams == pytest.approx(fleet * 1.56 * INTENSITY / 3.6e6, rel=0.02)
    # increase() over the whole run: the steps of both segments since Prometheus first saw the
    # series (the steps before its first scrape are not Prometheus' to know), within extrapolation
    points = prometheus.query(f'greentrack_steps_total{{{sel}, phase="train"}}[{rng}]', end)
    first = float(points[0]["values"][0][1])
    assert first < 30
    inc = value(f'increase(greentrack_steps_total{{{sel}, phase="train"}}[{rng}])')
    assert 50 - first - 0.5 <= inc <= 50 + 3, (inc, first)
    # and no counter reset at the resume (the second segment started where the first ended)
    assert value(f'resets(greentrack_steps_total{{{sel}, phase="train"}}[{rng}])') == 0
    assert value(f"sum(resets(greentrack_energy_joules_total{{{sel}}}[{rng}]))") == 0
