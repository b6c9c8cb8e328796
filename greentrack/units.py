"""Units and the checks every figure shares: one place for each, so no two modules disagree.

Energy is stored in joules; humans get kWh through :data:`J_PER_KWH`. Wall times are shown as
UTC ISO 8601 by :func:`utc`. A value counts as a number only when :func:`is_number` says so.
"""

from __future__ import annotations

import math
import time
from typing import Any

#: Joules in one kilowatt-hour (exact).
J_PER_KWH = 3.6e6


def utc(t: float) -> str:
    """``t`` (Unix seconds) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def is_number(value: Any, lo: float = -math.inf, hi: float = math.inf) -> bool:
    """A real, finite number (never a bool) with ``lo <= value <= hi``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and lo <= value <= hi


def check_number(name: str, value: Any, lo: float, hi: float = math.inf,
                 allowed: str | None = None) -> float:
    """``value`` as a float, or a one-line :class:`~greentrack.errors.ConfigError` naming ``name``,
    the value and the range (or ``allowed``)."""
    if not is_number(value, lo, hi):
        from greentrack.errors import ConfigError
        raise ConfigError(name, value, allowed or (f"must be a number from {lo:g} to {hi:g}"
                                                   if hi != math.inf else f"must be a number >= {lo:g}"))
    return float(value)
