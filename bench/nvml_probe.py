"""The two NVML facts greentrack's GPU numbers rest on, checked on the GPU at hand. Run it first.

1. **Does the energy counter refresh on the power sensor's tick?** greentrack dates both readings
   at the sensor's ~100 ms refresh tick (learned from when the instant-power value changes). If the
   counter refreshes at another phase, totals stay exact but steps of 120-400 ms degrade from
   ~2.8% to ~9% (``bench/sampling_defaults.py``). The probe reads the instant-power field and the
   counter back to back for a few seconds while the GPU works in uneven bursts, dates every change
   of each between the two reads that bracket it, and reports the counter's refresh phase relative
   to the sensor's (wrapped to +-half a period), with the refresh periods it saw.
2. **Does a counter read cost CPU, or only wait?** The sampler measures its slow reads' CPU and
   stretches its cadence if they cost more than 0.5% of a core (engine.SLOW_READ_CPU_BUDGET); this
   says which case the hardware is: wall and thread-CPU time per read, median and p99.

    python bench/nvml_probe.py                 # GPU 0; ~10 s; records bench/RESULTS.md
    python bench/nvml_probe.py --seconds 20 --no-record

``tests/test_nvml_probe.py`` runs the same analysis against the fake NVML with known phases.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table, median, quantile, record, section

FIELD_POWER_INSTANT = 186


@dataclass
class Changes:
    """Times (midpoints of the bracketing reads) at which a reading changed, and the widths of
    the brackets (how well each time is known)."""

    at: list[float]
    width: list[float]


#: A median counter read using this much CPU spins (one that waits in the driver uses microseconds).
SPIN_CPU_MS = 1.0


def _changes(reads: list[tuple[float, float, int]]) -> Changes:
    """``reads``: (start, end, value) in time order. A change between two reads happened after
    the earlier read started and before the later one ended."""
    at, width = [], []
    for (s0, e0, v0), (s1, e1, v1) in zip(reads, reads[1:]):
        if v1 != v0:
            at.append(((s0 + e0) / 2.0 + (s1 + e1) / 2.0) / 2.0)
            width.append(e1 - s0)
    return Changes(at, width)


def _period(ch: Changes) -> float | None:
    gaps = [b - a for a, b in zip(ch.at, ch.at[1:]) if b > a]
    return median(gaps) if gaps else None


def phase_offset(power: Changes, counter: Changes, period: float) -> list[float]:
    """For each counter refresh, its distance from the nearest power refresh, wrapped to
    [-period/2, period/2): 0 when both refresh on the same tick."""
    out = []
    j = 0
    for c in counter.at:
        while j + 1 < len(power.at) and power.at[j + 1] <= c:
            j += 1
        near = [p for p in power.at[max(0, j - 1):j + 2]]
        if not near:
            continue
        d = min((c - p for p in near), key=abs)
        out.append((d + period / 2.0) % period - period / 2.0)
    return out


def sample(nv: ModuleType, handle: Any, seconds: float,
           clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Read the instant-power field and the energy counter back to back for ``seconds``."""
    power: list[tuple[float, float, int]] = []
    counter: list[tuple[float, float, int]] = []
    cost_wall: list[float] = []
    cost_cpu: list[float] = []
    field_wall: list[float] = []
    end = clock() + seconds
    while clock() < end:
        s = clock()
        v = nv.nvmlDeviceGetFieldValues(handle, [FIELD_POWER_INSTANT])[0]
        e = clock()
        field_wall.append(e - s)
        if v.nvmlReturn == nv.NVML_SUCCESS:
            power.append((s, e, int(v.value.uiVal)))
        s, c = clock(), time.thread_time()
        mj = int(nv.nvmlDeviceGetTotalEnergyConsumption(handle))
        cost_cpu.append(time.thread_time() - c)
        e = clock()
        cost_wall.append(e - s)
        counter.append((s, e, mj))
    p_ch, c_ch = _changes(power), _changes(counter)
    period = _period(p_ch) or 0.1
    offsets = phase_offset(p_ch, c_ch, period)
    return {"power": p_ch, "counter": c_ch, "power_period_s": _period(p_ch),
            "counter_period_s": _period(c_ch), "offsets_s": offsets,
            "counter_wall_s": cost_wall, "counter_cpu_s": cost_cpu, "field_wall_s": field_wall,
            "reads": len(counter), "seconds": seconds}


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    offs = r["offsets_s"]
    out: dict[str, Any] = {
        "power_period_ms": None if r["power_period_s"] is None else r["power_period_s"] * 1e3,
        "counter_period_ms": None if r["counter_period_s"] is None else r["counter_period_s"] * 1e3,
        "power_changes": len(r["power"].at), "counter_changes": len(r["counter"].at),
        "bracket_ms": median(r["counter"].width) * 1e3 if r["counter"].width else None,
        "offset_ms": median(offs) * 1e3 if offs else None,
        "offset_iqr_ms": ((quantile(offs, 0.25) * 1e3, quantile(offs, 0.75) * 1e3) if offs else None),
        "counter_wall_ms": (median(r["counter_wall_s"]) * 1e3, quantile(r["counter_wall_s"], 0.99) * 1e3),
        "counter_cpu_ms": (median(r["counter_cpu_s"]) * 1e3, quantile(r["counter_cpu_s"], 0.99) * 1e3),
        "field_wall_us": median(r["field_wall_s"]) * 1e6,
    }
    off = out["offset_ms"]
    out["same_tick"] = off is not None and abs(off) <= max(5.0, (out["bracket_ms"] or 0.0))
    # A read spins when its CPU time is most of its wall time, judged on the read that waited
    # least for a core: on a loaded host a spinning read's wall includes time it was preempted (a
    # 3 ms spin read measured 3.0 ms CPU against a median wall over 6 ms beside 4 busy processes,
    # and every read over 6 ms beside 4 busy loops and a test suite), while a read that waits in
    # the driver uses next to no CPU however long it takes.
    out["counter_wall_min_ms"] = min(r["counter_wall_s"]) * 1e3
    best = max((c / w for c, w in zip(r["counter_cpu_s"], r["counter_wall_s"]) if w > 0),
               default=0.0)
    out["counter_cpu_share_max"] = best
    # ... and by its CPU alone: a read that waits uses microseconds of CPU however long it takes,
    # one that spins milliseconds (beside 4 busy loops and the suite even the read that waited
    # least had a 3.0 ms spin at under half its wall)
    out["counter_read_spins"] = best > 0.5 or out["counter_cpu_ms"][0] >= SPIN_CPU_MS
    return out


