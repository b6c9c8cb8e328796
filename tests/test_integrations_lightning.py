"""Lightning: a real ``Trainer`` on a tiny CPU model, real tracker, counters at known watts.

DDP (2 processes) is in ``test_integrations_distributed.py``.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.store import StoreReader, store_paths
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import FAST, report_json, run_cli

L = pytest.importorskip("lightning")
torch = pytest.importorskip("torch")
from lightning.pytorch.loggers.logger import Logger  # noqa: E402

from greentrack.integrations.lightning import GreenTrackCallback  # noqa: E402
from tests.tiny_models import BATCH, Tiny, data, trainer  # noqa: E402

#: real Lightning trainers: out of `make test-fast`
pytestmark = pytest.mark.slow

WATTS = {"intel-rapl:0": 40.0, "intel-rapl:0:1": 4.0}


class Recording(Logger):
    """A logger that keeps what it is given (what TensorBoard, CSV, W&B... would receive)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def values(self, name: str) -> list[float]:
        return [m[name] for _, m in self.metrics if name in m]


def rows(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in store_paths(run_dir):
        store = StoreReader(p)
        for r in store.steps():
            r["store"] = p.name
            r["started_unix"] = store.meta["started_unix"]
            out.append(r)
    return out


def test_steps_phases_and_metrics_through_every_logger(powercap: PowercapTree, tmp_path: Path) -> None:
    run = tmp_path / "run"
    logger = Recording()
    callback = GreenTrackCallback(run, progress_every_s=None, log_every_s=0, **FAST)
    model = Tiny()
    with LiveCounters(powercap, WATTS, period_s=0.001):
        t = trainer(tmp_path, [callback], logger, accumulate_grad_batches=2, val_check_interval=6)
        t.fit(model, data(24 * BATCH), data(8 * BATCH, 1))
        fit_metrics = dict(t.callback_metrics)
        t.test(model, data(3 * BATCH, 2), verbose=False)
    steps = rows(run)
    train = [r for r in steps if r["phase"] == "train"]
    assert len(train) == t.global_step == 10
    assert sorted(r["idx"] for r in train) == list(range(10))
    assert all(r["samples"] == 2 * BATCH for r in train)  # a step is an optimizer step
    by_phase = {p: sum(r["phase"] == p for r in steps) for p in ("validation", "sanity_check", "test")}
    assert by_phase == {"validation": model.val_batches, "sanity_check": 1, "test": 3}
    assert model.val_batches > 0
    for store in {r["store"] for r in steps}:  # within a process, no joule is in two steps
        mine = sorted((r for r in steps if r["store"] == store), key=lambda r: r["t0"])
        assert all(b["t0"] >= a["t1"] - 1e-9 for a, b in zip(mine, mine[1:]))
    s = greentrack.summarize(run)
    assert s["steps_energy_j"] <= s["energy_j"]["total"] and s["stores"] == 2  # fit, then test
    train_j = sum(r["cpu_j"] + r["dram_j"] for r in train)
    assert train_j == pytest.approx(44.0 * sum(r["duration_s"] for r in train), rel=0.15)
    # per-step and cumulative metrics reached the logger through pl_module.log
    assert logger.values("greentrack/step_energy_j") and logger.values("greentrack/energy_j")
    assert logger.values("greentrack/validation_energy_j")
    assert "greentrack/energy_j" in fit_metrics and "greentrack/step_energy_j" in fit_metrics
    # the run's totals, logged once per stage by rank 0, equal the merged stores
    totals = logger.values("greentrack/run_energy_j")
    assert len(totals) == 2 and totals[-1] == pytest.approx(s["energy_j"]["total"])
    assert logger.values("greentrack/run_train_steps_energy_j")[-1] == pytest.approx(train_j)
    assert callback.summary is not None and callback.summary["steps_by_phase"]["train"] == 10
    # issue 14: the precision Lightning uses is the run's label; the logged val_loss is recorded
    # once per validation (only when new) with the cumulative energy at that moment
    from greentrack.run import Run, metric_points
    with Run.open(run) as r:
        assert r.labels == {"precision": "fp32"}
        val = metric_points(r, "val_loss")
        assert val and val[-1].value == pytest.approx(float(fit_metrics["val_loss"]), rel=1e-5)
        assert all(0 < p.energy_j <= s["energy_j"]["total"] for p in val)
        assert all(a.energy_j <= b.energy_j and a.step < b.step for a, b in zip(val, val[1:]))


def test_bf16_precision_and_user_labels(powercap: PowercapTree, tmp_path: Path) -> None:
    run = tmp_path / "run"
    callback = GreenTrackCallback(run, progress_every_s=None, labels={"method": "distillation"},
                                  **FAST)
    with LiveCounters(powercap, WATTS, period_s=0.001):
        t = trainer(tmp_path, [callback], Recording(), precision="bf16-mixed", max_steps=2)
        t.fit(Tiny(), data(4 * BATCH))
    from greentrack.run import Run
    with Run.open(run) as r:
        assert r.labels == {"method": "distillation", "precision": "bf16"}


def test_resume_continues_the_same_run(powercap: PowercapTree, tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"

    def fit(max_steps: int, resume: bool) -> tuple[Any, Recording]:
        logger = Recording()
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True,
                                                   every_n_train_steps=3)
        t = trainer(tmp_path, [GreenTrackCallback(progress_every_s=None, log_every_s=0, **FAST), ckpt], logger,
                    max_steps=max_steps, enable_checkpointing=True, limit_val_batches=0)
        t.fit(Tiny(), data(40 * BATCH), ckpt_path=str(ckpt_dir / "last.ckpt") if resume else None)
        return t, logger

    with LiveCounters(powercap, WATTS):
        first, _ = fit(6, resume=False)
        resumed_from = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["callbacks"][
            "GreenTrackCallback"]
        assert resumed_from["steps"]["train"] == 6
        second, logger2 = fit(12, resume=True)
    # the first callback chose a fresh directory under default_root_dir; the resumed one, made
    # without a run_dir, continued it (from the checkpoint) instead of choosing another
    run_dirs = list((tmp_path / "greentrack").iterdir())
    assert len(run_dirs) == 1
    run = run_dirs[0]
    s2 = greentrack.summarize(run)
    first_store = StoreReader(min(store_paths(run), key=lambda p: StoreReader(p).meta["started_unix"]))
    s1 = {"run_id": first_store.meta["run_id"],
          "energy_j": {"total": sum(c["energy_j"] for c in first_store.channels())}}
    assert s2["run_id"] == s1["run_id"] and s2["stores"] == 2
    assert s2["steps_by_phase"]["train"] == second.global_step == 12
    segments: dict[str, list[int]] = {}
    for r in rows(run):
        segments.setdefault(r["store"], []).append(r["idx"])
    assert sorted(sorted(v) for v in segments.values()) == [list(range(6)), list(range(6, 12))]
    # nothing counted twice: the second segment adds its own energy to the first's
    stores = [StoreReader(p) for p in store_paths(run)]
    per_store = [sum(c["energy_j"] for c in st.channels()) for st in stores]
    assert s2["energy_j"]["total"] == pytest.approx(sum(per_store))
    assert s2["energy_j"]["total"] > s1["energy_j"]["total"]
    starts = sorted((st.meta["started_unix"], st.meta["started_unix"] + st.meta["duration_s"])
                    for st in stores)
    assert starts[1][0] >= starts[0][1]  # segments do not overlap
    # the logged cumulative energy continues from the checkpoint's
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["callbacks"]["GreenTrackCallback"]
    assert saved["run_id"] == s1["run_id"] and saved["steps"]["train"] == 12
    assert min(logger2.values("greentrack/energy_j")) >= resumed_from["energy_j"] > 0


class SlowAfter(Tiny):
    """Tiny, with steps from ``slow_from`` on lasting ``slow_s`` more (the steps a resume redoes
    carry joules that stand out)."""

    def __init__(self, slow_from: int | None = None, slow_s: float = 0.1) -> None:
        super().__init__()
        self.slow_from, self.slow_s = slow_from, slow_s

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.slow_from is not None and self.global_step >= self.slow_from:
            time.sleep(self.slow_s)
        return super().training_step(batch, batch_idx)


def test_steps_redone_after_a_resume_are_stated_and_logged(powercap: PowercapTree,
                                                            tmp_path: Path) -> None:
    """Issue 26: resumed from an older checkpoint, a run redoes the steps after it. Their joules
    were in no output: the logged energy ended short of the run's, nothing said why. Now the
    logged cumulative energy continues from what the process recorded, and the summary, the
    report and advise state the replayed joules."""
    ckpt_dir = tmp_path / "ckpt"
    run = tmp_path / "run"

    def fit(max_steps: int, model: Tiny, resume: str | None) -> Recording:
        logger = Recording()
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="{step}",
                                                   every_n_train_steps=4, save_top_k=-1)
        cb = GreenTrackCallback(run, progress_every_s=None, log_every_s=0, **FAST)
        t = trainer(tmp_path, [cb, ckpt], logger, max_steps=max_steps, enable_checkpointing=True,
                    limit_val_batches=0)
        t.fit(model, data(40 * BATCH), ckpt_path=str(ckpt_dir / resume) if resume else None)
        return logger

    with LiveCounters(powercap, WATTS, period_s=0.001):
        fit(10, SlowAfter(slow_from=4), None)  # checkpoints at steps 4 and 8, then stops at 10
        first = StoreReader(store_paths(run)[0])
        first_j = sum(c["energy_j"] for c in first.channels())
        logger = fit(12, SlowAfter(), "step=4.ckpt")  # resumed from the older checkpoint
    redone = [r for r in rows(run) if r["store"] == first.path.name and r["idx"] >= 4]
    assert len(redone) == 6
    redone_j = sum(r["cpu_j"] + r["dram_j"] for r in redone)
    assert redone_j > 0.5 * 44.0 * 6 * 0.1  # the slow steps, most of their sleep measured
    s = greentrack.summarize(run)
    assert s["stores"] == 2 and s["steps_by_phase"]["train"] == 10 + 8
    assert s["replayed_steps"] == 6 and s["replayed_energy_j"] == pytest.approx(redone_j)
    assert s["optimizer_steps"] == 12  # each step once, as Lightning's global step
    from greentrack.reports.summary import format_summary
    assert re.search(r"replayed +6 training steps done again after resuming .*: "
                     rf"{redone_j:.1f} J", format_summary(s))
    # the logged cumulative energy continues from everything the process recorded (the redone
    # steps' joules included), not from the checkpoint's figure, and ends at the run's energy
    # less what the second segment spent after its last log
    energy = logger.values("greentrack/energy_j")
    assert energy and min(energy) >= first_j
    stores = {p.name: sum(c["energy_j"] for c in StoreReader(p).channels()) for p in store_paths(run)}
    assert len(stores) == 2 and energy[-1] <= s["energy_j"]["total"] + 1e-6
    # advise and the report's Opportunities state it, with what to do
    code, out, err = run_cli(["advise", str(run), "--country", "FR", "--json"])
    assert code == 0, err
    found = [f for f in json.loads(out)["findings"] if f["kind"] == "replayed"]
    assert len(found) == 1 and found[0]["joules"] == pytest.approx(redone_j)
    assert found[0]["evidence"]["text"].startswith(f"replayed after resume: {redone_j:.4g} J")
    assert "checkpoint more often" in found[0]["suggestion"]
    code, out, err = run_cli(["report", str(run), "--country", "FR", "--out",
                              str(tmp_path / "report"), "--format", "json,md"])
    assert code == 0, err
    doc = report_json(tmp_path / "report")
    assert doc["energy"]["replayed_energy_j"] == pytest.approx(redone_j)
    assert "replayed" in [f["kind"] for f in doc["opportunities"]]
    page = next((tmp_path / "report").glob("*.md")).read_text()
    assert "Replayed after resume: 6 training steps were done again" in page


