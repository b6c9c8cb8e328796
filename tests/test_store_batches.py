"""What the sampler thread commits goes to SQLite in few statements, row for row.

Python's sqlite3 lets go of the GIL at every statement it steps and takes it back after. Beside a
training thread that holds the GIL (a Python-bound loop: Lightning's ~1 ms steps), each take-back
waits out the interpreter's switch interval: a commit of 500 step rows, one statement each, kept
the sampler thread 0.8 s in one flush and handed the GIL back and forth 500 times (issue 25).
Runs of one ``INSERT ... VALUES`` now go as multi-row inserts; what SQLite refuses is still found
row by row and set aside, the rest committed. The engine resolves a batch of steps per channel in
one pass; a step that pass cannot take is tried alone, the others kept.
"""

from __future__ import annotations

import json
import math
import sqlite3
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greentrack.engine.engine import Engine
from greentrack.engine.steps import StepSpan
from greentrack.store import StoreReader, StoreWriter
from greentrack.store.layout import StepRow
from greentrack.store.writer import MAX_ROWS
from tests.helpers import engine_on_a_fake_gpu

ROW = StepRow(0, "train", 0.0, 1.0, 1.0, 2.5, 1.0, None, 1.0, None, 256.0, None, "host", {})


def _statements(writer: StoreWriter) -> list[str]:
    """The statements the writer's connection runs (a trigger's run is traced as its statement
    again, once per row: repeats in a row are one statement)."""
    seen: list[str] = []
    writer._conn.set_trace_callback(lambda sql: None if seen and seen[-1] == sql else
                                    seen.append(sql))
    return seen


def test_a_thousand_steps_commit_in_a_few_statements(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path, 0, {"run_id": "r"})
    seen = _statements(w)
    w.add_steps([ROW._replace(idx=i, t0=float(i), t1=i + 0.5) for i in range(1000)])
    for i in range(300):
        w.add_sample(1, float(i), 1.0, 0.5)
    w.flush()
    w.close()
    ours = [s for s in seen if not s.startswith(("--", "PRAGMA"))]
    # 1,300 rows of the steady statements go through the inbox view, MAX_ROWS (1,024) a statement,
    # its rows padded to a size SQLite's statement cache keeps: one statement per row before
    # (1,300 hand-overs of the GIL in one commit), then one per power of two in a run's length
    assert [" ".join(s.split()[:3]) for s in ours] == [
        "BEGIN", "INSERT INTO inbox", "INSERT INTO inbox", "COMMIT"], ours
    # every row taken: one transaction, no savepoint per run (two more statements each)
    assert not [s for s in ours if s.startswith(("SAVEPOINT", "RELEASE"))], ours
    r = StoreReader(w.path)
    assert [s["idx"] for s in r.steps()] == list(range(1000))
    assert len(r.samples()) == 300


@pytest.mark.parametrize("n", [*range(1, 41), 63, 64, 65, 511, 512, 513, MAX_ROWS - 1, MAX_ROWS,
                               MAX_ROWS + 1, 2 * MAX_ROWS + 7])
def test_a_run_of_any_length_reads_back_row_for_row_in_its_order(tmp_path: Path, n: int) -> None:
    """Every length of run, padded or not, split or not: each row once, in its order; an
    ``INSERT OR REPLACE`` run that names a key twice keeps the later row, as row by row."""
    w = StoreWriter(tmp_path, 0, {"run_id": "r"})
    w.add_steps([ROW._replace(idx=i, t0=float(i), t1=i + 0.5, samples=float(i % 7)) for i in range(n)])
    for i in range(n):
        w.add_sample(1, float(i % max(1, n - 3)), 1.0, i / 7.0)  # the last 3 replace earlier ones
    w.set_meta({f"k{i}": i for i in range(min(n, 50))})
    w.flush()
    w.close()
    r = StoreReader(w.path)
    steps = r.steps()
    assert [(s["idx"], s["samples"]) for s in steps] == [(i, float(i % 7)) for i in range(n)]
    assert [s["id"] for s in steps] == sorted(s["id"] for s in steps)
    want = {float(i % max(1, n - 3)): i / 7.0 for i in range(n)}
    assert {s["t"]: s["energy_j"] for s in r.samples()} == want
    assert all(r.meta[f"k{i}"] == i for i in range(min(n, 50)))


