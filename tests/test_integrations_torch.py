"""Plain PyTorch: ``track_optimizer`` on real loops, real tracker, counters at known watts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.common.errors import ConfigError
from greentrack.store import StoreReader, store_paths
from greentrack.training.flops import count
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import FAST

torch = pytest.importorskip("torch")
from greentrack.integrations.torch import track_optimizer  # noqa: E402

#: real torch training loops: out of `make test-fast`
pytestmark = pytest.mark.slow

WATTS = {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}


def steps_of(run_dir: Path) -> list[dict[str, Any]]:
    rows = [r for p in store_paths(run_dir) for r in StoreReader(p).steps()]
    for r in rows:
        r["extra"] = json.loads(r["extra"])
    return rows


def model_and_opt() -> tuple[Any, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def test_each_optimizer_step_is_a_step_with_its_joules(powercap: PowercapTree, tmp_path: Path) -> None:
    model, opt = model_and_opt()
    run = tmp_path / "run"
    optimizer_steps = 0
    with LiveCounters(powercap, WATTS, period_s=0.001):
        t_begin = time.monotonic()
        with track_optimizer(opt, run, model=model, **FAST) as tracking:
            for _ in range(6):
                time.sleep(0.03)  # "data loading": not part of the step (model= given)
                for _ in range(3):  # gradient accumulation: 3 micro-batches, one step
                    model(torch.randn(8, 16)).sum().backward()
                    tracking.count(samples=8)
                    time.sleep(0.02)
                opt.step()
                optimizer_steps += 1
                opt.zero_grad()
        wall = time.monotonic() - t_begin
    rows = steps_of(run)
    assert [r["idx"] for r in rows] == list(range(optimizer_steps))
    assert all(r["phase"] == "train" and r["samples"] == 24 and r["timeline"] == "host" for r in rows)
    assert min(r["duration_s"] for r in rows) >= 0.06  # every micro-batch is in its step
    for r in rows:
        assert r["cpu_j"] == pytest.approx(40.0 * r["duration_s"], rel=0.1)
        assert r["dram_j"] == pytest.approx(4.0 * r["duration_s"], rel=0.1)
    assert sum(r["duration_s"] for r in rows) < wall - 6 * 0.03  # the data loading is not
    s = greentrack.summarize(run)
    assert s["status"] == "completed" and s["steps"] == optimizer_steps
    assert s["steps_energy_j"] <= s["energy_j"]["total"]


def test_without_a_model_steps_are_contiguous_and_other_phases_apart(no_host_env: Path,
                                                                      tmp_path: Path) -> None:
    model, opt = model_and_opt()
    run = tmp_path / "run"
    with track_optimizer(opt, run, **FAST) as tracking:
        for i in range(6):
            model(torch.randn(8, 16)).sum().backward()
            opt.step()
            opt.zero_grad()
            if i == 2:
                with tracking.step("validation", samples=8), torch.no_grad():
                    model(torch.randn(8, 16))
                    time.sleep(0.02)
    rows = sorted(steps_of(run), key=lambda r: r["t0"])
    assert [r["phase"] for r in rows].count("train") == 6
    assert [r["phase"] for r in rows].count("validation") == 1
    for a, b in zip(rows, rows[1:]):
        assert b["t0"] >= a["t1"] - 1e-9  # no overlap: no joule in two steps
    train = [r for r in rows if r["phase"] == "train"]
    gaps = [b["t0"] - a["t1"] for a, b in zip(train, train[1:])]
    assert sum(g == 0.0 for g in gaps) >= 4  # contiguous (one clock read), except around validation


def test_auto_flops_counts_the_first_step_once(no_host_env: Path, tmp_path: Path) -> None:
    model, opt = model_and_opt()
    x = torch.randn(8, 16)
    expected = count(lambda: model(x).sum().backward()).flops
    opt.zero_grad()
    run = tmp_path / "run"
    with track_optimizer(opt, run, model=model, flops="auto", **FAST):
        for _ in range(4):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
    rows = steps_of(run)
    assert [r["flops"] for r in rows] == [expected] * 4
    assert [r["extra"].get("flops_counted_here", False) for r in rows] == [True, False, False, False]
    assert all(r["extra"]["flops_method"] == "counted" for r in rows)
    assert all("mfu" not in r["extra"] for r in rows)  # CPU: no peak in the table
    events = [e for p in store_paths(run) for e in StoreReader(p).events() if e["kind"] == "flops"]
    assert len(events) == 1 and json.loads(events[0]["details"])["method"] == "counted"


def test_metrics_and_forecast_while_training(powercap: PowercapTree, tmp_path: Path) -> None:
    model, opt = model_and_opt()
    with LiveCounters(powercap, WATTS, period_s=0.001):
        tracking = track_optimizer(opt, tmp_path / "run", model=model, flops=1e9,
                                   samples_per_step=8, tokens_per_step=64, planned_steps=20, **FAST)
        for _ in range(10):
            model(torch.randn(8, 16)).sum().backward()
            time.sleep(0.02)
            opt.step()
            opt.zero_grad()
        tracking.metrics()  # the first observation of the forecast
        time.sleep(0.15)  # let the sampler attribute them
        for _ in range(2):
            model(torch.randn(8, 16)).sum().backward()
            opt.step()
        m = tracking.metrics()
        tracking.close()
    assert m["step_energy_j"] == pytest.approx(44.0 * m["step_duration_s"], rel=0.15)
    assert m["energy_per_sample_j"] == pytest.approx(m["step_energy_j"] / 8, rel=1e-6)
    assert m["energy_per_token_j"] == pytest.approx(m["step_energy_j"] / 64, rel=1e-6)
    assert m["flops_per_j"] == pytest.approx(1e9 / m["step_energy_j"], rel=1e-6)
    assert m["energy_j"] > 0 and m["steps"] >= 8 and "step_gpu_energy_j" not in m
    assert m["forecast_energy_j"] > m["energy_j"]  # 8 of 20 steps left
    assert "mfu" not in m


def test_a_tracker_passed_in_is_left_running(no_host_env: Path, tmp_path: Path) -> None:
    model, opt = model_and_opt()
    with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
        tracking = track_optimizer(opt, tracker, model=model)
        model(torch.randn(8, 16)).sum().backward()
        opt.step()
        tracking.close()
        assert tracker.running
        model(torch.randn(8, 16)).sum().backward()
        opt.step()  # the hook is gone: not a step
    assert greentrack.summarize(tmp_path / "run")["steps"] == 1


def test_a_finished_tracking_prints_no_progress_beside_the_next(no_host_env: Path, tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str]
                                                                ) -> None:
    """Two trainings one after the other on one tracker the caller keeps running: once the first
    closes, only the second's progress line is written. The first's meter stayed a watcher of the
    sampler thread and went on printing "step 20/20, forecast ..." with the tracker's growing
    energy between the second's lines."""
    model, _ = model_and_opt()
    with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
        for planned in (30, 40):
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            with track_optimizer(opt, tracker, model=model, planned_steps=planned,
                                 progress_every_s=0.1) as tracking:
                for _ in range(planned):
                    model(torch.randn(8, 16)).sum().backward()
                    opt.step()
                    time.sleep(0.02)  # 0.6-0.8 s of training: several lines each
            tracking.close()  # a second close releases nothing twice and raises nothing
            time.sleep(0.3)  # polls go on after a close: a stale watcher would write now
            lines = [line for line in capfd.readouterr().err.splitlines()
                     if line.startswith("greentrack: step")]
            assert lines, "no progress line at all"  # the check below looks at something
            assert all(f"/{planned}," in line for line in lines), lines
        assert tracker.engine is not None
        assert not [w for w in tracker.engine.watchers
                    if getattr(w, "__name__", "") == "_on_poll"], tracker.engine.watchers
        assert not [h for h in tracker.engine.holds
                    if getattr(h, "__name__", "") == "_earliest"], tracker.engine.holds


