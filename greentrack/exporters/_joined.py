"""``greentrack run`` and the trackers of its command are one run to Prometheus.

A tracker started inside ``greentrack run`` joins its run (:mod:`greentrack.process.sharing`): the wrapper
hands it the devices it measures and stops counting them; the steps are counted where the
training loop is, in the joined tracker. The wrapper's ``/metrics`` (or its pushes) must still
carry the whole run, so a joined tracker publishes its live totals beside its join lease
(``RUN_DIR/.joins/<lease>.live.json``, replaced atomically about once a second on its sampler
thread, and a last time at its stop, marked ``final``), and the wrapper's collector adds the
totals of every tracker that joined it (the join token tells them apart) to its own:

* energy and gap seconds per ``kind, device, source``: the wrapper's part (before and after the
  hand-over) plus the joined tracker's (while it measured): each joule once;
* steps, step energy, the step-energy histogram, FLOPs and MFU per phase: the joined trackers';
* GPU-seconds: a GPU the wrapper does not measure itself adds the joined tracker's;
* emissions: the joined trackers' energy charged as it arrives, by the same footprint function.

A joined tracker that stopped keeps its final totals in the sum, so counters never go back. The
files are read at most :data:`MAX_LIVE_BYTES` each and at most :data:`MAX_JOINED` of them;
device and phase labels are bounded as the collector's own.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from greentrack.exporters._steps import MAX_PHASES, STEP_ENERGY_BUCKETS_J, StepStats

LIVE_SUFFIX = ".live.json"
#: How often a joined tracker rewrites its live totals (seconds of its sampler's clock).
PUBLISH_EVERY_S = 1.0
MAX_LIVE_BYTES = 256 * 1024
MAX_JOINED = 64  # joined trackers' files read per collect
MAX_CHANNELS = 64  # devices taken from one file


class LivePublisher:
    """In a joined tracker: its live totals beside its join lease; closing it writes the final
    totals, then ends the lease (so the wrapper finds them when it counts the devices again)."""

    def __init__(self, lease: Any, token: str) -> None:
        self.lease, self.token = lease, token
        self.path = live_path(lease.path)
        self.tracker: Any = None
        self.steps: Any = None
        self._next = 0.0
        self._lock = threading.Lock()

    def attach(self, tracker: Any) -> None:
        """Publish ``tracker``'s totals (its engine started): steps from its tally, the histogram
        from each resolved step."""
        self.tracker = tracker
        self.steps = StepStats(tracker.engine.tally)
        tracker.add_step_listener(self.steps.observe)

    def __call__(self, now: float) -> None:  # an engine watcher: the sampler thread
        if self.tracker is not None and now >= self._next:
            self._next = now + PUBLISH_EVERY_S
            self._write(final=False)

    def close(self) -> None:
        """Final totals (the engine has stopped: its last readings are in), then the lease."""
        try:
            if self.tracker is not None:
                self._write(final=True)
        except OSError:
            pass
        finally:
            self.lease.release()

    def release(self) -> None:
        self.close()

    def _write(self, final: bool) -> None:
        engine = self.tracker.engine
        if engine is None:
            return
        states = {st.id: st for st in list(engine.states)}
        now = time.monotonic()
        end = now if not final else (engine.last_sample_t or now)
        span = max(0.0, end - engine.origin)
        channels = []
        for ch in engine.snapshot()[:MAX_CHANNELS]:
            st = states.get(ch.id)
            channels.append({"key": st.key if st else f"{ch.kind}:{ch.device}", "kind": ch.kind,
                             "device": ch.device, "measured": bool(ch.measured),
                             "method": ch.method, "energy_j": float(ch.energy_j),
                             "power_w": None if ch.power_w is None else float(ch.power_w),
                             "gap_s": float(ch.gap_s), "up": ch.status == "ok",
                             # the times of its first and last points (this host's monotonic
                             # clock): the wrapper counts the device outside them
                             "span": _span(st)})
        gpus = {c["key"]: span for c in channels if c["kind"] == "gpu"}
        doc = {"token": self.token, "pid": os.getpid(), "final": final, "t_unix": time.time(),
               "channels": channels, "gpu_seconds": gpus, "steps": self.steps.copy()}
        with self._lock:  # the sampler thread and stop() may both write
            tmp = self.path.with_name(f".{self.path.name}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)


class JoinedTotals:
    """In the wrapper's collector: the summed totals of the trackers that joined this run."""

    def __init__(self, directory: Path, token: str) -> None:
        self.directory, self.token = directory, token
        self._docs: dict[str, dict[str, Any]] = {}  # file name -> its latest good totals
        self._charged: dict[str, float] = {}  # file name -> joules already charged
        self._lock = threading.Lock()

    def read(self) -> list[dict[str, Any]]:
        """Every joined tracker's latest totals (a file that cannot be read now keeps its last
        good ones; totals that would make a counter go back are not taken)."""
        with self._lock:
            try:
                names = sorted(n for n in os.listdir(self.directory)
                               if n.endswith(LIVE_SUFFIX) and not n.startswith("."))[:MAX_JOINED]
            except OSError:
                names = []
            for name in names:
                doc = _load(self.directory / name, self.token)
                old = self._docs.get(name)
                if doc is not None and (old is None or _not_behind(doc, old)):
                    self._docs[name] = doc
            return list(self._docs.values())

    def new_energy_j(self) -> float:
        """Joules the joined trackers measured since the last call (to charge emissions)."""
        with self._lock:
            added = 0.0
            for name, doc in self._docs.items():
                total = sum(c["energy_j"] for c in doc["channels"])
                added += max(0.0, total - self._charged.get(name, 0.0))
                self._charged[name] = max(total, self._charged.get(name, 0.0))
            return added


