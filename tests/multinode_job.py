"""One rank of a simulated multi-node job, for tests/test_multinode.py (not a test itself).

    python tests/multinode_job.py RUN_DIR --init tcp://127.0.0.1:PORT --steps 40 [--untracked]

The launcher gives each process ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``GREENTRACK_HOSTNAME``/``GREENTRACK_BOOT_ID`` (its node's identity) and a powercap tree; the
node's GPUs are fake NVML devices (``tests/fakes/fake_pynvml.py``), given as
``GT_TEST_GPUS=UUID:WATTS,UUID:WATTS``. Real ``torch.distributed`` (gloo, TCP on 127.0.0.1) and a
real DDP model on CPU; ``track_optimizer`` gathers the job's totals to rank 0, which prints them
as one JSON line. ``--untracked``: this rank trains without a tracker but still takes part in the
gather (what an integration does when tracking could not start on a rank).
``GT_TEST_SCRATCH_GONE=1``: the rank's ``TMPDIR`` is removed after its last step, before the
gather (a job's scratch directory cleaned under it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--init", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--untracked", action="store_true")
    p.add_argument("--step-s", type=float, default=0.05, help="each step waits this long too, "
                   "so the run outlasts its sampling edges (the figures are checked at 5%%)")
    args = p.parse_args()
    gpus = [FakeGpu(uuid=u, trace=PowerTrace([], idle_w=float(w)))
            for u, w in (item.split(":") for item in os.environ["GT_TEST_GPUS"].split(","))]
    sys.modules["pynvml"] = FakeNvml(gpus).module()

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from greentrack.integrations.torch import track_optimizer
    from greentrack.training import gathering

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=args.init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=90))
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)

    def train() -> None:
        for _ in range(args.steps):
            x = torch.randn(8, 16)
            nn.functional.mse_loss(model(x), x).backward()
            time.sleep(args.step_s)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    summary = None
    if args.untracked:
        train()
        part = gathering.node_part(Path(args.run_dir), [], rank=rank,
                                   local_zero=os.environ.get("LOCAL_RANK") == "0", tracked=False)
        gathering.job_totals(Path(args.run_dir), part, main=rank == 0, store=None,
                             world_size=world)
    else:
        with track_optimizer(optimizer, args.run_dir, model=model, samples_per_step=8,
                             interval_s=0.02, counter_interval_s=0.1, flush_interval_s=0.2,
                             progress_every_s=None) as tracking:
            train()
            if os.environ.get("GT_TEST_SCRATCH_GONE"):  # the job's scratch TMPDIR cleaned under it
                import shutil
                import tempfile
                shutil.rmtree(tempfile.gettempdir())
        summary = tracking.summary
    if rank == 0:
        print(json.dumps(summary))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
