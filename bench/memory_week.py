"""Does greentrack's memory stay flat over a week of training? Goal: RSS flat after warm-up.

A week cannot be waited for, so it is replayed: the real engine, samplers and store
(:class:`bench._common.VirtualRun`) run on a virtual clock, tick by tick as the sampler thread would,
fed a week of samples at the store's default resolution (one poll per 1 s bucket), with a training
step submitted every 2 s (302,400 steps) and a commit per virtual second (the default flush
interval is 0.5 s; a commit empties the write queue, so how often it runs does not change what is
held). Channels: one fake H100 through the real NVML sampler, and the real RAPL sampler on a fake
powercap tree (package and DRAM). A second, shorter part replays one hour at the
real default cadence (50 ms fast polls, 200 ms counter reads) to show the per-channel point
buffers stay bounded there too.

Printed every 12 virtual hours: RSS, Python objects alive (``gc``), points held in the channel
timelines, steps waiting for attribution, writes queued for the next commit, and the store's size
on disk (which grows, by design: that is the record).

    python bench/memory_week.py                 # about 2-3 minutes on 2 cores; records RESULTS.md
    python bench/memory_week.py --days 1 --no-record
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import VirtualRun, md_table, record, rss_mb, section


def _state(vr: VirtualRun) -> dict[str, float]:
    eng = vr.engine
    store = sum(p.stat().st_size for p in vr.run_dir.glob("*.gtdb*"))
    return {"rss_mb": rss_mb(), "objects": len(gc.get_objects()),
            "points": sum(len(st.timeline.t) for st in eng.states),
            "waiting": len(eng._waiting) + len(eng.steps),
            "queued": len(vr.writer._pending), "store_mb": store / 2**20}


def _hours(t_s: float) -> str:
    h, m = divmod(round(t_s / 60), 60)
    return f"{h} h" if not m else f"{h} h {m:02d} min"


def replay(days: float, poll_s: float, every_h: float, gpus: int) -> tuple[list[list[str]], dict]:
    work = Path(tempfile.mkdtemp(prefix="gt-memweek-"))
    try:
        vr = VirtualRun(work, gpus, poll_s=poll_s, step_s=2.0)
        rows, states = [], []
        t0 = time.perf_counter()
        n = max(1, round(days * 24 / every_h))
        for i in range(n + 1):
            if i:
                vr.advance(every_h * 3600.0)
            s = _state(vr)
            states.append(s)
            rows.append([_hours(vr.elapsed_s), f"{s['rss_mb']:.1f}", f"{s['objects']:,}",
                         f"{s['points']:,}", f"{s['waiting']:,}",
                         f"{s['queued']:,}", f"{s['store_mb']:.1f}",
                         f"{time.perf_counter() - t0:.0f}"])
            print(" | ".join(rows[-1]), flush=True)
        summary = {"polls": vr.engine.polls, "steps": vr.engine.steps_done,
                   "errors": vr.engine.errors, "states": states,
                   "wall_s": time.perf_counter() - t0}
        path = vr.close()
        summary["store_mb"] = path.stat().st_size / 2**20
        return rows, summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--every-h", type=float, default=12.0, help="print every N virtual hours")
    ap.add_argument("--cadence-hours", type=float, default=1.0,
                    help="length of the second part, at the real 50 ms cadence (0: skip)")
    ap.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = ap.parse_args()

    headers = ["virtual time", "RSS MB", "Python objects", "timeline points",
               "steps waiting", "writes queued", "store on disk MB (db + WAL)", "wall s"]
    print(f"Part 1: {args.days:g} days, one poll per 1 s bucket, {args.gpus} GPU(s) + RAPL package "
          f"and DRAM, a step every 2 s\n" + " | ".join(headers))
    week_rows, week = replay(args.days, 1.0, args.every_h, args.gpus)
    parts = [week_rows]
    cadence = None
    if args.cadence_hours > 0:
        print(f"\nPart 2: {args.cadence_hours:g} h at the default cadence (50 ms / 200 ms)")
        every = max(args.cadence_hours / 4, 0.05)
        cadence_rows, cadence = replay(args.cadence_hours / 24, 0.05, every, args.gpus)
        parts.append(cadence_rows)

    st = week["states"]
    # Baseline: after day 1 (the live-view buffer of 10,000 steps is full after 5.6 h).
    base_i = next((i for i, r in enumerate(week_rows) if r[0] == "24 h"), len(st) // 2)
    base = st[base_i]
    growth = st[-1]["rss_mb"] - base["rss_mb"]
    obj_growth = st[-1]["objects"] - base["objects"]
    verdict = (f"RSS at {week_rows[base_i][0]}: {base['rss_mb']:.1f} MB; at the end "
               f"({week_rows[-1][0]}): {st[-1]['rss_mb']:.1f} MB ({growth:+.1f} MB); Python objects "
               f"{obj_growth:+,} over the same span. "
               f"{week['polls']:,} polls, {week['steps']:,} steps attributed, {week['errors']} "
               f"internal errors; replay took {week['wall_s']:.0f} s; final store "
               f"{week['store_mb']:.1f} MB.")
    print("\n" + verdict)
    if args.no_record:
        return
    body = (
        f"The real engine, NVML and RAPL samplers and SQLite store on a virtual clock "
        f"(`bench/_common.py: VirtualRun`), fed {args.days:g} days at one poll per 1 s bucket "
        f"(the store's default resolution), {args.gpus} fake H100 + RAPL package and DRAM "
        f"(fake powercap tree), a step every 2 s, a commit per virtual second. "
        f"\"store MB\" grows by design (it is the record, on disk, not in memory).\n\n"
        + md_table(headers, week_rows) + f"\n\n{verdict}\n")
    if cadence is not None:
        body += (f"\nAt the real default cadence (50 ms polls, 200 ms counter reads) for "
                 f"{args.cadence_hours:g} h: the per-channel timelines stay bounded.\n\n"
                 + md_table(headers, parts[1]) + "\n")
    record("memory_week", section("memory_week", "Memory over a (virtual) week: memory_week.py",
                                  body))


if __name__ == "__main__":
    main()
