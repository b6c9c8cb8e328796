"""The main job: a small model trained on CPU, tracked by greentrack, with a summary at the end.

    make demo                        # or: python examples/demo.py [RUN_DIR]

Trains a 3-layer MLP on a synthetic regression task for ~10 s, one ``tracker.step()`` per
optimizer step, then prints the run's totals and how each figure was obtained.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

import greentrack
from greentrack.summary import format_summary


def main(run_dir: Path, seconds: float = 10.0) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, w = torch.randn(4096, 64), torch.randn(64, 1)
    y = x @ w + 0.1 * torch.randn(4096, 1)
    batch = 256
    with greentrack.Tracker(run_dir) as tracker:
        end = time.monotonic() + seconds
        step = 0
        while time.monotonic() < end:
            i = (step * batch) % len(x)
            with tracker.step(samples=batch):
                loss = nn.functional.mse_loss(model(x[i:i + batch]), y[i:i + batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if step % 200 == 0:
                t = tracker.totals()
                print(f"step {step:5d}  loss {loss.item():.4f}  energy so far {t['total']:.1f} J")
            step += 1
    summary = greentrack.summarize(run_dir)
    print(format_summary(summary))
    return summary


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("greentrack-runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    main(out)
