"""What a training script hands a step (``samples=``, ``tokens=``, ``flops=``, extra fields), made safe
to record, on two threads.

Users pass whatever they have: ``tokens=attention_mask.sum()`` is a CUDA tensor, ``samples=len(b)``
an int, a NumPy reduction a ``numpy.float32``, a config value a ``Decimal``. Before this module one
tensor made every later commit of the store fail and lost the whole run.

* :func:`capture` runs on the training thread, and only for a value that is not a plain Python
  scalar (``submit_window`` checks the type first, so plain values cost one set lookup). A torch
  tensor is snapshotted at the step's end, so a later in-place update cannot change what is recorded:
  a CPU tensor by ``.item()`` (no device involved), a CUDA tensor by an asynchronous copy into host
  memory followed by an event record on the current stream -- never a synchronization. A NumPy
  array of one element is its element (``.item()``), whatever its shape, as a tensor's is.
* :func:`count` and :func:`extra_value` run on the sampler thread: they turn what was captured into a
  finite float (or a JSON value for extra fields), or say why it cannot be one. A CUDA value is read
  only once its event says the step's GPU work is done (:meth:`DeviceValue.ready`).

A value that cannot be a number drops that one field of that one step (the engine records one
``bad-step-field`` event per field name and counts the rest); nothing else of the step, or of the
run, is affected.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

#: Types recorded as they are: the training thread hands them over without any other work.
PLAIN = frozenset({int, float, str, bool, type(None)})

#: Above these a per-step count is a bug in the caller, not a measurement: no step of any model
#: trained so far reaches 1e27 FLOPs (whole frontier runs are ~1e26), or 1e15 samples or tokens.
COUNT_LIMITS = {"flops": 1e27, "samples": 1e15, "tokens": 1e15}
#: Extra text is cut to this length; a structured extra (list, dict) may take this much JSON.
MAX_TEXT = 256
MAX_JSON = 2048


class DeviceValue:
    """A one-element CUDA tensor copied to host memory asynchronously, with an event after the copy.

    Built on the training thread (the copy and the event record are queued, not waited for); read
    on the sampler thread once :meth:`ready`.
    """

    __slots__ = ("host", "event")

    def __init__(self, tensor: Any) -> None:
        import torch

        # A non-blocking device-to-host copy lands in pinned memory; the event, recorded on the
        # same (current) stream after it, completes once the copy -- and all the step's work queued
        # before it -- is done.
        self.host = tensor.detach().reshape(()).to("cpu", non_blocking=True)
        self.event: Any = torch.cuda.Event()  # type: ignore[no-untyped-call]
        self.event.record()

    def ready(self) -> bool:
        return bool(self.event.query())

    def value(self) -> Any:
        return self.host.item()


def capture(value: Any) -> Any:
    """Snapshot ``value`` on the training thread; cheap, never synchronizes a device.

    One rule for arrays, NumPy's and torch's alike: one element, whatever the shape (``[3]``,
    ``[[5]]``, 0-d), is that element; more (or none) is refused on the sampler thread, saying how
    many."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        try:
            if value.numel() != 1:
                return value  # refused on the sampler thread, with the reason
            if value.is_cuda:
                return DeviceValue(value)
            return value.item()
        except Exception:  # noqa: BLE001 - an odd tensor (meta, sparse...) is refused later
            return value
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray) and value.size == 1:
        try:
            return value.item()  # a copy: a later in-place update does not change the step
        except Exception:  # noqa: BLE001 - an odd array (object dtype...) is refused later
            return value
    return value


def pending(value: Any) -> bool:
    """True while a captured CUDA value (or one inside a :class:`Total`) is not yet on the host."""
    if isinstance(value, Total):
        return any(pending(v) for v in value.parts)
    return isinstance(value, DeviceValue) and not value.ready()


