"""The command line: ``greentrack run``, ``doctor``, ``summary``, ``merge`` (:mod:`.main`) and the
report commands (:mod:`.reports`): parsing and one-line errors; the work is done by the layers below.

:func:`main` is the entry point. It takes SIGINT and SIGTERM before the commands' modules load (a
third of a second of imports), so a Ctrl-C at any moment is one line, never a traceback from the
middle of an import.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

#: SIGINT and SIGTERM that came before ``greentrack run`` could pass them on (see :func:`main`).
EARLY: list[int] = []


def early_signals(argv: Sequence[str] | None) -> dict[int, Any]:
    """From the first line of :func:`main`: a Ctrl-C or SIGTERM while the command line is still
    being read is one line like any other, never a traceback from the middle of an import. For
    ``run`` it is recorded (its start is then cancelled, :func:`greentrack.cli.main.cmd_run`),
    else it interrupts."""
    args = list(sys.argv[1:] if argv is None else argv)
    is_run = next((a for a in args if not a.startswith("-")), None) == "run"

    def on_signal(signum: int, _frame: Any) -> None:
        EARLY.append(signum)
        if not is_run:
            raise KeyboardInterrupt

    try:
        return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        return {}


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point of every subcommand. Output cut short by the reader (``| head -1``) ends
    quietly, as it does for other Unix tools."""
    EARLY.clear()
    previous = early_signals(argv)
    try:
        # the commands load now that the signals are ours (an import statement here would tie
        # this package to its own module in the import graph: importlib says it is on purpose)
        code: int = importlib.import_module("greentrack.cli.main").run_command(argv)
        if sys.stdout is not None:  # None: started with stdout closed (`>&-`): nothing to show
            sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the exit-time flush is silent
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # while the command line was read (see early_signals)
        signum = EARLY[0] if EARLY else signal.SIGINT
        print(f"greentrack: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


__all__ = ["EARLY", "early_signals", "main"]
