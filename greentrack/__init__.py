"""greentrack: per-step energy and carbon tracking for ML training.

``import greentrack`` is cheap: torch, lightning and pynvml load only when a tracker starts.

>>> import greentrack
>>> with greentrack.Tracker("runs/demo") as tracker:   # doctest: +SKIP
...     with tracker.step():
...         ...
>>> @greentrack.track(country="FR")                    # doctest: +SKIP
... def train(): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from greentrack.common.config import Config
    from greentrack.common.errors import ConfigError, GreenTrackError
    from greentrack.process.tracker import Tracker
    from greentrack.reports.summary import summarize
    from greentrack.training.decorate import track

__all__ = ["Config", "ConfigError", "GreenTrackError", "Tracker", "summarize", "track", "__version__"]

_LAZY = {
    "Tracker": "greentrack.process.tracker",
    "Config": "greentrack.common.config",
    "ConfigError": "greentrack.common.errors",
    "GreenTrackError": "greentrack.common.errors",
    "summarize": "greentrack.reports.summary",
    "track": "greentrack.training.decorate",
}


def __dir__() -> list[str]:
    """The public API (what ``dir(greentrack)`` and completion show), not the lazy machinery."""
    return sorted(__all__)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'greentrack' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(module), name)
