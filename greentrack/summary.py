"""Totals of a run directory, for ``greentrack summary`` and :func:`greentrack.summarize`: a thin
layer over the read model :class:`greentrack.run.Run`, which merges ranks and resumed segments (its
docstring gives the rules)."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any

from greentrack._text import printable
from greentrack.jobinfo import describe
from greentrack.run import RECORD_WARNINGS, Run
from greentrack.store.reader import STALE_AFTER_S, store_status

__all__ = ["RECORD_WARNINGS", "STALE_AFTER_S", "format_summary", "store_status", "summarize"]


def summarize(run_dir: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """The run's totals as a JSON-ready dict (the ``greentrack summary --json`` document).

    Args:
        run_dir: a run directory, or several directories of one run (node-local directories:
            each store counted once, see :meth:`greentrack.run.Run.open`).

    Raises:
        ConfigError: ``run_dir`` is missing, holds no run, or none of its stores can be read
        (one that cannot is a warning when another can); directories of different runs.
    """
    with Run.open(run_dir) as run:
        return run.summary()


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable summary: totals, then how each figure was obtained. Every value read from
    the run is shown printable (a run id or a device name cannot move the cursor or add a line)."""
    p = printable
    e = {k: ("none" if v is None else f"{v:.1f} J") for k, v in s["energy_j"].items()}
    lines = [
        f"greentrack run {p(s['run_id'])}  status={p(s['status'])}  mode={p(s['mode'])}",
        *([f"  job        {p(describe(s['job']), 300)}"] if describe(s.get("job") or {}) else []),
        *([f"  hosts      {len(s['hosts'])}: {p(', '.join(s['hosts']), 300)}"]
          if len(s.get("hosts") or []) > 1 else []),
        f"  duration   {s['duration_s']:.1f} s   steps {s['steps']}   GPU-seconds {s['gpu_seconds']:.1f}",
        f"  energy     {e['total']} ({s['energy_kwh'] * 1000:.4f} Wh)   "
        f"gpu {e['gpu']}   cpu {e['cpu']}   dram {e['dram']}",
        "  sources:",
    ]
    hosts = len(s.get("hosts") or []) > 1
    for src in s["sources"]:
        tag = "measured" if src["measured"] else "ESTIMATED"
        where = f"{p(src['host'], 40)}:" if hosts else ""
        lines.append(f"    {p(src['kind']):<4} {where}{p(src['device']):<13} {tag:<9} {p(src['method'])}  "
                     f"[{p(str(src['uncertainty'] or '').split(':')[0])}]")
    if s["gaps"]:
        lines.append(f"  gaps: {s['gaps']} (see the run's events)")
    lines.extend(f"  warning: {p(w)}" for w in s["warnings"])
    return "\n".join(lines)
