"""What every training integration shares, framework-free: marks, FLOPs, live metrics, forecast.

The integrations (``greentrack.integrations.lightning``, ``.transformers``, ``.torch``) only map their
framework's hooks onto :meth:`TrainingMeter.begin` / :meth:`TrainingMeter.end` and forward
:meth:`TrainingMeter.metrics` to the framework's loggers.

Threads: ``begin``/``end``/``metrics`` run on the training thread and cost microseconds (a clock read
or a CUDA event record, a deque append, a few additions). Step rows come back on the sampler thread
through a step listener, which only adds them to running sums under a lock, and writes the periodic
progress line, so the training thread does no I/O.

Metrics (keys of :meth:`TrainingMeter.metrics`; integrations prefix them with ``greentrack/``):

* ``step_energy_j``, ``step_gpu_energy_j``, ``step_duration_s``: mean per training step over the
  steps attributed since the previous call (all device kinds; GPU only; seconds).
* ``mfu``, ``flops_per_j``, ``energy_per_sample_j``, ``energy_per_token_j``: over the same steps,
  when FLOPs, samples or tokens are known (MFU also needs the device's peak).
* ``energy_j``: energy of this process so far, all segments of a resumed run included.
* ``steps``: training steps attributed so far, all segments included.
* ``forecast_energy_j``, ``forecast_duration_s`` (and ``forecast_emissions_g``, ``forecast_cost``
  when the carbon and price settings allow): the whole run, see :mod:`greentrack.forecast`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from greentrack.flops import (METHOD_COUNTED, FirstStepCounter, Peak, StepFlops, device_peak,
                              given)
from greentrack.forecast import Forecast, format_forecast
from greentrack.timeline import StepMarks

log = logging.getLogger("greentrack")

_SUMS = ("n", "energy_j", "gpu_j", "gpu_n", "duration_s", "flops", "samples", "tokens", "flops_s")


def _zero() -> dict[str, float]:
    return dict.fromkeys(_SUMS, 0.0)


class TrainingMeter:
    """Steps, FLOPs and metrics of one training process, over a started tracker.

    Args:
        tracker: a started :class:`greentrack.Tracker`.
        device: where the model runs (``torch.device`` or string); CUDA marks on the GPU timeline.
        flops: FLOPs per optimizer step: ``"auto"`` (count the first step), a number, a
            :class:`~greentrack.flops.StepFlops` (e.g. :func:`~greentrack.flops.analytic`), or None.
        dtype: compute dtype or precision (``"bf16-mixed"``, ``torch.float16``...) for MFU.
        planned_steps: optimizer steps of the whole run, for the forecast.
        prior: totals of earlier segments of a resumed run: ``energy_j``, ``elapsed_s``, ``steps``.
        main: this process writes the progress line (rank 0).
        progress_every_s: period of the progress line (``None``: never).
    """

    def __init__(self, tracker: Any, *, device: Any = None, flops: Any = None, dtype: Any = None,
                 planned_steps: int | None = None, prior: dict[str, Any] | None = None,
                 main: bool = True, progress_every_s: float | None = 60.0) -> None:
        self.tracker = tracker
        self.marks = StepMarks(self, device)
        self.prior = {"energy_j": 0.0, "elapsed_s": 0.0, "steps": {}, **(prior or {})}
        self.flops: StepFlops | None = None
        self._counter: FirstStepCounter | None = None
        if flops == "auto":
            self._counter = FirstStepCounter()
        elif isinstance(flops, StepFlops):
            self.flops = flops
        elif flops is not None:
            self.flops = given(flops)
        self._device, self._dtype = device, dtype
        self.peak: Peak | None = None
        self._peak_known = False
        self._train_info: dict[str, Any] = {}
        self.train_steps = int(self.prior["steps"].get("train", 0))  # steps ended, all segments
        self._t_start = time.monotonic()
        self.forecast = Forecast.for_config(planned_steps, tracker.config)
        self.main = main
        self._progress_every_s = progress_every_s
        self._next_progress = time.monotonic() + (progress_every_s or 0.0)
        self._lock = threading.Lock()
        self._phase: dict[str, dict[str, float]] = {}
        self._fresh = _zero()
        if self.flops is not None:
            self._on_flops_known()
        tracker.add_step_listener(self._on_row)

    # -- the hot path (training thread) ---------------------------------------------------------
    def begin(self, phase: str = "train") -> None:
        """Open a step. The first training step is counted when ``flops="auto"``."""
        if phase == "train" and self._counter is not None and not self._counter.active:
            self.start_counting()
        self.marks.begin(phase)

    def start_counting(self) -> None:
        """Start counting FLOPs now (``flops="auto"``), up to the end of the next training step.
        Call it outside any module's forward (``begin`` does this for you)."""
        if self._counter is not None and not self._counter.active and not self._counter.start():
            self._counting_failed(self._counter.error)

    def end(self, **info: Any) -> None:
        """Close the open step; ``info`` may carry ``samples``, ``tokens`` and extras."""
        phase = self.marks.open_phase
        if phase is None:
            return
        if phase == "train":
            self.train_steps += 1
            if self._counter is not None and self._counter.active:
                self._finish_counting(info)
            if self._train_info:
                info = {**self._train_info, **info}
        self.marks.end(**info)

    def cancel(self) -> None:
        self.marks.cancel()

    def submit_window(self, phase: str, t0: float, t1: float, **info: Any) -> None:
        """Forward a resolved mark to the tracker, with the step's MFU (called by the marks)."""
        if self.peak is not None and info.get("flops") and t1 > t0:
            info["mfu"] = info["flops"] / (t1 - t0) / self.peak.flops_per_s
        self.tracker.submit_window(phase, t0, t1, **info)

    # -- FLOPs ----------------------------------------------------------------------------------
    def _finish_counting(self, info: dict[str, Any]) -> None:
        counter, self._counter = self._counter, None
        assert counter is not None
        result = counter.stop()
        if result is None:
            self._counting_failed(counter.error)
            return
        self.flops = result
        info["flops_counted_here"] = True  # this step ran under the counter, a little slower
        self._on_flops_known()

    def _counting_failed(self, why: str | None = None) -> None:
        self._counter = None
        msg = f"FLOPs of the first step could not be counted ({why}); no FLOPs or MFU recorded"
        log.warning("greentrack: %s", msg)
        self._event("warning", "flops", msg)

    def _on_flops_known(self) -> None:
        assert self.flops is not None
        if self._device is not None and self._dtype is not None:
            self.peak = device_peak(self._device, self._dtype)
        self._peak_known = True
        self._train_info = {"flops": self.flops.flops, "flops_method": self.flops.method}
        details: dict[str, Any] = {"flops_per_step": self.flops.flops, "method": self.flops.method,
                                   "detail": self.flops.detail}
        if self.peak is not None:
            details.update(peak_flops_per_s=self.peak.flops_per_s, peak_device=self.peak.device,
                           peak_dtype=self.peak.dtype, peak_source=self.peak.source)
        self._event("info", "flops", f"{self.flops.flops:.4g} FLOPs per optimizer step "
                    f"({self.flops.method}); peak "
                    + (f"{self.peak.flops_per_s:.4g} FLOP/s ({self.peak.device} {self.peak.dtype}, "
                       f"{self.peak.source})" if self.peak else "unknown: no MFU"), **details)

    def _event(self, level: str, kind: str, message: str, **details: Any) -> None:
        engine = getattr(self.tracker, "engine", None)
        if engine is not None:
            engine.event(level, kind, message, **details)

    # -- resolved steps (sampler thread) ------------------------------------------------------
    def _on_row(self, row: dict[str, Any]) -> None:
        energy = (row["gpu_j"] or 0.0) + (row["cpu_j"] or 0.0) + (row["dram_j"] or 0.0)
        flops = row["flops"] or 0.0
        with self._lock:
            sums = self._phase.setdefault(row["phase"], _zero())
            targets = (sums, self._fresh) if row["phase"] == "train" else (sums,)
            for s in targets:
                s["n"] += row.get("n", 1)
                s["energy_j"] += energy
                s["gpu_j"] += row["gpu_j"] or 0.0
                s["gpu_n"] += row["gpu_j"] is not None
                s["duration_s"] += row["duration_s"]
                s["flops"] += flops
                s["flops_s"] += row["duration_s"] if flops else 0.0
                s["samples"] += row["samples"] or 0.0
                s["tokens"] += row["tokens"] or 0.0
        if self.main and self._progress_every_s and time.monotonic() >= self._next_progress:
            self._next_progress = time.monotonic() + self._progress_every_s
            est = self.forecast.estimate()
            if est is not None:
                log.info(format_forecast(est))

    def phase_totals(self, phase: str) -> dict[str, float]:
        """Steps and joules of ``phase`` attributed so far in this segment."""
        with self._lock:
            return dict(self._phase.get(phase, _zero()))

    def phase_energy_j(self, phase: str) -> float:
        """Joules of ``phase`` steps attributed so far, earlier segments included."""
        prior = float((self.prior.get("phase_energy_j") or {}).get(phase, 0.0))
        return prior + self.phase_totals(phase)["energy_j"]

    # -- metrics (training thread, at the logging cadence) ------------------------------------
    def energy_so_far_j(self) -> float:
        """This process's energy so far, earlier segments included (live, from the sampler)."""
        return float(self.prior["energy_j"]) + float(self.tracker.totals()["total"])

    def elapsed_s(self) -> float:
        return float(self.prior["elapsed_s"]) + time.monotonic() - self._t_start

    def metrics(self) -> dict[str, float]:
        """Metrics to log now (see the module docstring); cheap, no I/O."""
        self.marks.poll()
        with self._lock:
            fresh, self._fresh = self._fresh, _zero()
            steps = self._phase.get("train", _zero())["n"]
        out: dict[str, float] = {}
        n = fresh["n"]
        if n:
            out["step_energy_j"] = fresh["energy_j"] / n
            if fresh["gpu_n"]:
                out["step_gpu_energy_j"] = fresh["gpu_j"] / n
            out["step_duration_s"] = fresh["duration_s"] / n
            if fresh["flops"] and fresh["energy_j"]:
                out["flops_per_j"] = fresh["flops"] / fresh["energy_j"]
                if self.peak is not None and fresh["flops_s"]:
                    out["mfu"] = fresh["flops"] / fresh["flops_s"] / self.peak.flops_per_s
            if fresh["samples"]:
                out["energy_per_sample_j"] = fresh["energy_j"] / fresh["samples"]
            if fresh["tokens"]:
                out["energy_per_token_j"] = fresh["energy_j"] / fresh["tokens"]
        energy = self.energy_so_far_j()
        out["energy_j"] = energy
        out["steps"] = float(self.prior["steps"].get("train", 0) + steps)
        self.forecast.observe(self.train_steps, energy, self.elapsed_s())
        est = self.forecast.estimate()
        if est is not None:
            out["forecast_energy_j"] = est["energy_j"]
            out["forecast_duration_s"] = est["duration_s"]
            if est["emissions_g"] is not None:
                out["forecast_emissions_g"] = est["emissions_g"]
            if est["cost"] is not None:
                out["forecast_cost"] = est["cost"]
        return out

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs to continue this run (see the integrations' resume)."""
        steps = dict(self.prior["steps"])
        steps["train"] = self.train_steps
        phase_j = dict(self.prior.get("phase_energy_j") or {})
        with self._lock:
            for phase, sums in self._phase.items():
                if phase != "train":
                    steps[phase] = int(self.prior["steps"].get(phase, 0) + sums["n"])
                phase_j[phase] = phase_j.get(phase, 0.0) + sums["energy_j"]
        return {"run_dir": str(self.tracker.run_dir), "run_id": self.tracker.run_id,
                "energy_j": self.energy_so_far_j(), "elapsed_s": self.elapsed_s(), "steps": steps,
                "phase_energy_j": phase_j,
                "flops": self.flops.flops if self.flops else None,
                "flops_method": self.flops.method if self.flops else None,
                "flops_detail": self.flops.detail if self.flops else None}

    # -- end ----------------------------------------------------------------------------------
    def close(self, status: str = "completed", timeout_s: float = 10.0) -> None:
        """Resolve what is pending (waiting for the GPU by polling), then stop the tracker."""
        if self._counter is not None and self._counter.active:
            self._counter.stop()
            self._counter = None
        try:
            left = self.marks.drain(timeout_s)
            if left:
                self._event("warning", "steps-unresolved", f"{left} step(s) still running on the "
                            f"GPU after {timeout_s:g} s were not recorded")
        except Exception as e:  # noqa: BLE001 - stopping must never raise into training
            log.warning("greentrack: could not resolve the last steps: %s", e)
        self.tracker.stop(status)


def resolve_config(run_dir: Any, config: Any, settings: dict[str, Any]) -> tuple[Any, bool]:
    """The integration's :class:`~greentrack.config.Config` (validated now, so a bad setting fails
    before training) and whether the user chose the run directory (argument, ``config`` or
    ``GREENTRACK_RUN_DIR``). Otherwise the integration picks a fresh one on rank 0."""
    import os

    from greentrack.config import Config

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
    import uuid
    from pathlib import Path
    return Path(root) / "greentrack" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def run_totals(run_dir: Any) -> dict[str, Any]:
    """The whole run's totals (every rank and segment, :func:`greentrack.summarize`) with the
    energy of each phase's steps added as ``phase_energy_j``."""
    from pathlib import Path

    from greentrack.store import StoreReader, store_paths
    from greentrack.summary import summarize

    out = summarize(run_dir)
    by_phase: dict[str, float] = {}
    for path in store_paths(Path(run_dir)):
        try:
            store = StoreReader(path)
        except Exception:  # noqa: BLE001 - summarize already reported it
            continue
        for row in store.rows("SELECT phase, SUM(COALESCE(gpu_j,0)+COALESCE(cpu_j,0)+"
                              "COALESCE(dram_j,0)) AS e FROM steps GROUP BY phase"):
            by_phase[row["phase"]] = by_phase.get(row["phase"], 0.0) + float(row["e"] or 0.0)
        store.close()
    out["phase_energy_j"] = by_phase
    return out


def final_totals(run_dir: Any) -> tuple[dict[str, Any], dict[str, float]] | None:
    """For rank 0 at the end of a stage: the run's totals and their flat metrics, or None (with
    a warning) if the run directory cannot be read; the training is never failed over it."""
    try:
        totals = run_totals(run_dir)
    except Exception as e:  # noqa: BLE001
        log.warning("greentrack: could not read the run's totals: %s", e)
        return None
    return totals, totals_metrics(totals)


def totals_metrics(totals: dict[str, Any]) -> dict[str, float]:
    """Flat run totals for loggers (``run_energy_j``, ``run_gpu_energy_j``, ...)."""
    e = totals["energy_j"]
    out = {"run_energy_j": float(e["total"]), "run_energy_kwh": float(totals["energy_kwh"]),
           "run_duration_s": float(totals["duration_s"]), "run_steps": float(totals["steps"]),
           "run_gpu_seconds": float(totals["gpu_seconds"])}
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


__all__ = ["TrainingMeter", "resume_flops", "resolve_config", "new_run_dir", "run_totals",
           "totals_metrics", "METHOD_COUNTED"]


def start_tracker(config: Any, local_zero: bool) -> Any:
    """Start a tracker for a framework integration, or return None if it cannot start.

    ``local_zero``: this process is the node's first (it measures host CPU and DRAM unless the
    settings say otherwise). A bad setting (``ConfigError``) propagates, before any training;
    anything else is a warning and the run trains untracked: measurement never breaks training.
    """
    from greentrack.errors import ConfigError
    from greentrack.tracker import Tracker
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
    collective (a barrier skipped on one rank would hang the others)."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - measurement must never break training
            _report_hook_error(getattr(self, "meter", None), name, e)
            return None

    return wrapper  # type: ignore[return-value]


def _report_hook_error(meter: Any, hook: str, error: Exception) -> None:
    key = (id(meter), hook)
    n = _HOOK_ERRORS[key] = _HOOK_ERRORS.get(key, 0) + 1
    if n == 1:
        log.warning("greentrack: %s failed (training goes on; recorded in the run): %s: %s",
                    hook, type(error).__name__, error)
    if n <= MAX_HOOK_EVENTS:
        try:
            meter.tracker.engine.event("error", "hook-error", f"{hook}: {type(error).__name__}: "
                                       f"{error}", occurrence=n)
        except Exception:  # noqa: BLE001 - no tracker (yet): the warning stands alone
            pass
