"""Hugging Face: a real ``Trainer`` on a tiny GPT-2 built from a config (no download), on CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.store import StoreReader, store_paths
from tests.helpers import FAST

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import (GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback,  # noqa: E402
                          TrainingArguments)

from greentrack.integrations.transformers import GreenTrackTrainerCallback  # noqa: E402
from tests.tiny_models import Tokens  # noqa: E402

#: real Hugging Face trainers: out of `make test-fast`
pytestmark = pytest.mark.slow

LENGTH, BATCH, ACCUMULATE = 16, 4, 2


class Reporter(TrainerCallback):
    """Stands where a reporting integration (TensorBoard, W&B...) sits: records what it gets."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []
        self.evaluations = 0

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self.logs.append(dict(logs or {}))

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.evaluations += 1

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == 3:
            time.sleep(0.25)  # a slow step: the sampler attributes the first ones meanwhile


def make(out: Path, steps: int, callback: GreenTrackTrainerCallback | None, attach: bool = True,
         **kw: Any) -> tuple[Trainer, Reporter]:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=LENGTH, n_embd=32, n_layer=1,
                                       n_head=2, bos_token_id=0, eos_token_id=0))
    args = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH,
                per_device_eval_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATE,
                logging_steps=2, report_to=[], use_cpu=True, disable_tqdm=True,
                include_num_input_tokens_seen=True, save_strategy="no", seed=0)
    args.update(kw)
    reporter = Reporter()
    callbacks: list[Any] = [reporter] + ([callback] if callback and not attach else [])
    trainer = Trainer(model=model, args=TrainingArguments(**args), train_dataset=Tokens(256),
                      eval_dataset=Tokens(2 * BATCH, seed=1), callbacks=callbacks)
    if callback is not None and attach:
        callback.attach(trainer)
    return trainer, reporter


def steps_of(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in store_paths(run_dir):
        for r in StoreReader(p).steps():
            r["store"] = p.name
            r["extra"] = json.loads(r["extra"])
            out.append(r)
    return out


def test_steps_logs_and_totals(no_host_env: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    callback = GreenTrackTrainerCallback(run, progress_every_s=None, **FAST)
    trainer, reporter = make(tmp_path / "out", 6, callback, eval_strategy="steps", eval_steps=3)
    trainer.train()
    rows = steps_of(run)
    train = [r for r in rows if r["phase"] == "train"]
    assert len(train) == trainer.state.global_step == 6
    assert [r["idx"] for r in train] == list(range(6))
    assert all(r["samples"] == BATCH * ACCUMULATE for r in train)  # one optimizer step each
    assert all(r["tokens"] == BATCH * ACCUMULATE * LENGTH for r in train)
    assert train[0]["extra"]["flops_method"] == "counted" and train[0]["flops"] > 0
    validation = sorted((r for r in rows if r["phase"] == "validation"), key=lambda r: r["t0"])
    assert reporter.evaluations >= 2 and len(validation) == 2 * reporter.evaluations
    ordered = sorted(rows, key=lambda r: r["t0"])
    assert all(b["t0"] >= a["t1"] - 1e-9 for a, b in zip(ordered, ordered[1:]))
    s = greentrack.summarize(run)
    assert s["steps_energy_j"] <= s["energy_j"]["total"] and s["status"] == "completed"
    # the metrics reached the callback standing where reporting integrations are, and the history
    train_logs = [log for log in reporter.logs if "loss" in log]
    assert train_logs and any("greentrack/step_energy_j" in log for log in train_logs)
    # each log has the figures with new data only: steps as the Trainer counts them, the energy
    # rising, never a 0 standing for "no reading yet"
    assert [log["greentrack/steps"] for log in train_logs] == [2.0, 4.0, 6.0]
    # (logs closer together than a counter read have no new energy: it is left out, not repeated)
    energy = [log["greentrack/energy_j"] for log in reporter.logs if "greentrack/energy_j" in log]
    assert energy and energy[0] > 0 and all(a < b for a, b in zip(energy, energy[1:]))
    # each evaluation's joules are its own steps' (two batches), not a running sum
    evals = [log["eval_greentrack/validation_energy_j"] for log in reporter.logs
             if "eval_loss" in log]
    by_eval = [validation[i:i + 2] for i in range(0, len(validation), 2)]
    assert evals == pytest.approx([sum(r["cpu_j"] + r["dram_j"] for r in e) for e in by_eval])
    assert all(v > 0 for v in evals)
    final = reporter.logs[-1]
    assert "train_loss" in final and final["greentrack/run_energy_j"] == pytest.approx(
        s["energy_j"]["total"])
    # per optimizer step as the Trainer counts them: no evaluation step in the count
    assert final["greentrack/run_steps"] == trainer.state.global_step == 6 < s["steps"]
    assert final["greentrack/run_joules_per_step"] == pytest.approx(s["energy_j"]["total"] / 6)
    history = trainer.state.log_history
    assert history[-1]["greentrack/run_energy_j"] == final["greentrack/run_energy_j"]
    assert callback.summary is not None
    # issue 14: the Trainer's precision is the run's label; its logged losses are recorded with
    # the step and the cumulative energy at that moment
    from greentrack.run import Run, metric_points
    with Run.open(run) as r:
        assert r.labels["precision"] == "fp32"
        losses = metric_points(r, "loss")
        assert [p.step for p in losses] == [2, 4, 6]
        assert [p.value for p in losses] == pytest.approx([log["loss"] for log in train_logs])
        assert all(a.energy_j <= b.energy_j for a, b in zip(losses, losses[1:]))
        assert len(metric_points(r, "eval_loss")) == reporter.evaluations


def test_resume_continues_the_same_run(no_host_env: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first, _ = make(out, 4, GreenTrackTrainerCallback(progress_every_s=None, **FAST),
                    save_strategy="steps", save_steps=4)
    first.train()
    (run,) = list((out / "greentrack").iterdir())  # a fresh directory under output_dir
    second, reporter = make(out, 8, GreenTrackTrainerCallback(progress_every_s=None, **FAST),
                            save_strategy="steps", save_steps=4)
    second.train(resume_from_checkpoint=True)
    assert list((out / "greentrack").iterdir()) == [run]
    s = greentrack.summarize(run)
    assert s["stores"] == 2 and s["steps_by_phase"]["train"] == second.state.global_step == 8
    by_store: dict[str, list[int]] = {}
    for r in steps_of(run):
        by_store.setdefault(r["store"], []).append(r["idx"])
    assert sorted(sorted(v) for v in by_store.values()) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    final = reporter.logs[-1]
    assert final["greentrack/run_energy_j"] == pytest.approx(s["energy_j"]["total"])
    counted = [r for r in steps_of(run) if r["extra"].get("flops_counted_here")]
    assert len(counted) == 1  # the resumed segment reused the checkpoint's FLOPs


def test_passed_in_callbacks_still_logs_to_history(no_host_env: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    callback = GreenTrackTrainerCallback(run, flops=None, progress_every_s=None, **FAST)
    trainer, _ = make(tmp_path / "out", 4, callback, attach=False)
    trainer.train()
    assert sum("greentrack/energy_j" in h for h in trainer.state.log_history) >= 2
    rows = steps_of(run)
    assert len(rows) == 4 and all(r["flops"] is None for r in rows)
