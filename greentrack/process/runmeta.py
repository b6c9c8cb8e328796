"""What a store records of the process that wrote it: identity, settings, versions, job and
machine. The reports read it back (:mod:`greentrack.reports.run_data`); the reader checks each
field's type and range before use (``store/reader.py``)."""

from __future__ import annotations

import platform
import sys
import time
from typing import Any

from greentrack import __version__
from greentrack.common.config import Config, launcher_int
from greentrack.common.jobinfo import job_metadata
from greentrack.store import host_identity


def store_meta(run_id: str, config: Config, pid: int, rank: int, notes: list[Any],
               started_unix: float | None = None) -> dict[str, Any]:
    """The meta of a store opened now by process ``pid`` of ``rank``; ``started_unix``: the wall
    time of the engine's origin (every reading's time is relative to it)."""
    host, boot_id = host_identity()
    return {
        "run_id": run_id, "host": host, "boot_id": boot_id, "pid": pid,
        "pid_create_time": _create_time(pid), "rank": rank,
        "local_rank": launcher_int("LOCAL_RANK", 0), "world_size": launcher_int("WORLD_SIZE", 1),
        "started_unix": time.time() if started_unix is None else started_unix,
        "status": "running", "mode": config.mode,
        "settings": config.as_dict(), "argv": sys.argv[:8],
        "versions": {"greentrack": __version__, "python": platform.python_version(),
                     "platform": platform.platform()},
        "notes": [n.__dict__ for n in notes], "labels": dict(config.labels),
        "job": job_metadata(), "machine": _machine(),
    }


def _machine() -> dict[str, Any]:
    """The host's logical CPUs and installed memory (GiB, as codecarbon's ``ram_total_size``),
    recorded once per store for the reports; empty where psutil cannot tell."""
    try:
        import psutil
        return {"cpu_count": psutil.cpu_count(), "ram_total_gb": psutil.virtual_memory().total / 2**30}
    except Exception:  # noqa: BLE001 - metadata only
        return {}


def _create_time(pid: int) -> float | None:
    """When the process began (with the pid, it tells a reused pid apart)."""
    try:
        import psutil
        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - metadata only
        return None


__all__ = ["store_meta"]
