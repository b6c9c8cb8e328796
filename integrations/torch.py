"""Plain PyTorch: one line before a hand-written loop makes every optimizer step a tracked step.

Example:
    >>> from greentrack.integrations.torch import track_optimizer
    >>> tracking = track_optimizer(optimizer, "runs/exp1", model=model)   # doctest: +SKIP
    >>> for x, y in loader:                                                # unchanged loop
    ...     loss = loss_fn(model(x), y)
    ...     loss.backward()
    ...     optimizer.step()
    ...     optimizer.zero_grad()
    ...     tracking.count(samples=len(x))          # optional: joules per sample
    >>> with tracking.step("validation"):           # other phases, kept apart
    ...     evaluate(model)
    >>> tracking.close()                             # or use it as a context manager

How steps are found: ``optimizer.step`` gets a post-hook (``register_step_post_hook``), so a step is
an optimizer step, whatever the gradient accumulation. With ``model=``, a step starts at the model's
first forward in training mode after the previous optimizer step (data loading and evaluation between
steps are not part of it); without, it starts where the previous one ended. A step that
``GradScaler`` skips (inf/NaN gradients) is not an optimizer step: its work joins the next one.

On a CUDA model, step boundaries are CUDA events on the current stream, resolved later without
synchronizing (see :mod:`greentrack.training.stepmarks`). ``tracking.metrics()`` gives the live metrics of
:mod:`greentrack.training.meter` for any logger.

Distributed (``torch.distributed`` initialized, more than one rank): ``close()`` (or the end of the
``with`` block without an exception) gathers every node's stores to rank 0 over the job's process
group, so ``tracking.summary`` on rank 0 holds the whole job's totals, each host counted once,
even where every node writes its own directory (:mod:`greentrack.training.gathering`). It is a collective:
every rank must call ``close``; pass ``gather_totals=False`` if only some ranks track. Every node
must record the same run id: torchrun's ``TORCHELASTIC_RUN_ID`` does it, else set
``GREENTRACK_RUN_ID`` (or ``run_id=``) alike on every node.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from greentrack.common.config import launcher_int
from greentrack.common.labels import (autocast_precision, dtype_precision, model_precision,
                                      precision_of)
from greentrack.process.tracker import Tracker
from greentrack.run import RunTotals
from greentrack.training import gathering
from greentrack.training.meter import TrainingMeter, planned_steps_of
from greentrack.training.session import hook_failed


class OptimizerTracking:
    """The handle :func:`track_optimizer` returns; see the module docstring."""

    def __init__(self, optimizer: Any, tracker: Any, meter: TrainingMeter, model: Any,
                 owns_tracker: bool, samples_per_step: float | None,
                 tokens_per_step: float | None, gather_totals: bool = True) -> None:
        self.optimizer, self.tracker, self.meter, self.model = optimizer, tracker, meter, model
        self._marks = meter.marks  # read by both hooks at every step
        self._owns = owns_tracker
        self._gather = gather_totals
        #: On global rank 0 after ``close()`` under ``torch.distributed``: the whole job's totals
        #: (``greentrack summary --json``, every node); None elsewhere.
        self.summary: RunTotals | None = None
        self._samples = 0.0
        self._tokens = 0.0
        #: what ``count`` added since the previous optimizer step, if anything
        self._counted = False
        #: a step's fields without ``count``: the same dict at every step (the meter copies it)
        self._fixed = {"samples": samples_per_step, "tokens": tokens_per_step}
        #: the precision is still to be told from the first training forward (autocast) or the
        #: parameters' dtype (see :func:`track_optimizer`)
        self._precision_open = "precision" not in tracker.labels
        self._hooks = [optimizer.register_step_post_hook(self._after_step)]
        if model is not None:
            self._hooks.append(model.register_forward_pre_hook(self._before_forward))
        else:
            meter.begin("train")

    # -- hooks (hot path) ----------------------------------------------------------------------
    # The two hooks guard themselves inline (as :func:`guarded` would): no decorator frame per
    # step. Per step each is a clock read and, after a step, a queue append.
    def _before_forward(self, module: Any, args: Any) -> None:
        try:
            if module.training:
                if self._marks.open_phase is None:
                    self.meter.begin("train")
                if self._precision_open:
                    self._label_precision(module)
        except Exception as e:  # noqa: BLE001 - measurement must never break training
            hook_failed(self.meter, "_before_forward", e)

    def _label_precision(self, module: Any) -> None:
        """The run's ``precision`` label, once: an active autocast's dtype, else the model's
        parameters' (``labels.model_precision``)."""
        self._precision_open = False
        found = autocast_precision() or model_precision(module)
        if found is not None:
            self.tracker.add_labels(precision=found, only_missing=True)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            meter = self.meter
            # without a model the next step starts where this one ends (one clock read)
            then = None
            if self.model is None:
                then = "train"
                if self._precision_open:  # no forward seen: the parameters' dtype
                    self._label_parameters(optimizer)
            info = self._fixed
            if self._counted:
                info = {"samples": self._samples or info["samples"],
                        "tokens": self._tokens or info["tokens"]}
                self._samples = self._tokens = 0.0
                self._counted = False
            if self._marks.open_phase == "train":
                meter.close_step(info, then)
            elif then is not None:
                meter.begin(then)
        except Exception as e:  # noqa: BLE001 - measurement must never break training
            hook_failed(self.meter, "_after_step", e)

    def _label_parameters(self, optimizer: Any) -> None:
        self._precision_open = False
        params = [p for g in optimizer.param_groups for p in g["params"]]
        found = dtype_precision(params[0].dtype) if params else None
        if found is not None:
            self.tracker.add_labels(precision=found, only_missing=True)

    def count(self, samples: float | None = None, tokens: float | None = None) -> None:
        """Add samples and tokens to the current step (recorded when it ends)."""
        if samples:
            self._samples += samples
            self._counted = True
        if tokens:
            self._tokens += tokens
            self._counted = True

    # -- other phases ----------------------------------------------------------------------------
    @contextmanager
    def step(self, phase: str = "validation", **info: Any) -> Iterator[None]:
        """One step of another phase (``validation``, ``test``...), on the same timeline."""
        meter = self.meter
        resume_train = meter.marks.open_phase == "train" and self.model is None
        if meter.marks.open_phase is not None:
            meter.cancel()  # the open training window would overlap this step
        meter.begin(phase)
        try:
            yield
        finally:
            meter.end(**info)
            if resume_train:
                meter.begin("train")

    def metrics(self) -> dict[str, float]:
        """Live metrics (``step_energy_j``, ``mfu``, ``energy_j``, forecast...): no I/O."""
        return self.meter.metrics()

    # -- end -------------------------------------------------------------------------------------
    def close(self, status: str = "completed") -> None:
        """Remove the hooks and resolve the last steps; stop the tracker if this call made it.
        Under ``torch.distributed``, a completed close by a tracker made here gathers the job's
        totals to rank 0 (:attr:`summary`; a collective: see the module docstring)."""
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook.remove()
        if not self._owns:
            self.meter.marks.drain()
            self.meter.release()
            return
        if not hooks:
            return  # closed already: no second collective
        tracked = self.tracker.status == "running"
        self.meter.close(status)
        if status == "completed" and self._gather and gathering.distributed():
            import torch.distributed as dist
            own = [self.tracker.store_path] if self.tracker.store_path is not None else []
            part = gathering.node_part(self.tracker.run_dir, own, rank=dist.get_rank(),
                                       local_zero=launcher_int("LOCAL_RANK", 0) == 0, tracked=tracked)
            self.summary = gathering.job_totals(
                self.tracker.run_dir, part, main=dist.get_rank() == 0,
                store=own[0] if own else None, world_size=dist.get_world_size())

    def __enter__(self) -> OptimizerTracking:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close("completed" if exc_type is None else
                   "stopped" if issubclass(exc_type, KeyboardInterrupt) else "failed")


