"""Messages a user sees, said at most once per cause per run.

A run meets the same cause again and again: other runs come and go on the host, a flaky device
fails every few minutes, a step field is bad at every step, each segment of a run (each
``@greentrack.track`` call on one run directory) opens the same devices. The run's events record
every occurrence (reports count them); the log, which the user reads beside the training output,
says each cause once. :func:`first` is the one place that remembers what was said: per process,
for every tracker of the run in it (threads included), so four trackers of one run do not say it
four times either.

``run`` is any text naming the run (:func:`run_key`); ``cause`` names what happened, with the
device or the setting it concerns when each one is a cause of its own (``read-failed:gpu0``). The
memory is bounded (:data:`MAX_KEYS`, oldest forgotten first): a process that runs thousands of
runs does not grow, and at worst a cause of a long-gone run could be said again.

Example:
    >>> first("run-a", "host-shared"), first("run-a", "host-shared"), first("run-b", "host-shared")
    (True, False, True)
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any

#: (run, cause) pairs remembered per process; the oldest goes first beyond this.
MAX_KEYS = 4096

_said: OrderedDict[tuple[str, str], None] = OrderedDict()
_lock = threading.Lock()


def run_key(run_dir: str | os.PathLike[str], run_id: str | None) -> str:
    """The run a message belongs to: its directory (absolute) and id. Two runs of one id in
    different directories (tests, copies) are two runs."""
    return f"{os.path.abspath(run_dir)}#{run_id or ''}"


def first(run: str, cause: str) -> bool:
    """True the first time ``(run, cause)`` is asked in this process, False after. Thread-safe."""
    key = (run, cause)
    with _lock:
        if key in _said:
            return False
        _said[key] = None
        while len(_said) > MAX_KEYS:  # a while: the bound holds whatever was remembered before
            _said.popitem(last=False)
        return True


def warn_once(logger: logging.Logger, run: str, cause: str, message: str, *args: Any) -> bool:
    """``logger.warning(message, *args)`` the first time ``(run, cause)`` happens; True if said."""
    if not first(run, cause):
        return False
    logger.warning(message, *args)
    return True


def _after_fork() -> None:
    """A child forked while another thread held the lock would wait on it for ever."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
