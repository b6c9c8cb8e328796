"""Issue 11, files: nothing a file, a shell or a training script hands greentrack may lose or
corrupt the record. Files read (intensity CSVs, damaged or hostile stores, copied runs) give
warnings or one clean error; files written (reports, run directories) are atomic, never followed
through a planted link, never world-writable, never a spreadsheet formula, never markup."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.store import SCHEMA_VERSION, StoreReader, StoreWriter, store_paths
from tests.helpers import (as_another_process, make_run, python_env, report_json, run_cli,
                           run_sql, validate_own_schema)


def _strict(text: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=no_constant)


def one_line_error(code: int, out: str, err: str, *words: str) -> str:
    assert code in (1, 2), (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("greentrack: "), err
    assert "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# -- files read: intensity CSV ---------------------------------------------------------------


# -- files read: damaged or hostile stores ---------------------------------------------------

def _damage(store: Path, kind: str) -> None:
    if kind == "negative-channel":
        run_sql(store, "UPDATE channels SET energy_j = -5e6")
    elif kind == "infinite-channel":
        run_sql(store, "UPDATE channels SET energy_j = 9e999")
    elif kind == "nan-channel":
        run_sql(store, "UPDATE channels SET energy_j = 'NaN'")
    elif kind == "negative-samples":
        run_sql(store, "UPDATE samples SET energy_j = -1e12 WHERE CAST(t * 10 AS INTEGER) % 2 = 0",
             "UPDATE samples SET energy_j = -3 WHERE t < 0.2")
    elif kind == "infinite-samples":
        run_sql(store, "UPDATE samples SET energy_j = 9e999 WHERE t < 0.3",
             "UPDATE samples SET t = 9e999 WHERE t > 0.45 AND t < 0.65")
    elif kind == "huge-sample-time":
        # one row a channel each ((channel_id, t) is the key: a run that reached two buckets in
        # a range made the update fail)
        one = ("WHERE t = (SELECT MIN(s.t) FROM samples s WHERE s.channel_id = samples.channel_id "
               "AND s.t > {} AND s.t < {})")
        run_sql(store, "UPDATE samples SET t = 1e15 " + one.format(0.45, 0.65),
             "UPDATE samples SET t = 5e8 " + one.format(0.25, 0.45))  # far, not invalid
    elif kind == "infinite-steps":
        run_sql(store, "UPDATE steps SET gpu_j = 9e999, cpu_j = -9e999, duration_s = 9e999")
    elif kind == "negative-steps":
        run_sql(store, "UPDATE steps SET cpu_j = -1e9, duration_s = -4")
    elif kind == "newer-schema":
        run_sql(store, f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    elif kind == "huge-times":
        run_sql(store, "UPDATE meta SET value = '1e300' WHERE key = 'started_unix'",
             "UPDATE meta SET value = '-1e300' WHERE key = 'duration_s'")
    elif kind == "bad-settings":
        run_sql(store, "UPDATE meta SET value = '{\"resolution_s\": -1, \"interval_s\": \"abc\", "
             "\"counter_interval_s\": 1e999}' WHERE key = 'settings'")
    elif kind == "not-sqlite":
        store.write_bytes(b"this is not a database, it is a text file\n" * 200)
    elif kind == "zero-bytes":
        store.write_bytes(b"")
    elif kind == "directory":
        store.unlink()
        store.mkdir()
    elif kind == "dangling-link":
        store.unlink()
        store.symlink_to(store.parent / "gone.gtdb-target")
    else:
        raise AssertionError(kind)


VALUE_DAMAGE = ["negative-channel", "infinite-channel", "nan-channel", "negative-samples",
                "infinite-samples", "huge-sample-time", "infinite-steps", "negative-steps",
                "huge-times", "bad-settings"]
#: the summary does not read samples (its figures are channel totals): the report says
SAMPLE_DAMAGE = {"negative-samples", "infinite-samples", "huge-sample-time"}
UNREADABLE = ["newer-schema", "not-sqlite", "zero-bytes", "directory", "dangling-link"]


def _summary_json(run: Path) -> tuple[int, dict[str, Any], str]:
    code, out, err = run_cli(["summary", "--json", str(run)])
    assert "Traceback" not in err and "internal error" not in err, err
    return code, (_strict(out) if out else {}), err


@pytest.mark.parametrize("kind", VALUE_DAMAGE + UNREADABLE)
def test_damaged_or_hostile_store_beside_a_good_one(good_run: Path, tmp_path: Path, env: None,
                                                    kind: str) -> None:
    """The damaged store is a warning (or its bad rows are); the good store is counted in full;
    summary --json is strict JSON; report and compare work."""
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    good = greentrack.summarize(good_run)
    other = run / "otherhost-r1-deadbeef.gtdb"
    shutil.copy(store_paths(run)[0], other)
    as_another_process(other)
    _damage(other, kind)
    code, s, err = _summary_json(run)
    assert code == 0, err
    if kind not in SAMPLE_DAMAGE:
        assert any("otherhost" in w for w in s["warnings"]), s["warnings"]
    total = s["energy_j"]["total"]
    assert total >= good["energy_j"]["total"] * 0.999  # nothing of the good store is lost
    if kind in UNREADABLE:
        assert total == pytest.approx(good["energy_j"]["total"])
    code, out, err = run_cli(["summary", str(run)])
    assert code == 0 and "Traceback" not in err and ("warning" in out or kind in SAMPLE_DAMAGE)
    code, out, err = run_cli(["report", str(run), "--country", "FR", "--out", str(tmp_path / "o")])
    assert code == 0 and "Traceback" not in err and "internal error" not in err, err
    assert "warning" in err
    doc = report_json(tmp_path / "o")
    validate_own_schema(doc)
    assert any("otherhost" in w for w in doc["warnings"]), doc["warnings"]
    code, out, err = run_cli(["compare", str(good_run), str(run), "--country", "FR", "--json"])
    assert code == 0 and "Traceback" not in err and "internal error" not in err, err
    _strict(out)


@pytest.mark.parametrize("kind", VALUE_DAMAGE + UNREADABLE)
def test_damaged_or_hostile_store_alone(good_run: Path, tmp_path: Path, env: None, kind: str) -> None:
    """Alone: warnings and valid output for damaged values, one clean error (non-zero) when no store
    of the directory can be read, in summary, report and compare alike."""
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    _damage(store_paths(run)[0], kind)
    code, s, err = _summary_json(run)
    if kind in UNREADABLE:
        one_line_error(code, "", err, "RUN_DIR=", "none of its stores can be read")
        code, out, err = run_cli(["summary", str(run)])
        one_line_error(code, out, err, "none of its stores can be read")
        for argv in (["report", str(run), "--out", str(tmp_path / "o")], ["compare", str(run)]):
            code, out, err = run_cli(argv)
            one_line_error(code, out, err, "none of its stores can be read")
        return
    assert code == 0 and (s["warnings"] or kind in SAMPLE_DAMAGE), err
    for v in s["energy_j"].values():
        assert v is None or v >= 0
    code, out, err = run_cli(["report", str(run), "--out", str(tmp_path / "o")])
    assert code == 0 and "Traceback" not in err and "internal error" not in err, err
    doc = report_json(tmp_path / "o")
    validate_own_schema(doc)
    assert any("damaged" in w for w in doc["warnings"]), doc["warnings"]
    code, out, err = run_cli(["compare", str(run), str(good_run)])
    assert code == 0 and "Traceback" not in err and "internal error" not in err, err


def test_newer_schema_says_upgrade(good_run: Path, tmp_path: Path, env: None) -> None:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    _damage(store_paths(run)[0], "newer-schema")
    code, out, err = run_cli(["summary", str(run)])
    one_line_error(code, out, err, "newer greentrack", f"schema_version {SCHEMA_VERSION + 1}")


# -- files read: a run copied while (or after) its writer was killed ---------------------------

KILLED = ("import sys, time, greentrack\n"
          "with greentrack.Tracker(sys.argv[1], interval_s=0.02, counter_interval_s=0.1,\n"
          "                        flush_interval_s=0.1) as t:\n"
          "    print('ready', flush=True)\n"
          "    while True:\n"
          "        with t.step(): time.sleep(0.02)\n")


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("killed")
    run = root / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env=python_env(GREENTRACK_POWERCAP_ROOT=str(root / "none")))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert list(run.glob("*.gtdb-wal")), "a killed writer leaves its WAL"
    return run


def _readonly_summary(run: Path) -> subprocess.CompletedProcess[str]:
    """``greentrack summary --json`` by a process that cannot write in ``run``: as root, one
    without the capabilities that bypass file permissions."""
    def drop() -> None:
        if os.geteuid() == 0:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
                assert libc.prctl(24, cap, 0, 0, 0) == 0  # PR_CAPBSET_DROP: gone after exec
    return subprocess.run([sys.executable, "-m", "greentrack", "summary", "--json", str(run)],
                          capture_output=True, text=True, env=python_env(), timeout=60,
                          preexec_fn=drop, cwd="/")


@pytest.mark.slow
def test_a_run_copied_with_its_wal_reads_the_same_even_read_only(killed_run: Path) -> None:
    original = greentrack.summarize(killed_run)
    assert original["steps"] > 10 and original["energy_j"]["total"] > 0
    base = Path(tempfile.mkdtemp(prefix="gt-ro-"))
    try:
        os.chmod(base, 0o755)
        copy = base / "copy"
        copy.mkdir()
        for f in killed_run.iterdir():  # run.json, *.gtdb, *.gtdb-wal: not the -shm, no lock dir
            if f.is_file() and not f.name.endswith("-shm"):
                shutil.copy(f, copy / f.name)
        os.chmod(copy, 0o555)
        for f in copy.iterdir():
            os.chmod(f, 0o444)
        out = _readonly_summary(copy)
        assert out.returncode == 0, out.stderr
        s = _strict(out.stdout)
        assert s["steps"] == original["steps"] and not s["warnings"], s["warnings"]
        assert s["energy_j"] == original["energy_j"]
        assert sorted(p.name for p in copy.iterdir()) == sorted(  # reading wrote nothing
            f.name for f in killed_run.iterdir() if f.is_file() and not f.name.endswith("-shm"))
    finally:
        os.chmod(base / "copy", 0o755)
        shutil.rmtree(base)


def test_a_run_copied_without_its_wal_says_what_is_missing(killed_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in killed_run.glob("*"):
        if f.suffix in (".json", ".gtdb"):
            shutil.copy(f, copy / f.name)
    code, out, err = run_cli(["summary", str(copy)])
    one_line_error(code, out, err, "-wal")


def test_a_checkpointed_store_copied_without_its_wal_keeps_its_data(tmp_path: Path) -> None:
    """StoreWriter.checkpoint() moves committed data from the WAL into the .gtdb file, so a copy of
    only the .gtdb files loses at most what came after the last checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    w = StoreWriter(run, 0, {"run_id": "ckpt", "status": "running", "started_unix": time.time(),
                             "heartbeat_unix": time.time()})  # as the engine's first flush
    w.add_channel(1, {"kind": "cpu", "device": "cpu0", "name": "cpu", "method": "m",
                      "measured": True, "source": "s", "uncertainty": "high", "host_scope": True,
                      "details": {}})
    w.update_channel(1, 42.0, 1.0, 0.0, "ok")
    w.flush()
    w.checkpoint()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(w.path, copy / w.path.name)
    r = StoreReader(copy / w.path.name)
    assert [c["energy_j"] for c in r.channels()] == [42.0]
    r.close()
    w.close()


