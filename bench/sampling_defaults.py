"""Choose the sampler's default cadences by measurement, on a replay of the H100's behaviour.

The fake NVML (tests/fakes/fake_pynvml.py) reproduces what was measured on
an H100 80GB HBM3, driver 580.159.04, 2026-11-22 (and Yang et al., arXiv 2312.02741):
counter updated every 100 ms, instant power = mean of the last 25 ms of each 100 ms, GetPowerUsage
a 1 s moving average. Traces: the 17 s bursty trace measured there, and a training-like trace of
steps (heavy/light kernels, 120-400 ms). For each (fast interval, counter interval) this prints the
total error against the true energy, and the error of 200 ms / 500 ms windows and of steps.

    python bench/sampling_defaults.py            # prints a table, records it in bench/RESULTS.md
    python bench/sampling_defaults.py --no-record

Each cell: energy-weighted mean absolute error / 95th percentile of per-window error.
"vs truth" is the exact trace energy (what no sensor sees: the instant-power field samples 25 ms of
every 100 ms and the counter refreshes every 100 ms, so 50 ms bursts inside a 200 ms window cannot
be placed); "vs counter at edges" is what a hardware check reading the counter synchronously at the
window edges sees. Error metric per window set: sum(|attributed - true|) / sum(true) over all windows (energy-weighted
mean absolute error), and the 95th percentile of per-window relative error.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import record, section  # noqa: E402

from greentrack.engine.channelstate import Timeline  # noqa: E402
from greentrack.samplers._nvml import NvmlGpu  # noqa: E402
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace, VirtualClock  # noqa: E402


def training_trace(seed: int = 1) -> tuple[PowerTrace, list[tuple[float, float]]]:
    rng = random.Random(seed)
    segs, steps, t = [(1.0, 80.0)], [], 1.0
    while t < 30.0:
        d = rng.choice([0.12, 0.2, 0.4])
        w = rng.choice([650.0, 700.0]) if d > 0.15 else rng.choice([300.0, 450.0])
        segs.append((d, w))
        steps.append((t, t + d))
        t += d
        gap = rng.choice([0.0, 0.0, 0.01, 0.03])  # dataloader stalls
        if gap:
            segs.append((gap, 120.0))
            t += gap
    segs.append((2.0, 80.0))
    return PowerTrace(segs, idle_w=80.0, t0=0.0), steps


def bursty_windows(width: float) -> list[tuple[float, float]]:
    out, t = [], 1.0
    while t + width <= 16.0:
        out.append((t, t + width))
        t += width
    return out


class CounterReference:
    """What a check on real hardware can compare against: the counter read at window edges."""

    def __init__(self, trace: PowerTrace) -> None:
        self.gpu = FakeGpu(trace=trace)
        self.fake = FakeNvml([self.gpu])

    def energy(self, t: float) -> float:
        return self.fake.counter_mj(self.gpu, t) / 1000.0


def replay(trace: PowerTrace, fast: float, counter: float, seconds: float,
           dither: float = 0.05, counter_phase_s: float = 0.0) -> Timeline:
    """Poll as the engine does: fast polls dithered by +-``dither`` of the interval."""
    rng = random.Random(0x9E3779B9)
    clock = VirtualClock(0.0)
    gpu = FakeGpu(trace=trace, counter_phase_s=counter_phase_s)
    mod = FakeNvml([gpu], clock=clock).module()
    mod.nvmlInit()
    ch = NvmlGpu(mod, gpu, 0, ordinal=0, clock=clock)
    tl = Timeline()
    i, next_slow = 0, 0.0
    while clock.t <= seconds:
        slow = clock.t >= next_slow - 1e-9
        if slow:
            next_slow += counter
        tl.extend(ch.poll(clock.t, slow))
        i += 1
        regular = round(clock.t + fast * (1.0 - dither + 2 * dither * rng.random()), 9)
        clock.wakes(ch, regular, tl.extend)  # the extra polls it asks for, as the engine makes
        clock.t = max(clock.t, regular)
    return tl


def errors(tl: Timeline, trace: PowerTrace | CounterReference, windows: list[tuple[float, float]]) -> tuple[float, float]:
    abs_err, total, rel = 0.0, 0.0, []
    for a, b in windows:
        truth = trace.energy(b) - trace.energy(a)
        got = tl.at(b) - tl.at(a)
        abs_err += abs(got - truth)
        total += truth
        rel.append(abs(got - truth) / truth)
    rel.sort()
    return abs_err / total, rel[int(0.95 * (len(rel) - 1))]


def main() -> None:
    bursty = PowerTrace.bursty(t0=0.3)
    train, steps = training_trace()
    rows = []
    for fast in (0.01, 0.05, 0.1):
        for counter in (0.1, 0.2, 0.5, 1.0, 2.0):
            if counter < fast:
                continue
            tl = replay(bursty, fast, counter, 18.0)
            total_err = abs(tl.at(16.0) - tl.at(1.0) - (bursty.energy(16.0) - bursty.energy(1.0))) \
                / (bursty.energy(16.0) - bursty.energy(1.0))
            w200 = errors(tl, bursty, bursty_windows(0.2))
            w200c = errors(tl, CounterReference(bursty), bursty_windows(0.2))
            w500 = errors(tl, bursty, bursty_windows(0.5))
            tl2 = replay(train, fast, counter, 34.0)
            st = errors(tl2, train, steps)
            stc = errors(tl2, CounterReference(train), steps)
            rows.append((fast, counter, total_err, w200, w200c, w500, st, stc))
    head = ("| fast s | counter s | bursty: total | 200 ms windows vs truth | vs counter at edges "
            "| 500 ms windows vs truth | train steps (120-400 ms) vs truth | vs counter at edges |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for f, c, tot, *pairs in rows:
        cells = " | ".join(f"{a * 100:.1f}% / {b * 100:.1f}%" for a, b in pairs)
        lines.append(f"| {f:g} | {c:g} | {tot * 100:.2f}% | {cells} |")
    table = "\n".join(lines)
    # The tick dating assumes the counter refreshes with the power sensor. If it does not:
    phase_lines = ["| counter refresh offset | bursty: total | 500 ms windows | train steps |",
                   "|---|---|---|---|"]
    for phase in (0.0, 0.025, 0.05, 0.075):
        tlb = replay(bursty, 0.05, 0.2, 18.0, counter_phase_s=phase)
        tl2 = replay(train, 0.05, 0.2, 34.0, counter_phase_s=phase)
        tot = abs(tlb.at(16.0) - tlb.at(1.0) - (bursty.energy(16.0) - bursty.energy(1.0))) \
            / (bursty.energy(16.0) - bursty.energy(1.0))
        w5, st = errors(tlb, bursty, bursty_windows(0.5)), errors(tl2, train, steps)
        phase_lines.append(f"| {phase * 1000:g} ms | {tot * 100:.2f}% | {w5[0] * 100:.1f}% / "
                           f"{w5[1] * 100:.1f}% | {st[0] * 100:.1f}% / {st[1] * 100:.1f}% |")
    table += ("\n\nAt the defaults (50 ms / 0.2 s), if the energy counter does not refresh together "
              "with the power sensor (greentrack dates both at the sensor's tick; not yet checked on "
              "an H100):\n\n" + "\n".join(phase_lines))
    print(table)
    if "--no-record" not in sys.argv:
        record("sampling_defaults", section(
            "sampling_defaults", "Sampler cadence (simulated H100 NVML behaviour): sampling_defaults.py",
            table))

if __name__ == "__main__":
    main()
