"""RAPL/powercap backend against a real-layout tree whose counters wrap, fail and deny reads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greentrack.common.config import Config
from greentrack.common.errors import DeviceLost, PermissionDenied
from greentrack.samplers import _rapl, discover
from tests.fakes.powercap import LiveCounters, PowercapTree, deny_caps_prefix
from tests.helpers import python_env


def test_package_and_dram_zones_only(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path, packages=2, dram=True, core=True, psys=True)
    zones, notes = _rapl.open_zones(tree.env)
    assert [(z.info.kind, z.info.device) for z in zones] == [
        ("cpu", "package-0"), ("dram", "dram-0"), ("cpu", "package-1"), ("dram", "dram-1")]
    assert notes == []
    assert all(z.info.measured and z.info.method == "rapl-powercap" for z in zones)


def test_wraparound_is_counted(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path, range_uj=1_000_000_000)  # a 1000 J counter
    tree.set("intel-rapl:0", 900_000_000)
    zone = _rapl.open_zones(tree.env)[0][0]
    assert zone.poll(0.0, False) == [(0.0, 0.0)]
    tree.advance("intel-rapl:0", 300.0)  # 900 J -> wraps to 200 J
    assert zone.poll(0.1, False) == [(0.1, pytest.approx(300.0))]
    tree.advance("intel-rapl:0", 950.0)
    assert zone.poll(0.2, False) == [(0.2, pytest.approx(1250.0))]
    assert zone.wraps == 2


@pytest.mark.slow
def test_live_counters_with_many_wraps(tmp_path: Path) -> None:
    """400 W on a 100 J counter wraps every 0.25 s; 2 s of polling at 50 ms misses none."""
    tree = PowercapTree(tmp_path, range_uj=100_000_000)
    with LiveCounters(tree, {"intel-rapl:0": 400.0, "intel-rapl:0:1": 5.0}):
        zones, _ = _rapl.open_zones(tree.env)
        t0 = time.monotonic()
        for z in zones:
            z.poll(t0, False)
        while time.monotonic() - t0 < 2.0:
            time.sleep(0.05)
            t = time.monotonic()
            results = [z.poll(t, False)[-1][1] for z in zones]
    elapsed = t - t0
    assert zones[0].wraps >= 6
    assert results[0] == pytest.approx(400.0 * elapsed, rel=0.02)
    assert results[1] == pytest.approx(5.0 * elapsed, rel=0.02)


def test_stall_longer_than_a_wrap_is_flagged(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path, range_uj=1_000_000)
    zone = _rapl.open_zones(tree.env)[0][0]
    zone.poll(0.0, False)
    with pytest.raises(Exception, match="full wrap may have been missed") as e:
        zone.poll(60.0, False)
    assert e.value.points  # type: ignore[attr-defined]


def test_zone_disappearing_is_device_lost(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path)
    zone = _rapl.open_zones(tree.env)[0][0]
    zone.poll(0.0, False)
    tree.remove("intel-rapl:0")
    # sysfs answers ENODEV once the zone is gone; a regular file keeps its data while open, so
    # emulate the kernel by closing our descriptor underneath (EBADF), as hot-unplug does.
    import os
    os.close(zone._fd)
    with pytest.raises(DeviceLost):
        zone.poll(0.1, False)


def test_missing_tree_falls_back_to_labelled_estimates(tmp_path: Path) -> None:
    found = discover(Config(), env={"GREENTRACK_POWERCAP_ROOT": str(tmp_path / "none")})
    kinds = {(c.info.kind, c.info.measured) for c in found.channels}
    assert ("cpu", False) in kinds and ("dram", False) in kinds
    assert any("ESTIMATED" in n.message for n in found.notes)
    assert any("no powercap tree" in n.message for n in found.notes)


def test_dram_estimate_only_where_no_dram_zone(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path, dram=False)  # AMD Zen: package zones, no DRAM zone
    found = discover(Config(), env=tree.env)
    methods = {c.info.kind: c.info.method for c in found.channels}
    assert methods == {"cpu": "rapl-powercap", "dram": "dram-per-gb-estimate"}


def test_non_zero_local_rank_does_not_measure_the_host(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path)
    found = discover(Config(), env={**tree.env, "LOCAL_RANK": "1"})
    assert not [c for c in found.channels if c.info.host_scope]
    assert any("local rank 0" in n.message for n in found.notes)


def test_process_mode_scales_by_tree_share(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path)
    found = discover(Config(mode="process"), env=tree.env)
    cpu = next(c for c in found.channels if c.info.kind == "cpu")
    assert "process-tree share" in cpu.info.method
    cpu.poll(0.0, True)
    tree.advance("intel-rapl:0", 10.0)
    e = cpu.poll(1.0, True)[-1][1]
    assert 0.0 <= e <= 10.0


PROBE = """
import json, sys
from greentrack.samplers import _rapl
zones, notes = _rapl.open_zones()
print(json.dumps({"zones": [z.info.device for z in zones],
                  "notes": [[n.message, n.hint] for n in notes]}))
"""


def test_permission_denied_is_real_and_explained(tmp_path: Path) -> None:
    """mode 000 on energy_uj, read by a process without CAP_DAC_OVERRIDE (as after CVE-2020-8694)."""
    tree = PowercapTree(tmp_path)
    tree.deny("intel-rapl:0")
    out = subprocess.run([*deny_caps_prefix(), sys.executable, "-c", PROBE], capture_output=True,
                         text=True, env=python_env(**tree.env), timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["zones"] == ["dram-0"]
    message, hint = result["notes"][0]
    assert "permission denied" in message and "CVE-2020-8694" in hint and "chmod" in hint


def test_doctor_explains_denied_rapl(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path)
    tree.deny("intel-rapl:0")
    tree.deny("intel-rapl:0:1")
    out = subprocess.run([*deny_caps_prefix(), sys.executable, "-m", "greentrack", "doctor"],
                         capture_output=True, text=True, env=python_env(**tree.env), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "permission denied" in out.stdout and "CVE-2020-8694" in out.stdout
    assert "ESTIMATED" in out.stdout and "tdp-utilization-estimate" in out.stdout


def test_permission_denial_raises_translated_error(tmp_path: Path) -> None:
    if deny_caps_prefix():
        pytest.skip("running as root: covered by the subprocess tests above")
    tree = PowercapTree(tmp_path)
    tree.deny("intel-rapl:0")
    with pytest.raises(PermissionDenied):
        _rapl.RaplZone(tree.zones["intel-rapl:0"], "cpu", "package-0", "package-0")
