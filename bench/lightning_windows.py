"""Issue 25's ~1 ms Lightning row, resolved: greentrack on and off in alternating windows of one
``Trainer.fit``, so the comparison needs no second ``Trainer``.

Why: ``bench/step_overhead.py`` compares blocks of a fresh ``Trainer`` and model each. Those blocks
vary by +-15% on this VM with or without the callback, and its ~1 ms rows could not tell a 5%
effect (an A/A band 10-31 points wide). Two causes, found by timing every step: a block of 400
steps sometimes holds one of Python's full (generation 2) garbage collections and sometimes not
(260-340 ms each: a fifth of a block), and the epoch boundary (a new DataLoader iterator) falls at
different places in blocks of different lengths.

Here one ``Trainer`` runs ``16 + 2 * pairs + 1`` epochs of 64 steps; after 16 warm-up epochs
(tracked in full where greentrack is: its start-up is not its steady cost) each epoch is a window, and windows alternate off, on, off, ... (so every window holds one epoch
boundary). A window's time is its steps' wall time less any full collection that started in it
(counted and timed apart, per kind of window: greentrack must not make them more frequent). A fit's
overhead is the on windows' time over the mean of each one's two neighbours, summed: the
throughput a user loses while greentrack runs. Variants, one fit each per round, in a turning
order:

* ``A/A control``: nothing turns on; the spread of its fits is the noise floor;
* ``GreenTrackCallback``: on windows run its hooks and its sampler thread (paused between them);
* ``hooks alone`` (a diagnostic): the hooks; the sampler thread stays paused (steps are resolved at
  stop), the floor of any design;
* ``hooks + a tracker process beside`` (a diagnostic): the hooks, and another process running a
  tracker on the same fake devices (``_common.tracker_beside``'s), stopped (``SIGSTOP``) in the off
  windows: what a sampler in a process of its own would cost the training thread on 2 cores.

The callback stays registered in every window (Lightning's own dispatch of one more callback is the
"callback that does nothing" row of ``step_overhead.py``: -0.2%). Fakes stand in for this host's
missing hardware as in the other step benches: an NVML H100 whose counter read sleeps 3 ms, a
powercap tree advancing from another process.

    python bench/lightning_windows.py [--rounds 4] [--pairs 60] [--no-record]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (REPO, EnvPatch, QuietGate, fake_nvml_module, md_table,  # noqa: E402
                     median, pct, powercap_tree, record, section, voluntary_switches)

EPOCH = 64  # steps an epoch (64 batches of 256): one window
#: warm-up epochs, tracked in full in the tracked variants (the first step's FLOPs count, the
#: sampler's start: probes of NVML's refresh phase, the first flush) and left out
WARM_EPOCHS = 16
#: from this epoch of the warm-up to its end the sampler's steady share of a core is measured:
#: paused between on windows, the sampler does its periodic work (polls, commits) when it wakes,
#: so an on window holds more of it than its share of the time (the ratio says how much more)
STEADY_FROM = 4
VARIANTS = ("A/A control", "GreenTrackCallback", "hooks alone", "hooks + a tracker process beside")
STEP_S = 0.0018  # the tracker process beside: a step every 1.8 ms (a sleep), as in the other benches


@contextmanager
def sampler_switch() -> Iterator[threading.Event]:
    """While the returned event is clear, a tracker's sampler thread started inside sleeps at its
    next wait (a diagnostic, as ``_common.sampler_parked``): set, it goes on where it was."""
    from greentrack.engine import engine

    running = threading.Event()
    running.set()
    wait = engine.Engine._wait

    def paused_wait(self: Any, timeout: float) -> bool:
        stopping = wait(self, timeout)
        while not running.is_set() and not self._stop.is_set():
            running.wait()
        return stopping or self._stop.is_set()
    engine.Engine._wait = paused_wait  # type: ignore[method-assign]
    try:
        yield running
    finally:
        running.set()
        engine.Engine._wait = wait  # type: ignore[method-assign]


class FullCollections:
    """Python's full (generation 2) collections: when each started and how long it took."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seen.append((self._t0, time.perf_counter() - self._t0))


