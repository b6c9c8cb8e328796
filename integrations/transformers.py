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

Metrics added to training logs, each only when it has new data since the previous log:
``greentrack/step_energy_j``, ``greentrack/step_duration_s``, ``greentrack/mfu``,
``greentrack/flops_per_j``, ``greentrack/energy_per_sample_j``, ``greentrack/energy_per_token_j``,
``greentrack/energy_j``, ``greentrack/steps`` (``state.global_step``),
``greentrack/forecast_energy_j``, ``greentrack/forecast_duration_s`` (see
:mod:`greentrack.training.meter`); to the final training log the last figures and the whole run's
totals (all ranks) as ``greentrack/run_*``, with ``run_steps`` the global step and
``run_joules_per_step`` the whole job's energy per optimizer step.

Each evaluation's joules (its batches', once resolved, a bounded wait) go to the reporting
integrations as ``eval_greentrack/validation_energy_j`` (the evaluation's own prefix: ``eval_``,
or ``eval_<name>_`` for one of several datasets), so TensorBoard and W&B, which file a key by its
prefix (``rewrite_logs``: ``eval_*`` under ``eval/``, any other key under ``train/``), show it
with the evaluation (``eval/greentrack/validation_energy_j``), never with the training scalars.
It stays out of the log history and of the metrics ``evaluate()`` returns: the Trainer's model
card lists every metric of an evaluation's history entry among the model's results, and its
default hyperparameter-search objective sums the returned metrics. Energy belongs in the card's
``co2_eq_emissions`` (below).

Steps: one ``train`` step per optimizer step (``on_step_begin`` to ``on_step_end``, all
gradient-accumulation micro-batches included). Samples per step are nominal
(``per_device_train_batch_size`` x micro-batches; a short last batch counts as full). Tokens per step,
when ``include_num_input_tokens_seen`` is on, are the Trainer's global count divided by the world
size. Evaluation batches are ``validation`` steps, from one ``on_prediction_step`` to the next (the
first batch of an ``evaluate()`` called outside training has no start mark and is not a step; its
energy is still in the totals).

Model card: once a callback exists, ``Trainer.create_model_card`` (which ``push_to_hub`` calls
before uploading) of a trainer holding it (``Trainer(callbacks=[...])`` or ``attach``) adds the run's ``co2_eq_emissions`` metadata and an "Environmental impact"
section to the ``README.md`` it writes (:func:`greentrack.reports.to_hf.add_to_card`), so a model
pushed to the Hub carries them. ``training_type``, unless set, is inferred when training begins as
the Trainer's own card infers ``finetuned_from``: a model with a ``name_or_path`` was loaded with
``from_pretrained`` (``fine-tuning``); one without was built from a config (``pre-training``). The
card states this basis.

Resume: the callback is an ``ExportableState``: its state (run directory and id, totals so far) is
saved in each checkpoint's ``trainer_state.json``, and ``train(resume_from_checkpoint=...)``
continues the same run in a new store segment.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from greentrack.common.config import Config
from greentrack.reports.document import report_document
from greentrack.reports.to_hf import add_to_card
from greentrack.training.session import IntegrationRun, RunCallback, guarded

log = logging.getLogger("greentrack")
_JSON = (str, int, float, bool, type(None))


