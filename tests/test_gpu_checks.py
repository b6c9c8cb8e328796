"""``bash bench/gpu_checks.sh --quick`` is the one command for a GPU host (issue 13). Its logic runs
here on the fake NVML (``--fake``), in the conditions of that host: greentrack not installed (used
from the checkout through the script's path shim), codecarbon and Zeus absent, so that it cannot
rot without a GPU; and without a GPU and without ``--fake`` it must say so and exit 0 at once."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

from gpu_quick import CHECKS, GOALS  # noqa: E402

#: the GPU check script, end to end on the fake (about a minute): out of `make test-fast`
pytestmark = pytest.mark.slow

SCRIPT = REPO / "bench" / "gpu_checks.sh"
RESULTS = {"pass", "fail", "info", "pending", "skipped", "error"}

# Loaded at interpreter start through PYTHONPATH: hides codecarbon and Zeus, and greentrack's
# editable install, as on a GPU host where only torch, lightning, nvidia-ml-py, psutil,
# prometheus_client and pytest are installed.
HIDE = '''
import sys

HIDDEN = ("codecarbon", "zeus")


class _Without:
    # a finder that finds nothing of HIDDEN: `import codecarbon` fails and find_spec gives None,
    # exactly as where it is not installed
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [_Without(f) for f in sys.meta_path
                    if not str(getattr(f, "__module__", "")).startswith("__editable__")]
'''


def _env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE)
    return {**os.environ, "PYTHONPATH": str(site), "PYTHON": sys.executable}


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(args: list[str], env: dict[str, str], timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, text=True,
                       capture_output=True, timeout=timeout)
    return p, time.monotonic() - t0


def test_the_hiding_works(tmp_path: Path) -> None:
    """The conditions of the fake run are real: no codecarbon, greentrack not installed."""
    code = ("import importlib.util as u\n"
            "try:\n    import codecarbon\n    print('codecarbon importable')\n"
            "except ImportError:\n    pass\n"
            "print(u.find_spec('greentrack'))")
    p = subprocess.run([sys.executable, "-c", code], cwd="/", env=_env(tmp_path), text=True,
                       capture_output=True, timeout=60)
    assert "codecarbon importable" not in p.stdout and p.stdout.strip() == "None", p.stdout + p.stderr


@pytest.mark.slow
def test_quick_fake_run_writes_both_summaries(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cpu0 = _children_cpu_s()
    p, wall = _run(["--quick", "--fake", str(out)], _env(tmp_path), timeout=1500)  # hang guard
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # the fake run's cost in CPU (19 CPU-s, 88 s of wall beside the suite; its wall time on a
    # loaded host is the host's): within its own budget of 150 CPU-s, and far under it
    assert _children_cpu_s() - cpu0 < 60.0, (_children_cpu_s() - cpu0, wall)
    s = json.loads((out / "summary.json").read_text())
    md = (out / "summary.md").read_text()
    assert s["mode"] == "quick" and s["fake"] is True and s["complete"] is True
    assert s["greentrack_from"].startswith("path shim"), s["greentrack_from"]
    for key in ("device", "driver", "nvml_version", "greentrack_commit", "wall_s"):
        assert s[key] not in (None, ""), key
    assert "fake" in s["device"]
    by_name = {e["name"]: e for e in s["checks"]}
    assert [e["name"] for e in s["checks"]] == [g.name for g in GOALS]
    for e in s["checks"]:
        assert e["result"] in RESULTS and {"goal", "threshold", "unit", "wall_s"} <= e.keys(), e
        assert e["result"] != "error", e
        if e["name"].endswith(("_codecarbon", "_codecarbon_task", "_zeus")):
            assert e["result"] == "skipped" and "not installed" in e["reason"], e
        elif e["threshold"] == "pending":  # deliberately not measured: the reason says what it needs
            assert e["result"] == "pending" and e["figure"] is None and e["reason"], e
        else:  # every goal of greentrack's has its figure, with or without codecarbon
            assert isinstance(e["figure"], (int, float)), e
        assert f"| {e['name']} |" in md
    # on the fake, what is exact by construction holds
    assert by_name["total_vs_counter"]["result"] == "pass", by_name["total_vs_counter"]
    assert by_name["counter_phase"]["result"] == "pass", by_name["counter_phase"]
    for name in ("limit_check", "share_sum", "share_follows_util", "share_labelled",
                 "util_none_code"):  # constant power, fixed SM utilization: load cannot move them
        assert by_name[name]["result"] == "pass", by_name[name]
    # two real child processes, each with its tracker: heavy 60% SM, light 20% on the fake
    assert abs(by_name["share_heavy"]["figure"] - 75.0) < 2.0, by_name["share_heavy"]
    assert by_name["util_period"]["figure"] == pytest.approx(200.0, abs=5.0)
    assert by_name["util_samples_per_call"]["figure"] == 1  # one entry a process, as NVML documents
    for name in ("calibration_curve", "calibration_privilege_probe"):
        assert "changing the GPU power limit is allowed" in by_name[name]["reason"], by_name[name]
    assert by_name["mig_whole_gpu"]["result"] == "pending"
    assert "pending" in md
    # the summary comes last, after each check's progress line
    assert p.stdout.rstrip().endswith(md.rstrip().splitlines()[-1])
    assert p.stdout.index("== sampler_cpu:") < p.stdout.index("# GPU quick check")
    for check in CHECKS:
        assert (out / f"{check.name}.log").exists()


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path: Path) -> None:
    try:
        import pynvml
        pynvml.nvmlInit()
        pytest.skip("this host has NVML: the no-GPU path is not reachable here")
    except pynvml.NVMLError:
        pass
    out = tmp_path / "out"
    p, wall = _run(["--quick", str(out)], _env(tmp_path), timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert wall < 15, wall
    assert p.stdout.startswith("no NVIDIA GPU"), p.stdout[:300]
    s = json.loads((out / "summary.json").read_text())
    assert s["no_gpu"] and all(e["result"] == "skipped" for e in s["checks"])


def test_a_check_that_hangs_is_stopped_and_the_rest_run(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check is its own process under its own limit: a hang costs that check only, its
    goals say why, and the run goes on to the next."""
    import gpu_quick

    monkeypatch.setattr(gpu_quick, "CHECKS", [gpu_quick.Check("nvml_probe", 6, 6)])
    calls: list[float] = []

    def hanging(check: gpu_quick.Check, out: Path, fake: bool, limit: float) -> gpu_quick.Outcome:
        calls.append(limit)
        cmd = [sys.executable, "-c", "import time; time.sleep(60)"]
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            proc.wait(1.0)  # as if the limit had passed
        except subprocess.TimeoutExpired:
            gpu_quick._stop(proc)
        assert proc.returncode is not None
        return gpu_quick.Outcome({"counter_read_wall": {"figure": 3.1}}, limit, "timed out after 1 s")

    monkeypatch.setattr(gpu_quick, "run_check", hanging)
    entries = gpu_quick.run_all(tmp_path, fake=True, no_gpu=None)
    got = {e["name"]: e for e in entries}
    assert calls == [6]
    assert got["counter_phase"]["result"] == "error" and "timed out" in got["counter_phase"]["reason"]
    assert got["counter_read_wall"]["result"] == "pass"  # reported before the stop: kept


