"""The framework integrations' shared sequence: run directory, start, resume, stop, totals.

The Lightning and Hugging Face callbacks each map their hooks onto one :class:`IntegrationRun`:

* :meth:`IntegrationRun.choose_dir`: rank 0 picks the run directory (the user's, else a fresh one
  under the framework's output directory) and the run id, and every rank gets both through the
  framework's broadcast (node-local directories of one job then carry one run id);
* :meth:`IntegrationRun.start`: a tracker for this rank (host CPU and DRAM on local rank 0) and a
  :class:`~greentrack.training.meter.TrainingMeter`, continuing a resumed run (``carry``);
* :meth:`IntegrationRun.begin_training`: step indices continue from the framework's global step;
* :meth:`IntegrationRun.evaluation_metrics`: one evaluation's joules, once its steps are resolved;
* :meth:`IntegrationRun.final_metrics`: the last live figures of a stage (a run shorter than the
  logging period gets its figures too);
* :meth:`IntegrationRun.stop`: close this rank's store; under ``torch.distributed`` every rank
  sends its node's stores (compact copies) to rank 0 in one ``gather_object``
  (:mod:`greentrack.training.gathering`: no shared filesystem needed), else a barrier; on rank 0 the whole
  job's totals (every node, rank and segment, each host once) as ``greentrack/run_*`` metrics,
  with ``run_steps`` the framework's global step.

Nothing here imports a framework; torch is imported by the meter only for CUDA marks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from greentrack.common.config import Config, env_run_id
from greentrack.common.errors import ConfigError
from greentrack.common.labels import precision_of
from greentrack.common.once import warn_once
from greentrack.process.tracker import Tracker
from greentrack.run import Run, RunTotals, energy_before_j
from greentrack.store import host_identity
from greentrack.store.layout import new_run_id
from greentrack.training import gathering
from greentrack.training.flops import StepFlops
from greentrack.training.meter import SETTLE_S, TrainingMeter, planned_steps_of

log = logging.getLogger("greentrack")
#: Prefix of every metric the integrations log.
PREFIX = "greentrack/"


def prefixed(metrics: dict[str, float]) -> dict[str, float]:
    return {PREFIX + k: v for k, v in metrics.items()}


class IntegrationRun:
    """One framework callback's run: the state it keeps across stages and checkpoints.

    Args:
        run_dir, config, settings: as the callbacks take them (see :func:`resolve_config`).
        flops: FLOPs per optimizer step for the meter (``"auto"``, a number, a StepFlops, None).
        planned_steps: optimizer steps of the run, for the forecast (None: the framework's).
        progress_every_s: period of the progress line (rank 0; None: never).
    """

    def __init__(self, run_dir: Any, config: Config | None, settings: dict[str, Any], *, flops: Any,
                 planned_steps: int | None, progress_every_s: float | None) -> None:
        self.config, self.dir_chosen = resolve_config(run_dir, config, settings)
        self.flops, self.planned_steps = flops, planned_steps_of(planned_steps)
        self.progress_every_s = progress_every_s
        self.run_dir: Path | None = None
        #: the run id rank 0 chose and broadcast (None: not distributed, run.json decides)
        self.run_id: str | None = None
        #: this rank's store files, every stage (sent to rank 0 at the end of each)
        self.stores: list[Path] = []
        #: rank 0's (host, boot id), broadcast with the run directory: ranks on that host write
        #: into the directory rank 0 reads, and send it nothing at the end of a stage
        self.main_host: tuple[str, str] | None = None
        self.local_zero = True
        self.carry: dict[str, Any] = {}  # state of the run so far (a checkpoint or a past stage)
        self.meter: TrainingMeter | None = None
        #: The whole run's totals (all ranks and segments), on rank 0 after each stage.
        self.summary: RunTotals | None = None
        #: the last value of each logged metric recorded (``record`` records only new ones)
        self._last_metrics: dict[str, Any] = {}

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the live meter's state, else the last one."""
        return self.meter.state() if self.meter is not None else dict(self.carry)

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue the run a checkpoint's :meth:`state` describes."""
        self.carry = dict(saved)
        where = saved.get("run_dir")
        if where and self.run_dir is not None and Path(where) != self.run_dir:
            log.info("greentrack: resuming run %s in %s (from the checkpoint)",
                     saved.get("run_id"), where)
        if where:
            self.run_dir = Path(where)

    # -- start ---------------------------------------------------------------------------------
    def choose_dir(self, root: Any, broadcast: Callable[[str], str] | None = None) -> Path:
        """The run directory: kept if known, else the user's or a fresh one under ``root``, as rank
        0 chose it (``broadcast``: the framework's, rank 0's value to every rank). With a
        broadcast, rank 0's run id goes with it: nodes that write into their own copy of the
        directory record one run."""
        if self.run_dir is None:
            chosen = str(self.config.run_dir if self.dir_chosen else new_run_dir(root))
            if broadcast is None:
                self.run_dir = Path(chosen)
                return self.run_dir
            run_id = (self.carry.get("run_id") or self.config.run_id or env_run_id()
                      or new_run_id())
            try:
                got = json.loads(broadcast(json.dumps([chosen, run_id, *host_identity()])))
                self.run_dir, self.run_id = Path(got[0]), str(got[1])
                self.main_host = (str(got[2]), str(got[3]))
            except (TypeError, ValueError, IndexError):  # a broadcast of older code's plain text
                self.run_dir = Path(chosen)
        return self.run_dir

    def start(self, *, rank: int | None, local_zero: bool, main: bool, device: Any,
              dtype: Any) -> TrainingMeter | None:
        """Start this rank's tracker and meter (once; None if tracking could not start).
        Call :meth:`choose_dir` first. A bad setting raises ``ConfigError``."""
        if self.meter is not None or self.run_dir is None:
            return self.meter
        cfg = self.config.replace(run_dir=self.run_dir, run_id=self.carry.get("run_id")
                                  or self.config.run_id or self.run_id)
        if cfg.rank is None and rank is not None:
            cfg = cfg.replace(rank=rank)
        self.local_zero = local_zero
        # the emissions.csv row is the whole run's: rank 0 appends it in stop(), after the barrier
        tracker = start_tracker(cfg.replace(emissions_csv=None), local_zero=local_zero)
        if tracker is None:
            return None
        if tracker.store_path is not None:
            self.stores.append(tracker.store_path)
        self.meter = TrainingMeter(
            tracker, device=device, flops=resume_flops(self.carry) or self.flops, dtype=dtype,
            planned_steps=self.planned_steps, prior=self._prior(tracker.store_path), main=main,
            progress_every_s=self.progress_every_s)
        tracker.continue_steps({k: int(v) for k, v in self.carry.get("steps", {}).items()})
        precision = precision_of(dtype)
        if precision is not None:  # what the framework uses, unless the user labelled it
            tracker.add_labels(precision=precision, only_missing=True)
        return self.meter

    def _prior(self, own_store: Path | None) -> dict[str, Any]:
        """What the meter continues from: the checkpoint's (or the past stage's) state, with the
        energy this process's earlier stores recorded when the run directory holds them. A
        checkpoint's energy stops at the checkpoint: a run resumed from it redoes the steps
        after it, whose joules were spent all the same (the run's totals hold them), so the
        logged ``energy_j`` would otherwise end short of the run's energy."""
        prior = dict(self.carry)
        if not prior or own_store is None or self.run_dir is None:
            return prior  # a fresh run: nothing before it
        try:
            with Run.open(self.run_dir, note_copies=False) as run:
                recorded = energy_before_j(run, own_store)
        except Exception as e:  # noqa: BLE001 - the checkpoint's figure then, never a failed start
            log.debug("greentrack: earlier segments not read (%s); continuing from the "
                      "checkpoint's energy", e)
            return prior
        if recorded is not None:
            prior["energy_j"] = recorded
        return prior

    def record(self, metrics: dict[str, Any], step: int | None) -> None:
        """Record the framework's logged metrics (losses...) that changed since the last call,
        with the cumulative energy (``Tracker.record``); greentrack's own are left out."""
        meter = self.meter
        if meter is None:
            return
        new = {}
        for name, value in metrics.items():
            name = str(name)
            if name.startswith(PREFIX) or isinstance(value, (str, bool)) or value is None:
                continue
            if self._last_metrics.get(name) is value:
                continue
            self._last_metrics[name] = value
            new[name] = value
        if new:
            meter.tracker.record(step=step, **new)

    def begin_training(self, global_step: int, planned_steps: int | None = None) -> None:
        """Training starts (or resumes) at ``global_step``: steps continue from it."""
        meter = self.meter
        if meter is None:
            return
        meter.train_steps = global_step
        meter.tracker.continue_steps({"train": global_step})
        planned = self.planned_steps if self.planned_steps is not None else planned_steps
        meter.plan(planned)

    # -- figures -------------------------------------------------------------------------------
    def live_metrics(self) -> dict[str, float]:
        """The meter's live figures with new data, prefixed (training thread; no I/O)."""
        return prefixed(self.meter.new_metrics()) if self.meter is not None else {}

    def evaluation_metrics(self, phase: str = "validation",
                           timeout_s: float = SETTLE_S) -> dict[str, float]:
        """``greentrack/<phase>_energy_j``: the joules of the evaluation steps ended since the
        previous call (one validation epoch), waiting up to ``timeout_s`` for them to resolve;
        empty if none did."""
        meter = self.meter
        if meter is None:
            return {}
        sums = meter.take_phase(phase, timeout_s)
        return {} if sums is None else {f"{PREFIX}{phase}_energy_j": sums["energy_j"]}

    def final_metrics(self, timeout_s: float = SETTLE_S) -> dict[str, float]:
        """The live figures once the stage's last training steps are resolved (bounded wait)."""
        meter = self.meter
        if meter is None:
            return {}
        meter.settle("train", timeout_s)
        return self.live_metrics()

    # -- stop ----------------------------------------------------------------------------------
    def stop(self, status: str, *, totals: bool, barrier: Callable[[], None], main: bool,
             optimizer_steps: int | None) -> dict[str, float]:
        """Close this rank's meter and store; with ``totals`` (every rank must call this), rank 0
        (``main``) returns the whole job's ``greentrack/run_*`` metrics and keeps the totals in
        :attr:`summary`. Empty otherwise.

        Under ``torch.distributed`` (more than one rank) the ranks' stores reach rank 0 through
        one ``gather_object`` (:func:`greentrack.training.gathering.job_totals`), which is also the
        synchronization; otherwise ``barrier`` is called, then rank 0 reads the run directory."""
        meter, self.meter = self.meter, None
        tracked = meter is not None
        if meter is not None:
            self.carry = meter.state()
            meter.close(status)
        csv_row = meter is not None and main and bool(self.config.emissions_csv)
        if not totals or self.run_dir is None:
            if csv_row:  # no barrier to wait for: what the stores hold now
                self._append_csv()
            return {}
        if gathering.distributed():
            import torch.distributed as dist
            rank = dist.get_rank()
            part = gathering.node_part(self.run_dir, self.stores, rank=rank,
                                       local_zero=self.local_zero, tracked=tracked,
                                       main_host=self.main_host)
            # rank 0's row is the whole job's: every node's stores, as the totals read them
            found_totals = gathering.job_totals(
                self.run_dir, part, main=main, store=self.stores[-1] if self.stores else None,
                world_size=dist.get_world_size(),  # synchronizes every rank, like the barrier
                with_dirs=self._append_csv if main and csv_row else None)
            found = None if found_totals is None else _with_metrics(found_totals, optimizer_steps)
        else:
            barrier()  # every rank's store is closed past this point (reached tracked or not)
            found = final_totals(self.run_dir, optimizer_steps) if main else None
            if main and csv_row:
                self._append_csv()
        if not main or found is None:
            return {}
        self.summary = s = found[0]
        log.info("greentrack: run %s: %.1f J (%.4g kWh) over %.1f s, %d optimizer steps, all "
                 "ranks; %s", s["run_id"], s["energy_j"]["total"], s["energy_kwh"],
                 s["duration_s"], s["optimizer_steps"], self.run_dir)
        return prefixed(found[1])


    def _append_csv(self, dirs: list[Path] | None = None) -> None:
        """The run's ``emissions.csv`` row: of ``dirs`` (node-local directories of the job, read
        together) or of the run directory."""
        if self.run_dir is not None:
            where = "+".join(str(d) for d in dirs) if dirs else self.run_dir
            # the report builders load at the stop of a run that asked for a row, not when the
            # integration is imported (greentrack.reports.__getattr__ says why)
            from greentrack.reports.document import append_run
            append_run(where, self.config.replace(run_dir=self.run_dir))


class RunCallback:
    """What the framework callbacks expose from their :class:`IntegrationRun` (``self.run``)."""

    run: IntegrationRun

    @property
    def meter(self) -> TrainingMeter | None:
        """The live meter, while a stage runs (None otherwise, or when tracking is off)."""
        return self.run.meter

    @property
    def summary(self) -> RunTotals | None:
        """The whole run's totals (all ranks and segments), on rank 0 after each stage."""
        return self.run.summary


def resolve_config(run_dir: Any, config: Config | None,
                   settings: dict[str, Any]) -> tuple[Config, bool]:
    """The integration's :class:`~greentrack.common.config.Config` (validated now, so a bad setting
    fails before training) and whether the user chose the run directory (argument, ``config`` or
    ``GREENTRACK_RUN_DIR``). Otherwise the integration picks a fresh one on rank 0."""
    if run_dir is not None:
        settings = {**settings, "run_dir": run_dir}
    base = config if config is not None else Config.from_env()
    cfg = base.replace(**settings) if settings else base
    chosen = (run_dir is not None or "GREENTRACK_RUN_DIR" in os.environ
              or (config is not None and not config.run_dir_is_default)
              or "run_dir" in settings)
    return cfg, chosen


def new_run_dir(root: Any) -> Any:
    """A fresh run directory under ``root/greentrack/`` (time-stamped, never a reused one)."""
    from pathlib import Path
    return Path(root) / "greentrack" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def run_totals(run_dir: Any) -> RunTotals:
    """The whole run's totals (every rank and segment, as ``greentrack summary --json``) with the
    energy of each phase's steps added as ``phase_energy_j``: one read of the run."""

    with Run.open(run_dir) as run:
        return run.summary_by_phase()


def final_totals(run_dir: Any, optimizer_steps: int | None = None
                 ) -> tuple[RunTotals, dict[str, float]] | None:
    """For rank 0 at the end of a stage: the run's totals and their flat metrics, or None (with
    a warning) if the run directory cannot be read; the training is never failed over it.
    ``optimizer_steps``: the framework's global step (see :func:`totals_metrics`)."""
    try:
        totals = run_totals(run_dir)
    except Exception as e:  # noqa: BLE001
        log.warning("greentrack: could not read the run's totals: %s", e)
        return None
    return _with_metrics(totals, optimizer_steps)


def _with_metrics(totals: RunTotals, optimizer_steps: int | None
                  ) -> tuple[RunTotals, dict[str, float]]:
    flat = totals_metrics(totals, optimizer_steps)
    totals["optimizer_steps"] = int(flat["run_steps"])
    return totals, flat


def totals_metrics(totals: Mapping[str, Any], optimizer_steps: int | None = None) -> dict[str, float]:
    """Flat run totals for loggers (``run_energy_j``, ``run_gpu_energy_j``, ...).

    ``run_steps`` is the run's optimizer steps as the framework counts them (its global step: one
    rank's training steps, all segments, no evaluation or sanity-check step), not the rows of every
    rank and phase; ``run_joules_per_step`` is the whole job's energy (every rank) per such step.
    Without ``optimizer_steps``, the read model's (one rank's train steps, all segments)."""
    e = totals["energy_j"]
    steps = optimizer_steps if optimizer_steps is not None else int(totals.get("optimizer_steps", 0))
    out = {"run_energy_j": float(e["total"]), "run_energy_kwh": float(totals["energy_kwh"]),
           "run_duration_s": float(totals["duration_s"]), "run_steps": float(steps),
           "run_gpu_seconds": float(totals["gpu_seconds"])}
    if steps > 0:
        out["run_joules_per_step"] = float(e["total"]) / steps
    for kind in ("gpu", "cpu", "dram"):
        if e.get(kind) is not None:
            out[f"run_{kind}_energy_j"] = float(e[kind])
    for phase, joules in totals.get("phase_energy_j", {}).items():
        out[f"run_{phase}_steps_energy_j"] = joules
    return out


def resume_flops(state: dict[str, Any]) -> StepFlops | None:
    """The FLOPs per step a resumed run had measured, so it is not counted again."""
    if state.get("flops") and state.get("flops_method"):
        return StepFlops(float(state["flops"]), str(state["flops_method"]),
                         str(state.get("flops_detail") or "") + " (from the resumed checkpoint)")
    return None


def start_tracker(config: Config, local_zero: bool) -> Any:
    """Start a tracker for a framework integration, or return None if it cannot start.

    ``local_zero``: this process is the node's first (it measures host CPU and DRAM unless the
    settings say otherwise). A bad setting (``ConfigError``) propagates, before any training;
    anything else is a warning and the run trains untracked: measurement never breaks training.
    """
    if config.host_energy is None:
        config = config.replace(host_energy=local_zero)
    try:
        tracker = Tracker(config=config).start()  # warns and disables itself on any failure
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - never break training over measurement
        log.warning("greentrack: tracking disabled for this run: %s", e)
        return None
    return tracker if tracker.status == "running" else None


_F = TypeVar("_F", bound=Callable[..., Any])
_HOOK_ERRORS: dict[tuple[int, str], int] = {}
#: Events recorded per hook and meter before further errors of that hook are only counted.
MAX_HOOK_EVENTS = 10


def guarded(fn: _F) -> _F:
    """For the integrations' per-step hooks: an exception (a greentrack bug, a user's
    ``samples_fn`` failing, a CUDA event refused) is recorded as a ``hook-error`` event and
    warned about once; it never reaches the training loop, which goes on (that step may be
    missing from the per-step record; device totals are unaffected). Not for hooks that hold a
    collective (a barrier skipped on one rank would hang the others). The per-step hooks write
    the same ``try``/``except`` inline around their body and call :func:`hook_failed`: a
    decorator's frame is a call per step on the training thread."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - measurement must never break training
            hook_failed(getattr(self, "meter", None), name, e)
            return None

    return wrapper  # type: ignore[return-value]


def hook_failed(meter: Any, hook: str, error: Exception) -> None:
    """What :func:`guarded` does with an exception of ``hook``: a ``hook-error`` event (the first
    :data:`MAX_HOOK_EVENTS` of it) and one warning. Never raises."""
    key = (id(meter), hook)
    n = _HOOK_ERRORS[key] = _HOOK_ERRORS.get(key, 0) + 1
    engine = getattr(getattr(meter, "tracker", None), "engine", None)
    # said once per run (a resumed run's new meter, or a second fit(), fails the same way)
    warn_once(log, getattr(engine, "run_key", None) or f"meter-{id(meter)}", f"hook-error:{hook}",
              "greentrack: %s failed (training goes on; recorded in the run): %s: %s", hook,
              type(error).__name__, error)
    if n <= MAX_HOOK_EVENTS:
        try:
            meter.tracker.engine.event("error", "hook-error", f"{hook}: {type(error).__name__}: "
                                       f"{error}", occurrence=n)
        except Exception:  # noqa: BLE001 - no tracker (yet): the warning stands alone
            pass


__all__ = ["IntegrationRun", "RunCallback", "PREFIX", "prefixed", "resume_flops", "resolve_config", "new_run_dir",
           "run_totals", "totals_metrics", "final_totals", "start_tracker", "guarded",
           "hook_failed",
           "MAX_HOOK_EVENTS"]
