"""Carbon and cost accounting: grid intensity, Scope 2 both ways, PUE, embodied emissions, SCI.

Reads energy from a run (never hardware). Public entry points:

* :func:`live_intensity` ``(config) -> (gCO2e/kWh, source) | None`` for live gauges;
* :func:`greentrack.carbon.footprint.footprint` for every emission, cost and GPU-hour figure of a
  run (:func:`greentrack.carbon.runs.run_footprint` for a run directory's);
* :func:`greentrack.carbon.location.yearly_factor` for a location's yearly factor.

Nothing is imported here: a module of the package loads its own dependencies (checking a
location at start does not load the footprint), and codecarbon's data loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greentrack.carbon.live import live_intensity

__all__ = ["live_intensity"]


def __getattr__(name: str) -> Any:
    if name == "live_intensity":
        return importlib.import_module("greentrack.carbon.live").live_intensity
    raise AttributeError(f"module 'greentrack.carbon' has no attribute {name!r}")
