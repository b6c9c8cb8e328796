"""``bash bench/gpu_checks.sh --quick`` is the one command for a GPU host (issue 13). Its logic runs
here on the fake NVML (``--fake``), in the conditions of that host: greentrack not installed (used
from the checkout through the script's path shim), codecarbon and Zeus absent, so that it cannot
rot without a GPU; and without a GPU and without ``--fake`` it must say so and exit 0 at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from gpu_quick import CHECKS, GOALS  # noqa: E402

SCRIPT = REPO / "bench" / "gpu_checks.sh"
RESULTS = {"pass", "fail", "info", "skipped", "error"}

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
    p, wall = _run(["--quick", "--fake", str(out)], _env(tmp_path), timeout=170)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert wall < 120, wall
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
        else:  # every goal of greentrack's has its figure, with or without codecarbon
            assert isinstance(e["figure"], (int, float)), e
        assert f"| {e['name']} |" in md
    # on the fake, what is exact by construction holds
    assert by_name["total_vs_counter"]["result"] == "pass", by_name["total_vs_counter"]
    assert by_name["counter_phase"]["result"] == "pass", by_name["counter_phase"]
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