def test_store_paths_with_uri_characters(good_run: Path, tmp_path: Path, env: None) -> None:
    run = tmp_path / "a?b#c%20d" / "run"
    shutil.copytree(good_run, run)
    code, s, err = _summary_json(run)
    assert code == 0 and not s["warnings"] and s["steps"] == 3, err


# -- files written ---------------------------------------------------------------------------

def test_report_set_is_atomic_an_error_leaves_out_as_it_was(good_run: Path, tmp_path: Path,
                                                             env: None) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.json").write_text("OLD")
    (out / "notes.txt").write_text("mine")
    bad = tmp_path / "bad"
    shutil.copytree(good_run, bad)
    for store in bad.glob("*.gtdb"):
        store.write_bytes(b"garbage" * 100)
    def listing() -> dict[Path, bytes | None]:
        return {p.relative_to(out): p.read_bytes() if p.is_file() else None for p in out.rglob("*")}
    before = listing()
    code, stdout, err = run_cli(["report", str(good_run), str(bad), "--country", "FR", "--out", str(out)])
    one_line_error(code, stdout, err, "none of its stores can be read")
    assert listing() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "o"]  # no temporary left
    code, stdout, err = run_cli(["report", str(good_run), "--out", str(out)])
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine" and report_json(out)["run"]["status"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "o"]


