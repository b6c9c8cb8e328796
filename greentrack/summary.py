"""Totals of a run directory: every process's store merged (ranks, resumed segments).

Merging rules, each chosen so nothing is counted twice:
* energy: the sum over stores of each channel's total. Host CPU/DRAM channels exist only in one
  process per node (local rank 0), so summing ranks does not double count the host.
* duration: the length of the union of the stores' wall-clock spans (ranks overlap; resumed
  segments add up, the pause between them does not).
* GPU-seconds: per store, its duration x its GPUs, summed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from greentrack._text import printable
from greentrack.errors import ConfigError, RunStoreError
from greentrack.store import VALID_STEP, StoreReader, store_paths

#: Events that say part of the record is missing or doubtful: every summary repeats them.
RECORD_WARNINGS = frozenset({"bad-step-field", "row-rejected", "host-shared", "sampler-hung",
                             "sampler-slow", "steps-open", "internal-error"})
#: A running store whose heartbeat is older than this, and whose process is gone, is incomplete.
STALE_AFTER_S = 10.0


def store_status(meta: dict[str, Any], now: float | None = None) -> str:
    """``running``, ``completed``, ``failed``, ``stopped``, or ``incomplete`` for a store whose
    process died without closing it (SIGKILL, OOM, power loss)."""
    status = str(meta.get("status", "incomplete"))
    if status != "running":
        return status
    now = time.time() if now is None else now
    alive = _process_alive(meta)
    if alive is False:
        return "incomplete"
    heartbeat = meta.get("heartbeat_unix") or meta.get("started_unix") or 0.0
    if alive is None and now - float(heartbeat) > STALE_AFTER_S:
        return "incomplete"
    return "running"


def _process_alive(meta: dict[str, Any]) -> bool | None:
    """True/False when the writer is on this host and we can tell; None otherwise."""
    import socket
    if meta.get("host") != socket.gethostname():
        return None
    try:
        import psutil
        proc = psutil.Process(int(meta["pid"]))
        created = meta.get("pid_create_time")
        if created is not None and abs(proc.create_time() - float(created)) > 1.0:
            return False  # the pid was reused by another process
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (KeyError, TypeError, ValueError):
        return None
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess and friends
        return False


def _merge_status(statuses: list[str]) -> str:
    for s in ("running", "failed", "incomplete", "stopped"):
        if s in statuses:
            return s
    return "completed" if statuses else "incomplete"


def _span(meta: dict[str, Any], channels: list[dict[str, Any]], now: float) -> tuple[float, float]:
    start = float(meta.get("started_unix", now))
    if "duration_s" in meta:
        return start, start + float(meta["duration_s"])
    until = max((c["until_t"] or 0.0 for c in channels), default=0.0)
    if store_status(meta, now) == "running":
        return start, max(start + until, now)
    return start, start + until


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """The run's totals as a JSON-ready dict (the ``greentrack summary --json`` document).

    Raises:
        ConfigError: ``run_dir`` is missing, holds no run, or none of its stores can be read
        (one that cannot is a warning when another can).
    """
    run_dir = Path(run_dir)
    paths = store_paths(run_dir)
    now = time.time()
    energy: dict[str, float | None] = {"gpu": None, "cpu": None, "dram": None}
    sources: list[dict[str, Any]] = []
    statuses, spans, warnings, modes = [], [], [], set()
    gpu_seconds, steps, step_energy, gaps = 0.0, 0, 0.0, 0
    by_phase: dict[str, int] = {}
    run_ids = set()
    for path in paths:
        try:
            store = StoreReader(path)
        except RunStoreError as e:
            warnings.append(str(e))
            continue
        meta, channels = store.meta, store.channels()
        run_ids.add(meta.get("run_id"))
        modes.add(meta.get("mode", "machine"))
        statuses.append(store_status(meta, now))
        a, b = _span(meta, channels, now)
        spans.append((a, b))
        n_gpu = sum(c["kind"] == "gpu" for c in channels)
        gpu_seconds += (b - a) * n_gpu
        for c in channels:
            energy[c["kind"]] = (energy.get(c["kind"]) or 0.0) + float(c["energy_j"] or 0.0)
            sources.append({"kind": c["kind"], "device": c["device"], "name": c["name"],
                            "host": meta.get("host"), "rank": meta.get("rank"),
                            "method": c["method"], "measured": c["measured"],
                            "estimated": not c["measured"], "source": c["source"],
                            "uncertainty": c["uncertainty"], "energy_j": c["energy_j"],
                            "gap_s": c["gap_s"], "status": c["status"]})
        store.invalid_rows("steps")
        for row in store.rows(f"SELECT phase, SUM({store.step_n}) AS n, SUM(COALESCE(gpu_j,0)+"
                              f"COALESCE(cpu_j,0)+COALESCE(dram_j,0)) AS e FROM steps WHERE "
                              f"{VALID_STEP} GROUP BY phase"):
            by_phase[row["phase"]] = by_phase.get(row["phase"], 0) + int(row["n"])
            steps += int(row["n"])
            step_energy += float(row["e"] or 0.0)
        # one gap per interruption: a loss is recorded as gap-start then device-lost
        events = store.events()
        gaps += sum(1 for e in events if e["kind"] == "gap-start")
        warnings.extend(f"{path.name}: {e['message']}" for e in events
                        if e["kind"] in RECORD_WARNINGS)
        warnings.extend(f"{path.name}: damaged {d}" for d in store.damaged)
        store.close()
    if not statuses:  # nothing recorded can be read: an error, never an empty run that exits 0
        raise ConfigError("RUN_DIR", str(run_dir), "none of its stores can be read: "
                          + "; ".join(warnings))
    # A kind with no channel at all is None (not measured, not estimated), never a silent 0 J.
    total_j = sum(v for v in energy.values() if v is not None)
    energy["total"] = total_j
    return {
        "run_id": sorted(str(r) for r in run_ids if r)[0] if run_ids - {None} else None,
        "run_dir": str(run_dir),
        "status": _merge_status(statuses),
        "duration_s": _union_length(spans),
        "energy_j": energy,
        "energy_kwh": total_j / 3.6e6,
        "gpu_seconds": gpu_seconds,
        "steps": steps,
        "steps_by_phase": by_phase,
        "steps_energy_j": step_energy,
        "mode": sorted(modes)[0] if len(modes) == 1 else sorted(modes),
        "stores": len(paths),
        "gaps": gaps,
        "sources": sources,
        "warnings": warnings,
    }


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable summary: totals, then how each figure was obtained. Every value read from
    the run is shown printable (a run id or a device name cannot move the cursor or add a line)."""
    p = printable
    e = {k: ("none" if v is None else f"{v:.1f} J") for k, v in s["energy_j"].items()}
    lines = [
        f"greentrack run {p(s['run_id'])}  status={p(s['status'])}  mode={p(s['mode'])}",
        f"  duration   {s['duration_s']:.1f} s   steps {s['steps']}   GPU-seconds {s['gpu_seconds']:.1f}",
        f"  energy     {e['total']} ({s['energy_kwh'] * 1000:.4f} Wh)   "
        f"gpu {e['gpu']}   cpu {e['cpu']}   dram {e['dram']}",
        "  sources:",
    ]
    for src in s["sources"]:
        tag = "measured" if src["measured"] else "ESTIMATED"
        lines.append(f"    {p(src['kind']):<4} {p(src['device']):<13} {tag:<9} {p(src['method'])}  "
                     f"[{p(str(src['uncertainty'] or '').split(':')[0])}]")
    if s["gaps"]:
        lines.append(f"  gaps: {s['gaps']} (see the run's events)")
    lines.extend(f"  warning: {p(w)}" for w in s["warnings"])
    return "\n".join(lines)
