"""How long does a year's inventory of 10,000 runs take, and how much memory? Target: under 60 s
and 500 MB on 2 cores (issue 27).

Generates N small run stores (default 10,000) through the store's own writer
(``tests.helpers.write_store``: a measured GPU and an estimated CPU, one sample a minute, 1-6 h
each, started at random through 2026 so some cross a month's end; 20 projects, 5 teams, 40
hosts, 4 countries, a few with a market factor and a price), cached under ``--dir``. Then times
``python -m greentrack inventory ROOT --period 2026 --by project,team --budget ...`` in a fresh
process (imports included, every format written) and reads its peak RSS
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``).

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
import time
from pathlib import Path

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
    """Write the stores missing under ``root`` (two processes); returns the seconds it took."""
    done = root / f".complete-{n}"
    if done.exists():
        return 0.0
    t = time.perf_counter()
    todo = [(root, i) for i in range(n)
            if not (root / f"p{i % 20:02d}" / f"run{i:05d}" / "run.json").exists()]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for k, _ in enumerate(pool.imap_unordered(one, todo, chunksize=50), start=1):
            if k % 1000 == 0:
                print(f"generated {k}/{len(todo)}", file=sys.stderr)
    done.write_text("ok\n")
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/greentrack-bench-inventory")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    root = Path(args.dir) / f"runs-{args.runs}"
    gen_s = generate(root, args.runs)
    out = Path(args.dir) / "out"
    argv = [sys.executable, "-m", "greentrack", "inventory", str(root), "--period", "2026",
            "--by", "project,team", "--budget", "project=p01:1MWh", "--budget", "team=t2:2t",
            "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("GREENTRACK_ELECTRICITYMAPS_TOKEN", None)
    load = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_mb, cpu_s = usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    doc = json.loads((out / "inventory.json").read_text(encoding="utf-8"))
    t_ = doc["totals"]
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    print(f"generate {gen_s:.0f} s; inventory of {t_['runs']} runs {wall:.1f} s ({cpu_s:.1f} CPU-s), peak RSS "
          f"{rss_mb:.0f} MB (load before {load[0]:.2f}); {t_['facility_kwh'] / 1000:.1f} MWh")
    if not args.no_record:
        body = md_table(
            ["runs (stores)", "wall (s)", "CPU (s)", "peak RSS (MB)", "load avg before", "target"],
            [[f"{t_['runs']:,} ({doc['data_quality']['runs_found']:,} found)", f"{wall:.1f}",
              f"{cpu_s:.1f}",
              f"{rss_mb:.0f}", f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
              "< 60 s, < 500 MB on 2 cores"]])
        body += (f"\n\nOne fresh `python -m greentrack inventory` process (imports, every format "
                 f"written: {', '.join(f'{k} {v:,} B' for k, v in sizes.items())}); stores "
                 f"generated once ({gen_s:.0f} s; 0: cached) under {args.dir}, page cache warm. "
                 f"{doc['data_quality']['split_across_months']} runs cross a month's end and are "
                 f"split by their energy over time; {t_['facility_kwh'] / 1000:.1f} MWh facility.")
        record("inventory_scale", section(
            "inventory_scale", "Inventory at scale: a year of small runs (`bench/inventory_scale.py`)",
            body))
    return 0 if wall < 60.0 and rss_mb < 500.0 else 1


if __name__ == "__main__":
    sys.exit(main())