def test_the_readonly_check_never_sets_a_power_limit(tmp_path: Path) -> None:
    """The lent GPU's settings are left as they are: the check reads the limit through greentrack,
    and a set (by the check, or by greentrack code it calls) meets the guard, not the driver."""
    import _common as c
    from _quick_checks import Rows
    from _quick_readonly import SetForbidden, check, guard

    nv, fake = c.fake_nvml_module(1)
    nv.nvmlInit()
    gpu = fake.gpus[0]  # privileged: a real set would succeed on this fake
    dev = type("D", (), {"nv": nv, "handle": gpu, "fake": True})()
    rows = Rows(tmp_path / "rows.json")
    check(dev, rows)
    assert gpu.limit_sets == [] and gpu.calls.get("set_limit", 0) == 0
    assert rows.rows["power_limit"]["figure"] == 700.0
    assert rows.rows["limit_check"]["figure"] == 2.0
    assert rows.rows["calibration_curve"]["pending"]
    with pytest.raises(SetForbidden):  # the guard stays in place for the rest of the process
        nv.nvmlDeviceSetPowerManagementLimit(gpu, 600_000)
    assert gpu.limit_sets == []
    nv2, fake2 = c.fake_nvml_module(1)
    nv2.nvmlInit()
    attempts = guard(nv2)
    with pytest.raises(SetForbidden):
        nv2.nvmlDeviceSetPowerManagementLimit(fake2.gpus[0], 500_000)
    assert attempts and fake2.gpus[0].limit_sets == []