def _load(path: Path, token: str) -> dict[str, Any] | None:
    """A joined tracker's totals, checked (this run's token, finite values), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            raw = os.read(fd, MAX_LIVE_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > MAX_LIVE_BYTES:
            return None
        doc = json.loads(raw)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("token") != token:
        return None
    channels = []
    for c in doc.get("channels") or []:
        if not isinstance(c, dict) or c.get("kind") not in ("gpu", "cpu", "dram"):
            continue
        energy, gap = _number(c.get("energy_j")), _number(c.get("gap_s"))
        if energy is None or gap is None:
            continue
        given = c.get("span")
        lo, hi = ([_number(x) for x in given[:2]] + [None, None])[:2] \
            if isinstance(given, list) else (None, None)
        channels.append({"key": str(c.get("key"))[:160], "kind": c["kind"],
                         "device": str(c.get("device"))[:64], "measured": c.get("measured") is True,
                         "method": str(c.get("method"))[:64], "energy_j": energy,
                         "power_w": _number(c.get("power_w")), "gap_s": gap,
                         "up": c.get("up") is True,
                         "span": (lo, hi) if lo is not None and hi is not None and lo <= hi
                         else None})
    gpus, steps = _table(doc.get("gpu_seconds")), _table(doc.get("steps"))
    return {"final": doc.get("final") is True, "channels": channels[:MAX_CHANNELS],
            "gpu_seconds": {str(k)[:160]: v for k, v in list(gpus.items())[:MAX_CHANNELS]
                            if _number(v) is not None},
            "steps": _steps(steps)}


def live_path(lease: Path) -> Path:
    """Where the tracker holding the join lease ``lease`` keeps its live totals (beside it)."""
    return Path(lease).with_suffix(LIVE_SUFFIX)


def _span(st: Any) -> list[float] | None:
    if st is None or st.measured_from is None or not math.isfinite(st.raw_last_t):
        return None
    return [float(st.measured_from), float(st.raw_last_t)]


def measured_spans(lease: Path, token: str) -> dict[str, tuple[float, float]]:
    """By device key, the span a joined tracker measured (its first and last points), from the
    final totals it left beside its join lease ``lease``; empty when there are none (it died)."""
    doc = _load(live_path(lease), token)
    if doc is None or not doc["final"]:
        return {}
    spans: dict[str, tuple[float, float]] = {}
    for c in doc["channels"]:
        if c["span"] is None:
            continue
        # channels that share a key (a host's RAPL packages: host:cpu) get the widest span:
        # the wrapper then gives back nothing one of them still measured
        a, b = spans.get(c["key"], c["span"])
        spans[c["key"]] = (min(a, c["span"][0]), max(b, c["span"][1]))
    return spans


def _steps(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"count": {}, "energy_j": {}, "flops": {}, "buckets": {}, "mfu": {}}
    counts = _table(raw.get("count"))
    for phase in list(counts)[:MAX_PHASES + 1]:
        n = _number(counts[phase])
        if n is None:
            continue
        label = str(phase)[:32]
        out["count"][label] = int(n)
        for key in ("energy_j", "flops"):
            out[key][label] = _number(_table(raw.get(key)).get(phase)) or 0.0
        buckets = _table(raw.get("buckets")).get(phase)
        ok = (isinstance(buckets, list) and len(buckets) == len(STEP_ENERGY_BUCKETS_J) + 1
              and all(_number(b) is not None for b in buckets))
        out["buckets"][label] = [int(b) for b in buckets] if ok and buckets else \
            [0] * len(STEP_ENERGY_BUCKETS_J) + [int(n)]
        mfu = _number(_table(raw.get("mfu")).get(phase))
        if mfu is not None:
            out["mfu"][label] = mfu
    return out


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def _not_behind(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """False when ``new`` would make a counter go back (a stale or planted file)."""
    if old["final"] and not new["final"]:
        return False
    before = {(c["kind"], c["device"]): c["energy_j"] for c in old["channels"]}
    return all(c["energy_j"] >= before.get((c["kind"], c["device"]), 0.0) - 1e-9
               for c in new["channels"])


__all__ = ["JoinedTotals", "LivePublisher", "LIVE_SUFFIX"]
