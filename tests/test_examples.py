"""The examples run as users run them (real processes, CPU), each well under a minute.

``examples/lightning_model.py`` (with DDP) and ``examples/ddp_torchrun.py`` (under torchrun) run in
``test_integrations_distributed.py``, on a powercap tree at known watts.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import greentrack
from tests.helpers import REPO, python_env

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


#: A hang guard, not a speed check: on a host whose cores are taken by others an example's wall
#: time grows with the load. What it costs is bounded in CPU seconds (:func:`cpu_seconds`).
HANG_S = 600


def cpu_seconds(argv: list[str], **kw: Any) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``argv`` to its end; its CPU seconds (and its children's), which a loaded host does not
    inflate as it does the wall time (issue 24: `elapsed < 60` failed beside busy loops)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=HANG_S, **kw)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(args: list[str], tmp_path: Path, **env: str) -> tuple[dict[str, Any], float]:
    # No powercap tree: CPU and DRAM are estimated (cpu_tdp_w skips the TDP table lookup).
    e = python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "no-powercap"), GREENTRACK_CPU_TDP_W="65",
                   **env)
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "GREENTRACK_RUN_ID", "TORCHELASTIC_RUN_ID"):
        e.pop(name, None)
    proc, elapsed = cpu_seconds([sys.executable, *args], cwd=REPO, env=e)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith('{"')]
    return json.loads(line), elapsed


def test_plain_torch_example_with_the_run_dir_from_the_environment(tmp_path: Path) -> None:
    out, elapsed = run(["examples/plain_torch.py", "--steps", "200"], tmp_path,
                       GREENTRACK_RUN_DIR=str(tmp_path / "run"))
    s = greentrack.summarize(tmp_path / "run")
    assert out["steps_by_phase"] == s["steps_by_phase"] == {"train": 200, "validation": 2}
    assert s["status"] == "completed" and elapsed < 60


def test_hf_trainer_example(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out, elapsed = run(["examples/hf_trainer.py", str(tmp_path / "run"), "--steps", "6"], tmp_path)
    s = greentrack.summarize(tmp_path / "run")
    assert out["global_step"] == 6 == s["steps_by_phase"]["train"]
    assert s["steps_by_phase"]["validation"] > 0 and elapsed < 60


@pytest.mark.parametrize("example", ["plain_torch.py", "ddp_torchrun.py"])
def test_an_example_without_a_run_dir_says_so_in_one_line(example: str, tmp_path: Path) -> None:
    e = python_env()
    e.pop("GREENTRACK_RUN_DIR", None)
    proc = subprocess.run([sys.executable, f"examples/{example}"], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("give RUN_DIR or set GREENTRACK_RUN_DIR")


def test_precision_sweep_example_compares_energy_to_a_target(tmp_path: Path) -> None:
    e = python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "no-powercap"), GREENTRACK_CPU_TDP_W="65")
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "GREENTRACK_RUN_ID", "TORCHELASTIC_RUN_ID",
                 "GREENTRACK_LABELS"):
        e.pop(name, None)
    proc, cpu_s = cpu_seconds([sys.executable, "examples/precision_sweep.py", str(tmp_path / "sweep"),
                               "--steps", "26", "--target", "0.05"], cwd=REPO, env=e)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 26 steps x 4 runs: ~11 CPU-s, the bf16 ones most of it (bf16 matmuls on a CPU); the seeded
    # runs reach loss 0.05 in ~20 steps
    assert cpu_s < 45, cpu_s
    out = proc.stdout
    assert "greentrack compare" in out and "to loss<=0.05:" in out
    assert any(line.startswith("group fp32 (2 runs): to_target_energy_j") for line in out.splitlines())
    assert any(line.startswith("group bf16 (2 runs): to_target_energy_j") for line in out.splitlines())
    from greentrack.run import Run
    for precision in ("fp32", "bf16"):
        with Run.open(tmp_path / "sweep" / f"{precision}-1") as run:
            assert run.labels["precision"] == precision


def _shape(lines: list[str]) -> list[str]:
    """What a demo output says, without what changes from run to run: numbers, run ids, ports,
    paths; the progress lines after the first (how many depends on the machine's speed)."""
    import re
    out, steps = [], 0
    for line in lines:
        if line.startswith("step "):
            steps += 1
            if steps > 1:
                continue
        line = re.sub(r"[^\s,]*/report/", "REPORT/", line)
        line = re.sub(r"\b[0-9a-f]{12}\b", "ID", line)
        out.append(re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", line.rstrip()))
    return out


@pytest.mark.slow
def test_the_readme_shows_what_the_demo_prints(tmp_path: Path) -> None:
    """8a2bbe5: the README's demo output no longer matched a run. The demo, shortened to 1.5 s,
    prints the README's lines (numbers, ids and paths aside)."""
    import re
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```\n\$ make demo\n[^\n]*\n(.*?)```", text, re.DOTALL)
    assert block, "the README's first screen has no demo output"
    code = ("import sys; from pathlib import Path; sys.path.insert(0, 'examples'); import demo; "
            f"demo.main(Path({str(tmp_path / 'demo')!r}), 1.5)")
    env = python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "no-powercap"),
                     GREENTRACK_LEASE_DIR=str(tmp_path / "leases"))  # no neighbours' warnings
    for name in ("GREENTRACK_COUNTRY", "GREENTRACK_RUN_DIR", "GREENTRACK_LABELS", "RANK"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = (proc.stderr + proc.stdout).splitlines()
    # stderr (the warnings) comes first in the README, as a terminal shows it
    assert _shape(printed) == _shape(block.group(1).splitlines()), printed
