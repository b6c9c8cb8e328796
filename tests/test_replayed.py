"""Steps done again after a resume (issue 26): a run resumed from an older checkpoint redoes the
steps after it. Real trackers write the segments, as the integrations do (``continue_steps`` from
the checkpoint's step); the read model states each replayed step once, whatever the number of
resumes, and counts optimizer steps once. (A real resumed Lightning run, its logged energy, the
report and ``advise``: ``tests/test_integrations_lightning.py``.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import greentrack
from greentrack.run import Run
from greentrack.store import StoreReader, store_paths
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import RUN_FAST, clean_env


def segment(run_dir: Path, steps: int, resume_at: int | None) -> None:
    with greentrack.Tracker(run_dir, **RUN_FAST) as tracker:
        if resume_at is not None:
            tracker.continue_steps({"train": resume_at})  # what the integrations do on resume
        for _ in range(steps):
            with tracker.step():
                time.sleep(0.01)


def test_each_replayed_step_is_stated_once_over_several_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    with clean_env(monkeypatch, tmp_path):
        tree = PowercapTree(tmp_path / "pc")
        monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
        with LiveCounters(tree, {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}):
            segment(run, 10, None)  # steps 0-9, checkpoints at 4 and 6
            segment(run, 4, 4)      # resumed from step 4: 4-7; 4-9 of the first are redone
            segment(run, 5, 6)      # resumed from step 6: 6-10; 6-7 of the second are redone
    rows = []
    for p in sorted(store_paths(run), key=lambda p: StoreReader(p).meta["started_unix"]):
        rows.append({r["idx"]: r["cpu_j"] + r["dram_j"] for r in StoreReader(p).steps()
                     if r["phase"] == "train"})
    assert [sorted(r) for r in rows] == [list(range(10)), list(range(4, 8)), list(range(6, 11))]
    redone = [rows[0][i] for i in range(4, 10)] + [rows[1][i] for i in range(6, 8)]
    with Run.open(run) as r:
        again = r.replayed()
        assert (again.steps, again.resumes) == (8, 2)
        assert again.energy_j == pytest.approx(sum(redone)) and again.energy_j > 0
        assert r.optimizer_steps() == 11  # steps 0-10 once each: the global step at the end
        assert r.steps_by_phase()["train"] == 10 + 4 + 5  # the rows, as recorded
    s = greentrack.summarize(run)
    assert (s["replayed_steps"], s["optimizer_steps"]) == (8, 11)


def test_a_run_started_again_from_step_zero_replays_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A later segment that starts at step 0 is a new training on the same directory, not a
    resume from a checkpoint: nothing is called replayed."""
    run = tmp_path / "run"
    with clean_env(monkeypatch, tmp_path):
        segment(run, 3, None)
        segment(run, 3, None)
    s = greentrack.summarize(run)
    assert s["replayed_steps"] == 0 and s["replayed_energy_j"] == 0.0
    assert s["optimizer_steps"] == 6
