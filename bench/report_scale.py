"""How long do the full report and the advice of a large run take? Target: <= 3 s and <= 100 MB
each on 2 cores.

Generates a 7-day, 8-GPU run store (one process tracking 8 GPUs, a CPU package and a DRAM zone)
written straight through the store's schema at the default 1 s resolution: 10 channels x 604,800
buckets = 6.05 M sample rows, plus one training step every 2 s (302,400 step rows). Then times
``greentrack report RUN_DIR --format all`` (json, md, html, csv, boamps, hf) and ``greentrack
advise RUN_DIR``, each a fresh process, with a country and an hourly intensity CSV so the
time-resolved path is exercised too, and their peak RSS. The store has the rollups greentrack
keeps (its triggers fill them as the samples go in); ``--legacy`` also times a store written
before them (samples only).

    python bench/report_scale.py --legacy     # generate (cached in /tmp), time, record in RESULTS.md
    python bench/report_scale.py --no-record  # time only

Power is synthetic but shaped like training: GPUs alternate ~650 W compute and ~250 W data phases
with a daily 30-minute evaluation dip; CPU ~180 W, DRAM ~25 W.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import record  # noqa: E402

from greentrack.store.layout import _SCHEMA, SCHEMA_VERSION, SUFFIX  # noqa: E402
from greentrack.store.writer import rollup_meta, rollup_schema  # noqa: E402

DAYS = 7
GPUS = 8
RES_S = 1.0
STEP_S = 2.0
START_UNIX = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def _gpu_w(i: int, t: float) -> float:
    if (t % 86400.0) < 1800.0:  # daily evaluation: GPUs mostly idle
        return 120.0 + 3.0 * i
    return (650.0 if (t % STEP_S) < 1.4 else 250.0) + 10.0 * math.sin(t / 600.0 + i)


def generate(run_dir: Path, days: float = DAYS, gpus: int = GPUS, legacy: bool = False) -> Path:
    """Write the synthetic store; returns its path. Reuses an existing complete one.
    ``legacy``: as greentrack wrote it before the rollups (samples only)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"benchhost-r0-00000000{SUFFIX}"
    done = run_dir / (".complete-legacy" if legacy else ".complete-rollups")
    if done.exists() and path.exists():
        return path
    for p in run_dir.glob("*"):
        p.unlink()
    duration = days * 86400.0
    n = int(duration / RES_S)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(_SCHEMA + ("" if legacy else rollup_schema(RES_S / 2.0)))
    conn.execute("BEGIN")
    meta = {"run_id": "bench7d8gpu", "host": "benchhost", "pid": 1, "rank": 0, "local_rank": 0,
            "world_size": 1, "started_unix": START_UNIX, "status": "completed", "mode": "machine",
            "settings": {"resolution_s": RES_S}, "schema_version": SCHEMA_VERSION,
            "segment": "00000000", "duration_s": duration, "ended_unix": START_UNIX + duration,
            "versions": {"greentrack": "bench", "python": platform.python_version(),
                         "platform": platform.platform()}}
    if not legacy:  # the rollups the store's triggers keep, as StoreWriter's stores have them
        meta["rollup"] = rollup_meta(RES_S / 2.0)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    channels = [(i + 1, "gpu", f"gpu{i}", "NVIDIA H100 80GB HBM3", "nvml-energy-counter", 1,
                 "NVML total energy counter", "high (+-10%): board counter", 0) for i in range(gpus)]
    channels += [(gpus + 1, "cpu", "package-0", "package-0", "rapl-powercap", 1, "powercap",
                  "high (+-10%)", 1),
                 (gpus + 2, "dram", "dram-0", "dram", "rapl-powercap", 1, "powercap", "high (+-10%)", 1)]
    totals = {c[0]: 0.0 for c in channels}
    for cid in totals:
        def rows(cid: int = cid):  # noqa: ANN202 - generator of sample rows
            for k in range(n):
                t = k * RES_S
                w = _gpu_w(cid - 1, t) if cid <= gpus else (180.0 if cid == gpus + 1 else 25.0)
                totals[cid] += w * RES_S
                yield (cid, t, RES_S, w * RES_S)
        conn.executemany("INSERT INTO samples VALUES (?,?,?,?)", rows())
    conn.executemany(
        "INSERT INTO channels (id, kind, device, name, method, measured, source, uncertainty, "
        "host_scope, details, energy_j, until_t, gap_s, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(*c, "{}", totals[c[0]], duration, 0.0, "ok") for c in channels])

    def steps():  # noqa: ANN202
        for k in range(int(duration / STEP_S)):
            t0 = k * STEP_S
            g = sum(_gpu_w(i, t0) for i in range(gpus)) * STEP_S
            yield (k, "train", t0, t0 + STEP_S, STEP_S, g, 180.0 * STEP_S, 25.0 * STEP_S,
                   gpus * STEP_S, 8 * 3.0e14, 256.0, 256.0 * 2048, "host", "{}")
    conn.executemany(
        "INSERT INTO steps (idx, phase, t0, t1, duration_s, gpu_j, cpu_j, dram_j, gpu_seconds, "
        "flops, samples, tokens, timeline, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", steps())
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    (run_dir / "run.json").write_text(json.dumps({"run_id": "bench7d8gpu", "format": "greentrack-run",
                                                  "schema_version": SCHEMA_VERSION}))
    done.write_text("ok\n")
    return path


def hourly_csv(path: Path, days: float = DAYS) -> Path:
    """An Electricity Maps-style hourly export covering the run."""
    lines = ["Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
             "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,"
             "Data Source,Data Estimated,Data Estimation Method"]
    for h in range(int(days * 24) + 2):
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(START_UNIX + h * 3600))
        direct = 50.0 + 30.0 * math.sin(h / 24.0 * 2 * math.pi)
        lines.append(f"{ts},France,France,FR,{direct:.2f},{direct + 25:.2f},90,30,entsoe.eu,false,")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


