"""A Hugging Face ``Trainer`` run tracked by greentrack, on a tiny GPT-2 built from a config.

    python examples/hf_trainer.py RUN_DIR                  # 12 optimizer steps on CPU
    python examples/hf_trainer.py RUN_DIR --steps 20 --resume   # continue from the last checkpoint

No download: the model is built from ``GPT2Config`` with random weights and trained on random
tokens. RUN_DIR may also come from ``GREENTRACK_RUN_DIR``; the Trainer's own output (checkpoints)
goes to ``RUN_DIR/hf``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from greentrack.integrations.transformers import GreenTrackTrainerCallback


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int = 32, vocab: int = 128, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def build(run_dir: Path, steps: int, accumulate: int = 2) -> tuple[Trainer, GreenTrackTrainerCallback]:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(
        output_dir=str(run_dir / "hf"), max_steps=steps, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, gradient_accumulation_steps=accumulate, learning_rate=1e-3,
        logging_steps=2, eval_strategy="steps", eval_steps=6, save_strategy="steps", save_steps=6,
        report_to=[], use_cpu=True, disable_tqdm=True, include_num_input_tokens_seen=True,
        dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(512),
                      eval_dataset=RandomTokens(24, seed=1))
    callback = GreenTrackTrainerCallback(run_dir, interval_s=0.02, counter_interval_s=0.1,
                                         flush_interval_s=0.2, progress_every_s=None)
    callback.attach(trainer)
    return trainer, callback


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", default=os.environ.get("GREENTRACK_RUN_DIR"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = p.parse_args(argv)
    if not args.run_dir:
        p.error("give RUN_DIR or set GREENTRACK_RUN_DIR")
    torch.set_num_threads(1)
    trainer, callback = build(Path(args.run_dir), args.steps)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    if trainer.is_world_process_zero() and callback.summary is not None:
        s = callback.summary
        print(json.dumps({"global_step": trainer.state.global_step, "run_id": s["run_id"],
                          "energy_j": s["energy_j"], "steps_by_phase": s["steps_by_phase"],
                          "stores": s["stores"]}))
    # Under torchrun the Trainer leaves its process group to the interpreter's exit; PyTorch asks
    # for destroy_process_group() at the end of a job (https://pytorch.org/docs/stable/distributed.html#shutdown):
    # beside 4 busy loops a rank left without it aborted at exit ("terminate called without an
    # active exception", exit -6) after its work and its tracker had finished.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
