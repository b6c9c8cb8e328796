"""Issue 14: labels, recorded metrics with their energy, energy to a target, fair comparison."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import greentrack
from greentrack.common.config import Config
from greentrack.run import Run, metric_points, to_target
from tests.helpers import RUN_FAST, clean_env, make_run, run_cli


def _tracked(run_dir: Path, losses: list[float], labels: dict[str, str] | None = None,
             steps_per_record: int = 1, **info: float) -> Path:
    with greentrack.Tracker(run_dir, labels=labels or {}, **RUN_FAST) as tr:
        for loss in losses:
            for _ in range(steps_per_record):
                with tr.step(**info):
                    time.sleep(0.01)
            tr.record(loss=loss)
    return run_dir


def test_labels_from_tracker_env_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path):
        _tracked(tmp_path / "a", [1.0], labels={"precision": "bf16", "method": "lora"})
        with Run.open(tmp_path / "a") as run:
            assert run.labels == {"precision": "bf16", "method": "lora"}
        monkeypatch.setenv("GREENTRACK_LABELS", "precision=fp8,sparsity=0.5")
        assert Config.from_env().labels == {"precision": "fp8", "sparsity": "0.5"}
        monkeypatch.delenv("GREENTRACK_LABELS")
        code, out, err = run_cli(["run", "--run-dir", str(tmp_path / "c"), "--quiet",
                                  "--label", "precision=int8", "--label", "batch_size=32", "--",
                                  "true"])
        assert code == 0, err
        with Run.open(tmp_path / "c") as run:
            assert run.labels == {"precision": "int8", "batch_size": "32"}
        code, out, err = run_cli(["report", str(tmp_path / "c"), "--format", "json,md",
                                  "--out", str(tmp_path / "rep")])
        assert code == 0, err
        doc = json.loads((tmp_path / "rep" / "report.json").read_text())
        assert doc["run"]["labels"] == {"precision": "int8", "batch_size": "32"}
        assert "batch_size=32, precision=int8" in (tmp_path / "rep" / "report.md").read_text()


def test_metrics_carry_cumulative_energy_and_target_is_interpolated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path):
        d = _tracked(tmp_path / "r", [3.0, 2.8, 2.6, 2.4, 2.2, 2.0], tokens=100)
        with Run.open(d) as run:
            pts = metric_points(run, "loss")
            assert [p.value for p in pts] == [3.0, 2.8, 2.6, 2.4, 2.2, 2.0]
            assert [p.step for p in pts] == [1, 2, 3, 4, 5, 6]
            assert all(b.energy_j >= a.energy_j for a, b in zip(pts, pts[1:]))
            t = to_target(run, "loss", "<=", 2.5)
            # 2.5 lies halfway between the recordings 2.6 and 2.4: exactly halfway in energy
            assert t.reached and t.energy_j == pytest.approx((pts[2].energy_j + pts[3].energy_j) / 2)
            assert t.steps == pytest.approx(3.5)
            assert t.duration_s == pytest.approx((pts[2].t_unix + pts[3].t_unix) / 2 - run.start_unix)
            miss = to_target(run, "loss", "<", 1.0)
            assert not miss.reached and miss.best == 2.0 and miss.energy_j is None
        code, out, err = run_cli(["compare", str(d), "--target", "loss<=2.5", "--json"])
        assert code == 0, err
        row = json.loads(out)["runs"][0]
        assert row["to_target"]["reached"] and row["to_target"]["energy_j"] == pytest.approx(t.energy_j)
        code, out, err = run_cli(["compare", str(d), "--target", "loss<1"])
        assert code == 0 and "not reached (best 2)" in out


@pytest.mark.parametrize("bad", ["loss", "loss=<2", "loss<=abc", "<=2", "loss<=inf"])
def test_bad_target_is_one_line(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path):
        d = _tracked(tmp_path / "r", [1.0])
        code, out, err = run_cli(["compare", str(d), "--target", bad])
    assert code == 2 and "--target" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_unequal_work_prints_no_totals_ratio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 303-step run against a 151-step run: never 'IT energy x0.5, better'."""
    with clean_env(monkeypatch, tmp_path):
        long = make_run(tmp_path, "long", steps=303, step_s=0.001, step_info={"tokens": 10})
        short = make_run(tmp_path, "short", steps=151, step_s=0.001, step_info={"tokens": 10})
        code, out, err = run_cli(["compare", str(long), str(short), "--json"])
        assert code == 0, err
        second = json.loads(out)["runs"][1]
        assert not second["equal_work"] and "steps 151 vs 303" in second["work_difference"]
        assert second["ratios"]["energy_kwh"] is None and second["ratios"]["duration_s"] is None
        assert second["ratios"]["joules_per_step"] is not None
        code, out, err = run_cli(["compare", str(long), str(short)])
    energy_line = next(line for line in out.splitlines() if line.startswith("IT energy"))
    assert "better" not in energy_line and "worse" not in energy_line
    assert "not the same work" in out and "steps 151 vs 303" in out


