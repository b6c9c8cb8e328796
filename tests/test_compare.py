"""`greentrack compare`: real runs whose devices draw known power; issue 26: runs named by what
tells them apart, `--baseline`, each ratio with its noise band, one note per cause, the target
drawn on the chart."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import greentrack
from greentrack.reports import svg
from greentrack.reports.compare import ratio_band, run_names
from greentrack.reports.compare_format import ratio_text
from tests.helpers import clean_env, make_lossy_run, make_run, measured_s, run_cli

INFO = {"samples": 8, "tokens": 1024, "flops": 4.0e9}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        a = make_run(root, "fp32", cpu_w=60.0, dram_w=6.0, steps=6, step_s=0.12, step_info=INFO)
        b = make_run(root, "bf16", cpu_w=30.0, dram_w=3.0, steps=6, step_s=0.12, step_info=INFO)
        yield a, b


@pytest.mark.slow
def test_ratios_follow_the_measured_energy(runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    with clean_env(monkeypatch, tmp_path):
        code, out, err = run_cli(["compare", str(runs[0]), str(runs[1]), "--json", "--country", "FR",
                                  "--electricity-price", "0.2", "--currency", "EUR"])
    assert code == 0, err
    result = json.loads(out)
    first, second = result["runs"]
    assert result["baseline"] == str(runs[0])
    sa, sb = greentrack.summarize(runs[0]), greentrack.summarize(runs[1])
    assert first["joules_per_step"] == pytest.approx(sa["energy_j"]["total"] / 6)
    assert second["joules_per_token"] == pytest.approx(sb["energy_j"]["total"] / (6 * 1024))
    assert second["flops_per_joule"] == pytest.approx(6 * 4.0e9 / sb["energy_j"]["total"])
    # half the power for the same work: half the joules per second each run measured (a loaded
    # host stretches one run's start or stop more than the other's: the ratio of joules per step
    # follows the seconds each measured, a CI run saw 0.66 against a flat 0.5 +- 20%)
    r = second["ratios"]
    expected = (33.0 * measured_s(runs[1])) / (66.0 * measured_s(runs[0]))
    assert r["joules_per_step"] == pytest.approx(expected, rel=0.05)
    assert r["joules_per_step"] < 0.8 * measured_s(runs[1]) / measured_s(runs[0])  # less per second
    assert r["joules_per_sample"] == pytest.approx(r["joules_per_step"])
    assert r["flops_per_joule"] == pytest.approx(1 / r["joules_per_step"])
    assert r["emissions_location_kg"] == pytest.approx(second["energy_kwh"] / first["energy_kwh"])
    assert r["cost_total"] == pytest.approx(r["emissions_location_kg"])
    assert first["ratios"]["joules_per_step"] == 1.0
    assert r["mfu"] is None and second["mfu"] is None  # no peak recorded: not a guess


def test_table_output(runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with clean_env(monkeypatch, tmp_path):
        code, out, err = run_cli(["compare", str(runs[0]), str(runs[1]), "--country", "FR"])
    assert code == 0, err
    lines = out.splitlines()
    assert "fp32" in lines[0] and "bf16" in lines[0]
    per_step = next(line for line in lines if line.startswith("energy per step"))
    assert "better" in per_step and "(x0." in per_step
    assert any(line.startswith("FLOPs per joule") and "better" in line for line in lines)
    assert any(line.startswith("ratios are to the baseline, ") for line in lines)


# -- issue 26 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """As the Lightning sweep of the issue: every run directory called ``greentrack``, told apart
    by its parent and its ``precision`` label; two bf16 runs alike, and a short one."""
    root = tmp_path_factory.mktemp("sweep")
    losses = [3.0, 2.5, 2.0, 1.5, 1.2, 1.0]
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        runs = {name: make_lossy_run(root / name / "greentrack", losses[:n],
                                     {"precision": precision, "method": "base"}, watts, root)
                for name, precision, watts, n in (("fp32", "32-true", 80.0, 6),
                                                  ("bf16a", "bf16-mixed", 40.0, 6),
                                                  ("bf16b", "bf16-mixed", 40.0, 6),
                                                  ("short", "16-mixed", 40.0, 3))}
        yield runs


def test_runs_are_named_by_their_differing_labels_never_one_basename(
        sweep: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with clean_env(monkeypatch, tmp_path):
        code, out, err = run_cli(["compare", *(str(p) for p in sweep.values()), "--json"])
    assert code == 0, err
    names = [r["name"] for r in json.loads(out)["runs"]]
    # the label that differs (precision), not the one all share (method); the two bf16 runs
    # told apart by the part of their directory that differs
    assert names == ["precision=32-true", "precision=bf16-mixed (bf16a)",
                     "precision=bf16-mixed (bf16b)", "precision=16-mixed"], names
    with clean_env(monkeypatch, tmp_path):
        code, out, err = run_cli(["compare", *(str(p) for p in sweep.values())])
    header = out.splitlines()[0]
    assert header.count("greentrack") == 0 and "precision=32-true (baseline)" in header


def test_names_without_labels_use_groups_then_the_distinguishing_path() -> None:
    def row(d: str, labels: dict[str, str] | None = None, run_id: str = "r") -> dict[str, object]:
        return {"run_dir": d, "labels": labels or {}, "run_id": run_id}

    rows = [row("sweep/fp32/greentrack"), row("sweep/bf16/greentrack")]
    assert run_names(rows, [None, None]) == ["fp32", "bf16"]
    assert run_names(rows, ["A", "B"]) == ["A", "B"]
    assert run_names(rows, ["A", "A"]) == ["A (fp32)", "A (bf16)"]
    same = [row("x/greentrack", {"p": "1"}), row("y/greentrack", {"p": "1"})]
    assert run_names(same, [None, None]) == ["x", "y"]
    assert run_names([row("a/b/run")], [None]) == ["run"]


def test_baseline_sets_what_the_ratios_are_to(sweep: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    dirs = [str(sweep["fp32"]), str(sweep["bf16a"])]
    with clean_env(monkeypatch, tmp_path):
        code, out, err = run_cli(["compare", *dirs, "--baseline", dirs[1] + "/", "--json"])
        assert code == 0, err
        result = json.loads(out)
        assert result["baseline"] == dirs[1] and result["baseline_name"] == "precision=bf16-mixed"
        fp32, bf16 = result["runs"]
        assert bf16["ratios"]["joules_per_step"] == 1.0 and bf16["ratio_bands"]["joules_per_step"] is None
        assert fp32["ratios"]["joules_per_step"] == pytest.approx(
            fp32["joules_per_step"] / bf16["joules_per_step"])
        # 84 W against 44 W, over the seconds each run measured (a loaded host stretches one
        # run's 30 ms sleeps more than another's: 1.2 for the 1.9 of equal spans)
        assert fp32["ratios"]["joules_per_step"] == pytest.approx(
            84.0 * measured_s(sweep["fp32"]) / (44.0 * measured_s(sweep["bf16a"])), rel=0.1)
        by_name, _, _ = run_cli(["compare", *dirs, "--baseline", "precision=bf16-mixed", "--json"])
        code, out, err = run_cli(["compare", *dirs, "--baseline", "nope"])
    assert by_name == 0
    assert code == 2 and "--baseline" in err and "precision=32-true" in err
    assert len(err.strip().splitlines()) == 1


def test_identical_runs_are_within_noise_never_better(sweep: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    twin = tmp_path / "twin" / "greentrack"
    shutil.copytree(sweep["bf16a"], twin)  # the same measurements: the same run twice
    with clean_env(monkeypatch, tmp_path):
        code, out, err = run_cli(["compare", str(sweep["bf16a"]), str(twin), str(sweep["fp32"]),
                                  "--json"])
        assert code == 0, err
        same, fp32 = json.loads(out)["runs"][1:]
        for key in ("joules_per_step", "joules_per_sample", "energy_kwh"):
            band = same["ratio_bands"][key]
            assert band["within_noise"] is True and band["low"] < 1.0 < band["high"], key
        # about twice the power is outside the bands (+-10% each): worse, not "within noise"
        assert fp32["ratio_bands"]["joules_per_step"]["within_noise"] is False
        code, out, err = run_cli(["compare", str(sweep["bf16a"]), str(twin), str(sweep["fp32"])])
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    per_step = rows["energy per step (J)"]
    assert per_step.count("within noise") == 1 and per_step.count("worse") == 1
    assert "better" not in per_step


@pytest.mark.slow
def test_runs_whose_groups_spread_wider_than_their_difference_are_within_noise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's sweep: each bf16 run was called "better" than the first fp32 run by less than
    the runs of one setting differ among themselves."""
    with clean_env(monkeypatch, tmp_path):
        a = [make_run(tmp_path, f"a{i}", cpu_w=w, steps=4, step_s=0.05) for i, w in
             enumerate((40.0, 100.0))]
        b = [make_run(tmp_path, f"b{i}", cpu_w=50.0, steps=4, step_s=0.05) for i in range(2)]
        argv = ["compare", str(a[0]), "--group", f"fp32={a[0]},{a[1]}",
                "--group", f"bf16={b[0]},{b[1]}"]
        code, out, err = run_cli(argv + ["--json"])
        assert code == 0, err
        runs = json.loads(out)["runs"]
        assert [r["name"] for r in runs] == ["fp32 (a0)", "fp32 (a1)", "bf16 (b0)", "bf16 (b1)"]
        for r in runs[2:]:
            band = r["ratio_bands"]["joules_per_step"]
            # (a ratio other than 1: 8a2bbe5 called it better or worse)
            assert r["ratios"]["joules_per_step"] != 1.0 and band["within_noise"] is True
            assert band["rel"] > 0.4  # the fp32 runs' spread, far above the +-10% band
        assert runs[1]["ratio_bands"]["duration_s"]["within_noise"] is True
        code, out, err = run_cli(argv)
    per_step = next(line for line in out.splitlines() if line.startswith("energy per step"))
    # the bf16 runs within noise, and the second fp32 run too: a repeat of the baseline's setting
    # (the screenshot's "x1.19, 1.01-1.4: worse" between two fp32 runs)
    assert per_step.count("within noise") == 3 and "worse" not in per_step


