"""AMD Instinct through amdsmi, against a fake built from the real package (no AMD GPU here).

The real ``amdsmi`` package is installed (dev extra) but cannot load without ROCm's
``libamd_smi.so``: the tests check that this is a quiet, normal state, and that every function and
exception the fake offers exists in the real package's source with the same parameters.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.cli.doctor import diagnose, format_diagnosis
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError, DeviceLost, PermissionDenied, SamplerError
from greentrack.engine.channelstate import Timeline
from greentrack.samplers import discover
from greentrack.samplers._amdsmi import AmdGpu, import_amdsmi, open_gpus
from greentrack.store import StoreReader, store_paths
from tests.fakes.fake_amdsmi import FakeAmdGpu, FakeAmdSmi
from tests.fakes.fake_pynvml import FakeNvml, PowerTrace, VirtualClock
from tests.helpers import FAST

SERIALS = ["0x2A9C5E1B7D01A3C4", "0x2A9C5E1B7D01A3C5", "0x2A9C5E1B7D01A3C6"]


def mi300(i: int = 0, **kw: Any) -> FakeAmdGpu:
    base: dict[str, Any] = dict(uuid=f"8cff74b5-0000-1000-80f1-00000000000{i}",
                                hip_uuid=f"GPU-2a9c5e1b7d01a3c{4 + i}", serial=SERIALS[i % 3],
                                bdf=f"0000:{0x0c + i:02x}:00.0", hip_id=i)
    base.update(kw)
    return FakeAmdGpu(**base)


def replay(gpu: FakeAmdGpu, seconds: float, fast: float = 0.05, slow_every: int = 4,
           clock: VirtualClock | None = None) -> tuple[AmdGpu, Timeline, FakeAmdSmi]:
    clock = clock or VirtualClock()
    fake = FakeAmdSmi([gpu], clock=clock)
    chans, notes = open_gpus(None, env={}, amdsmi=fake.module())
    assert len(chans) == 1, notes
    ch = chans[0]
    ch._clock = clock
    tl = clock.drive(ch, seconds, fast, slow_every)
    return ch, tl, fake


def counter_j(fake: FakeAmdSmi, gpu: FakeAmdGpu, a: float, b: float) -> float:
    return (fake.ticks(gpu, b)[0] - fake.ticks(gpu, a)[0]) * gpu.resolution_uj / 1e6


# -- the real package -----------------------------------------------------------------------

def _real_source(name: str) -> ast.Module:
    spec = importlib.util.find_spec("amdsmi")
    assert spec is not None and spec.submodule_search_locations, "amdsmi (dev extra) not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / name
    return ast.parse(path.read_text())


def test_the_fake_has_the_real_packages_names_and_parameters() -> None:
    real = {n.name: [a.arg for a in n.args.args] for n in _real_source("amdsmi_interface.py").body
            if isinstance(n, ast.FunctionDef)}
    fake = FakeAmdSmi([mi300()]).module()
    offered = [n for n in dir(fake) if n.startswith("amdsmi_") and n != "amdsmi_wrapper"]
    assert len(offered) >= 14
    for name in offered:
        fn = getattr(fake, name)
        assert name in real, f"{name} is not in the real amdsmi"
        assert list(fn.__code__.co_varnames[:fn.__code__.co_argcount]) == real[name], name
    classes = {n.name for n in _real_source("amdsmi_exception.py").body if isinstance(n, ast.ClassDef)}
    assert {"AmdSmiException", "AmdSmiLibraryException", "AmdSmiRetryException",
            "AmdSmiTimeoutException", "AmdSmiParameterException"} <= classes
    wrapper = _real_source("amdsmi_wrapper.py")
    consts = {t.id: n.value.value for n in wrapper.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    from tests.fakes.fake_amdsmi import amdsmi_wrapper
    for name, value in vars(amdsmi_wrapper).items():
        if name.startswith("AMDSMI_"):
            assert consts[name] == value, name
    from greentrack.samplers import _amdsmi
    for name in ("NOT_SUPPORTED", "NO_PERM", "NOT_FOUND", "DRIVER_NOT_LOADED", "AMDGPU_RESTART_ERR"):
        assert consts[f"AMDSMI_STATUS_{name}"] == getattr(_amdsmi, f"STATUS_{name}")


def test_the_real_package_without_rocm_is_a_quiet_normal_state(capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "amdsmi" or m.startswith("amdsmi.")]:
        monkeypatch.delitem(sys.modules, name)
    module, why = import_amdsmi()
    assert module is None and "libamd_smi.so" in why
    chans, notes = open_gpus(None, env={})
    assert chans == [] and notes[0].level == "info" and "no AMD GPU measured" in notes[0].message
    assert capsys.readouterr().out == ""  # the package's print to stdout does not reach the user


# -- measurement ----------------------------------------------------------------------------

def test_identity_method_and_counter() -> None:
    trace = PowerTrace([(1.0, 150.0), (2.0, 700.0), (1.0, 300.0)], idle_w=140.0, t0=0.5)
    g = mi300(trace=trace)
    ch, tl, fake = replay(g, 5.0)
    info = ch.info
    assert (info.kind, info.device, info.name, info.method, info.measured) == \
        ("gpu", "gpu0", "AMD Instinct MI300X", "amdsmi-energy-counter", True)
    assert info.details["uuid"] == g.uuid and info.details["serial"] == g.serial
    assert info.details["counter_resolution_uj"] == pytest.approx(15.259)
    assert info.details["power_field"] == "current_socket_power" and info.details["power_cap_w"] == 750
    assert tl.last == pytest.approx(counter_j(fake, g, tl.t[0], tl.t[-1]), rel=1e-9)
    assert tl.last == pytest.approx(trace.energy(tl.t[-1]) - trace.energy(tl.t[0]), rel=0.001)
    # windows follow the power shape between counter reads
    assert tl.at(2.8) - tl.at(1.8) == pytest.approx(700.0, rel=0.05)


def test_a_32_bit_wrap_is_counted() -> None:
    # 2 s at 700 W = 91.7 M ticks: starting 50 M ticks short of 2^32, the count wraps once.
    trace = PowerTrace([], idle_w=700.0)
    e0 = int(trace.energy(0.0) * 1e6 / 15.259)
    g = mi300(trace=trace, counter_bits=32, counter_base_ticks=((1 << 32) - 50_000_000 - e0) % (1 << 32))
    ch, tl, fake = replay(g, 2.0)
    assert ch.wraps == 1
    assert tl.last == pytest.approx(700.0 * (tl.t[-1] - tl.t[0]), rel=0.01)


def test_a_counter_reset_is_estimated_from_power_and_flagged() -> None:
    g = mi300(trace=PowerTrace([], idle_w=400.0), reset_at=1.02)
    with pytest.raises(SamplerError, match="went backwards") as e:
        replay(g, 2.0)
    pts = e.value.points  # type: ignore[attr-defined]
    assert pts[-1][1] - pts[0][1] == pytest.approx(400.0 * (pts[-1][0] - pts[0][0]), rel=0.02)


def test_without_a_counter_power_is_integrated_and_labelled() -> None:
    trace = PowerTrace([(1.0, 500.0), (1.0, 200.0)], idle_w=100.0, t0=0.0)
    ch, tl, _ = replay(mi300(trace=trace, has_counter=False), 3.0)
    assert ch.info.method == "amdsmi-power-integration" and "medium" in ch.info.uncertainty
    assert tl.last == pytest.approx(trace.energy(tl.t[-1]) - trace.energy(tl.t[0]), rel=0.05)


def test_mi200_style_average_power_is_named_as_such() -> None:
    ch, _, _ = replay(mi300(power_style="average"), 1.0)
    assert ch.info.details["power_field"] == "average_socket_power"
    assert "average_socket_power" in ch.info.source


def test_faults_translate_at_the_edge() -> None:
    with pytest.raises(DeviceLost, match="AMDSMI_STATUS_NOT_FOUND"):
        replay(mi300(lost_at=1.0), 2.0)
    clock = VirtualClock()
    g = mi300()
    fake = FakeAmdSmi([g], clock=clock)
    (ch,), _ = open_gpus(None, env={}, amdsmi=fake.module())
    g.fail_reads = 1
    with pytest.raises(SamplerError, match="AMDSMI_STATUS_BUSY") as e:
        ch.poll(0.0, slow=True)
    assert not isinstance(e.value, DeviceLost)
    assert ch.poll(0.05, slow=True)  # the next read works: a gap, not a loss


def test_a_refused_read_is_a_note_with_the_way_out_not_a_zero_watt_gpu() -> None:
    chans, notes = open_gpus(None, env={}, amdsmi=FakeAmdSmi([mi300(no_perm=True)]).module())
    assert chans == []
    assert "Permission Denied" in notes[0].message and "/dev/kfd" in notes[0].hint
    with pytest.raises(PermissionDenied):
        g = mi300()
        fake = FakeAmdSmi([g])
        (ch,), _ = open_gpus(None, env={}, amdsmi=fake.module())
        g.no_perm = True
        ch.poll(0.0, slow=True)


def test_no_driver_is_a_normal_state_unless_a_gpu_is_named() -> None:
    fake = FakeAmdSmi([mi300()], init_error=34)  # AMDSMI_STATUS_DRIVER_NOT_LOADED
    chans, notes = open_gpus(None, env={}, amdsmi=fake.module())
    assert chans == [] and "Driver not loaded" in notes[0].message


# -- which GPUs -----------------------------------------------------------------------------

def uuids(env: dict[str, str], gpus: tuple[int | str, ...] | None = None,
          fleet: list[FakeAmdGpu] | None = None) -> list[str]:
    fleet = fleet or [mi300(i) for i in range(3)]
    chans, _ = open_gpus(gpus, env=env, amdsmi=FakeAmdSmi(fleet).module())
    return [c.uuid for c in chans]


U = [mi300(i).uuid for i in range(3)]


@pytest.mark.parametrize("env, expected", [
    ({}, U),
    ({"HIP_VISIBLE_DEVICES": "2,0"}, [U[2], U[0]]),
    ({"CUDA_VISIBLE_DEVICES": "1"}, [U[1]]),                       # HIP reads it too
    ({"HIP_VISIBLE_DEVICES": "1", "CUDA_VISIBLE_DEVICES": "0"}, [U[1]]),  # HIP's own wins
    ({"ROCR_VISIBLE_DEVICES": "GPU-2a9c5e1b7d01a3c6,0"}, [U[2], U[0]]),  # UUIDs at ROCr level
    ({"ROCR_VISIBLE_DEVICES": "1,2", "HIP_VISIBLE_DEVICES": "1"}, [U[2]]),  # HIP indexes ROCr's list
    ({"HIP_VISIBLE_DEVICES": "1,bogus,2"}, [U[1]]),                # stops at the first invalid
    ({"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "3"}, [U[2]]),
])
def test_visible_devices(env: dict[str, str], expected: list[str]) -> None:
    assert uuids(env) == expected


def test_hip_order_not_amdsmi_order() -> None:
    fleet = [mi300(0, hip_id=2), mi300(1, hip_id=0), mi300(2, hip_id=1)]
    assert uuids({"HIP_VISIBLE_DEVICES": "0"}, fleet=fleet) == [U[1]]
    fleet = [mi300(i, hip_id=None) for i in range(3)]  # no enumeration info: AMD SMI's order
    assert uuids({"HIP_VISIBLE_DEVICES": "0"}, fleet=fleet) == [U[0]]


def test_named_gpus_and_unknown_ones() -> None:
    assert uuids({}, gpus=(1,)) == [U[1]]
    assert uuids({}, gpus=(U[2],)) == [U[2]]
    with pytest.raises(ConfigError, match="gpus=5"):
        uuids({}, gpus=(5,))


def cpx(n: int = 8, serial: str = SERIALS[0]) -> list[FakeAmdGpu]:
    return [mi300(0, uuid=f"part-{k}", hip_uuid=f"GPU-part{k}", serial=serial, hip_id=k,
                  partition_id=k, compute_partition="CPX") for k in range(n)]


def test_partitions_are_measured_as_the_whole_gpu_once() -> None:
    fleet = cpx()
    fake = FakeAmdSmi(fleet)
    chans, notes = open_gpus(None, env={"HIP_VISIBLE_DEVICES": "3,5"}, amdsmi=fake.module())
    assert len(chans) == 1
    ch = chans[0]
    assert ch.info.method == "amdsmi-energy-counter; partition: whole-GPU energy"
    assert ch.info.details["partition"] == "CPX" and ch.info.details["partition_id"] == 3
    assert any("per-partition energy is not measurable" in n.message for n in notes)
    ch.poll(0.0, slow=True)
    assert fleet[0].calls.get("energy", 0) >= 2 and "energy" not in fleet[3].calls


def test_a_partition_whose_gpu_is_not_listed_is_not_measured() -> None:
    fleet = cpx()[1:]  # partition 0 is not there
    chans, notes = open_gpus(None, env={"HIP_VISIBLE_DEVICES": "0"},
                             amdsmi=FakeAmdSmi(fleet).module())
    assert chans == [] and "not measured" in notes[0].message


# -- the factory, the tracker, doctor -------------------------------------------------------

@pytest.fixture
def amd_only(monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> FakeAmdSmi:
    """An AMD machine: NVML's library is not there, the fake amdsmi is."""
    fake = FakeAmdSmi([mi300(trace=PowerTrace([], idle_w=500.0))])
    monkeypatch.setitem(sys.modules, "amdsmi", fake.module())
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], init_error=12).module())  # LibraryNotFound
    return fake


