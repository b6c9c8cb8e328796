"""The main job: a small model trained on CPU, tracked by greentrack, with live Prometheus metrics
and a disclosure report at the end.

    make demo                        # or: python examples/demo.py [RUN_DIR]

Trains a 3-layer MLP on a synthetic regression task for ~10 s, one ``tracker.step()`` per
optimizer step, serving ``/metrics`` on 127.0.0.1 (a free port). At the end it shows a few of the
metrics Prometheus would scrape, the run's totals with how each figure was obtained, and writes
JSON, Markdown and HTML reports. The grid is France's unless ``GREENTRACK_COUNTRY`` says otherwise.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

import torch
from torch import nn

import greentrack
from greentrack.common.config import Config
from greentrack.reports import generate
from greentrack.reports.summary import format_summary


def train(tracker: greentrack.Tracker, seconds: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, w = torch.randn(4096, 64), torch.randn(64, 1)
    y = x @ w + 0.1 * torch.randn(4096, 1)
    batch, step = 256, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i = (step * batch) % len(x)
        with tracker.step(samples=batch):
            loss = nn.functional.mse_loss(model(x[i:i + batch]), y[i:i + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if step % 1000 == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}  energy so far {tracker.totals()['total']:.1f} J")
        step += 1


def main(run_dir: Path, seconds: float = 10.0) -> dict:
    config = Config.from_env(run_dir=run_dir, prometheus_port=0,
                             country=os.environ.get("GREENTRACK_COUNTRY", "FR"))
    with greentrack.Tracker(config=config) as tracker:
        train(tracker, seconds)
        time.sleep(config.counter_interval_s * 2)  # let the last steps resolve before the scrape
        url = tracker.sinks[0].url
        scraped = urllib.request.urlopen(url, timeout=5).read().decode()
        print(f"\nmetrics served at {url} (a few of them):")
        for line in scraped.splitlines():
            if line.startswith(("greentrack_energy_joules_total{", "greentrack_steps_total{",
                                "greentrack_emissions_grams_total{")):
                print("  " + line)
    summary = greentrack.summarize(run_dir)
    print("\n" + format_summary(summary))
    files = generate([run_dir], config, ["json", "md", "html"], run_dir / "report")
    print("\nreport: " + ", ".join(str(f) for f in files if f.suffix in (".json", ".md", ".html")))
    return summary


if __name__ == "__main__":
    default = Path("greentrack-runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
