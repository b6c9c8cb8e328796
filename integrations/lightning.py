"""Lightning: per-step joules, FLOPs and MFU for every optimizer step, through every logger.

Example:
    >>> from greentrack.integrations.lightning import GreenTrackCallback
    >>> trainer = L.Trainer(callbacks=[GreenTrackCallback()])          # doctest: +SKIP
    >>> trainer.fit(model)                                             # doctest: +SKIP

Metrics, sent by rank 0 to every logger (TensorBoard, CSV, W&B, MLflow...) at the trainer's
logging cadence (``log_every_n_steps``, and at most once per ``log_every_s``) with
``step=trainer.global_step``, each only when it has new data since the previous log (no plateau of
a stale value, no 0 standing for "no reading yet"), and once more when training ends (a run shorter
than ``log_every_s`` gets its figures too): ``greentrack/step_energy_j``,
``greentrack/step_gpu_energy_j``, ``greentrack/step_duration_s``, ``greentrack/mfu``,
``greentrack/flops_per_j``, ``greentrack/energy_per_sample_j``, ``greentrack/energy_per_token_j``,
``greentrack/energy_j`` (this process, all resumed segments, the steps redone after
the checkpoint included), ``greentrack/steps`` (the global
step), ``greentrack/forecast_energy_j``, ``greentrack/forecast_duration_s`` (see
:mod:`greentrack.training.meter`). They also reach ``callback_metrics`` (``pl_module.log`` with
``logger=False``, as CPU tensors: no device copy, so no synchronization), and ``energy_kJ`` /
``forecast_kJ`` the progress bar. ``greentrack/validation_energy_j``: the joules of that
validation epoch's steps, logged at its end once they are resolved (a bounded wait, at most 2 s).
At the end of ``fit``/``validate``/``test``, rank 0 logs the whole run's totals (all ranks) as
``greentrack/run_*``, with ``run_steps`` the global step and ``run_joules_per_step`` the whole
job's energy per optimizer step.

Phases: ``train`` (one step per optimizer step: with ``accumulate_grad_batches=k`` a step spans
its ``k`` micro-batches), ``validation``, ``sanity_check``, ``test`` and ``predict`` (one step per
batch), kept apart in the store.

Distributed (``strategy="ddp"``): every rank measures its own GPUs; CPU and DRAM are measured by
local rank 0 of each node only; rank 0 chooses the run directory and broadcasts it, so every rank
writes its store into the same one.

Resume: the callback's ``state_dict`` holds the run directory and id; loading a checkpoint continues
the same run in a new store segment (totals are the sum of segments, nothing counted twice) with
step indices continuing from the checkpoint's ``global_step``. Steps the earlier segment did after
that checkpoint are done again: their joules stay in the totals and in ``greentrack/energy_j``,
and ``greentrack summary``, the report and ``greentrack advise`` (finding ``replayed``) state them.
"""

from __future__ import annotations

import functools
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lightning.pytorch.callbacks import Callback

from greentrack.common.config import Config
from greentrack.training.session import PREFIX, IntegrationRun, RunCallback, guarded, hook_failed

log = logging.getLogger("greentrack")


