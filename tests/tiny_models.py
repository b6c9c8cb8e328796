"""Tiny models shared by the tests: a Lightning module and its data and Trainer, a token dataset
and a GPT-2 Trainer for the Hugging Face tests. Real frameworks, CPU, a few seconds each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

#: token ids per sample of :class:`Tokens`
LENGTH = 16

BATCH = 8


class Tiny(L.LightningModule):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        self.fail_at = fail_at
        self.val_batches = 0

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("boom")
        time.sleep(0.004)  # ~5 ms steps
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if not self.trainer.sanity_checking:
            self.val_batches += 1
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def data(n: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 16, generator=g), torch.randn(n, 1, generator=g)),
                      batch_size=BATCH)


def trainer(root: Path, callbacks: list[Any], logger: Any, **kw: Any) -> Any:
    args = dict(accelerator="cpu", devices=1, max_steps=10, log_every_n_steps=2,
                limit_val_batches=2, num_sanity_val_steps=1, default_root_dir=root,
                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    args.update(kw)
    return L.Trainer(callbacks=callbacks, logger=logger, **args)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0) -> None:
        self.ids = torch.randint(0, 64, (n, LENGTH), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2_config() -> Any:
    from transformers import GPT2Config
    return GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                      bos_token_id=0, eos_token_id=0)


def hf_trainer(out: Path, model: Any, callback: Any, attach: bool = True,
               eval_dataset: Any = None, callbacks: list[Any] | None = None, **kw: Any) -> Any:
    """A tiny Trainer holding ``callback``: through ``attach``, or as ``Trainer(callbacks=[...])``
    (after ``callbacks``); ``kw``: TrainingArguments over the defaults."""
    from transformers import Trainer, TrainingArguments

    options: dict[str, Any] = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=2,
                                   report_to=[], use_cpu=True, disable_tqdm=True,
                                   save_strategy="no", seed=0)
    options.update(kw)
    trainer = Trainer(model=model, args=TrainingArguments(**options), train_dataset=Tokens(16),
                      eval_dataset=eval_dataset,
                      callbacks=[*(callbacks or []), *([] if attach else [callback])] or None)
    if attach:
        callback.attach(trainer)
    return trainer