def test_report_writers_never_follow_a_planted_symlink(good_run: Path, tmp_path: Path, env: None) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out = tmp_path / "o"
    out.mkdir()
    for name in ("report.json", "report.md", "report.html", "emissions.csv", "boamps-report.json",
                 "model-card.md", "report-power.svg"):
        (out / name).symlink_to(outside)
    code, stdout, err = run_cli(["report", str(good_run), "--out", str(out)])
    assert code == 0, err
    assert outside.read_text() == "precious"
    for name in ("report.json", "report.md", "emissions.csv"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 100


def plant_run_id(run: Path, value: str) -> None:
    """A hostile run id in the run's files (Config refuses one at input; a file may hold anything)."""
    for path in store_paths(run):
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'run_id'", (json.dumps(value),))
    (run / "run.json").write_text(json.dumps({"run_id": value}))


def test_csv_cells_are_never_formulas(tmp_path: Path, env: None) -> None:
    run = make_run(tmp_path, name="=HYPERLINK(1)", steps=2, project_name="=HYPERLINK(1)")
    plant_run_id(run, "@SUM(1+1)")
    code, stdout, err = run_cli(["report", str(run), "--format", "csv", "--currency=EUR",
                                 "--out", str(tmp_path / "o")])
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "o" / "emissions.csv").read_text())))
    assert rows[0]["project_name"] == "'=HYPERLINK(1)" and rows[0]["run_id"] == "'@SUM(1+1)"
    for cell in rows[0].values():
        assert not cell or cell[0] not in "=+@\t\r" and not (cell[0] == "-" and not _number(cell))
    assert float(rows[0]["duration"]) > 0  # numbers stay numbers


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def test_created_directories_are_never_world_writable(tmp_path: Path) -> None:
    code = ("import os, sys, time, greentrack\nfrom greentrack.cli import main\nos.umask(0)\n"
            "with greentrack.Tracker(sys.argv[1], interval_s=0.02, counter_interval_s=0.1):\n"
            "    time.sleep(0.2)\n"
            "sys.exit(main(['report', sys.argv[1], sys.argv[1], '--out', sys.argv[2]]))\n")
    base = tmp_path / "base"
    base.mkdir()
    os.chmod(base, 0o755)
    out = subprocess.run([sys.executable, "-c", code, str(base / "a" / "b" / "run"),
                          str(base / "r" / "s" / "out")], capture_output=True, text=True, timeout=60,
                         env=python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "x")))
    assert out.returncode == 0, out.stderr
    paths = list(base.rglob("*"))
    assert {"run", "out", "s", "run_", "report.json"} <= {p.name for p in paths}
    for p in paths:
        mode = os.lstat(p).st_mode
        assert not mode & (stat.S_IWOTH | stat.S_IWGRP), (p, oct(mode))


