"""``@greentrack.track``: track a function's energy, as codecarbon's ``@track_emissions`` does.

Example:
    >>> import greentrack
    >>> @greentrack.track(country="FR", emissions_csv="emissions.csv")   # doctest: +SKIP
    ... def train():
    ...     ...
    ...     return model
    >>> model = train()                                                   # doctest: +SKIP
    >>> train.last_totals.emissions_g, train.last_totals.energy_kwh        # doctest: +SKIP

Each call is one run: a :class:`~greentrack.Tracker` starts before the function and stops after
it, with status ``completed``, ``failed`` (the function raised) or ``stopped`` (Ctrl-C). The
function's return value and its exceptions pass through unchanged; the run's
:class:`~greentrack.run.Totals` (what :meth:`Tracker.stop` returns) are in ``last_totals`` and the
tracker in ``last_tracker``. Settings are checked when the function is decorated, so a bad one is a
``ConfigError`` at import time, never in the middle of a job.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

from greentrack.config import Config
from greentrack.run import Totals
from greentrack.tracker import Tracker

P = ParamSpec("P")
R = TypeVar("R")
_CALLS = itertools.count(1)


class Tracked(Generic[P, R]):
    """A function whose every call is a tracked run (see the module docstring).

    Attributes:
        last_totals: the last finished call's totals (None before one, or when tracking was off).
        last_tracker: the last call's tracker (its ``run_dir``, ``run_id``, ``status``).
    """

    def __init__(self, fn: Callable[P, R], config: Config, run_dir: str | os.PathLike[str] | None
                 ) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.config, self.run_dir = fn, config, run_dir
        self.last_totals: Totals | None = None
        self.last_tracker: Tracker | None = None

    def _next_run_dir(self) -> Path:
        if self.run_dir is not None:  # the user's: every call adds a segment to that one run
            return Path(self.run_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = getattr(self.fn, "__name__", "run").strip("<>") or "run"
        return Path("greentrack-runs") / f"{name}-{stamp}-{os.getpid()}-{next(_CALLS)}"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        tracker = Tracker(config=self.config.replace(run_dir=self._next_run_dir()))
        self.last_tracker = tracker
        tracker.start()  # never raises but for a bad setting; a failure leaves it disabled
        status = "failed"
        try:
            result = self.fn(*args, **kwargs)
            status = "completed"
            return result
        except KeyboardInterrupt:
            status = "stopped"
            raise
        finally:  # the function's exception, if any, goes on unchanged: stop() never raises
            self.last_totals = tracker.stop(status)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        """A decorated method binds like the function it wraps."""
        return self if obj is None else functools.partial(self.__call__, obj)


@overload
def track(fn: Callable[P, R], /) -> Tracked[P, R]: ...


@overload
def track(fn: None = None, /, *, run_dir: str | os.PathLike[str] | None = None,
          config: Config | None = None, **settings: Any) -> Callable[[Callable[P, R]], Tracked[P, R]]: ...


def track(fn: Callable[P, R] | None = None, /, *, run_dir: str | os.PathLike[str] | None = None,
          config: Config | None = None, **settings: Any) -> Any:
    """Decorate a function so that each call is a tracked run: ``@track`` or ``@track(...)``.

    Args:
        fn: the function (when used as ``@track`` without parentheses).
        run_dir: the run directory of every call (calls add segments to one run); default: a
            fresh ``greentrack-runs/<function>-<UTC time>-<pid>-<n>`` per call.
        config: a :class:`~greentrack.Config`; default from ``GREENTRACK_*`` variables.
        **settings: any Config field (``country``, ``emissions_csv``...), overriding ``config``.

    Returns:
        A :class:`Tracked` function (or a decorator making one).

    Raises:
        ConfigError: a setting is invalid (when decorating).
    """
    base = (config or Config.from_env()).replace(**settings) if settings else (config or Config.from_env())

    def decorate(f: Callable[P, R]) -> Tracked[P, R]:
        return Tracked(f, base, run_dir)
    return decorate(fn) if fn is not None else decorate


__all__ = ["Tracked", "track"]
