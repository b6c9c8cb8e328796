"""Process-wide hooks of every running tracker: fork, SIGTERM and the interpreter's exit; and the
one place that decides a run's final status from how its process ended.

* A forked child (a DataLoader worker, a ``multiprocessing.Pool`` worker) inherits the trackers but
  not their threads: every tracker is inert there (its methods compare :data:`FORK_GENERATION`
  with the one it started in), and greentrack's SIGTERM handler is taken out again, so
  ``Pool.terminate()`` kills the worker as the kernel would.
* SIGTERM stops every running tracker (data flushed, run ``stopped``), then the previous handler
  runs, or the process dies of SIGTERM as it would have. The handler is installed while a tracker
  runs (from the main thread) and the previous one is put back when the last one stops.
* At exit, running trackers are stopped: ``failed`` after an uncaught exception (the interpreter
  leaves it in ``sys.last_value`` before exit handlers run), else ``completed`` with an event
  saying the run was stopped at exit. ``sys.exit(n)``'s code is consumed by the interpreter
  before any exit handler runs: a library cannot see it without an interpreter-wide hook, which
  greentrack does not install. ``with Tracker()``, ``@greentrack.track`` and ``greentrack run``
  see it (:func:`status_of_exit`, :func:`status_of_exception`).
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


#: ``sys.last_value`` when the hooks were installed: a later one is an uncaught exception
_LAST_AT_START: list[Any] = [None]

#: Signals that ask a process to stop (a user's Ctrl-C, a scheduler's preemption, a closed
#: terminal): a run ended by one is ``stopped``; by any other (SIGSEGV, SIGABRT, SIGBUS,
#: SIGKILL from the OOM killer...) ``failed``.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def status_of_exit(returncode: int, asked_to_stop: bool = False) -> tuple[str, str]:
    """``(status, why)`` of a run whose command ended with ``returncode`` (``subprocess``'s:
    ``-N`` when signal N killed it); ``asked_to_stop``: a stop signal was passed on to it."""
    if returncode == 0:
        return "completed", "the command exited with status 0"
    if returncode < 0:
        signum = -returncode
        name = _signal_name(signum)
        if signum in STOP_SIGNALS or (asked_to_stop and signum == signal.SIGKILL):
            return "stopped", f"the command was ended by {name}"
        hint = (" (the kernel's OOM killer sends it when memory runs out)"
                if signum == signal.SIGKILL else "")
        return "failed", f"the command was killed by {name}{hint}"
    if asked_to_stop:
        return "stopped", f"the command exited with status {returncode} after it was asked to stop"
    return "failed", f"the command exited with status {returncode}"


def status_of_exception(exc: BaseException | None) -> str:
    """The status of a run ended by ``exc`` leaving a ``with`` block or a decorated call:
    ``sys.exit(0)`` (or ``exit()``) completes it, Ctrl-C, a closed generator and a cancelled
    task stop it, any other exception (``sys.exit(3)`` too) fails it."""
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (None, 0)):
        return "completed"
    asyncio = sys.modules.get("asyncio")  # loaded wherever a task can be cancelled
    if isinstance(exc, (KeyboardInterrupt, GeneratorExit)) or (
            asyncio is not None and isinstance(exc, asyncio.CancelledError)):
        return "stopped"
    return "failed"


def forget(tracker: Any) -> None:
    """``tracker`` stopped: when no tracker runs any more, the SIGTERM handler goes back."""
    _ACTIVE.discard(tracker)
    if not _ACTIVE:
        _restore_sigterm()


def _restore_sigterm() -> None:
    """Put back the SIGTERM handler greentrack replaced, if greentrack's is still the one in
    place (a handler the program set since is left alone). Only the main thread can: elsewhere
    the handler stays, and with no tracker running it only passes SIGTERM on."""
    if not _HOOKS["sigterm"]:
        return
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, _PREV_SIGTERM if _PREV_SIGTERM is not None
                          else signal.SIG_DFL)
        _HOOKS["sigterm"] = False
    except (ValueError, OSError):  # not the main thread
        pass


#: Per thread (a signal mask is a thread's): whether :func:`_before_fork` blocked SIGTERM in it,
#: to unblock after the fork, in the parent's thread and in the child (which is that thread)
_FORKING = threading.local()


def _before_fork() -> None:
    # While greentrack's SIGTERM handler is installed, a forked child inherits it until its
    # after-fork hook puts the previous one back. A SIGTERM in that window (a Pool terminating a
    # worker still starting, seen under load) is only recorded by CPython for the Python handler
    # and dropped once the disposition is the default again: the worker outlived terminate() and
    # the pool's join hung. Blocking SIGTERM in the forking thread across the fork keeps such a
    # signal pending in the kernel until the child's handler is the right one.
    # (Several threads may fork at once: the mark is the forking thread's own, as its mask is.)
    _FORKING.blocked = False
    if _HOOKS["sigterm"]:
        try:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            _FORKING.blocked = signal.SIGTERM not in old
        except (AttributeError, OSError, ValueError):  # no pthread_sigmask here
            pass


def _unblock() -> None:
    if getattr(_FORKING, "blocked", False):
        _FORKING.blocked = False
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _after_fork_in_child() -> None:
    # A forked child (DataLoader worker) inherits the trackers but not their threads. It must
    # never sample, write the parent's store through a copied SQLite handle, or run a second
    # sampler: every tracker is inert there (its methods check the fork generation). Nor may it
    # keep the parent's SIGTERM handler: a Pool worker blocked on a lock then outlived
    # terminate() (the Python handler runs only between bytecodes; the default action kills).
    global _FINISH
    FORK_GENERATION[0] += 1
    _ACTIVE.clear()
    _FINISHING.clear()  # the parent's stopping threads are not this process's
    _FINISH = threading.Condition()  # nor a lock one of them may have held at the fork
    _restore_sigterm()
    _unblock()  # a SIGTERM that came since the fork is delivered now, to the right handler


#: Stops finishing now, by thread (ident -> nesting): a store's last commit and its emissions.csv
#: row. A SIGTERM waits for those of other threads (the one it interrupted cannot go on while it
#: waits), so a run whose stop had begun when it came ends stopped or completed with its row,
#: never cut off between its sampler's end and its status (the soak harness saw one read
#: incomplete: its thread was inside ``stop()`` when the handler stopped the rest and died).
_FINISH = threading.Condition()
_FINISHING: dict[int, int] = {}
#: The longest a SIGTERM waits for stops other threads had begun (a grace period is short).
ROWS_WAIT_S = 5.0


class finishing:
    """``with finishing():`` around a stop's writes (see :data:`_FINISHING`); nests."""

    def __enter__(self) -> None:
        ident = threading.get_ident()
        with _FINISH:
            _FINISHING[ident] = _FINISHING.get(ident, 0) + 1

    def __exit__(self, *exc: Any) -> None:
        ident = threading.get_ident()
        with _FINISH:
            left = _FINISHING.get(ident, 1) - 1
            if left > 0:
                _FINISHING[ident] = left
            else:
                _FINISHING.pop(ident, None)
            _FINISH.notify_all()


