"""Fuzzing what files hand greentrack (issue 11): random intensity CSVs into ``greentrack report``,
random damage to a store beside an undamaged one into ``greentrack summary --json``.

Whatever the input: exit 0, 1 or 2 with one line on stderr for an error, never a traceback nor an
"internal error"; ``--json`` output is strict JSON; and the undamaged store is still counted in
full (nothing recorded is lost)."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import greentrack
from greentrack.store import SCHEMA_VERSION, store_paths
from tests.helpers import as_another_process, clean_env, make_run, run_cli

#: fuzzed stores and CSVs through the CLI: out of `make test-fast`
pytestmark = pytest.mark.slow


def strict_json(text: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=no_constant)


def check_outcome(code: int, err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (0, 1, 2), (code, err)
    if code:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("greentrack: "), err


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        yield make_run(root, steps=3)


# -- intensity CSVs --------------------------------------------------------------------------

NOW = float(int(time.time()))  # the recorded run is "now": times near it and far from it both matter
times = st.one_of(
    st.integers(-7200, 7200).map(lambda d: repr(NOW + d)),
    st.integers(-7200, 7200).map(lambda d: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW + d))),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-1e12, max_value=1e13).map(lambda x: f"{x:.3f}"),
    st.sampled_from(["9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00-14:00",
                     "2026-13-01", "", " ", "nan", "-inf", "1e309", "0x10", "now"]),
    st.text(max_size=8),
)
values = st.one_of(st.integers(0, 900).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.integers(-5, 2000).map(str), st.sampled_from(["", "fifty", "1e400", "-0"]))
headers = st.sampled_from(["start,g_per_kwh", "start,end,g_per_kwh", "timestamp,intensity,zone",
                           "Datetime (UTC),Zone Id,Carbon Intensity gCO₂eq/kWh (direct)", "a,b"])


@st.composite
def intensity_csv(draw: st.DrawFn) -> str:
    header = draw(headers)
    ncols = header.count(",") + 1
    lines = [header]
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 3)):  # mostly well-formed rows, so parsing and integration go deep
            cells = [draw(times) if "start" in h or "time" in h.lower() or h == "end" else draw(values)
                     for h in header.split(",")]
        else:
            cells = draw(st.lists(st.one_of(times, values), min_size=ncols - 1, max_size=ncols + 1))
        lines.append(",".join(cells))
    return "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=intensity_csv())
def test_fuzz_intensity_csv_report(recorded: Path, tmp_path_factory: pytest.TempPathFactory,
                                   text: str) -> None:
    work = tmp_path_factory.mktemp("csv")
    path = work / "i.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, work):
        code, out, err = run_cli(["report", str(recorded), "--intensity-csv", str(path), "--format",
                                  "json", "--country", "FR", "--out", str(work / "o")])
    check_outcome(code, err)
    if code == 0:
        doc = strict_json((work / "o" / "report.json").read_text(encoding="utf-8"))
        assert doc["summary"]["emissions_location_kg"] >= 0
    else:
        assert not (work / "o").exists()


# -- damaged stores --------------------------------------------------------------------------

BAD_VALUES = [-1.0, -1e300, math.inf, -math.inf, math.nan, 1e308, "NaN", "abc", None, 5e17]
COLUMNS = [("channels", "energy_j"), ("channels", "gap_s"), ("channels", "until_t"),
           ("samples", "energy_j"), ("samples", "t"), ("samples", "dt"), ("steps", "gpu_j"),
           ("steps", "cpu_j"), ("steps", "duration_s"), ("steps", "t0")]
sql_damage = st.lists(st.tuples(st.sampled_from(COLUMNS), st.sampled_from(BAD_VALUES),
                                st.integers(0, 3)), max_size=4)
byte_damage = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 200_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("truncate"), st.integers(0, 200_000), st.just(b""))), max_size=2)


def _apply_sql(store: Path, damage: list[tuple[tuple[str, str], Any, int]], newer: bool) -> None:
    conn = sqlite3.connect(store)
    for (table, column), value, modulo in damage:
        where = {"channels": "id", "samples": "CAST(t * 10 AS INTEGER)", "steps": "id"}[table]
        try:
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where} % 4 >= ?", (value, modulo))
        except sqlite3.IntegrityError:  # NaN/None into a NOT NULL column: SQLite refuses
            pass
    if newer:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()


def _apply_bytes(store: Path, damage: list[tuple[str, int, bytes]]) -> None:
    for kind, offset, junk in damage:
        data = bytearray(store.read_bytes())
        if not data:
            return
        offset %= len(data)
        if kind == "flip":
            data[offset:offset + len(junk)] = bytes(b ^ j for b, j in zip(data[offset:], junk))
        else:
            del data[offset:]
        store.write_bytes(bytes(data))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sql=sql_damage, raw=byte_damage, newer=st.booleans())
def test_fuzz_store_damage_summary(recorded: Path, tmp_path_factory: pytest.TempPathFactory,
                                   sql: list[Any], raw: list[Any], newer: bool) -> None:
    good = greentrack.summarize(recorded)
    run = tmp_path_factory.mktemp("dmg") / "run"
    shutil.copytree(recorded, run)
    other = run / "otherhost-r1-0badf00d.gtdb"
    shutil.copy(store_paths(run)[0], other)
    as_another_process(other)
    _apply_sql(other, sql, newer)
    for extra in (other.with_name(other.name + "-wal"), other.with_name(other.name + "-shm")):
        extra.unlink(missing_ok=True)
    _apply_bytes(other, raw)
    code, out, err = run_cli(["summary", "--json", str(run)])
    check_outcome(code, err)
    assert code == 0, err  # the undamaged store is always readable
    s = strict_json(out)
    assert s["stores"] == 2 and s["steps"] >= good["steps"]
    assert s["energy_j"]["total"] >= good["energy_j"]["total"] * (1 - 1e-9)  # nothing lost
    for v in s["energy_j"].values():
        assert v is None or (math.isfinite(v) and v >= 0)
    code, out, err = run_cli(["summary", str(run)])
    check_outcome(code, err)
    assert code == 0