def fit(variant: str, pairs: int, env: dict[str, str], running: threading.Event,
        child: subprocess.Popen[str] | None) -> dict[str, Any]:
    """One ``Trainer.fit``; per-window times (full collections out) and what they held."""
    import lightning as L
    import torch
    from greentrack.integrations.lightning import GreenTrackCallback
    from torch.utils.data import DataLoader, TensorDataset

    class Switched(GreenTrackCallback):  # type: ignore[misc]
        """GreenTrackCallback whose per-step hooks run in the on windows only."""
        on = False

        def on_train_batch_start(self, *a: Any, **k: Any) -> None:
            if self.on:
                super().on_train_batch_start(*a, **k)

        def on_before_optimizer_step(self, *a: Any, **k: Any) -> None:
            if self.on:
                super().on_before_optimizer_step(*a, **k)

        def on_train_batch_end(self, *a: Any, **k: Any) -> None:
            if self.on:
                super().on_train_batch_end(*a, **k)

    windows = 2 * pairs + 1
    hooks = variant != "A/A control"
    sampler = variant == "GreenTrackCallback"

    class Windows(L.Callback):  # after the tracked callback: its end hook falls in its window
        def __init__(self, switched: Switched) -> None:
            self.switched, self.step = switched, 0
            self.edges: list[float] = []
            self.waits: list[int] = []
            self.sampler_cpu: list[float] = []  # the sampler thread's CPU clock
            self.clock: int | None = None
            self.steady: tuple[float, float] | None = None
            self.steady_share = 0.0

        def cpu(self) -> float:
            return time.clock_gettime(self.clock) if self.clock else 0.0

        def on_train_batch_end(self, *a: Any) -> None:
            self.step += 1
            if self.step == STEADY_FROM * EPOCH and sampler:  # tracked throughout from here
                thread = next((t for t in threading.enumerate()
                               if t.name == "greentrack-sampler"), None)
                self.clock = time.pthread_getcpuclockid(thread.ident) if thread and \
                    thread.ident else None
                self.steady = (time.perf_counter(), self.cpu())
            if self.step < WARM_EPOCHS * EPOCH or (self.step - WARM_EPOCHS * EPOCH) % EPOCH:
                return
            if not self.edges and self.steady is not None:  # the warm-up's steady share
                t0, c0 = self.steady
                self.steady_share = (self.cpu() - c0) / (time.perf_counter() - t0)
            self.edges.append(time.perf_counter())
            self.waits.append(voluntary_switches())
            self.sampler_cpu.append(self.cpu())
            k = len(self.edges) - 1  # the window starting now
            on = k % 2 == 1 and k < windows
            self.switched.on = hooks and on
            # after the warm-up the sampler thread runs in the on windows of its variant only
            (running.set if sampler and on else running.clear)()
            if child is not None:
                os.kill(child.pid, signal.SIGCONT if on else signal.SIGSTOP)

        def on_train_end(self, *a: Any) -> None:
            running.set()  # before the tracked callback's stop

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(256, 32), torch.nn.ReLU(),
                                           torch.nn.Linear(32, 10))

        def training_step(self, batch: Any, i: int) -> Any:
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    run_dir = tempfile.mkdtemp(prefix="gt-lightning-windows-")
    with EnvPatch(**env):
        switched = Switched(run_dir, progress_every_s=None)
    timer = Windows(switched)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=WARM_EPOCHS + windows + 1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[switched, timer],
                        log_every_n_steps=50)
    data = DataLoader(TensorDataset(torch.randn(EPOCH * 256, 256)), batch_size=256)
    full = FullCollections()
    switched.on = hooks  # the warm-up: tracked in full
    running.set()
    if child is not None:
        os.kill(child.pid, signal.SIGCONT)
    gc.collect()
    gc.callbacks.append(full)
    try:
        with EnvPatch(**env):
            trainer.fit(Model(), data)
    finally:
        gc.callbacks.remove(full)
        running.set()
        if child is not None:
            os.kill(child.pid, signal.SIGSTOP)
        shutil.rmtree(run_dir, ignore_errors=True)
    edges = timer.edges[:windows + 1]
    times, gcs = [], []
    for k in range(windows):
        inside = [d for t0, d in full.seen if edges[k] <= t0 < edges[k + 1]]
        times.append(edges[k + 1] - edges[k] - sum(inside))
        gcs.append(inside)
    on = [times[k] for k in range(1, windows, 2)]
    around = [(times[k - 1] + times[k + 1]) / 2 for k in range(1, windows, 2)]
    waits = [timer.waits[k + 1] - timer.waits[k] for k in range(windows)]
    cpu = [timer.sampler_cpu[k + 1] - timer.sampler_cpu[k] for k in range(windows)]
    return {"overhead": sum(on) / sum(around) - 1.0,
            "step_s": sum(times[0::2]) / (len(times[0::2]) * EPOCH),
            "gc_on": [d for k in range(1, windows, 2) for d in gcs[k]],
            "gc_off": [d for k in range(0, windows, 2) for d in gcs[k]],
            "waits_on": sum(waits[1::2]) / sum(times[1::2]),
            "waits_off": sum(waits[0::2]) / sum(times[0::2]),
            "sampler_on": sum(cpu[1::2]) / sum(times[1::2]), "sampler_steady": timer.steady_share}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--pairs", type=int, default=60, help="on windows (epochs of 64 steps) a fit")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    logging.getLogger("greentrack").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    import torch
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="gt-lightning-windows-hw-"))
    tree = powercap_tree(work / "powercap")
    nvml, _ = fake_nvml_module(1)
    sys.modules["pynvml"] = nvml  # the sampler's NVML: a fake H100 (3 ms counter reads)
    env = {"GREENTRACK_POWERCAP_ROOT": str(tree.root), "CUDA_VISIBLE_DEVICES": None,
           "GREENTRACK_PROGRESS": "0"}
    child = subprocess.Popen([sys.executable, str(REPO / "bench" / "sampler_interference.py"),
                              "--beside", str(STEP_S)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    gate = QuietGate()
    got: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    try:
        if child.stdout is None or child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the tracker process beside did not start (exit {child.poll()})")
        os.kill(child.pid, signal.SIGSTOP)
        with sampler_switch() as running:
            for r in range(args.rounds):
                k = r % len(VARIANTS)
                order = VARIANTS[k:] + VARIANTS[:k]
                for variant in (order if r % 2 == 0 else order[::-1]):
                    gate.wait()
                    res = fit(variant, args.pairs, env, running,
                              child if variant.endswith("beside") else None)
                    got[variant].append(res)
                    print(f"round {r + 1}/{args.rounds} {variant}: {pct(res['overhead'])} "
                          f"(untracked step {res['step_s'] * 1e3:.3f} ms)", flush=True)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            try:
                child.communicate("", timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        del sys.modules["pynvml"]
        shutil.rmtree(work, ignore_errors=True)
    text = report(got, args, gate)
    print(text)
    if not args.no_record:
        record("lightning_windows", text)
    return 0


def report(got: dict[str, list[dict[str, Any]]], args: argparse.Namespace, gate: QuietGate
           ) -> str:
    aa = [f["overhead"] for f in got["A/A control"]]
    band = (min(aa), max(aa))
    rows = []
    for variant in VARIANTS:
        fits = got[variant]
        o = [f["overhead"] for f in fits]
        on = [d for f in fits for d in f["gc_on"]]
        off = [d for f in fits for d in f["gc_off"]]
        verdict = "(its range is the band)" if variant == "A/A control" else \
            ("**yes**" if band[0] <= median(o) <= band[1] else "**no**")
        rows.append([variant, f"{median([f['step_s'] for f in fits]) * 1e3:.3f}", pct(median(o)),
                     f"{pct(min(o))} .. {pct(max(o))}",
                     f"{median([f['waits_on'] for f in fits]):.0f} / "
                     f"{median([f['waits_off'] for f in fits]):.0f}",
                     f"{median([f['sampler_on'] for f in fits]) * 100:.2f}% / "
                     f"{median([f['sampler_steady'] for f in fits]) * 100:.2f}%"
                     if variant == "GreenTrackCallback" else "-",
                     f"{len(on)} / {len(off)}; "
                     f"{(median(on) if on else 0) * 1e3:.0f} / {(median(off) if off else 0) * 1e3:.0f} ms",
                     verdict])
    body = md_table(["variant", "untracked ms/step", "overhead (median of fits)",
                     "fits' range", "training thread's waits/s, on / off windows",
                     "sampler thread's CPU, % of a core: on windows / tracked throughout",
                     "full collections, on / off windows; median duration",
                     "within the A/A band"], rows)
    body += (
        f"\n\n{args.rounds} fits a variant, one each per round in a turning order; a fit is one "
        f"`Trainer.fit` of {WARM_EPOCHS} warm-up epochs and {2 * args.pairs + 1} windows of one "
        f"epoch ({EPOCH} steps of MLP 256-32-10, batch 256, SGD, 1 thread), off and on in turn. "
        f"Overhead: the on windows' wall time over their neighbours' (full collections out, counted "
        f"apart); the A/A band is the control fits' range ({pct(band[0])} .. {pct(band[1])}). "
        f"Paused between on windows, the sampler thread does its periodic work (polls, commits) "
        f"when it wakes: its CPU share in on windows over its share while tracking throughout "
        f"(epochs {STEADY_FROM}-{WARM_EPOCHS} of the warm-up) says by how much the on windows "
        f"overstate its steady cost. {gate.summary('fit')}.")
    return section("lightning_windows", "The ~1 ms Lightning row, one Trainer, windows on and off "
                   "(`bench/lightning_windows.py`)", body)


if __name__ == "__main__":
    sys.exit(main())
