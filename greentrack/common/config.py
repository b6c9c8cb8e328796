"""One typed configuration object, validated once, with one-line errors.

Every field can also come from the environment as ``GREENTRACK_<FIELD>`` (upper case), which is how
``greentrack run`` and launchers pass settings to processes they start.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from greentrack.common.errors import ConfigError
from greentrack.common.labels import parse_labels
from greentrack.common.units import check_number, is_number

Mode = Literal["machine", "process"]
MODES = ("machine", "process")
#: ``co2_eq_emissions.training_type`` values of the Hugging Face Hub's model card specification
#: (https://huggingface.co/docs/hub/model-cards-co2: "pre-training or fine-tuning")
TRAINING_TYPES = ("pre-training", "fine-tuning")
#: What a run does at its budget (:mod:`greentrack.process.budget`).
ON_BUDGET = ("warn", "stop")
#: The budgets of a run and their units: IT kWh, location-based grams CO2e, cost.
BUDGETS = {"budget_kwh": "kWh of IT energy (the summary's energy_kwh)", "budget_grams": "grams CO2e "
           "(location-based)", "budget_cost": "in the currency of the prices"}
#: The largest budget accepted (a TWh, a million tonnes): a larger one is a typo.
MAX_BUDGET = 1e12


@dataclass(frozen=True)
class Config:
    """Settings of a :class:`greentrack.Tracker`.

    Attributes:
        run_dir: directory of the run; each process writes its own store file in it. Default
            (:func:`default_run_dir`): ``greentrack-runs/<launcher's job id>`` under a launcher
            (every rank in one directory), else ``greentrack-runs/<UTC time>-<pid>``: one per run.
        interval_s: period of the fast poll (GPU instant power, RAPL counters). 0.05 s catches
            every ~100 ms NVML update (see docs/methodology.md).
        counter_interval_s: period of the NVML total-energy counter read (it costs ~3 ms a call
            on an H100) and of utilization-based estimates. 0.2 s, chosen by
            ``bench/sampling_defaults.py``: steps of 120-400 ms within 2.8% (energy-weighted),
            500 ms windows within 0.4%. Reads are staggered between channels; if they cost more
            than 0.5% of a core in CPU, the cadence stretches (to 1 s at most) and says so.
        flush_interval_s: how often the store commits; bounds what SIGKILL can lose.
        resolution_s: width of the stored power/energy time series buckets.
        mode: ``machine`` counts every CPU/DRAM joule of the host (a dedicated training node);
            ``process`` splits shared CPU and DRAM energy by the tracked process tree's share.
        gpus: ``None`` for automatic (all visible, or this rank's GPU under torchrun), or a tuple
            of NVML indices / UUIDs.
        host_energy: measure CPU and DRAM in this process. ``None``: yes unless this is not local
            rank 0 (one process per node measures the host, so ranks are not double counted).
        cpu_tdp_w: override the CPU TDP used when RAPL is unreadable.
        dram_w_per_gb: power per GB of memory used when no DRAM zone is readable.
        run_id: identifier shared by every process of the run (default: from the run directory).
        rank: global rank of this process (default: ``RANK`` from the environment, else 0).
        emissions_csv: a per-project CSV in codecarbon's ``emissions.csv`` columns; the run's row
            is appended at stop (:mod:`greentrack.reports.emissions_log`). None: no file.
        project_name: the ``project_name`` of the run's ``emissions.csv`` rows, as codecarbon's
            setting of that name (1-128 printable characters). None: ``greentrack``
            (codecarbon's own default is ``codecarbon``), never the run's id.
        training_type: ``pre-training`` or ``fine-tuning`` (the Hugging Face Hub's
            ``co2_eq_emissions.training_type``); None: unknown, or inferred by the Hugging Face
            integration.
        labels: what kind of experiment this is, e.g. ``{"precision": "bf16", "method": "lora"}``
            (or ``"precision=bf16,method=lora"``): at most 16, keys ``[a-z][a-z0-9_]{0,31}``,
            values 1-64 printable characters (:mod:`greentrack.common.labels`). Integrations add the
            precision the framework uses when none is given.
        calibrate_power_limits: GPU power limits in watts to measure the run at, over its first
            training steps (:mod:`greentrack.process.calibration`; needs the privilege to set the limit,
            and changes the run while it calibrates). ``None``: off. Text ``"250,300"`` works too.
        calibration_steps: training steps measured at each limit (default 20).
        calibration_warmup_steps: steps discarded after each limit change, before those measured
            (default 5), so the clocks and temperature settle.
        budget_kwh: the run's budget of IT energy in kWh (what the hardware drew: the summary's
            ``energy_kwh``, before the PUE, as ``greentrack inventory --budget`` counts it); None:
            none. :mod:`greentrack.process.budget` checks it on the sampler
            thread.
        budget_grams: the run's budget of location-based emissions in grams CO2e.
        budget_cost: the run's budget of cost (electricity and GPU-hours, in ``currency``).
        on_budget: ``warn`` (default): a warning when the forecast says the run will pass a
            budget and when it does; ``stop``: also a graceful stop at the budget (Lightning
            ``trainer.should_stop``, Hugging Face ``control.should_training_stop``, a plain loop
            reads ``tracker.over_budget``). Never an exception into training.
    """

    run_dir: Path = None  # type: ignore[assignment]  # None: default_run_dir(), at construction
    interval_s: float = 0.05
    counter_interval_s: float = 0.2
    flush_interval_s: float = 0.5
    resolution_s: float = 1.0
    mode: Mode = "machine"
    gpus: tuple[int | str, ...] | None = None
    host_energy: bool | None = None
    cpu_tdp_w: float | None = None
    dram_w_per_gb: float = 0.3725
    run_id: str | None = None
    rank: int | None = None
    # -- Prometheus (greentrack.exporters) --
    prometheus_port: int | None = None
    prometheus_addr: str = "127.0.0.1"
    pushgateway_url: str | None = None
    push_interval_s: float = 15.0
    final_scrape_wait_s: float | None = None
    job: str | None = None
    # -- carbon and cost (greentrack.carbon); None = not set --
    country: str | None = None
    region: str | None = None
    cloud: str | None = None
    carbon_intensity_g_per_kwh: float | None = None
    intensity_csv: str | None = None
    market_factor_g_per_kwh: float | None = None
    pue: float | None = None
    electricity_price: float | None = None
    gpu_hour_price: float | None = None
    currency: str | None = None
    # -- outputs --
    emissions_csv: str | None = None
    project_name: str | None = None
    training_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # -- power-limit calibration (greentrack.process.calibration); None = off --
    calibrate_power_limits: tuple[float, ...] | None = None
    calibration_steps: int = 20
    calibration_warmup_steps: int = 5
    # -- budgets of the run (greentrack.process.budget); None = none --
    budget_kwh: float | None = None
    budget_grams: float | None = None
    budget_cost: float | None = None
    on_budget: str = "warn"
    #: True when no run directory was given (set at construction; integrations then pick one).
    run_dir_is_default: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir_is_default", self.run_dir is None)
        object.__setattr__(self, "run_dir", default_run_dir() if self.run_dir is None
                           else _run_dir(self.run_dir))
        object.__setattr__(self, "labels", parse_labels(self.labels, "labels"))
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if value is not None or name not in _UNSET_OK:
                _in_range(name, value, low, high)
        if self.counter_interval_s < self.interval_s:
            raise ConfigError("counter_interval_s", self.counter_interval_s,
                              f"must be >= interval_s ({self.interval_s})")
        if self.mode not in MODES:
            raise ConfigError("mode", self.mode, f"must be one of {', '.join(MODES)}")
        if self.gpus is not None:
            object.__setattr__(self, "gpus", _parse_gpus(self.gpus))
        if self.prometheus_port is not None and (isinstance(self.prometheus_port, bool) or
                                                 not isinstance(self.prometheus_port, int) or
                                                 not 0 <= self.prometheus_port <= 65535):
            raise ConfigError("prometheus_port", self.prometheus_port,
                              "must be an integer 0-65535 (0 picks a free port)")
        for name in ("run_id", "job"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _LABEL.fullmatch(value)):
                raise ConfigError(name, value, "must be 1-64 characters of letters, digits, "
                                  "'.', '_' or '-'")
        if self.currency is not None and (not isinstance(self.currency, str)
                                          or not _CURRENCY.fullmatch(self.currency)):
            raise ConfigError("currency", self.currency, "must be a three-letter ISO 4217 code, "
                              "e.g. EUR")
        if self.training_type is not None and self.training_type not in TRAINING_TYPES:
            raise ConfigError("training_type", self.training_type,
                              f"must be one of {', '.join(TRAINING_TYPES)} (the Hugging Face Hub's "
                              "co2_eq_emissions values)")
        if self.emissions_csv is not None and (not isinstance(self.emissions_csv, (str, os.PathLike))
                                               or not str(self.emissions_csv).strip()):
            raise ConfigError("emissions_csv", self.emissions_csv, "must be a file path")
        if self.project_name is not None and (not isinstance(self.project_name, str) or not
                                              self.project_name.strip() or
                                              len(self.project_name) > 128 or
                                              not self.project_name.isprintable()):
            raise ConfigError("project_name", self.project_name, "must be 1-128 printable "
                              "characters (codecarbon's project_name), or unset for greentrack")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                      or self.rank < 0):
            raise ConfigError("rank", self.rank, "must be an integer >= 0")
        if self.calibrate_power_limits is not None:
            object.__setattr__(self, "calibrate_power_limits",
                               parse_power_limits(self.calibrate_power_limits))
        for name, unit in BUDGETS.items():
            value = getattr(self, name)
            if value is not None:
                check_number(name, value, 0.0, MAX_BUDGET,
                             f"must be a number > 0 and <= {MAX_BUDGET:g} ({unit}), or unset")
                if float(value) <= 0:
                    raise ConfigError(name, value, f"must be a number > 0 and <= {MAX_BUDGET:g} "
                                      f"({unit}), or unset")
        if self.on_budget not in ON_BUDGET:
            raise ConfigError("on_budget", self.on_budget,
                              f"must be one of {', '.join(ON_BUDGET)}")
        for name, low in (("calibration_steps", 1), ("calibration_warmup_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 100_000:
                raise ConfigError(name, value, f"must be an integer from {low} to 100000")

    def replace(self, **changes: Any) -> "Config":
        """A copy with some fields changed; unknown names are a ConfigError."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise ConfigError(name, changes[name], f"unknown setting; known: {', '.join(sorted(known))}")
        new = dataclasses.replace(self, **changes)
        if self.run_dir_is_default and "run_dir" not in changes:
            object.__setattr__(new, "run_dir_is_default", True)  # the same default directory
        return new

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Build from ``GREENTRACK_*`` variables, then apply ``overrides`` (which win)."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = source.get(f"GREENTRACK_{f.name.upper()}")
            if raw is None or f.name == "extra":
                continue
            values[f.name] = _from_text(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        for name in values:
            if name not in known:
                raise ConfigError(name, values[name], f"unknown setting; known: {', '.join(sorted(known))}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings, for the run's metadata."""
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["gpus"] = list(self.gpus) if self.gpus is not None else None
        d["calibrate_power_limits"] = (list(self.calibrate_power_limits)
                                       if self.calibrate_power_limits is not None else None)
        d["emissions_csv"] = str(self.emissions_csv) if self.emissions_csv is not None else None
        return d


def env_run_id(env: Mapping[str, str] | None = None) -> str | None:
    """The job's id from its launcher (``GREENTRACK_RUN_ID``, torchrun's ``TORCHELASTIC_RUN_ID``,
    ``SLURM_JOB_ID``), cut to a safe label, or None."""
    source = os.environ if env is None else env
    for name in ("GREENTRACK_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        value = source.get(name)
        if value and value != "none":
            return "".join(c for c in value if c.isalnum() or c in "-_.")[:64] or None
    return None


def default_run_dir() -> Path:
    """Where a run goes when no ``run_dir`` is given: ``greentrack-runs/<job id>`` when a launcher
    names the job (so all its ranks share one directory), else ``greentrack-runs/<UTC
    time>-<pid>-<random>``. Two unrelated runs never share a directory (and so never a run id),
    also processes of two containers that are each PID 1 and start in the same second."""
    job = env_run_id()
    if job:
        return Path("greentrack-runs") / job
    import secrets
    import time
    return Path("greentrack-runs") / (f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-"
                                      f"{os.getpid()}-{secrets.token_hex(3)}")


#: Where each launcher says who a process is in its job, in order: torchrun (and Lightning,
#: accelerate, deepspeed), Slurm's ``srun`` (a task per process), Open MPI's ``mpirun``, MPICH/PMI.
LAUNCHER_VARS = {
    "RANK": ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"),
    "LOCAL_RANK": ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"),
    "WORLD_SIZE": ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"),
    "LOCAL_WORLD_SIZE": ("LOCAL_WORLD_SIZE", "SLURM_STEP_TASKS_PER_NODE",
                         "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"),
}


def launcher_int(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """This process's ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` or ``LOCAL_WORLD_SIZE`` as the
    first launcher that says so names it (:data:`LAUNCHER_VARS`), else ``default``. Two Slurm
    tasks of one node are two ranks (without ``RANK``, both read 0 and both measured the host).
    Slurm's tasks per node may read ``2(x3)``: its leading count is taken."""
    source = os.environ if env is None else env
    for var in LAUNCHER_VARS[name]:
        raw = source.get(var, "")
        digits = raw.split("(")[0] if var == "SLURM_STEP_TASKS_PER_NODE" else raw
        if digits.isascii() and digits.isdigit():
            return int(digits)
    return default


def env_int(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """An integer environment variable (``RANK``, ``LOCAL_RANK``...), or ``default`` when unset
    or not plain ASCII digits (``str.isdigit`` would accept '²' and then crash ``int``)."""
    raw = (os.environ if env is None else env).get(name, "")
    return int(raw) if raw.isascii() and raw.isdigit() else default


#: Every numeric setting's allowed range, inclusive. The floors
#: are where a smaller value stops measuring anything better and starts costing: NVML refreshes
#: every ~100 ms, so polls faster than 5 ms (200 Hz) only burn CPU; buckets under 0.1 s multiply
#: the store (1e-5 s wrote 14 MB for a 2 s run); a commit more often than 20 Hz is I/O for nothing.
RANGES: dict[str, tuple[float, float]] = {
    "interval_s": (0.005, 60.0),
    "counter_interval_s": (0.01, 3600.0),
    "flush_interval_s": (0.05, 3600.0),
    "resolution_s": (0.1, 3600.0),
    "push_interval_s": (0.1, 86400.0),
    "final_scrape_wait_s": (0.0, 600.0),
    "cpu_tdp_w": (1.0, 5000.0),
    "dram_w_per_gb": (0.01, 100.0),
    "carbon_intensity_g_per_kwh": (0.0, 3000.0),  # lignite is ~1100 g/kWh at the plant
    "market_factor_g_per_kwh": (0.0, 3000.0),
    "pue": (1.0, 5.0),
    "electricity_price": (0.0, 1000.0),  # per kWh
    "gpu_hour_price": (0.0, 100000.0),
}
#: Numeric settings that may be left unset (None): the rest always have a value.
_UNSET_OK = frozenset({"final_scrape_wait_s", "cpu_tdp_w", "carbon_intensity_g_per_kwh", "market_factor_g_per_kwh", "pue",
                       "electricity_price", "gpu_hour_price"})
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


def _run_dir(value: Any, setting: str = "run_dir") -> Path:
    """A run directory as given. Empty text (an unset variable: ``Tracker(os.environ.get(...,
    ""))``, ``--run-dir "$OUT"``) is refused: ``Path("")`` is the current directory, which would
    become the run directory."""
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(setting, value, "must be a directory path (text or a Path)")
    if not os.fspath(value).strip():
        raise ConfigError(setting, value, "is empty (an unset variable?); name a directory, or "
                          "leave it unset (None) for the default greentrack-runs/<time>-<pid>")
    return Path(value)


def _in_range(name: str, value: Any, low: float, high: float) -> None:
    check_number(name, value, low, high)


def _parse_gpus(value: Any) -> tuple[int | str, ...]:
    allowed = "each GPU must be an NVML index (0, 1, ...) or a UUID (GPU-...)"
    if isinstance(value, bool) or not isinstance(value, (str, int, list, tuple)):
        raise ConfigError("gpus", value, allowed + ", as a list or comma-separated text")
    if isinstance(value, (str, int)):
        value = str(value).split(",") if isinstance(value, str) else [value]
    out: list[int | str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ConfigError("gpus", item, allowed)
        text = str(item).strip()
        if text.isascii() and text.isdigit():
            out.append(int(text))
        elif text.startswith(("GPU-", "MIG-")):
            out.append(text)
        else:
            raise ConfigError("gpus", item, allowed)
    if not out:
        raise ConfigError("gpus", value, "must name at least one GPU, or be left unset for all")
    return tuple(out)


#: The most power limits one calibration measures, and the range of each (W): the board's own
#: constraints are checked when the tracker starts (greentrack.process.calibration).
MAX_POWER_LIMITS = 16
POWER_LIMIT_RANGE_W = (1.0, 5000.0)


def parse_power_limits(value: Any, setting: str = "calibrate_power_limits") -> tuple[float, ...]:
    """Power limits in watts from a list, a NumPy array or tensor, one number or ``"250,300"``:
    each a number in :data:`POWER_LIMIT_RANGE_W`, 1 to :data:`MAX_POWER_LIMITS` of them, repeats
    dropped."""
    lo, hi = POWER_LIMIT_RANGE_W
    allowed = (f"must be 1 to {MAX_POWER_LIMITS} power limits in watts, each from {lo:g} to "
               f"{hi:g}, as a list or comma-separated text (e.g. 250,300,350)")
    given = value
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # a NumPy array or a tensor (0-d: its number)
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]  # one limit (measured against the original)
    else:
        raise ConfigError(setting, given, allowed)
    out: list[float] = []
    for item in items:
        if hasattr(item, "item") and not isinstance(item, (str, bytes, bool)):
            try:
                item = item.item()  # a NumPy scalar, a one-element tensor
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(setting, given, allowed) from None
        if isinstance(item, str):
            try:
                item = float(item)
            except ValueError:
                raise ConfigError(setting, given, allowed) from None
        if isinstance(item, bool) or not is_number(item, lo, hi):
            raise ConfigError(setting, given, allowed)
        if float(item) not in out:
            out.append(float(item))
    if not 1 <= len(out) <= MAX_POWER_LIMITS:
        raise ConfigError(setting, given, allowed)
    return tuple(out)


_FLOATS = {"interval_s", "counter_interval_s", "flush_interval_s", "resolution_s", "cpu_tdp_w",
           "dram_w_per_gb", "push_interval_s", "final_scrape_wait_s",
           "carbon_intensity_g_per_kwh", "market_factor_g_per_kwh", "pue", "electricity_price", "gpu_hour_price",
           "budget_kwh", "budget_grams", "budget_cost"}
_INTS = {"rank", "prometheus_port", "calibration_steps", "calibration_warmup_steps"}


def _from_text(name: str, raw: str) -> Any:
    raw = raw.strip()
    if name in _FLOATS:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"GREENTRACK_{name.upper()}", raw, "must be a number") from None
    if name in _INTS:
        if not (raw.isascii() and raw.isdigit()):
            raise ConfigError(f"GREENTRACK_{name.upper()}", raw, "must be an integer >= 0")
        return int(raw)
    if name == "host_energy":
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError("GREENTRACK_HOST_ENERGY", raw, "must be true or false")
        return raw.lower() in ("1", "true", "yes")
    if name == "gpus":
        return raw
    if name == "labels":
        return parse_labels(raw, "GREENTRACK_LABELS")
    if name == "run_dir":
        return _run_dir(raw, "GREENTRACK_RUN_DIR")
    return raw
