"""`greentrack compare`: two real runs whose devices draw known, different power."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import greentrack
from tests.helpers import clean_env, make_run, run_cli

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
    # half the power for the same work: about half the joules, twice the FLOPs per joule
    r = second["ratios"]
    assert r["joules_per_step"] == pytest.approx(0.5, rel=0.2)
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
    assert lines[-1].startswith("ratios are to the first run")
