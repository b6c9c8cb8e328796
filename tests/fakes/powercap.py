"""A powercap (RAPL) directory tree that behaves like /sys/class/powercap.

* Same layout and files (``name``, ``energy_uj``, ``max_energy_range_uj``), subzones included.
* Counters wrap at ``max_energy_range_uj`` like the hardware's.
* Reads can be denied for real (mode 000; as root the reading process must drop
  CAP_DAC_OVERRIDE, see :func:`deny_caps_prefix`), and zones can disappear.
* :class:`LiveCounters` advances the counters in real time at known watts from a separate
  process, so a test knows exactly how many joules the host "used".

Counter values are written in place with one fixed-width ``pwrite`` (a reader holding the file
open, as greentrack does, sees each update, never a torn value).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

WIDTH = 20


class PowercapTree:
    def __init__(self, root: Path, packages: int = 1, dram: bool = True, core: bool = True,
                 range_uj: int = 262_143_328_850, psys: bool = False) -> None:
        self.root = Path(root)
        self.range_uj = range_uj
        self.zones: dict[str, Path] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        for p in range(packages):
            self._zone(f"intel-rapl:{p}", f"package-{p}")
            if core:
                self._zone(f"intel-rapl:{p}:0", "core")
            if dram:
                self._zone(f"intel-rapl:{p}:1", "dram")
        if psys:
            self._zone(f"intel-rapl:{packages}", "psys")
        # the real tree also has a control-type directory and mmio mirrors
        (self.root / "intel-rapl").mkdir(exist_ok=True)
        (self.root / "intel-rapl" / "enabled").write_text("1\n")

    def _zone(self, dirname: str, name: str) -> None:
        d = self.root / dirname
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text(name + "\n")
        (d / "max_energy_range_uj").write_text(f"{self.range_uj}\n")
        (d / "energy_uj").write_text("0".rjust(WIDTH) + "\n")
        self.zones[dirname] = d

    @property
    def env(self) -> dict[str, str]:
        return {"GREENTRACK_POWERCAP_ROOT": str(self.root)}

    def read(self, zone: str) -> int:
        return int((self.zones[zone] / "energy_uj").read_text())

    def set(self, zone: str, uj: int) -> None:
        fd = os.open(self.zones[zone] / "energy_uj", os.O_WRONLY)
        try:
            os.pwrite(fd, (str(int(uj) % (self.range_uj + 1)).rjust(WIDTH) + "\n").encode(), 0)
        finally:
            os.close(fd)

    def advance(self, zone: str, joules: float) -> None:
        """Add energy, wrapping at the range as the hardware counter does."""
        self.set(zone, (self.read(zone) + int(round(joules * 1e6))) % self.range_uj)

    def deny(self, zone: str) -> None:
        os.chmod(self.zones[zone] / "energy_uj", 0o000)

    def remove(self, zone: str) -> None:
        shutil.rmtree(self.zones[zone])


def deny_caps_prefix() -> list[str]:
    """Command prefix that makes a root process honour file permissions (drops DAC override),
    so a mode-000 ``energy_uj`` is refused as it is for a normal user. Empty when not root."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


class LiveCounters:
    """Advance zones at constant watts in real time, from a separate process."""

    def __init__(self, tree: PowercapTree, watts: dict[str, float], period_s: float = 0.005) -> None:
        self.tree, self.watts, self.period_s = tree, watts, period_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.t0: float | None = None

    def __enter__(self) -> "LiveCounters":
        spec = {"root": str(self.tree.root), "range_uj": self.tree.range_uj,
                "watts": self.watts, "period_s": self.period_s}
        self.proc = subprocess.Popen([sys.executable, __file__, json.dumps(spec)],
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.t0 = float(self.proc.stdout.readline())  # the writer's start, on the monotonic clock
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)

    def expected_j(self, zone: str, t_start: float, t_end: float) -> float:
        """Energy the zone received between two monotonic times (clock shared across processes)."""
        return self.watts[zone] * (t_end - t_start)


def _writer(spec: dict) -> None:  # runs in the child process
    root, rng, period = Path(spec["root"]), int(spec["range_uj"]), float(spec["period_s"])
    fds = {z: os.open(root / z / "energy_uj", os.O_WRONLY) for z in spec["watts"]}
    start = {z: int((root / z / "energy_uj").read_text()) for z in spec["watts"]}
    # Real counters advance with the hardware, whatever the host's load; a writer the scheduler
    # leaves out for 100 ms on a loaded host would hold the counter back (a test then saw 13% too
    # few joules). It sleeps 5 ms between writes, so first in line costs the others little.
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (OSError, AttributeError):  # not root: the best a normal process can ask
        try:
            os.nice(-10)
        except OSError:
            pass
    t0 = time.monotonic()
    print(t0, flush=True)
    while True:
        dt = time.monotonic() - t0
        for z, fd in fds.items():
            uj = (start[z] + int(spec["watts"][z] * dt * 1e6)) % rng
            os.pwrite(fd, (str(uj).rjust(WIDTH) + "\n").encode(), 0)
        time.sleep(period)


if __name__ == "__main__":
    _writer(json.loads(sys.argv[1]))