_INFO = {"kind": "gpu", "device": "gpu0", "name": "H100", "method": "nvml-energy-counter",
         "measured": True, "source": "NVML", "uncertainty": "+-5%", "host_scope": False,
         "details": {}}


@pytest.mark.parametrize("refused", [None, 3])
def test_every_channels_totals_go_in_one_statement_and_the_last_of_each_stays(
        tmp_path: Path, refused: int | None) -> None:
    """A flush updates each channel's totals: one statement for all (not one a channel, each
    two GIL hand-overs); a channel updated twice keeps the later values, as row by row, and a
    row SQLite refuses is set aside with the others applied."""
    w = StoreWriter(tmp_path, 0, {"run_id": "r"})
    for c in range(1, 6):
        w.add_channel(c, {**_INFO, "device": f"gpu{c}"})
    w.flush()
    seen = _statements(w)
    for c in range(1, 6):
        w.update_channel(c, c * 10.0, c * 2.0, c * 0.1, "ok")
    w.update_channel(2, 99.0, 98.0, 0.5, "lost")  # later in the same flush: it stays
    if refused is not None:
        w.update_channel(refused, object(), 1.0, 0.0, "ok")  # type: ignore[arg-type]
    w.flush()
    w.close()
    if refused is None:  # one statement (the inbox's); refused: then row by row
        assert [q.split()[:3] for q in seen if not q.startswith("PRAGMA")] == [
            ["INSERT", "INTO", "inbox"]], seen
    want = {c: (c * 10.0, c * 2.0, c * 0.1, "ok") for c in range(1, 6)}
    want[2] = (99.0, 98.0, 0.5, "lost")
    r = StoreReader(w.path)
    got = {ch["id"]: (ch["energy_j"], ch["until_t"], ch["gap_s"], ch["status"])
           for ch in r.channels()}
    assert got == want
    assert r.meta.get("rows_rejected", 0) == (refused is not None)


_STEADY = st.lists(st.tuples(st.sampled_from(["step", "sample", "meta", "channel"]),
                             st.integers(0, 30), st.booleans()), max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_STEADY)
def test_a_steady_flush_is_one_statement_and_a_row_refused_inside_it_undoes_none_of_the_rest(
        tmp_path_factory: Any, rows: list[tuple[str, int, bool]]) -> None:
    """The steady statements (steps, samples, meta keys, channels' totals) go through the inbox
    view in one statement; a row that breaks a constraint while the triggers run (a NOT NULL:
    not at binding) fails that statement whole, and the batch is then written run by run and
    row by row: every other row once, in its order, the last of a key kept."""
    w = StoreWriter(tmp_path_factory.mktemp("store"), 0, {"run_id": "r"})
    for c in range(1, 4):
        w.add_channel(c, {**_INFO, "device": f"gpu{c}"})
    w.flush()
    seen = _statements(w)
    want_steps, want_samples, want_meta, want_channels, refused = [], {}, {}, {}, 0
    for n, (kind, key, bad) in enumerate(rows):
        if kind == "step":
            w.add_step(ROW._replace(idx=n, t0=float(key), phase=None if bad else "train"))
            if not bad:
                want_steps.append(n)
        elif kind == "sample":
            w.add_sample(1, float(key), 1.0, None if bad else n / 7.0)  # type: ignore[arg-type]
            if not bad:
                want_samples[float(key)] = n / 7.0
        elif kind == "meta":
            w.set_meta({f"m{key}": n})
            want_meta[f"m{key}"] = n
        else:
            c = 1 + key % 3
            w.update_channel(c, float(n), 1.0, 0.0, None if bad else "ok")  # type: ignore[arg-type]
            if not bad:
                want_channels[c] = float(n)
        refused += bad and kind != "meta"
    w.flush()
    w.close()
    if rows and not refused:
        assert [" ".join(q.split()[:3]) for q in seen if not q.startswith("PRAGMA")] \
            == ["INSERT INTO inbox"], seen
    r = StoreReader(w.path)
    assert [s["idx"] for s in r.steps()] == want_steps
    assert {s["t"]: s["energy_j"] for s in r.samples()} == want_samples
    assert {k: r.meta[k] for k in want_meta} == want_meta
    assert {ch["id"]: ch["energy_j"] for ch in r.channels() if ch["id"] in want_channels} \
        == want_channels
    assert r.meta.get("rows_rejected", 0) == refused


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(MAX_ROWS + 1, MAX_ROWS + 300), bad=st.data())
def test_a_refused_row_in_a_later_chunk_leaves_each_other_row_once(tmp_path_factory: Any, n: int,
                                                                     bad: Any) -> None:
    """A run longer than one multi-row statement, one row refused past the first: the chunks
    already inserted are rolled back before the run goes row by row (else written twice)."""
    at = bad.draw(st.integers(MAX_ROWS, n - 1))
    w = StoreWriter(tmp_path_factory.mktemp("store"), 0, {"run_id": "r"})
    w.add_steps([ROW._replace(idx=i, tokens=2**70 if i == at else None) for i in range(n)])
    w.flush()
    w.close()
    r = StoreReader(w.path)
    steps = r.steps()
    assert [s["idx"] for s in steps] == [i for i in range(n) if i != at]
    assert len({s["id"] for s in steps}) == n - 1
    assert r.meta["rows_rejected"] == 1


