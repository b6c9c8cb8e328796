"""How big does the run store get, and how fast does it take writes?

Part 1, size: the real engine, samplers and store on a virtual clock (``VirtualRun``) record
``--hours`` (default 24) of an 8-GPU node (8 fake H100s through the NVML sampler, RAPL package and
DRAM through the powercap sampler: 10 channels), a training step every 2 s, one poll and one commit
per virtual second (the bucket width). The store keeps one 1 s bucket per channel, so its size
grows linearly with channels x time; the per-table split comes from SQLite's ``dbstat``.

Part 2, writes: how long one commit of the sampler thread takes (the channel buckets, channel
totals, the heartbeat), measured on each commit of part 1 (ticks of 1 s, so one commit per virtual
second; a live run commits every 0.5 s); and the most rows per second ``StoreWriter`` sustains when
rows are queued in bulk (a bound, far above what a run produces).

    python bench/store_scale.py               # about 1-2 minutes on 2 cores; records RESULTS.md
    python bench/store_scale.py --hours 2 --no-record
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import VirtualRun, md_table, quantile, record, section

GPUS = 8


def record_run(hours: float, gpus: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gt-store-scale-"))
    try:
        vr = VirtualRun(work, gpus, poll_s=1.0, step_s=2.0)
        flush_s: list[float] = []
        real_flush = vr.engine._flush

        def timed_flush() -> None:
            t = time.perf_counter()
            real_flush()
            flush_s.append(time.perf_counter() - t)

        vr.engine._flush = timed_flush  # type: ignore[method-assign]
        t0 = time.perf_counter()
        vr.advance(hours * 3600.0)
        took = time.perf_counter() - t0
        path = vr.close()
        conn = sqlite3.connect(path)
        tables = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("samples", "steps", "events", "channels")}
        conn.close()
        return {"bytes": path.stat().st_size, "tables": tables, "counts": counts,
                "flush_s": flush_s[1:], "took_s": took, "channels": len(vr.engine.states),
                "steps": vr.engine.steps_done}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bulk_rows_per_s(rows: int = 400_000, batch: int = 20_000) -> float:
    """Most sample rows per second through StoreWriter: queue ``batch`` rows, commit, repeat."""
    from greentrack.store import StoreWriter, prepare_run_dir

    work = Path(tempfile.mkdtemp(prefix="gt-store-bulk-"))
    try:
        prepare_run_dir(work)
        w = StoreWriter(work, 0, {"run_id": "bulk"})
        t0 = time.perf_counter()
        for start in range(0, rows, batch):
            for i in range(start, start + batch):
                w.add_sample(1 + i % 10, float(i // 10), 1.0, 300.0)
            w.flush()
        took = time.perf_counter() - t0
        w.close()
        return rows / took
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    print(f"recording {args.hours:g} h of a {GPUS}-GPU node on a virtual clock ...", flush=True)
    r = record_run(args.hours, GPUS)
    days = args.hours / 24.0
    mb = 2**20
    tables, counts = r["tables"], r["counts"]
    samples_b = tables.get("samples", 0)
    steps_b = tables.get("steps", 0) + tables.get("sqlite_autoindex_steps_1", 0)
    per_channel_day = samples_b / r["channels"] / days
    per_step = steps_b / max(1, counts["steps"])
    week_8gpu = (r["bytes"] / days) * 7
    size_rows = [
        ["whole store", f"{r['bytes'] / mb:.1f} MB",
         f"{GPUS} GPUs + CPU + DRAM = {r['channels']} channels, {args.hours:g} h, "
         + f"{counts['steps']:,} steps"],
        ["samples table (1 s buckets)", f"{samples_b / mb:.1f} MB",
         f"{counts['samples']:,} rows, {samples_b / max(1, counts['samples']):.1f} B/row"],
        ["per GPU-day (one channel, 86,400 buckets)", f"{per_channel_day / mb:.2f} MB",
         "samples only; a GPU adds exactly one channel"],
        ["steps table", f"{steps_b / mb:.1f} MB", f"{per_step:.0f} B/step"],
        ["events + channels + meta", f"{sum(v for k, v in tables.items() if k in ('events', 'channels', 'meta')) / 1024:.0f} kB",
         f"{counts['events']} events"],
        ["7-day 8-GPU run (extrapolated, linear)", f"{week_8gpu / mb:.0f} MB",
         "a step every 2 s; faster steps add the steps table's B/step"],
    ]
    fl = r["flush_s"]
    bulk = bulk_rows_per_s()
    live_commits_per_s = 1.0 / 0.5  # the sampler thread commits every flush_interval_s = 0.5 s
    write_rows = [
        ["one commit of the sampler thread (10 channel buckets, channel totals, heartbeat), median",
         f"{quantile(fl, 0.5) * 1e3:.2f} ms", f"{len(fl):,} commits, one per virtual second"],
        ["same, 99th percentile / max", f"{quantile(fl, 0.99) * 1e3:.2f} / {max(fl) * 1e3:.1f} ms",
         "WAL checkpoints land here"],
        ["sampler-thread time in commits, live run", f"{live_commits_per_s * sum(fl) / len(fl) * 100:.2f}% of wall time",
         "2 commits/s (every 0.5 s) x mean commit time; off the training thread"],
        ["bulk writes through StoreWriter", f"{bulk:,.0f} rows/s",
         "20,000-row commits; a run writes ~20 rows/s for 8 GPUs"],
        ["virtual-clock replay of the whole run", f"{r['took_s']:.0f} s",
         f"{r['took_s'] / (args.hours * 3600) * 86400:.0f} s per day of run"],
    ]
    t1 = md_table(["what", "size", "detail"], size_rows)
    t2 = md_table(["what", "result", "detail"], write_rows)
    print(f"\n{t1}\n\n{t2}")
    if args.no_record:
        return
    body = (f"The real engine, NVML and RAPL samplers and SQLite store (WAL, synchronous=NORMAL) on "
            f"a virtual clock (`bench/_common.py: VirtualRun`): {args.hours:g} h of {GPUS} fake "
            "H100s + RAPL package and DRAM (fake powercap), a step every 2 s, one poll and one "
            "commit per virtual second. Sizes after the final checkpoint, split by SQLite "
            "`dbstat`. Commit times are wall times of the engine's `_flush` on this host's disk."
            "\n\n"
            f"{t1}\n\n{t2}\n")
    record("store_scale", section("store_scale", "Store size and write throughput: store_scale.py",
                                  body))


if __name__ == "__main__":
    main()
