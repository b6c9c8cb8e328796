"""Whatever a training script hands a step, the run is recorded: real threads, real SQLite.

Each test here failed on the commit before greentrack/engine/stepvalues.py (85faba8): a tensor lost the
whole run, a non-JSON extra repeated and dropped steps, a million fast steps stored 1.5x rows.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import greentrack
from greentrack.engine.steps import MAX_BACKLOG
from greentrack.store import StoreReader, StoreWriter, store_paths
from greentrack.store.layout import StepRow
from tests.helpers import FAST

#: a million steps through the engine: out of `make test-fast`
pytestmark = pytest.mark.slow


def _store(run: Path) -> StoreReader:
    return StoreReader(store_paths(run)[0])


def _bad_events(run: Path) -> list[dict[str, Any]]:
    return [e for e in _store(run).events() if e["kind"] == "bad-step-field"]


def test_numbers_of_any_everyday_type_are_recorded(no_host_env: Path, tmp_path: Path) -> None:
    values = [torch.tensor(32), torch.tensor([32.0]), np.int64(32), np.float32(32.0),
              Decimal("32"), Fraction(64, 2), 32, 32.0, np.array(32)]
    counter = torch.tensor(0)
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        for v in values:
            counter += 5  # a running tensor the script keeps updating in place
            with t.step(samples=v, tokens=counter, flops=np.float64(1e9), loss=torch.tensor(0.5)):
                pass
            counter += 1000  # after the step: must not change what the step recorded
    s = greentrack.summarize(tmp_path / "run")
    assert s["status"] == "completed" and s["steps"] == len(values) and s["warnings"] == []
    steps = _store(tmp_path / "run").steps()
    assert [r["samples"] for r in steps] == [32.0] * len(values)
    assert [r["tokens"] for r in steps] == [5.0 + 1005 * i for i in range(len(values))]
    assert all(r["flops"] == 1e9 and json.loads(r["extra"])["loss"] == 0.5 for r in steps)
    assert _bad_events(tmp_path / "run") == []


def test_flops_past_a_64_bit_integer_are_recorded(no_host_env: Path, tmp_path: Path) -> None:
    """6 x 1e12 parameters x 1e6 tokens is 6e18 FLOPs a step, past what SQLite holds as an integer
    (2**63 - 1): a Python int that size lost the whole step (hypothesis found 2**63)."""
    big = [2**63, 6 * 10**18 * 2, 10**26]
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        for v in big:
            with t.step(flops=v, samples=2**40):
                pass
    steps = _store(tmp_path / "run").steps()
    assert [r["flops"] for r in steps] == [float(v) for v in big]
    assert greentrack.summarize(tmp_path / "run")["steps"] == 3 and _bad_events(tmp_path / "run") == []


BAD = {"nan": float("nan"), "inf": math.inf, "negative": -3, "huge": 10**400,
       "implausible": 1e40, "text": "32", "bool": True, "object": object(),
       "vector": torch.ones(3), "nan_tensor": torch.tensor(float("nan"))}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_count_drops_that_field_only(name: str, no_host_env: Path, tmp_path: Path) -> None:
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        for i in range(6):
            bad = BAD[name] if i % 2 else None
            with t.step(samples=16, tokens=bad, note="ok"):
                pass
    s = greentrack.summarize(tmp_path / "run")
    assert s["status"] == "completed" and s["steps"] == 6
    steps = _store(tmp_path / "run").steps()
    assert [r["idx"] for r in steps] == list(range(6))
    assert all(r["samples"] == 16 and r["tokens"] is None for r in steps)
    assert all(json.loads(r["extra"]) == {"note": "ok"} for r in steps)
    events = _bad_events(tmp_path / "run")
    assert len(events) == 1 and "'tokens'" in events[0]["message"]
    assert _store(tmp_path / "run").meta["bad_step_fields"] == {"tokens": 3}
    assert any("'tokens' dropped" in w for w in s["warnings"])


def test_a_non_json_extra_drops_that_field_only(no_host_env: Path, tmp_path: Path) -> None:
    junk: dict[str, Any] = {"obj": object(), "nan": float("nan"), "big": "x" * 10_000,
                            "nested": {"a": [1, object()]}, "deep": list(range(5000)),
                            "huge_int": 10**30}
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        for i in range(10):
            with t.step(samples=1, **(junk if i == 3 else {}), i=i):
                pass
    steps = _store(tmp_path / "run").steps()
    assert [r["idx"] for r in steps] == list(range(10))  # none repeated, none dropped
    extra3 = json.loads(steps[3]["extra"])
    assert extra3["i"] == 3 and len(extra3["big"]) == 256 and extra3["huge_int"] == 1e30
    assert not {"obj", "nan", "nested", "deep"} & set(extra3)
    assert {e["message"].split("'")[1] for e in _bad_events(tmp_path / "run")} == {
        "obj", "nan", "nested", "deep"}


def test_odd_phases_and_colliding_names_never_raise(no_host_env: Path, tmp_path: Path) -> None:
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        with t.step(phase=["not", "hashable"]):
            pass
        with t.step("x" * 500):
            pass
        tok = t.begin_step("train", t0=5, t1=6, timeline="host")
        t.end_step(tok, phase="eval")  # names of submit_window's own arguments
    assert greentrack.summarize(tmp_path / "run")["steps"] == 3
    phases = {r["phase"] for r in _store(tmp_path / "run").steps()}
    assert phases == {"['not', 'hashable']", "x" * 64, "train"}


def test_a_row_sqlite_refuses_is_set_aside_and_the_rest_commit(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path, 0, {"run_id": "r"})
    row = StepRow(0, "train", 0.0, 1.0, 1.0, None, None, None, 0.0, None, None, None, "host", {})
    w.add_step(row)
    w.add_step(row._replace(idx=1, samples=object()))  # cannot be bound: refused by SQLite
    w.add_step(row._replace(idx=2, tokens=2**70))  # too large for SQLite's INTEGER: refused
    w.add_step(row._replace(idx=3, extra={"x": float("nan")}))  # JSON without NaN
    w.flush()
    w.add_step(row._replace(idx=4))
    w.flush()
    w.close()
    r = StoreReader(w.path)
    assert [s["idx"] for s in r.steps()] == [0, 3, 4]
    assert json.loads(r.steps()[1]["extra"]) == {"x": None}
    assert r.meta["rows_rejected"] == 2
    assert [e["kind"] for e in r.events()] == ["row-rejected"]
    raw = sqlite3.connect(w.path).execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    assert raw == 3


def test_steps_from_many_threads_get_distinct_indices(no_host_env: Path, tmp_path: Path) -> None:
    per_thread, n_threads = 2000, 8
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython can: races show up
    try:
        _steps_on_threads(tmp_path / "run", per_thread, n_threads)
    finally:
        sys.setswitchinterval(switch)
    idx = [r["idx"] for r in _store(tmp_path / "run").steps()]
    assert sorted(idx) == list(range(per_thread * n_threads))


def _steps_on_threads(run: Path, per_thread: int, n_threads: int) -> None:
    with greentrack.Tracker(run, **FAST) as t:
        def work() -> None:
            for _ in range(per_thread):
                with t.step(samples=1):
                    pass
        threads = [threading.Thread(target=work) for _ in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()


def test_a_million_fast_steps_are_counted_once(no_host_env: Path, tmp_path: Path) -> None:
    n = 500_000  # on 85faba8 this stored 763,368 rows; stop() took 8 s and called it a hung read
    t = greentrack.Tracker(tmp_path / "run").start()
    for _ in range(n):
        with t.step(samples=2):
            pass
    t0, cpu0 = time.monotonic(), time.process_time()
    t.stop()
    # the work stop() does, in CPU seconds of all threads (a loaded host stretches the wall time,
    # not the work); the wall bound is a hang guard
    assert time.process_time() - cpu0 < 5.0
    assert time.monotonic() - t0 < 60.0
    s = greentrack.summarize(tmp_path / "run")
    assert s["steps"] == n and s["status"] == "completed" and s["warnings"] == []
    rows = _store(tmp_path / "run").steps()
    assert sum(r["n"] for r in rows) == n and sum(r["samples"] for r in rows) == 2 * n
    kinds = {e["kind"] for e in _store(tmp_path / "run").events()}
    assert "sampler-hung" not in kinds


def test_a_stalled_sampler_coalesces_instead_of_queueing(no_host_env: Path, tmp_path: Path) -> None:
    t = greentrack.Tracker(tmp_path / "run", **FAST).start()
    engine = t.engine
    assert engine is not None
    n = 3 * MAX_BACKLOG
    with engine._account_lock:  # the sampler thread cannot attribute: it falls behind
        for i in range(n):
            with t.step("train" if i % 3 else "eval", samples=1, tokens=torch.tensor(2)):
                pass
        assert len(engine.steps) <= MAX_BACKLOG  # bounded: the rest are merged rows
        assert 0 < len(engine.steps._overflow) <= 2
    t.stop()
    rows = _store(tmp_path / "run").steps()
    assert len(rows) < n
    assert sum(r["n"] for r in rows) == n and sum(r["samples"] for r in rows) == n
    assert sum(r["tokens"] for r in rows) == 2 * n
    by_phase = greentrack.summarize(tmp_path / "run")["steps_by_phase"]
    assert by_phase == {"eval": n // 3, "train": n - n // 3}
    assert _store(tmp_path / "run").meta["steps_coalesced"] > 0


_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.decimals(allow_nan=True), st.fractions(),
    st.integers(-10**6, 10**6).map(np.int64), st.floats(width=32).map(np.float32),
    st.floats(allow_nan=True).map(torch.tensor), st.lists(st.integers(), max_size=3),
    st.just(object()), st.just(torch.zeros(2)))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(st.dictionaries(st.sampled_from(["samples", "tokens", "flops", "loss", "tag"]),
                                      _values, max_size=5), min_size=1, max_size=12))
def test_fuzz_steps_never_lose_the_record(steps: list[dict[str, Any]], no_host_env: Path,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    run = tmp_path_factory.mktemp("fuzz") / "run"
    with greentrack.Tracker(run, **FAST) as t:
        for info in steps:
            with t.step(**info):
                pass
    s = greentrack.summarize(run)
    assert s["status"] == "completed" and s["steps"] == len(steps)
    rows = _store(run).steps()
    assert [r["idx"] for r in rows] == list(range(len(steps)))
    for r in rows:
        for k in ("samples", "tokens", "flops"):
            assert r[k] is None or (math.isfinite(r[k]) and r[k] >= 0)
        json.loads(r["extra"], parse_constant=lambda c: pytest.fail(f"non-JSON {c} stored"))


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                    st.text(max_size=300), st.lists(st.integers(), max_size=3),
                    st.just(object()), st.just(Decimal("1.5")), st.just(np.float32(2.5)))
_NAMES = st.one_of(st.text(max_size=80), st.integers(), st.just(("a", 1)))


@settings(max_examples=400, deadline=None)
@given(extra=st.dictionaries(_NAMES, _VALUES, max_size=5),
       counts=st.tuples(*[st.one_of(st.none(), st.floats(), st.integers(-5, 2**65))] * 3))
def test_the_cleaners_fast_paths_keep_what_the_rules_keep(extra: dict[Any, Any],
                                                          counts: tuple[Any, ...]) -> None:
    """The sampler thread cleans plain fields inline (no call a field: a Lightning step carries
    its FLOPs method every step); what it keeps, drops and reports is what the rules
    (``stepvalues.count``, ``stepvalues.extra_value``) say, field by field."""
    from greentrack.engine import stepvalues
    from greentrack.engine.steps import FieldCleaner, StepSpan

    events: list[dict[str, Any]] = []
    cleaner = FieldCleaner(lambda *a, **k: events.append(k))
    span = StepSpan(1, "train", 1.0, 2.0, *counts, "host", dict(extra))
    flops, samples, tokens, kept = cleaner.clean(span)
    want_counts, bad = [], set()
    for name, value in zip(("flops", "samples", "tokens"), counts):
        got, why = (value, None) if value is None else stepvalues.count(name, value)
        want_counts.append(got)
        if why is not None:
            bad.add(name)
    want: dict[str, Any] = {}
    for name, value in extra.items():
        got, why = stepvalues.extra_value(value)
        if why is None:
            want[str(name)[:64]] = got
        else:
            bad.add(str(name)[:64])
    same = [a == b or (a != a and b != b) for a, b in zip((flops, samples, tokens), want_counts)]
    assert all(same), ((flops, samples, tokens), want_counts)
    assert json.dumps(kept, default=repr) == json.dumps(want, default=repr)
    assert set(cleaner.bad_fields) == bad
