"""Distributed data parallel under ``torchrun``, tracked by greentrack: every rank into one run.

    torchrun --standalone --nproc_per_node 2 examples/ddp_torchrun.py RUN_DIR [--steps 200]

Each rank measures its own GPU (if any) and writes its own store into RUN_DIR (every rank must be
given the same RUN_DIR, or ``GREENTRACK_RUN_DIR``: a shared directory or each node's own); CPU and
DRAM are measured once per node, by local rank 0. The run id is torchrun's (``TORCHELASTIC_RUN_ID``).
At the end, leaving the ``with`` block gathers every node's stores to rank 0 over the job's process
group, and rank 0 prints the whole job's totals (``tracking.summary``). On CPU this uses gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from greentrack.integrations.torch import track_optimizer
from greentrack.reports.summary import format_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", default=os.environ.get("GREENTRACK_RUN_DIR"))
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    if not args.run_dir:
        p.error("give RUN_DIR or set GREENTRACK_RUN_DIR")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    model = DistributedDataParallel(
        nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)).to(device),
        device_ids=[local_rank] if cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)

    with track_optimizer(optimizer, args.run_dir, model=model, samples_per_step=32,
                         planned_steps=args.steps, interval_s=0.02, counter_interval_s=0.1,
                         flush_interval_s=0.2, progress_every_s=None) as tracking:
        for _ in range(args.steps):
            x = torch.randn(32, 64, device=device)
            nn.functional.mse_loss(model(x), x).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    # leaving the block gathered every node's totals to rank 0 (a collective: no barrier needed)
    totals = tracking.summary
    if rank == 0 and totals is not None:
        print(format_summary(totals))
        print(json.dumps({"energy_j": totals["energy_j"], "steps_by_phase": totals["steps_by_phase"],
                          "stores": totals["stores"], "run_id": totals["run_id"]}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
