"""Each joule counted once, whoever measures (issue 21). Each case was seen on 8a2bbe5; real
processes and a real Pushgateway where the case is about them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import greentrack
from tests.conftest import python_env
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.servers import Pushgateway, pushgateway  # noqa: F401 - the fixture
from tests.test_report_fixtures import FAST, clean_env

WATTS = {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}


def _groups(gateway: Pushgateway, run: str) -> list[dict[str, Any]]:
    return [g for g in gateway.groups() if g["labels"].get("run") == run]


def _value(group: dict[str, Any], name: str) -> list[float]:
    family = group.get(name) or {}
    return [float(m["value"]) for m in family.get("metrics", []) if "value" in m]


@pytest.mark.servers
def test_a_pushed_run_says_it_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    pushgateway: Pushgateway) -> None:  # noqa: F811
    """8a2bbe5: minutes after a pushed job finished, Prometheus still showed it drawing 17.4 W
    and the stale-tracker panel called it healthy: nothing marked the end."""
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        with LiveCounters(tree, WATTS):
            t = greentrack.Tracker(tmp_path / "run", pushgateway_url=pushgateway.url,
                                   push_interval_s=0.2, job="ended", **FAST).start()
            time.sleep(0.6)
            (live,) = _groups(pushgateway, t.run_id or "")
            assert _value(live, "greentrack_run_running") == [1.0]
            assert sum(_value(live, "greentrack_power_watts")) > 10
            t.stop()
    (group,) = _groups(pushgateway, t.run_id or "")
    assert _value(group, "greentrack_run_running") == [0.0]
    assert sum(_value(group, "greentrack_power_watts")) == 0.0  # an ended run draws nothing
    assert "greentrack_last_sample_age_seconds" not in group or \
        not _value(group, "greentrack_last_sample_age_seconds")  # no sampler to be stale
    (end,) = _value(group, "greentrack_run_end_time_seconds")
    assert abs(end - time.time()) < 30
    assert greentrack.summarize(tmp_path / "run")["status"] == "completed"


NODE = """
import os, sys, time, greentrack
t = greentrack.Tracker(sys.argv[1], pushgateway_url=sys.argv[2], push_interval_s=0.2,
                       job="two-nodes", rank=0, interval_s=0.02, counter_interval_s=0.1)
t.start()
time.sleep(0.5)
t.stop()
"""


@pytest.mark.servers
def test_two_nodes_of_one_run_push_two_groups(tmp_path: Path,
                                              pushgateway: Pushgateway) -> None:  # noqa: F811
    """8a2bbe5: two nodes of one job (same run id, rank 0 on each) pushing to one Pushgateway:
    the grouping key had no host, and node B's final push replaced node A's."""
    procs = []
    for node in ("node-a", "node-b"):
        tree = PowercapTree(tmp_path / f"{node}-pc")
        env = python_env(GREENTRACK_RUN_ID="job-42", GREENTRACK_HOSTNAME=node,
                         GREENTRACK_BOOT_ID=f"boot-{node}", **tree.env)
        procs.append((subprocess.Popen([sys.executable, "-c", NODE, str(tmp_path / node),
                                        pushgateway.url], env=env), tree))
    for p, _ in procs:
        assert p.wait(timeout=60) == 0
    groups = _groups(pushgateway, "job-42")
    assert sorted(g["labels"]["host"] for g in groups) == ["node-a", "node-b"]
    assert all(_value(g, "greentrack_run_running") == [0.0] for g in groups)


def _gpu(monkeypatch: pytest.MonkeyPatch, watts: float = 300.0) -> None:
    fake = FakeNvml([FakeGpu(trace=PowerTrace([], idle_w=watts))])
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())


def test_two_trackers_of_one_run_in_one_process_count_the_gpu_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> None:
    """8a2bbe5: two trackers on one run directory in one process (a 300 W GPU, 1.3 s): 714 J of
    GPU energy and 2.4 GPU-seconds. Now one counts it while both run; the other takes it over
    when the first stops, so the run has the GPU's energy over their union, once."""
    _gpu(monkeypatch)
    a = greentrack.Tracker(tmp_path / "run", **FAST).start()
    t0 = time.monotonic()
    time.sleep(0.3)
    b = greentrack.Tracker(tmp_path / "run", **FAST).start()
    time.sleep(0.5)
    a.stop()  # b takes the GPU over from here
    time.sleep(0.6)
    b.stop()
    span = time.monotonic() - t0
    s = greentrack.summarize(tmp_path / "run")
    assert s["energy_j"]["gpu"] == pytest.approx(300.0 * span, rel=0.12), (s["energy_j"], span)
    events = [e for e in greentrack.run.Run.open(tmp_path / "run").events("device-owned",
                                                                          "device-taken-over")]
    assert {e["kind"] for e in events} == {"device-owned", "device-taken-over"}


OWNER_PROCESS = """
import sys, time, greentrack
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace
sys.modules["pynvml"] = FakeNvml([FakeGpu(trace=PowerTrace([], idle_w=300.0))]).module()
t = greentrack.Tracker(sys.argv[1], interval_s=0.02, counter_interval_s=0.1, flush_interval_s=0.1)
t.start()
time.sleep(float(sys.argv[2]))
t.stop()
"""


def test_two_processes_without_a_rank_on_one_run_count_the_gpu_once(tmp_path: Path) -> None:
    """8a2bbe5: two processes without RANK on one run directory: 685 J from one 300 W GPU in
    1.4 s."""
    env = python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "x"))
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", OWNER_PROCESS, str(tmp_path / "run"), str(d)],
                              env=env, cwd=Path(__file__).resolve().parents[1]) for d in (1.0, 1.6)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    span = time.monotonic() - t0
    s = greentrack.summarize(tmp_path / "run")
    assert s["stores"] == 2
    assert s["energy_j"]["gpu"] <= 300.0 * span * 1.05, (s["energy_j"], span)  # never twice
    assert s["energy_j"]["gpu"] >= 300.0 * 1.4, (s["energy_j"], span)  # the longer one, whole


def test_two_slurm_tasks_are_two_ranks_and_the_host_is_counted_once(tmp_path: Path) -> None:
    """8a2bbe5: two Slurm tasks on one node (SLURM_PROCID/SLURM_LOCALID set, no RANK): both
    rank 0, the host counted twice."""
    tree = PowercapTree(tmp_path / "pc")
    with LiveCounters(tree, WATTS):
        procs = []
        for task in (0, 1):
            env = python_env(SLURM_JOB_ID="777", SLURM_PROCID=str(task), SLURM_LOCALID=str(task),
                             SLURM_STEP_NUM_TASKS="2", SLURM_STEP_TASKS_PER_NODE="2", **tree.env)
            env.pop("RANK", None)
            procs.append(subprocess.Popen([sys.executable, "-c", "import time, greentrack\n"
                                           "t = greentrack.Tracker('run', interval_s=0.02, "
                                           "counter_interval_s=0.1).start()\ntime.sleep(0.8)\n"
                                           "t.stop()"], env=env, cwd=tmp_path))
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    s = greentrack.summarize(tmp_path / "run")
    assert sorted(src["rank"] for src in s["sources"]) == [0, 0]  # the host, by rank 0 only
    ranks = {seg.rank for seg in greentrack.run.Run.open(tmp_path / "run").segments}
    assert ranks == {0, 1}
    assert s["energy_j"]["cpu"] <= 40.0 * s["duration_s"] * 1.1
