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
    from greentrack.config import Config
    from greentrack.decorate import track
    from greentrack.errors import ConfigError, GreenTrackError
    from greentrack.summary import summarize
    from greentrack.tracker import Tracker

__all__ = ["Config", "ConfigError", "GreenTrackError", "Tracker", "summarize", "track", "__version__"]

_LAZY = {
    "Tracker": "greentrack.tracker",
    "Config": "greentrack.config",
    "ConfigError": "greentrack.errors",
    "GreenTrackError": "greentrack.errors",
    "summarize": "greentrack.summary",
    "track": "greentrack.decorate",
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
