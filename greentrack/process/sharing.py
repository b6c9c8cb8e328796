"""Runs that meet on one machine: found by leases (:mod:`greentrack.common.leases`), never guessed.

* :class:`HostWatch`: every tracker that measures the host's CPU/DRAM or a GPU holds a host lease
  saying which (``host_scope``, ``gpus``): a shared GPU's sampler tells other trackers from untracked
  processes by it. For the host: this run measures the host's CPU/DRAM. In ``machine`` mode, another run doing
  the same at the same time means both count the whole host: both runs record a ``host-shared``
  event naming the other, and every summary and report repeats it with the fix (``--mode
  process``). Checked at start and about once a second on the sampler thread.
* :class:`DeviceOwners`: within one run, one tracker counts a device at a time (trackers of one
  run on several threads, processes without a rank, containers sharing the run directory): each
  device a tracker counts whole takes an exclusive ``flock`` in the run directory; a tracker that
  finds it held keeps that device handed over (the engine's hand-over: not counted) until the
  lock frees, then counts it from then on. The host's process-mode channel counts one process
  tree's share: it is one per process (its lock names the pid). A GPU has one owner per run,
  also when shared: the owner's share counts the run's other processes on it, which do not list
  the GPU in their lease (:mod:`greentrack.samplers._gpushare`).
* :class:`JoinWatch` and :func:`join_parent`: a tracker started inside ``greentrack run`` (which
  exports ``GREENTRACK_PARENT_RUN_DIR``) joins the parent's run instead of starting a second
  measurement of the same machine. It takes a join lease listing its devices and waits (up to
  :data:`JOIN_ACK_S`) until the parent has stopped counting them; the parent counts them again
  when the lease ends (the tracker stopped, or its process died). Each device is then counted by
  exactly one process at a time, with at most one poll (~50 ms) uncounted at each hand-over.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from greentrack.common.leases import Lease, host_lease_dir, is_held, live_leases
from greentrack.common.once import warn_once
from greentrack.engine.channelstate import channel_key
from greentrack.exporters._joined import measured_spans
from greentrack.samplers._share import ProcessShare
from greentrack.store.layout import JOIN_DIR

log = logging.getLogger("greentrack")

PARENT_ENV = "GREENTRACK_PARENT_RUN_DIR"
TOKEN_ENV = "GREENTRACK_PARENT_TOKEN"  # which tracker of that run answers joins: the parent's
#: How long a joining tracker waits for the parent to stop counting its devices.
JOIN_ACK_S = 2.0
#: How often the host leases are scanned, and held join leases probed (a dead child's lease).
SCAN_EVERY_S = 1.0
#: How often the lease directory's mtime is looked at between scans: a run that lives longer than
#: this inside ours is seen (a stat at every fast poll cost the sampler a system call, and the
#: training thread a GIL hand-over, 20 times a second; issue 25).
STAT_EVERY_S = 0.2
#: How often the host leases are scanned when the directory's mtime has not changed: a lease is
#: written before it is renamed into place and never rewritten, so every lease that comes or goes
#: changes the mtime, and the scan that follows sees it; this sweep only removes stale leases of
#: processes that died (a scan each SCAN_EVERY_S cost the sampler 15-20 system calls a second,
#: each a GIL hand-over for a Python-bound training thread; issue 25).
SWEEP_S = 30.0
#: The kernel dates a directory's mtime with a coarse clock (a tick: 1-10 ms): a lease that comes
#: within the tick of the change last seen leaves the mtime as it was, so while the mtime seen is
#: this recent, the next look scans again.
FRESH_NS = 50_000_000
MAX_REPORTED = 8  # other runs named per run: bounded
MAX_LEASE_GPUS = 16  # GPU UUIDs listed in a lease (it is read up to 4 KiB)

_SAFE = re.compile(r"[^A-Za-z0-9._/-]")


def _label(value: Any, limit: int = 64) -> str:
    return _SAFE.sub("_", str(value))[:limit]


class HostWatch:
    """Holds this run's host lease and reports other runs measuring the host at the same time."""

    def __init__(self, engine: Any, record: dict[str, Any]) -> None:
        self.engine = engine
        self.record = record
        self.lease = Lease(host_lease_dir(), record, shared=True)
        self.seen: dict[str, dict[str, Any]] = {}
        self._next = self._next_stat = 0.0
        self._mtime = -1
        self._fresh = False
        self.check(time.monotonic())

    def __call__(self, now: float) -> None:
        # A lease that came or went changes the directory's mtime: a stat every STAT_EVERY_S,
        # and a scan when it changed, see a run that lives longer than that inside this one; the
        # sweep each SWEEP_S removes stale leases.
        if now < self._next_stat and now < self._next:
            return
        self._next_stat = now + STAT_EVERY_S
        try:
            mtime = os.stat(self.lease.directory).st_mtime_ns
        except OSError:
            mtime = self._mtime
        if now >= self._next or mtime != self._mtime or self._fresh:
            self._next = now + SWEEP_S
            self._mtime = mtime
            self._fresh = time.time_ns() - mtime < FRESH_NS
            self.check(now)

    def check(self, now: float) -> None:
        if self.record.get("host_scope") is False:
            return  # this process measures no host figure: nothing to overlap
        for other in self.lease.others():
            if other.get("host_scope") is False:
                continue  # a tracker of GPUs only (another rank): it does not count the host
            run_id = _label(other.get("run_id"))
            if other.get("run_id") == self.record["run_id"] or run_id in self.seen:
                continue  # the same run (a joined tracker, another rank of it): not a double count
            if len(self.seen) >= MAX_REPORTED:
                return
            self.seen[run_id] = other
            self._report(run_id, other)

    def _report(self, run_id: str, other: dict[str, Any]) -> None:
        mine, theirs = self.record.get("mode"), _label(other.get("mode"), 16)
        if mine != "machine":
            return  # this run counts its own processes' share: right whatever else runs
        msg = (f"another run measures this host at the same time (run {run_id}, pid "
               f"{_label(other.get('pid'), 12)}, mode {theirs}, {_label(other.get('run_dir'), 200)}):"
               " in machine mode each run counts the whole host's CPU and DRAM energy, so these "
               "runs' host figures overlap; track each with --mode process (Config(mode='process')) "
               "to split the host by process")
        # said once per run; each run met is an event (summaries and reports name them all)
        warn_once(log, self.engine.run_key, "host-shared", "greentrack: %s%s",
                  msg, "; other runs that meet this one are recorded in its events, not repeated "
                  "here")
        self.engine.event("warning", "host-shared", msg, other_run_id=run_id,
                          other_pid=other.get("pid"), other_mode=theirs)

    def close(self) -> None:
        self.check(time.monotonic())  # a run that met this one late is still named
        self.lease.release()


