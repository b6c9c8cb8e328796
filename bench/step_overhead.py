"""Step-time overhead of full tracking through the integrations, against no tracking.

Goal (issue 3): on ~5 ms CPU steps, median overhead <= 1%; on 10-100 ms GPU steps, <= 0.5% with no
synchronization added (``tests/test_timeline.py`` counts syncs on a GPU).

Variants run in blocks of ``--steps`` steps, interleaved (U T U, then T U T, alternating) so the
machine's drift lands on both alike; a round's overhead is its tracked mean step time over its
untracked one; the figure is the median over ``--rounds`` rounds.

* ``none``: the loop alone.
* ``track_optimizer``: ``greentrack.integrations.torch.track_optimizer(opt, run_dir, model=model,
  flops="auto", ...)`` (a tracker per block: sampler thread, every step attributed, SQLite store,
  FLOPs counted on the first step), plus ``tracking.metrics()`` every 50 steps as a logger would.
  On CPU the sampler reads the test suite's fake powercap tree (RAPL package + DRAM) and a fake NVML
  H100 whose 3 ms counter read is a sleep, as on a real GPU node; on a GPU, the real NVML and steps
  on the GPU timeline (CUDA events, never a synchronize).
* ``lightning`` (CPU, ``--lightning``): a Lightning ``Trainer`` with and without
  ``GreenTrackCallback``; step time from a timing callback (the first 10 steps of a block excluded).

    python bench/step_overhead.py                      # CPU (+ Lightning), then GPU if present
    python bench/step_overhead.py --device cpu --rounds 5 --no-record
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (EnvPatch, QuietGate, cuda_device, fake_nvml_module, md_table,  # noqa: E402
                     median, powercap_tree, quantile, record, section)

EVERY = 50  # metrics() cadence, as Lightning's default log_every_n_steps


class Loop:
    """A model, its optimizer and one step, sized for ``target_ms``."""

    def __init__(self, device: str, target_ms: float) -> None:
        import torch
        torch.manual_seed(0)
        self.torch, self.device = torch, device
        cuda = device.startswith("cuda")
        width, dtype = (4096, torch.bfloat16) if cuda else (256, torch.float32)
        if not cuda:
            torch.set_num_threads(1)
        self.model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                         torch.nn.Linear(width, width), torch.nn.ReLU(),
                                         torch.nn.Linear(width, 10)).to(device=device, dtype=dtype)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        self.width, self.dtype, self.cuda = width, dtype, cuda
        self.batch = 64
        for _ in range(4):  # size the batch: step time is about linear in it
            self._make()
            took = self.time(20 if not cuda else 5)
            self.batch = max(1, round(self.batch * target_ms / 1000 / took))
        self._make()
        self.step_s = self.time(20 if not cuda else 5)
        self.describe = (f"MLP {width}-{width}-{width}-10 {str(dtype).replace('torch.', '')}, batch "
                         f"{self.batch}, SGD, {self.step_s * 1e3:.2f} ms/step when sized")

    def _make(self) -> None:
        self.x = self.torch.randn(self.batch, self.width, device=self.device, dtype=self.dtype)

    def step(self) -> None:
        self.model(self.x).float().pow(2).mean().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, steps: int) -> float:
        self.step()
        self.sync()
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return (time.perf_counter() - t) / steps


def block(loop: Loop, steps: int, tracked: bool, env: dict[str, str]) -> float:
    """Mean step time of one block (the tool started before and stopped after, untimed)."""
    from greentrack.integrations.torch import track_optimizer

    tracking, run_dir = None, None
    if tracked:
        run_dir = tempfile.mkdtemp(prefix="gt-step-overhead-")
        with EnvPatch(**env):
            tracking = track_optimizer(loop.opt, run_dir, model=loop.model, flops="auto",
                                       samples_per_step=loop.batch, planned_steps=steps,
                                       progress_every_s=None)
    for _ in range(5):  # warm-up (and the counted FLOPs step)
        loop.step()
    loop.sync()
    t = time.perf_counter()
    for i in range(steps):
        loop.step()
        if tracking is not None and i % EVERY == EVERY - 1:
            tracking.metrics()
    loop.sync()
    took = (time.perf_counter() - t) / steps
    if tracking is not None:
        tracking.close()
        shutil.rmtree(run_dir or "", ignore_errors=True)
    return took


def interleaved(run: Any, rounds: int, gate: QuietGate) -> dict[str, Any]:
    """``run(tracked) -> step seconds``; U T U, then T U T, alternating; per round the tracked
    mean over the untracked mean of its neighbours."""
    overheads, untracked, tracked = [], [], []
    for r in range(rounds):
        gate.wait()
        if r % 2 == 0:  # U T U
            u0, t, u1 = run(False), run(True), run(False)
            base = (u0 + u1) / 2
        else:  # T U T
            t0, base, t1 = run(True), run(False), run(True)
            t = (t0 + t1) / 2
        overheads.append(t / base - 1.0)
        untracked.append(base)
        tracked.append(t)
    return {"median": median(overheads), "p25": quantile(overheads, 0.25),
            "p75": quantile(overheads, 0.75), "u": median(untracked), "t": median(tracked)}


def lightning_block(steps: int, tracked: bool, env: dict[str, str], width: int) -> float:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from greentrack.integrations.lightning import GreenTrackCallback

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.t: list[float] = []

        def on_train_batch_end(self, *a: Any) -> None:
            self.t.append(time.perf_counter())

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(256, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, 10))

        def training_step(self, batch: Any, i: int) -> Any:
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    data = DataLoader(TensorDataset(torch.randn(256, 256)), batch_size=256)
    timer = Timer()
    run_dir = tempfile.mkdtemp(prefix="gt-step-overhead-")
    callbacks: list[Any] = [timer]
    if tracked:
        with EnvPatch(**env):
            callbacks.append(GreenTrackCallback(run_dir, progress_every_s=None))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps + 10, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, log_every_n_steps=EVERY)
    with EnvPatch(**env):
        trainer.fit(Model(), data)
    shutil.rmtree(run_dir, ignore_errors=True)
    t = timer.t[10:]
    return (t[-1] - t[0]) / (len(t) - 1)


def pct(x: float) -> str:
    return f"{x * 100:+.2f}%"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "gpu", "all"), default="all")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=400, help="steps per CPU block")
    p.add_argument("--no-lightning", action="store_true")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    logging.getLogger("greentrack").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    import torch
    torch.set_num_threads(1)
    rows: list[list[Any]] = []
    notes: list[str] = []
    gate = QuietGate()
    if args.device in ("cpu", "all"):
        work = Path(tempfile.mkdtemp(prefix="gt-step-overhead-hw-"))
        tree = powercap_tree(work / "powercap")
        nvml, _ = fake_nvml_module(1)
        sys.modules["pynvml"] = nvml  # the sampler's NVML: a fake H100 (3 ms counter reads)
        env = {"GREENTRACK_POWERCAP_ROOT": str(tree.root), "CUDA_VISIBLE_DEVICES": None}
        loop = Loop("cpu", 5.0)
        res = interleaved(lambda tracked: block(loop, args.steps, tracked, env), args.rounds, gate)
        rows.append(["CPU, plain loop + `track_optimizer`", loop.describe,
                     f"{res['u'] * 1e3:.3f}", f"{res['t'] * 1e3:.3f}", pct(res["median"]),
                     f"{pct(res['p25'])} .. {pct(res['p75'])}", "<= 1%"])
        if not args.no_lightning:
            res = interleaved(lambda tracked: lightning_block(args.steps, tracked, env, 512),
                              max(3, args.rounds // 2), gate)
            rows.append(["CPU, Lightning `Trainer` + `GreenTrackCallback`",
                         "MLP 256-512-10, batch 256, SGD, 1 thread; Lightning's own loop",
                         f"{res['u'] * 1e3:.3f}", f"{res['t'] * 1e3:.3f}", pct(res["median"]),
                         f"{pct(res['p25'])} .. {pct(res['p75'])}", "<= 1%"])
        del sys.modules["pynvml"]
        shutil.rmtree(work, ignore_errors=True)
    gpu_ok, gpu_name = cuda_device()
    if args.device in ("gpu", "all"):
        if not gpu_ok:
            notes.append(f"GPU part not run: {gpu_name}.")
        else:
            for target in (10.0, 50.0, 100.0):
                loop = Loop("cuda:0", target)
                steps = max(20, int(2.0 / loop.step_s))
                res = interleaved(lambda tracked: block(loop, steps, tracked, {}), args.rounds, gate)
                rows.append([f"GPU ({gpu_name}), `track_optimizer`, CUDA-event marks", loop.describe,
                             f"{res['u'] * 1e3:.3f}", f"{res['t'] * 1e3:.3f}", pct(res["median"]),
                             f"{pct(res['p25'])} .. {pct(res['p75'])}", "<= 0.5%"])
    table = md_table(["loop", "workload", "untracked ms/step", "tracked ms/step",
                      "overhead (median)", "p25 .. p75", "goal"], rows)
    body = (f"{table}\n\n{args.rounds} rounds of interleaved blocks (U T U and T U T, "
            f"alternating); {args.steps} steps per CPU block, ~2 s per GPU block; `metrics()` every "
            f"{EVERY} steps. {gate.summary()} " + " ".join(notes))
    print(body)
    if not args.no_record:
        record("step_overhead", section(
            "step_overhead", "Step-time overhead of the training integrations (`bench/step_overhead.py`)",
            body, gpu=gpu_name if gpu_ok else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
