"""FLOPs per step, the device's peak FLOP/s, and model FLOPs utilization (MFU).

The FLOPs of one step are known in one of three ways, and every step records which in its
``extra.flops_method``:

* ``counted``: one real step is run under :class:`torch.utils.flop_counter.FlopCounterMode` and its
  count is reused for every later step. The counter is slow (it dispatches every op in Python), so it
  runs once, never every step. It counts matrix multiplies, convolutions and attention (forward and
  backward), not elementwise ops, and counts attention as full even when causal (the ops registered in
  ``torch/utils/flop_counter.py``).
* ``user``: a number the user gives.
* ``analytic-6ND``: ``6 x parameters x tokens`` for a dense transformer (Kaplan et al. 2020, "Scaling
  Laws for Neural Language Models"); attention FLOPs are not included.

A step is an optimizer step: with gradient accumulation its FLOPs are those of all its micro-batches
(counting the real step does this by itself; for ``user`` and ``analytic`` give the per-optimizer-step
figure).

Peak FLOP/s come from ``greentrack/data/peak_flops.csv``: dense figures per device and dtype, each row
with its source. A device or dtype not in the table has no peak: MFU is ``None`` and a warning says why
(no guess posing as a fact).

Example:
    >>> from greentrack.training.flops import analytic, mfu, peak_flops
    >>> analytic(n_params=124e6, tokens_per_step=8 * 1024).flops
    6094848000000.0
    >>> peak = peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")
    >>> peak.flops_per_s, peak.device
    (989500000000000.0, 'NVIDIA H100 SXM')
    >>> round(mfu(4.0e14, 1.0, peak.flops_per_s), 3)
    0.404
"""

from __future__ import annotations

import csv
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greentrack.common.errors import ConfigError
from greentrack.common.units import is_number

log = logging.getLogger("greentrack")

METHOD_COUNTED = "counted"
METHOD_USER = "user"
METHOD_ANALYTIC = "analytic-6ND"
TABLE = Path(__file__).resolve().parents[1] / "data" / "peak_flops.csv"
DTYPES = ("float32", "tf32", "bfloat16", "float16", "float8")


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimizer step and how they were obtained."""

    flops: float
    method: str
    detail: str = ""


@dataclass(frozen=True)
class Peak:
    """Dense peak FLOP/s of one device for one dtype, with the row's source."""

    flops_per_s: float
    device: str
    dtype: str
    source: str
    note: str = ""


def given(flops: float) -> StepFlops:
    """FLOPs per optimizer step given by the user.

    Raises:
        ConfigError: ``flops`` is not a finite number > 0.
    """
    if not is_number(flops) or flops <= 0:
        raise ConfigError("flops", flops, "must be a number > 0 (FLOPs per optimizer step), "
                          "'auto' to count the first step, or None")
    return StepFlops(float(flops), METHOD_USER, "given by the user")


