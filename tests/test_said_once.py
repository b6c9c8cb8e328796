"""Messages a user sees repeat at most once per cause per run (issue 26, "Wanted" 5).

8a2bbe5 printed "another run measures this host" once per run met (6-8 times a run as
neighbours came and went), "read failed" at every gap of a flaky device, and each segment of a
run (each call of a decorated function on one run directory) repeated its start notes and its
bad step fields. One mechanism now (:mod:`greentrack.common.once`); the run's events still record
every occurrence.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.common import once
from greentrack.common.leases import Lease
from greentrack.process import sharing
from greentrack.store import StoreReader, store_paths
from tests.fakes.fake_pynvml import FakeNvml
from tests.helpers import FAST


def test_first_is_once_per_run_and_cause_across_threads() -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        results.extend(once.first("run-x", "cause") for _ in range(100))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and len(results) == 800
    assert once.first("run-y", "cause") and once.first("run-x", "other cause")
    assert once.run_key("a/b", "r1") != once.run_key("c/b", "r1")  # two directories: two runs


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(once, "MAX_KEYS", 10)
    for i in range(50):
        assert once.first("bounded-run", f"cause-{i}")
    assert len([k for k in once._said if k[0] == "bounded-run"]) <= 10
    assert not once.first("bounded-run", "cause-49")  # the newest are remembered


@pytest.mark.slow  # three real tracker starts: ~1 s
def test_each_segment_of_a_run_says_what_the_run_said_before_not_again(
        no_host_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two calls of a decorated function on one run directory are two segments of one run: the
    second found the same estimate and dropped the same field, and said both again (8a2bbe5).
    Another run says them for itself."""
    caplog.set_level(logging.WARNING, logger="greentrack")

    def segment(run: Path) -> None:
        with greentrack.Tracker(run, **FAST) as t:
            for _ in range(3):
                with t.step(tokens=float("nan")):
                    pass

    for run in (tmp_path / "a", tmp_path / "a", tmp_path / "b"):
        segment(run)
    lines = [r.getMessage() for r in caplog.records if r.name == "greentrack"]
    assert sum("step field 'tokens' dropped" in line for line in lines) == 2, lines  # a, b
    assert sum("ESTIMATED" in line for line in lines) == 2, lines
    assert len(_events(tmp_path / "a", "bad-step-field")) == 2  # each segment's store records it


#: what one cause's log line starts with, with what varies (ids, pids, paths, counts) left out
def cause_of(message: str) -> str:
    return re.sub(r"\d+(\.\d+)?|/[^\s,)]+", "#", message)[:60]


def _events(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for p in store_paths(run) for e in StoreReader(p).events() if e["kind"] == kind]


@pytest.mark.slow  # ~4 s: two segments of a real run, real leases, a flaky fake GPU
@pytest.mark.parametrize("seed", [0, 1])
def test_a_run_meeting_the_same_causes_again_and_again_says_each_once(
        seed: int, fake_nvml: FakeNvml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A random schedule drives one run (two segments, as two calls of a decorated function on
    one directory) through repeated causes: other runs' leases appear and disappear on the host,
    the GPU's reads fail and come back, a step field is bad at every step. Each message is logged
    at most once; the events record every occurrence."""
    monkeypatch.setenv("GREENTRACK_LEASE_DIR", str(tmp_path / "leases"))
    monkeypatch.setattr(sharing, "STAT_EVERY_S", 0.0)  # neighbours seen within a poll or two
    monkeypatch.setattr(sharing, "SWEEP_S", 0.02)
    caplog.set_level(logging.WARNING, logger="greentrack")
    rng = random.Random(seed)
    run = tmp_path / "run"
    neighbours: dict[int, Lease] = {}
    met: set[int] = set()
    failures = bad = 0
    for segment in range(2):
        with greentrack.Tracker(run, mode="machine", **FAST) as tracker:
            for _ in range(25):
                action = rng.choice(["neighbour", "neighbour", "fail", "bad-step", "step"])
                if action == "neighbour":
                    k = rng.randrange(4)
                    if k in neighbours:
                        neighbours.pop(k).release()
                    else:
                        neighbours[k] = Lease(tmp_path / "leases", {
                            "run_id": f"other-{seed}-{k}", "pid": 4000 + k, "mode": "machine",
                            "run_dir": str(tmp_path / f"other{k}"), "host_scope": True},
                            shared=True)
                        met.add(k)
                elif action == "fail":
                    fake_nvml.gpus[0].fail_reads = 2
                    failures += 1
                bad += action == "bad-step"
                with tracker.step(samples="many" if action == "bad-step" else 4):
                    time.sleep(rng.uniform(0.03, 0.08))
        for lease in neighbours.values():
            lease.release()
        neighbours.clear()
    lines = [r.getMessage() for r in caplog.records if r.name == "greentrack"]
    causes = Counter(cause_of(line) for line in lines)
    assert all(n == 1 for n in causes.values()), causes
    # the run's record keeps every occurrence: each other run met, each gap, each bad field
    shared = {e["message"] for e in _events(run, "host-shared")}
    gaps = _events(run, "gap-start")
    assert 1 <= len(shared) <= len(met) and (len(gaps) >= 1 if failures else not gaps)
    assert sum("another run measures this host" in line for line in lines) == 1
    assert sum("read failed" in line for line in lines) == (1 if gaps else 0)
    assert sum("step field 'samples' dropped" in line for line in lines) == (1 if bad else 0)
    assert sum("ESTIMATED" in line for line in lines) == 1  # both segments find the estimate
    assert greentrack.summarize(run)["steps"] == 50