#: Targets (issue 25): a full report and ``greentrack advise`` of this store each in at most 3 s
#: and 100 MB peak RSS on 2 cores.
TARGET_S, TARGET_MB = 3.0, 100.0


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """``(wall s, peak RSS MB, stderr)`` of one fresh process (interpreter start and imports
    included); raises on a failed command."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:5])} failed ({proc.returncode}): {err}")
    return wall, usage.ru_maxrss / 1024.0, err


def measure(run_dir: Path, csv_path: Path, out: Path, repeat: int) -> dict[str, list[tuple[float,
                                                                                            float]]]:
    """``{"report": [(s, MB), ...], "advise": [...]}``: ``repeat`` fresh processes each."""
    report = [sys.executable, "-m", "greentrack", "report", str(run_dir), "--format", "all",
              "--out", str(out), "--country", "FRA", "--intensity-csv", str(csv_path),
              "--electricity-price", "0.2", "--gpu-hour-price", "2.5", "--currency", "EUR"]
    advise = [sys.executable, "-m", "greentrack", "advise", str(run_dir), "--country", "FRA",
              "--intensity-csv", str(csv_path)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("GREENTRACK_ELECTRICITYMAPS_TOKEN", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: compiled modules cached
    _timed(advise, env)  # warm: the page cache, and the modules compiled once
    found: dict[str, list[tuple[float, float]]] = {"report": [], "advise": []}
    for _ in range(repeat):
        for name, argv in (("report", report), ("advise", advise)):
            found[name].append(_timed(argv, env)[:2])
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/greentrack-bench-7d8gpu")
    ap.add_argument("--days", type=float, default=DAYS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--legacy", action="store_true",
                    help="also time a store written before rollups (samples only; in DIR-legacy)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    base = Path(args.dir)
    run_dir = base / "run"
    t = time.perf_counter()
    generate(run_dir, args.days)
    gen_s = time.perf_counter() - t
    csv_path = hourly_csv(base / "fr-hourly.csv", args.days)
    out = base / "out"
    found = measure(run_dir, csv_path, out, args.repeat)
    legacy = None
    if args.legacy:
        old = Path(f"{base}-legacy")
        generate(old / "run", args.days, legacy=True)
        legacy = measure(old / "run", csv_path, old / "out", args.repeat)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    conn = sqlite3.connect(next(run_dir.glob(f"*{SUFFIX}")))
    rows = conn.execute("SELECT (SELECT COUNT(*) FROM samples), (SELECT COUNT(*) FROM steps), "
                        "(SELECT COUNT(*) FROM rollups)").fetchone()
    conn.close()
    summary = json.loads((out / "report.json").read_text())["summary"]
    print(f"generate {gen_s:.1f} s; {rows[0]:,} samples, {rows[1]:,} steps, {rows[2]:,} rollup "
          f"cells; energy {summary['energy_kwh']:.1f} kWh, {summary['emissions_location_kg']:.1f} "
          "kgCO2e")
    for label, res in (("rollups", found), ("samples only", legacy)):
        for name, runs in (res or {}).items():
            print(f"{label}: {name} {', '.join(f'{s:.2f} s / {mb:.0f} MB' for s, mb in runs)}")
    if not args.no_record:
        _record(found, legacy, rows, sizes, args.days, summary)
    ok = all(s <= TARGET_S and mb <= TARGET_MB for runs in found.values() for s, mb in runs)
    return 0 if ok else 1


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}")


def _row(what: str, runs: list[tuple[float, float]] | None) -> str:
    if not runs:
        return ""
    return (f"| {what} | {', '.join(f'{s:.2f}' for s, _ in runs)} | {max(s for s, _ in runs):.2f} "
            f"| {max(mb for _, mb in runs):.0f} | <= {TARGET_S:g} s, <= {TARGET_MB:g} MB |\n")


def _record(found: dict[str, list[tuple[float, float]]],
            legacy: dict[str, list[tuple[float, float]]] | None, rows: tuple[int, int, int],
            sizes: dict[str, int], days: float, summary: dict) -> None:
    old = legacy or {}
    body = (
        f"## Report at scale: {days:g}-day, {GPUS}-GPU run (`bench/report_scale.py`)\n\n"
        f"Machine: {_machine()}. Measured {time.strftime('%Y-%m-%d')}, load average "
        f"{os.getloadavg()[1]:.1f} (5 min) at the end.\n"
        f"Store: {rows[0]:,} sample rows (1 s buckets x 10 channels: 8 GPUs, CPU package, DRAM), "
        f"{rows[1]:,} steps, {rows[2]:,} rollup cells (60 s per channel, kept by the store's "
        f"triggers); {summary['energy_kwh']:.0f} kWh.\n"
        "Command: `python bench/report_scale.py --legacy` (stores generated once, cached in "
        "/tmp/greentrack-bench-7d8gpu and -legacy; each timing is a fresh `python -m greentrack "
        "report RUN --format all` or `greentrack advise RUN` process with an hourly Electricity "
        "Maps-style CSV, page cache warm, compiled modules cached; peak RSS from wait4).\n\n"
        "| what | runs (s) | worst (s) | peak RSS (MB) | target |\n| --- | --- | --- | --- | --- |\n"
        + _row("full report, all six formats", found["report"])
        + _row("`greentrack advise`", found["advise"])
        + _row("full report, a store written before the rollups (read from its samples)",
               old.get("report"))
        + _row("`greentrack advise`, a store written before the rollups", old.get("advise"))
        + f"\nOutput sizes (bytes): {', '.join(f'{k} {v:,}' for k, v in sizes.items())}.\n")
    record("report_scale", body)


if __name__ == "__main__":
    sys.exit(main())
