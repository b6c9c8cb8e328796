"""CPU cost of the shared-GPU split: one update of a GPU's share, on the fake NVML.

An update runs once a second per GPU, on the sampler thread: the process list, and while other
processes are listed, the per-process utilization, the parent chain of each listed process and
one scan of the host leases. This counts greentrack's own CPU and the fake NVML's Python code; what
real NVML's process calls cost is measured on a GPU by ``bash bench/gpu_checks.sh --quick`` (rows
``proc_*_wall`` and ``share_update_cost`` of its ``gpu_share`` check).

    python bench/gpu_share_cost.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GREENTRACK_LEASE_DIR", tempfile.mkdtemp(prefix="greentrack-bench-"))

from greentrack.samplers._gpushare import GpuShare  # noqa: E402
from greentrack.samplers._nvml import NvmlGpu  # noqa: E402
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, FakeProcess, PowerTrace, VirtualClock  # noqa: E402


def cost_per_update(processes: list[FakeProcess], n: int = 300) -> float:
    """Seconds of CPU per share update."""
    clock = VirtualClock()
    gpu = FakeGpu(trace=PowerTrace([], idle_w=300.0), processes=processes)
    fake = FakeNvml([gpu], clock=clock)
    mod = fake.module()
    mod.nvmlInit()
    ch = GpuShare(NvmlGpu(mod, gpu, 0, ordinal=0, clock=clock), mod, gpu, os.getpid(), clock=clock)
    start = time.thread_time()
    for _ in range(n):
        clock.t += 1.0
        ch._update(clock.t)
    return (time.thread_time() - start) / n


def main() -> None:
    me, other = os.getpid(), os.getppid()  # the parent: a live process outside this one's tree
    for label, procs in [("alone on the GPU", [FakeProcess(me, 60)]),
                         ("shared with one other process", [FakeProcess(me, 60), FakeProcess(other, 20)])]:
        per = cost_per_update(procs)
        print(f"{label}: {per * 1e3:.3f} ms CPU per update (once a second per GPU) = "
              f"{per * 100:.3f}% of a core per GPU")


if __name__ == "__main__":
    main()
