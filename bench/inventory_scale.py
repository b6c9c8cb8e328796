"""How long does a year's inventory of 10,000 runs take, and how much memory? Target: under 60 s
and 500 MB on 2 cores (issue 27).

Generates N small run stores (default 10,000) through the store's own writer
(``tests.helpers.write_store``: a measured GPU and an estimated CPU, one sample a minute, 1-6 h
each, started at random through 2026 so some cross a month's end; 20 projects, 5 teams, 40
hosts, 4 countries, a few with a market factor and a price), cached under ``--dir``. Then times
``python -m greentrack inventory ROOT --period 2026 --by project,team --budget ...`` in a fresh
process (imports included, every format written) and samples the peak RSS of it and its
reading processes together (``--jobs``: by default one per CPU it may use).

    python bench/inventory_scale.py               # generate (cached), time, record in RESULTS.md
    python bench/inventory_scale.py --runs 2000 --no-record
"""

from __future__ import annotations

import argparse
import calendar
import json
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import md_table, record, section  # noqa: E402

from tests.helpers import write_store  # noqa: E402

YEAR0 = float(calendar.timegm((2026, 1, 1, 0, 0, 0)))
YEAR_S = 365 * 86400.0
COUNTRIES = ({"country": "FRA"}, {"country": "DEU", "market_factor_g_per_kwh": 50.0},
             {"country": "USA", "region": "CA"},
             {"country": "SWE", "electricity_price": 0.1, "currency": "EUR"})


def one(args: tuple[Path, int]) -> None:
    root, i = args
    rnd = random.Random(i)
    hours = rnd.uniform(1.0, 6.0)
    write_store(root / f"p{i % 20:02d}" / f"run{i:05d}", run_id=f"bench-{i:05d}",
                start_unix=YEAR0 + rnd.uniform(0.0, YEAR_S - hours * 3600.0),
                duration_s=hours * 3600.0, ramp=rnd.uniform(-0.5, 1.0), resolution_s=60.0,
                host=f"node{i % 40:02d}",
                channels=(("gpu", rnd.uniform(150.0, 700.0), True), ("cpu", 90.0, False)),
                labels={"project": f"p{i % 20:02d}", "team": f"t{i % 5}"},
                settings=dict(COUNTRIES[i % len(COUNTRIES)]))


def generate(root: Path, n: int) -> float:
    """Write the stores missing under ``root`` (two processes); returns the seconds it took
    (when they were cached: the seconds it took then)."""
    done = root / f".complete-{n}"
    if done.exists():
        try:
            return float(done.read_text())
        except ValueError:
            return float("nan")
    t = time.perf_counter()
    todo = [(root, i) for i in range(n)
            if not (root / f"p{i % 20:02d}" / f"run{i:05d}" / "run.json").exists()]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for k, _ in enumerate(pool.imap_unordered(one, todo, chunksize=50), start=1):
            if k % 1000 == 0:
                print(f"generated {k}/{len(todo)}", file=sys.stderr)
    seconds = time.perf_counter() - t
    done.write_text(f"{seconds:.1f}\n")
    return seconds


def _peak_tree_rss_mb(proc: subprocess.Popen[str]) -> float:
    """The largest sum of RSS over ``proc`` and its children (its reading processes), sampled
    every 50 ms until it exits: pages a forked child shares with its parent count twice, so
    this errs high."""
    peak = 0.0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.05)
    return peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/greentrack-bench-inventory")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=None,
                    help="greentrack inventory --jobs (default: its own, the CPUs it may use)")
    ap.add_argument("--repeat", type=int, default=1, help="time each --jobs this many times")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    root = Path(args.dir) / f"runs-{args.runs}"
    gen_s = generate(root, args.runs)
    rows, ok = [], True
    for jobs in ([args.jobs] if args.jobs is not None else [1, None]) * args.repeat:
        result = time_inventory(root, Path(args.dir) / "out", jobs)
        if result is None:
            return 1
        doc, wall, cpu_s, rss_mb, load = result
        t_ = doc["totals"]
        print(f"generate {gen_s:.0f} s; inventory of {t_['runs']} runs, --jobs "
              f"{jobs or 'default'}: {wall:.1f} s ({cpu_s:.1f} CPU-s), peak RSS {rss_mb:.0f} MB "
              f"(load before {load[0]:.2f}); {t_['facility_kwh'] / 1000:.1f} MWh")
        rows.append([f"{t_['runs']:,} ({doc['data_quality']['runs_found']:,} found)",
                     str(jobs or f"default ({default_jobs()})"), f"{wall:.1f}", f"{cpu_s:.1f}",
                     f"{rss_mb:.0f}", f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"])
        ok = ok and wall < 60.0 and rss_mb < 500.0
    if not args.no_record:
        sizes = {p.name: p.stat().st_size for p in sorted((Path(args.dir) / "out").iterdir())}
        body = md_table(["runs (stores)", "--jobs", "wall (s)", "CPU (s), all processes",
                         "peak RSS, all processes (MB)", "load avg before (1/5/15 min)"], rows)
        body += (f"\n\nTarget: under 60 s and 500 MB on 2 cores. Each row is one fresh "
                 f"`python -m greentrack inventory` process (imports, every format written: "
                 f"{', '.join(f'{k} {v:,} B' for k, v in sizes.items())}); stores generated "
                 f"once, by two processes through the store writer ({gen_s:.0f} s), under "
                 f"{args.dir}, page cache warm. "
                 f"{doc['data_quality']['split_across_months']} runs cross a month's end and are "
                 f"split by their energy over time; {doc['totals']['facility_kwh'] / 1000:.1f} "
                 "MWh facility. The machine was shared with other sessions' jobs (the load "
                 "column): wall time is what this process got of the 2 cores, CPU time what it "
                 "needed.")
        record("inventory_scale", section(
            "inventory_scale", "Inventory at scale: a year of small runs (`bench/inventory_scale.py`)",
            body))
    return 0 if ok else 1


def default_jobs() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


def time_inventory(root: Path, out: Path, jobs: int | None
                   ) -> tuple[dict, float, float, float, tuple[float, float, float]] | None:
    """One ``greentrack inventory`` of the year: (document, wall s, CPU s, peak RSS MB, load)."""
    argv = [sys.executable, "-m", "greentrack", "inventory", str(root), "--period", "2026",
            "--by", "project,team", "--budget", "project=p01:1MWh", "--budget", "team=t2:2t",
            "--out", str(out)] + ([] if jobs is None else ["--jobs", str(jobs)])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("GREENTRACK_ELECTRICITYMAPS_TOKEN", None)
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errors,
                                text=True)
        rss_mb = _peak_tree_rss_mb(proc)
        wall = time.perf_counter() - t
        errors.seek(0)
        err = errors.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        print(err, file=sys.stderr)
        return None
    return (json.loads((out / "inventory.json").read_text(encoding="utf-8")), wall, cpu_s,
            rss_mb, load)


if __name__ == "__main__":
    sys.exit(main())
