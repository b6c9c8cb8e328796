"""Samplers: one contract (:mod:`.base`), one private module per backend, one factory.

>>> from greentrack.common.config import Config, launcher_int
>>> found = discover(Config())            # what this machine can measure, and how
>>> [ch.info.method for ch in found.channels]   # doctest: +SKIP
['nvml-energy-counter', 'rapl-powercap', 'rapl-powercap']
"""

from __future__ import annotations

import os
from types import ModuleType

from greentrack.common.config import Config, launcher_int
from greentrack.common.errors import ConfigError
from greentrack.samplers import _amdsmi, _gpushare, _nvml, _rapl
from greentrack.samplers._estimate import CpuEstimate, DramEstimate
from greentrack.samplers._share import ProcessShare
from greentrack.samplers.base import (Channel, ChannelEvent, ChannelInfo, Discovery, EventSource,
                                      Note, Point)

__all__ = ["Channel", "ChannelEvent", "ChannelInfo", "Discovery", "EventSource", "Note", "Point",
           "discover"]


def discover(config: Config, *, env: dict[str, str] | None = None, pid: int | None = None,
             pynvml: ModuleType | None = None, amdsmi: ModuleType | None = None,
             run_id: str | None = None) -> Discovery:
    """Open every channel this process should measure, with notes on what it cannot.

    GPUs come from NVML (NVIDIA; each counts this run's share while other processes use it, see
    :mod:`._gpushare`), else from amdsmi (AMD Instinct); CPU and DRAM from RAPL when readable,
    else from labelled estimates, and only when this process measures the host (see
    :attr:`Config.host_energy`).
    """

    env = dict(os.environ) if env is None else env
    pid = os.getpid() if pid is None else pid
    found = Discovery()
    gpus, notes = _open_gpus(config, env, pid, run_id, pynvml, amdsmi)
    found.channels.extend(gpus)
    found.notes.extend(notes)
    if not measures_host(config, env):
        found.notes.append(Note("info", "cpu", "host CPU and DRAM are measured by local rank 0 of "
                                "this node, not by this process (no double counting)"))
        return found
    zones, notes = _rapl.open_zones(env)
    found.notes.extend(notes)
    if config.mode == "process":
        found.channels.extend(ProcessShare(z, pid) for z in zones)
    else:
        found.channels.extend(zones)
    kinds = {z.info.kind for z in zones}
    if "cpu" not in kinds:
        found.channels.append(CpuEstimate(config.mode, pid, config.cpu_tdp_w))
        found.notes.append(Note("warning", "cpu", "CPU energy is ESTIMATED from TDP x utilization "
                                "(no readable RAPL package zone)", "see the RAPL note for how to enable "
                                "measurement; set cpu_tdp_w to override the TDP"))
    if "dram" not in kinds:
        found.channels.append(DramEstimate(config.mode, pid, config.dram_w_per_gb))
        found.notes.append(Note("info", "dram", "DRAM energy is ESTIMATED per GB (no readable RAPL "
                                "dram zone; AMD CPUs expose none)", "set dram_w_per_gb to override "
                                "the 0.3725 W/GB default"))
    return found


def _open_gpus(config: Config, env: dict[str, str], pid: int, run_id: str | None,
               pynvml: ModuleType | None, amdsmi: ModuleType | None) -> tuple[list[Channel], list[Note]]:
    """NVIDIA GPUs through NVML; where NVML finds none, AMD GPUs through amdsmi. A GPU named in
    ``config.gpus`` that neither finds raises NVML's :class:`ConfigError`."""

    try:
        nvidia, notes = _nvml.open_gpus(config.gpus, env=env, pynvml=pynvml)
    except ConfigError:
        amd, _ = _amdsmi.open_gpus(config.gpus, env=env, amdsmi=amdsmi)
        if amd:
            return list(amd), []
        raise
    if nvidia:
        return _gpushare.share_gpus(nvidia, pid, run_id), notes
    amd, amd_notes = _amdsmi.open_gpus(config.gpus, env=env, amdsmi=amdsmi)
    if amd:
        return list(amd), amd_notes
    return [], notes + amd_notes


def measures_host(config: Config, env: dict[str, str]) -> bool:
    """Whether this process measures host CPU/DRAM: one process per node does (local rank 0)."""
    if config.host_energy is not None:
        return config.host_energy
    return launcher_int("LOCAL_RANK", 0, env) == 0
