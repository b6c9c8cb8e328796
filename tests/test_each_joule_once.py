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