class GreenTrackTrainerCallback(TrainerCallback, ExportableState, RunCallback):
    """Tracks the energy of a Hugging Face ``Trainer`` run; see the module docstring.

    Args:
        run_dir: run directory; default ``<output_dir>/greentrack/<time>-<id>`` (or
            ``GREENTRACK_RUN_DIR``).
        flops: FLOPs per optimizer step: ``"auto"`` counts the first step once, a number, a
            :class:`greentrack.training.flops.StepFlops`, or None.
        planned_steps: optimizer steps of the run, for the forecast (default: ``state.max_steps``).
        log_totals: add the whole run's totals to the final training log (rank 0).
        progress_every_s: period of the progress line on stderr, main process (None: never;
            ``GREENTRACK_PROGRESS=0`` silences it too).
        config: a :class:`greentrack.Config`; ``**settings`` (any Config field) override it.

    Raises:
        ConfigError: a setting is invalid (at construction, before any training).
    """

    def __init__(self, run_dir: str | Path | None = None, *, flops: Any = "auto",
                 planned_steps: int | None = None, log_totals: bool = True,
                 progress_every_s: float | None = 60.0, config: Config | None = None,
                 **settings: Any) -> None:
        self.run = IntegrationRun(run_dir, config, settings, flops=flops,
                                  planned_steps=planned_steps, progress_every_s=progress_every_s)
        self._init_args = {k: v for k, v in {"run_dir": str(run_dir) if run_dir else None,
                                              **settings}.items() if isinstance(v, _JSON)}
        self._log_totals = log_totals
        _hook_trainer_cards()
        self._micro = 1
        self._tokens_seen = 0
        self._world = 1
        self._lent: tuple[str, ...] = ()  # evaluation keys added to the log being reported

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

    def add_to_model_card(self, path: str | Path) -> bool:
        """Add the run's ``co2_eq_emissions`` and "Environmental impact" section to the model card
        at ``path`` (see :func:`greentrack.reports.to_hf.add_to_card`). Never raises: a failure is
        a warning and the card stays as the Trainer wrote it. True when the card was updated."""
        run_dir = self.run.run_dir
        if run_dir is None or not Path(path).is_file():
            return False
        try:
            add_to_card(path, report_document(run_dir, {}))
            return True
        except Exception as e:  # noqa: BLE001 - a card without our block beats a failed push
            log.warning("greentrack: emissions not added to the model card %s: %s", path, e)
            return False

    # -- state (ExportableState: saved in trainer_state.json at each checkpoint) ---------------
    def state(self) -> dict[str, Any]:
        return {"args": dict(self._init_args), "attributes": {"_saved_state": self.run.state()}}

    # -- lifecycle -----------------------------------------------------------------------------
    def _start(self, args: Any, state: Any) -> None:
        if self.meter is not None:
            return
        import torch.distributed as dist
        distributed = dist.is_available() and dist.is_initialized()
        self._world = dist.get_world_size() if distributed else 1

        def broadcast(chosen: str) -> str:  # rank 0 decides, every rank writes into it
            box = [chosen]
            dist.broadcast_object_list(box, src=0)
            return str(box[0])

        self.run.choose_dir(args.output_dir, broadcast if distributed else None)
        self.run.start(
            rank=dist.get_rank() if distributed else None, local_zero=state.is_local_process_zero,
            main=state.is_world_process_zero, device=args.device,
            dtype="bf16" if args.bf16 else "16" if args.fp16 else "tf32" if args.tf32 else "32")

    def _stop(self, state: Any, status: str, logs: dict[str, Any] | None) -> None:
        def barrier() -> None:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.barrier()

        flat = self.run.stop(status, totals=logs is not None and self._log_totals,
                             barrier=barrier, main=state.is_world_process_zero,
                             optimizer_steps=state.global_step)
        if logs is not None and flat:
            _add(logs, state, flat)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = getattr(self, "_saved_state", None)  # set by HF when it restores callback states
        stored = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(stored, list):
            stored = stored[-1] if stored else None
        if state.global_step > 0 and isinstance(stored, dict):
            saved = stored.get("attributes", {}).get("_saved_state") or saved
        if state.global_step > 0 and saved:
            self.run.restore(saved)
        if self.run.config.training_type is None and kwargs.get("model") is not None:
            self.run.config = _with_training_type(self.run.config, kwargs["model"])
        self._start(args, state)
        self.run.begin_training(state.global_step, state.max_steps or None)
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
        meter.close_step({"samples": args.per_device_train_batch_size * self._micro,
                          "tokens": tokens})
        if meter.tracker.budget_stop:  # on_budget="stop": set on the sampler thread
            control.should_training_stop = True
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
        self._take_back(kwargs.get("metrics"))

    def _take_back(self, metrics: Any) -> None:
        """Remove the evaluation figures lent to the reporting integrations (``on_log``) from the
        metrics ``evaluate()`` is about to return (the same dict)."""
        lent, self._lent = self._lent, ()
        if isinstance(metrics, dict):
            for key in lent:
                metrics.pop(key, None)

    # -- logs ------------------------------------------------------------------------------------
    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs is None:
            return
        self._record(state, logs)
        if self._add_metrics(state, logs):
            return
        if "train_loss" in logs and "loss" not in logs:
            # The Trainer's final training log (its run-wide ``train_loss``): totals go in it.
            # Outside the guard: _stop holds a barrier that every rank must reach.
            self._stop(state, "completed", logs)

    @guarded
    def _record(self, state: Any, logs: dict[str, Any]) -> None:
        """The Trainer's losses and metrics (``loss``, ``eval_loss``...), with their energy."""
        self.run.record({k: v for k, v in logs.items() if k not in ("epoch", "step")
                         and not k.startswith("train_")}, step=state.global_step)

    @guarded
    def _add_metrics(self, state: Any, logs: dict[str, Any]) -> bool:
        """Add greentrack's metrics to a log; True for an evaluation log (nothing more to do)."""
        meter = self.meter
        if meter is None:
            return False
        prefix = _evaluation_prefix(logs)
        if prefix is not None:
            if meter.marks.open_phase == "validation":
                meter.cancel()  # the window opened after the last batch
            # to the reporting integrations only: not the history (the model card's results)
            lent = {f"{prefix}_{k}": v for k, v in self.run.evaluation_metrics("validation").items()}
            logs.update(lent)
            self._lent = tuple(lent)
            return True
        final = "train_loss" in logs and "loss" not in logs
        _add(logs, state, self.run.final_metrics() if final and state.is_world_process_zero
             else self.run.live_metrics())
        return False