def test_the_band_is_the_quadrature_of_both_runs_noise() -> None:
    band = ratio_band(0.97, 0.10, 0.10)
    assert band["rel"] == pytest.approx(0.1414, rel=1e-3) and band["within_noise"]
    assert band["low"] == pytest.approx(0.97 / 1.1414, rel=1e-3)
    assert ratio_band(0.5, 0.10, 0.10)["within_noise"] is False
    assert ratio_band(0.97, None, 0.1)["within_noise"] is None


def test_unequal_work_is_said_once(sweep: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    with clean_env(monkeypatch, tmp_path):
        code, out, err = run_cli(["compare", str(sweep["short"]), str(sweep["fp32"]),
                                  str(sweep["bf16a"]), str(sweep["bf16b"])])
    assert code == 0, err
    assert out.count("not the same work") == 1, out
    note = next(line for line in out.splitlines() if "not the same work" in line)
    assert all(name in note for name in ("precision=32-true", "(bf16a)", "(bf16b)"))


def test_the_target_is_drawn_on_the_metric_chart(sweep: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    with clean_env(monkeypatch, tmp_path):
        code, out, err = run_cli(["compare", str(sweep["fp32"]), str(sweep["bf16a"]),
                                  "--target", "loss<=1.4", "--format", "html"])
    assert code == 0, err
    chart = ET.fromstring(out[out.index("<svg"):out.index("</svg>") + 6])
    ns = "{http://www.w3.org/2000/svg}"
    level = [ln for ln in chart.iter(f"{ns}line") if ln.get("stroke") == svg.LEVEL_COLOR
             and ln.get("x1") == str(svg.LEFT)]
    assert len(level) == 1 and level[0].get("y1") == level[0].get("y2")
    ticks = {float(t.text): float(t.get("y")) - svg.TICK_LABEL_DY for t in chart.iter(f"{ns}text")
             if t.get("text-anchor") == "end"}
    # the line sits at 1.4 on the y axis, between the ticks around it
    lo, hi = max(v for v in ticks if v <= 1.4), min(v for v in ticks if v >= 1.4)
    y = float(level[0].get("y1"))
    assert ticks[hi] - 0.6 <= y <= ticks[lo] + 0.6
    legend = "".join(t.text or "" for t in chart.iter(f"{ns}text"))
    assert "target loss<=1.4" in legend and "precision=32-true" in legend


@settings(max_examples=300, deadline=None)
@given(ratio=st.floats(0.01, 100.0), u=st.floats(0.0, 2.0), lower=st.booleans())
def test_the_printed_band_says_what_the_verdict_says(ratio: float, u: float, lower: bool) -> None:
    """A band printed "0.88-1" beside "better" (its upper end 0.9996, rounded) read as a lie."""
    band = ratio_band(ratio, u, 0.0)
    text = ratio_text(ratio, band, lower)
    lo, hi = (float(x) for x in re.search(r", ([^-]+)-([^:]+):", text).groups())
    assert (lo <= 1.0 <= hi) == band["within_noise"], text
    assert ("within noise" in text) == band["within_noise"], text
    assert ratio_text(0.94, {"low": 0.88, "high": 0.9996, "rel": 0.07, "within_noise": False},
                       True) == " (x0.94, 0.88-0.9996: better)"