def _load(stop: threading.Event) -> str:
    """Uneven GPU bursts (37 ms on, 23 ms off) so that power changes at every refresh."""
    try:
        import torch
        if not torch.cuda.is_available():
            return "no load (no CUDA in torch)"
        a = torch.randn(4096, 4096, device="cuda")
        while not stop.is_set():
            t = time.perf_counter()
            while time.perf_counter() - t < 0.037:
                a = (a @ a).clamp_(-1, 1)
                torch.cuda.synchronize()
            time.sleep(0.023)
        return "4096x4096 matmuls, 37 ms on / 23 ms off"
    except Exception as e:  # noqa: BLE001 - the probe still runs on an idle GPU
        return f"no load ({type(e).__name__}: {e})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--gpu", type=int, default=0, help="NVML index")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    try:
        import pynvml as nv
        nv.nvmlInit()
        handle = nv.nvmlDeviceGetHandleByIndex(args.gpu)
        name = nv.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:  # noqa: BLE001 - no GPU here: say so, record nothing
        print(f"skipped: no NVIDIA GPU with NVML here ({e})")
        return 0
    stop = threading.Event()
    load_desc: list[str] = []
    loader = threading.Thread(target=lambda: load_desc.append(_load(stop)), daemon=True)
    loader.start()
    time.sleep(1.0)  # let the load settle
    r = sample(nv, handle, args.seconds)
    stop.set()
    loader.join(5.0)
    s = summarize(r)
    rows = [
        ["instant-power refresh period", f"{s['power_period_ms']:.1f} ms" if s["power_period_ms"] else "no change seen",
         f"{s['power_changes']} changes"],
        ["energy-counter refresh period", f"{s['counter_period_ms']:.1f} ms" if s["counter_period_ms"] else "no change seen",
         f"{s['counter_changes']} changes"],
        ["counter refresh - sensor refresh (wrapped)",
         "n/a" if s["offset_ms"] is None else f"{s['offset_ms']:+.1f} ms (IQR {s['offset_iqr_ms'][0]:+.1f} .. "
         f"{s['offset_iqr_ms'][1]:+.1f})",
         f"each refresh dated to +-{(s['bracket_ms'] or 0) / 2:.1f} ms; "
         + ("SAME tick: greentrack's dating holds" if s["same_tick"] else
            "DIFFERENT phase: expect ~9% on 120-400 ms steps (totals exact); see docs/methodology.md")],
        ["energy-counter read, wall", f"{s['counter_wall_ms'][0]:.2f} ms median, {s['counter_wall_ms'][1]:.2f} ms p99",
         f"{r['reads']} reads"],
        ["energy-counter read, thread CPU", f"{s['counter_cpu_ms'][0]:.3f} ms median, {s['counter_cpu_ms'][1]:.3f} ms p99",
         "SPINS: the slow-read budget will stretch the cadence with many GPUs" if s["counter_read_spins"]
         else "waits: counter reads cost little CPU"],
        ["instant-power field read, wall", f"{s['field_wall_us']:.1f} us median", ""],
    ]
    table = md_table(["what", "measured", "meaning"], rows)
    print(f"GPU {args.gpu}: {name}; load: {load_desc[0] if load_desc else 'still starting'}\n\n{table}")
    if not args.no_record:
        body = (f"GPU {args.gpu} ({name}), {args.seconds:g} s of back-to-back reads under load "
                f"({load_desc[0] if load_desc else 'unknown'}).\n\n{table}\n")
        record("nvml_probe", section("nvml_probe", "NVML refresh phase and read cost: nvml_probe.py",
                                     body, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
