"""Start a job's rank processes from one that imported the framework first (not a test itself).

    python tests/rank_zygote.py < SPEC_JSON

Each rank of tests/test_multinode.py is a real process running a script as ``python SCRIPT ARGS``
would, but importing torch (2 CPU-s) or Lightning (5.5 CPU-s) in each of 4 ranks was most of
the multi-node tests' cost. This process imports the modules in ``preload`` once, then forks
every rank (all at once: they meet in ``torch.distributed``'s rendezvous); each child takes its
own environment, working directory, ``sys.argv``, ``sys.path[0]`` and output files, runs the
script as ``__main__`` and leaves through the interpreter's own exit (atexit handlers, thread
shutdown, flushed output), as the script's process would. Forking after ``import torch`` is what
DataLoader workers and Lightning's fork strategies do every day.

SPEC_JSON: ``{"preload": [module, ...], "ranks": [{"argv": [script, arg, ...], "cwd": dir,
"env": {...}, "out": path, "err": path}, ...]}``. Prints each rank's exit code, as a JSON list,
when every rank has ended (a signal that ended one reads as minus its number).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import tempfile
from typing import Any


def _become(rank: dict[str, Any]) -> None:
    """In the forked child: turn into ``python SCRIPT ARGS`` and run it; never returns (the
    script's end or its SystemExit unwinds to the interpreter's exit)."""
    for fd, path in ((1, rank["out"]), (2, rank["err"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.chdir(rank["cwd"])
    os.environ.clear()
    os.environ.update(rank["env"])
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again: the rank's own, not ours
    script = os.path.abspath(rank["argv"][0])
    sys.argv = list(rank["argv"])
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")
    raise SystemExit(0)


def main() -> None:
    spec = json.load(sys.stdin)
    for name in spec["preload"]:
        importlib.import_module(name)
    sys.stdout.flush()
    sys.stderr.flush()
    pids = []
    for rank in spec["ranks"]:
        pid = os.fork()
        if pid == 0:
            _become(rank)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    print(json.dumps(codes), flush=True)


if __name__ == "__main__":
    main()