_ROWS = st.lists(st.one_of(
    st.tuples(st.just("step"), st.integers(0, 10**6), st.sampled_from(["ok", "bad_samples",
                                                                       "huge_tokens", "nan_extra"])),
    st.tuples(st.just("sample"), st.integers(0, 10**6), st.just("ok")),
    st.tuples(st.just("meta"), st.integers(0, 5), st.just("ok")),
    st.tuples(st.just("event"), st.integers(0, 10**6), st.just("ok"))), max_size=400)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_ROWS)
def test_every_row_reads_back_and_only_what_sqlite_refuses_is_set_aside(
        tmp_path_factory: Any, rows: list[tuple[str, int, str]]) -> None:
    w = StoreWriter(tmp_path_factory.mktemp("store"), 0, {"run_id": "r"})
    want_steps, want_samples, want_events, want_meta, refused = [], {}, [], {}, 0
    for n, (kind, key, how) in enumerate(rows):
        if kind == "step":
            row = ROW._replace(idx=n, t0=float(key), extra={"k": key})
            if how == "bad_samples":
                row, refused = row._replace(samples=object()), refused + 1  # cannot be bound
            elif how == "huge_tokens":
                row, refused = row._replace(tokens=2**70), refused + 1  # beyond SQLite's INTEGER
            elif how == "nan_extra":
                row = row._replace(extra={"x": math.nan})  # stored as null, not refused
                want_steps.append((n, {"x": None}))
            else:
                want_steps.append((n, {"k": key}))
            w.add_step(row)
        elif kind == "sample":
            w.add_sample(1, float(key), 1.0, key / 7.0)
            want_samples[float(key)] = key / 7.0  # INSERT OR REPLACE: the last one stays
        elif kind == "meta":
            w.set_meta({f"m{key}": n})
            want_meta[f"m{key}"] = n
        else:
            w.add_event(float(key), "info", "note", f"event {n}")
            want_events.append(f"event {n}")
    w.flush()
    w.close()
    r = StoreReader(w.path)
    assert [(s["idx"], json.loads(s["extra"])) for s in r.steps()] == want_steps
    assert {s["t"]: s["energy_j"] for s in r.samples()} == want_samples
    assert [e["message"] for e in r.events() if e["kind"] == "note"] == want_events
    assert {k: r.meta[k] for k in want_meta} == want_meta
    assert r.meta.get("rows_rejected", 0) == refused


