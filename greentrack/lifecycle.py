"""Process-wide hooks of every running tracker: fork, SIGTERM and the interpreter's exit.

* A forked child (a DataLoader worker) inherits the trackers but not their threads: every tracker is
  inert there (its methods compare :data:`FORK_GENERATION` with the one it started in).
* SIGTERM stops every running tracker (data flushed, run ``stopped``), then the previous handler
  runs, or the process dies of SIGTERM as it would have.
* At exit, running trackers are stopped (``completed``, or ``failed`` during an exception).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import weakref
from types import FrameType
from typing import Any

_ACTIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_HOOKS = {"fork": False, "sigterm": False}
#: Bumped in every forked child: a tracker started in another generation is inert there. (The
#: per-step check is then a list read, not a getpid() system call.)
FORK_GENERATION = [0]
_PREV_SIGTERM: Any = None


def forget(tracker: Any) -> None:
    _ACTIVE.discard(tracker)



def _after_fork_in_child() -> None:
    # A forked child (DataLoader worker) inherits the trackers but not their threads. It must
    # never sample, write the parent's store through a copied SQLite handle, or run a second
    # sampler: every tracker is inert there (its methods check the fork generation).
    FORK_GENERATION[0] += 1
    _ACTIVE.clear()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    for tracker in list(_ACTIVE):
        tracker._stop("stopped", read_totals=False)
    prev = _PREV_SIGTERM
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_IGN:
        return
    else:  # default action: die of SIGTERM, so the exit status says so
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _stop_all_at_exit() -> None:
    for tracker in list(_ACTIVE):
        tracker._stop("completed" if sys.exc_info()[0] is None else "failed", read_totals=False)


def install(tracker: Any) -> None:
    """Count ``tracker`` among the running ones and install the hooks once per process."""
    global _PREV_SIGTERM
    _ACTIVE.add(tracker)
    if not _HOOKS["fork"]:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(_stop_all_at_exit)
        _HOOKS["fork"] = True
    if not _HOOKS["sigterm"] and threading.current_thread() is threading.main_thread():
        try:
            _PREV_SIGTERM = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _on_sigterm)
            _HOOKS["sigterm"] = True
        except (ValueError, OSError):
            pass
