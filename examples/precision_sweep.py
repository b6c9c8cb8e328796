"""The same small model trained in fp32 and bf16 (fp16 too on a GPU), twice each, then compared
on the energy they took to reach one loss.

    python examples/precision_sweep.py OUT_DIR [--steps 400] [--target 0.01]

Each run is tracked with its labels (``precision``, ``method``) and records its loss with
``tracker.record``; the script ends by printing (and running)::

    greentrack compare OUT_DIR/fp32-1 ... --target "loss<=X" --group fp32=...,... --group bf16=...,...

Runs on CPU (bf16 through CPU autocast) in well under two minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path

import torch
from torch import nn

import greentrack
from greentrack.cli import main as greentrack_main


def train(run_dir: Path, precision: str, steps: int, seed: int, device: str) -> float:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                          nn.Linear(512, 64)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = nn.Linear(64, 64).to(device).requires_grad_(False)  # a fixed function to learn
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device) if precision == "fp16" else None
    batch = 256
    loss_value = float("nan")
    with greentrack.Tracker(run_dir, labels={"precision": precision, "method": "baseline",
                                             "batch_size": str(batch)},
                            interval_s=0.02, counter_interval_s=0.1, flush_interval_s=0.2) as tr:
        for _ in range(steps):
            with tr.step(samples=batch, tokens=batch):
                x = torch.randn(batch, 64, device=device)
                with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
                    loss = nn.functional.mse_loss(model(x).float(), target(x))
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
            tr.record(loss=loss.detach())  # a tensor: read off the training thread, no sync
            loss_value = float(loss.detach())
    return loss_value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", nargs="?", default=os.environ.get("GREENTRACK_RUN_DIR"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--target", type=float, default=0.01, help="the loss to reach")
    args = p.parse_args(argv)
    if not args.out_dir:
        p.error("give OUT_DIR or set GREENTRACK_RUN_DIR")
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = ["fp32", "bf16"] + (["fp16"] if device == "cuda" else [])
    out = Path(args.out_dir)
    groups: dict[str, list[str]] = {}
    for precision in precisions:
        for i in range(1, args.repeats + 1):
            run_dir = out / f"{precision}-{i}"
            last = train(run_dir, precision, args.steps, seed=i, device=device)
            print(f"{run_dir}: final loss {last:.4f}")
            groups.setdefault(precision, []).append(str(run_dir))
    argv_cmp = ["compare", groups[precisions[0]][0], "--target", f"loss<={args.target:g}"]
    argv_cmp += [a for name, dirs in groups.items() for a in ("--group", f"{name}={','.join(dirs)}")]
    print("$ greentrack " + " ".join(shlex.quote(a) for a in argv_cmp), flush=True)
    return greentrack_main(argv_cmp)


if __name__ == "__main__":
    sys.exit(main())