class GreenTrackCallback(Callback, RunCallback):
    """Tracks the energy of a Lightning run; see the module docstring.

    Args:
        run_dir: run directory; default ``<default_root_dir>/greentrack/<time>-<id>`` (or
            ``GREENTRACK_RUN_DIR``).
        flops: FLOPs per optimizer step: ``"auto"`` counts the first step once, a number, a
            :class:`greentrack.training.flops.StepFlops` (e.g. ``analytic(...)``), or None.
        samples_fn: ``batch -> samples``; default: the first dimension of the batch's first tensor.
        tokens_fn: ``batch -> tokens``, for joules per token (default: not recorded).
        planned_steps: optimizer steps of the run, for the forecast (default: the trainer's
            ``estimated_stepping_batches``).
        prog_bar: show ``energy_kJ`` and ``forecast_kJ`` on the progress bar.
        log_totals: rank 0 logs the whole run's totals at the end of each stage.
        log_every_s: log at the trainer's cadence, but at most once per this many seconds
            (``pl_module.log`` costs ~0.3 ms a metric on a slow CPU; 0: at every cadence point).
            The figures of the last steps are logged when training ends, however short the run.
        progress_every_s: period of the progress line on stderr, rank 0 (None: never;
            ``GREENTRACK_PROGRESS=0`` silences it too).
        config: a :class:`greentrack.Config`; ``**settings`` (any Config field) override it.

    Raises:
        ConfigError: a setting is invalid (at construction, before any training).
    """

    def __init__(self, run_dir: str | Path | None = None, *, flops: Any = "auto",
                 samples_fn: Any = None, tokens_fn: Any = None, planned_steps: int | None = None,
                 prog_bar: bool = True, log_totals: bool = True, log_every_s: float = 2.0,
                 progress_every_s: float | None = 60.0, config: Config | None = None,
                 **settings: Any) -> None:
        self.run = IntegrationRun(run_dir, config, settings, flops=flops,
                                  planned_steps=planned_steps, progress_every_s=progress_every_s)
        self._samples_fn, self._tokens_fn = samples_fn, tokens_fn
        self._prog_bar, self._log_totals = prog_bar, log_totals
        self._log_every_s = log_every_s
        self._next_log = 0.0
        self._stepped = False  # an optimizer step ran since the last on_train_batch_end
        self._steps = 0  # optimizer steps ended in this fit
        self._ask_at = 0  # from this many steps on, ask the trainer whether it logs now
        self._every = 1  # optimizer steps from one logging step to the next (1: ask each step)
        self._update_logs: Any = None  # the trainer's "is this a logging step?", bound
        self._samples = 0.0
        self._tokens = 0.0
        #: the fields of the last step closed: given again while they do not change (a constant
        #: batch size), so the meter and tracker take them without merging or checking them again
        self._fields: dict[str, float | None] = {"samples": None, "tokens": None}
        self._declined: list[str] = []  # hooks set to None for Lightning's dispatcher (setup)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.run.state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run.restore(state_dict)

    # -- lifecycle -----------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._decline_unused_hooks(trainer)
        _sync_advice_given(VALIDATION_ENERGY)
        # rank 0 decides, every rank writes into the same directory
        self.run.choose_dir(trainer.default_root_dir,
                            lambda chosen: str(trainer.strategy.broadcast(chosen, src=0)))

    def _decline_unused_hooks(self, trainer: Any) -> None:
        """The per-step hooks this callback has no use for are not dispatched to it: set to None
        on the instance, only where Lightning's own dispatcher calls it (it is in
        ``trainer.callbacks``, not inside a callback that forwards hooks itself), that dispatcher
        skips an attribute that is not callable, and the hook is neither a subclass's nor one
        set on the instance. :meth:`teardown` gives them back."""
        callbacks = getattr(trainer, "callbacks", None) or ()
        if not any(cb is self for cb in callbacks) or not _dispatch_skips_none():
            return
        for name in UNUSED_STEP_HOOKS:
            if name not in vars(self) and getattr(type(self), name) is getattr(Callback, name):
                setattr(self, name, None)
                self._declined.append(name)

    def _restore_hooks(self) -> None:
        for name in self._declined:
            vars(self).pop(name, None)
        self._declined.clear()

    def _start(self, trainer: Any, pl_module: Any) -> None:
        self.setup(trainer, pl_module, "")
        self.run.start(rank=trainer.global_rank, local_zero=trainer.local_rank == 0,
                       main=trainer.is_global_zero, device=pl_module.device,
                       dtype=trainer.precision)

    def _stop(self, trainer: Any, status: str, totals: bool) -> None:
        flat = self.run.stop(status, totals=totals and self._log_totals,
                             barrier=lambda: trainer.strategy.barrier("greentrack-totals"),
                             main=trainer.is_global_zero, optimizer_steps=trainer.global_step)
        if flat:
            for logger in trainer.loggers:
                logger.log_metrics(flat, step=trainer.global_step)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(trainer, pl_module)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(trainer, pl_module)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(trainer, pl_module)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(trainer, pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # The loops' progress is restored after on_fit_start: continue the step count from it.
        self._stepped, self._steps, self._ask_at = False, 0, 0
        self._every = trainer.log_every_n_steps if pl_module.automatic_optimization else 1
        self._update_logs = _should_update_logs(trainer)
        planned = None
        try:
            est = trainer.estimated_stepping_batches
            planned = int(est) if est != float("inf") else None
        except Exception:  # noqa: BLE001 - no forecast then
            planned = None
        self.run.begin_training(trainer.global_step, planned)

    @guarded
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # The last figures, however short the run (rank 0 logs; Lightning's loggers are rank 0's).
        if trainer.is_global_zero and self.meter is not None:
            flat = self.run.final_metrics()
            for logger in trainer.loggers if flat else ():
                logger.log_metrics(flat, step=trainer.global_step)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._restore_hooks()
        self._stop(trainer, "completed", totals=True)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop(trainer, "stopped" if isinstance(exception, KeyboardInterrupt) else "failed",
                   totals=False)

    # -- training steps (hot path) -------------------------------------------------------------
    # Per step: a clock read at the batch's start, one at its end and an append to the tracker's
    # queue. The hooks guard themselves inline (as :func:`guarded` would: no decorator frame);
    # the trainer's global step and logging cadence are not asked per step (Lightning's property
    # chains cost more than the mark itself).
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        try:
            meter = self.run.meter
            if meter is None:
                return
            if meter.marks.open_phase != "train":
                meter.begin("train")
            if self._samples_fn is not None:
                self._samples += float(self._samples_fn(batch) or 0)
            else:
                self._samples += float(_batch_size(batch) or 0)
            if self._tokens_fn is not None:
                self._tokens += float(self._tokens_fn(batch) or 0)
        except Exception as e:  # noqa: BLE001 - measurement must never break training
            hook_failed(self.run.meter, "on_train_batch_start", e)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # Lightning calls it once per optimizer step (after the closure, skipped AMP steps too,
        # as its global step counts them): the batch ending next closes a step.
        self._stepped = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        try:
            if not self._stepped:
                return  # gradient accumulation: the optimizer step is not done yet
            self._stepped = False
            meter = self.run.meter
            if meter is None:
                return
            samples, tokens, fields = self._samples or None, self._tokens or None, self._fields
            if fields["samples"] != samples or fields["tokens"] != tokens:
                fields = self._fields = {"samples": samples, "tokens": tokens}
            meter.close_step(fields)
            self._samples = self._tokens = 0.0
            if meter.tracker.budget_stop:  # on_budget="stop": set on the sampler thread
                trainer.should_stop = True
            # per step only the mark above: the trainer's metrics are read at its logging cadence
            self._steps += 1
            if self._steps < self._ask_at and not trainer.should_stop:
                return  # not a logging step: known without asking the trainer
            if not self._logging_now(trainer):
                self._ask_at = self._steps + 1
                return
            # the next logging step is log_every_n_steps optimizer steps on (one per batch that
            # stepped, under automatic optimization); a stop logs at once, so ask again then
            self._ask_at = self._steps + (1 if trainer.should_stop else self._every)
            gs = trainer.global_step
            self.run.record(dict(trainer.callback_metrics), step=gs)
            now = time.monotonic()
            if now >= self._next_log:
                self._next_log = now + self._log_every_s
                self._log(trainer, pl_module, self.run.live_metrics())
        except Exception as e:  # noqa: BLE001 - measurement must never break training
            hook_failed(self.run.meter, "on_train_batch_end", e)

    def _logging_now(self, trainer: Any) -> bool:
        # Lightning's own monitors ask the logger connector; fall back to the public cadence.
        if self._update_logs is not None:
            return bool(self._update_logs())
        n = trainer.log_every_n_steps
        return bool(n) and trainer.global_step % n == 0

    def _log(self, trainer: Any, pl_module: Any, metrics: dict[str, float]) -> None:
        """Rank 0 sends the figures to every logger itself, at this step only: a value given to
        ``pl_module.log(on_step=True)`` would be logged again at every later logging step until
        replaced (a plateau of stale values). ``pl_module.log(logger=False)`` still puts them in
        ``callback_metrics`` (for monitors) and, for the energy, on the progress bar."""
        if not metrics:
            return
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        for name, value in metrics.items():
            pl_module.log(name, _cpu(value), logger=False, on_step=True, on_epoch=False,
                          batch_size=1)
        if self._prog_bar:
            for name, shown in (("energy_j", "energy_kJ"), ("forecast_energy_j", "forecast_kJ")):
                if PREFIX + name in metrics:
                    pl_module.log(shown, _cpu(metrics[PREFIX + name] / 1000.0), prog_bar=True,
                                  logger=False, on_step=True, on_epoch=False, batch_size=1)

    # -- evaluation steps ----------------------------------------------------------------------
    def _eval_begin(self, trainer: Any, phase: str) -> None:
        meter = self.meter
        if meter is not None:
            meter.begin("sanity_check" if trainer.sanity_checking else phase)

    def _eval_end(self, batch: Any) -> None:
        meter = self.meter
        if meter is not None:
            samples = self._samples_fn(batch) if self._samples_fn is not None else _batch_size(batch)
            tokens = self._tokens_fn(batch) if self._tokens_fn is not None else None
            meter.end(samples=samples, tokens=tokens)

    @guarded
    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._eval_begin(trainer, "validation")

    @guarded
    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_end(batch)

    @guarded
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.meter is None or trainer.sanity_checking:
            return
        self.run.record(dict(trainer.callback_metrics), step=trainer.global_step)
        # This epoch's validation steps, once resolved (they come back on the sampler thread).
        for name, value in self.run.evaluation_metrics("validation").items():
            pl_module.log(name, _cpu(value), on_step=False, on_epoch=True, batch_size=1)

    @guarded
    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._eval_begin(trainer, "test")

    @guarded
    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_end(batch)

    @guarded
    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        self._eval_begin(trainer, "predict")

    @guarded
    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_end(batch)


#: Logged by every rank for its own validation steps, on purpose without ``sync_dist``: a
#: collective in a callback could hang training when a rank has nothing to log.
VALIDATION_ENERGY = "greentrack/validation_energy_j"


def _sync_advice_given(name: str) -> None:
    """Lightning advises ``sync_dist=True`` for a metric logged per epoch in a distributed run,
    once per message, through its own de-duplication cache (``WarningCache`` in
    ``lightning.pytorch.trainer.connectors.logger_connector.result``): the message about this
    callback's metric goes in as already given, so the advice, which does not apply to it, is
    never shown. The process's ``warnings`` filters, the user's, stay as they are; with
    another Lightning, where the cache or its message differ, the advice is simply shown."""
    try:
        from lightning.pytorch.trainer.connectors.logger_connector import result
        result.warning_cache.add(
            f"It is recommended to use `self.log({name!r}, ..., sync_dist=True)` when logging on "
            "epoch level in distributed setting to accumulate the metric across devices.")
    except Exception:  # noqa: BLE001 - cosmetic: the advice is shown, nothing else changes
        pass


#: Per-step hooks this callback has no use for. Lightning dispatches every hook to every callback
#: (a getattr, a profiler context and an f-string each: ~5 us a hook at ~1 ms steps on a 2-core
#: VM, bench/step_overhead.py's empty-callback row) unless the attribute is not callable; set to
#: None on the instance where the dispatcher is seen to skip such an attribute.
UNUSED_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_zero_grad")


@functools.lru_cache(maxsize=1)
def _dispatch_skips_none() -> bool:
    """Whether Lightning's callback dispatcher skips an attribute that is not callable, tried on
    a stand-in trainer (not read from its source); anything unexpected: False, hooks kept."""
    try:
        # a private module, inside the try: a Lightning without it keeps every hook
        from lightning.pytorch.trainer import call

        class Probe(Callback):
            pass

        probe = Probe()
        setattr(probe, UNUSED_STEP_HOOKS[0], None)
        stand_in = SimpleNamespace(callbacks=[probe], lightning_module=None,
                                   profiler=SimpleNamespace(profile=lambda name: nullcontext()))
        call._call_callback_hooks(stand_in, UNUSED_STEP_HOOKS[0])  # type: ignore[arg-type]
        return True
    except Exception:  # noqa: BLE001 - another Lightning: keep every hook as it is
        return False


def _should_update_logs(trainer: Any) -> Any:
    """The logger connector's ``should_update_logs`` (how Lightning's own monitors know a logging
    step), bound once; None where this Lightning has none."""
    connector = getattr(trainer, "_logger_connector", None)
    # asked of the class: hasattr on the instance would evaluate the property
    prop = getattr(type(connector), "should_update_logs", None) if connector is not None else None
    if not isinstance(prop, property) or prop.fget is None:
        return None
    return functools.partial(prop.fget, connector)


def _cpu(value: float) -> Any:
    """A CPU tensor for ``pl_module.log``: given a float, Lightning makes a tensor on the module's
    device, and on a GPU that host-to-device copy synchronizes the stream. A CPU tensor stays
    where it is (Lightning keeps each metric on its value's device): no synchronization."""
    import torch
    return torch.tensor(value, dtype=torch.float64)


def _batch_size(batch: Any) -> int | None:
    """First dimension of the batch's first tensor (tensors, lists, tuples, dicts)."""
    for _ in range(4):
        shape = getattr(batch, "shape", None)
        if shape is not None:
            return int(shape[0]) if len(shape) else None
        if isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        elif isinstance(batch, dict) and batch:
            batch = next(iter(batch.values()))
        else:
            return None
    return None


__all__ = ["GreenTrackCallback"]
