"""Hugging Face ``Trainer``: per-step joules, FLOPs and MFU for every optimizer step.

Example:
    >>> from greentrack.integrations.transformers import GreenTrackTrainerCallback
    >>> trainer = Trainer(model, args, train_dataset=ds)                 # doctest: +SKIP
    >>> GreenTrackTrainerCallback().attach(trainer)                       # doctest: +SKIP
    >>> trainer.train()                                                   # doctest: +SKIP

``attach`` puts the callback first, so the metrics it adds to each ``on_log`` reach every reporting
integration (TensorBoard, W&B, MLflow...) and ``trainer.state.log_history``. Passed in
``Trainer(callbacks=[...])`` instead, it runs after the reporting callbacks: the metrics still reach
``log_history`` and the console, not those integrations.

Metrics added to training logs: ``greentrack/step_energy_j``, ``greentrack/step_duration_s``,
``greentrack/mfu``, ``greentrack/flops_per_j``, ``greentrack/energy_per_sample_j``,
``greentrack/energy_per_token_j``, ``greentrack/energy_j``, ``greentrack/steps``,
``greentrack/forecast_energy_j``, ``greentrack/forecast_duration_s`` (see :mod:`greentrack.training`);
to evaluation logs ``greentrack/validation_energy_j``; to the final training log the whole run's
totals (all ranks) as ``greentrack/run_*``.

Steps: one ``train`` step per optimizer step (``on_step_begin`` to ``on_step_end``, all
gradient-accumulation micro-batches included). Samples per step are nominal
(``per_device_train_batch_size`` x micro-batches; a short last batch counts as full). Tokens per step,
when ``include_num_input_tokens_seen`` is on, are the Trainer's global count divided by the world
size. Evaluation batches are ``validation`` steps, from one ``on_prediction_step`` to the next (the
first batch of an ``evaluate()`` called outside training has no start mark and is not a step; its
energy is still in the totals).

Resume: the callback is an ``ExportableState``: its state (run directory and id, totals so far) is
saved in each checkpoint's ``trainer_state.json``, and ``train(resume_from_checkpoint=...)``
continues the same run in a new store segment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from greentrack.training import (TrainingMeter, new_run_dir, resolve_config, resume_flops,
                                 final_totals, guarded, start_tracker)

log = logging.getLogger("greentrack")
PREFIX = "greentrack/"
_JSON = (str, int, float, bool, type(None))


class GreenTrackTrainerCallback(TrainerCallback, ExportableState):
    """Tracks the energy of a Hugging Face ``Trainer`` run; see the module docstring.

    Args:
        run_dir: run directory; default ``<output_dir>/greentrack/<time>-<id>`` (or
            ``GREENTRACK_RUN_DIR``).
        flops: FLOPs per optimizer step: ``"auto"`` counts the first step once, a number, a
            :class:`greentrack.flops.StepFlops`, or None.
        planned_steps: optimizer steps of the run, for the forecast (default: ``state.max_steps``).
        log_totals: add the whole run's totals to the final training log (rank 0).
        progress_every_s: period of the forecast line in the Python log (None: never).
        config: a :class:`greentrack.Config`; ``**settings`` (any Config field) override it.

    Raises:
        ConfigError: a setting is invalid (at construction, before any training).
    """

    def __init__(self, run_dir: str | Path | None = None, *, flops: Any = "auto",
                 planned_steps: int | None = None, log_totals: bool = True,
                 progress_every_s: float | None = 60.0, config: Any = None,
                 **settings: Any) -> None:
        self._config, self._dir_chosen = resolve_config(run_dir, config, settings)
        self._init_args = {k: v for k, v in {"run_dir": str(run_dir) if run_dir else None,
                                              **settings}.items() if isinstance(v, _JSON)}
        self._flops, self._planned, self._log_totals = flops, planned_steps, log_totals
        self._progress_every_s = progress_every_s
        self._run_dir: Path | None = None
        self._carry: dict[str, Any] = {}
        self.meter: TrainingMeter | None = None
        #: The whole run's totals (all ranks and segments), on the main process after training.
        self.summary: dict[str, Any] | None = None
        self._micro = 1
        self._tokens_seen = 0
        self._world = 1

    def attach(self, trainer: Any) -> GreenTrackTrainerCallback:
        """Put this callback right after the Trainer's flow callback (which decides when to log
        and evaluate) and before every reporting callback (see the module docstring)."""
        from transformers.trainer_callback import DefaultFlowCallback

        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        flow = [i for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)]
        callbacks.insert(flow[-1] + 1 if flow else 0, self)
        return self

    # -- state (ExportableState: saved in trainer_state.json at each checkpoint) ---------------
    def state(self) -> dict[str, Any]:
        current = self.meter.state() if self.meter is not None else dict(self._carry)
        return {"args": dict(self._init_args), "attributes": {"_saved_state": current}}

    # -- lifecycle -----------------------------------------------------------------------------
    def _start(self, args: Any, state: Any) -> None:
        if self.meter is not None:
            return
        import torch.distributed as dist
        distributed = dist.is_available() and dist.is_initialized()
        self._world = dist.get_world_size() if distributed else 1
        if self._run_dir is None:
            chosen = self._config.run_dir if self._dir_chosen else new_run_dir(args.output_dir)
            if distributed:  # rank 0 decides, every rank writes into the same directory
                box = [str(chosen)]
                dist.broadcast_object_list(box, src=0)
                chosen = box[0]
            self._run_dir = Path(chosen)
        cfg = self._config.replace(run_dir=self._run_dir,
                                   run_id=self._carry.get("run_id") or self._config.run_id)
        if distributed and cfg.rank is None:
            cfg = cfg.replace(rank=dist.get_rank())
        tracker = start_tracker(cfg, local_zero=state.is_local_process_zero)
        if tracker is None:
            return
        self.meter = TrainingMeter(
            tracker, device=args.device, flops=resume_flops(self._carry) or self._flops,
            dtype="bf16" if args.bf16 else "16" if args.fp16 else "tf32" if args.tf32 else "32",
            planned_steps=self._planned or state.max_steps or None, prior=self._carry,
            main=state.is_world_process_zero, progress_every_s=self._progress_every_s)
        tracker.continue_steps({k: int(v) for k, v in self._carry.get("steps", {}).items()})

    def _stop(self, state: Any, status: str, logs: dict[str, Any] | None) -> None:
        meter, self.meter = self.meter, None
        if meter is not None:
            self._carry = meter.state()
            meter.close(status)
        if logs is None or not self._log_totals or self._run_dir is None:
            return
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank's store is closed (reached by every rank, tracked or not)
        if not state.is_world_process_zero:
            return
        found = final_totals(self._run_dir)
        if found is None:
            return
        self.summary = found[0]
        _add(logs, state, {PREFIX + k: v for k, v in found[1].items()})

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = getattr(self, "_saved_state", None)  # set by HF when it restores callback states
        stored = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(stored, list):
            stored = stored[-1] if stored else None
        if state.global_step > 0 and isinstance(stored, dict):
            saved = stored.get("attributes", {}).get("_saved_state") or saved
        if state.global_step > 0 and saved:
            self._carry = dict(saved)
            if saved.get("run_dir"):
                self._run_dir = Path(saved["run_dir"])
        self._start(args, state)
        if self.meter is not None:
            self.meter.train_steps = state.global_step
            self.meter.tracker.continue_steps({"train": state.global_step})
        self._tokens_seen = state.num_input_tokens_seen or 0

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stop(state, "completed", None)

    # -- training steps (hot path) -------------------------------------------------------------
    @guarded
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        meter = self.meter
        if meter is not None:
            self._micro = 1
            meter.begin("train")

    @guarded
    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._micro += 1

    @guarded
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        meter = self.meter
        if meter is None:
            return
        tokens = None
        seen = state.num_input_tokens_seen or 0
        if seen > self._tokens_seen:
            tokens = (seen - self._tokens_seen) / self._world
            self._tokens_seen = seen
        meter.end(samples=args.per_device_train_batch_size * self._micro, tokens=tokens)
        if control.should_evaluate:  # evaluation runs right after this step
            meter.begin("validation")

    @guarded
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        meter = self.meter
        if meter is not None and control.should_evaluate and meter.marks.open_phase is None:
            meter.begin("validation")

    # -- evaluation ------------------------------------------------------------------------------
    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.meter is None:
            self._start(args, state)  # holds a broadcast: never skipped on one rank
        self._eval_step(args)

    @guarded
    def _eval_step(self, args: Any) -> None:
        meter = self.meter
        if meter is None:
            return
        if meter.marks.open_phase == "validation":
            meter.end(samples=args.per_device_eval_batch_size)
        meter.begin("validation")

    @guarded
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.meter is not None and self.meter.marks.open_phase == "validation":
            self.meter.cancel()  # the window opened after the last batch

    # -- logs ------------------------------------------------------------------------------------
    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs is None:
            return
        if self._add_metrics(state, logs):
            return
        if "train_loss" in logs and "loss" not in logs:
            # The Trainer's final training log (its run-wide ``train_loss``): totals go in it.
            # Outside the guard: _stop holds a barrier that every rank must reach.
            self._stop(state, "completed", logs)

    @guarded
    def _add_metrics(self, state: Any, logs: dict[str, Any]) -> bool:
        """Add greentrack's metrics to a log; True for an evaluation log (nothing more to do)."""
        meter = self.meter
        if meter is not None and any(k.startswith("eval_") for k in logs):
            _add(logs, state, {PREFIX + "validation_energy_j": meter.phase_energy_j("validation")})
            return True
        if meter is not None:
            _add(logs, state, {PREFIX + k: v for k, v in meter.metrics().items()})
        return False


def _add(logs: dict[str, Any], state: Any, metrics: dict[str, float]) -> None:
    """Add to the logs being reported and to the entry the Trainer just put in its log history."""
    logs.update(metrics)
    history = state.log_history
    if history and history[-1].get("step") == state.global_step:
        history[-1].update(metrics)


__all__ = ["GreenTrackTrainerCallback"]
