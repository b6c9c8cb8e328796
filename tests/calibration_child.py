"""A training process for tests/test_calibration.py, run as ``python -m tests.calibration_child
MODE LIMIT_FILE RUN_DIR``: one fake H100 whose power limit lives in LIMIT_FILE (the limit is
driver state: it outlives the process), a Tracker calibrating it, and steps.

MODE ``sigterm``: prints ``changed`` once the limit differs from the original, then steps until
killed. ``exit``: once the limit changed, the script ends without stopping the tracker (the
interpreter's exit must restore it). ``run``: under ``greentrack run``, a Tracker configured by
the environment (the parent's calibration settings) runs 40 steps and stops.
"""

from __future__ import annotations

import sys
import time

from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, LiveTrace

ORIGINAL_MW = 700_000


def main(mode: str, limit_file: str, run_dir: str) -> None:
    gpu = FakeGpu(trace=LiveTrace(idle_w=80.0), limit_file=limit_file)
    sys.modules["pynvml"] = FakeNvml([gpu]).module()  # before greentrack opens NVML
    import greentrack
    fast = {"interval_s": 0.02, "counter_interval_s": 0.1, "flush_interval_s": 0.1}
    if mode == "run":
        with greentrack.Tracker() as tracker:
            for _ in range(40):
                with tracker.step():
                    gpu.work(0.05, 700.0)
        return
    tracker = greentrack.Tracker(run_dir, calibrate_power_limits=[300, 500],
                                 calibration_steps=1000, calibration_warmup_steps=0, **fast)
    tracker.start()
    told = False
    while True:
        with tracker.step():
            gpu.work(0.05, 700.0)
        if gpu.current_limit_mw() != ORIGINAL_MW and not told:
            if mode == "exit":
                return  # no stop(): atexit must restore the limit
            print("changed", flush=True)
            told = True


if __name__ == "__main__":
    main(*sys.argv[1:4])