@pytest.mark.slow
def test_groups_mean_spread_and_noise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path):
        a = [make_run(tmp_path, f"a{i}", cpu_w=40.0, steps=4, step_s=0.05) for i in range(2)]
        b = [make_run(tmp_path, f"b{i}", cpu_w=40.0, steps=4, step_s=0.05) for i in range(2)]
        c = [make_run(tmp_path, f"c{i}", cpu_w=160.0, steps=4, step_s=0.05) for i in range(2)]
        argv = ["compare", str(a[0]), "--group", f"a={a[0]},{a[1]}", "--group", f"b={b[0]},{b[1]}",
                "--group", f"c={c[0]},{c[1]}"]
        code, out, err = run_cli(argv + ["--json"])
        assert code == 0, err
        groups = json.loads(out)["groups"]
        fa, fb = groups["a"]["figures"]["joules_per_step"], groups["b"]["figures"]["joules_per_step"]
        assert fa["n"] == 2 and fa["spread"] is not None
        runs = {r["run_dir"]: r for r in json.loads(out)["runs"]}
        assert fa["mean"] == pytest.approx(sum(runs[str(p)]["joules_per_step"] for p in a) / 2)
        assert groups["c"]["versus_baseline"]["joules_per_step"]["within_noise"] is False
        assert groups["c"]["versus_baseline"]["joules_per_step"]["ratio"] > 2
        del fb
        code, out, err = run_cli(argv)
    assert code == 0 and any(line.startswith("group c (2 runs)") and "worse" in line
                             for line in out.splitlines())


