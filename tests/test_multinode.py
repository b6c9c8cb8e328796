"""A two-node job without a shared filesystem: gathered on rank 0 and merged, the same totals.

Each "node" is a group of real processes with its own host identity (``GREENTRACK_HOSTNAME`` and
``GREENTRACK_BOOT_ID``, the documented override), its own run directory, powercap tree (counters
advancing at known watts) and fake NVML GPUs; all ranks form one real ``torch.distributed`` job
(gloo, TCP on 127.0.0.1). Host CPU and DRAM must count once per node, GPUs add up, and rank 0's
gathered totals must equal ``greentrack merge`` of the node directories (and ``summary`` of them).
Every process runs under a timeout; a hung job fails the test, it never hangs CI. The ranks are
forked from one process that imported torch (and Lightning) once (tests/rank_zygote.py): the
four imports were most of these tests' CPU (65 -> 43 CPU-s for the file).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.run.merge import merge_runs
from greentrack.store import StoreReader, store_paths
from greentrack.training.gathering import GAP_EVENT
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import REPO, python_env

pytest.importorskip("torch")
pytestmark = pytest.mark.slow
TIMEOUT_S = 240.0
CLEARED = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
           "GREENTRACK_RUN_DIR", "GREENTRACK_RUN_ID", "TORCHELASTIC_RUN_ID", "NODE_RANK",
           "GREENTRACK_HOST_ENERGY", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "POD_NAME",
           "KUBERNETES_SERVICE_HOST", "GREENTRACK_LABELS")


@dataclass
class Node:
    host: str
    boot: str
    run_dir: Path
    tree: PowercapTree
    cpu_w: float
    gpus: list[tuple[str, float]]  # (uuid, watts), one per local rank

    @property
    def watts(self) -> dict[str, float]:
        return {"intel-rapl:0": self.cpu_w, "intel-rapl:0:1": self.cpu_w / 10}


def make_nodes(tmp_path: Path, per_node: int) -> list[Node]:
    out = []
    for i, (name, cpu_w, gpu_w) in enumerate([("node-a", 40.0, 100.0), ("node-b", 60.0, 200.0)]):
        base = tmp_path / name
        gpus = [(f"GPU-{i}{j}000000-0000-0000-0000-000000000000", gpu_w) for j in range(per_node)]
        out.append(Node(name, f"boot-{name}", base / "run", PowercapTree(base / "powercap"),
                        cpu_w, gpus))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(nodes: list[Node], steps: int, untracked: tuple[int, ...] = (),
           lightning: bool = False, rank_env: dict[int, dict[str, str]] | None = None
           ) -> dict[str, Any] | None:
    """Run the job (every rank at once); return rank 0's gathered totals. ``lightning``: the
    Lightning example instead, each node in its own working directory with the run directory
    given as ``run`` (rank 0 broadcasts that path; each node resolves it on its own disk)."""
    per_node = len(nodes[0].gpus)
    world = per_node * len(nodes)
    port = free_port()
    logs = nodes[0].run_dir.parent.parent / "rank-logs"
    logs.mkdir(exist_ok=True)
    ranks: list[dict[str, Any]] = []
    for n_idx, node in enumerate(nodes):
        for local in range(per_node):
            rank = n_idx * per_node + local
            env = python_env(**node.tree.env)
            for name in CLEARED:
                env.pop(name, None)
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local),
                       LOCAL_WORLD_SIZE=str(per_node), GREENTRACK_HOSTNAME=node.host,
                       GREENTRACK_BOOT_ID=node.boot, GREENTRACK_PROGRESS="0",
                       GREENTRACK_LEASE_DIR=str(node.run_dir.parent / "leases"),
                       GT_TEST_GPUS=",".join(f"{u}:{w}" for u, w in node.gpus),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       TORCHELASTIC_RUN_ID="job-17", TORCHELASTIC_RESTART_COUNT="0",
                       GROUP_RANK=str(n_idx), SLURM_JOB_ID="4242",
                       SLURM_JOB_NODELIST="node-[a-b]")
            env.update((rank_env or {}).get(rank, {}))
            if lightning:  # Lightning's own environment: no launcher names the run
                for name in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                             "GROUP_RANK", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "RANK"):
                    del env[name]
                env["NODE_RANK"] = str(n_idx)
                node.run_dir.parent.mkdir(parents=True, exist_ok=True)
                argv = [str(REPO / "examples" / "lightning_model.py"), "run",
                        "--devices", str(per_node), "--num-nodes", str(len(nodes)),
                        "--steps", str(steps)]
                cwd = node.run_dir.parent
            else:
                argv = ["tests/multinode_job.py", str(node.run_dir), "--init",
                        f"tcp://127.0.0.1:{port}", "--steps", str(steps)]
                argv += ["--untracked"] if rank in untracked else []
                cwd = REPO
            ranks.append({"argv": argv, "cwd": str(cwd), "env": env,
                          "out": str(logs / f"{rank}.out"), "err": str(logs / f"{rank}.err")})
    # every rank a real process, forked from one that imported the framework once (each rank's
    # own import was most of these tests' CPU: tests/rank_zygote.py)
    spec = {"preload": ["torch", "torch.distributed"] + (["lightning.pytorch"] if lightning else []),
            "ranks": ranks}
    zygote_env = python_env()
    for name in CLEARED:
        zygote_env.pop(name, None)
    counters = [LiveCounters(n.tree, n.watts) for n in nodes]
    for c in counters:
        c.__enter__()
    zygote = subprocess.Popen([sys.executable, "tests/rank_zygote.py"], cwd=REPO, env=zygote_env,
                              text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        codes_line, _ = zygote.communicate(json.dumps(spec), timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the job did not finish within {TIMEOUT_S:g} s")
    finally:
        try:  # the zygote and any rank left (one session), whatever happened
            os.killpg(zygote.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        zygote.wait(10)
        for c in counters:
            c.__exit__(None, None, None)
    outputs = [(Path(r["out"]).read_text(), Path(r["err"]).read_text()) for r in ranks]
    codes = json.loads(codes_line)
    for code, (out, err) in zip(codes, outputs):
        assert code == 0, out[-2000:] + err[-4000:]
    lines = [line for line in outputs[0][0].splitlines() if line.startswith(("{", "null"))]
    assert len(lines) == 1, outputs[0]
    found: dict[str, Any] | None = json.loads(lines[0])
    return found


def by_host(summary: dict[str, Any], kind: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for src in summary["sources"]:
        if src["kind"] == kind:
            out.setdefault(src["host"], []).append(src)
    return out


def measured(node: Node) -> dict[tuple[int, str], tuple[float, float]]:
    """Each channel of the node's stores: (local rank, kind) -> (joules, seconds from the store's
    start to its last reading)."""
    out = {}
    for path in store_paths(node.run_dir):
        reader = StoreReader(path)
        for c in reader.channels():
            out[(int(reader.meta["local_rank"]), c["kind"])] = (c["energy_j"], c["until_t"])
        reader.close()
    return out


def check_watts(joules: float, seconds: float, watts: float) -> None:
    """Counters advance at ``watts``: a channel read over at most ``seconds`` holds at most that
    (2% for the fake's 100 ms ticks), and not much less (its first reading comes a little after
    the store's start, later on a loaded host)."""
    assert 0.75 * watts * seconds <= joules <= 1.02 * watts * seconds + 0.1 * watts, \
        (joules, seconds, watts)


def test_two_nodes_gathered_and_merged_agree(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, per_node=2)
    gathered = launch(nodes, steps=40)
    assert gathered is not None
    merged = merge_runs(tmp_path / "merged", [n.run_dir for n in nodes])
    assert merged.stores == 4 and merged.duplicates == 0
    from_merge = greentrack.summarize(merged.out)
    # summary reads node directories directly too; a directory copied twice adds nothing
    direct = greentrack.summarize([nodes[0].run_dir, nodes[1].run_dir, nodes[0].run_dir])
    for other in (from_merge, direct):
        assert other["run_id"] == gathered["run_id"] == "job-17"
        assert other["stores"] == gathered["stores"] == 4
        for kind in ("gpu", "cpu", "dram", "total"):
            assert other["energy_j"][kind] == pytest.approx(gathered["energy_j"][kind], rel=1e-9)
        assert other["steps_by_phase"] == gathered["steps_by_phase"] == {"train": 160}
    assert sorted(gathered["hosts"]) == ["node-a", "node-b"]
    # rank 0's own directory holds node A only: node B's figures came through the gather
    alone = greentrack.summarize(nodes[0].run_dir)
    assert alone["hosts"] == ["node-a"] and alone["stores"] == 2
    assert gathered["energy_j"]["total"] > alone["energy_j"]["total"] * 1.5

    for node in nodes:
        channels = measured(node)
        # host CPU and DRAM: one device per node, its local rank 0's reading, counted once
        (cpu,) = by_host(gathered, "cpu")[node.host]
        (dram,) = by_host(gathered, "dram")[node.host]
        assert cpu["method"] == "rapl-powercap" and cpu["stores"] == 1
        assert cpu["energy_j"] == channels[(0, "cpu")][0]
        assert dram["energy_j"] == channels[(0, "dram")][0]
        assert {kind for rank, kind in channels if rank == 1} == {"gpu"}
        check_watts(*channels[(0, "cpu")], node.cpu_w)
        check_watts(*channels[(0, "dram")], node.cpu_w / 10)
        # GPUs: one per rank, each at its watts, all of them added up
        gpus = by_host(gathered, "gpu")[node.host]
        assert len(gpus) == 2 and all(g["measured"] and g["stores"] == 1 for g in gpus)
        assert sum(g["energy_j"] for g in gpus) == pytest.approx(
            channels[(0, "gpu")][0] + channels[(1, "gpu")][0])
        for rank, (_, watts) in enumerate(node.gpus):
            check_watts(*channels[(rank, "gpu")], watts)
    assert gathered["energy_j"]["cpu"] == pytest.approx(
        sum(s["energy_j"] for s in gathered["sources"] if s["kind"] == "cpu"))
    # the job as the scheduler and launcher name it
    assert gathered["job"]["torchelastic"]["run_id"] == "job-17"
    assert gathered["job"]["slurm"] == {"job_id": "4242", "node_list": "node-[a-b]"}
    assert not [w for w in gathered["warnings"] if "gather" in w]


def test_a_rank_without_tracker_is_a_recorded_gap(tmp_path: Path) -> None:
    """Rank 1 (node B, its only rank) trains untracked but takes part in the gather: no hang;
    rank 0's totals say what is missing, and so does its store afterwards."""
    nodes = make_nodes(tmp_path, per_node=1)
    gathered = launch(nodes, steps=20, untracked=(1,))
    assert gathered is not None
    assert gathered["hosts"] == ["node-a"] and gathered["stores"] == 1
    (gap,) = [w for w in gathered["warnings"] if "rank 1 on node-b had no tracker" in w]
    (store,) = store_paths(nodes[0].run_dir)
    reader = StoreReader(store)
    events = [e for e in reader.events() if e["kind"] == GAP_EVENT]
    reader.close()
    assert len(events) == 1 and "rank 1 on node-b" in events[0]["message"]
    assert any("rank 1 on node-b" in w for w in greentrack.summarize(nodes[0].run_dir)["warnings"])


def test_a_rank_that_cannot_pack_its_stores_still_joins_the_gather(tmp_path: Path) -> None:
    """Rank 1's scratch ``TMPDIR`` is removed before the gather (packing its stores fails): it
    must still enter the collective and exit cleanly, not raise out of ``close()`` and leave rank
    0 blocked in ``gather_object`` until the group's timeout. Rank 0's totals name the gap."""
    nodes = make_nodes(tmp_path, per_node=1)
    scratch = tmp_path / "scratch-rank1"
    scratch.mkdir()
    gathered = launch(nodes, steps=10, rank_env={1: {"TMPDIR": str(scratch),
                                                     "GT_TEST_SCRATCH_GONE": "1"}})
    assert not scratch.exists()
    assert gathered is not None and gathered["hosts"] == ["node-a"]
    (gap,) = [w for w in gathered["warnings"] if "rank 1 on node-b: a store could not be sent" in w]
    assert "scratch-rank1" in gap  # and launch() checked that every rank exited with 0


def test_lightning_two_nodes_each_with_its_own_directory(tmp_path: Path) -> None:
    """Lightning ``num_nodes=2`` (its own cluster environment: no launcher gives a run id): rank 0
    broadcasts the run directory and the run id; each node writes its own copy; rank 0's logged ``greentrack/run_energy_j`` is the whole job's, equal to
    ``greentrack merge`` of the two directories, each host counted once."""
    pytest.importorskip("lightning")
    nodes = make_nodes(tmp_path, per_node=2)
    csv_path = tmp_path / "emissions.csv"  # one project file on a shared disk
    out = launch(nodes, steps=16, lightning=True,
                 rank_env={r: {"GREENTRACK_EMISSIONS_CSV": str(csv_path)} for r in range(4)})
    assert out is not None and out["global_step"] == 16 and out["stores"] == 4
    merged = greentrack.summarize(merge_runs(tmp_path / "merged", [n.run_dir for n in nodes]).out)
    assert merged["run_id"] == out["run_id"] and merged["stores"] == 4  # one run id, broadcast
    assert out["energy_j"]["total"] == pytest.approx(merged["energy_j"]["total"], rel=1e-9)
    assert sorted(merged["hosts"]) == ["node-a", "node-b"]
    for node in nodes:
        assert len(store_paths(node.run_dir)) == 2  # node-local: each node wrote its own ranks
        (cpu,) = by_host(merged, "cpu")[node.host]
        check_watts(*measured(node)[(0, "cpu")], node.cpu_w)
        assert cpu["energy_j"] == measured(node)[(0, "cpu")][0]
    import csv
    (metrics,) = (nodes[0].run_dir / "lightning" / "csv").glob("version_*/metrics.csv")
    (row,) = [r for r in csv.DictReader(metrics.open()) if r.get("greentrack/run_energy_j")]
    assert float(row["greentrack/run_energy_j"]) == pytest.approx(merged["energy_j"]["total"])
    # 8a2bbe5: the row held node 0's directory only (222 of 616 J); now rank 0's row is the job's
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["run_id"] for r in rows] == [merged["run_id"]]
    facility_j = float(rows[0]["energy_consumed"]) * 3.6e6
    assert facility_j == pytest.approx(merged["energy_j"]["total"] * merged["footprint"]["pue"],
                                       rel=1e-6)
