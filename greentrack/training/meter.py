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
* ``energy_j``: energy of this process so far, all segments of a resumed run included (as its
  earlier stores recorded them: the steps done after the checkpoint and redone since too).
* ``steps``: optimizer steps ended so far, all segments included (the framework's global step).
* ``forecast_energy_j``, ``forecast_duration_s``, ``forecast_end_unix`` (and
  ``forecast_emissions_g``, ``forecast_cost`` when the carbon and price settings allow): the whole
  run, see :mod:`greentrack.carbon.forecast`; each with ``_low`` and ``_high`` (its interval) once known.
  The same estimate feeds the progress line and the Prometheus ``greentrack_forecast_*`` gauges
  (the meter adds :meth:`TrainingMeter.forecast_estimate` to ``tracker.forecast_sources``).

:meth:`TrainingMeter.new_metrics` (what the framework callbacks log) returns only the figures with
new data since its previous call (no stale value repeated, no 0 standing for "no reading yet"). Figures of a whole evaluation (one validation epoch's joules)
come from :meth:`TrainingMeter.take_phase`. The framework callbacks' shared start/stop sequence
and the run's totals are in :mod:`greentrack.training.session`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from greentrack.carbon.forecast import Forecast, format_forecast
from greentrack.common.errors import ConfigError
from greentrack.common.units import energy_text
from greentrack.engine.steps import PHASE_SUMS, PhaseTally
from greentrack.training.flops import (METHOD_COUNTED, FirstStepCounter, Peak, StepFlops,
                                       device_peak, given)
from greentrack.training.stepmarks import StepMarks, submitter

log = logging.getLogger("greentrack")

#: the most optimizer steps a run may plan (beyond it a forecast means nothing)
MAX_PLANNED_STEPS = 10**12


def planned_steps_of(value: Any, setting: str = "planned_steps") -> int | None:
    """``value`` as a count of optimizer steps (an int, a NumPy or 0-d integer tensor, a whole
    float), or None for None.

    Raises:
        ConfigError: anything else (text, NaN, a fraction, < 1, > :data:`MAX_PLANNED_STEPS`).
    """
    import operator

    if value is None:
        return None
    allowed = (f"must be a whole number of optimizer steps from 1 to {MAX_PLANNED_STEPS:.0e} "
               "(or None: the framework's own count)")
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except (TypeError, ValueError, RuntimeError):  # a float tensor, a tensor of several values
        if not (isinstance(value, float) and value.is_integer()):  # NaN and inf are not
            raise ConfigError(setting, value, allowed) from None
        n = int(value)
    if not 1 <= n <= MAX_PLANNED_STEPS:
        raise ConfigError(setting, value, allowed)
    return n

_SUMS = PHASE_SUMS
#: Metrics that are means over the steps since the previous call: new whenever present.
_PER_STEP = frozenset({"step_energy_j", "step_gpu_energy_j", "step_duration_s", "mfu",
                       "flops_per_j", "energy_per_sample_j", "energy_per_token_j"})
#: The first progress line comes after this many seconds (or after ``progress_every_s`` if shorter).
FIRST_PROGRESS_S = 10.0
#: Longest wait of :meth:`TrainingMeter.settle` for the steps a figure needs (polling, no sync).
SETTLE_S = 2.0


def progress_period(progress_every_s: float | None) -> float | None:
    """The progress line's period: ``progress_every_s``, unless ``GREENTRACK_PROGRESS`` says
    otherwise (``0``, ``off``, ``false``, ``no``: never; a number of seconds: that period)."""
    env = os.environ.get("GREENTRACK_PROGRESS", "").strip().lower()
    if env in ("0", "off", "false", "no", "none"):
        return None
    if env:
        try:
            value = float(env)
        except ValueError:
            log.warning("greentrack: GREENTRACK_PROGRESS=%r is not a number of seconds or 0; "
                        "ignored", env)
        else:
            return value if value > 0 else None
    return progress_every_s if progress_every_s and progress_every_s > 0 else None


def _gpus(tracker: Any) -> int:
    """GPUs the tracker measures (for the forecast's GPU-hours); 0 when it cannot tell."""
    try:
        engine = getattr(tracker, "engine", None)
        return sum(ch.kind == "gpu" for ch in engine.snapshot()) if engine is not None else 0
    except Exception:  # noqa: BLE001 - a forecast detail never stops training
        return 0


def _zero() -> dict[str, float]:
    return dict.fromkeys(_SUMS, 0.0)


class TrainingMeter:
    """Steps, FLOPs and metrics of one training process, over a started tracker.

    Args:
        tracker: a started :class:`greentrack.Tracker`.
        device: where the model runs (``torch.device`` or string); CUDA marks on the GPU timeline.
        flops: FLOPs per optimizer step: ``"auto"`` (count the first step), a number, a
            :class:`~greentrack.training.flops.StepFlops` (e.g. :func:`~greentrack.training.flops.analytic`), or None.
        dtype: compute dtype or precision (``"bf16-mixed"``, ``torch.float16``...) for MFU.
        planned_steps: optimizer steps of the whole run, for the forecast.
        prior: totals of earlier segments of a resumed run: ``energy_j``, ``elapsed_s``, ``steps``.
        main: this process writes the progress line (rank 0).
        progress_every_s: period of the progress line on stderr (``None``: never; the first
            after :data:`FIRST_PROGRESS_S` at most; ``GREENTRACK_PROGRESS`` overrides it, see
            :func:`progress_period`).
    """

    def __init__(self, tracker: Any, *, device: Any = None, flops: Any = None, dtype: Any = None,
                 planned_steps: int | None = None, prior: dict[str, Any] | None = None,
                 main: bool = True, progress_every_s: float | None = 60.0) -> None:
        self.tracker = tracker
        self._tracker_submit = submitter(tracker)
        self.marks = StepMarks(self, device)
        self.marks.route(self._tracker_submit)  # straight to the tracker until there is an MFU
        self.prior = {"energy_j": 0.0, "elapsed_s": 0.0, "steps": {}, **(prior or {})}
        self.flops: StepFlops | None = None
        self._counter: FirstStepCounter | None = None
        #: Open a step: ``begin(phase="train")``. The marks' own, one frame less per step, unless
        #: a FLOPs count waits for the next training step (``flops="auto"``).
        self.begin: Callable[..., None] = self.marks.begin
        if flops == "auto":
            self._counter = FirstStepCounter()
            self.begin = self._begin_counting
        elif isinstance(flops, StepFlops):
            self.flops = flops
        elif flops is not None:
            self.flops = given(flops)
        self._device, self._dtype = device, dtype
        self.peak: Peak | None = None
        self._peak_known = False
        self._train_info: dict[str, Any] = {}
        #: the previous training step's (hook's fields, meter's fields, both merged): the same
        #: dicts again give the same merged dict, which nothing downstream changes
        self._merged: tuple[Any, Any, dict[str, Any]] = (None, None, {})
        self._train_ended = 0  # training steps ended in this segment (one attribute per step)
        self._train_base = int(self.prior["steps"].get("train", 0))  # before them: see train_steps
        self._t_start = time.monotonic()
        self.forecast = Forecast.for_config(None, tracker.config, _gpus(tracker))
        self._forecast_lock = threading.Lock()  # observed on both threads
        self.main = main
        self._progress_every_s = progress_period(progress_every_s) if main else None
        self._next_progress = time.monotonic() + min(FIRST_PROGRESS_S,
                                                     self._progress_every_s or 0.0)
        self._lock = threading.Lock()
        engine = getattr(tracker, "engine", None)
        #: the engine's per-phase sums of resolved steps (the one live accumulator)
        self.tally: PhaseTally = engine.tally if engine is not None else PhaseTally()
        self._reported = _zero()  # the train sums at the previous metrics() call
        self._ended: dict[str, int] = {}  # steps ended per phase in this segment (training thread)
        self._taken: dict[str, dict[str, float]] = {}  # phase sums at the last take_phase
        self._logged: dict[str, float] = {}  # the values new_metrics() returned last
        if self.flops is not None:
            self._on_flops_known()
        self.plan(planned_steps)
        self._progress_steps = 0  # resolved steps at the last progress line (none: no line)
        if self._progress_every_s and engine is not None:
            engine.watchers.append(self._on_poll)  # a look per poll, not a call per step
        sources = getattr(tracker, "forecast_sources", None)
        if isinstance(sources, list):
            sources.append(self.forecast_estimate)

    @property
    def train_steps(self) -> int:
        """Optimizer steps ended so far, all segments (the framework's global step once set)."""
        return self._train_base + self._train_ended

    @train_steps.setter
    def train_steps(self, value: int) -> None:
        self._train_base = value - self._train_ended

    # -- the hot path (training thread) ---------------------------------------------------------
    def _begin_counting(self, phase: str = "train") -> None:
        """:attr:`begin` while the first training step is still to be counted (``flops="auto"``)."""
        if phase == "train" and self._counter is not None and not self._counter.active:
            self.start_counting()
        self.marks.begin(phase)

    def _counted(self) -> None:
        """No FLOPs count pending any more (done, failed or closed): ``begin`` is the marks'."""
        self._counter = None
        self.begin = self.marks.begin

    def start_counting(self) -> None:
        """Start counting FLOPs now (``flops="auto"``), up to the end of the next training step.
        Call it outside any module's forward (``begin`` does this for you)."""
        if self._counter is not None and not self._counter.active and not self._counter.start():
            self._counting_failed(self._counter.error)

    def end(self, **info: Any) -> None:
        """Close the open step; ``info`` may carry ``samples``, ``tokens`` and extras."""
        self.close_step(info)

    def close_step(self, info: dict[str, Any], then: str | None = None) -> None:
        """:meth:`end` with the fields in one dict (the hooks' hot path), never changed here. A
        hook may pass the same dict at every step, as long as it never changes it: a training
        step's fields are then merged with the meter's (FLOPs) once, and the tracker checks
        them for tensors once. ``then``: :meth:`begin` a step of that phase where this one ends
        (the same instant)."""
        marks = self.marks
        phase = marks.open_phase
        if phase is None:
            if then is not None:
                self.begin(then)
            return
        if phase == "train":
            self._train_ended += 1
            if self._counter is not None and self._counter.active:
                info = dict(info)
                self._finish_counting(info)
            merged = self._merged
            if merged[0] is info and merged[1] is self._train_info:
                info = merged[2]  # the same fields as the previous step: the same dict
            else:
                merged = self._merged = (info, self._train_info, {**self._train_info, **info})
                info = merged[2]
        else:
            self._ended[phase] = self._ended.get(phase, 0) + 1
            info = dict(info)
        if then is not None and self._counter is not None:  # FLOPs counting starts in begin()
            marks.close(info)
            self.begin(then)
            return
        marks.close(info, then)

    def cancel(self) -> None:
        self.marks.cancel()

    def submit_step(self, phase: str, t0: float, t1: float, info: dict[str, Any],
                    timeline: str = "host") -> None:
        """Forward a resolved mark to the tracker, with the step's MFU (called by the marks)."""
        if self.peak is not None and t1 > t0:
            flops = info.get("flops")
            if flops:  # a new dict: one step's fields may be the next's too (close_step)
                info = {**info, "mfu": flops / (t1 - t0) / self.peak.flops_per_s}
        self._tracker_submit(phase, t0, t1, info, timeline)

    def submit_window(self, phase: str, t0: float, t1: float, **info: Any) -> None:
        """:meth:`submit_step` with keywords (``timeline`` among them)."""
        self.submit_step(phase, t0, t1, info, info.pop("timeline", "host"))

    def plan(self, planned_steps: Any) -> None:
        """Set the optimizer steps of the whole run (the forecast's horizon); recorded in the run
        (event ``planned-steps``) so a report can forecast or check the forecast later. A value
        that is not a step count (a framework's -1 for "unknown", NaN, text) is left out: this
        runs inside training hooks (the user's own value is checked up front, see
        :func:`planned_steps_of`)."""
        try:
            planned_steps = planned_steps_of(planned_steps)
        except ValueError as e:
            log.debug("greentrack: no forecast horizon: %s", e)
            return
        if planned_steps is None or planned_steps == self.forecast.planned_steps:
            return
        self.forecast.planned_steps = planned_steps
        self._event("info", "planned-steps", f"{planned_steps} optimizer steps planned",
                    planned_steps=planned_steps)

    # -- FLOPs ----------------------------------------------------------------------------------
    def _finish_counting(self, info: dict[str, Any]) -> None:
        counter = self._counter
        assert counter is not None
        self._counted()
        result = counter.stop()
        if result is None:
            self._counting_failed(counter.error)
            return
        self.flops = result
        info["flops_counted_here"] = True  # this step ran under the counter, a little slower
        self._on_flops_known()

    def _counting_failed(self, why: str | None = None) -> None:
        self._counted()
        msg = f"FLOPs of the first step could not be counted ({why}); no FLOPs or MFU recorded"
        log.warning("greentrack: %s", msg)
        self._event("warning", "flops", msg)

    def _on_flops_known(self) -> None:
        assert self.flops is not None
        if self._device is not None and self._dtype is not None:
            self.peak = device_peak(self._device, self._dtype)
        self._peak_known = True
        if self.peak is not None:  # steps now pass through submit_step, which adds their MFU
            self.marks.route(self.submit_step)
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
    def _on_poll(self, now: float) -> None:
        """Engine watcher (the sampler thread, at each poll): the progress line when due, once
        steps have been resolved since the last one."""
        t = time.monotonic()
        if t < self._next_progress or self._progress_every_s is None:
            return
        steps = self.tally.steps
        if steps == self._progress_steps:
            return
        self._progress_steps = steps
        self._next_progress = t + self._progress_every_s
        self._write_progress()

    def _write_progress(self) -> None:
        """The progress line, on stderr (sampler thread, rank 0): visible without any logging
        setup, silenced by ``progress_every_s=None`` or ``GREENTRACK_PROGRESS=0``."""
        try:
            est = self._observe()
            if est is not None:
                line = format_forecast(est)
            else:
                planned = self.forecast.planned_steps
                line = (f"greentrack: step {self.train_steps}"
                        + (f"/{planned}" if planned else "")
                        + f", {energy_text(self.energy_so_far_j())} so far")
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception as e:  # noqa: BLE001 - a closed stderr never stops attribution
            log.debug("greentrack: progress line not written: %s", e)

    def forecast_estimate(self) -> dict[str, Any] | None:
        """The whole run's forecast now (see :mod:`greentrack.carbon.forecast`), or None; any thread."""
        return self._observe()

    def _observe(self) -> dict[str, Any] | None:
        """Observe the run's position in the forecast (either thread) and return its estimate."""
        energy, elapsed = self.energy_so_far_j(), self.elapsed_s()
        with self._forecast_lock:
            if energy > 0:  # before the first reading there is nothing to extrapolate
                self.forecast.observe(self.train_steps, energy, elapsed)
            return self.forecast.estimate()

    # -- figures that need every step of a phase (evaluation ends) ------------------------------
    def ended(self, phase: str) -> int:
        """Steps of ``phase`` ended in this segment (resolved or not)."""
        return self._train_ended if phase == "train" else self._ended.get(phase, 0)

    def settle(self, phase: str, timeout_s: float = SETTLE_S) -> bool:
        """Wait until every ended step of ``phase`` has come back resolved, at most ``timeout_s``,
        polling (GPU marks are queried, never synchronized). True if they all have."""
        want = self.ended(phase)
        deadline = time.monotonic() + timeout_s
        while True:
            self.marks.poll()
            if self.phase_totals(phase)["n"] >= want:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def take_phase(self, phase: str, timeout_s: float = SETTLE_S) -> dict[str, float] | None:
        """Sums of ``phase``'s steps resolved since the previous call (after :meth:`settle`), e.g.
        one validation epoch's; None when none came back (never a 0 standing for "no data").
        A step that resolves after ``timeout_s`` is counted in the next call's figures."""
        self.settle(phase, timeout_s)
        now = self.phase_totals(phase)
        before = self._taken.get(phase, _zero())
        self._taken[phase] = now
        delta = {k: now[k] - before[k] for k in _SUMS}
        return delta if delta["n"] > 0 else None

    def phase_totals(self, phase: str) -> dict[str, float]:
        """Steps and joules of ``phase`` attributed so far in this segment."""
        return self.tally.phase(phase)

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
        """Metrics now (see the module docstring); cheap, no I/O. The per-step means are over
        the steps attributed since the previous call, and absent when there are none."""
        self.marks.poll()
        now = self.tally.phase("train")
        with self._lock:
            fresh = {k: now[k] - self._reported[k] for k in _SUMS}
            self._reported = now
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
        out["energy_j"] = self.energy_so_far_j()
        out["steps"] = float(self.train_steps)
        est = self._observe()
        if est is not None:
            for key in ("energy_j", "duration_s", "end_unix", "emissions_g", "cost"):
                for suffix in ("", "_low", "_high"):
                    if est.get(key + suffix) is not None:
                        out[f"forecast_{key}{suffix}"] = float(est[key + suffix])
        return out

    def new_metrics(self) -> dict[str, float]:
        """:meth:`metrics`, less what has no new data since the previous call: a figure equal to
        the one returned last, and ``energy_j`` before the first reading (0 J is "no data yet",
        not a figure). For loggers, which would otherwise show plateaus of stale values."""
        out = self.metrics()
        new = {k: v for k, v in out.items() if k in _PER_STEP or self._logged.get(k) != v}
        if not new.get("energy_j", 1.0) > 0:
            del new["energy_j"]
        self._logged.update(new)
        return new

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs to continue this run (see the integrations' resume)."""
        steps = dict(self.prior["steps"])
        steps["train"] = self.train_steps
        phase_j = dict(self.prior.get("phase_energy_j") or {})
        for phase, sums in self.tally.phases().items():  # a copy: no lock needed
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
            self._counted()
        try:
            left = self.marks.drain(timeout_s)
            if left:
                self._event("warning", "steps-unresolved", f"{left} step(s) still running on the "
                            f"GPU after {timeout_s:g} s were not recorded")
        except Exception as e:  # noqa: BLE001 - stopping must never raise into training
            log.warning("greentrack: could not resolve the last steps: %s", e)
        self.release()
        self.tracker.stop(status)

    def release(self) -> None:
        """This meter's training is over, its tracker may run on: its forecast leaves the
        tracker's exporters, and its progress line and its marks' hold leave the sampler thread.
        A meter left as a watcher printed its finished training's "step 150/150, forecast ..."
        with the tracker's growing energy, between the lines of the next meter on the tracker.
        Safe to call twice."""
        sources = getattr(self.tracker, "forecast_sources", None)
        watchers = getattr(getattr(self.tracker, "engine", None), "watchers", None)
        for registry, mine in ((sources, self.forecast_estimate), (watchers, self._on_poll)):
            if isinstance(registry, list):
                with contextlib.suppress(ValueError):  # not there (released already)
                    registry.remove(mine)  # the sampler thread iterates over a copy
        self.marks.release()


__all__ = ["TrainingMeter", "progress_period", "FIRST_PROGRESS_S", "SETTLE_S", "METHOD_COUNTED"]