def _with_training_type(config: Config, model: Any) -> Config:
    """``config`` with the training type of ``model`` and how it was inferred: the Trainer's own
    card takes ``config._name_or_path`` as what a model was ``finetuned_from``; a model built from
    a config alone has none. (The path itself is not recorded: it may name a private directory.)"""
    try:
        name = getattr(model, "name_or_path", None)
    except Exception:  # noqa: BLE001 - an inference, never worth breaking training for
        return config
    if not isinstance(name, str):
        return config
    if name:
        kind, why = "fine-tuning", "the model has a name_or_path, so it was loaded with from_pretrained"
    else:
        kind, why = "pre-training", "the model has no name_or_path: it was built from a config"
    basis = f"inferred by greentrack's Hugging Face integration: {why}"
    return config.replace(training_type=kind, extra={**config.extra, "training_type_basis": basis})


def _evaluation_prefix(logs: dict[str, Any]) -> str | None:
    """The ``metric_key_prefix`` of an evaluation's log (``eval``, ``eval_<dataset>``...), from
    the speed metric every ``evaluate()`` adds (``<prefix>_runtime``); None for a training log."""
    for key in logs:
        if key.endswith("_runtime") and key != "train_runtime":
            return key[:-len("_runtime")]
    return "eval" if any(k.startswith("eval_") for k in logs) else None


def _add(logs: dict[str, Any], state: Any, metrics: dict[str, float]) -> None:
    """Add to the logs being reported and to the entry the Trainer just put in its log history."""
    logs.update(metrics)
    history = state.log_history
    if history and history[-1].get("step") == state.global_step:
        history[-1].update(metrics)


__all__ = ["GreenTrackTrainerCallback"]


def _hook_trainer_cards() -> None:
    """Once per process: ``Trainer.create_model_card`` (also what ``push_to_hub`` calls before its
    upload) then adds the emissions of the greentrack callback the trainer holds, however it was
    given (``Trainer(callbacks=[...])`` leaves a callback no way to reach its trainer, so the hook
    is on the class; subclasses that call ``super().create_model_card`` keep it). A trainer
    without a greentrack callback writes its card unchanged; a failure is a warning."""
    from transformers import Trainer

    original = Trainer.create_model_card
    if getattr(original, "_greentrack", False):
        return

    @functools.wraps(original)
    def create_model_card(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        try:
            if self.is_world_process_zero():  # the only process that writes the card
                for cb in self.callback_handler.callbacks:
                    if isinstance(cb, GreenTrackTrainerCallback):
                        cb.add_to_model_card(os.path.join(self.args.output_dir, "README.md"))
                        break
        except Exception as e:  # noqa: BLE001 - the card as the Trainer wrote it, never a failed push
            log.warning("greentrack: emissions not added to the model card: %s", e)
        return result

    create_model_card._greentrack = True  # type: ignore[attr-defined]
    Trainer.create_model_card = create_model_card  # type: ignore[method-assign]