def _engine(tmp_path: Path) -> tuple[Engine, StoreWriter]:
    engine, writer = engine_on_a_fake_gpu(tmp_path / "run")
    engine.states[0].timeline.extend([(0.0, 0.0), (10.0, 1000.0)])  # 100 W
    engine.states[0].next_bucket = 0.0
    return engine, writer


def _recorded(engine: Engine, writer: StoreWriter, spans: Any) -> StoreReader:
    """Submit ``spans``, resolve them as at stop, commit, close: the store as written."""
    for span in spans:
        engine.steps.submit(span)
    engine._attribute(final=True)
    engine._flush()
    writer.close()
    return StoreReader(writer.path)


def test_a_step_whose_window_is_not_two_times_is_dropped_and_the_rest_recorded(
        tmp_path: Path) -> None:
    engine, writer = _engine(tmp_path)
    bad: Any = "not a time"
    r = _recorded(engine, writer, (StepSpan(0, "train", 1.0, 2.0), StepSpan(1, "train", bad, 3.0),
                                   StepSpan(2, "train", 3.0, 4.5)))
    assert [(s["idx"], s["gpu_j"]) for s in r.steps()] == [(0, 100.0), (2, 150.0)]
    assert [e["details"] for e in r.events() if e["kind"] == "bad-step-field"] == [
        json.dumps({"field": "window", "reason": "t0 is str, not a time"})]
    assert not [e for e in r.events() if e["kind"] == "internal-error"]
    assert engine.tally.phase("train")["n"] == 2


#: Windows a careless caller of ``submit_window`` hands over: each refused, never the others lost
#: (text lost every step the sampler had taken with it; 1e300 made a step 1e300 s long).
_BAD_TIMES = st.sampled_from([math.nan, math.inf, -math.inf, "5", None, True, 1e300, -1e300, 2e9,
                              Decimal("1"), [1.0], object()])