def analytic(n_params: float, tokens_per_step: float) -> StepFlops:
    """``6 x n_params x tokens_per_step``: forward and backward of a dense transformer.

    Args:
        n_params: parameters of the model (non-embedding parameters in Kaplan et al.).
        tokens_per_step: tokens processed by one optimizer step on this process.
    """
    for name, value in (("n_params", n_params), ("tokens_per_step", tokens_per_step)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(name, value, "must be a number > 0")
    return StepFlops(6.0 * n_params * tokens_per_step, METHOD_ANALYTIC,
                     f"6 x {n_params:.4g} parameters x {tokens_per_step:.4g} tokens (Kaplan et al. 2020)")


def count(fn: Callable[[], Any]) -> StepFlops:
    """Run ``fn()`` once under ``FlopCounterMode`` and return its FLOPs (e.g. a forward and a
    backward on a meta-device copy of the model, which computes nothing)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return StepFlops(float(counter.get_total_flops()), METHOD_COUNTED,
                     "torch.utils.flop_counter.FlopCounterMode")


def parameter_count(model: Any, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a ``torch.nn.Module``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class FirstStepCounter:
    """Counts the FLOPs of one real step: :meth:`start` before it, :meth:`stop` after it.

    Between the two, every op of this thread (and of autograd's backward threads, which inherit the
    mode) goes through ``FlopCounterMode``; the step runs a little slower, once. Failures (an op the
    counter cannot handle, a compiled graph) are returned as ``None`` with the reason in ``error``.
    """

    def __init__(self) -> None:
        self._mode: Any = None
        self.error: str | None = None

    @property
    def active(self) -> bool:
        return self._mode is not None

    def start(self) -> bool:
        try:
            from torch.utils.flop_counter import FlopCounterMode

            mode = FlopCounterMode(display=False)
            mode.__enter__()  # type: ignore[no-untyped-call]
        except Exception as e:  # noqa: BLE001 - counting is optional, training is not
            self.error = f"{type(e).__name__}: {e}"
            return False
        self._mode = mode
        return True

    def stop(self) -> StepFlops | None:
        mode, self._mode = self._mode, None
        if mode is None:
            return None
        try:
            mode.__exit__(None, None, None)
            total = float(mode.get_total_flops())
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"
            return None
        if total <= 0:
            self.error = "the counted step had no matmul, convolution or attention FLOPs"
            return None
        return StepFlops(total, METHOD_COUNTED,
                         "first optimizer step counted by torch.utils.flop_counter.FlopCounterMode")


# -- peaks ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _table() -> tuple[tuple[re.Pattern[str], Peak], ...]:
    rows = []
    with TABLE.open(newline="") as f:
        for row in csv.DictReader(f):
            rows.append((re.compile(row["match"], re.IGNORECASE),
                         Peak(float(row["peak_flops_per_s"]), row["device"], row["dtype"],
                              row["source"], row.get("note") or "")))
    return tuple(rows)


_WARNED: set[tuple[str, str]] = set()


def peak_flops(device_name: str, dtype: str) -> Peak | None:
    """Dense peak FLOP/s of ``device_name`` (as CUDA/NVML name it) for ``dtype`` (one of
    :data:`DTYPES`), or ``None`` with a warning (once) when the table has no such row."""
    matched = None
    for pattern, peak in _table():
        if pattern.search(device_name):
            matched = matched or peak.device
            if peak.device == matched and peak.dtype == dtype:
                return peak
    key = (device_name, dtype)
    if key not in _WARNED:
        _WARNED.add(key)
        why = (f"the table has no {dtype} row for {matched}" if matched else
               f"{device_name!r} is not in the table")
        log.warning("greentrack: no peak FLOP/s for %s %s (%s): MFU is not computed; see "
                    "greentrack/data/peak_flops.csv", device_name, dtype, why)
    return None


def dtype_name(dtype: Any, device_type: str = "cuda") -> str:
    """Table name of a torch dtype or precision string (``bf16-mixed``, ``torch.float16``...).

    ``float32`` matmuls run as TF32 on CUDA when ``torch.get_float32_matmul_precision()`` is not
    ``highest`` (as Lightning assumes on Ampere and newer), so that is the peak they are held to.
    """
    text = str(dtype).lower().replace("torch.", "")
    if "bf16" in text or "bfloat16" in text:
        return "bfloat16"
    if text.startswith(("16", "fp16")) or "float16" in text or "half" in text:
        return "float16"
    if "float8" in text or "fp8" in text or "transformer-engine" in text:
        return "float8"
    if "tf32" in text:
        return "tf32"
    if text.startswith(("64", "float64", "double")):
        return "float64"
    if device_type == "cuda":
        try:
            import torch
            if torch.get_float32_matmul_precision() != "highest":
                return "tf32"
        except Exception:  # noqa: BLE001
            pass
    return "float32"


def device_peak(device: Any, dtype: Any) -> Peak | None:
    """Peak FLOP/s of a ``torch.device`` for a dtype or precision; ``None`` (with a warning) for
    CPUs and devices not in the table."""
    device_type = getattr(device, "type", str(device))
    if device_type != "cuda":
        return peak_flops(f"{device_type} device", dtype_name(dtype, device_type))
    import torch
    name = torch.cuda.get_device_name(device)
    return peak_flops(name, dtype_name(dtype, "cuda"))


def mfu(flops: float | None, seconds: float | None, peak_flops_per_s: float | None,
        n_devices: int = 1) -> float | None:
    """Model FLOPs utilization: achieved FLOP/s over the peak of ``n_devices`` devices."""
    if not flops or not seconds or not peak_flops_per_s or seconds <= 0:
        return None
    return flops / seconds / (peak_flops_per_s * n_devices)


__all__ = ["StepFlops", "Peak", "given", "analytic", "count", "parameter_count",
           "FirstStepCounter", "peak_flops", "dtype_name", "device_peak", "mfu", "DTYPES",
           "METHOD_COUNTED", "METHOD_USER", "METHOD_ANALYTIC"]