HOSTILE = "evil\x1b[2J\x07\r<script>alert(1)</script>*[x](http://e)\u202e"


def test_ids_names_and_currency_carry_no_control_characters_or_markup(tmp_path: Path, env: None) -> None:
    run = make_run(tmp_path, name="run", steps=2)
    plant_run_id(run, HOSTILE)
    code, out, err = run_cli(["summary", str(run)])
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\u202e" not in out
    code, out, err = run_cli(["report", str(run), "--currency", "EUR\x1b]0;pwned\x07<b>",
                              "--electricity-price", "0.2", "--out", str(tmp_path / "o")])
    assert code == 2 and "currency=" in err and "\x1b" not in err  # refused at input, printable
    code, out, err = run_cli(["report", str(run), "--currency", "EUR", "--electricity-price", "0.2",
                              "--out", str(tmp_path / "o")])
    assert code == 0, err
    md = (tmp_path / "o" / "report.md").read_text()
    html = (tmp_path / "o" / "report.html").read_text()
    for text in (md, html, out, err):
        assert not any(c in text for c in "\x1b\x07\r\u202e")
    assert "<script>" not in md and "<b>" not in md and "<script>" not in html and "<b>" not in html
    assert "*[x](http" not in md and "\\[x\\]" in md
    assert report_json(tmp_path / "o")["run"]["run_id"] == HOSTILE  # the record keeps the value
    code, out, err = run_cli(["compare", str(run), str(run), "--currency", "\x1b[31mEUR",
                              "--electricity-price", "1"])
    assert code == 2 and "\x1b" not in out + err  # refused, and the refusal is printable
    code, out, err = run_cli(["compare", str(run), str(run), "--electricity-price", "1"])
    assert code == 0 and not any(c in out + err for c in "\x1b\x07\r\u202e")


