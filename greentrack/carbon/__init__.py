"""Carbon and cost accounting: grid intensity, Scope 2 both ways, PUE, embodied emissions, SCI.

Reads energy from a run (never hardware). Public entry points:

* :func:`live_intensity` ``(config) -> (gCO2e/kWh, source) | None`` for live gauges;
* :func:`greentrack.carbon.accounting.account` for a finished (or running) run's figures;
* :func:`greentrack.carbon.location.yearly_factor` for a location's yearly factor.

Nothing heavy is imported here: codecarbon's data loads on first use.
"""

from __future__ import annotations

from greentrack.carbon.live import live_intensity

__all__ = ["live_intensity"]
