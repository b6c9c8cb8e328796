"""The trackers compared by the overhead benchmark, each as a :class:`Variant`: how it starts for a
block, what it does around every step, how it stops, and what it reported (for the table)."""

from __future__ import annotations

import io
import logging
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import (
    AbstractContextManager,
    contextmanager,
    nullcontext,
    redirect_stderr,
)
from pathlib import Path
from typing import Any

from _common import EnvPatch
from _workloads import Workload


class Variant:
    """One way of running the loop. ``step()`` gives the context manager put around every step."""

    def __init__(self, name: str, step: Callable[[], AbstractContextManager[Any]],
                 open: Callable[[], None] | None = None, close: Callable[[], str] | None = None,
                 prepare: Callable[[], None] | None = None, note: str = "") -> None:
        self.name, self._step, self.note = name, step, note
        self._open, self._close, self._prepare = open, close, prepare

    def prepare(self) -> None:
        """One-time setup before the rounds (imports, first-use hardware detection)."""
        if self._prepare is not None:
            self._prepare()

    def open(self) -> None:
        if self._open is not None:
            self._open()

    def step(self) -> AbstractContextManager[Any]:
        return self._step()

    def close(self) -> None:
        if self._close is not None:
            self.note = self._close()


@contextmanager
def _pynvml_as(module: Any) -> Iterator[None]:
    saved = sys.modules.get("pynvml")
    if module is not None:
        sys.modules["pynvml"] = module
    try:
        yield
    finally:
        if module is not None and saved is not None:
            sys.modules["pynvml"] = saved


def greentrack_variant(name: str, work: Workload, pynvml: Any, env: dict[str, str],
                       prometheus: bool) -> Variant:
    """greentrack in full: a Tracker per block, every step attributed. ``pynvml``: the module its
    NVML sampler imports (a fake, the real one, or None for whatever is installed)."""
    from greentrack.process.tracker import Tracker

    logging.getLogger("greentrack").setLevel(logging.ERROR)  # its start-up notes, once per block
    state: dict[str, Any] = {}

    def open_() -> None:
        state["dir"] = tempfile.mkdtemp(prefix="gt-overhead-run-")
        settings: dict[str, Any] = {"prometheus_port": 0} if prometheus else {}
        # quiet: the endpoint prints its URL on every start
        with EnvPatch(**env), _pynvml_as(pynvml), redirect_stderr(io.StringIO()):
            tracker = Tracker(state["dir"], **settings).start()
        state["tracker"] = tracker
        if work.gpu_part:  # device "cpu" (a dry run) gives host marks through the same calls
            from greentrack.training.stepmarks import StepMarks
            state["marks"] = StepMarks(tracker, device=work.device)

    def step() -> AbstractContextManager[Any]:
        if "marks" not in state:
            return state["tracker"].step(samples=work.batch)
        return _marked(state["marks"], work.batch)

    def close() -> str:
        tracker, marks = state.pop("tracker"), state.pop("marks", None)
        if marks is not None:
            marks.drain()
        tracker.stop()
        engine = tracker.engine
        methods = sorted({st.channel.info.method for st in engine.states})
        shutil.rmtree(state.pop("dir"), ignore_errors=True)
        sinks = " + Prometheus endpoint" if tracker.sinks else ""
        return (f"{', '.join(methods)}{sinks}; per step: yes, {engine.steps_done} steps "
                "attributed in the last block")

    return Variant(name, step, open_, close)


@contextmanager
def _marked(marks: Any, batch: int) -> Iterator[None]:
    marks.begin("train")
    yield
    marks.end(samples=batch)


def codecarbon_variants(work: Workload) -> list[Variant]:
    """codecarbon offline (no network): around the whole block, and in task mode per step."""
    from codecarbon import OfflineEmissionsTracker

    def make() -> Any:
        return OfflineEmissionsTracker(country_iso_code="FRA", save_to_file=False,
                                       log_level="error", allow_multiple_runs=True)

    def describe(tracker: Any) -> str:
        hw = [f"{type(h).__name__}" + (f" ({h._mode})" if getattr(h, "_mode", None) else "")
              for h in getattr(tracker, "_hardware", [])]
        return ", ".join(hw)

    def prepare() -> None:  # hardware detection on first use takes seconds: not part of a block
        t = make()
        t.start()
        t.stop()

    block: dict[str, Any] = {}

    def open_block() -> None:
        block["t"] = make()
        block["t"].start()

    def close_block() -> str:
        t = block.pop("t")
        t.stop()
        return f"{describe(t)}; per step: nothing (one total per run)"

    task: dict[str, Any] = {}

    def open_task() -> None:
        task["t"] = make()
        task["n"] = 0

    @contextmanager
    def per_task() -> Iterator[None]:
        t = task["t"]
        t.start_task(f"step{task['n']}")
        yield
        t.stop_task()
        task["n"] += 1

    def close_task() -> str:
        t = task.pop("t")
        n = sum(1 for x in t._tasks.values() if x.emissions_data is not None)
        return f"{describe(t)}; per step: yes (task energy), {n} tasks in the last block"

    return [Variant("codecarbon (started around the block)", nullcontext, open_block, close_block,
                    prepare),
            Variant("codecarbon task mode (start_task/stop_task per step)", per_task, open_task,
                    close_task)]


def zeus_variant(name: str, rapl_dir: Path | None, gpus: list[int], sync: bool) -> Variant:
    """Zeus: one ``ZeusMonitor`` for the whole benchmark (as its docs advise), a measurement window
    around every step. ``rapl_dir``: where it reads RAPL (None: the host's own)."""
    state: dict[str, Any] = {"n": 0, "zero": 0, "windows": 0}

    def prepare() -> None:
        if rapl_dir is not None:
            import zeus.device.cpu.rapl as zeus_rapl
            zeus_rapl.RAPL_DIR = str(rapl_dir)
            zeus_rapl.rapl_is_available.cache_clear()
        from zeus.monitor import ZeusMonitor
        logging.getLogger("zeus").setLevel(logging.ERROR)
        # Zeus warns on every window shorter than the 100 ms counter update: counted, not printed
        warnings.filterwarnings("ignore", message="The energy consumption of one or more GPUs")
        monitor = ZeusMonitor(gpu_indices=gpus)
        monitor.begin_window("warm-up", sync_execution=sync)
        monitor.end_window("warm-up", sync_execution=sync)
        time.sleep(3.0)  # its RAPL wrap-around pollers are spawned processes: let them start
        state["monitor"] = monitor
        cpus = list(monitor.cpu_indices)
        state["what"] = (f"GPUs {monitor.gpu_indices} by NVML counter" if monitor.gpu_indices
                         else "no GPU") + (f", CPU packages {cpus} by RAPL" if cpus else ", no CPU")

    @contextmanager
    def window() -> Iterator[None]:
        monitor = state["monitor"]
        key = f"step{state['n']}"
        monitor.begin_window(key, sync_execution=sync)
        yield
        m = monitor.end_window(key, sync_execution=sync)
        state["n"] += 1
        state["windows"] += 1
        state["zero"] += bool(m.gpu_energy) and not any(m.gpu_energy.values())

    def close() -> str:
        zero = (f" ({state['zero']} of {state['windows']} windows got 0 J on the GPU: shorter "
                "than the 100 ms counter update)" if state["zero"] else "")
        state["zero"] = state["windows"] = 0
        return (f"{state['what']}, read on the training thread at both window edges"
                f"{' after a CUDA synchronize' if sync else ''}; per step: yes{zero}")

    return Variant(name, window, None, close, prepare)