def test_a_store_without_the_metrics_table_reads_as_no_metrics(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written before ``metrics`` existed: no metrics, no damage; compare says so."""
    import sqlite3

    from greentrack.store import store_paths
    with clean_env(monkeypatch, tmp_path):
        d = _tracked(tmp_path / "old", [1.0, 0.5])
        for path in store_paths(d):
            with sqlite3.connect(path) as conn:
                conn.execute("DROP TABLE metrics")
                conn.execute("DELETE FROM meta WHERE key = 'labels'")
        with Run.open(d) as run:
            assert metric_points(run, "loss") == [] and run.labels == {}
            assert not any("metrics" in w for w in run.warnings)
            t = to_target(run, "loss", "<=", 0.7)
            assert not t.reached and t.best is None
        code, out, err = run_cli(["compare", str(d), "--target", "loss<=0.7"])
    assert code == 0 and "not reached (loss not recorded)" in out


def test_hostile_metric_rows_and_values_are_left_out(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from greentrack.store import store_paths
    with clean_env(monkeypatch, tmp_path):
        with greentrack.Tracker(tmp_path / "r", **RUN_FAST) as tr:
            with tr.step():
                time.sleep(0.01)
            tr.record(loss=float("nan"), acc="high", ok=1.5)  # bad values dropped, the rest kept
        (path,) = store_paths(tmp_path / "r")
        with sqlite3.connect(path) as conn:
            conn.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)",
                             [(1.0, 1, "ok", "text", 1.0), (1.0, 1, "ok", 2.0, -5.0),
                              (1e300, 1, "ok", 2.0, 1.0)])
        with Run.open(tmp_path / "r") as run:
            assert [p.value for p in metric_points(run, "ok")] == [1.5]
            assert metric_points(run, "loss") == [] and metric_points(run, "acc") == []
            assert any("metric 'loss' dropped" in w for w in run.warnings)


def test_compare_formats_md_html_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_env(monkeypatch, tmp_path):
        a = _tracked(tmp_path / "a<b>", [3.0, 2.0, 1.0], labels={"precision": "fp32"}, tokens=10)
        b = _tracked(tmp_path / "b", [3.0, 1.5, 0.5], labels={"precision": "bf16"}, tokens=10)
        base = ["compare", str(a), str(b), "--target", "loss<=1.5"]
        code, md, err = run_cli(base + ["--format", "md"])
        assert code == 0, err
        assert md.startswith("# greentrack compare") and "| labels | precision=fp32 |" in md
        code, html, err = run_cli(base + ["--format", "html"])
        assert code == 0, err
        assert html.count("<polyline") == 2 and "cumulative IT energy (mWh)" in html  # 2 short runs
        assert "a<b>" not in html and "a&lt;b&gt;" in html
        code, js, err = run_cli(base + ["--format", "json"])
        assert code == 0 and json.loads(js)["runs"][1]["labels"] == {"precision": "bf16"}
        code, out, err = run_cli(base + ["--format", "pdf"])
    assert code == 2 and "--format" in err


class _SlowEvent:
    """A CUDA event stand-in: not complete until ``done`` is set (the GPU still working)."""

    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done


class _Host:
    def __init__(self, v: float) -> None:
        self.v = v

    def item(self) -> float:
        return self.v


@pytest.mark.slow
def test_a_device_value_is_recorded_once_ready_with_the_energy_at_record_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path of ``record`` (``stepvalues.DeviceValue``): the training thread never waits;
    the sampler holds the record until the value is on the host, then stores the energy at the
    moment ``record`` was called, not when the value arrived."""
    from greentrack.engine.stepvalues import DeviceValue
    with clean_env(monkeypatch, tmp_path):
        value = object.__new__(DeviceValue)
        event = _SlowEvent()
        value.host, value.event = _Host(0.25), event
        with greentrack.Tracker(tmp_path / "r", **RUN_FAST) as tr:
            with tr.step():
                time.sleep(0.05)
            t0 = time.monotonic()
            tr.record(loss=value)
            # no wait on the training thread: waiting would take until `done`, 0.6 s later (the
            # bound leaves a loaded host its scheduling delays)
            assert time.monotonic() - t0 < 0.3
            time.sleep(0.6)  # several attribution passes: the record waits, it is not dropped
            event.done = True
            time.sleep(0.6)
        with Run.open(tmp_path / "r") as run:
            (p,) = metric_points(run, "loss")
            total = float(run.energy_j()["total"] or 0.0)
            assert p.value == 0.25 and p.step == 1
            assert 0 < p.energy_j < 0.6 * total  # the energy at record time, not 1.2 s later


def test_record_takes_any_step_value_and_drops_only_bad_ones(no_host_env: Path, tmp_path: Path) -> None:
    """A NumPy or tensor step is a step; a text step is left out of that record, not the record."""
    import numpy as np
    import torch

    from greentrack.run import Run, metric_points
    with greentrack.Tracker(tmp_path / "run", **RUN_FAST) as t:
        t.record(loss=torch.tensor(0.5), step=np.int64(3))
        t.record(loss=0.25, step=torch.tensor(7))
        t.record(loss=0.125, step="x")
    with Run.open(tmp_path / "run") as run:
        assert [(p.step, p.value) for p in metric_points(run, "loss")] == [(3, 0.5), (7, 0.25),
                                                                           (None, 0.125)]
