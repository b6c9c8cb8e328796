"""Pushes a registry to a Pushgateway from a daemon thread: at start, every interval, and once at stop.

A push that fails or hangs costs the training thread nothing: it runs on its own thread with a short
socket timeout, a failure is counted and recorded once, and :meth:`Pusher.stop` waits a bounded
time for the final push, then leaves (the thread is a daemon and cannot keep the process alive).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from greentrack.common.once import warn_once
from greentrack.exporters._collector import PushHealth

log = logging.getLogger("greentrack")

#: Socket timeout of one push (at most the push interval); a loopback or in-cluster gateway
#: answers in milliseconds.
PUSH_TIMEOUT_S = 2.0


class Pusher:
    """Periodic ``PUT`` of ``registry`` to ``gateway`` under the grouping key
    ``job/run/host/rank``.

    Args:
        gateway: ``http(s)://host:port`` of the Pushgateway.
        job: the ``job`` grouping label.
        grouping_key: the other grouping labels (``run``, ``host``, ``rank``).
        registry: what to push.
        interval_s: seconds between pushes.
        health: failure counter, also exported as ``greentrack_push_failures_total``.
        record: ``record(level, kind, message)`` stores an event in the run.
        ready: returns False while the registry would yield nothing yet (a resumed run's earlier
            totals still being read, after a bounded wait): the push is then skipped, since a
            ``PUT`` of nothing deletes the group's last values from the gateway.
        run_key: the run the log's warning belongs to (:func:`greentrack.common.once.run_key`):
            a gateway that fails again after recovering is an event each time, a log line once.
    """

    def __init__(self, gateway: str, job: str, grouping_key: dict[str, str], registry: Any,
                 interval_s: float, health: PushHealth,
                 record: Callable[[str, str, str], None],
                 timeout_s: float = PUSH_TIMEOUT_S,
                 ready: Callable[[], bool] | None = None, run_key: str | None = None) -> None:
        self._run_key = run_key if run_key is not None else f"pusher-{id(self)}"
        self.gateway, self.job, self.grouping_key = gateway, job, grouping_key
        # A push slower than the interval is pointless: the next one carries newer figures.
        self.registry, self.interval_s = registry, interval_s
        self.timeout_s = min(timeout_s, interval_s)
        self.health, self._record = health, record
        self._ready = ready
        #: pushes left out because the registry was not ready (the gateway kept the last one)
        self.skipped = 0
        self.pushes = 0
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="greentrack-push", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> bool:
        """Ask for the final push and wait for it at most ``timeout_s + 0.5`` s. Returns whether
        the thread finished (False: the gateway hung; recorded, and training is not held)."""
        self._stop.set()
        self._thread.join(self.timeout_s + 0.5)
        done = not self._thread.is_alive()
        if not done:
            self._record("warning", "push-error", f"final push to {self.gateway} did not finish "
                         f"within {self.timeout_s + 0.5:g} s; the gateway keeps the previous push")
        return done

    def _run(self) -> None:
        self.push_once()
        while not self._stop.wait(self.interval_s):
            self.push_once()
        self.push_once()  # final totals, after the engine's last reading

    def push_once(self) -> bool:
        """One ``PUT`` of the registry; False when it failed or was left out (not ready)."""
        from prometheus_client import push_to_gateway
        if self._ready is not None and not self._ready():
            self.skipped += 1
            return False
        try:
            push_to_gateway(self.gateway, job=self.job, registry=self.registry,
                            grouping_key=self.grouping_key, timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - an unreachable gateway must not break training
            self.health.failures += 1
            if not self._failing:
                self._failing = True
                warn_once(log, self._run_key, f"push-failed:{self.gateway}", "greentrack: push "
                          "to %s failed (recorded; training goes on): %s", self.gateway, e)
                self._record("warning", "push-error", f"push to {self.gateway} failed: {e}")
            return False
        self.pushes += 1
        if self._failing:
            self._failing = False
            self._record("info", "push-recovered", f"push to {self.gateway} works again after "
                         f"{self.health.failures} failure(s)")
        return True
