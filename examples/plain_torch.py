"""A hand-written PyTorch loop tracked by greentrack: one added line before the loop.

    python examples/plain_torch.py RUN_DIR [--steps 400]

RUN_DIR may also come from ``GREENTRACK_RUN_DIR``. Runs on CPU in a few seconds (on a GPU if one is
there, with step boundaries on the GPU timeline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch import nn

import greentrack
from greentrack.training.flops import analytic, parameter_count
from greentrack.integrations.torch import track_optimizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", default=os.environ.get("GREENTRACK_RUN_DIR"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--accumulate", type=int, default=2, help="micro-batches per optimizer step")
    p.add_argument("--flops", choices=("auto", "analytic"), default="auto")
    args = p.parse_args(argv)
    if not args.run_dir:
        p.error("give RUN_DIR or set GREENTRACK_RUN_DIR")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    batch, length = 16, 1  # one "token" per sample for the analytic estimate
    flops = "auto" if args.flops == "auto" else analytic(
        parameter_count(model), batch * length * args.accumulate)

    # The one added line: every optimizer step is now a step with its joules, FLOPs and samples.
    tracking = track_optimizer(optimizer, args.run_dir, model=model, flops=flops,
                               samples_per_step=batch * args.accumulate, planned_steps=args.steps,
                               interval_s=0.02, counter_interval_s=0.1, flush_interval_s=0.2)
    with tracking:
        for step in range(args.steps):
            for _ in range(args.accumulate):
                x = torch.randn(batch, 64, device=device)
                loss = nn.functional.mse_loss(model(x), x) / args.accumulate
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % 100 == 99:
                model.eval()
                with tracking.step("validation"), torch.no_grad():
                    model(torch.randn(64, 64, device=device))
                model.train()
                m = tracking.metrics()
                print(f"step {step + 1}: {m['energy_j']:.2f} J so far"
                      + (f", forecast {m['forecast_energy_j']:.2f} J" if "forecast_energy_j" in m else ""))
    s = greentrack.summarize(args.run_dir)
    print(json.dumps({"steps_by_phase": s["steps_by_phase"], "energy_j": s["energy_j"],
                      "run_id": s["run_id"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