def test_the_factory_falls_back_to_amd_and_prefers_nvidia(amd_only: FakeAmdSmi) -> None:
    found = discover(Config(), env={})
    assert [c.info.method for c in found.channels if c.info.kind == "gpu"] == ["amdsmi-energy-counter"]
    found = discover(Config(gpus=(0,)), env={})  # a named GPU: found on AMD
    assert [c.info.kind for c in found.channels].count("gpu") == 1
    from tests.fakes.fake_pynvml import FakeGpu
    nvidia = FakeNvml([FakeGpu()])
    amd_only.initialized = 0
    found = discover(Config(), env={}, pynvml=nvidia.module())
    assert [c.info.method for c in found.channels if c.info.kind == "gpu"] == ["nvml-energy-counter"]
    assert amd_only.initialized == 0  # not even opened


def test_a_tracked_run_on_an_amd_gpu(amd_only: FakeAmdSmi, tmp_path: Path) -> None:
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        with t.step(samples=4):
            time.sleep(0.4)
    s = greentrack.summarize(tmp_path / "run")
    (gpu,) = [d for d in s["sources"] if d["kind"] == "gpu"]
    assert gpu["method"] == "amdsmi-energy-counter" and gpu["name"] == "AMD Instinct MI300X"
    (step,) = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    # the fake draws 500 W: the step gets what the GPU drew while it ran
    assert step["gpu_j"] == pytest.approx(500.0 * step["duration_s"], rel=0.05)
    assert gpu["energy_j"] >= step["gpu_j"]


def test_doctor_reports_amd(amd_only: FakeAmdSmi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "0")
    d = diagnose(Config())
    (gpu,) = [x for x in d["devices"] if x["kind"] == "gpu"]
    assert gpu["method"] == "amdsmi-energy-counter" and gpu["details"]["serial"] == SERIALS[0]
    assert d["hip_visible_devices"] == "0" and d["amdsmi"] == "25.5.1"
    text = format_diagnosis(d)
    assert "amdsmi-energy-counter" in text and "HIP_VISIBLE_DEVICES=0" in text