OWNER_DIR = ".owners"


class DeviceOwners:
    """One owner per device and time within a run (see the module docstring); an engine watcher
    (sampler thread) that takes over a device when its owner's lock frees, counting it from the
    moment the owner released it (written in the lock file; ``time.monotonic`` is one clock for
    every process of a host), so nothing is lost or counted twice at a hand-over."""

    def __init__(self, engine: Any, run_dir: Path, channels: list[Any], host: str) -> None:
        self.engine = engine
        self.directory = run_dir / OWNER_DIR
        self.directory.mkdir(mode=0o755, exist_ok=True)
        self.held: dict[str, int] = {}  # engine key -> the locked file's descriptor
        self.waiting: dict[str, int] = {}  # engine key -> an open descriptor, not locked yet
        now = time.monotonic()
        for ch in channels:
            key = channel_key(ch)
            if key in self.held or key in self.waiting:
                continue
            share = isinstance(ch, ProcessShare)  # one process tree's share: one per process
            name = _label(f"{host}-{key}" if ch.info.host_scope else key, 120).replace("/", "_")
            path = self.directory / (f"{name}-pid{os.getpid()}.lock" if share else f"{name}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if _lock(fd) is not None:
                self.held[key] = fd
                continue
            self.waiting[key] = fd
            engine.hand_over({key}, now)
            engine.event("info", "device-owned", f"{key} is counted by another tracker of this "
                         f"run ({_owner(fd)}): this one counts it once that one stops",
                         device=key)

    def __call__(self, now: float) -> None:
        for key, fd in list(self.waiting.items()):  # one flock attempt a poll each
            released = _lock(fd)
            if released is None:
                continue
            del self.waiting[key]
            self.held[key] = fd
            # from where the owner stopped (no time written: it was killed; its store holds
            # up to its last commit, an unknown time: counted from now)
            self.engine.take_back({key}, min(now, released) if math.isfinite(released) else now)
            self.engine.event("info", "device-taken-over", f"{key}: its other tracker stopped; "
                              "this one counts it from then", device=key)

    def close(self) -> None:
        held, self.held = self.held, {}
        waiting, self.waiting = self.waiting, {}
        now = time.monotonic()
        # where this owner's count of each device ends: its last point (the engine has stopped)
        last: dict[str, float] = {}  # the latest of the channels sharing a key (RAPL packages)
        for st in self.engine.states:
            last[st.key] = max(last.get(st.key, -math.inf), st.raw_last_t)
        for key, fd in held.items():
            t = last.get(key, now)
            stamp = f"released {t if math.isfinite(t) and t <= now else now!r}\n".encode()
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, stamp, 0)  # when this owner stopped counting, for the next one
            except OSError:
                pass
        for fd in [*held.values(), *waiting.values()]:
            try:
                os.close(fd)  # releases the flock
            except OSError:
                pass


def remove_free_owner_files(run_dir: Path) -> None:
    """Remove the device locks no tracker holds, and the lock directory when empty (a start that
    was taken back). Never raises."""
    import fcntl
    directory = run_dir / OWNER_DIR
    try:
        for path in directory.glob("*.lock"):
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink()
            except OSError:
                pass  # held: another tracker of the run counts it
            finally:
                os.close(fd)
        directory.rmdir()
    except OSError:
        pass


