"""The public entry point: :class:`Tracker`.

Example:
    >>> import greentrack
    >>> with greentrack.Tracker("runs/demo") as tracker:      # doctest: +SKIP
    ...     for batch in loader:
    ...         with tracker.step(samples=len(batch)):
    ...             train_step(batch)
    >>> greentrack.summarize("runs/demo")["energy_j"]["total"]   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from greentrack.common.config import BUDGETS, Config, env_run_id, launcher_int
from greentrack.common.errors import ConfigError
from greentrack.common.labels import parse_labels
from greentrack.common.once import run_key, warn_once
from greentrack.engine.engine import Engine, channel_key
from greentrack.engine.stepvalues import PLAIN, capture, phase_name
from greentrack.exporters import Sink, sinks_for
from greentrack.exporters._joined import LivePublisher
from greentrack.process import lifecycle, sharing
from greentrack.process.runmeta import store_meta
from greentrack.process.settings import check_settings
from greentrack.samplers import discover
from greentrack.store import (StoreWriter, discard_unused_run_dir, host_identity,
                              prepare_run_dir, store_paths)
from greentrack.store.layout import JOIN_DIR

if TYPE_CHECKING:
    from greentrack.carbon.runs import Totals
    from greentrack.process.budget import BudgetWatch
    from greentrack.reports.summary import Summary

#: the process's fork generation (a list: read at every step, without a module attribute lookup)
_FORK_GENERATION = lifecycle.FORK_GENERATION

#: Seconds a stop at SIGTERM or at the interpreter's exit gives the ``emissions_csv`` row (a
#: Kubernetes or Slurm grace period is 30 s by default; a week-long run's row takes seconds).
EXIT_CSV_BUDGET_S = 5.0

log = logging.getLogger("greentrack")


class Tracker:
    """Tracks the energy of this process's devices into a run directory.

    Args:
        run_dir: the run directory (overrides ``config.run_dir``).
        config: a :class:`~greentrack.common.config.Config`; default from ``GREENTRACK_*`` variables.
        **settings: any :class:`Config` field, overriding ``config``.

    Raises:
        ConfigError: a setting is invalid, a named GPU does not exist, or the run directory
            cannot be written. Raised by the constructor or :meth:`start`, before any training.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, *,
                 config: Config | None = None, sinks: list[Sink] | None = None,
                 **settings: Any) -> None:
        if run_dir is not None:
            settings["run_dir"] = run_dir  # as given: Config refuses "" (Path("") is the cwd)
        self.config = (config or Config.from_env()).replace(**settings) if settings else (
            config or Config.from_env())
        #: A run directory the user named (a joined tracker says it was not used).
        self._named_run_dir = not self.config.run_dir_is_default
        self._engine: Engine | None = None
        self._writer: StoreWriter | None = None
        self._pid = os.getpid()
        self._gen = lifecycle.FORK_GENERATION[0]
        self._calibration: Any = None  # greentrack.process.calibration.Calibration, when asked and allowed
        self._lock = threading.Lock()
        #: Per phase, the next step index: next() of a count is atomic, so steps ending on several
        #: threads get distinct indices without a lock on the hot path.
        self._idx: dict[str, itertools.count[int]] = {}
        self._idx_lock = threading.Lock()  # only to create a phase's counter, or to move it
        #: the last step's fields found plain (kept alive here: identity means the same dict)
        self._plain: dict[str, Any] | None = None
        self._open: dict[int, tuple[str, float, dict[str, Any]]] = {}
        self._tokens = itertools.count()  # next() of a count is atomic under the GIL
        self._hook_errors = 0
        self._leases: list[Any] = []  # host lease, join lease: released at stop
        self._join_token: str | None = None
        self._publisher: Any = None  # this tracker's live totals, when it joined `greentrack run`
        self._writes_csv = False
        #: a resumed run's closed stores, being read on a helper thread (see _read_earlier)
        self._earlier: tuple[threading.Thread, dict[Path, Any]] | None = None
        #: The run's totals, once stopped (what :meth:`stop` returned).
        self.result: Totals | None = None
        self.run_id: str | None = None
        self.notes: list[Any] = []
        self.status = "created"
        self._t_start = 0.0
        #: The run's labels (``Config.labels``, then :meth:`add_labels`), as stored.
        self.labels: dict[str, str] = dict(self.config.labels)
        #: Objects with ``start(tracker)`` and ``stop(tracker)``, started after the sampler and
        #: stopped after it (so a final push sees final totals). Prometheus sinks are added
        #: automatically when ``prometheus_port`` or ``pushgateway_url`` is set.
        self.sinks: list[Sink] = list(sinks or [])
        #: Callables returning the run's forecast (:mod:`greentrack.carbon.forecast`) or None, added by
        #: the training meter; the Prometheus exporter shows the first one's as gauges.
        self.forecast_sources: list[Any] = []
        #: The run's budgets (:mod:`greentrack.process.budget`), checked on the sampler thread;
        #: None without any. ``budget.stop`` is what the integrations read at each step end.
        self.budget: BudgetWatch | None = None
        #: Set (once) when a budget is reached with ``on_budget="stop"``: a plain bool that the
        #: integrations read at each step end to stop training gracefully.
        self.budget_stop = False

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def store_path(self) -> Path | None:
        """This process's store file (None before :meth:`start` or when tracking is off)."""
        return self._writer.path if self._writer is not None else None

    @property
    def running(self) -> bool:
        return self.status == "running" and self._gen == lifecycle.FORK_GENERATION[0]

    def start(self) -> "Tracker":
        """Discover devices, open the store, start the sampler thread. Idempotent.

        Raises only :class:`ConfigError` (a bad setting, before any training). Any other failure
        is a warning and the tracker is ``disabled``: steps and ``stop()`` become no-ops and the
        training runs untracked, never broken by its measurement.
        """
        if self.status in ("running", "disabled"):
            return self
        try:
            with lifecycle.starting():  # a SIGTERM from here on stops this run too
                return self._start()
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - measurement must never break training
            log.warning("greentrack: tracking disabled for this run (training goes on): %s: %s",
                        type(e).__name__, e)
            self._disable()
            return self

    def _release_leases(self) -> None:
        leases, self._leases = self._leases, []
        for lease in leases:
            try:
                lease.close() if hasattr(lease, "close") else lease.release()
            except Exception as e:  # noqa: BLE001 - leases end with the process anyway
                log.warning("greentrack: could not release a lease: %s", e)

    def _end_calibration(self) -> None:
        calibration, self._calibration = self._calibration, None
        if calibration is not None:
            try:
                calibration.close()  # restores the original power limit; never raises
            except Exception as e:  # noqa: BLE001 - and if it did, the run's store still closes
                log.warning("greentrack: power-limit calibration did not end cleanly: %s", e)

    def _disable(self) -> None:
        self._end_calibration()
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.stop()
            except Exception:  # noqa: BLE001
                pass
        self._release_leases()
        lifecycle.forget(self)
        self.status = "disabled"

    def _start(self) -> "Tracker":
        self._pid = os.getpid()
        self._gen = lifecycle.FORK_GENERATION[0]
        cfg = self.config
        check_settings(cfg)  # settings that need data, before anything is created
        parent = None if self._join_token else sharing.parent_run()
        if parent is not None and cfg.run_dir != parent[0]:
            if self._named_run_dir:  # each segment of the command's run finds it: said once
                warn_once(log, run_key(parent[0], None), f"run-dir-not-used:{cfg.run_dir}",
                          "greentrack: run_dir %s not used: this process runs under `greentrack "
                          "run`, whose run (%s) it joins", cfg.run_dir, parent[0])
            cfg = self.config = cfg.replace(run_dir=parent[0])
        run_id, found, calibration_notes = self._open_devices(cfg)
        self.notes = found.notes
        self._publisher = None
        joined = self._join(parent, found.channels) if parent is not None else None
        rank = cfg.rank if cfg.rank is not None else launcher_int("RANK", 0)
        # every process appends at its stop what of the run the CSV does not hold yet (rows of
        # one run add up to it, whoever writes them); a process that joined `greentrack run`
        # leaves it to that command
        self._writes_csv = bool(cfg.emissions_csv) and parent is None
        # the origin on both clocks, read together: the store's start (every report's unix time
        # of a reading) and the exporter's must be the same instant, or time-resolved intensity
        # charges energy to the wrong interval
        self._t_start, origin_unix = time.monotonic(), time.time()
        meta = store_meta(run_id, cfg, self._pid, rank, found.notes, origin_unix)
        # whether a SIGTERM will stop this run: in the store from its first commit, since a
        # SIGTERM that is not caught ends the process before any later write
        meta["sigterm_caught"] = lifecycle.sigterm_caught() or \
            threading.current_thread() is threading.main_thread()
        self.labels = dict(cfg.labels)
        if parent is not None:
            meta["joined"] = {"parent_run_dir": str(parent[0]), "handed_over": joined}
        self._writer = StoreWriter(cfg.run_dir, rank, meta)
        self._engine = Engine(found.channels, self._writer, cfg, origin=self._t_start,
                              origin_unix=origin_unix, run_key=run_key(cfg.run_dir, run_id))
        self._engine.holds.append(self._earliest_open)
        self._record_start(found.notes, parent, joined, calibration_notes)
        if self._calibration is not None:
            self._calibration.attach(self._engine, self._writer.add_power_limit)
        self._watch(found.channels, owned=parent is None)
        if any(getattr(cfg, name) is not None for name in BUDGETS):
            # the footprint and settings resolution load for a run with a budget only (an
            # import of the tracker stays light: bench/start_stop.py)
            from greentrack.process.budget import watch
            self.budget = watch(self, cfg)
            if self.budget is not None:
                self._engine.watchers.append(self.budget)
        if self._publisher is not None:  # joined: `greentrack run`'s exporter reads the totals
            self._publisher.attach(self)
            self._engine.watchers.append(self._publisher)
        self._engine.start()
        self.status = "running"
        lifecycle.install(self)
        if not lifecycle.sigterm_caught():  # started off the main thread, before any tracker on it
            self._engine.event("info", "sigterm-not-caught", "started off the main thread: "
                               "Python lets only the main thread handle signals, so a SIGTERM "
                               "ends the process without stopping this run (it then reads "
                               "incomplete, data up to its last flush), unless a tracker runs "
                               "that was started on the main thread")
        self._start_sinks()
        self._read_earlier()
        return self

    def _read_earlier(self) -> None:
        """A resumed run (other stores in its directory): its closed stores are read now, on a
        helper thread, so that :meth:`stop` reads only this process's store however many
        segments came before (:func:`greentrack.run.model.read_closed`)."""
        if len(store_paths(self.run_dir)) < 2:
            return
        found: dict[Path, Any] = {}

        def read() -> None:
            try:
                found.update(_read_closed(self.run_dir))
            except Exception as e:  # noqa: BLE001 - the stop reads them itself then
                log.debug("greentrack: earlier segments not read ahead: %s", e)

        worker = threading.Thread(target=read, name="greentrack-earlier-segments", daemon=True)
        worker.start()
        self._earlier = (worker, found)

    def _take_earlier(self, wait: bool) -> dict[Path, Any]:
        """The stores :meth:`_read_earlier` read (waiting for it with ``wait``: never longer
        than reading them at the stop), or nothing."""
        earlier, self._earlier = self._earlier, None
        if earlier is None:
            return {}
        if wait:
            earlier[0].join()
        return earlier[1] if not earlier[0].is_alive() else {}

    def _open_devices(self, cfg: Config) -> tuple[str, Any, list[Any]]:
        """The run directory (its run id, also kept as ``run_id``), the devices to measure and the
        power-limit plan. A start its settings refuse (a GPU named that does not exist, limits out
        of range) raises :class:`ConfigError` and leaves no run behind."""
        fresh_dir = not cfg.run_dir.exists()
        fresh_run = fresh_dir or not (cfg.run_dir / "run.json").exists()
        self._made = (fresh_run, fresh_dir)  # what discard() may take back
        self.run_id = run_id = prepare_run_dir(cfg.run_dir, cfg.run_id or env_run_id())
        channels: list[Any] = []
        try:
            found = discover(cfg, run_id=run_id)
            channels = found.channels
            calibration_notes: list[Any] = []
            if cfg.calibrate_power_limits:
                # loaded by the runs that ask for it, not with every tracker
                from greentrack.process import calibration
                self._calibration, calibration_notes = calibration.plan(found.channels, cfg)
        except ConfigError:
            for ch in channels:
                _close_quietly(ch)
            if fresh_run:
                discard_unused_run_dir(cfg.run_dir, run_id, remove_dir=fresh_dir)
            raise
        return run_id, found, calibration_notes

    def _record_start(self, notes: list[Any], parent: tuple[Path, str] | None,
                      joined: list[str] | None, calibration_notes: list[Any]) -> None:
        """The start's events: discovery notes, the join of `greentrack run`, calibration."""
        assert self._writer is not None and self._engine is not None
        for note in notes:
            self._writer.add_event(0.0, note.level, "estimate" if "ESTIMATED" in note.message
                                   else "discovery", note.message, None, {"hint": note.hint})
            if note.level == "warning":  # each segment of a run finds the same: said once
                warn_once(log, self._engine.run_key, f"note:{note.message}", "greentrack: %s",
                          note.message)
        if parent is not None:
            self._engine.event("info" if joined is not None else "warning", "joined-parent",
                               f"joined the run of `greentrack run` in {parent[0]}; it stopped "
                               f"counting {', '.join(joined or []) or 'no device'} while this "
                               "process measures them" if joined is not None else
                               "`greentrack run` did not answer the join within "
                               f"{sharing.JOIN_ACK_S:g} s: both may count this machine's devices")
        for note in calibration_notes:
            warn_once(log, self._engine.run_key, f"note:{note.message}", "greentrack: %s",
                      note.message)
            self._engine.event(note.level, "power-limit-calibration", note.message)

    def _start_sinks(self) -> None:
        """Prometheus exporters and the integrations' sinks. A sink's bad setting stops the run
        (failed) and raises; any other failure is a recorded warning."""
        cfg = self.config
        if cfg.prometheus_port is not None or cfg.pushgateway_url:
            self.sinks.extend(sinks_for(cfg))
        for sink in self.sinks:
            try:
                sink.start(self)
            except ConfigError:
                self.stop("failed")
                raise
            except Exception as e:  # noqa: BLE001 - a sink must not break training
                assert self._engine is not None
                warn_once(log, self._engine.run_key, f"sink-start:{type(sink).__name__}",
                          "greentrack: %s did not start (recorded): %s", type(sink).__name__, e)
                self._engine.event("warning", "sink-error", f"{type(sink).__name__}: {e}")

    def accept_joins(self) -> dict[str, str]:
        """Let trackers in child processes join this run (``greentrack run`` does this before
        :meth:`start`). Returns the environment variables to give the children."""
        import uuid
        self._join_token = self._join_token or uuid.uuid4().hex
        return {sharing.PARENT_ENV: str(self.run_dir.resolve()), sharing.TOKEN_ENV: self._join_token}

    @property
    def join_token(self) -> str | None:
        """The token of :meth:`accept_joins` (trackers holding it join this run), or None."""
        return self._join_token

    def _join(self, parent: tuple[Path, str], channels: list[Any]) -> list[str] | None:
        try:
            answer = sharing.join_parent(parent[0], parent[1], [channel_key(c) for c in channels])
        except OSError as e:
            log.warning("greentrack: could not join the parent run (measuring alone): %s", e)
            return None
        if answer is None:
            return None
        # the lease ends after the final totals are written (the wrapper's exporter reads them)
        self._publisher = LivePublisher(answer[0], parent[1])
        self._leases.append(self._publisher)
        return answer[1]

    def _watch(self, channels: list[Any], owned: bool = True) -> None:
        """Leases: other runs measuring this host or sharing its GPUs, and trackers joining this
        run. The lease lists the GPUs this process measures: a shared GPU's other trackers are
        told apart from untracked processes by it (``samplers/_gpushare.py``). ``owned``: each
        device has one owner among this run's trackers (:class:`sharing.DeviceOwners`; a tracker
        that joined `greentrack run` is handed its devices by it instead)."""
        assert self._engine is not None
        try:
            waiting: set[str] = set()
            if owned:
                host, boot = host_identity()  # one kernel, one machine: containers too
                owners = sharing.DeviceOwners(self._engine, self.run_dir, channels,
                                              f"boot-{boot}" if boot else host)
                self._leases.append(owners)
                self._engine.watchers.append(owners)
                waiting = set(owners.waiting)
            host_scope = any(c.info.host_scope for c in channels)
            # the GPUs this tracker counts: another tracker of the run that owns one counts this
            # process's share of it (it is one of the run's processes there)
            gpus = [str(c.info.details["uuid"]) for c in channels
                    if c.info.kind == "gpu" and c.info.details.get("uuid")
                    and channel_key(c) not in waiting]
            if host_scope or gpus:
                watch = sharing.HostWatch(self._engine, {
                    "run_id": self.run_id, "pid": self._pid, "mode": self.config.mode,
                    "run_dir": str(self.run_dir.resolve()), "host": host_identity()[0],
                    "host_scope": host_scope, "gpus": gpus[:sharing.MAX_LEASE_GPUS]})
                self._leases.append(watch)
                self._engine.watchers.append(watch)
            if self._join_token:
                self._engine.watchers.append(
                    sharing.JoinWatch(self._engine, self.run_dir, self._join_token))
        except OSError as e:  # no lease directory: runs cannot see each other, say so
            warn_once(log, self._engine.run_key, "lease-error", "greentrack: cannot check for "
                      "other runs on this machine: %s", e)
            self._engine.event("warning", "lease-error", f"cannot check for other runs: {e}")

    def add_step_listener(self, fn: Any) -> None:
        """Call ``fn(row)`` on the sampler thread for each step once its joules are resolved;
        ``row`` is a :class:`~greentrack.engine.steps.StepRow` (``row.energy_j`` sums its kinds). Must be
        quick and thread-safe."""
        if self._engine is not None:
            self._engine.step_listeners.append(fn)

    def stop(self, status: str | None = None) -> Totals | None:
        """Stop sampling, attribute what is left, and close the store.

        Args:
            status: the run's final status: ``completed`` (default), ``failed`` or ``stopped``.

        Returns:
            The run's :class:`~greentrack.carbon.runs.Totals` (energy by kind, duration, steps,
            GPU-hours, location- and market-based emissions with the intensity and its source,
            cost: the same footprint as ``greentrack summary`` and every report; without a
            location, the world average, named), also kept as :attr:`result`; None when
            tracking was off or the run cannot be read. Never raises.
        """
        return self._stop(status, read_totals=True)

    def _stop(self, status: str | None, read_totals: bool) -> Totals | None:
        with self._lock:
            engine = self._engine
            if not self.running or engine is None:
                return self.result
            self.status = "stopping"
        with lifecycle.finishing():  # a SIGTERM on another thread waits for this stop's writes
            return self._finish_stop(engine, status, read_totals)

    def _finish_stop(self, engine: Engine, status: str | None, read_totals: bool
                     ) -> Totals | None:
        lifecycle.forget(self)
        final = status or "completed"
        self._end_calibration()  # first: the GPUs' own limits back before anything else
        try:
            if self._open:
                engine.event("warning", "steps-open", f"{len(self._open)} step(s) still open at "
                             "stop were not recorded")
            engine.stop()
            self._release_leases()
            for sink in self.sinks:
                try:
                    sink.stop(self)
                except Exception as e:  # noqa: BLE001
                    log.warning("greentrack: %s failed at stop: %s", type(sink).__name__, e)
            assert self._writer is not None
            self._writer.set_meta({"status": final, "ended_unix": time.time(),
                                   "duration_s": time.monotonic() - self._t_start})
            self._writer.flush()
            self._writer.close()
        except Exception as e:  # noqa: BLE001 - stopping must never raise into training
            log.warning("greentrack: error while stopping (data up to the last commit is kept): %s", e)
        self.status = final
        known = self._take_earlier(wait=read_totals)
        if not read_totals:  # a signal or the interpreter's exit: be quick
            for _, seg in known.values():
                seg.reader.close()
            if self._writes_csv:
                self._append_emissions_csv_within(EXIT_CSV_BUDGET_S)
            return None
        try:
            self.result = _read_totals(self.run_dir, known)
        except Exception as e:  # noqa: BLE001 - the totals are a convenience: the run is stored
            log.warning("greentrack: could not read the run's totals: %s", e)
        if self._writes_csv:
            self._append_emissions_csv()
        return self.result

    def discard(self) -> None:
        """Stop and take back what this start wrote, for a start cancelled before any work ran
        (Ctrl-C while ``greentrack run`` was starting its command): its store goes, and the run
        directory's ``run.json`` and the directory itself when this start made them and nothing
        else is there. No emissions row. Never raises."""
        store = self.store_path
        self._writes_csv = False
        self._stop("stopped", read_totals=False)
        fresh_run, fresh_dir = getattr(self, "_made", (False, False))
        try:
            if store is not None:
                for p in (store, store.with_name(store.name + "-wal"),
                          store.with_name(store.name + "-shm")):
                    p.unlink(missing_ok=True)
            joins = self.run_dir / JOIN_DIR  # made for the command's trackers to join
            if joins.is_dir() and not any(joins.iterdir()):
                joins.rmdir()
            sharing.remove_free_owner_files(self.run_dir)
            if fresh_run and self.run_id is not None:
                discard_unused_run_dir(self.run_dir, self.run_id, remove_dir=fresh_dir)
        except OSError as e:
            log.warning("greentrack: could not remove the cancelled run's files: %s", e)

    def _append_emissions_csv(self) -> None:
        """Append the run's row to ``Config.emissions_csv`` (codecarbon's columns); never raises.
        A SIGTERM meanwhile waits for it (:class:`greentrack.process.lifecycle.finishing`)."""
        # the report builders load here, at the stop of a run that asked for a row, not when
        # training imports the tracker (greentrack.reports.__getattr__ says why)
        from greentrack.reports.document import append_run
        with lifecycle.finishing():
            append_run(self.run_dir, self.config)

    def _append_emissions_csv_within(self, budget_s: float) -> None:
        """The row at a SIGTERM or the interpreter's exit, on a daemon thread given ``budget_s``:
        a Slurm or Kubernetes grace period must not be spent reading a week-long run. The file is
        replaced by a rename, so a row cut short at exit leaves the file as it was; the warning
        says how to append it later."""
        worker = threading.Thread(target=self._append_emissions_csv, daemon=True,
                                  name="greentrack-emissions-csv")
        try:
            worker.start()
        except RuntimeError:  # no thread can be started at interpreter shutdown: do it here
            self._append_emissions_csv()
            return
        worker.join(budget_s)
        if worker.is_alive():
            log.warning("greentrack: the run's row was not appended to %s within %g s of the stop; "
                        "append it with `greentrack report %s --format json --emissions-csv %s`",
                        self.config.emissions_csv, budget_s, self.run_dir, self.config.emissions_csv)

    def __enter__(self) -> "Tracker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(lifecycle.status_of_exception(exc))

    # -- steps (the hot path: a clock read and a deque append) --------------------------------
    def begin_step(self, phase: str = "train", **info: Any) -> int:
        """Mark the start of a step; returns a token for :meth:`end_step`."""
        t = time.monotonic()
        token = next(self._tokens)
        self._open[token] = (phase, t, info)
        engine = self._engine
        if engine is not None and engine.idle:
            engine.wake_from_idle()
        return token

    def end_step(self, token: int, **info: Any) -> None:
        """Mark the end of the step ``token``. Its joules are attributed a little later, off the
        training thread, once every device has final readings past this moment."""
        t1 = time.monotonic()
        opened = self._open.pop(token, None)
        if opened is None:
            return
        phase, t0, begin_info = opened
        self.submit_step(phase, t0, t1, {**begin_info, **info} if begin_info else info)

    def submit_step(self, phase: str, t0: float, t1: float, info: dict[str, Any],
                    timeline: str = "host") -> None:
        """:meth:`submit_window` with the step's fields in one dict (``flops``, ``samples``,
        ``tokens``, ``timeline`` and extras), which this call owns: read later, on the sampler
        thread, and so never to be changed afterwards (the same dict may come again, for steps
        with the same fields). The integrations' hot path, one call from the hook to the queue
        (no keyword packing, no further layer). A field named like an argument of
        ``submit_window`` (``phase``, ``t0``, ``t1``) is kept as ``field_<name>``."""
        engine = self._engine
        if engine is None or self.status != "running" or self._gen != _FORK_GENERATION[0]:
            return
        try:
            # The hot path of every step: plain values go as they are, in the dict they came in,
            # split into counts and extras on the sampler thread; tensors are snapshotted here,
            # without a device sync. The dict of the previous step again (an integration's
            # constant fields) is not checked again. (A loop: ``PLAIN.issuperset(map(type,
            # ...))`` cost 1.4-2.5 us more per step between two 5 ms steps, issue 25.)
            if info is not self._plain:
                for value in info.values():
                    if type(value) not in PLAIN:
                        info = {key: value if type(value) in PLAIN else capture(value)
                                for key, value in info.items()}
                        break
                else:
                    self._plain = info
            if type(phase) is not str:
                phase = phase_name(phase)
            counter = self._idx.get(phase)
            if counter is None:
                with self._idx_lock:
                    counter = self._idx.setdefault(phase, itertools.count())
            engine.submit((next(counter), phase, t0, t1, timeline, info))
        except Exception as e:  # noqa: BLE001 - a step must never raise into training
            self._hook_errors += 1
            if self._hook_errors == 1:
                log.warning("greentrack: a step could not be recorded (training goes on): %s: %s",
                            type(e).__name__, e)
                engine.event("warning", "hook-error", f"step not recorded: {type(e).__name__}: {e}")

    def submit_window(self, phase: str, t0: float, t1: float, *, flops: Any = None,
                      samples: Any = None, tokens: Any = None, timeline: str = "host",
                      **extra: Any) -> None:
        """Attribute the window ``[t0, t1]`` (``time.monotonic()`` seconds) as one step. Used by
        integrations that mark steps on the GPU timeline and map them to host time later.

        ``flops``, ``samples``, ``tokens`` and ``extra`` fields may be any number: int, float,
        NumPy scalars, Decimal, one-element tensors (CUDA ones too); extras may also be JSON
        values. A value that cannot be recorded drops that field of that step, with a
        ``bad-step-field`` event; a window that is not two real times of this run (NaN, text,
        more than an hour outside it) drops the step, with that event for the field ``window``;
        the other steps are kept. This never raises."""
        self.submit_step(phase, t0, t1, {**extra, "flops": flops, "samples": samples,
                                         "tokens": tokens}, timeline)

    def _earliest_open(self) -> float | None:
        # list() copies the values in one C call under the GIL: no concurrent-change error
        opened = list(self._open.values())
        return min(t for _, t, _ in opened) if opened else None

    def continue_steps(self, counts: dict[str, int]) -> None:
        """Number the next steps of each phase after ``counts`` (``{phase: steps done}``): a run
        resumed from a checkpoint continues its step indices in the new store segment."""
        with self._idx_lock:
            for phase, n in counts.items():
                counter = self._idx.get(phase)
                done = next(counter) if counter is not None else 0
                self._idx[phase] = itertools.count(max(done, int(n)))

    def step(self, phase: str = "train", **info: Any) -> "StepBlock":
        """Context manager around one step: ``with tracker.step(samples=32): ...``.

        Keyword arguments ``flops``, ``samples`` and ``tokens`` are recorded with the step; any
        other keyword lands in the step's ``extra``. A step that raises is still recorded, with
        ``extra.error`` set, and the exception propagates unchanged.
        """
        return StepBlock(self, phase, info)

    # -- labels and quality ----------------------------------------------------------------------
    def add_labels(self, labels: dict[str, Any] | None = None, *, only_missing: bool = False,
                   **more: Any) -> dict[str, str]:
        """Add labels to the run (``precision``, ``method``...), stored at once. With
        ``only_missing`` (how integrations set what they detect), a label already set is kept.

        Raises:
            ConfigError: a bad key or value, or more than 16 labels in all (one line).
        """
        new = parse_labels({**(labels or {}), **more})
        if only_missing:
            new = {k: v for k, v in new.items() if k not in self.labels}
        if not new:
            return dict(self.labels)
        merged = parse_labels({**self.labels, **new})
        self.labels = merged
        if self._writer is not None and self.running:
            self._writer.set_meta({"labels": merged})
        return dict(merged)

    def record(self, loss: Any = None, *, step: int | None = None, **metrics: Any) -> None:
        """Record a loss and any named metric (``val_loss=..., accuracy=...``) now, with the step
        (default: the training steps submitted so far) and, resolved on the sampler thread, the
        cumulative energy at this moment. Values may be numbers or one-element tensors (a CUDA
        one is read once its step is done, without a sync). Cheap; never raises."""
        engine = self._engine
        if engine is None or not self.running:
            return
        t = time.monotonic()
        try:
            values = {"loss": loss, **metrics} if loss is not None else metrics
            for key, value in values.items():
                if type(value) not in PLAIN:
                    values[key] = capture(value)
            if step is None:
                counter = self._idx.get("train")
                step = int(repr(counter)[6:-1]) if counter is not None else 0  # "count(N)": a peek
            elif type(step) is not int:
                step = capture(step)  # a tensor or NumPy step, like any value: cleaned later
            engine.metrics.append((t, step, values))
        except Exception as e:  # noqa: BLE001 - never into training
            self._hook_errors += 1
            if self._hook_errors == 1:
                engine.event("warning", "hook-error", f"metrics not recorded: {type(e).__name__}: {e}")

    # -- live figures --------------------------------------------------------------------------
    def totals(self) -> dict[str, float | None]:
        """Energy so far in joules by kind (``gpu``, ``cpu``, ``dram``: None for a kind no
        device of which is tracked, as in the summary) and ``total``; live."""
        out: dict[str, float | None] = {"gpu": None, "cpu": None, "dram": None}
        if self._engine is not None:
            for ch in self._engine.snapshot():
                out[ch.kind] = (out.get(ch.kind) or 0.0) + ch.energy_j
        out["total"] = float(sum(v for v in out.values() if v is not None))
        return out

    @property
    def over_budget(self) -> bool:
        """True once the run has reached one of its budgets (``budget_kwh``, ``budget_grams``,
        ``budget_cost``; checked on the sampler thread every ``counter_interval_s``). A plain
        loop reads it to stop: ``if tracker.over_budget: break``."""
        watch = self.budget
        return watch is not None and watch.over

    def steps_done(self, phase: str = "train") -> int:
        """Steps of ``phase`` submitted so far (continued across resumed segments)."""
        counter = self._idx.get(phase)
        return int(repr(counter)[6:-1]) if counter is not None else 0  # "count(N)": a peek

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def summary(self) -> Summary:
        """The run directory's summary (all its processes), as ``greentrack summary --json``."""
        # the read model loads when a run is read, not when training imports the tracker
        from greentrack.reports.summary import summarize
        return summarize(self.run_dir)