def test_trainings_on_threads_of_one_tracker_leave_nothing_behind(no_host_env: Path,
                                                                   tmp_path: Path) -> None:
    """The neighbours of the case above: four threads, each three trainings one after the other
    (each its own optimizer, opened and closed at random moments) on one tracker while its
    sampler thread polls: every step recorded once, and no watcher or hold of a closed
    training left on the engine."""
    import random
    import threading

    errors: list[BaseException] = []

    def trainings(seed: int, tracker: Any) -> None:
        rnd = random.Random(seed)
        model = torch.nn.Linear(4, 2)
        try:
            for _ in range(3):
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
                with track_optimizer(opt, tracker, planned_steps=20, progress_every_s=0.05):
                    for _ in range(20):
                        model(torch.randn(2, 4)).sum().backward()
                        opt.step()
                        time.sleep(rnd.uniform(0.0, 0.004))
                time.sleep(rnd.uniform(0.0, 0.05))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
        threads = [threading.Thread(target=trainings, args=(k, tracker)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        engine = tracker.engine
        assert engine is not None
        assert not [w for w in engine.watchers if getattr(w, "__name__", "") == "_on_poll"]
        assert not [h for h in engine.holds if getattr(h, "__name__", "") == "_earliest"]
        assert engine.errors == 0
    assert greentrack.summarize(tmp_path / "run")["steps"] == 4 * 3 * 20


def test_bad_setting_is_one_line_before_any_step(tmp_path: Path) -> None:
    _, opt = model_and_opt()
    with pytest.raises(ConfigError) as e:
        track_optimizer(opt, tmp_path / "run", interval_s=-1)
    assert str(e.value).startswith("interval_s=-1") and "\n" not in str(e.value)


@pytest.mark.parametrize("how", ["autocast", "parameters", "given", "user"])
def test_precision_label_from_autocast_parameters_or_dtype(how: str, no_host_env: Path,
                                                            tmp_path: Path) -> None:
    from greentrack.run import Run, metric_points
    model, opt = model_and_opt()
    run = tmp_path / "run"
    kwargs: dict[str, Any] = {"model": model} if how in ("autocast", "user") else {}
    if how == "given":
        kwargs["dtype"] = torch.float16
    if how == "user":
        kwargs["labels"] = {"precision": "int8", "method": "qat"}
    with track_optimizer(opt, run, **kwargs, **FAST) as tracking:
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how in ("autocast", "user")):
                loss = model(torch.randn(8, 16)).float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            tracking.tracker.record(loss=loss.detach(), accuracy=0.5)
    with Run.open(run) as r:
        assert r.labels["precision"] == {"autocast": "bf16", "parameters": "fp32", "given": "fp16",
                                         "user": "int8"}[how]
        losses = metric_points(r, "loss")
        assert [p.step for p in losses] == [1, 2, 3] and len(metric_points(r, "accuracy")) == 3
