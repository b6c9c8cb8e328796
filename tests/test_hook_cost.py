"""Issue 25: per step, the integrations' hooks do a clock read and an append, nothing more.

Counted as Python calls on the training thread during one steady step (as
``test_tracker.py::test_a_step_is_a_clock_read_and_an_append`` does for ``tracker.step()``): a
decorator frame, a property, Lightning's ``global_step`` or ``should_update_logs`` chains per
step each show up here, where a timing on a shared machine would not resolve them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from greentrack.store import StoreReader, store_paths
from tests.helpers import FAST

torch = pytest.importorskip("torch")


def python_calls(fn: Any, *args: Any) -> list[str]:
    """The Python functions ``fn(*args)`` enters (C functions left out)."""
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: object) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return calls


def test_track_optimizer_step_is_a_clock_read_and_an_append(no_host_env: Path,
                                                             tmp_path: Path) -> None:
    from greentrack.integrations.torch import track_optimizer

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    with track_optimizer(opt, tmp_path / "run", model=model, flops=1e6, samples_per_step=8,
                         progress_every_s=None, **FAST) as tracking:
        for _ in range(3):  # steady state: precision labelled, FLOPs known
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
        before = python_calls(tracking._before_forward, model, (x,))
        after = python_calls(tracking._after_step, opt, (), {})
    # the hook, the marks' clock read (the meter's begin is the marks' once FLOPs are known)
    assert before == ["_before_forward", "begin"], before
    # the hook, the meter, the marks' clock read, the tracker, the queue's append
    assert after == ["_after_step", "close_step", "close", "submit_step", "submit"], after
    steps = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    assert len(steps) == 4 and all(r["samples"] == 8 and r["flops"] == 1e6 for r in steps)


def test_lightning_step_is_a_clock_read_and_an_append(no_host_env: Path, tmp_path: Path) -> None:
    L = pytest.importorskip("lightning")
    from greentrack.integrations.lightning import GreenTrackCallback
    from tests.tiny_models import BATCH, Tiny, data, trainer

    seen: dict[str, list[list[str]]] = {"on_train_batch_start": [], "on_train_batch_end": []}
    cb = GreenTrackCallback(tmp_path / "run", progress_every_s=None, **FAST)
    for name, runs in seen.items():
        hook = getattr(cb, name)

        def counted(*args: Any, _hook: Any = hook, _runs: list[list[str]] = runs) -> None:
            _runs.append(python_calls(_hook, *args))
        setattr(cb, name, counted)  # Lightning looks hooks up on the instance
    t = trainer(tmp_path, [cb], False, max_steps=12, log_every_n_steps=5, limit_val_batches=0)
    t.fit(Tiny(), data(12 * BATCH))
    assert isinstance(t, L.Trainer) and t.global_step == 12
    starts, ends = seen["on_train_batch_start"], seen["on_train_batch_end"]
    assert len(starts) == len(ends) == 12
    # the trainer logs at steps 5 and 10: those read its metrics; until the first, the callback
    # asks it at each step (where its cadence starts is the trainer's), afterwards never between
    for i, calls in enumerate(ends[5:], 6):
        if i % 5:
            assert calls == ["on_train_batch_end", "close_step", "close", "submit_step",
                             "submit"], (i, calls)
        else:
            assert "should_update_logs" in calls and "callback_metrics" in calls, (i, calls)
    for calls in starts[1:]:
        assert calls == ["on_train_batch_start", "begin", "_batch_size"], calls
    steps = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    assert [r["samples"] for r in steps if r["phase"] == "train"] == [BATCH] * 12


def test_manual_optimization_steps_are_the_optimizer_steps(no_host_env: Path,
                                                           tmp_path: Path) -> None:
    """Without ``global_step`` per step, an optimizer step is told by ``on_before_optimizer_step``:
    under manual optimization stepping every other batch, a step spans two batches, and the
    trainer's logging steps (asked at each step there) still read its metrics."""
    pytest.importorskip("lightning")
    from greentrack.integrations.lightning import GreenTrackCallback
    from tests.tiny_models import BATCH, Tiny, data, trainer

    class Manual(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            self.log("train_loss", float(batch_idx))
            if batch_idx % 2 == 1:
                opt = self.optimizers()
                opt.step()
                opt.zero_grad()
            return loss

    run = tmp_path / "run"
    t = trainer(tmp_path, [GreenTrackCallback(run, progress_every_s=None, **FAST)], False,
                max_steps=6, log_every_n_steps=4, limit_val_batches=0)
    t.fit(Manual(), data(12 * BATCH))
    assert t.global_step == 6
    train = [r for r in StoreReader(store_paths(run)[0]).steps() if r["phase"] == "train"]
    assert len(train) == 6 and all(r["samples"] == 2 * BATCH for r in train)
    from greentrack.run import Run, metric_points
    with Run.open(run) as r:
        points = metric_points(r, "train_loss")
    # Lightning logs when (batches + 1) % 4 == 0: batches 3, 7 and 11 (optimizer steps 2, 4, 6)
    assert [(p.step, p.value) for p in points] == [(2, 3.0), (4, 7.0), (6, 11.0)]


def test_a_steps_fields_are_split_off_the_training_thread_as_before(no_host_env: Path,
                                                                    tmp_path: Path) -> None:
    """The training thread queues a step's fields in the dict it was given, the sampler thread
    splits them (issue 25), with the rules the training thread applied before: counts to their
    columns, a ``timeline`` field over the default, a field named ``phase``, ``t0`` or ``t1``
    kept as ``field_<name>``, the rest as extras; a tensor is still read when its step ends."""
    import json
    import time

    import greentrack

    samples = torch.tensor(3.0)
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        with t.step("train", flops=5e6, samples=samples, flops_method="counted"):
            pass
        samples += 1  # after the step: not what it recorded
        token = t.begin_step("eval", t0=5, t1=6, timeline="host")
        t.end_step(token, phase="x", tokens=7)
        with t.step("train"):
            pass
        same = {"samples": samples}  # one dict for two steps: a tensor is read at each
        for _ in range(2):
            now = time.monotonic()
            t.submit_step("same", now - 0.01, now, same)
            samples += 1
    rows = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    assert [r["samples"] for r in rows if r["phase"] == "same"] == [4.0, 5.0]
    rows = [r for r in rows if r["phase"] != "same"]
    first, last = sorted((r for r in rows if r["phase"] == "train"), key=lambda r: r["idx"])
    (other,) = [r for r in rows if r["phase"] == "eval"]
    assert (first["flops"], first["samples"], first["tokens"]) == (5e6, 3.0, None)
    assert json.loads(first["extra"]) == {"flops_method": "counted"}
    assert other["phase"] == "eval" and other["tokens"] == 7 and other["timeline"] == "host"
    assert json.loads(other["extra"]) == {"field_t0": 5, "field_t1": 6, "field_phase": "x"}
    assert last["samples"] is None and not json.loads(last["extra"] or "{}")


def test_each_step_has_its_own_mfu_when_the_fields_are_shared(no_host_env: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """A steady step passes the same merged fields on (issue 25); the step's MFU goes into a
    dict of its own, not into the one the next steps share. (A device with a peak is a GPU;
    here a CPU is given one, as the GPU path routes steps, to run it without a GPU.)"""
    import json
    import time

    from greentrack.integrations.torch import track_optimizer
    from greentrack.training import meter as meter_module
    from greentrack.training.flops import Peak

    monkeypatch.setattr(meter_module, "device_peak",
                        lambda device, dtype: Peak(1e9, "cpu", "fp32", "test"))
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    with track_optimizer(opt, tmp_path / "run", model=model, flops=1e6, samples_per_step=8,
                         progress_every_s=None, **FAST):
        for i in range(4):
            model(x).sum().backward()
            time.sleep(0.01 * (i + 1))  # steps of different lengths: different MFUs
            opt.step()
            opt.zero_grad()
    rows = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    mfus = [json.loads(r["extra"])["mfu"] for r in sorted(rows, key=lambda r: r["idx"])]
    durations = [r["duration_s"] for r in sorted(rows, key=lambda r: r["idx"])]
    assert len(set(mfus)) == 4
    assert mfus == pytest.approx([1e6 / d / 1e9 for d in durations], rel=1e-3)