def _read_totals(run_dir: Path, known: dict[Path, Any]) -> Totals:
    """The run's totals at :meth:`Tracker.stop`: every store at the settings it recorded, as the
    summary and reports count them (``known``: stores read ahead, see ``Run.open``). The read
    model and the footprint (about 100 ms of imports) load here, at the first stop, not when
    training imports the tracker."""
    from greentrack.carbon.runs import totals  # the read side, loaded at the first stop
    from greentrack.run import Run  # likewise
    with Run.open(run_dir, known=known) as run:
        return totals(run)


def _read_closed(run_dir: Path) -> dict[Path, Any]:
    # the read side, loaded on the helper thread of a resumed run (see _read_totals)
    from greentrack.run.model import read_closed
    return read_closed(run_dir)


class StepBlock:
    """One ``with tracker.step(...):`` block (what :meth:`Tracker.step` returns): a clock read and
    a dict entry on entry, a clock read and a queue append on exit. A plain class rather than
    ``contextlib.contextmanager``, whose generator machinery cost more than the step's own
    bookkeeping (about 2.7 us of 6 on a 2-core VM, issue 25)."""

    __slots__ = ("_tracker", "_phase", "_info", "_token")

    def __init__(self, tracker: Tracker, phase: str, info: dict[str, Any]) -> None:
        self._tracker, self._phase, self._info = tracker, phase, info
        self._token = -1

    def __enter__(self) -> None:
        tracker = self._tracker
        t = time.monotonic()
        token = self._token = next(tracker._tokens)
        tracker._open[token] = (self._phase, t, self._info)
        engine = tracker._engine
        if engine is not None and engine.idle:
            engine.wake_from_idle()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        tracker = self._tracker
        t1 = time.monotonic()
        opened = tracker._open.pop(self._token, None)
        if opened is None:
            return
        info = self._info if exc_type is None else {**self._info, "error": exc_type.__name__}
        tracker.submit_step(opened[0], opened[1], t1, info)


def _close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - a refused start still ends with its one-line error
        pass


__all__ = ["Tracker", "StepBlock", "ConfigError"]