def test_share_analysis_tells_time_weighted_from_mean_utilization(tmp_path: Path) -> None:
    """If a driver lists a process only in periods it used the SMs, the mean of its samples (what
    greentrack takes) overstates a bursty process against the time-weighted share: the check's
    detail shows both, and its goal is the time-weighted one."""
    from _quick_checks import Rows
    from _quick_share import UTIL_APIS, UtilLog, _period_ms, _report_share

    log = UtilLog(None, None)
    api = UTIL_APIS[0]
    # 10 periods of 100 ms: heavy 90% in each, light 60% in 2 of them (absent from the others)
    log.samples[api] = [(1, k * 100_000, 90) for k in range(10)] + [(2, k * 100_000, 60)
                                                                     for k in (3, 7)]
    assert _period_ms(log.samples[api]) == 100.0
    rows = Rows(tmp_path / "rows.json")
    got = {"heavy": {"gpu_j": 600.0, "measured": False, "shared_events": 1,
                     "method": "x process share"},
           "light": {"gpu_j": 400.0, "measured": False, "shared_events": 1,
                     "method": "x process share"}}
    _report_share(log, {"heavy": 1, "light": 2}, got, 1000.0, rows)
    assert rows.rows["share_sum"]["figure"] == pytest.approx(0.0)
    # time-weighted: 900 / (900 + 120) = 88.2%; by means: 90 / 150 = 60% (what 600 J follows)
    assert rows.rows["share_follows_util"]["figure"] == pytest.approx((0.6 - 900 / 1020) * 100)
    assert "60.0%" in rows.rows["share_follows_util"]["detail"]
    assert rows.rows["share_labelled"]["figure"] == 2.0


def test_a_missing_module_skips_that_checks_goals(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without a module a check needs (nvidia-ml-py here; torch, psutil...): that check's
    goals are 'skipped', naming the module, not errors."""
    import gpu_quick

    for k, v in _env(tmp_path).items():
        monkeypatch.setenv(k, v)
    # hide nvidia-ml-py from the check's process, as on a host where it is not installed
    (tmp_path / "site" / "sitecustomize.py").write_text(
        HIDE.replace('("codecarbon", "zeus")', '("codecarbon", "zeus", "pynvml")'))
    monkeypatch.setattr(gpu_quick, "CHECKS", [gpu_quick.Check("nvml_readonly", 30, 30)])
    (tmp_path / "raw").mkdir()
    entries = gpu_quick.run_all(tmp_path, fake=True, no_gpu=None)
    assert [e["name"] for e in entries] == [g.name for g in GOALS if g.check == "nvml_readonly"]
    for e in entries:
        assert e["result"] == "skipped" and e["reason"] == "pynvml is not installed", e


def test_a_failing_read_costs_its_rows_only(tmp_path: Path) -> None:
    """A GPU whose power limit NVML cannot read (NotSupported): those rows say why, and the
    check's other rows are still measured."""
    import _common as c
    from _quick_checks import Rows
    from _quick_readonly import check

    nv, fake = c.fake_nvml_module(1)
    nv.nvmlInit()
    fake.gpus[0].limit_supported = False
    dev = type("D", (), {"nv": nv, "handle": fake.gpus[0], "fake": True})()
    rows = Rows(tmp_path / "rows.json")
    check(dev, rows)
    for name in ("power_limit", "limit_check"):
        assert rows.rows[name]["figure"] is None and "failed" in rows.rows[name]["detail"]
    assert isinstance(rows.rows["instant_read_wall"]["figure"], float)
    assert rows.rows["calibration_curve"]["pending"] and rows.rows["mig_mode"]["figure"] == 0.0


def test_a_child_that_dies_is_named_not_waited_for(tmp_path: Path) -> None:
    """The shared-GPU check's child exiting early (CUDA out of memory, an import error) ends the
    wait at once with its role and status, not after the time limit."""
    from _quick_share import _await

    procs = {"heavy": subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"]),
             "light": subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])}
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="heavy process exited with status 7"):
            _await(procs, {r: tmp_path / f"ready-{r}" for r in procs}, 25.0)
    finally:
        procs["light"].kill()
        procs["light"].wait()
    assert time.monotonic() - t0 < 20
