"""The rollup cells a store keeps of its samples (greentrack.store.writer.rollup_schema) stand for
the samples in reports and advice: same figures, and the samples are read again wherever the
cells cannot be trusted (a store written before them, a damaged table, a sample changed later)."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greentrack.common.config import Config
from greentrack.reports.advise import advise
from greentrack.reports.run_data import read_run
from greentrack.run import Run
from greentrack.run.queries import _COVER_SQL, STEP_J
from greentrack.store import VALID_STEP, store_paths
from tests.helpers import report_json, run_cli, run_sql, write_store

START = 1_767_225_600.0
#: 3 days at 12 s: 2-minute bins (two 60 s cells each), the rollups' path
DAYS_S, RES_S = 3 * 86400.0, 12.0
CHANNELS = (("gpu", 300.0, True), ("cpu", 90.0, True))


@pytest.fixture(scope="module")
def store_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("rollups") / "run"
    write_store(run, run_id="rollups", start_unix=START, duration_s=DAYS_S, resolution_s=RES_S,
                channels=CHANNELS, ramp=0.8, steps=50)
    return run


def _copy(run: Path, dest: Path, *statements: str) -> Path:
    shutil.copytree(run, dest)
    run_sql(store_paths(dest)[0], *statements)
    return dest


#: a store as greentrack wrote it before the rollups: no table, no triggers, no meta key
LEGACY = ("DROP TRIGGER rollup_replace", "DROP TRIGGER rollup_add", "DROP TRIGGER rollup_unusable",
          "DROP TRIGGER rollup_update", "DROP TRIGGER rollup_delete", "DROP TABLE rollups",
          "DELETE FROM meta WHERE key = 'rollup'")


def _report(run: Path, out: Path) -> dict[str, Any]:
    code, _, err = run_cli(["report", str(run), "--format", "json", "--out", str(out),
                            "--country", "FRA"])
    assert code == 0, err
    text = json.dumps(report_json(out)).replace(str(run), "RUN").replace(str(out), "OUT")
    return dict(json.loads(text.replace(run.parent.name, "PARENT")))


def _close(a: Any, b: Any, where: str = "") -> None:
    """Equal, numbers to a relative 1e-9 (sums in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            if k != "generated_at":
                _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-9), where
    else:
        assert a == b, where


def test_rollups_sum_to_the_samples(store_run: Path) -> None:
    """Each cell holds its samples' count, joules and span; together, every usable sample."""
    conn = sqlite3.connect(store_paths(store_run)[0])
    cells = {(c, k): (n, e, lo, tmax, hi) for c, k, n, e, lo, tmax, hi in
             conn.execute("SELECT channel_id, k, n, energy_j, lo, tmax, hi FROM rollups")}
    want: dict[tuple[int, int], list[Any]] = {}
    for c, t, dt, e in conn.execute("SELECT channel_id, t, dt, energy_j FROM samples"):
        k = math.floor((t + RES_S / 2) / 60.0)
        w = want.setdefault((c, k), [0, 0.0, t, t, t + dt])
        w[0] += 1
        w[1] += e
        w[2], w[3], w[4] = min(w[2], t), max(w[3], t), max(w[4], t + dt)
    totals = dict(conn.execute("SELECT id, energy_j FROM channels"))
    conn.close()
    assert len(cells) == len(want) == 2 * 3 * 1440
    for key, (n, e, lo, tmax, hi) in want.items():
        assert cells[key][0] == n and cells[key][2:] == (lo, tmax, hi), key
        assert cells[key][1] == pytest.approx(e, rel=1e-12), key
    for cid, total in totals.items():
        assert sum(v[1] for (c, _), v in cells.items() if c == cid) == pytest.approx(total,
                                                                                     rel=1e-9)


def test_report_from_rollups_equals_report_from_samples(store_run: Path, tmp_path: Path,
                                                        env: None) -> None:
    """The rollups are what the report reads (doubling them doubles its series), and the report
    equals that of the same store written before rollups existed (samples only)."""
    with Run.open(store_run) as run:
        assert run.segments[0].rollup() == (60.0, RES_S / 2)
        assert run.bin_s == 120.0
    fast = _report(store_run, tmp_path / "fast")
    legacy = _copy(store_run, tmp_path / "legacy", *LEGACY)
    with Run.open(legacy) as run:
        assert run.segments[0].rollup() is None
    slow = _report(legacy, tmp_path / "slow")
    assert not [w for w in fast["warnings"] if "rollup" in w]
    _close(fast, slow)
    doubled = _copy(store_run, tmp_path / "doubled", "UPDATE rollups SET energy_j = 2 * energy_j")
    twice = _report(doubled, tmp_path / "twice")
    assert twice["summary"]["energy_kwh"] == pytest.approx(fast["summary"]["energy_kwh"])
    assert twice != fast  # the series came from the (doubled) cells


