"""Distributed runs, 2 CPU processes (gloo): Lightning ``strategy="ddp"`` and ``torchrun``.

Both run the examples as real processes on a powercap tree whose counters advance at 40 W (package)
and 4 W (DRAM). The host is measured once per node: the merged host energy must be watts x the
measuring process's duration, not twice that (codecarbon #544: 4 ranks gave 4x the node).
"""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.store import StoreReader, store_paths
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import REPO, python_env

pytest.importorskip("torch")
pytestmark = pytest.mark.slow
WATTS = {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}
LAUNCHER_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "GREENTRACK_RUN_DIR", "GREENTRACK_RUN_ID", "TORCHELASTIC_RUN_ID",
                 "NODE_RANK", "GREENTRACK_HOST_ENERGY")


#: a hang guard, not a bound on time: the Lightning DDP run took 21-56 s beside the other tests,
#: past 120 s on a host loaded beyond 4 busy loops (a failed run, not a hang)
HANG_S = 600.0


def run_example(cmd: list[str], tree: PowercapTree, timeout_s: float = HANG_S) -> dict[str, Any]:
    env = python_env(**tree.env)
    for name in LAUNCHER_VARS:
        env.pop(name, None)
    with LiveCounters(tree, WATTS):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"')]
    assert len(lines) == 1, proc.stdout  # rank 0 alone prints the run's totals
    out: dict[str, Any] = json.loads(lines[0])
    out["stdout"], out["stderr"] = proc.stdout, proc.stderr
    return out


def check_host_counted_once(run: Path, steps_per_rank: int) -> dict[str, Any]:
    stores = {StoreReader(p).meta["rank"]: StoreReader(p) for p in store_paths(run)}
    assert sorted(stores) == [0, 1]
    assert len({st.meta["run_id"] for st in stores.values()}) == 1
    host = {rank: [c for c in st.channels() if c["kind"] in ("cpu", "dram")]
            for rank, st in stores.items()}
    assert host[1] == []  # local rank 1 leaves the host to local rank 0
    assert {c["method"] for c in host[0]} == {"rapl-powercap"} and len(host[0]) == 2
    for st in stores.values():
        assert sum(r["phase"] == "train" for r in st.steps()) == steps_per_rank
        assert st.meta["status"] == "completed"
    s = greentrack.summarize(run)
    measured_s = stores[0].meta["duration_s"]
    assert measured_s > 0.5
    assert s["energy_j"]["cpu"] == pytest.approx(40.0 * measured_s, rel=0.05)
    assert s["energy_j"]["dram"] == pytest.approx(4.0 * measured_s, rel=0.05)
    assert s["energy_j"]["cpu"] < 1.5 * 40.0 * s["duration_s"]  # not once per rank
    assert s["steps_energy_j"] <= s["energy_j"]["total"]
    return s


def test_lightning_ddp_two_processes(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    tree = PowercapTree(tmp_path / "powercap")
    run = tmp_path / "run"
    out = run_example([sys.executable, "examples/lightning_model.py", str(run), "--devices", "2",
                       "--steps", "200"], tree)
    s = check_host_counted_once(run, steps_per_rank=out["global_step"])
    assert out["global_step"] == 200
    assert out["run_id"] == s["run_id"] and out["steps_by_phase"] == s["steps_by_phase"]
    # each rank logs its own validation energy, on purpose unsynced: Lightning's advice to sync
    # it is not shown (the example's own val_loss is synced)
    assert "validation_energy_j', ..., sync_dist" not in out["stderr"], out["stderr"][-3000:]
    assert out["energy_j"]["total"] == pytest.approx(s["energy_j"]["total"])
    # rank 0 logged the run's totals through Lightning's CSV logger
    (csv_file,) = (run / "lightning" / "csv").glob("version_*/metrics.csv")
    header = csv_file.read_text().splitlines()[0].split(",")
    assert "greentrack/run_energy_j" in header and "greentrack/step_energy_j" in header
    # Per step means per optimizer step as Lightning counts them (global_step: one rank's
    # training steps, no sanity check or validation step), with the whole job's energy.
    logged = list(csv.DictReader(csv_file.open()))
    (totals,) = [r for r in logged if r["greentrack/run_steps"]]
    assert float(totals["greentrack/run_steps"]) == out["global_step"] == 200
    assert float(totals["greentrack/run_energy_j"]) == pytest.approx(s["energy_j"]["total"])
    assert float(totals["greentrack/run_joules_per_step"]) == pytest.approx(
        s["energy_j"]["total"] / 200)
    live = [r for r in logged if r["greentrack/steps"]]
    assert len(live) >= 3 and all(float(r["greentrack/steps"]) == int(r["step"]) for r in live)


def test_torchrun_two_processes(tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path / "powercap")
    run = tmp_path / "run"
    out = run_example([sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", "2", "examples/ddp_torchrun.py", str(run),
                       "--steps", "800"], tree)
    s = check_host_counted_once(run, steps_per_rank=800)
    assert out["stores"] == 2 and out["energy_j"]["total"] == pytest.approx(s["energy_j"]["total"])


def test_hf_trainer_ddp_two_processes(tmp_path: Path) -> None:
    """Per step means per optimizer step as the Trainer counts them (``state.global_step``), with
    the whole job's energy: not ranks x steps with the evaluation steps in."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    tree = PowercapTree(tmp_path / "powercap")
    run = tmp_path / "run"
    out = run_example([sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", "2", "examples/hf_trainer.py", str(run),
                       "--steps", "8"], tree)
    s = check_host_counted_once(run, steps_per_rank=8)
    assert out["global_step"] == 8 and s["steps"] > 16  # both ranks' train and eval rows
    # the Trainer prints each log (rounded to 4 digits) on the main process only
    logs = [ast.literal_eval(line) for line in out["stdout"].splitlines()
            if line.startswith("{'")]
    (final,) = [log for log in logs if "train_loss" in log]
    assert float(final["greentrack/run_steps"]) == 8
    assert float(final["greentrack/run_energy_j"]) == pytest.approx(s["energy_j"]["total"],
                                                                    rel=1e-3)
    assert float(final["greentrack/run_joules_per_step"]) == pytest.approx(
        s["energy_j"]["total"] / 8, rel=1e-3)
    train = [log for log in logs if "loss" in log]
    assert [float(log["greentrack/steps"]) for log in train] == [2, 4, 6, 8]