def _number(value: Any) -> float | str:
    """``value`` as a float, or the reason it is not a number."""
    if isinstance(value, Total):
        if value.lost:
            return f"more than {Total.MAX_PARTS} non-plain values in coalesced steps"
        out = value.plain
        for part in value.parts:
            n = _number(part)
            if isinstance(n, str):
                return n
            out += n
        out = float(out)  # a sum of plain ints can pass 2**63, which SQLite cannot store
        return out if math.isfinite(out) else f"{out}, not a finite number"
    if isinstance(value, DeviceValue):
        if not value.ready():
            return "a CUDA value whose step had not finished on the GPU when tracking stopped"
        value = value.value()
    if isinstance(value, bool):
        return "a bool, not a number"
    if isinstance(value, (str, bytes)):
        return "text, not a number"
    if value is None:
        return "None"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return f"a tensor of {value.numel()} elements, not one number"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray) and value.size != 1:
        return f"an array of {value.size} elements, not one number"
    try:
        out = float(value)
    except OverflowError:
        return "too large for a float"
    except Exception:  # noqa: BLE001 - any object may define __float__ and raise anything
        return f"{type(value).__name__} is not a number"
    if not math.isfinite(out):
        return f"{out}, not a finite number"
    return out


def count(name: str, value: Any) -> tuple[float | None, str | None]:
    """A step's ``flops``/``samples``/``tokens``: ``(number, None)``, ``(None, None)`` when not
    given, or ``(None, reason)`` when the field must be dropped."""
    if value is None:
        return None, None
    out = _number(value)
    if isinstance(out, str):
        return None, out
    if out < 0:
        return None, f"{out:g} is negative"
    limit = COUNT_LIMITS.get(name, math.inf)
    if out > limit:
        return None, f"{out:g} is above {limit:g}, not a plausible count for one step"
    return out, None


def metric_value(value: Any) -> float | str:
    """A recorded metric (``Tracker.record``) as a float, or why it cannot be one."""
    return _number(value)


def extra_value(value: Any) -> tuple[Any, str | None]:
    """An extra step field as a JSON value: ``(value, None)``, or ``(None, reason)`` to drop it."""
    if value is None or isinstance(value, bool):
        return value, None
    if isinstance(value, str):
        return value[:MAX_TEXT], None
    if isinstance(value, int) and abs(value) < 2**63:
        return value, None
    if isinstance(value, (list, tuple, dict)):
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            return None, f"not JSON ({e})"
        if len(text) > MAX_JSON:
            return None, f"{len(text)} characters of JSON, more than {MAX_JSON}"
        return json.loads(text), None
    out = _number(value)
    if isinstance(out, str):
        return None, out
    return out, None


def phase_name(phase: Any) -> str:
    """A phase is a short label: whatever was passed, as text of at most 64 characters."""
    if not isinstance(phase, str):
        try:
            phase = str(phase)
        except Exception:  # noqa: BLE001 - a label must never break a step
            phase = type(phase).__name__
    return phase[:64] or "train"


class Total:
    """The sum of one field over steps coalesced into one row (:meth:`Engine.submit` does this
    when the sampler falls behind). Plain numbers are added at once; anything else (a CUDA value
    not yet on the host, a NumPy scalar) is kept, up to :data:`MAX_PARTS`, for the sampler thread."""

    MAX_PARTS = 1000
    __slots__ = ("plain", "parts", "lost")

    def __init__(self, first: Any) -> None:
        self.plain = 0.0
        self.parts: list[Any] = []
        self.lost = 0
        self.add(first)

    def add(self, value: Any) -> None:
        if type(value) in (int, float):
            self.plain += value
        elif len(self.parts) < self.MAX_PARTS:
            self.parts.append(value)
        else:
            self.lost += 1


def merge(a: Any, b: Any) -> Any:
    """``a`` and ``b`` summed lazily (either may be None: a field not given)."""
    if b is None:
        return a
    if a is None:
        return b
    total = a if isinstance(a, Total) else Total(a)
    total.add(b)
    return total
