"""``greentrack run --start-when-greener``: wait for the start, within a delay, that gives the
expected duration the fewest forecast grams, then run.

The choice is :func:`greentrack.carbon.schedule.best_start` over a flat profile of the expected
duration (the command's power is not known before it runs; a flat profile makes grams per kWh the
mean intensity over the window). The forecast is the intensity series of ``--intensity-csv``: any
spacing (hourly, 15 min, seconds), rows in the future, as a provider's day-ahead forecast exports
them.

The wait shows a countdown on stderr (rewritten in place on a terminal, a line every
:data:`LINE_EVERY_S` otherwise). SIGINT (Ctrl-C) or SIGTERM during the wait ends it cleanly: one
line, no command started, no run directory created, exit status 128 + the signal (130, 143).

What the run records (event ``start-when-greener``, details): the wait planned and waited, the
chosen start, the mean intensity of the window from then and from the moment the command was
asked, the expected saving (share and gCO2e per kWh of the run's IT energy), the series.

Example:
    >>> plan = plan_start(config, max_delay_s=6 * 3600, duration_s=3 * 3600)  # doctest: +SKIP
    >>> wait_for(plan)                                                       # doctest: +SKIP
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from greentrack.carbon.schedule import best_start, flat_profile, window_starts
from greentrack.carbon.series import read_csv
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.common.units import utc

#: On a non-terminal stderr, one countdown line this often (seconds).
LINE_EVERY_S = 60.0
#: Exit status of a wait ended by a signal: 128 + the signal number, as shells report it.
EXIT_BASE = 128


@dataclass(frozen=True)
class StartPlan:
    """When to start and what it is expected to save (grams per kWh: PUE not applied).

    Attributes:
        asked_unix: when the command was asked for (the reference: starting now).
        start_unix: the chosen start.
        max_delay_s, duration_s: the settings.
        now_g_per_kwh: mean forecast intensity of the window starting now.
        chosen_g_per_kwh: mean forecast intensity of the window from the chosen start.
        starts_tried: candidate starts compared.
        series: the series' name (file and column).
    """

    asked_unix: float
    start_unix: float
    max_delay_s: float
    duration_s: float
    now_g_per_kwh: float
    chosen_g_per_kwh: float
    starts_tried: int
    series: str

    @property
    def wait_s(self) -> float:
        return max(0.0, self.start_unix - self.asked_unix)

    @property
    def saving_share(self) -> float:
        """Expected saving against starting now, as a share of the grams (0-1)."""
        if self.now_g_per_kwh <= 0:
            return 0.0
        return max(0.0, 1.0 - self.chosen_g_per_kwh / self.now_g_per_kwh)

    def details(self, waited_s: float) -> dict[str, Any]:
        """What the run records (event details)."""
        return {"asked_at": utc(self.asked_unix), "chosen_start": utc(self.start_unix),
                "asked_unix": self.asked_unix, "chosen_start_unix": self.start_unix,
                "planned_wait_s": self.wait_s, "waited_s": waited_s,
                "max_delay_s": self.max_delay_s, "expected_duration_s": self.duration_s,
                "now_g_per_kwh": self.now_g_per_kwh, "chosen_g_per_kwh": self.chosen_g_per_kwh,
                "expected_saving_share": self.saving_share,
                "expected_saving_g_per_kwh": self.now_g_per_kwh - self.chosen_g_per_kwh,
                "starts_tried": self.starts_tried, "series": self.series,
                "method": "flat power over the expected duration, integrated against the "
                          "series (greentrack.carbon.schedule.best_start)"}

    def text(self) -> str:
        return (f"start at {utc(self.start_unix)} (in {_clock(self.wait_s)}): forecast "
                f"{self.chosen_g_per_kwh:.4g} gCO2e/kWh over the next {_clock(self.duration_s)} "
                f"against {self.now_g_per_kwh:.4g} now, {self.saving_share:.1%} fewer grams "
                f"({self.series})")


def _clock(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def plan_start(config: Config, max_delay_s: float, duration_s: float,
               now_unix: float | None = None) -> StartPlan:
    """The best start within ``max_delay_s`` for ``duration_s`` (see the module docstring).

    Raises:
        ConfigError: no ``--intensity-csv``, a series that does not cover now, or one too short
            for the expected duration.
    """
    if not config.intensity_csv:
        raise ConfigError("--start-when-greener", True, "needs a forecast of the intensity: "
                          "--intensity-csv FILE (a time series covering now and the delay)")
    series = read_csv(config.intensity_csv)
    now = time.time() if now_unix is None else now_unix
    first, last = series.span
    if not first <= now < last:
        raise ConfigError("--intensity-csv", config.intensity_csv,
                          f"covers {utc(first)} to {utc(last)}, not now ({utc(now)}): give a "
                          "forecast that starts before now")
    if now + duration_s > last:
        raise ConfigError("--expected-duration", _clock(duration_s),
                          f"is longer than the intensity series covers from now (it ends at "
                          f"{utc(last)}, {_clock(last - now)} from now)")
    candidates = window_starts(series, now, max_delay_s, duration_s)
    # a gap in the series (an empty row) is charged the worst known value: never a green hole
    choice = best_start(series, flat_profile(duration_s), candidates, max(series.values))
    assert choice is not None and choice.first_unix == now  # now fits: checked above
    # the profile is 1 kWh: its grams are the window's mean gCO2e/kWh
    return StartPlan(now, choice.start_unix, max_delay_s, duration_s, choice.first_grams,
                     choice.grams, choice.tried, series.source)


def wait_for(plan: StartPlan, out: TextIO | None = None,
             clock: Callable[[], float] = time.time) -> int | None:
    """Wait until ``plan.start_unix`` with a countdown on ``out`` (stderr). None when the time
    came; the exit status (128 + signal) when SIGINT or SIGTERM ended the wait."""
    out = sys.stderr if out is None else out
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        got.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    tty = _isatty(out)
    try:
        _say(out, f"greentrack: {plan.text()}; Ctrl-C cancels")
        next_line = clock() + LINE_EVERY_S
        while not stop.is_set():
            left = plan.start_unix - clock()
            if left <= 0:
                break
            if tty:
                _say(out, f"\rgreentrack: starting in {_clock(left)} (Ctrl-C cancels) ", end="")
            elif clock() >= next_line:
                next_line = clock() + LINE_EVERY_S
                _say(out, f"greentrack: starting in {_clock(left)}")
            stop.wait(min(1.0, left))
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if tty:
        _say(out, "")
    if got:
        _say(out, f"greentrack: wait cancelled by {signal.Signals(got[0]).name}; the command was "
                  "not started")
        return EXIT_BASE + got[0]
    return None


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _say(out: TextIO, text: str, end: str = "\n") -> None:
    try:
        out.write(text + end)
        out.flush()
    except (OSError, ValueError):  # a closed stderr never stops the wait
        pass


__all__ = ["StartPlan", "plan_start", "wait_for", "EXIT_BASE", "LINE_EVERY_S"]