@pytest.mark.parametrize("damage", [
    "UPDATE rollups SET energy_j = -1 WHERE k % 7 = 0",
    "UPDATE rollups SET n = 'x' WHERE k = 100",
    "DROP TABLE rollups",
    "UPDATE meta SET value = '{\"width_s\": -60, \"offset_s\": 6}' WHERE key = 'rollup'",
])
def test_damaged_rollups_fall_back_to_the_samples(store_run: Path, tmp_path: Path, env: None,
                                                  damage: str) -> None:
    """A damaged rollup table is a warning and the samples are read: the same report."""
    good = _report(_copy(store_run, tmp_path / "legacy", *LEGACY), tmp_path / "good")
    bad = _report(_copy(store_run, tmp_path / "bad", damage), tmp_path / "out")
    said = [w for w in bad["warnings"] if "rollups" in w]
    assert len(said) == 1 and "read from the samples" in said[0], bad["warnings"]
    bad["warnings"] = [w for w in bad["warnings"] if w not in said]
    _close(good, bad)


def test_a_sample_changed_later_retires_the_rollups(store_run: Path, tmp_path: Path,
                                                    env: None) -> None:
    """The store's triggers: a sample updated, deleted or replaced after it was rolled up
    deletes meta ``rollup``, so readers go back to the samples (and see their damage)."""
    for i, change in enumerate([
            "UPDATE samples SET energy_j = -5 WHERE t < 100",
            "DELETE FROM samples WHERE t < 100",
            "INSERT OR REPLACE INTO samples VALUES (1, 0.0, 12.0, 1.0)",
            "INSERT INTO samples VALUES (1, -1.0, 12.0, -1.0)"]):
        run = _copy(store_run, tmp_path / f"run{i}", change)
        with Run.open(run) as r:
            assert "rollup" not in r.segments[0].meta, change
            assert r.segments[0].rollup() is None
    report = _report(tmp_path / "run0", tmp_path / "out")
    assert any("samples: " in w and "left out" in w for w in report["warnings"])


def test_advice_reads_no_step_detail(store_run: Path) -> None:
    """``greentrack advise`` reads the run without per-step joules and step coverage (a scan of
    every step less each): its findings are those of the full read the report makes."""
    lean, full = read_run(store_run, step_detail=False), read_run(store_run)
    assert not lean.step_energies_j and not lean.step_cells
    assert full.step_energies_j["train"] and full.step_cells  # what it would have read
    config = Config(country="FRA")
    assert advise(lean, config) == advise(full, config)


@pytest.fixture(scope="module")
def steps_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("scan") / "run"
    write_store(run, run_id="scan", start_unix=START, duration_s=600.0, resolution_s=60.0)
    return run


_window = st.tuples(st.sampled_from(["train", "validation", "x"]), st.floats(-10.0, 50.0),
                    st.floats(-1.0, 5.0), st.one_of(st.floats(0.0, 1e3), st.just(-1.0)))


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(windows=st.lists(_window, max_size=40), shuffle=st.booleans(), data=st.data())
def test_one_step_scan_gives_what_the_sql_gives(steps_store: Path, windows: list[Any],
                                                shuffle: bool, data: st.DataObject) -> None:
    """The report reads each step's joules and the windows' cover in one scan, streamed in the
    order rows were written (the engine writes them by start): equal to the SQL it replaces
    (`_COVER_SQL`'s sorted window, the energies' query) for rows in any order, overlapping,
    nested, backwards (t1 < t0) or unusable (a negative joule count)."""
    rows = sorted(windows, key=lambda w: (w[1], w[1] + w[2]))
    if shuffle:
        rows = data.draw(st.permutations(rows))
    (store,) = store_paths(steps_store)
    run_sql(store, "DELETE FROM steps", *(
        f"INSERT INTO steps (idx, phase, t0, t1, duration_s, gpu_j, n) VALUES "
        f"({i}, '{p}', {t0!r}, {t0 + d!r}, {abs(d)!r}, {e!r}, 1)"
        for i, (p, t0, d, e) in enumerate(rows)))
    with Run.open(steps_store) as run:
        (seg,) = run.segments
        energies, cover = seg.step_energies(), seg.step_cover()
        (want,) = seg.reader.rows(_COVER_SQL)
        by_sql = seg.reader.rows(f"SELECT phase, CAST({STEP_J} AS REAL) AS e FROM steps "
                                 f"WHERE {VALID_STEP} ORDER BY id")
    assert cover == pytest.approx((want["u"] or 0.0, want["s"] or 0.0), rel=1e-12, abs=1e-12)
    assert {p: list(v) for p, v in energies.items()} == {
        p: [r["e"] for r in by_sql if r["phase"] == p] for p in {r["phase"] for r in by_sql}}
