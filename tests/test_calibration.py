"""Power-limit calibration (greentrack.process.calibration) on the fake NVML, whose power and step time
follow the limit (tests/fakes/fake_pynvml.py: ``FakeGpu.work``, ``capped``): the measured curve,
the privilege and constraint checks, and the original limit restored on every way out."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.run import Run
from greentrack.store import StoreReader, store_paths
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, LiveTrace, capped
from tests.helpers import FAST, python_env

#: real power-limit calibrations on the fake GPU: out of `make test-fast`
pytestmark = pytest.mark.slow

ORIGINAL_MW = 700_000
DEMAND_W = 700.0


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> FakeGpu:
    """One fake H100 (limit 700 W, constraints 200-700 W) installed as ``pynvml``."""
    g = FakeGpu(trace=LiveTrace(idle_w=80.0))
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([g]).module())
    return g


def train(tracker: greentrack.Tracker, gpu: FakeGpu, steps: int, base_s: float = 0.05,
          until: Callable[[], bool] | None = None) -> int:
    """Steps of ``base_s`` at 700 W uncapped; stops early once ``until()`` holds."""
    for i in range(steps):
        with tracker.step():
            gpu.work(base_s, DEMAND_W)
        if until is not None and until():
            return i + 1
    return steps


def events(run_dir: Path, prefix: str = "power-limit") -> list[dict[str, object]]:
    with Run.open(run_dir) as run:
        return [e for seg in run.segments for e in seg.events if str(e["kind"]).startswith(prefix)]


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


# -- the fake itself behaves like NVML -----------------------------------------------------------

def test_fake_limit_calls_behave_like_nvml(gpu: FakeGpu) -> None:
    import pynvml
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h) == [200_000, 700_000]
    assert pynvml.nvmlDeviceGetPowerManagementLimit(h) == ORIGINAL_MW  # milliwatts
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceSetPowerManagementLimit(h, 150_000)
    pynvml.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 300_000
    gpu.privileged = False
    with pytest.raises(pynvml.NVMLError_NoPermission):
        pynvml.nvmlDeviceSetPowerManagementLimit(h, 400_000)
    assert gpu.current_limit_mw() == 300_000
    # power and time follow the limit: capped power, slower step, fewer joules
    w, s = capped(1.0, 700.0, 300.0, 100.0)
    assert w == 300.0 and s == pytest.approx(1.0 / (200.0 / 600.0) ** (1 / 3))
    assert capped(1.0, 700.0, 700.0, 100.0) == (700.0, 1.0)
    assert w * s < 700.0


# -- the measured curve --------------------------------------------------------------------------

def test_curve_follows_the_limit_and_ends_at_the_original(gpu: FakeGpu, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Six steps a limit and two of warm-up: the first limit's steps come in the run's first
    # second, while NVML's refresh phase is still being learned and a counter value can be dated
    # a refresh off (docs/methodology.md), moving energy across a point's first or last step
    # (CI saw 18.3 J/step against 21.7 with 4 steps and 1 of warm-up)
    with greentrack.Tracker(run_dir, calibrate_power_limits=[300, 500], calibration_steps=6,
                            calibration_warmup_steps=2, **FAST) as tracker:
        train(tracker, gpu, 60, until=lambda: bool(tracker._calibration is not None
                                                    and tracker._calibration.state == "done"))
        gpu.trace.set(80.0)
    # the probe (the same limit), each limit in turn, then the original: restored last
    assert gpu.limit_sets == [ORIGINAL_MW, 300_000, 500_000, ORIGINAL_MW]
    with Run.open(run_dir) as run:
        (curve,) = run.power_limit_curves()
    assert [p.limit_w for p in curve.points] == [300.0, 500.0, 700.0]
    assert [p.reference for p in curve.points] == [False, False, True]
    assert curve.devices == ("gpu0",)
    for p in curve.points:
        watts, seconds = capped(0.05, DEMAND_W, p.limit_w, gpu.static_w)
        assert p.steps == 6 and p.warmup_steps == 2
        # a loaded host oversleeps: step times only grow, by a few ms
        assert seconds * 0.98 <= p.s_per_step <= seconds * 1.25, (p, seconds)
        assert p.gpu_j_per_step is not None
        assert p.gpu_j_per_step == pytest.approx(watts * p.s_per_step, rel=0.15), p
        assert p.j_per_step >= p.gpu_j_per_step  # the host's estimate comes on top
    j = {p.limit_w: p.gpu_j_per_step for p in curve.points}
    s = {p.limit_w: p.s_per_step for p in curve.points}
    assert j[300.0] < j[500.0] < j[700.0] and s[300.0] > s[500.0] > s[700.0]
    kinds = [e["kind"] for e in events(run_dir)]
    assert kinds.count("power-limit-set") == 3 and "power-limit-restore-failed" not in kinds


def test_no_privilege_is_one_line_and_nothing_changes(gpu: FakeGpu, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    gpu.privileged = False
    with caplog.at_level(logging.WARNING, logger="greentrack"):
        with greentrack.Tracker(tmp_path / "run", calibrate_power_limits=[300], **FAST) as t:
            assert t.running
            train(t, gpu, 10)
    lines = [r.getMessage() for r in caplog.records if "calibrate_power_limits" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "NoPermission" in lines[0] and "root" in lines[0] and "nothing calibrated" in lines[0]
    assert gpu.limit_sets == [] and gpu.current_limit_mw() == ORIGINAL_MW
    with Run.open(tmp_path / "run") as run:
        assert run.power_limit_curves() == []
    assert [e["level"] for e in events(tmp_path / "run")] == ["warning"]


def test_no_gpu_or_no_limit_support_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                 no_host_env: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    g = FakeGpu(trace=LiveTrace(idle_w=80.0), limit_supported=False)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([g]).module())
    with caplog.at_level(logging.WARNING, logger="greentrack"):
        with greentrack.Tracker(tmp_path / "a", calibrate_power_limits=[300], **FAST):
            pass
    assert any("cannot be read or set" in r.getMessage() and "Not Supported" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([]).module())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="greentrack"):
        with greentrack.Tracker(tmp_path / "b", calibrate_power_limits=[300], **FAST) as t:
            assert t.running
    assert any("no NVIDIA GPU" in r.getMessage() for r in caplog.records)


def test_limits_outside_the_constraints_are_refused_up_front(gpu: FakeGpu, tmp_path: Path) -> None:
    tracker = greentrack.Tracker(tmp_path / "run", calibrate_power_limits=[300, 150, 800], **FAST)
    with pytest.raises(ConfigError) as err:
        tracker.start()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("calibrate_power_limits='300,150,800'")
    assert "200 to 700 W" in msg and "150, 800 W out of range" in msg
    assert gpu.limit_sets == [] and not tracker.running
    assert not (tmp_path / "run").exists()  # a refused start leaves no run behind


@pytest.mark.parametrize("value", ["abc", "", "300,,400", [], [0], [True], "1e9", "nan",
                                   list(range(200, 217)), {"w": 300}])
def test_bad_settings_are_one_line_errors(value: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Config(run_dir=tmp_path, calibrate_power_limits=value)
    assert str(err.value).startswith("calibrate_power_limits=") and "\n" not in str(err.value)
    assert "watts" in str(err.value)


def test_settings_from_text_and_environment(tmp_path: Path) -> None:
    c = Config.from_env({"GREENTRACK_CALIBRATE_POWER_LIMITS": "250, 300,250",
                         "GREENTRACK_CALIBRATION_STEPS": "8",
                         "GREENTRACK_CALIBRATION_WARMUP_STEPS": "0"}, run_dir=tmp_path)
    assert c.calibrate_power_limits == (250.0, 300.0)  # repeats dropped, order kept
    assert (c.calibration_steps, c.calibration_warmup_steps) == (8, 0)
    assert c.as_dict()["calibrate_power_limits"] == [250.0, 300.0]
    for name, value in (("calibration_steps", 0), ("calibration_warmup_steps", -1),
                        ("calibration_steps", 2.5), ("calibration_steps", True)):
        with pytest.raises(ConfigError, match=f"^{name}="):
            Config(run_dir=tmp_path, **{name: value})


# -- the original limit is restored on every way out ---------------------------------------------

def changed(gpu: FakeGpu) -> Callable[[], bool]:
    return lambda: gpu.current_limit_mw() != ORIGINAL_MW


def test_restored_by_a_normal_stop_mid_calibration(gpu: FakeGpu, tmp_path: Path) -> None:
    tracker = greentrack.Tracker(tmp_path / "run", calibrate_power_limits=[300, 500],
                                 calibration_steps=1000, **FAST).start()
    train(tracker, gpu, 200, until=changed(gpu))
    assert gpu.current_limit_mw() == 300_000  # calibrating
    tracker.stop()
    assert gpu.current_limit_mw() == ORIGINAL_MW
    assert any("ended by the run's stop" in str(e["message"]) for e in events(tmp_path / "run"))


def test_restored_when_no_thread_can_be_started(gpu: FakeGpu, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A pids limit (or interpreter shutdown) refuses the restore's thread: the restore runs on
    the stopping thread instead, and stop() still closes the store (it raised before)."""
    import threading
    tracker = greentrack.Tracker(tmp_path / "run", calibrate_power_limits=[300],
                                 calibration_steps=1000, **FAST).start()
    train(tracker, gpu, 200, until=changed(gpu))
    assert gpu.current_limit_mw() == 300_000
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "greentrack-power-limit":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    tracker.stop()
    assert gpu.current_limit_mw() == ORIGINAL_MW
    assert tracker.status == "completed"
    assert StoreReader(store_paths(tmp_path / "run")[0]).meta["status"] == "completed"


