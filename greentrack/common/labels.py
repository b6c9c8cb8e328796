"""What kind of experiment a run is: ``precision`` and free labels (``method=lora``...).

Labels come from ``Tracker(labels={...})``, ``GREENTRACK_LABELS=precision=bf16,method=lora``,
``greentrack run --label KEY=VALUE`` and, for ``precision``, from what the framework knows (the
integrations call :func:`precision_label`). They are stored in each store's meta (``labels``),
merged across stores by :attr:`greentrack.run.Run.labels`, and shown by every report and compare.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from greentrack.common.errors import ConfigError

MAX_LABELS = 16
MAX_VALUE = 64
KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: Usual precision names; any other value that passes the checks is kept as given.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "mixed")


def parse_labels(value: Any, setting: str = "labels") -> dict[str, str]:
    """Labels from a mapping or ``KEY=VALUE[,KEY=VALUE...]`` text (or a list of such items).

    Raises:
        ConfigError: one line naming ``setting``: more than :data:`MAX_LABELS` labels, a key not
            ``[a-z][a-z0-9_]{0,31}`` or given twice, a value empty, longer than 64 or not
            printable.
    """
    if value is None:
        return {}
    items: list[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (str, list, tuple)):
        parts = value.split(",") if isinstance(value, str) else [p for v in value
                                                                  for p in str(v).split(",")]
        items = []
        for part in parts:
            if not part.strip():
                continue
            if "=" not in part:
                raise ConfigError(setting, part, "each label must be KEY=VALUE, e.g. precision=bf16")
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
    else:
        raise ConfigError(setting, value, "must be a mapping or KEY=VALUE[,KEY=VALUE...] text")
    out: dict[str, str] = {}
    for k, v in items:
        if not isinstance(k, str) or not KEY.fullmatch(k):
            raise ConfigError(setting, k, "label keys must match [a-z][a-z0-9_]{0,31}")
        if k in out:  # a=1,a=2: which one is meant is the user's to say, never a silent pick
            raise ConfigError(setting, f"{k}={out[k]}, {k}={v}", f"the label {k} is given twice; "
                              "give each key once")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(setting, f"{k}={v!r}", "label values must be text or numbers")
        text = str(v)
        if not text or len(text) > MAX_VALUE or not text.isprintable():
            raise ConfigError(setting, f"{k}={text[:80]!r}", f"label values must be 1-{MAX_VALUE} "
                              "printable characters")
        out[k] = text
    if len(out) > MAX_LABELS:
        raise ConfigError(setting, f"{len(out)} labels", f"at most {MAX_LABELS} labels")
    return out


_DTYPES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16",
           "half": "fp16", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "int8": "int8",
           "qint8": "int8", "quint4x2": "int4", "float64": "fp64"}


def dtype_precision(dtype: Any) -> str | None:
    """``torch.bfloat16`` (or its name) -> ``bf16``; None when unknown."""
    name = str(dtype).rsplit(".", 1)[-1]
    return _DTYPES.get(name)


def framework_precision(value: Any) -> str | None:
    """Lightning's ``trainer.precision`` (``"bf16-mixed"``, ``"16-mixed"``, ``"32-true"``,
    ``"transformer-engine"``...) -> ``bf16``, ``fp16``, ``fp32``, ``fp8``; None when unknown."""
    text = str(value).lower()
    for key, name in (("bf16", "bf16"), ("tf32", "tf32"), ("transformer-engine", "fp8"), ("fp8", "fp8"),
                      ("16", "fp16"), ("64", "fp64"), ("32", "fp32")):
        if key in text:
            return name
    return None


def model_precision(model: Any) -> str | None:
    """The dtype most of a model's parameters have (by count), as a precision; None when it
    has none or they cannot be read. ``int8``/``int4`` weights show as such."""
    counts: dict[str, int] = {}
    try:
        for p in model.parameters():
            name = dtype_precision(p.dtype)
            if name:
                counts[name] = counts.get(name, 0) + int(p.numel())
    except Exception:  # noqa: BLE001 - a label is never worth an error
        return None
    return max(counts, key=lambda k: counts[k]) if counts else None


def autocast_precision() -> str | None:
    """``bf16``/``fp16`` while a torch autocast region is active on this thread (CUDA or CPU)."""
    try:
        import torch
        for device in ("cuda", "cpu"):
            if torch.is_autocast_enabled(device):
                return dtype_precision(torch.get_autocast_dtype(device))
    except Exception:  # noqa: BLE001 - older torch, or none
        return None
    return None


def precision_of(value: Any) -> str | None:
    """A precision from what a framework says: a torch dtype, or its precision setting."""
    if value is None:
        return None
    if type(value).__name__ == "dtype":
        return dtype_precision(value)
    return framework_precision(value)