def _wait_finishing(timeout_s: float) -> None:
    me = threading.get_ident()
    with _FINISH:
        _FINISH.wait_for(lambda: all(ident == me for ident in _FINISHING), timeout_s)


#: Threads starting a tracker now (ident -> starts): a SIGTERM waits for those on other threads,
#: so a tracker half-started when it came is stopped too, never left running.
_STARTS: dict[int, int] = {}
_STARTS_DONE = threading.Condition()
#: A SIGTERM that came while the main thread itself was starting a tracker: handled when that
#: start ends (the handler cannot wait for the code it interrupted).
_TERM_PENDING: list[tuple[int, Any]] = []
#: The longest a SIGTERM waits for starts on other threads.
STARTS_WAIT_S = 3.0


class starting:
    """``with starting():`` around a tracker's start: installs the hooks first (a SIGTERM from
    then on is caught), and lets a SIGTERM wait for the start to end (see :data:`_STARTS`)."""

    def __enter__(self) -> None:
        _install_hooks()
        ident = threading.get_ident()
        with _STARTS_DONE:
            _STARTS[ident] = _STARTS.get(ident, 0) + 1

    def __exit__(self, *exc: Any) -> None:
        ident = threading.get_ident()
        with _STARTS_DONE:
            _STARTS[ident] -= 1
            if not _STARTS[ident]:
                del _STARTS[ident]
            _STARTS_DONE.notify_all()
        if not _ACTIVE:  # the start failed or was refused: no hook for a run that is not
            _restore_sigterm()
        if _TERM_PENDING and threading.current_thread() is threading.main_thread() \
                and threading.get_ident() not in _STARTS:
            signum, frame = _TERM_PENDING.pop()
            _TERM_PENDING.clear()
            _on_sigterm(signum, frame)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    main = threading.get_ident()
    with _STARTS_DONE:
        if main in _STARTS:  # interrupted the main thread's own start: finish it first
            _TERM_PENDING.append((signum, frame))
            return
        _STARTS_DONE.wait_for(lambda: not _STARTS, STARTS_WAIT_S)
    for tracker in list(_ACTIVE):
        tracker._stop("stopped", read_totals=False)
    _wait_finishing(ROWS_WAIT_S)  # stops other threads had begun: not cut off mid-write
    prev = _PREV_SIGTERM
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_IGN:
        return
    else:  # default action: die of SIGTERM, so the exit status says so
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _stop_all_at_exit() -> None:
    last = getattr(sys, "last_value", None)
    uncaught = last is not None and last is not _LAST_AT_START[0]
    failed = uncaught or sys.exc_info()[0] is not None
    for tracker in list(_ACTIVE):
        engine = getattr(tracker, "engine", None)
        if engine is not None:
            try:
                why = (f"the process ended with an uncaught {type(last).__name__}" if uncaught
                       else "stopped at the interpreter's exit without stop(): an exit code set "
                            "by sys.exit() is not visible here (use `with Tracker()`, "
                            "@greentrack.track or greentrack run to record it)")
                engine.event("warning" if failed else "info", "process-exit", why)
            except Exception:  # noqa: BLE001 - the stop below matters more
                pass
        tracker._stop("failed" if failed else "completed", read_totals=False)


def sigterm_caught() -> bool:
    """Whether a SIGTERM now stops the running trackers (greentrack's handler is in place: only
    a tracker started on the main thread can put it there, Python's rule for signal handlers)."""
    return _HOOKS["sigterm"]


def install(tracker: Any) -> None:
    """Count ``tracker`` among the running ones (the hooks are in place: :class:`starting`)."""
    _install_hooks()
    _ACTIVE.add(tracker)


def _install_hooks() -> None:
    """The fork and exit hooks once per process; the SIGTERM handler while none is in place,
    from the main thread (Python's rule)."""
    global _PREV_SIGTERM
    if not _HOOKS["fork"]:
        os.register_at_fork(before=_before_fork, after_in_parent=_unblock,
                            after_in_child=_after_fork_in_child)
        atexit.register(_stop_all_at_exit)
        _HOOKS["fork"] = True
        _LAST_AT_START[0] = getattr(sys, "last_value", None)
    if not _HOOKS["sigterm"] and threading.current_thread() is threading.main_thread():
        try:
            _PREV_SIGTERM = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _on_sigterm)
            _HOOKS["sigterm"] = True
        except (ValueError, OSError):
            pass
