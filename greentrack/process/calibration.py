"""Power-limit calibration: this run's own curve of joules and seconds per training step against the
GPU power limit, measured over its first steps (``Tracker(calibrate_power_limits=[250, 300])``).

How it runs (on the sampler thread, from resolved step rows; nothing on the training thread):

1. At start, before anything is created: every GPU this process measures must accept every limit
   (``nvmlDeviceGetPowerManagementLimitConstraints``), else a one-line :class:`ConfigError`; the
   limit in force is read (the *reference*); the privilege is probed by setting that same limit.
   Without the privilege (NVML ``NoPermission``), or without a GPU or limit support, one warning
   line says so and nothing changes.
2. Once the first training step is resolved, the first limit is set on every measured GPU (at the
   sampler's next poll: step rows arrive under the engine's attribution lock, NVML is never
   called under it). After
   ``calibration_warmup_steps`` steps that started after the change (discarded: clocks and
   temperature settle), ``calibration_steps`` steps are measured: per step, all joules this process
   attributes to it (GPU, CPU, DRAM: a slower step also costs host energy) and its seconds.
3. Then the next limit, and last the reference limit itself: restoring the original limit is the
   last point of the curve, so every point is measured the same way (and not on the run's first,
   cold steps). Each point is stored as measured (store table ``power_limits``).

The original limit is restored on every way out: the last point, :meth:`Calibration.close` from
``Tracker.stop`` (which SIGTERM and the interpreter's exit also call, see :mod:`greentrack.process.lifecycle`),
an exception leaving a ``with Tracker`` block, and a failing GPU read (the sampler's watcher aborts
the calibration). A restore that fails is an ``error`` event naming the limit and the command that
restores it; it is retried every :data:`RETRY_S` and at stop. SIGKILL cannot be caught: the events
``power-limit-set`` carry the original limit for ``nvidia-smi -pl``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from greentrack.common.config import Config
from greentrack.common.errors import ConfigError, PermissionDenied, SamplerError
from greentrack.samplers.base import Note
from greentrack.store.layout import StepRow

log = logging.getLogger("greentrack")
#: The longest ``close`` waits for a restore (a hung driver must not hold up the training's exit).
RESTORE_TIMEOUT_S = 2.0
#: How often a failed restore is tried again (seconds).
RETRY_S = 1.0
SETTING = "calibrate_power_limits"


def plan(channels: list[Any], config: Config) -> tuple["Calibration | None", list[Note]]:
    """Check the requested limits against this process's GPUs, before anything is created.

    Returns the calibration to attach to the engine (None: nothing to calibrate) and notes to
    record (the one line that says why nothing changes, or what will).

    Raises:
        ConfigError: a limit outside a GPU's constraints (one line, with the range allowed).
    """
    limits_w: tuple[float, ...] | None = config.calibrate_power_limits
    if not limits_w:
        return None, []
    gpus = limit_gpus(channels)
    if not gpus:
        return None, [_off("no NVIDIA GPU is measured by this process")]
    try:
        check_limits(gpus, limits_w)
        originals = [gpu.power_limit_mw() for gpu in gpus]
        for gpu, mw in zip(gpus, originals):
            gpu.set_power_limit_mw(mw)  # the same limit: only asks for the privilege
    except PermissionDenied:
        return None, [_off("setting the GPU power limit needs root or CAP_SYS_ADMIN (NVML "
                           "NoPermission)")]
    except SamplerError as e:
        return None, [_off(f"the GPU power limit cannot be read or set ({e})")]
    cal = Calibration(gpus, limits_w, originals, config.calibration_steps,
                      config.calibration_warmup_steps)
    return cal, [Note("warning", "power-limit", f"calibrating the GPU power limit over the first "
                      f"training steps: {cal.describe()}; the run is slower or faster while it "
                      "calibrates", "")]


def limit_gpus(channels: list[Any]) -> list[Any]:
    """The channels whose power limit can be set (NVML GPUs)."""
    return [c for c in channels if hasattr(c, "set_power_limit_mw")]


def check_limits(gpus: list[Any], limits_w: tuple[float, ...]) -> None:
    """Every limit within every GPU's constraints, else a one-line :class:`ConfigError`.

    Raises:
        ConfigError: a limit out of a GPU's range. SamplerError: NVML cannot tell the range.
    """
    for gpu in gpus:
        lo, hi = gpu.power_limit_constraints_mw()
        bad = [w for w in limits_w if not lo <= round(w * 1000) <= hi]
        if bad:
            raise ConfigError(SETTING, ",".join(f"{w:g}" for w in limits_w),
                              f"{gpu.info.device} ({gpu.info.name}) accepts limits from "
                              f"{lo / 1000:g} to {hi / 1000:g} W (NVML power management limit "
                              f"constraints); {', '.join(f'{w:g}' for w in bad)} W out of range")


def _off(why: str) -> Note:
    return Note("warning", "power-limit", f"{SETTING}: {why}: nothing calibrated, the power limit "
                "is unchanged", "")


class Calibration:
    """The schedule and measurements of one calibration; see the module docstring.

    Args:
        gpus: the GPU channels (:class:`~greentrack.samplers._nvml.NvmlGpu`) whose limit is set.
        limits_w: the limits to measure, in watts, in order.
        originals_mw: each GPU's limit before, in milliwatts (restored, and measured last).
        steps: steps measured at each limit; ``warmup``: steps discarded after each change.
    """

    def __init__(self, gpus: list[Any], limits_w: tuple[float, ...], originals_mw: list[int],
                 steps: int, warmup: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.gpus, self.originals_mw = gpus, originals_mw
        self.steps, self.warmup = steps, warmup
        self._clock = clock
        ref = originals_mw[0]
        # per point: each GPU's target in mW; the reference (each GPU's own original) comes last
        self.schedule: list[tuple[float, list[int], bool]] = [
            (w, [round(w * 1000)] * len(gpus), False) for w in limits_w if round(w * 1000) != ref]
        self.schedule.append((ref / 1000.0, list(originals_mw), True))
        self.state = "waiting"  # waiting | running | done | aborted | closed
        self._lock = threading.Lock()
        self._index = -1
        self._since = 0.0  # store seconds: steps from here on ran at the current limit
        self._skipped = 0
        self._rows: list[tuple[float, float | None, float, int]] = []  # J, GPU J, s per step; n
        self._t0 = 0.0
        #: per GPU: it may be at a limit other than its original (set before each attempt, so a
        #: set that fails halfway is restored too; cleared when NVML refused: nothing changed)
        self._dirty = [False] * len(gpus)
        self._switch_due = False  # on_step asks, on_poll sets the next limit
        self._next_retry = 0.0
        self._restore_failures = 0
        self.points: list[dict[str, Any]] = []
        self._origin = 0.0
        self._event: Callable[..., None] = lambda *a, **k: None
        self._write: Callable[[dict[str, Any]], None] = lambda p: None
        self._states: list[Any] = []

    def describe(self) -> str:
        first = ", ".join(f"{w:g} W" for w, _, ref in self.schedule if not ref)
        return (f"{first or 'no other limit'}, then back to {self.originals_mw[0] / 1000:g} W (the "
                f"reference), {self.warmup} step(s) discarded and {self.steps} measured at each")

    def attach(self, engine: Any, write: Callable[[dict[str, Any]], None]) -> None:
        """Listen to ``engine``'s resolved steps and polls (before it starts)."""
        self._origin, self._event, self._write = engine.origin, engine.event, write
        self._states = [st for st in engine.states if st.channel in self.gpus]
        engine.step_listeners.append(self.on_step)
        engine.watchers.append(self.on_poll)
        engine.event("info", "power-limit-calibration", f"calibration planned: {self.describe()}",
                     limits_w=[w for w, _, _ in self.schedule], steps=self.steps,
                     warmup_steps=self.warmup, devices=self._devices(),
                     original_mw=list(self.originals_mw))

    def _devices(self) -> list[str]:
        return [str(g.info.device) for g in self.gpus]

    # -- the sampler thread ------------------------------------------------------------------
    # Step rows arrive under the engine's attribution lock, which Tracker.stop may need: on_step
    # only counts. Every NVML call happens in on_poll (outside that lock), and neither waits for
    # this object's lock: a restore stuck in the driver must not hold up the sampler.
    def on_step(self, row: StepRow) -> None:
        """A resolved step row (sampler thread): measure it, or ask for the next limit."""
        if not self._lock.acquire(blocking=False):
            return  # closing: a row less changes nothing
        try:
            if self.state not in ("waiting", "running") or self._switch_due \
                    or row.phase != "train" or (row.extra or {}).get("partial"):
                return
            if self.state == "waiting" or row.t0 < self._since:
                self._switch_due = self.state == "waiting"
                return  # the first training step starts it; others began under the last limit
            if self._skipped < self.warmup:
                self._skipped += row.n
                return
            n = max(1, row.n)
            self._rows.append((row.energy_j / n, None if row.gpu_j is None else row.gpu_j / n,
                               row.duration_s / n, n))
            if sum(r[3] for r in self._rows) >= self.steps:
                self._finish_point(row.t1)
                self._switch_due = True
        finally:
            self._lock.release()

    def on_poll(self, now: float) -> None:
        """Every poll (sampler thread): set the next limit when due; a GPU that stops answering
        ends the calibration; a restore that failed is tried again (every few seconds)."""
        active = self.state in ("waiting", "running")
        failing = active and any(st.status != "ok" for st in self._states)
        retry = self._changed and not active and now >= self._next_retry
        if not (failing or retry or (active and self._switch_due)):
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self.state in ("waiting", "running"):
                if failing:
                    self._abort("a GPU read failed")
                elif self._switch_due:
                    self._switch_due = False
                    self._next()
            elif self._changed and not self._restore():
                self._next_retry = now + RETRY_S
        finally:
            self._lock.release()

    # -- under the lock ------------------------------------------------------------------------
    def _next(self) -> None:
        self._index += 1
        if self._index >= len(self.schedule):
            self.state = "done"
            self._event("info", "power-limit-calibration", "calibration done: "
                        + "; ".join(f"{p['limit_w']:g} W: {p['j_per_step']:.4g} J and "
                                    f"{p['s_per_step']:.4g} s per step" for p in self.points),
                        points=len(self.points))
            return
        limit_w, targets, ref = self.schedule[self._index]
        if not self._set(targets, f"{limit_w:g} W" + (" (the original: restored)" if ref else "")):
            self._abort(f"setting {limit_w:g} W failed")
            return
        self.state = "running"
        self._since = self._clock() - self._origin
        self._t0 = self._since
        self._skipped, self._rows = 0, []

    @property
    def _changed(self) -> bool:
        return any(self._dirty)

    def _set(self, targets: list[int], what: str) -> bool:
        ok = True
        for i, (gpu, mw, orig) in enumerate(zip(self.gpus, targets, self.originals_mw)):
            before = self._dirty[i]
            self._dirty[i] = before or mw != orig
            try:
                gpu.set_power_limit_mw(mw)
                self._dirty[i] = mw != orig
                self._event("info", "power-limit-set", f"{gpu.info.device}: power limit {what}",
                            device=gpu.info.device, limit_mw=mw, original_mw=orig)
            except Exception as e:  # noqa: BLE001 - never into training; the caller restores
                ok = False
                if isinstance(e, PermissionDenied):
                    self._dirty[i] = before  # refused: this call changed nothing
                self._event("error", "power-limit-error", f"{gpu.info.device}: could not set the "
                            f"power limit to {mw / 1000:g} W: {e}", device=gpu.info.device,
                            limit_mw=mw, original_mw=orig)
        return ok

    def _restore(self) -> bool:
        """Every GPU back to its original limit; an error event (retried later) if not."""
        if not self._changed:
            return True
        failed = []
        for i, (gpu, orig) in enumerate(zip(self.gpus, self.originals_mw)):
            if not self._dirty[i]:
                continue
            try:
                gpu.set_power_limit_mw(orig)
                self._dirty[i] = False
            except Exception as e:  # noqa: BLE001 - recorded; retried at the next poll and stop
                failed.append(f"{gpu.info.device}: {e}")
        if failed:
            self._restore_failures += 1
            if self._restore_failures == 1:  # retried quietly; the first failure says it all
                msg = (f"could not restore the original power limit ({'; '.join(failed)}): "
                       f"retrying; else restore it with `nvidia-smi -pl "
                       f"{self.originals_mw[0] / 1000:g}` (as root)")
                self._event("error", "power-limit-restore-failed", msg,
                            original_mw=self.originals_mw)
                log.warning("greentrack: %s", msg)
            return False
        self._event("info", "power-limit-set", "power limit restored to the original "
                    + ", ".join(f"{mw / 1000:g} W" for mw in self.originals_mw),
                    devices=self._devices(), original_mw=self.originals_mw)
        return True

    def _abort(self, why: str) -> None:
        self.state = "aborted"
        self._event("warning", "power-limit-calibration", f"calibration stopped ({why}) after "
                    f"{len(self.points)} of {len(self.schedule)} limit(s); the original limit is "
                    "restored", points=len(self.points))
        self._restore()

    def _finish_point(self, t1: float) -> None:
        limit_w, _, ref = self.schedule[self._index]
        j = _stats([(r[0], r[3]) for r in self._rows])
        s = _stats([(r[2], r[3]) for r in self._rows])
        gpu = _stats([(r[1], r[3]) for r in self._rows if r[1] is not None]) \
            if all(r[1] is not None for r in self._rows) else None
        point = {"limit_w": limit_w, "reference": ref, "devices": self._devices(),
                 "steps": sum(r[3] for r in self._rows), "warmup_steps": self._skipped,
                 "t0": self._t0, "t1": t1, "j_per_step": j[0], "j_per_step_sd": j[1],
                 "gpu_j_per_step": gpu[0] if gpu else None,
                 "gpu_j_per_step_sd": gpu[1] if gpu else None,
                 "s_per_step": s[0], "s_per_step_sd": s[1]}
        self.points.append(point)
        self._write(point)

    # -- any thread: Tracker.stop, SIGTERM, the interpreter's exit ------------------------------
    def close(self, timeout: float = RESTORE_TIMEOUT_S) -> None:
        """End the calibration and restore the original limit. Never raises, and never waits more
        than ``timeout`` (a restore stuck in the driver finishes, or not, on its own thread)."""
        def finish() -> None:
            if not self._lock.acquire(timeout=timeout):  # the sampler is stuck in a set
                log.warning("greentrack: the power limit could not be restored (NVML did not "
                            "answer): restore it with `nvidia-smi -pl %g` (as root)",
                            self.originals_mw[0] / 1000)
                return
            try:
                if self.state in ("waiting", "running"):
                    self._event("warning", "power-limit-calibration", "calibration ended by the "
                                f"run's stop after {len(self.points)} of {len(self.schedule)} "
                                "limit(s)", points=len(self.points))
                self.state = "closed"
                self._restore()
            except Exception:  # noqa: BLE001 - never into training
                pass
            finally:
                self._lock.release()

        if not self._changed and self.state not in ("waiting", "running"):
            return
        worker = threading.Thread(target=finish, name="greentrack-power-limit", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # no thread to be had (a pids limit, interpreter shutdown): restore here
            finish()
            return
        worker.join(timeout)


def _stats(values: list[tuple[float, int]]) -> tuple[float, float]:
    """Mean and sample standard deviation of per-step values, each weighted by the steps its
    row stands for (a coalesced row's steps share one value: their spread is not seen)."""
    n = sum(w for _, w in values)
    if n <= 0:
        return 0.0, 0.0
    mean = sum(x * w for x, w in values) / n
    if n < 2:
        return mean, 0.0
    var = sum(w * (x - mean) ** 2 for x, w in values) / (n - 1)
    return mean, math.sqrt(max(0.0, var))
