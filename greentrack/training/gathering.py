"""A whole job's totals on global rank 0, through the job's own ``torch.distributed`` group.

Without a shared filesystem each node's stores stay in its own copy of the run directory, so rank
0 alone cannot read the job. At the end of a stage every rank sends rank 0 a :class:`NodePart`
through ``torch.distributed.gather_object`` on the default process group (no other transport, no
file shared): compact copies of the stores it wrote and, on a node's local rank 0, of every store
in its run directory (earlier segments included); a few kilobytes each
(:func:`greentrack.store.compact_store`: meta, channel totals, events, one step row per phase). Rank
0 reads its own directory and the parts as one run (:meth:`greentrack.run.Run.open`): a store
found twice (a node's own, a shared directory) counts once; host CPU/DRAM are one device per host,
GPUs one per UUID. The result is what ``greentrack merge`` of the node directories gives.

Never a hang or an error in training:

* every rank calls the collective exactly once per stage end, tracked or not (a rank without a
  tracker sends ``tracked=False``); building the part never raises (a failure is sent as text);
* nothing here runs on the exception path (a failed rank may never reach it);
* a collective that fails (a timeout of the process group, a lost peer) is a warning on every
  rank; rank 0 then reads what it has;
* no temporary directory (``TMPDIR`` removed under the job, a full disk) is a failure sent as
  text by the rank that met it, and on rank 0 a gap: rank 0 then reads its own directory;
* what is missing (a rank without a tracker, a node whose directory could not be read, a failed
  gather) is a ``gather-gap`` event in rank 0's store and a warning in the totals.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greentrack.common.errors import ConfigError
from greentrack.run import Run, RunTotals
from greentrack.store import StoreReader, append_event, compact_store, host_identity, store_paths

log = logging.getLogger("greentrack")
#: The event that says part of the job is missing from rank 0's totals.
GAP_EVENT = "gather-gap"


@dataclass(frozen=True)
class NodePart:
    """What one rank sends rank 0: who it is, whether it tracked, compact stores
    (``(file name, bytes)``) and what went wrong reading them."""

    rank: int
    host: str
    boot_id: str
    tracked: bool
    stores: list[tuple[str, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def node_part(run_dir: Path | None, own: list[Path], *, rank: int, local_zero: bool,
              tracked: bool, main_host: tuple[str, str] | None = None) -> NodePart:
    """This rank's part: compact copies of its own stores ``own`` and, on local rank 0, of every
    store in ``run_dir``. ``main_host``: rank 0's ``(host, boot id)`` where known (the
    integrations broadcast it with the run directory): a rank on that host writes into the very
    directory rank 0 reads, so it sends no store. Never raises (a failure is in ``errors``)."""

    host, boot = host_identity()
    stores: list[tuple[str, bytes]] = []
    errors: list[str] = []
    if main_host is not None and (host, boot) == tuple(main_host):
        return NodePart(rank, host, boot, tracked, stores, errors)
    paths = list(own)
    if local_zero and run_dir is not None:
        try:
            if run_dir.is_dir() or tracked:  # no directory, no tracker: nothing recorded here
                paths += [p for p in store_paths(run_dir) if p not in paths]
        except Exception as e:  # noqa: BLE001 - a ConfigError (no store) or an OSError
            if tracked or paths:
                errors.append(f"{run_dir}: {e}")
    tmp: Path | None = None
    try:
        if paths:  # a temporary directory that cannot be made (TMPDIR gone, disk full) is an error
            tmp = Path(tempfile.mkdtemp(prefix="greentrack-part-"))  # sent, never raised
        for i, path in enumerate(paths):
            assert tmp is not None
            try:
                reader = StoreReader(path)
                try:
                    compact_store(reader, tmp / f"{i}.gtdb")
                finally:
                    reader.close()
                stores.append((path.name, (tmp / f"{i}.gtdb").read_bytes()))
            except Exception as e:  # noqa: BLE001 - sent as text, never raised into training
                errors.append(f"{path.name}: {type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return NodePart(rank, host, boot, tracked, stores, errors)


#: How long the gather's caller lets go of the GIL after it (:func:`torch_gather`), once a job.
GATHER_SETTLE_S = 0.2


def torch_gather(part: NodePart) -> list[NodePart] | None:
    """``torch.distributed.gather_object`` of every rank's part to global rank 0 on the default
    process group (the list on rank 0, None elsewhere). Every rank must call it; it is only as
    bounded as the group's timeout (``init_process_group(timeout=...)``)."""
    import torch.distributed as dist
    main = dist.get_rank() == 0
    out: list[Any] | None = [None] * dist.get_world_size() if main else None
    dist.gather_object(part, out, dst=0)
    # The GIL let go for a moment: gloo's worker thread frees the gather's work after wait()
    # returns, and freeing its Python-made tensors takes the GIL. A job that then ends at once
    # joined that thread from ~ProcessGroupGloo holding the GIL: a hang in CI (both stacks seen
    # with py-spy: the worker in ~AsyncGatherWork waiting for the GIL, the main thread in
    # std::thread::join), or at the interpreter's exit "terminate called without an active
    # exception" (see https://github.com/pytorch/pytorch/pull/179291).
    time.sleep(GATHER_SETTLE_S)
    return [p for p in out if isinstance(p, NodePart)] if out is not None else None