def _lock(fd: int) -> float | None:
    """Take the exclusive flock of ``fd``: the monotonic time the previous owner released it
    (``-inf`` when none did), or None when another tracker holds it. The owner's pid goes in."""
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return None
    try:
        text = os.pread(fd, 200, 0).decode("ascii", "replace")
        released = float(text.split()[1]) if text.startswith("released ") else float("-inf")
    except (OSError, ValueError, IndexError):
        released = float("-inf")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {os.uname().nodename}".encode(), 0)
    return released


def _owner(fd: int) -> str:
    try:
        pid, _, host = os.pread(fd, 200, 0).decode("ascii", "replace").partition(" ")
        return f"pid {_label(pid, 12)} on {_label(host, 64)}"
    except OSError:
        return "unknown"


class JoinWatch:
    """In the parent (any tracker): hands devices over to trackers that join this run."""

    def __init__(self, engine: Any, run_dir: Path, token: str) -> None:
        self.engine = engine
        self.token = token
        self.directory = run_dir / JOIN_DIR
        self.directory.mkdir(mode=0o755, exist_ok=True)
        self._mtime = -1
        self._next_probe = 0.0
        self.active: dict[Path, set[str]] = {}

    def __call__(self, now: float) -> None:
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:
            return
        if mtime != self._mtime:  # a lease came or went (a cheap stat per poll otherwise)
            self._mtime = mtime
            self._scan(now)
        elif self.active and now >= self._next_probe:  # a child that died keeps its file
            self._next_probe = now + SCAN_EVERY_S
            for path in [p for p in self.active if not is_held(p)]:
                self._end(path, now)

    def _scan(self, now: float) -> None:
        live = dict(live_leases(self.directory))
        for path in [p for p in self.active if p not in live]:
            self._end(path, now)
        for path, record in live.items():
            if path in self.active or record.get("token") != self.token:
                continue
            keys = {str(k) for k in record.get("devices") or []}
            matched = self.engine.hand_over(keys, now)
            self.active[path] = set(matched)
            ack = path.with_suffix(".ack")
            tmp = ack.with_suffix(".ack.tmp")
            tmp.write_text(json.dumps({"t": now, "devices": matched}))
            os.replace(tmp, ack)
            self.engine.event("info", "joined", f"tracker pid {_label(record.get('pid'), 12)} "
                              f"joined this run; it measures {', '.join(matched) or 'no device'} "
                              "of this process's devices until it stops", devices=matched,
                              pid=record.get("pid"))

    def _end(self, path: Path, now: float) -> None:
        keys = self.active.pop(path)
        # counted again from where the joined tracker's own points start and end (its start
        # after the hand-over, and this poll's notice of its end, are late by up to a poll
        # each: that energy would be nobody's)
        spans = {k: v for k, v in measured_spans(path, self.token).items() if k in keys}
        # the end is known by now, the moment its file was read (the poll's `now` came before
        # the joined tracker's last point could have: that would give back what it counted)
        self.engine.take_back(keys, max(now, time.monotonic()), spans)
        path.with_suffix(".ack").unlink(missing_ok=True)
        o = self.engine.origin
        self.engine.event("info", "join-ended", "a joined tracker stopped; this process counts "
                          f"{', '.join(sorted(keys)) or 'no device'} again" +
                          ("" if spans else " from now (it left no final totals: it measured up "
                           "to an unknown time)"), devices=sorted(keys),
                          # run seconds each device was the joined tracker's (the engine clamps
                          # them to the hand-over)
                          measured_s={k: [round(a - o, 6), round(b - o, 6)]
                                      for k, (a, b) in sorted(spans.items())})


def parent_run() -> tuple[Path, str] | None:
    """The run directory and join token of the ``greentrack run`` this process runs under."""
    value, token = os.environ.get(PARENT_ENV), os.environ.get(TOKEN_ENV)
    if not value or not token:
        return None
    path = Path(value)
    return (path, token) if (path / "run.json").is_file() else None


def join_parent(parent_dir: Path, token: str, devices: list[str]) -> tuple[Lease, list[str]] | None:
    """Take a join lease in the parent's run and wait until the parent has handed ``devices``
    over. Returns the lease and the devices the parent stopped counting, or None (after
    :data:`JOIN_ACK_S`) if no parent answered: the caller then measures on its own."""
    lease = Lease(parent_dir / JOIN_DIR, {"pid": os.getpid(), "token": token,
                                          "host": os.uname().nodename, "devices": devices})
    ack = lease.path.with_suffix(".ack")
    deadline = time.monotonic() + JOIN_ACK_S
    while time.monotonic() < deadline:
        try:
            answer = json.loads(ack.read_text())
            return lease, [str(d) for d in answer.get("devices") or []]
        except (OSError, ValueError):
            time.sleep(0.005)
    lease.release()
    return None
