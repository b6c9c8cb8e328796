"""Does tracking slow training down? Step time with greentrack, codecarbon and Zeus, side by side.

The same training loop runs untracked and under each tool, in blocks of about a hundred steps. A
round runs every tool once, in an order that rotates from round to round, each tool block between
two untracked blocks (U T1 U T2 U ...), so drift of the machine lands on every variant alike and
each tool is compared with its neighbours in time. Each tool starts fresh per block and is stopped
after it, untimed. Overheads are medians over rounds. An A/A control (the untracked loop entered
as a tool) shows the noise floor, and before each round the script waits (up to ``--quiet-wait``
seconds) for other processes on the host to go idle, and records how busy they were.

CPU (always): a small MLP on one thread (``torch.set_num_threads(1)``), batch sized for ~5 ms steps.

* greentrack, full: ``Tracker`` (samplers, per-step attribution of every step via
  ``with tracker.step()``, the SQLite store) with its Prometheus endpoint (``prometheus_port=0``).
* codecarbon: ``OfflineEmissionsTracker(country_iso_code="FRA")``, no file, started around the
  block (default mode), and task mode: ``start_task()``/``stop_task()`` around every step.
* Zeus: ``ZeusMonitor`` with ``begin_window``/``end_window`` around every step.

Hardware each tool reads on CPU: this host as found, and where it lacks RAPL or a GPU the test
suite's fakes (``tests/fakes``): a powercap tree whose counters advance from another process, and
an NVML H100 whose energy-counter read takes 3 ms (a sleep: time in the driver, as measured on an
H100). Zeus reads RAPL from ``/sys/class/powercap/intel-rapl`` only, so it is pointed at the fake
tree; codecarbon offers no such setting, so it uses its estimate where the host has no RAPL.

GPU (when CUDA is available; skipped with the reason otherwise): an MLP in bfloat16 sized for steps
of about 10, 50 and 200 ms. greentrack marks steps on the GPU timeline (``StepMarks``: CUDA events,
no synchronization); Zeus synchronizes at every window edge (its default, ``sync_execution=True``);
codecarbon is started around the block, and in task mode. Step time = wall time of the block
between two ``torch.cuda.synchronize()`` / steps.

    python bench/overhead_compare.py                    # CPU, then GPU if any; records RESULTS.md
    python bench/overhead_compare.py --device cpu --rounds 4 --no-record
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    QuietGate,
    cuda_device,
    fake_nvml_module,
    importable,
    md_table,
    median,
    powercap_tree,
    quantile,
    record,
    section,
)
from _variants import Variant, codecarbon_variants, greentrack_variant, zeus_variant
from _workloads import Workload, cpu_workload, gpu_workload

WARMUP_STEPS = 20


def run_block(work: Workload, variant: Variant, steps: int) -> dict[str, float]:
    """One block: start the tool, warm up, time ``steps`` steps, stop the tool."""
    variant.open()
    try:
        for _ in range(WARMUP_STEPS if not work.gpu_part else 3):  # GPU steps are long
            with variant.step():
                work.step()
        work.sync()
        per_step = []
        cpu0, t_start = time.thread_time(), time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            with variant.step():
                work.step()
            per_step.append(time.perf_counter() - t)
        work.sync()
        wall, cpu = time.perf_counter() - t_start, time.thread_time() - cpu0
    finally:
        variant.close()
    return {"mean": wall / steps, "median": median(per_step), "cpu": cpu / steps}


Blocks = dict[str, list[dict[str, float]]]  # variant -> per-block statistics
Ratios = dict[str, dict[str, list[float]]]  # tool -> statistic -> per-round overhead


def interleave(work: Workload, variants: list[Variant], rounds: int, steps: int,
               gate: QuietGate) -> tuple[Blocks, Ratios]:
    """Rounds of ``U T1 U T2 U ... Tn U`` (U: untracked; the tools' order rotates every round).
    Each tool block is compared with the mean of the untracked blocks just before and after it."""
    none, tools = variants[0], variants[1:]
    blocks: Blocks = {v.name: [] for v in variants}
    ratios: Ratios = {v.name: {"median": [], "mean": [], "cpu": []} for v in tools}
    for r in range(rounds):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        gate.wait()
        before = run_block(work, none, steps)
        blocks[none.name].append(before)
        for v in order:
            b = run_block(work, v, steps)
            after = run_block(work, none, steps)
            blocks[v.name].append(b)
            blocks[none.name].append(after)
            for k in ("median", "mean", "cpu"):
                ratios[v.name][k].append(b[k] / ((before[k] + after[k]) / 2) - 1)
            before = after
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{v.name.split(',')[0].split(' (')[0]} {ratios[v.name]['median'][-1]:+.1%}"
            for v in order), flush=True)
    return blocks, ratios


def compare(work: Workload, variants: list[Variant], rounds: int, steps: int,
            gate: QuietGate) -> list[list[str]]:
    """The table's rows for :func:`interleave`'s rounds."""
    blocks, ratios = interleave(work, variants, rounds, steps, gate)
    rows = []
    for v in variants:
        b = blocks[v.name]
        row = [v.name, f"{median([x['median'] for x in b]) * 1e3:.3f}",
               f"{median([x['mean'] for x in b]) * 1e3:.3f}"]
        if v is variants[0]:
            row += ["", "", "", ""]
        else:
            rr = ratios[v.name]
            row += [f"{median(rr['median']):+.2%}",
                    f"{quantile(rr['median'], 0.25):+.2%} .. {quantile(rr['median'], 0.75):+.2%}",
                    f"{median(rr['mean']):+.2%}", f"{median(rr['cpu']):+.2%}"]
        rows.append(row + [v.note])
    return rows


def baseline() -> list[Variant]:
    """The untracked loop, and the same loop again as a tool: an A/A control whose "overhead" is
    the noise floor of the comparison on this machine."""
    return [Variant("no tracker", nullcontext, note="nothing"),
            Variant("no tracker (A/A control)", nullcontext,
                    note="nothing: its spread is the noise floor of this table")]


HEADERS = ["variant", "median step ms", "mean step ms", "overhead: median step (median of rounds)",
           "interquartile range over rounds", "overhead: mean step", "training-thread CPU per step",
           "what the tool measures, per step"]


# -- CPU ---------------------------------------------------------------------------------------
def cpu_section(args: argparse.Namespace) -> None:
    import pynvml as real_pynvml  # the host as found (on a host without NVIDIA: no GPU)

    from tests.fakes.powercap import LiveCounters

    work_dir = Path(tempfile.mkdtemp(prefix="gt-overhead-"))
    tree = powercap_tree(work_dir / "powercap")
    rapl_env = {"GREENTRACK_POWERCAP_ROOT": str(tree.root)}
    # Zeus binds `pynvml` when first imported: give it the fake H100 now; greentrack's rows
    # choose theirs per block.
    fake_h100, _ = fake_nvml_module(1, counter_cost_s=0.003)
    sys.modules["pynvml"] = fake_h100
    work = cpu_workload(args.target_ms)
    print(f"workload: {work.describe}")
    with LiveCounters(tree, {"intel-rapl:0": 50.0, "intel-rapl:0:1": 5.0}, period_s=0.02):
        variants = baseline()
        variants.append(greentrack_variant("greentrack, this host as found", work, real_pynvml,
                                           {}, prometheus=True))
        variants.append(greentrack_variant("greentrack, RAPL (fake powercap)", work, real_pynvml,
                                           rapl_env, prometheus=True))
        variants += codecarbon_variants(work)
        variants.append(zeus_variant("Zeus, RAPL (fake powercap)", tree.root / "intel-rapl",
                                     gpus=[], sync=False))
        variants.append(greentrack_variant("greentrack, fake H100 (3 ms counter) + RAPL", work,
                                           fake_h100, rapl_env, prometheus=True))
        variants.append(zeus_variant("Zeus, fake H100 (3 ms counter) + RAPL",
                                     tree.root / "intel-rapl", gpus=[0], sync=False))
        for v in variants:
            v.prepare()
        gate = QuietGate(max_wait_s=args.quiet_wait)
        rows = compare(work, variants, args.rounds, args.steps, gate)
    shutil.rmtree(work_dir, ignore_errors=True)
    table = md_table(HEADERS, rows)
    print("\n" + table)
    if args.no_record:
        return
    body = (f"Workload: {work.describe}. {args.rounds} rounds; each round runs every variant "
            f"once, in rotating order, each tool block between two untracked blocks ({args.steps} "
            f"timed steps per block after {WARMUP_STEPS} untimed; the tool is started before "
            "and stopped after the block, untimed). Overhead = the tool block's statistic over "
            "the mean of its two untracked neighbours, median over rounds; the interquartile range "
            "is that of the median-step overhead. Training-thread CPU per step is "
            "`time.thread_time()` over the block: insensitive to other processes taking the core, "
            "blind to waiting (GIL, preemption). The A/A control is the untracked loop entered as "
            "a tool: its spread is the noise floor of this machine. Fakes (`tests/fakes`) stand in "
            "for what this host lacks: a powercap tree advancing at 50 W / 5 W from another "
            "process (running during every block, untracked ones included), and an NVML H100 "
            "whose counter read sleeps 3 ms (time in the driver, measured on an H100). Zeus's "
            "`sync_execution` is off on CPU (nothing to synchronize; its default raises without "
            "CUDA when GPUs are monitored). codecarbon's own measurement every 15 s falls outside "
            "these short blocks (its cost is in the sampler-cost table); its 1 s power monitor "
            "runs. Goal for greentrack: <= 1% on 5 ms CPU steps.\n\n"
            + table + f"\n\nConditions: {gate.summary()}.\n")
    record("overhead_compare:cpu", section("overhead_compare:cpu",
                                           "Step-time overhead on CPU, head to head: overhead_compare.py",
                                           body))


# -- GPU ---------------------------------------------------------------------------------------
GREENTRACK_GPU = "greentrack (StepMarks on the GPU timeline)"
ZEUS_GPU = "Zeus (windows per step, sync_execution=True)"


def gpu_variants(work: Workload, on_cpu: bool) -> tuple[list[Variant], list[str]]:
    """The GPU part's variants: untracked, A/A, greentrack, then codecarbon and Zeus where they
    are installed (neither is needed to measure greentrack). Returns (variants, tools missing)."""
    variants = baseline()
    variants.append(greentrack_variant(GREENTRACK_GPU, work, None, {}, prometheus=True))
    missing = []
    if importable("codecarbon"):
        variants += codecarbon_variants(work)
    else:
        missing.append("codecarbon")
    if importable("zeus"):
        variants.append(zeus_variant(ZEUS_GPU, None, gpus=[] if on_cpu else [0],
                                     sync=not on_cpu))
    else:
        missing.append("zeus")
    return variants, missing


def gpu_section(args: argparse.Namespace) -> None:
    ok, gpu = cuda_device()
    if not ok and not args.gpu_on_cpu:
        print(f"GPU part skipped: {gpu}")
        return
    tables = []
    for target in args.gpu_step_ms:
        work = gpu_workload(target, on_cpu=args.gpu_on_cpu)
        steps = args.gpu_steps or max(20, round(args.gpu_block_s * 1000 / target))
        print(f"workload: {work.describe}; {steps} steps per block")
        variants, missing = gpu_variants(work, on_cpu=args.gpu_on_cpu)
        for name in missing:
            print(f"{name}: not installed, its rows skipped")
        for v in variants:
            v.prepare()
        gate = QuietGate(max_wait_s=args.quiet_wait)
        rows = compare(work, variants, args.gpu_rounds, steps, gate)
        table = md_table(HEADERS, rows)
        print("\n" + table)
        tables.append(f"### Steps of about {target:g} ms ({work.describe}, {steps} steps per "
                      f"block)\n\n{table}\n\nConditions: {gate.summary()}.\n")
    if args.no_record or args.gpu_on_cpu:
        return
    body = (f"{args.gpu_rounds} rounds per step size, variants interleaved in rotating order; step "
            "time = block wall time between two `torch.cuda.synchronize()` / steps. Goal for "
            "greentrack: <= 0.5% on GPU steps.\n\n" + "\n".join(tables))
    record("overhead_compare:gpu", section("overhead_compare:gpu",
                                           "Step-time overhead on a GPU, head to head: overhead_compare.py",
                                           body, gpu=gpu))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: the CPU part, then the GPU part in a fresh process if CUDA exists")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=120, help="timed steps per CPU block")
    ap.add_argument("--quiet-wait", type=float, default=15.0,
                    help="before each round, wait up to this long for other processes to go idle")
    ap.add_argument("--target-ms", type=float, default=5.0, help="CPU step time to size the batch for")
    ap.add_argument("--gpu-step-ms", type=float, nargs="+", default=[10.0, 50.0, 200.0])
    ap.add_argument("--gpu-rounds", type=int, default=5)
    ap.add_argument("--gpu-block-s", type=float, default=3.0, help="seconds of steps per GPU block")
    ap.add_argument("--gpu-steps", type=int, default=0, help="override steps per GPU block")
    ap.add_argument("--gpu-on-cpu", action="store_true",
                    help="exercise the GPU part's code on CPU (a dry run; nothing is recorded)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    if args.device == "cpu":
        cpu_section(args)
    elif args.device == "cuda":
        gpu_section(args)
    else:  # each part in its own process: the CPU part installs fake NVML modules
        rest, skip = [], False
        for a in sys.argv[1:]:
            if skip or a.startswith("--device"):
                skip = a == "--device"  # its value follows as the next argument
                continue
            rest.append(a)
        for device in ("cpu", "cuda"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--device", device, *rest]
            code = subprocess.call(cmd)
            if code:
                sys.exit(code)


if __name__ == "__main__":
    main()
