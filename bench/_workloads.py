"""Training loops for the overhead benchmark: a small CPU MLP and a bfloat16 GPU MLP, each with its
batch sized for a target step time on the machine at hand."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Workload:
    step: Callable[[], None]
    sync: Callable[[], None]
    batch: int
    cuda: bool
    describe: str
    device: str = "cpu"
    gpu_part: bool = False  # the GPU part's loop (greentrack marks steps with StepMarks)
    step_s: float = 0.0  # one step's time as measured when the batch was sized


def _size_batch(make: Callable[[int], Callable[[], None]], sync: Callable[[], None],
                target_s: float, start: int, limit: int, probe_steps: int) -> tuple[int, float]:
    """Batch whose step takes about ``target_s`` (step time is close to linear in the batch)."""
    batch = start
    took = target_s
    for _ in range(4):
        step = make(batch)
        for _ in range(3):
            step()
        sync()
        t = time.perf_counter()
        for _ in range(probe_steps):
            step()
        sync()
        took = (time.perf_counter() - t) / probe_steps
        new = max(1, min(limit, round(batch * target_s / took)))
        if abs(new - batch) <= max(1, batch // 50):
            break
        batch = new
    return batch, took


def cpu_workload(target_ms: float = 5.0) -> Workload:
    """A 3-layer MLP (256-512-512-10) with SGD on one CPU thread."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def make(batch: int) -> Callable[[], None]:
        x = torch.randn(batch, 256)
        y = torch.randint(0, 10, (batch,))

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        return step

    batch, took = _size_batch(make, lambda: None, target_ms / 1000, 64, 8192, 60)
    return Workload(make(batch), lambda: None, batch, False,
                    f"MLP 256-512-512-10, batch {batch}, SGD, 1 CPU thread, "
                    f"{took * 1e3:.2f} ms/step when sized", step_s=took)


def gpu_workload(target_ms: float, on_cpu: bool = False) -> Workload:
    """Four 8192x8192 linear layers in bfloat16 with SGD on ``cuda:0`` (``on_cpu``: a tiny float32
    version on CPU, only to exercise the code path)."""
    import torch

    device = torch.device("cpu" if on_cpu else "cuda:0")
    width, dtype = (64, torch.float32) if on_cpu else (8192, torch.bfloat16)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(4):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers).to(device=device, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    sync = (lambda: None) if on_cpu else torch.cuda.synchronize

    def make(batch: int) -> Callable[[], None]:
        x = torch.randn(batch, width, device=device, dtype=dtype)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            model(x).float().pow(2).mean().backward()
            opt.step()
        return step

    batch, took = _size_batch(make, sync, target_ms / 1000, 256, 262_144, 10)
    where = "CPU (dry run)" if on_cpu else torch.cuda.get_device_name(0)
    return Workload(make(batch), sync, batch, not on_cpu,
                    f"MLP 4 x {width}x{width} {str(dtype).replace('torch.', '')}, batch {batch}, "
                    f"SGD on {where}, {took * 1e3:.1f} ms/step when sized", str(device), True,
                    step_s=took)


def gpu_kinds(step_s: float = 0.2) -> tuple[Callable[[], None], Callable[[], None]]:
    """A heavy step (bf16 matmuls) and a light one (a GPU spin at low power), each ~``step_s`` of
    GPU time on ``cuda:0``, calibrated here with events and synchronize (outside anything
    measured). Used by the mixed-steps checks: each kind alone, then interleaved."""
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(a)

    def gpu_time(fn: Callable[[], object]) -> float:
        fn()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        return float(s.elapsed_time(e)) / 1000.0

    per_mm = gpu_time(lambda: [torch.matmul(a, a, out=out) for _ in range(20)]) / 20
    n_mm = max(1, round(step_s / per_mm))
    cycles = 50_000_000
    cycles = int(cycles * step_s / gpu_time(lambda: torch.cuda._sleep(cycles)))

    def heavy() -> None:
        for _ in range(n_mm):
            torch.matmul(a, a, out=out)

    def light() -> None:
        torch.cuda._sleep(cycles)

    return heavy, light