def test_a_long_or_hostile_bad_value_is_cut_in_error_messages(good_run: Path, tmp_path: Path,
                                                               env: None) -> None:
    code, out, err = run_cli(["report", str(good_run), "--country", "x" * 5000 + "\x1b[2J"])
    line = one_line_error(code, out, err, "country=")
    assert len(line) < 400 and "\x1b" not in line
    code, out, err = run_cli(["summary", str(tmp_path / ("\x1b[2J" + "y" * 3000))])
    line = one_line_error(code, out, err, "RUN_DIR=")
    assert len(line) < 400 and "\x1b" not in line


@pytest.mark.slow
def test_summary_into_a_closed_pipe_ends_quietly(good_run: Path) -> None:
    for args in (["summary", str(good_run)], ["summary", "--json", str(good_run)], ["doctor"],
                 ["--help"]):
        r, w = os.pipe()
        os.close(r)
        proc = subprocess.run([sys.executable, "-m", "greentrack", *args], stdout=w,
                              stderr=subprocess.PIPE, text=True, env=python_env(), timeout=60)
        os.close(w)
        assert proc.stderr == "", (args, proc.stderr)
        assert proc.returncode in (0, 141), (args, proc.returncode)


def test_test_pushgateways_keep_no_groups_from_earlier_gateways(tmp_path: Path) -> None:
    import urllib.request
    import uuid

    from tests.servers import Pushgateway, require_binary
    binary = require_binary("prometheus-pushgateway")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    probe = f"gt_probe_{uuid.uuid4().hex[:8]}"
    first = Pushgateway(binary, tmp_path / "a")
    try:
        req = urllib.request.Request(f"{first.url}/metrics/job/{probe}", data=b"gt_probe 1\n",
                                     method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
            assert r.status in (200, 202)
        assert any(g["labels"].get("job") == probe for g in first.groups())
    finally:
        first.stop()  # persists its groups on the way out
    second = Pushgateway(binary, tmp_path / "b")
    try:
        assert not any(g["labels"].get("job") == probe for g in second.groups())
        assert second.groups() == []
    finally:
        second.stop()
