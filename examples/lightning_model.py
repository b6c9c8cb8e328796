"""A Lightning model tracked by greentrack: one callback, per-step joules in every logger.

    python examples/lightning_model.py RUN_DIR                      # one CPU process
    python examples/lightning_model.py RUN_DIR --devices 2          # DDP, 2 CPU processes (gloo)
    python examples/lightning_model.py RUN_DIR --steps 40 --resume  # continue from the last checkpoint

RUN_DIR may also come from ``GREENTRACK_RUN_DIR``. Lightning's own files (CSV logs, checkpoints) go
to ``RUN_DIR/lightning``. Runs on CPU in a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from greentrack.integrations.lightning import GreenTrackCallback


class Regressor(L.LightningModule):
    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-2)


def loader(n: int, seed: int, batch: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    y = x[:, :1] * 2.0 + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", default=os.environ.get("GREENTRACK_RUN_DIR"))
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--num-nodes", type=int, default=1,
                   help="nodes of a multi-node job (each node's processes started by torchrun or "
                        "the scheduler, e.g. srun)")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/lightning/last.ckpt")
    p.add_argument("--test", action="store_true", help="run trainer.test after fit")
    args = p.parse_args(argv)
    if not args.run_dir:
        p.error("give RUN_DIR or set GREENTRACK_RUN_DIR")
    run_dir = Path(args.run_dir)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # A short demo run: sample fast and log often (the defaults suit hours-long runs).
    callback = GreenTrackCallback(run_dir, interval_s=0.02, counter_interval_s=0.1,
                                  flush_interval_s=0.2, log_every_s=0.2, progress_every_s=None)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "lightning", save_last=True)
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes,
        strategy="ddp" if args.devices * args.num_nodes > 1 else "auto",
        max_steps=args.steps, accumulate_grad_batches=args.accumulate, log_every_n_steps=4,
        limit_val_batches=3, val_check_interval=8, check_val_every_n_epoch=None,
        default_root_dir=run_dir / "lightning", callbacks=[callback, ckpt],
        logger=L.pytorch.loggers.CSVLogger(run_dir / "lightning", name="csv"),
        enable_model_summary=False, enable_progress_bar=False)
    model = Regressor()
    trainer.fit(model, loader(2048, 0), loader(256, 1),
                ckpt_path=str(run_dir / "lightning" / "last.ckpt") if args.resume else None)
    if args.test:
        trainer.test(model, loader(128, 2), verbose=False)
    if trainer.is_global_zero and callback.summary is not None:
        s = callback.summary
        print(json.dumps({"global_step": trainer.global_step, "run_id": s["run_id"],
                          "energy_j": s["energy_j"], "steps_by_phase": s["steps_by_phase"],
                          "stores": s["stores"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