#: ... and times that are times, whatever their type
_GOOD_TIMES = st.one_of(st.floats(0.0, 9.0), st.integers(0, 9), st.builds(np.float64,
                        st.floats(0.0, 9.0)), st.builds(Fraction, st.integers(0, 90), st.just(10)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(windows=st.lists(st.tuples(st.booleans(), _GOOD_TIMES, st.floats(0.0, 1.0), _BAD_TIMES,
                                  st.booleans()), min_size=1, max_size=30))
def test_every_step_with_a_real_window_is_recorded_whatever_the_others_hold(
        tmp_path_factory: Any, windows: list[tuple[bool, Any, float, Any, bool]]) -> None:
    engine, writer = _engine(tmp_path_factory.mktemp("run"))
    want, refused = [], 0
    for idx, (good, t0, length, bad, bad_end) in enumerate(windows):
        if good:
            engine.steps.submit(StepSpan(idx, "train", t0, float(t0) + length))
            want.append((idx, pytest.approx(100.0 * length, abs=1e-9)))  # 100 W throughout
        else:
            a, b = (1.0, bad) if bad_end else (bad, 2.0)
            engine.steps.submit(StepSpan(idx, "train", a, b))
            refused += 1
    r = _recorded(engine, writer, ())
    assert [(s["idx"], s["gpu_j"]) for s in r.steps()] == want
    assert r.meta.get("bad_step_fields", {}).get("window", 0) == refused
    assert not [e for e in r.events() if e["kind"] == "internal-error"]


def test_steps_resolved_in_a_batch_are_what_each_resolved_alone_gives(tmp_path: Path) -> None:
    engine, writer = _engine(tmp_path)
    cpu = engine.states[0]
    spans = [StepSpan(i, "train", 0.37 * i - 0.5, 0.37 * i + 0.2) for i in range(40)]
    got = [s["gpu_j"] for s in _recorded(engine, writer, spans).steps()]
    assert got == [max(0.0, cpu.timeline.between(s.t0, s.t1)) for s in spans]
    assert sqlite3.connect(writer.path).execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 40


def test_a_full_disk_inside_a_run_keeps_every_row_for_the_retry(tmp_path: Path) -> None:
    """SQLite's own failure (here: no page left, as on a full disk) in the middle of a run of
    multi-row inserts is the database's, not a row's: the commit fails, every row stays queued
    and the next flush writes each once."""
    from greentrack.common.errors import RunStoreError

    w = StoreWriter(tmp_path, 0, {"run_id": "r"})
    pages = w._conn.execute("PRAGMA page_count").fetchone()[0]
    w._conn.execute(f"PRAGMA max_page_count={pages + 2}")
    for i in range(3000):
        w.add_sample(1, float(i), 1.0, 1.0)
    w.add_steps([ROW._replace(idx=i, extra={"p": "x" * 100}) for i in range(3000)])
    try:
        w.flush()
    except RunStoreError as e:
        assert "full" in str(e)
    else:
        raise AssertionError("the commit went through a full database")
    assert len(w._pending) == 6000
    w._conn.execute("PRAGMA max_page_count=1000000")
    w.flush()
    w.close()
    r = StoreReader(w.path)
    assert [s["idx"] for s in r.steps()] == list(range(3000))
    assert len(r.samples()) == 3000 and r.meta.get("rows_rejected", 0) == 0


def test_a_listener_that_fails_at_every_step_is_one_event_and_a_count(tmp_path: Path) -> None:
    """A step listener (an exporter's histogram, a user's ``add_step_listener``) that raises at
    every step wrote one event per step before: a day at 500 steps a second is 43 million events.
    Now its first failure is an event and the rest a count; the steps, the other listeners and
    the live sums get every row."""
    engine, writer = _engine(tmp_path)
    seen: list[int] = []

    def broken(row: StepRow) -> None:
        raise RuntimeError("sink down")

    engine.step_listeners += [broken, lambda row: seen.append(row.idx)]
    for rnd in range(3):  # three batches: the count goes on across them
        for i in range(200):
            k = rnd * 200 + i
            engine.steps.submit(StepSpan(k, "train", k * 0.01, k * 0.01 + 0.005))
        engine._attribute(final=rnd == 2)
    engine._flush()
    writer.close()
    r = StoreReader(writer.path)
    assert len(r.steps()) == 600 and seen == list(range(600))
    failures = [e for e in r.events() if e["kind"] == "listener-error"]
    assert len(failures) == 1 and "sink down" in str(failures[0]["message"])
    assert r.meta["listener_errors"] == 600
    assert engine.tally.phase("train")["n"] == 600


def test_live_sums_that_fail_keep_the_stored_rows(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's rows and the live sums are kept apart: one failing never loses the other."""
    engine, writer = _engine(tmp_path)

    def broken(rows: list[StepRow]) -> None:
        raise ValueError("tally bug")

    monkeypatch.setattr(engine.tally, "observe_many", broken)
    r = _recorded(engine, writer, (StepSpan(k, "train", k * 0.1, k * 0.1 + 0.05)
                                   for k in range(50)))
    assert len(r.steps()) == 50
    assert [e["kind"] for e in r.events() if e["level"] == "error"] == ["internal-error"]


def test_a_listener_whose_error_cannot_be_told_still_costs_no_step(tmp_path: Path) -> None:
    """The listener and its exception are the user's objects: a ``__str__`` that raises, a
    name that is no text. The failure is still one event, the steps all recorded."""
    engine, writer = _engine(tmp_path)

    class Mute(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    class Odd:
        def __call__(self, row: StepRow) -> None:
            raise Mute()

    odd = Odd()
    odd.__qualname__ = 42  # type: ignore[attr-defined]
    engine.step_listeners.append(odd)
    r = _recorded(engine, writer, (StepSpan(k, "train", k * 0.05, k * 0.05 + 0.02)
                                   for k in range(100)))
    assert len(r.steps()) == 100 and r.meta["listener_errors"] == 100
    assert [e["message"] for e in r.events() if e["kind"] == "listener-error"] == [
        "step listener failed: Mute (further failures are counted in the store's meta "
        "listener_errors)"]
    assert not [e for e in r.events() if e["kind"] == "internal-error"]