def test_restored_after_an_exception_in_the_training_loop(gpu: FakeGpu, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with greentrack.Tracker(tmp_path / "run", calibrate_power_limits=[300],
                                calibration_steps=1000, **FAST) as tracker:
            train(tracker, gpu, 200, until=changed(gpu))
            assert gpu.current_limit_mw() == 300_000
            raise RuntimeError("boom")
    assert gpu.current_limit_mw() == ORIGINAL_MW
    assert tracker.status == "failed"


def test_restored_when_a_gpu_read_fails(gpu: FakeGpu, tmp_path: Path) -> None:
    """A sampler failure (the GPU's reads fail) ends the calibration while training goes on."""
    tracker = greentrack.Tracker(tmp_path / "run", calibrate_power_limits=[300],
                                 calibration_steps=1000, **FAST).start()
    train(tracker, gpu, 200, until=changed(gpu))
    assert gpu.current_limit_mw() == 300_000
    gpu.fail_reads = 3  # the next reads (and a first restore, maybe) fail
    restored = wait_for(lambda: gpu.current_limit_mw() == ORIGINAL_MW)
    train(tracker, gpu, 3)  # training goes on, untouched
    tracker.stop()
    assert restored, gpu.limit_sets
    assert gpu.limit_sets[-1] == ORIGINAL_MW
    msgs = [str(e["message"]) for e in events(tmp_path / "run")]
    assert any("calibration stopped (a GPU read failed)" in m for m in msgs), msgs


def test_stop_does_not_wait_on_a_hung_driver(gpu: FakeGpu, tmp_path: Path) -> None:
    """A hung NVML holds neither the restore nor the stop past their timeouts; once the driver
    answers again, the restore goes through."""
    import threading
    tracker = greentrack.Tracker(tmp_path / "run", calibrate_power_limits=[300],
                                 calibration_steps=1000, **FAST).start()
    train(tracker, gpu, 200, until=changed(gpu))
    gpu.hang = threading.Event()
    t0 = time.monotonic()
    tracker.stop()
    took = time.monotonic() - t0
    assert took < 15.0  # sampler and restore timeouts (2 s each) plus a loaded host's slack
    gpu.hang.set()
    assert wait_for(lambda: gpu.current_limit_mw() == ORIGINAL_MW)


def _child(mode: str, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    limit_file = tmp_path / "limit_mw"
    limit_file.write_text(str(ORIGINAL_MW))
    env = python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "no-powercap"))
    proc = subprocess.Popen([sys.executable, "-m", "tests.calibration_child", mode,
                             str(limit_file), str(tmp_path / "run")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    return proc, limit_file


def test_restored_on_sigterm_to_a_real_process(tmp_path: Path) -> None:
    proc, limit_file = _child("sigterm", tmp_path)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "changed", proc.communicate(timeout=30)
    assert int(limit_file.read_text()) == 300_000
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM  # still dies of SIGTERM
    assert int(limit_file.read_text()) == ORIGINAL_MW
    with Run.open(tmp_path / "run") as run:
        assert run.status == "stopped"


def test_restored_at_interpreter_exit_without_stop(tmp_path: Path) -> None:
    proc, limit_file = _child("exit", tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert int(limit_file.read_text()) == ORIGINAL_MW
    assert "power-limit-set" in [e["kind"] for e in events(tmp_path / "run")]


# -- greentrack run ------------------------------------------------------------------------------

def _fake_for_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[FakeGpu, Path]:
    limit_file = tmp_path / "limit_mw"
    limit_file.write_text(str(ORIGINAL_MW))
    g = FakeGpu(trace=LiveTrace(idle_w=80.0), limit_file=str(limit_file))
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([g]).module())
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    for name, value in FAST.items():
        monkeypatch.setenv(f"GREENTRACK_{name.upper()}", str(value))
    return g, limit_file


def test_greentrack_run_calibrates_in_the_command(monkeypatch: pytest.MonkeyPatch,
                                                  no_host_env: Path, tmp_path: Path) -> None:
    """The settings reach the command's Tracker (which sees the steps); `greentrack run` itself
    only checks the limits and never sets one."""
    from tests.helpers import run_cli
    g, limit_file = _fake_for_run(monkeypatch, tmp_path)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["run", "--run-dir", str(run_dir), "--quiet",
                            "--calibrate-power-limits", "300", "--calibration-steps", "3",
                            "--calibration-warmup-steps", "1", "--", sys.executable, "-m",
                            "tests.calibration_child", "run", str(limit_file), "-"])
    assert code == 0, err
    assert int(limit_file.read_text()) == ORIGINAL_MW
    assert g.limit_sets == []  # this process never set a limit: the command's tracker did
    with Run.open(run_dir) as run:
        (curve,) = run.power_limit_curves()
    assert [(p.limit_w, p.steps, p.warmup_steps) for p in curve.points] == [(300.0, 3, 1),
                                                                             (700.0, 3, 1)]
    assert "no power-limit curve" not in err


def test_greentrack_run_refuses_bad_limits_before_the_command(monkeypatch: pytest.MonkeyPatch,
                                                              no_host_env: Path,
                                                              tmp_path: Path) -> None:
    from tests.helpers import run_cli
    _fake_for_run(monkeypatch, tmp_path)
    marker = tmp_path / "ran"
    cmd = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    for limits, says in (("150", "accepts limits from 200 to 700 W"), ("abc", "watts")):
        code, _, err = run_cli(["run", "--run-dir", str(tmp_path / limits), "--quiet",
                                "--calibrate-power-limits", limits, *cmd])
        assert code == 2, err
        assert err.startswith("greentrack: calibrate_power_limits=") and says in err, err
        assert err.count("\n") == 1 and not marker.exists()
        assert not (tmp_path / limits).exists()  # nothing created


def test_a_forked_worker_never_touches_the_limit(monkeypatch: pytest.MonkeyPatch,
                                                 no_host_env: Path, tmp_path: Path) -> None:
    """A DataLoader-style fork inherits the tracker; its stop() and its exit leave the limit (the
    driver's state, shared by both) to the parent."""
    import os
    limit_file = tmp_path / "limit_mw"
    limit_file.write_text(str(ORIGINAL_MW))
    g = FakeGpu(trace=LiveTrace(idle_w=80.0), limit_file=str(limit_file))
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([g]).module())
    tracker = greentrack.Tracker(tmp_path / "run", calibrate_power_limits=[300],
                                 calibration_steps=1000, **FAST).start()
    train(tracker, g, 200, until=changed(g))
    pid = os.fork()
    if pid == 0:  # the worker: stop() is a no-op here, and the exit runs no handler
        code = 4
        try:
            tracker.stop()
            code = 0 if int(limit_file.read_text()) == 300_000 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(limit_file.read_text()) == 300_000  # untouched by the worker
    tracker.stop()
    assert int(limit_file.read_text()) == ORIGINAL_MW


