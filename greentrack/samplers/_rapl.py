"""CPU packages and DRAM through Linux powercap (Intel RAPL; AMD Zen exposes package zones only).

Layout read (the same under ``GREENTRACK_POWERCAP_ROOT`` for a remounted host sysfs, or a test
tree)::

    <root>/intel-rapl:N/{name,energy_uj,max_energy_range_uj}     name = package-N  -> kind cpu
    <root>/intel-rapl:N:M/{name,energy_uj,max_energy_range_uj}   name = dram       -> kind dram

``core``/``uncore`` subzones are inside their package and ``psys`` covers the whole platform, so
they are skipped to avoid double counting; ``intel-rapl-mmio`` mirrors the package zone.

The counter wraps at ``max_energy_range_uj``; a wrap is detected as a decrease and the range added.
At 280 W a 32-bit range wraps in about 4 minutes, so at the default fast cadence (50 ms) no wrap can
be missed; a stall long enough to hide a full wrap is reported as a gap.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from pathlib import Path

from greentrack.common.errors import DeviceLost, PermissionDenied, SamplerError
from greentrack.samplers._quickread import QuickRead
from greentrack.samplers.base import QUALITY_HIGH, ChannelInfo, Note, Point

DEFAULT_ROOT = "/sys/class/powercap"
#: Generous upper bound of one zone's power, to tell when a stall may have hidden a full wrap.
MAX_ZONE_POWER_W = 1000.0
_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")

PERMISSION_HINT = (
    "energy_uj is readable by root only since CVE-2020-8694 (kernel 5.10+). Grant read access: "
    "`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj` "
    "(until reboot), or a udev rule / systemd-tmpfiles entry doing the same, or run as root. In a "
    "container, mount the host's /sys/class/powercap and point GREENTRACK_POWERCAP_ROOT at it."
)


def powercap_root(env: Mapping[str, str] | None = None) -> Path:
    source = os.environ if env is None else env
    return Path(source.get("GREENTRACK_POWERCAP_ROOT") or DEFAULT_ROOT)


class RaplZone:
    """One powercap zone read through an open file descriptor (``pread``, no re-open per read)."""

    def __init__(self, path: Path, kind: str, device: str, zone_name: str) -> None:
        self.path = path
        self._energy_path = path / "energy_uj"
        try:
            self.range_uj = int((path / "max_energy_range_uj").read_text().strip())
            self._fd = os.open(self._energy_path, os.O_RDONLY)
            self._reader = QuickRead(self._fd)
            first = self._read_uj()
        except PermissionError as e:
            raise PermissionDenied(f"{self._energy_path}: permission denied", PERMISSION_HINT) from e
        except (OSError, ValueError) as e:
            raise SamplerError(f"{path}: unreadable powercap zone ({e})") from e
        if self.range_uj <= 0:
            raise SamplerError(f"{path}: max_energy_range_uj={self.range_uj} is not a counter range")
        self._prev_uj = first
        self._prev_t: float | None = None
        self._energy_j = 0.0
        self._last_power: float | None = None
        self.wraps = 0
        self.info = ChannelInfo(
            kind="cpu" if kind == "cpu" else "dram", device=device, name=zone_name,
            method="rapl-powercap", measured=True,
            source=f"Linux powercap {path.name}/energy_uj (RAPL)",
            uncertainty=f"{QUALITY_HIGH}: RAPL is a model-based on-chip estimate validated "
                        "within a few percent of wall-plug measurements (package + DRAM only)",
            host_scope=True,
            details={"zone": path.name, "max_energy_range_uj": self.range_uj,
                     "root": str(path.parent)})

    def _read_uj(self) -> int:
        try:
            raw = self._reader.pread(64, 0)  # the GIL kept: a read the kernel answers at once
        except PermissionError as e:
            raise PermissionDenied(f"{self._energy_path}: permission denied", PERMISSION_HINT) from e
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT, errno.EBADF, errno.ENXIO):
                raise DeviceLost(f"{self._energy_path}: zone disappeared ({e.strerror})") from e
            raise SamplerError(f"{self._energy_path}: {e}") from e
        try:
            return int(raw.strip())
        except ValueError as e:
            raise SamplerError(f"{self._energy_path}: not a counter value {raw!r}") from e

    def poll(self, t: float, slow: bool) -> list[Point]:
        uj = self._read_uj()
        delta = uj - self._prev_uj
        if delta < 0:
            delta += self.range_uj
            self.wraps += 1
        self._prev_uj = uj
        prev_t, self._prev_t = self._prev_t, t
        if prev_t is None:
            return [(t, 0.0)]
        dt = t - prev_t
        self._energy_j += delta / 1e6
        if dt > 0:
            self._last_power = delta / 1e6 / dt
        if dt > self.range_uj / 1e6 / MAX_ZONE_POWER_W:
            raise _PossibleMissedWrap(
                f"{self.path.name}: {dt:.2f} s between reads is longer than the shortest wrap "
                f"time of this counter; a full wrap may have been missed", [(t, self._energy_j)])
        return [(t, self._energy_j)]

    def power_w(self) -> float | None:
        return self._last_power

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


class _PossibleMissedWrap(SamplerError):
    def __init__(self, message: str, points: list[Point]) -> None:
        super().__init__(message)
        self.points = points


def open_zones(env: dict[str, str] | None = None) -> tuple[list[RaplZone], list[Note]]:
    """Package and DRAM zones under the powercap root. A missing tree or a denied read is a note,
    and the caller falls back to an estimate for that kind."""
    root = powercap_root(env)
    if not root.is_dir():
        return [], [Note("info", "cpu", f"no powercap tree at {root}: CPU and DRAM energy will be "
                         "estimated", "on Linux with Intel/AMD CPUs load intel_rapl_common; in a "
                         "container mount the host's /sys/class/powercap and set GREENTRACK_POWERCAP_ROOT")]
    zones: list[RaplZone] = []
    notes: list[Note] = []
    for entry in sorted(root.iterdir(), key=lambda p: _sort_key(p.name)):
        m = _ZONE.match(entry.name)
        if not m:
            continue
        try:
            zone_name = (entry / "name").read_text().strip()
        except OSError:
            continue
        package = int(m.group(1))
        if m.group(2) is None and zone_name.startswith("package"):
            kind, device = "cpu", f"package-{package}"
        elif m.group(2) is not None and zone_name == "dram":
            kind, device = "dram", f"dram-{package}"
        else:
            continue
        try:
            zones.append(RaplZone(entry, kind, device, zone_name))
        except PermissionDenied as e:
            notes.append(Note("warning", kind, f"RAPL {entry.name} ({zone_name}): {e}", e.hint))
        except SamplerError as e:
            notes.append(Note("warning", kind, f"RAPL {entry.name} ({zone_name}): {e}", ""))
    if not zones and not notes:
        notes.append(Note("info", "cpu", f"no RAPL package zone under {root}: CPU and DRAM energy "
                          "will be estimated", "load the intel_rapl_common kernel module"))
    return zones, notes


def _sort_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))