def track_optimizer(optimizer: Any, tracker: Any = None, *, model: Any = None, flops: Any = None,
                    dtype: Any = None, samples_per_step: float | None = None,
                    tokens_per_step: float | None = None, planned_steps: int | None = None,
                    progress_every_s: float | None = 60.0, gather_totals: bool = True,
                    **settings: Any) -> OptimizerTracking:
    """Track every step of ``optimizer`` from now on.

    Args:
        optimizer: a ``torch.optim.Optimizer``.
        tracker: a :class:`greentrack.Tracker` (started here if needed, stopped by the caller), or a
            run directory (a tracker is made with ``**settings`` and stopped by ``close``), or None
            (``GREENTRACK_RUN_DIR`` or the default directory).
        model: the model; when given, steps start at its first training-mode forward.
        flops: FLOPs per optimizer step: ``"auto"`` counts the first step once (call this right
            before the loop), a number, a :class:`greentrack.training.flops.StepFlops`, or None.
        dtype: compute dtype for MFU (default: the parameters'; give it under autocast). It is
            also the run's ``precision`` label unless one is set; without it, the label is the
            autocast dtype at the model's first training forward (``model=``), else the
            parameters' dtype.
        samples_per_step, tokens_per_step: constants per step (or use ``count``).
        planned_steps: optimizer steps of the run, for the forecast.
        progress_every_s: period of the progress line on stderr (``RANK`` 0; None: never;
            ``GREENTRACK_PROGRESS=0`` silences it too).
        gather_totals: under ``torch.distributed``, ``close()`` gathers the job's totals to rank
            0 (every rank must then call it); False: no collective (rank 0 reads its directory).
        **settings: any :class:`greentrack.Config` field, for a tracker made here.

    Raises:
        ConfigError: a setting is invalid.
    """

    planned_steps = planned_steps_of(planned_steps)  # before anything starts
    owns = not isinstance(tracker, Tracker)
    if owns:
        run_dir = Path(tracker) if tracker is not None else None
        tracker = Tracker(run_dir, **settings)
    if not tracker.running:
        tracker.start()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device if params else None
    meter = TrainingMeter(tracker, device=device, flops=flops,
                          dtype=dtype if dtype is not None else (params[0].dtype if params else None),
                          planned_steps=planned_steps, main=launcher_int("RANK", 0) == 0,
                          progress_every_s=progress_every_s)
    meter.start_counting()  # outside any forward: the counter sees whole module calls
    if dtype is not None:
        found = precision_of(dtype)
        if found is not None:
            tracker.add_labels(precision=found, only_missing=True)
    return OptimizerTracking(optimizer, tracker, meter, model, owns, samples_per_step,
                             tokens_per_step, gather_totals)


__all__ = ["track_optimizer", "OptimizerTracking"]
