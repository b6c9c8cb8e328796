"""The first steps after an idle gap: what the idle cadence costs their accuracy, and what the
wake at a step's start gives back. A replay of the H100's behaviour (the fake NVML, as in
sampling_defaults.py) through the real NVML sampler on a virtual clock.

With no step for engine.IDLE_AFTER_S the sampler reads the counters every
engine.IDLE_COUNTER_INTERVAL_S (1 s) instead of the configured 0.2 s (8 GPUs: 0.8 -> 0.4% of a
core, bench/sampler_cost.py). A step that begins then wakes the sampler (Engine.wake_from_idle):
counters read at its start, then the fast cadence. Traces: 10-11 s at 80 W idle, then 5 s of
steps (120-400 ms, 300-700 W), 40 seeds (refresh phase and poll dither drawn per seed). Each
cell: mean and 95th percentile of the per-step relative error against the true energy.

    python bench/idle_steps.py             # prints the table, records it in bench/RESULTS.md
    python bench/idle_steps.py --no-record
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table, record, section  # noqa: E402

from greentrack.engine.channelstate import Timeline  # noqa: E402
from greentrack.engine.engine import FAST_HOLD_S, IDLE_AFTER_S  # noqa: E402
from greentrack.samplers._nvml import NvmlGpu  # noqa: E402
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace, VirtualClock  # noqa: E402

FAST_S, COUNTER_S = 0.05, 0.2  # the defaults (sampling_defaults.py chose them)
SEEDS = 40


def trace(seed: int) -> tuple[PowerTrace, list[tuple[float, float]]]:
    rng = random.Random(seed)
    idle = 10.0 + rng.random()
    segs, steps, t = [(idle, 80.0)], [], idle
    while t < idle + 5.0:
        d = rng.choice([0.12, 0.2, 0.4])
        w = rng.choice([650.0, 700.0]) if d > 0.15 else rng.choice([300.0, 450.0])
        segs.append((d, w))
        steps.append((t, t + d))
        t += d
    segs.append((2.0, 80.0))
    return PowerTrace(segs, idle_w=80.0, t0=0.0), steps


def replay(tr: PowerTrace, steps: list[tuple[float, float]], idle_s: float, wake: bool,
           seed: int) -> list[float]:
    """Poll as the engine does around the first step after the gap; the first three steps'
    relative errors."""
    rng = random.Random(seed)
    clock = VirtualClock(0.0)
    gpu = FakeGpu(trace=tr, counter_phase_s=rng.random() * 0.1)
    mod = FakeNvml([gpu], clock=clock).module()
    mod.nvmlInit()
    ch = NvmlGpu(mod, gpu, 0, ordinal=0, clock=clock)
    tl, next_slow, first = Timeline(), 0.0, steps[0][0]
    while clock.t <= steps[-1][1] + 1.0:
        if clock.t > first:  # the step seen: the fast cadence
            fast, slow_p = FAST_S, COUNTER_S
        elif clock.t < IDLE_AFTER_S:  # the start: fast, then the configured slow cadence
            fast = FAST_S if clock.t < FAST_HOLD_S else COUNTER_S
            slow_p = COUNTER_S
        else:
            fast = slow_p = idle_s
        slow = clock.t >= next_slow - 1e-9
        if slow:
            next_slow = clock.t + slow_p
        tl.extend(ch.poll(clock.t, slow))
        regular = round(clock.t + fast * (0.95 + 0.1 * rng.random()), 9)
        if wake and clock.t < first < regular:
            regular, next_slow = first + 0.0002, 0.0  # woken at the step's start: counters read
        clock.wakes(ch, regular, tl.extend)
        clock.t = max(clock.t, regular)
    return [abs((tl.at(b) - tl.at(a)) - (tr.energy(b) - tr.energy(a))) / (tr.energy(b) - tr.energy(a))
            for a, b in steps[:3]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    rows = []
    for label, idle_s, wake in (("configured 0.2 s throughout (before)", COUNTER_S, False),
                                ("idle 1 s, no wake", 1.0, False),
                                ("idle 1 s, woken at the step's start (now)", 1.0, True)):
        firsts, rest = [], []
        for seed in range(SEEDS):
            tr, steps = trace(seed)
            e = replay(tr, steps, idle_s, wake, seed)
            firsts.append(e[0])
            rest += e[1:]
        firsts.sort()
        rest.sort()
        rows.append([label, f"{sum(firsts) / len(firsts):.1%}",
                     f"{firsts[int(0.95 * (len(firsts) - 1))]:.1%}",
                     f"{sum(rest) / len(rest):.1%}"])
    table = md_table(["cadence while idle", "first step: mean", "first step: 95th pct",
                      "steps 2-3: mean"], rows)
    print(table)
    if not args.no_record:
        record("idle_steps", section("idle_steps", "The first steps after 10 s idle: idle_steps.py",
                                     __doc__.split("\n\n")[1] + "\n\n" + table))


if __name__ == "__main__":
    main()