def test_a_failing_run_is_recorded_as_failed(no_host_env: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    t = trainer(tmp_path, [GreenTrackCallback(run, progress_every_s=None, **FAST)], False,
                limit_val_batches=0)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit(Tiny(fail_at=3), data(40 * BATCH))
    s = greentrack.summarize(run)
    assert s["status"] == "failed" and s["steps_by_phase"]["train"] == 3


def test_settings_reach_the_tracker(no_host_env: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    callback = GreenTrackCallback(run, progress_every_s=None, mode="process", dram_w_per_gb=1.0,
                                  log_every_s=3600, **FAST)
    calls: list[str] = []

    class Counting(Tiny):
        def log(self, name: str, *args: Any, **kwargs: Any) -> None:
            calls.append(name)
            super().log(name, *args, **kwargs)

    trainer(tmp_path, [callback], Recording(), max_steps=6, limit_val_batches=0,
            log_every_n_steps=1).fit(Counting(), data(80))
    assert calls.count("greentrack/steps") == 1  # at most one live log per log_every_s
    meta = StoreReader(store_paths(run)[0]).meta
    assert meta["mode"] == "process" and meta["settings"]["dram_w_per_gb"] == 1.0
    assert meta["settings"]["interval_s"] == FAST["interval_s"] and meta["rank"] == 0
    assert json.loads(json.dumps(callback.state_dict()))["run_dir"] == str(run)


def energy(row: dict[str, Any]) -> float:
    return sum(row[k] or 0.0 for k in ("gpu_j", "cpu_j", "dram_j"))


def test_validation_energy_is_each_epochs_own(powercap: PowercapTree, tmp_path: Path) -> None:
    """Issue 12: it was 0.0 at every validation epoch end (the steps resolve on the sampler
    thread after the hook read them), and cumulative when it was not."""
    run = tmp_path / "run"
    logger = Recording()
    callback = GreenTrackCallback(run, progress_every_s=None, log_every_s=0, **FAST)
    with LiveCounters(powercap, WATTS, period_s=0.001):
        t = trainer(tmp_path, [callback], logger, max_steps=30, val_check_interval=10,
                    limit_val_batches=3)
        t.fit(Tiny(), data(40 * BATCH), data(8 * BATCH, 1))
    logged = logger.values("greentrack/validation_energy_j")
    validation = sorted((r for r in rows(run) if r["phase"] == "validation"), key=lambda r: r["t0"])
    epochs = [validation[i:i + 3] for i in range(0, len(validation), 3)]
    assert len(epochs) == 3 and len(logged) == 3
    # each logged value is that epoch's three steps, as the store has them; none is 0 or a sum
    assert logged == pytest.approx([sum(energy(r) for r in epoch) for epoch in epochs], rel=1e-9)
    assert all(v > 0 for v in logged)
    # Lightning's advice to sync it is kept quiet in Lightning's own cache (the DDP test sees
    # it unsaid), never through the process's warnings filters
    assert not [f for f in warnings.filters if "greentrack" in str(f[1])], warnings.filters


def test_a_real_logger_files_greentrack_in_its_own_group(powercap: PowercapTree,
                                                         tmp_path: Path) -> None:
    """Issue 26: greentrack's figures must group apart from the training scalars. Loggers group
    by the name's first ``/`` part (TensorBoard's sections, W&B's panels): every figure greentrack
    sends is ``greentrack/...``, whatever the stage (live, validation, totals), and none of its
    figures (the progress bar's ``energy_kJ``...) reaches a logger without it. Lightning's own
    CSVLogger, as it writes its file."""
    import csv

    from lightning.pytorch.loggers import CSVLogger
    callback = GreenTrackCallback(tmp_path / "run", progress_every_s=None, log_every_s=0, **FAST)
    with LiveCounters(powercap, WATTS, period_s=0.001):
        t = trainer(tmp_path, [callback], CSVLogger(tmp_path / "logs"), val_check_interval=5)
        t.fit(Tiny(), data(20 * BATCH), data(4 * BATCH, 1))
    [path] = (tmp_path / "logs").rglob("metrics.csv")
    with path.open() as f:
        names = set(next(csv.reader(f)))
    ours = {n for n in names if n not in ("epoch", "step", "val_loss")}
    assert ours and all(n.startswith("greentrack/") for n in ours), ours
    assert {"greentrack/energy_j", "greentrack/validation_energy_j",
            "greentrack/run_energy_j"} <= ours
    assert not {"energy_kJ", "forecast_kJ"} & names  # the progress bar's, never a logger's


def test_loggers_get_only_new_figures_aligned_with_global_step(powercap: PowercapTree,
                                                                tmp_path: Path) -> None:
    """Issue 12: with log_every_s the logger showed plateaus (a value logged once was logged
    again at every later logging step) and ``steps`` lagged behind the global step."""
    logger = Recording()
    callback = GreenTrackCallback(tmp_path / "run", progress_every_s=None, log_every_s=0.05,
                                  **FAST)
    with LiveCounters(powercap, WATTS, period_s=0.001):
        trainer(tmp_path, [callback], logger, max_steps=60, log_every_n_steps=1,
                limit_val_batches=0).fit(Tiny(), data(80 * BATCH))
    live = [(step, m) for step, m in logger.metrics if "greentrack/steps" in m]
    assert len(live) >= 5
    for step, m in live:
        assert m["greentrack/steps"] == step  # the optimizer steps done, as Lightning counts them
    for name in ("greentrack/energy_j", "greentrack/steps", "greentrack/forecast_energy_j"):
        values = logger.values(name)
        assert len(values) >= 3 and all(v > 0 for v in values), name
        assert all(b != a for a, b in zip(values, values[1:])), f"{name} repeated: {values}"


def test_a_run_shorter_than_log_every_s_gets_its_figures(powercap: PowercapTree,
                                                          tmp_path: Path) -> None:
    """Issue 12: a run under ``log_every_s`` logged 0.0 (no reading yet) and nothing after."""
    logger = Recording()
    callback = GreenTrackCallback(tmp_path / "run", progress_every_s=None, log_every_s=3600,
                                  **FAST)
    with LiveCounters(powercap, WATTS, period_s=0.001):
        t = trainer(tmp_path, [callback], logger, max_steps=8, log_every_n_steps=1,
                    limit_val_batches=0)
        t.fit(Tiny(), data(40 * BATCH))
    live = {k: v for _, m in logger.metrics for k, v in m.items()
            if k.startswith("greentrack/") and not k.startswith("greentrack/run_")}
    assert all(v > 0 for _, m in logger.metrics for k, v in m.items()
               if k.startswith("greentrack/") and "run_" not in k)  # no 0 for "no data yet"
    assert live["greentrack/steps"] == t.global_step == 8
    assert live["greentrack/step_energy_j"] > 0 and live["greentrack/energy_j"] > 0
    run_j = logger.values("greentrack/run_energy_j")[-1]
    assert 0 < live["greentrack/energy_j"] <= run_j


# the interval [low-high] follows the estimate once the forecast has three observations
PROGRESS = re.compile(r"^greentrack: step \d+/100, forecast [\d.e+-]+ (mWh|Wh|kWh|MWh)"
                      r"( \[[\d.e+-]+-[\d.e+-]+\])?, ", re.M)


def test_progress_line_is_visible_by_default_and_can_be_silenced(
        powercap: PowercapTree, tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: the documented forecast line went to a logger without a handler: never seen."""
    monkeypatch.delenv("GREENTRACK_PROGRESS", raising=False)

    def fit(name: str) -> str:
        callback = GreenTrackCallback(tmp_path / name, progress_every_s=0.1, **FAST)
        with LiveCounters(powercap, WATTS, period_s=0.001):
            trainer(tmp_path, [callback], False, max_steps=100,
                    limit_val_batches=0).fit(Tiny(), data(100 * BATCH))
        return capfd.readouterr().err

    err = fit("shown")
    assert len(PROGRESS.findall(err)) >= 2, err[-2000:]
    monkeypatch.setenv("GREENTRACK_PROGRESS", "0")
    assert "greentrack: step" not in fit("silenced")


def test_the_trainers_metrics_are_read_at_its_logging_cadence_only(no_host_env: Path,
                                                                   tmp_path: Path) -> None:
    """Issue 25: the callback read ``trainer.callback_metrics`` at every optimizer step (most of
    its ~180 us a step); per step it now only marks the step, and reads and records the logged
    metrics at the trainer's logging steps, with their values then."""
    run = tmp_path / "run"
    callback = GreenTrackCallback(run, progress_every_s=None, log_every_s=0, **FAST)
    reads: list[int] = []

    class Watched(L.Trainer):
        @property
        def callback_metrics(self) -> Any:
            reads.append(self.global_step)
            return super().callback_metrics

    class Logged(Tiny):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", float(self.global_step))  # the step it was logged at
            return loss

    t = Watched(callbacks=[callback], logger=Recording(), accelerator="cpu", devices=1,
                max_steps=20, log_every_n_steps=5, limit_val_batches=0, default_root_dir=tmp_path,
                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    t.fit(Logged(), data(20 * BATCH))
    train_steps = len([r for r in rows(run) if r["phase"] == "train"])
    assert train_steps == 20  # every step is still marked
    ours = [s for s in reads if s % 5 == 0]
    assert len(reads) <= 6 and ours == [5, 10, 15, 20], reads  # not at the other 16 steps
    from greentrack.run import Run, metric_points
    with Run.open(run) as r:
        points = metric_points(r, "train_loss")
    # each logging step's value, recorded at that step: the value logged just before it
    assert [(p.step, p.value) for p in points] == [(s, float(s - 1)) for s in (5, 10, 15, 20)]


def test_lightning_dispatches_only_the_hooks_the_callback_uses(no_host_env: Path,
                                                               tmp_path: Path) -> None:
    """Issue 25: Lightning dispatched all six per-step hooks to the callback (a profiler
    context and an f-string each, ~5 us a hook on this VM), three of them inherited no-ops.
    Where its dispatcher skips an attribute that is not callable (tried, not assumed), those
    three are not dispatched at all; a subclass's own hook still is; a dispatcher that would
    call them keeps them."""
    from lightning.pytorch.trainer import call

    from greentrack.integrations import lightning as gl

    dispatched: list[str] = []
    real = call._call_callback_hooks

    def counting(trainer_: Any, hook_name: str, *args: Any, **kwargs: Any) -> Any:
        for cb in trainer_.callbacks:
            if isinstance(cb, GreenTrackCallback) and callable(getattr(cb, hook_name, None)):
                dispatched.append(hook_name)
        return real(trainer_, hook_name, *args, **kwargs)

    class Own(GreenTrackCallback):
        def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
            dispatched.append("own")

    ours = GreenTrackCallback(tmp_path / "a", progress_every_s=None, **FAST)
    own = Own(tmp_path / "b", progress_every_s=None, **FAST)
    call._call_callback_hooks = counting
    try:
        trainer(tmp_path, [ours], False, limit_val_batches=0, max_steps=4).fit(
            Tiny(), data(8 * BATCH))
        steps = len([r for r in rows(tmp_path / "a") if r["phase"] == "train"])
        assert steps == 4
        assert not set(gl.UNUSED_STEP_HOOKS) & set(dispatched), dispatched
        assert dispatched.count("on_train_batch_end") == 4
    finally:
        call._call_callback_hooks = real
    assert all(callable(getattr(ours, name)) for name in gl.UNUSED_STEP_HOOKS)  # given back
    dispatched.clear()
    trainer(tmp_path, [own], False, limit_val_batches=0, max_steps=4).fit(Tiny(), data(8 * BATCH))
    assert dispatched.count("own") == 4

    # a hook set on the instance is the user's; a callback held by another that forwards the
    # hooks itself (calling them, not asking Lightning) keeps every hook
    mine = GreenTrackCallback(tmp_path / "d", progress_every_s=None, **FAST)
    mine.on_after_backward = lambda trainer_, module: dispatched.append("mine")  # type: ignore

    class Group(L.Callback):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def setup(self, trainer_: Any, module: Any, stage: str) -> None:
            self.inner.setup(trainer_, module, stage)

        def on_train_start(self, trainer_: Any, module: Any) -> None:
            self.inner.on_train_start(trainer_, module)

        def on_after_backward(self, trainer_: Any, module: Any) -> None:
            self.inner.on_after_backward(trainer_, module)

        def teardown(self, trainer_: Any, module: Any, stage: str) -> None:
            self.inner.teardown(trainer_, module, stage)

    wrapped = GreenTrackCallback(tmp_path / "e", progress_every_s=None, **FAST)
    dispatched.clear()
    trainer(tmp_path, [mine, Group(wrapped)], False, limit_val_batches=0, max_steps=3).fit(
        Tiny(), data(6 * BATCH))
    assert dispatched.count("mine") == 3

    def calls_everything(trainer_: Any, hook_name: str, *args: Any, **kwargs: Any) -> None:
        for cb in trainer_.callbacks:
            getattr(cb, hook_name)(trainer_, trainer_.lightning_module, *args, **kwargs)

    kept = GreenTrackCallback(tmp_path / "c", progress_every_s=None, **FAST)
    gl._dispatch_skips_none.cache_clear()
    call._call_callback_hooks = calls_everything
    try:
        assert gl._dispatch_skips_none() is False
        kept.setup(trainer(tmp_path, [kept], False), Tiny(), "fit")
        assert all(callable(getattr(kept, name)) for name in gl.UNUSED_STEP_HOOKS)
    finally:
        call._call_callback_hooks = real
        gl._dispatch_skips_none.cache_clear()
