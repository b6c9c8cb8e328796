"""The read-only NVML check of ``bench/gpu_checks.sh --quick``: what can be known on a GPU whose
settings must be left as they are (a lent machine's rule: leave the accelerator's settings as they
are).

* The power limit, its default and enforced values and its constraints, read through greentrack's
  own calls (``NvmlGpu.power_limit_mw``, ``power_limit_constraints_mw``), and
  ``calibration.check_limits`` against them: the constraints' own ends are accepted, a limit one
  watt beyond is refused in one line. **No limit is ever set**: ``nvmlDeviceSetPowerManagementLimit``
  is replaced in this process by a guard that raises, and greentrack's privilege probe (setting the
  limit in force, ``calibration.plan``) is not called. Whether this process could set a limit is
  reported from its credentials only (root, ``CAP_SYS_ADMIN``); the driver's answer is not probed.
  The calibration's curve, its restore paths and the privilege probe on a real driver need a
  machine where changing the limit is allowed: reported as pending.
* MIG mode, read; the MIG path (whole-GPU energy, labelled) needs a MIG-enabled GPU, and enabling
  MIG is a setting: pending unless MIG is already on.
* The cost of an instant-power field read (README: ~3 us), greentrack's 50 ms poll.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

CAP_SYS_ADMIN = 21
FIELD_POWER_INSTANT = 186
ALLOWED = ("needs a machine where changing the GPU power limit is allowed; this check only reads "
           "it (the lent GPU's settings are left as they are)")


class SetForbidden(RuntimeError):
    """Raised by the guard that stands in for nvmlDeviceSetPowerManagementLimit."""


def guard(nv: Any) -> list[tuple[Any, ...]]:
    """Replace the limit setter in ``nv`` (this process only) by one that records and raises."""
    attempts: list[tuple[Any, ...]] = []

    def refused(*args: Any) -> None:
        attempts.append(args)
        raise SetForbidden("the quick GPU check never sets a power limit")

    nv.nvmlDeviceSetPowerManagementLimit = refused
    return attempts


def may_set() -> tuple[bool, str]:
    """Whether this process's credentials would let NVML set a limit (root or CAP_SYS_ADMIN)."""
    cap = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                cap = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    admin = bool(cap >> CAP_SYS_ADMIN & 1)
    return os.geteuid() == 0 or admin, f"euid {os.geteuid()}, CAP_SYS_ADMIN {'yes' if admin else 'no'}"


def isolated(rows: Any, names: tuple[str, ...], fn: Any, *args: Any) -> None:
    """Run one part of a check; if it raises, its rows not yet reported get no figure and the
    error as detail (the summary says 'error' or 'info'), and the next part still runs."""
    try:
        fn(*args)
    except ModuleNotFoundError:
        raise  # the check's goals are skipped, naming the module
    except Exception as e:  # noqa: BLE001 - one failing read must not hide the others
        for name in names:
            if name not in rows.rows:
                rows.add(name, None, detail=f"failed: {type(e).__name__}: {e}")


def check(dev: Any, rows: Any) -> None:
    from greentrack.samplers._nvml import open_gpus

    nv, h = dev.nv, dev.handle
    attempts = guard(nv)
    gpus, notes = open_gpus((0,), env={}, pynvml=nv)
    gpu = gpus[0] if gpus else None
    why = f"greentrack opened no GPU: {[n.message for n in notes]}"
    limit: list[int] = []
    isolated(rows, ("power_limit", "limit_check"), _limits, nv, h, gpu, why, rows, limit)
    allowed, who = may_set()
    rows.add("limit_privilege", float(allowed),
             detail=f"{who}: the OS would {'let' if allowed else 'not let'} this process ask; "
                    "the driver's answer is not probed (no set call)")
    rows.add("calibration_curve", None, pending=ALLOWED)
    rows.add("calibration_privilege_probe", None,
             pending=ALLOWED + ": the probe sets the limit in force")
    mig = _mig(nv, h)
    rows.add("mig_mode", mig[0], detail=mig[1])
    rows.add("mig_whole_gpu", None, pending="needs a MIG-enabled GPU; enabling MIG is a setting, "
             "left as it is" + ("" if not mig[0] else " (MIG is on here: the other checks' "
                                "figures are the whole GPU's)"))
    isolated(rows, ("instant_read_wall",), _instant, nv, h, rows)
    if attempts or (gpu is not None and limit and gpu.power_limit_mw() != limit[0]):
        raise RuntimeError(f"the power limit was touched: {attempts}")


def _limits(nv: Any, h: Any, gpu: Any, why: str, rows: Any, limit: list[int]) -> None:
    """The limit and its constraints through greentrack's calls; calibration's range check."""
    from greentrack.process.calibration import check_limits
    from greentrack.common.errors import ConfigError

    if gpu is None:
        raise RuntimeError(why)
    t = time.perf_counter()
    limit.append(gpu.power_limit_mw())
    read_ms = (time.perf_counter() - t) * 1000
    lo, hi = gpu.power_limit_constraints_mw()
    extra = []
    for what, fn in (("default", "nvmlDeviceGetPowerManagementDefaultLimit"),
                     ("enforced", "nvmlDeviceGetEnforcedPowerLimit")):
        try:
            extra.append(f"{what} {getattr(nv, fn)(h) / 1000:g} W")
        except nv.NVMLError as e:
            extra.append(f"{what} n/a ({type(e).__name__})")
    rows.add("power_limit", limit[0] / 1000,
             detail=f"{', '.join(extra)}, constraints {lo / 1000:g}-{hi / 1000:g} W; read "
                    f"{read_ms:.3f} ms")
    ok = 0
    try:
        check_limits([gpu], (lo / 1000, hi / 1000))
        ok += 1
        inside = "the constraints' ends accepted"
    except ConfigError as e:
        inside = f"the constraints' ends refused: {e}"
    try:
        check_limits([gpu], (hi / 1000 + 1,))
        beyond = "1 W above the maximum accepted"
    except ConfigError as e:
        ok += "\n" not in str(e)
        beyond = f"1 W above refused: {e}"
    rows.add("limit_check", float(ok), detail=f"{inside}; {beyond}")


def _instant(nv: Any, h: Any, rows: Any) -> None:
    ms = []
    for _ in range(200):
        t = time.perf_counter()
        nv.nvmlDeviceGetFieldValues(h, [FIELD_POWER_INSTANT])
        ms.append((time.perf_counter() - t) * 1000)
    rows.add("instant_read_wall", c.median(ms) * 1000,
             detail=f"nvmlDeviceGetFieldValues(POWER_INSTANT): p99 {c.quantile(ms, 0.99) * 1000:.1f} us, "
                    f"n={len(ms)}")


def _mig(nv: Any, h: Any) -> tuple[float | None, str]:
    try:
        current, pending = nv.nvmlDeviceGetMigMode(h)
    except nv.NVMLError as e:
        return None, f"nvmlDeviceGetMigMode: {type(e).__name__} (no MIG on this GPU)"
    return float(current), f"current {current}, pending {pending}"
