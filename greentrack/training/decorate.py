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
it, with status ``completed`` (also ``sys.exit(0)``), ``failed`` (the function raised, or exited
with another code) or ``stopped`` (Ctrl-C, a cancelled task, a generator closed early). For an
``async def`` function the run is the awaiting of the call, for a generator function (sync or
async) the iteration of what it returns, not the making of the coroutine or generator. The
function's return value and its exceptions pass through unchanged; the run's
:class:`~greentrack.carbon.runs.Totals` (what :meth:`Tracker.stop` returns) are in ``last_totals`` and the
tracker in ``last_tracker``. A call made inside another tracked call (a recursive call, one
decorated function calling another) is part of that call's run, so the energy is counted once:
its ``last_tracker`` is the outer call's tracker and its ``last_totals`` stay None. Settings
are checked when the function is decorated (``Config.check`` too: the emissions CSV's directory, the intensity CSV), so a bad one is a ``ConfigError`` at
import time, never in the middle of a job; a run directory that cannot be made when a call starts
is one warning, and that call runs untracked (``last_totals`` None).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from greentrack.carbon.runs import Totals
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.common.text import printable
from greentrack.process.lifecycle import status_of_exception
from greentrack.process.settings import check_settings
from greentrack.process.tracker import Tracker

P = ParamSpec("P")
R = TypeVar("R")
_CALLS = itertools.count(1)
#: The tracked call this code runs inside (per thread and per asyncio task): a call made within
#: it joins its run instead of measuring the same devices as a second run.
_OUTER: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar("greentrack_outer",
                                                                          default=None)


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
        self._kind = ("coroutine" if inspect.iscoroutinefunction(fn) else
                      "generator" if inspect.isgeneratorfunction(fn) else
                      "async generator" if inspect.isasyncgenfunction(fn) else "function")
        self.last_totals: Totals | None = None
        self.last_tracker: Tracker | None = None

    def _next_run_dir(self) -> Path:
        if self.run_dir is not None:  # the user's: every call adds a segment to that one run
            return Path(self.run_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = getattr(self.fn, "__name__", "run").strip("<>") or "run"
        return Path("greentrack-runs") / f"{name}-{stamp}-{os.getpid()}-{next(_CALLS)}"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._kind == "coroutine":  # the run is the awaiting, not the making of the coroutine
            return cast(R, self._await(*args, **kwargs))
        if self._kind == "generator":  # the run is the iteration
            return cast(R, self._iterate(*args, **kwargs))
        if self._kind == "async generator":
            return cast(R, self._aiterate(*args, **kwargs))
        tracker = self._begin()
        exc: BaseException | None = None
        try:
            return self.fn(*args, **kwargs)
        except BaseException as e:
            exc = e
            raise
        finally:  # the function's exception, if any, goes on unchanged: stop() never raises
            self._end(tracker, exc)

    async def _await(self, *args: Any, **kwargs: Any) -> Any:
        tracker = self._begin()
        exc: BaseException | None = None
        try:
            return await self.fn(*args, **kwargs)  # type: ignore[misc]
        except BaseException as e:
            exc = e
            raise
        finally:
            self._end(tracker, exc)

    def _iterate(self, *args: Any, **kwargs: Any) -> Any:
        tracker = self._begin()
        exc: BaseException | None = None
        try:
            return (yield from self.fn(*args, **kwargs))  # type: ignore[misc]
        except BaseException as e:
            exc = e
            raise
        finally:
            self._end(tracker, exc)

    async def _aiterate(self, *args: Any, **kwargs: Any) -> Any:
        tracker = self._begin()
        exc: BaseException | None = None
        try:
            async for item in self.fn(*args, **kwargs):  # type: ignore[attr-defined]
                yield item
        except BaseException as e:
            exc = e
            raise
        finally:
            self._end(tracker, exc)

    def _begin(self) -> Any:
        """A started tracker for one call, with the token that makes it the outer one; None (one
        warning, the call runs untracked) when the run cannot be created: the user's function
        always runs. Inside another tracked call: None, the call is part of that run."""
        outer = _OUTER.get()
        if outer is not None and outer.running:
            self.last_tracker, self.last_totals = outer, None
            return None
        tracker = Tracker(config=self.config.replace(run_dir=self._next_run_dir()))
        self.last_tracker, self.last_totals = tracker, None
        try:
            tracker.start()  # never raises but for a bad setting; a failure leaves it disabled
        except ConfigError as e:  # the run directory cannot be made now (checked at decoration)
            logging.getLogger("greentrack").warning("greentrack: %s: this call is not tracked",
                                                    printable(e))
            return None
        return tracker, _OUTER.set(tracker)

    def _end(self, begun: Any, exc: BaseException | None) -> None:
        if begun is not None:
            tracker, token = begun
            try:
                _OUTER.reset(token)
            except ValueError:  # a generator resumed in another context: nothing to undo
                pass
            self.last_totals = tracker.stop(status_of_exception(exc))

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
    check_settings(base)  # the settings that need a file or a table too, now rather than at a call
    if run_dir is not None:
        base.replace(run_dir=run_dir)  # checked now too: "" (an unset variable) is refused

    def decorate(f: Any) -> Any:
        # above @staticmethod or @classmethod: track the function, then wrap it again the same
        # way (a Tracked bound like a function would pass the instance to a static method)
        if isinstance(f, (staticmethod, classmethod)):
            return type(f)(Tracked(f.__func__, base, run_dir))
        return Tracked(f, base, run_dir)
    return decorate(fn) if fn is not None else decorate


__all__ = ["Tracked", "track"]
