"""Node-local directories of one run: ``greentrack merge``, and ``summary``/``report``/``compare``
reading them directly. Real trackers write real stores under distinct host identities
(``GREENTRACK_HOSTNAME``/``GREENTRACK_BOOT_ID``); the CLI runs as a real process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import greentrack
from greentrack.common.errors import ConfigError
from greentrack.run.merge import merge_runs
from greentrack.store import StoreReader, store_paths
from greentrack.training.gathering import GAP_EVENT, NodePart, job_totals, node_part
from tests.helpers import digest, gt, node_run


@pytest.fixture
def nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> list[Path]:
    dirs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    node_run(monkeypatch, dirs[0], "node-a")
    node_run(monkeypatch, dirs[1], "node-b", steps=5)
    return dirs


@pytest.mark.slow
def test_merge_counts_each_store_once_and_never_touches_inputs(nodes: list[Path],
                                                               tmp_path: Path) -> None:
    copy = tmp_path / "copy-of-a"
    shutil.copytree(nodes[0], copy)  # node A's directory copied twice
    before = {d: digest(d) for d in [*nodes, copy]}
    out = gt("merge", str(tmp_path / "merged"), str(nodes[0]), str(nodes[1]), str(copy))
    assert out.returncode == 0, out.stderr
    assert "2 store(s) from 3 directories" in out.stdout and "1 store(s) found in more" in out.stdout
    assert {d: digest(d) for d in [*nodes, copy]} == before
    merged = greentrack.summarize(tmp_path / "merged")
    a, b = greentrack.summarize(nodes[0]), greentrack.summarize(nodes[1])
    assert merged["run_id"] == "job-9" and merged["stores"] == 2
    assert sorted(merged["hosts"]) == ["node-a", "node-b"]
    assert merged["steps"] == 8
    for kind in ("cpu", "dram", "total"):
        assert merged["energy_j"][kind] == pytest.approx(a["energy_j"][kind] + b["energy_j"][kind])
    # one host device per node: host CPU/DRAM of node A once, though its store came twice
    assert sorted((s["host"], s["kind"]) for s in merged["sources"]) == [
        ("node-a", "cpu"), ("node-a", "dram"), ("node-b", "cpu"), ("node-b", "dram")]
    record = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert record["run_id"] == "job-9" and len(record["merged_from"]) == 3
    # summary reads the directories directly, with the same figures, and says what it dropped
    direct = gt("summary", "--json", str(nodes[0]), str(nodes[1]), str(copy))
    assert direct.returncode == 0, direct.stderr
    s = json.loads(direct.stdout)
    assert s["energy_j"] == merged["energy_j"] and s["stores"] == 2
    assert any("counted once" in w for w in s["warnings"])


@pytest.mark.parametrize("case", ["other-run", "out-not-empty", "out-a-file", "out-in-input"])
def test_merge_refuses_with_one_line(nodes: list[Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    out_dir = tmp_path / "out"
    inputs = [str(nodes[0]), str(nodes[1])]
    if case == "other-run":
        node_run(monkeypatch, tmp_path / "c" / "run", "node-c", run_id="job-10")
        inputs.append(str(tmp_path / "c" / "run"))
        expected = (f"RUN_DIR='{tmp_path / 'c' / 'run'}' is invalid: holds run job-10, not run "
                    f"job-9 of {nodes[0]}: only directories of one run can be read together")
    elif case == "out-not-empty":
        out_dir.mkdir()
        (out_dir / "notes.txt").write_text("mine")
        expected = (f"OUT='{out_dir}' is invalid: exists and is not an empty directory: merge "
                    "into a new one (inputs are never changed)")
    elif case == "out-a-file":
        out_dir.write_text("a file")
        expected = f"OUT='{out_dir}' is invalid: exists and is not an empty directory"
    else:
        out_dir = nodes[1] / "merged"
        expected = (f"OUT='{out_dir}' is invalid: is inside the input {nodes[1]}: merge into a "
                    "directory outside the inputs (they are never changed)")
    before = {d: digest(d) for d in nodes}
    out = gt("merge", str(out_dir), *inputs)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"greentrack: {expected}"), out.stderr
    assert "Traceback" not in out.stderr
    assert {d: digest(d) for d in nodes} == before
    if case == "other-run":
        assert not out_dir.exists()
        summary = gt("summary", *inputs)
        assert summary.returncode == 2 and "holds run job-10, not run job-9" in summary.stderr


def test_merge_into_an_empty_directory(nodes: list[Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = merge_runs(tmp_path / "empty", nodes)
    assert result.stores == 2 and result.duplicates == 0 and result.run_id == "job-9"
    assert len(store_paths(tmp_path / "empty")) == 2


def test_report_and_compare_take_node_directories_joined(nodes: list[Path],
                                                         tmp_path: Path) -> None:
    joined = f"{nodes[0]}+{nodes[1]}"
    out = gt("report", joined, "--format", "json,md", "--out", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    merged = greentrack.summarize(nodes)
    assert doc["run"]["stores"] == 2 and sorted(doc["run"]["hosts"]) == ["node-a", "node-b"]
    assert doc["run"]["run_dirs"] == [str(nodes[0]), str(nodes[1])]
    assert doc["energy"]["total_j"] == pytest.approx(merged["energy_j"]["total"])
    cmp_ = gt("compare", str(nodes[0]), joined, "--json")
    assert cmp_.returncode == 0, cmp_.stderr
    rows = json.loads(cmp_.stdout)["runs"]
    assert rows[1]["run_dir"] == joined and rows[1]["step_rows"] == 8 and rows[0]["step_rows"] == 3
    # per-step figures divide by one rank's training steps (each node ran its own rank 0 here)
    assert rows[1]["per_step_divisor"] == "optimizer_steps" and rows[1]["steps"] == 5


def test_a_failed_gather_leaves_rank_zero_its_own_node_and_a_gap(nodes: list[Path]) -> None:
    """The collective raising (a peer lost, the group's timeout) is what torch.distributed does
    when a rank never arrives: rank 0 goes on with its own directory and records the gap."""
    def lost_peer(part: NodePart) -> list[NodePart] | None:
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    (store,) = store_paths(nodes[0])
    part = node_part(nodes[0], [store], rank=0, local_zero=True, tracked=True)
    assert [name for name, _ in part.stores] == [store.name] and not part.errors
    totals = job_totals(nodes[0], part, main=True, store=store, gather=lost_peer, world_size=2)
    assert totals is not None and totals["hosts"] == ["node-a"]
    assert totals["energy_j"] == greentrack.summarize(nodes[0])["energy_j"]
    (gap,) = [w for w in totals["warnings"] if "gather" in w]
    assert "Connection closed by peer" in gap and "only this node's directory" in gap
    reader = StoreReader(store)
    assert [e["kind"] for e in reader.events()].count(GAP_EVENT) == 1
    reader.close()
    # a rank other than 0 gets nothing back and raises nothing
    assert job_totals(nodes[0], part, main=False, store=None, gather=lost_peer) is None


def test_no_temporary_directory_is_a_gap_never_an_error(nodes: list[Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's scratch ``TMPDIR`` removed under it (or a full disk): ``tempfile.mkdtemp`` fails.
    Building the part must still return (a rank that raised here would never reach the collective
    and leave every other rank blocked in it until the group's timeout); the failure reaches rank
    0 as text. Rank 0 itself still gets its own node's totals."""
    import tempfile
    (own,) = store_paths(nodes[0])
    mine = node_part(nodes[0], [own], rank=0, local_zero=True, tracked=True)
    assert mine.stores and not mine.errors
    gone = tmp_path / "scratch"
    gone.mkdir()
    gone.rmdir()
    monkeypatch.setattr(tempfile, "tempdir", str(gone))
    (store,) = store_paths(nodes[1])
    part = node_part(nodes[1], [store], rank=1, local_zero=True, tracked=True)
    assert part.stores == [] and len(part.errors) == 1 and "scratch" in part.errors[0]
    totals = job_totals(nodes[0], mine, main=True, store=own, gather=lambda p: [p, part],
                        world_size=2)
    assert totals is not None and totals["hosts"] == ["node-a"]
    assert totals["energy_j"] == greentrack.summarize(nodes[0])["energy_j"]
    assert any("rank 1 on node-b: a store could not be sent" in w for w in totals["warnings"])
    assert any("could not be unpacked on rank 0" in w for w in totals["warnings"])
    reader = StoreReader(own)
    assert [e["kind"] for e in reader.events()].count(GAP_EVENT) == 2
    reader.close()
    assert not gone.exists()


def test_gathered_parts_equal_merging(nodes: list[Path]) -> None:
    """Rank 0 reads compact copies (no samples, one step row per phase) of the other node's
    stores: the same totals as the full stores."""
    part_b = node_part(nodes[1], [], rank=1, local_zero=True, tracked=True)
    (name, data), = part_b.stores
    compact = nodes[1].parent / "compact.gtdb"
    compact.write_bytes(data)
    reader = StoreReader(compact)
    assert reader.samples() == [] and [r["n"] for r in reader.steps()] == [5]
    assert reader.meta["host"] == "node-b" and reader.meta["boot_id"] == "boot-node-b"
    reader.close()
    part_a = node_part(nodes[0], [], rank=0, local_zero=True, tracked=True)
    totals = job_totals(nodes[0], part_a, main=True, store=None,
                        gather=lambda p: [p, part_b], world_size=2)
    merged = greentrack.summarize(nodes)
    assert totals is not None
    for key in ("energy_j", "steps_by_phase", "stores", "hosts", "sources"):
        assert totals[key] == merged[key], key
    assert totals["duration_s"] == pytest.approx(merged["duration_s"])
    assert not totals["warnings"]


def test_run_open_refuses_no_directory() -> None:
    from greentrack.run import Run
    with pytest.raises(ConfigError, match="at least one run directory"):
        Run.open([])


def test_a_damaged_copy_beside_its_original_counts_once_from_the_original(nodes: list[Path]) -> None:
    (store,) = store_paths(nodes[0])
    before = greentrack.summarize(nodes[0])
    copy = store.with_name("renamed-copy.gtdb")
    shutil.copy(store, copy)
    import sqlite3
    with sqlite3.connect(copy) as conn:  # a damaged copy: a channel's total no greentrack writes
        conn.execute("UPDATE channels SET energy_j = -1 WHERE id = (SELECT MIN(id) FROM channels)")
    conn.close()
    s = greentrack.summarize(nodes[0])
    assert s["stores"] == 1 and s["energy_j"] == before["energy_j"]
    (note,) = [w for w in s["warnings"] if "copies of one store" in w]
    assert note.startswith(f"renamed-copy.gtdb and {store.name} are copies") or \
        note.startswith(f"{store.name} and renamed-copy.gtdb are copies")
    assert note.endswith(f"counted once, from {store.name}")


def test_rank_zero_without_a_store_still_gets_the_other_nodes(nodes: list[Path],
                                                             tmp_path: Path) -> None:
    part_b = node_part(nodes[1], [], rank=1, local_zero=True, tracked=True)
    mine = node_part(tmp_path / "never-created", [], rank=0, local_zero=True, tracked=False)
    assert mine.stores == [] and mine.errors == []  # nothing tracked here: nothing to send
    totals = job_totals(tmp_path / "never-created", mine, main=True, store=None,
                        gather=lambda p: [p, part_b], world_size=2)
    assert totals is not None and totals["hosts"] == ["node-b"]
    assert totals["energy_j"] == greentrack.summarize(nodes[1])["energy_j"]
    assert [w for w in totals["warnings"] if "rank 0 on" in w and "no tracker" in w]


def test_a_rank_on_rank_zeros_host_sends_nothing(nodes: list[Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Under Lightning or the HF Trainer, rank 0 broadcasts its host identity with the run
    directory: ranks on that host write into the directory rank 0 reads, so they send no copy."""
    monkeypatch.setenv("GREENTRACK_HOSTNAME", "node-a")
    monkeypatch.setenv("GREENTRACK_BOOT_ID", "boot-node-a")
    (store,) = store_paths(nodes[0])
    same = node_part(nodes[0], [store], rank=1, local_zero=True, tracked=True,
                     main_host=("node-a", "boot-node-a"))
    other = node_part(nodes[0], [store], rank=1, local_zero=True, tracked=True,
                      main_host=("node-a", "another-boot"))  # a namesake host, not this one
    assert same.stores == [] and same.tracked and [n for n, _ in other.stores] == [store.name]