def distributed() -> bool:
    """True when ``torch.distributed`` is initialized with more than one rank (torch imported
    only if the program already did)."""
    import sys
    if "torch" not in sys.modules:
        return False
    try:
        import torch.distributed as dist
        return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
    except Exception:  # noqa: BLE001
        return False


def job_totals(run_dir: Path, part: NodePart, *, main: bool, store: Path | None,
               gather: Callable[[NodePart], list[NodePart] | None] = torch_gather,
               world_size: int | None = None,
               with_dirs: Callable[[list[Path]], None] | None = None) -> RunTotals | None:
    """Gather every rank's ``part`` (``gather``: every rank calls this once) and, on rank 0
    (``main``), return the job's totals (``greentrack summary --json`` with ``phase_energy_j``)
    over ``run_dir`` and the parts; None on the other ranks, or if nothing can be read. Gaps are
    recorded in ``store`` (rank 0's, closed) as ``gather-gap`` events. ``with_dirs`` (rank 0):
    called with the directories read (``run_dir`` and the other nodes' stores, unpacked) while
    they exist, e.g. to append the whole job's ``emissions.csv`` row. Never raises."""
    failure = None
    parts: list[NodePart] | None = None
    try:
        parts = gather(part)
    except Exception as e:  # noqa: BLE001 - a failed collective never fails training
        failure = f"{type(e).__name__}: {e}"
        log.warning("greentrack: could not gather the other nodes' totals (training goes on): %s",
                    failure)
    if not main:
        return None
    got = parts if parts is not None else [part]
    tmp: Path | None = None
    unpack = None
    if any(p.stores for p in got):
        try:  # TMPDIR removed under the job, a full disk: rank 0 reads its own directory
            tmp = Path(tempfile.mkdtemp(prefix="greentrack-gather-"))
        except OSError as e:  # named by its directory (a temporary name is filtered out below)
            unpack = f"{type(e).__name__}: {e.strerror or e} in {tempfile.gettempdir()}"
    gaps = _gaps(got, failure, world_size, unpack)
    for message in gaps:
        log.warning("greentrack: %s", message)
        if store is not None:
            try:
                append_event(store, "warning", GAP_EVENT, message)
            except Exception as e:  # noqa: BLE001
                log.warning("greentrack: could not record it in %s: %s", store.name, e)
    try:
        dirs = [run_dir] if _has_stores(run_dir) else []  # rank 0 untracked: the others' only
        for i, p in enumerate(got):
            if not p.stores or tmp is None:
                continue
            d = tmp / f"rank{p.rank}-{i}"
            d.mkdir()
            for name, data in p.stores:
                (d / Path(name).name).write_bytes(data)
            dirs.append(d)
        found = _read(dirs, run_dir, gaps if store is None else [])
        if with_dirs is not None:
            with_dirs(dirs or [run_dir])
        return found
    except Exception as e:  # noqa: BLE001 - the totals are a convenience: every store is kept
        log.warning("greentrack: could not read the job's totals: %s", e)
        return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _gaps(parts: list[NodePart], failure: str | None, world_size: int | None,
          unpack: str | None = None) -> list[str]:
    out = []
    if failure is not None:
        out.append(f"the gather of every node's totals failed ({failure}): the totals cover "
                   "only this node's directory")
    elif world_size is not None and len(parts) < world_size:
        out.append(f"{world_size - len(parts)} rank(s) sent nothing: the totals miss them")
    if unpack is not None:
        out.append(f"the other nodes' stores could not be unpacked on rank 0 ({unpack}): the "
                   "totals cover only this node's directory")
    for p in sorted(parts, key=lambda p: p.rank):
        if not p.tracked:
            out.append(f"rank {p.rank} on {p.host} had no tracker: its devices are not in the "
                       "totals unless another rank of its node measured them")
        out.extend(f"rank {p.rank} on {p.host}: a store could not be sent ({e})" for e in p.errors)
    return out


def _has_stores(run_dir: Path) -> bool:
    try:
        return bool(store_paths(run_dir))
    except Exception:  # noqa: BLE001 - a ConfigError: missing, not a directory, no store
        return False


def _read(dirs: list[Path], run_dir: Path, gaps: list[str]) -> RunTotals:
    try:
        run = Run.open(dirs, note_copies=False)
    except ConfigError as e:  # another run's stores in a node's directory: this node's alone
        if len(dirs) == 1 or dirs[0] != run_dir:
            raise
        gaps = [*gaps, f"the nodes' stores could not be read as one run ({e}): the totals cover "
                       "only this node's directory"]
        log.warning("greentrack: %s", gaps[-1])
        run = Run.open(run_dir)
    with run:
        out = run.summary_by_phase()
    out["run_dir"], out["run_dirs"] = str(run_dir), [str(run_dir)]
    out["warnings"] = [w for w in out["warnings"] if "greentrack-gather-" not in w] + gaps
    return out


__all__ = ["GAP_EVENT", "NodePart", "distributed", "job_totals", "node_part", "torch_gather"]
