"""Budgets of a run (greentrack.process.budget): known watts from fake powercap counters, real
trackers, the budget checked on the sampler thread. Bad budget settings: tests/bad_input/.

At 44 W (40 W package + 4 W DRAM) and PUE 1, a budget of ``B`` kWh is reached after
``B x 3.6e6 / 44`` seconds; steps of ``STEP_S`` make it a known step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.run import Run
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import FAST, report_json, run_cli, validate_own_schema

WATTS = {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}
W = sum(WATTS.values())
STEP_S = 0.05
#: 1.0 s of the run at 44 W, in kWh
BUDGET_KWH = W * 1.0 / 3.6e6
SETTINGS = {**FAST, "pue": 1.0, "carbon_intensity_g_per_kwh": 100.0}


def events(run_dir: Path, *kinds: str) -> list[dict[str, Any]]:
    with Run.open(run_dir) as run:
        found = run.events(*kinds)
    return [{**e, "details": json.loads(e["details"] or "{}")} for e in found]


@pytest.mark.slow  # seconds of a run at known watts
def test_plain_loop_reads_over_budget_and_stops(powercap: PowercapTree, tmp_path: Path) -> None:
    run = tmp_path / "run"
    steps = 0
    with LiveCounters(powercap, WATTS, period_s=0.001):
        with greentrack.Tracker(run, budget_kwh=BUDGET_KWH, on_budget="stop", **SETTINGS) as t:
            assert not t.over_budget
            for _ in range(200):  # 10 s without the budget
                with t.step():
                    time.sleep(STEP_S)
                steps += 1
                if t.over_budget:
                    break
    assert t.over_budget and t.budget_stop
    # 1 s of the run at 44 W: ~20 steps of 50 ms, plus what the sampler's cadence (0.1 s) and
    # a loaded machine add; far from the 200 planned
    assert 10 <= steps <= 40, steps
    (reached,) = events(run, "budget-reached")
    d = reached["details"]
    assert d["budget_kind"] == "energy" and d["budget"] == pytest.approx(BUDGET_KWH)
    assert d["spent_before"] is not None and d["spent_before"] < BUDGET_KWH <= d["spent"], d
    assert d["step"] <= steps and d["action"] == "stop"
    assert f"budget_kwh={BUDGET_KWH:g} reached at step {d['step']}" in reached["message"]


@pytest.mark.slow  # seconds of a run at known watts
def test_warn_goes_on_and_grams_and_cost_count_with_pue(powercap: PowercapTree,
                                                        tmp_path: Path) -> None:
    run = tmp_path / "run"
    # the kWh budget counts IT energy (the summary's energy_kwh): 1 s at 44 W whatever the PUE;
    # grams count with the PUE: at PUE 2 a budget of 1.5 s at PUE 1 is reached at 0.75 s
    grams = BUDGET_KWH * 1.5 * 100.0
    with LiveCounters(powercap, WATTS, period_s=0.001):
        with greentrack.Tracker(run, **{**SETTINGS, "pue": 2.0}, budget_kwh=BUDGET_KWH,
                                budget_grams=grams, budget_cost=1e6, electricity_price=0.3,
                                currency="EUR") as t:
            for _ in range(40):  # 2 s: both reached, training goes on
                with t.step():
                    time.sleep(STEP_S)
    assert t.over_budget and not t.budget_stop
    reached = {e["details"]["budget_kind"]: e for e in events(run, "budget-reached")}
    assert set(reached) == {"energy", "emissions"}  # the cost budget is far
    assert reached["emissions"]["details"]["step"] < reached["energy"]["details"]["step"]
    assert reached["energy"]["details"]["action"] == "warn"
    assert t.budget is not None
    status = {s["kind"]: s for s in t.budget.status()}
    assert status["cost"]["unit"] == "EUR" and 0 < status["cost"]["spent"] < 1e6


@pytest.mark.slow
def test_lightning_stops_within_one_step_of_its_budget_and_its_report_says_why(
        powercap: PowercapTree, tmp_path: Path) -> None:
    L = pytest.importorskip("lightning")
    pytest.importorskip("torch")
    from greentrack.integrations.lightning import GreenTrackCallback
    from tests.tiny_models import BATCH, Tiny, data, trainer

    class Slow(L.pytorch.callbacks.Callback):
        """Steps of a known length: the budget falls on a known step."""

        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(STEP_S)

    run = tmp_path / "run"
    callback = GreenTrackCallback(run, progress_every_s=None, log_every_s=0, budget_kwh=BUDGET_KWH,
                                  on_budget="stop", **SETTINGS)
    with LiveCounters(powercap, WATTS, period_s=0.001):
        t = trainer(tmp_path, [Slow(), callback], None, max_steps=200, limit_val_batches=0,
                    num_sanity_val_steps=0)
        t.fit(Tiny(), data(200 * BATCH))
    (reached,) = events(run, "budget-reached")
    d = reached["details"]
    # stopped within one step of the step the budget was reached at, long before max_steps
    assert d["step"] <= t.global_step <= d["step"] + 1 < 200
    # ...caught at the first check past it (a loaded host's sampler checks later, not less
    # surely: the overshoot is one check interval's energy, whatever that interval was)
    assert d["spent_before"] is not None and d["spent_before"] < BUDGET_KWH <= d["spent"], d
    summary = greentrack.summarize(run)
    (line,) = summary["budget"]
    assert line["stopped"] and line["reached_step"] == d["step"] and line["spent"] >= BUDGET_KWH
    from greentrack.reports.summary import format_summary
    assert f"reached at step {d['step']}; the run was stopped by its budget" in \
        format_summary(summary)
    code, out, err = run_cli(["report", str(run), "--format", "md,json", "--out",
                              str(tmp_path / "r")])
    assert code == 0, err
    text = next((tmp_path / "r").glob("*.md")).read_text()
    assert "the run was stopped by its budget" in text and "Budget: budget_kwh=" in text
    doc = report_json(tmp_path / "r")
    validate_own_schema(doc)
    (said,) = doc["run"]["budget"]
    assert said["stopped"] and said["reached_step"] == d["step"]
    assert said["spent"] == pytest.approx(doc["energy"]["it_kwh"])  # the summary's energy_kwh


@pytest.mark.slow
def test_hugging_face_trainer_stops_at_its_budget(powercap: PowercapTree, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import TrainerCallback

    from greentrack.integrations.transformers import GreenTrackTrainerCallback
    from tests.test_integrations_transformers import make

    class Slow(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(STEP_S)

    run = tmp_path / "run"
    callback = GreenTrackTrainerCallback(run, progress_every_s=None, budget_kwh=BUDGET_KWH,
                                         on_budget="stop", **SETTINGS)
    with LiveCounters(powercap, WATTS, period_s=0.001):
        trainer, _ = make(tmp_path / "out", 200, callback, logging_steps=1000)
        trainer.add_callback(Slow())
        trainer.train()
    (reached,) = events(run, "budget-reached")
    step = reached["details"]["step"]
    assert step <= trainer.state.global_step <= step + 1 < 200
    assert greentrack.summarize(run)["budget"][0]["stopped"]


@pytest.mark.slow  # seconds of a run at known watts
def test_forecast_warns_naming_the_step(powercap: PowercapTree, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """A plain loop with a training meter (its forecast): 100 planned steps of 50 ms at 44 W
    is 5 s; a budget of 2 s is passed, and the forecast says so long before the budget."""
    from greentrack.training.meter import TrainingMeter
    run = tmp_path / "run"
    with LiveCounters(powercap, WATTS, period_s=0.001):
        with greentrack.Tracker(run, budget_kwh=2 * BUDGET_KWH, **SETTINGS) as t:
            assert t.budget is not None
            t.budget.forecast_every_s = 0.2  # 15 s in a real run: this one lasts 1.5 s
            meter = TrainingMeter(t, planned_steps=100, progress_every_s=None)
            for _ in range(30):  # 1.5 s: forecast seen, the budget not reached
                meter.begin("train")
                time.sleep(STEP_S)
                meter.end()
            meter.close()
    assert not t.over_budget
    (said,) = events(run, "budget-forecast")
    d = said["details"]
    assert 3 <= d["step"] < 30 and d["forecast_low"] > 2 * BUDGET_KWH
    # 2 s of a 5 s run: near step 40 (the time before the first step makes it earlier)
    assert 25 <= d["reached_near_step"] <= 42, d
    assert f"at step {d['step']}, the forecast says the run will pass budget_kwh=" in \
        said["message"]
    assert any(f"at step {d['step']}, the forecast says" in r.getMessage() for r in caplog.records)
    (line,) = greentrack.summarize(run)["budget"]
    assert line["forecast_step"] == d["step"] and line["reached_step"] is None


@pytest.mark.slow  # a second of a run at known watts
def test_prometheus_budget_gauges_pass_promtool(powercap: PowercapTree, tmp_path: Path) -> None:
    from greentrack.exporters.prometheus import PrometheusExporter
    from tests.helpers import families
    from tests.servers import http_get, promtool
    with LiveCounters(powercap, WATTS, period_s=0.001):
        with greentrack.Tracker(tmp_path / "run", prometheus_port=0, budget_kwh=BUDGET_KWH,
                                budget_grams=1e6, budget_cost=5.0, electricity_price=0.3,
                                currency="EUR", **SETTINGS) as t:
            while not t.over_budget:
                time.sleep(STEP_S)
            exporter = t.sinks[0]
            assert isinstance(exporter, PrometheusExporter)
            text = http_get(exporter.url).decode()
    fams = families(text)
    assert fams["greentrack_budget_energy_joules"].samples[0].value == pytest.approx(W * 1.0)
    assert fams["greentrack_budget_emissions_grams"].samples[0].value == 1e6
    (cost,) = fams["greentrack_budget_cost"].samples
    assert cost.value == 5.0 and cost.labels["currency"] == "EUR"
    spent = {s.labels["kind"]: s.value for s in fams["greentrack_budget_spent_ratio"].samples}
    assert 1.0 <= spent["energy"] < 1.5 and 0 < spent["emissions"] < 1e-3 and 0 < spent["cost"] < 1
    assert not fams["greentrack_budget_forecast_ratio"].samples  # no training meter: no forecast
    check = promtool("check", "metrics", stdin=text)
    assert check.returncode == 0, check.stdout + check.stderr


CHILD = """
import time, greentrack
t = greentrack.Tracker().start()
n = 0
while not t.over_budget and n < 400:  # 20 s without the budget
    with t.step():
        time.sleep(0.05)
    n += 1
t.stop()
print(n)
"""


@pytest.mark.slow
def test_greentrack_run_hands_the_budget_to_the_commands_tracker(tmp_path: Path) -> None:
    """`greentrack run --budget-kwh --on-budget stop`: the command's own tracker (which joined
    the run) applies it, and the summary that `greentrack run` prints says the budget stopped it."""
    import subprocess
    import sys

    from tests.helpers import python_env
    tree = PowercapTree(tmp_path / "powercap")
    env = python_env(GREENTRACK_INTERVAL_S="0.02", GREENTRACK_COUNTER_INTERVAL_S="0.1",
                     GREENTRACK_FLUSH_INTERVAL_S="0.2", **tree.env)
    with LiveCounters(tree, WATTS, period_s=0.001):
        out = subprocess.run([sys.executable, "-m", "greentrack", "run", "--run-dir",
                              str(tmp_path / "run"), "--pue", "1", "--budget-kwh",
                              repr(BUDGET_KWH), "--on-budget", "stop", "--", sys.executable,
                              "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 5 <= int(out.stdout.split()[-1]) <= 40, out.stdout
    assert "the run was stopped by its budget" in out.stderr, out.stderr
