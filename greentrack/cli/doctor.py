"""``greentrack doctor``: what this machine can measure, how, and how to unlock the rest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from greentrack.common.config import Config
from greentrack.samplers import _rapl, discover
from greentrack.samplers._amdsmi import import_amdsmi, lib_version


def in_container() -> bool:
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    try:
        return any(k in Path("/proc/1/cgroup").read_text() for k in ("docker", "kubepods", "containerd"))
    except OSError:
        return False


def diagnose(config: Config | None = None) -> dict[str, Any]:
    """Open every channel once (as a tracker would), describe it, and close it again."""

    config = config or Config.from_env()
    found = discover(config)
    devices = [ch.info.as_dict() for ch in found.channels]
    for ch in found.channels:
        ch.close()
    return {
        "devices": devices,
        "notes": [n.__dict__ for n in found.notes],
        "powercap_root": str(_rapl.powercap_root()),
        "container": in_container(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "hip_visible_devices": os.environ.get("HIP_VISIBLE_DEVICES"),
        "rocr_visible_devices": os.environ.get("ROCR_VISIBLE_DEVICES"),
        "amdsmi": _amdsmi_version(devices),
        "mode": config.mode,
    }


def _amdsmi_version(devices: list[dict[str, Any]]) -> str | None:
    """AMD SMI's library version, when an AMD GPU was opened (the library is loaded then)."""
    if not any(str(d["method"]).startswith("amdsmi") for d in devices):
        return None
    module, _ = import_amdsmi()
    return lib_version(module) if module is not None else None


def format_diagnosis(d: dict[str, Any]) -> str:
    lines = ["greentrack doctor: what this machine can measure", ""]
    for dev in d["devices"]:
        tag = "measured " if dev["measured"] else "ESTIMATED"
        lines.append(f"  {dev['kind']:<4} {dev['device']:<13} {tag} {dev['method']}")
        lines.append(f"       {dev['name']}: {dev['source']}")
        lines.append(f"       quality band: {dev['uncertainty']}")
    if not any(dev["kind"] == "gpu" for dev in d["devices"]):
        lines.append("  gpu  (none)         no GPU measured: NVIDIA through NVML, AMD through "
                     "amdsmi (see below)")
    lines.append("")
    for n in d["notes"]:
        lines.append(f"  [{n['level']}] {n['message']}")
        if n["hint"]:
            lines.append(f"      how to fix: {n['hint']}")
    if d["container"]:
        lines.append("  [info] running in a container: powercap and NVML come from the host only if "
                     "mounted/passed through (GREENTRACK_POWERCAP_ROOT, --gpus)")
    visible = [f"{name.upper()}={d[name]}" for name in
               ("cuda_visible_devices", "hip_visible_devices", "rocr_visible_devices")
               if d.get(name) is not None]
    if visible:
        lines.append(f"  visible devices: {' '.join(visible)}")
    if d.get("amdsmi"):
        lines.append(f"  AMD SMI library: {d['amdsmi']}")
    lines.append(f"  powercap root: {d['powercap_root']}   mode: {d['mode']}")
    return "\n".join(lines)