def test_privilege_lost_after_the_probe_changes_nothing(gpu: FakeGpu, tmp_path: Path) -> None:
    """If the probe passed but the first real set is refused, nothing changed: the calibration
    stops, with no restore to fail and no limit left behind."""
    tracker = greentrack.Tracker(tmp_path / "run", calibrate_power_limits=[300],
                                 calibration_steps=1000, **FAST).start()
    gpu.privileged = False
    train(tracker, gpu, 200, until=lambda: any(
        "calibration stopped" in str(e["message"]) for e in events(tmp_path / "run")))
    tracker.stop()
    assert gpu.limit_sets == [ORIGINAL_MW] and gpu.current_limit_mw() == ORIGINAL_MW
    kinds = [e["kind"] for e in events(tmp_path / "run")]
    assert "power-limit-error" in kinds and "power-limit-restore-failed" not in kinds


def test_a_real_lightning_trainer_calibrates_and_restores(gpu: FakeGpu, tmp_path: Path) -> None:
    """Through GreenTrackCallback's settings: a real Trainer whose steps play the fake GPU's work
    (their time follows the limit); then a run that raises mid-calibration."""
    L = pytest.importorskip("lightning")
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    from greentrack.integrations.lightning import GreenTrackCallback

    class Tiny(L.LightningModule):  # type: ignore[misc]
        def __init__(self, fail: bool = False) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            self.fail = fail

        def training_step(self, batch: object, batch_idx: int) -> object:
            # mid-calibration: once the first limit is in force (the first steps resolve ~0.3 s
            # into the run, once NVML's refresh phase is known), or give up after 250 steps
            if self.fail and (gpu.current_limit_mw() != ORIGINAL_MW or self.global_step >= 250):
                raise RuntimeError("boom")
            # 0.1 s uncapped, ~0.14 s at 300 W: a difference ten times the jitter a loaded host
            # adds to a Lightning step (0.03 s steps: 0.054 s at 300 W against 0.055 s, sd 8 ms)
            gpu.work(0.1, DEMAND_W)
            x, y = batch  # type: ignore[misc]
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> object:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=2)

    class UntilCalibrated(L.Callback):  # type: ignore[misc]
        """Stop once the calibration is done: its first steps resolve once NVML's refresh phase
        is known closely (~0.3 s quiet, longer on a loaded host), so no step count fits all."""

        def __init__(self, cb: GreenTrackCallback) -> None:
            self.cb = cb

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            meter = self.cb.meter
            cal = None if meter is None else meter.tracker._calibration
            if cal is not None and cal.state == "done":
                trainer.should_stop = True

    def fit(run_dir: Path, fail: bool, steps: int) -> None:
        cb = GreenTrackCallback(run_dir, calibrate_power_limits=[300], calibration_steps=steps,
                                calibration_warmup_steps=1, progress_every_s=None, **FAST)
        trainer = L.Trainer(max_steps=300, callbacks=[cb, UntilCalibrated(cb)], logger=False,
                            enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.fit(Tiny(fail), data)

    fit(tmp_path / "ok", False, 4)
    assert gpu.limit_sets == [ORIGINAL_MW, 300_000, ORIGINAL_MW]
    with Run.open(tmp_path / "ok") as run:
        (curve,) = run.power_limit_curves()
    low, ref = curve.points
    assert (low.limit_w, ref.limit_w, ref.reference) == (300.0, 700.0, True)
    assert low.s_per_step > ref.s_per_step  # capped: slower steps
    gpu.limit_sets.clear()
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path / "fail", True, 1000)  # mid-calibration: only the restore brings 700 W back
    assert gpu.limit_sets == [ORIGINAL_MW, 300_000, ORIGINAL_MW]
    assert gpu.current_limit_mw() == ORIGINAL_MW
