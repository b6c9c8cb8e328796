"""The read model's SQL (see :mod:`greentrack.run`): one place for every read query."""

from __future__ import annotations

from greentrack.store import MAX_ENERGY_J, MAX_T_S, VALID_SAMPLE, VALID_STEP, sql_number

#: A step row's joules, all kinds (``greentrack.engine.steps.StepRow.energy_j`` in Python).
STEP_J = "COALESCE(gpu_j, 0) + COALESCE(cpu_j, 0) + COALESCE(dram_j, 0)"

# A bucket's values are usable (its time needs no check here: the bin's range on t bounds it, and
# a check on t would make SQLite search the primary key by that wide range instead of the bin's,
# scanning the whole channel once per bin: a 7-day store took minutes instead of seconds).
_VALID_BUCKET = ("(" + sql_number("dt", 0.0, MAX_T_S) + " AND "
                 + sql_number("energy_j", 0.0, MAX_ENERGY_J) + ")")

# One scalar subquery per bin walks the (channel_id, t) primary key in order: several times faster
# than GROUP BY on an expression, which sorts every row in a temporary B-tree.
_BINS_SQL = """
WITH RECURSIVE k(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM k WHERE i < ?)
SELECT i, (SELECT SUM(energy_j) FROM samples WHERE channel_id = ? AND t >= i * ? - ?
           AND t < (i + 1) * ? - ? AND """ + _VALID_BUCKET + """) AS e FROM k"""

_STEPS_SQL = """
SELECT phase, SUM({n}) AS n, SUM(duration_s) AS duration_s,
       SUM(""" + STEP_J + """) AS energy_j,
       SUM(gpu_j) AS gpu_j, SUM(gpu_seconds) AS gpu_seconds,
       SUM(flops) AS flops, COUNT(flops) AS n_flops, SUM(samples) AS samples,
       COUNT(samples) AS n_samples, SUM(tokens) AS tokens, COUNT(tokens) AS n_tokens,
       MIN(idx) AS first_idx, COUNT(*) AS rows FROM steps
WHERE """ + VALID_STEP + """ GROUP BY phase"""

# The steps of a phase numbered k or later and their joules (arguments: k, k, phase, k): a
# coalesced row (``n`` steps from ``idx``) counts for its part at or after k, pro rata.
_FROM_SQL = """
SELECT SUM(MIN({n}, idx + {n} - ?)) AS n,
       SUM((""" + STEP_J + """) * MIN(1.0, (idx + {n} - ?) * 1.0 / {n})) AS energy_j
FROM steps WHERE phase = ? AND idx + {n} > ? AND """ + VALID_STEP

_MFU = "json_extract(extra, '$.mfu')"
_MFU_SQL = (f"SELECT SUM({_MFU} * duration_s) AS a, SUM(duration_s) AS b FROM steps WHERE "
            f"extra LIKE '%\"mfu\"%' AND {_MFU} IS NOT NULL AND {sql_number(_MFU, 0.0, 1000.0)} "
            f"AND {VALID_STEP}")

# Union of step windows: each row adds what it reaches past the furthest end before it.
_COVER_SQL = f"""
SELECT SUM(MAX(0.0, t1 - MAX(t0, COALESCE(prev, t0)))) AS u, SUM(t1 - t0) AS s FROM (
  SELECT t0, t1, MAX(t1) OVER (ORDER BY t0, t1 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
         AS prev FROM steps WHERE {VALID_STEP} AND t1 >= t0)"""

# Per channel: the usable samples' count and span (validity evaluated once a row), and all rows
# counted apart (the primary key alone answers that), so the unusable ones are the difference.
_STATS_SQL = f"""
SELECT channel_id, COUNT(*) AS n, MIN(t) AS lo, MAX(t) AS tmax, MAX(t + dt) AS hi FROM samples
WHERE {VALID_SAMPLE} GROUP BY channel_id"""
_ROWS_SQL = "SELECT channel_id, COUNT(*) AS n FROM samples GROUP BY channel_id"

# The same from the rollup cells the store kept of its usable samples (greentrack.store.writer.
# rollup_schema), and their bins: bin i of q cells holds cells [i q, (i + 1) q), as bin i of the
# samples holds their rows in [i w q - offset, (i + 1) w q - offset).
_ROLLUP_STATS_SQL = """
SELECT channel_id, SUM(n) AS n, MIN(lo) AS lo, MAX(tmax) AS tmax, MAX(hi) AS hi FROM rollups
GROUP BY channel_id"""
_VALID_ROLLUP = "(" + " AND ".join(
    [sql_number("k", -1e12, 1e12), sql_number("n", 1, 1e12),
     sql_number("energy_j", 0.0, MAX_ENERGY_J)]
    + [sql_number(c, -3600.0, 2 * MAX_T_S) for c in ("lo", "tmax", "hi")]) + ")"
_ROLLUP_BAD_SQL = f"SELECT COUNT(*) AS n FROM rollups WHERE NOT {_VALID_ROLLUP}"
_ROLLUP_BINS_SQL = """
WITH RECURSIVE b(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM b WHERE i < ?)
SELECT i, (SELECT SUM(energy_j) FROM rollups WHERE channel_id = ? AND k >= i * ?
           AND k < (i + 1) * ?) AS e FROM b"""

# Step windows grouped by phase and the grid cells of their start and end (cell = floor((t -
# origin) / w)): with each group's count and summed t0 and t1, the seconds each cell is covered
# follow exactly, and the steps ending in each cell (greentrack.run.Segment.step_cells). One
# scan; as many rows as occupied (phase, cell, cell) triples.
_CELLS_SQL = """
SELECT phase, CAST((t0 - ?) / ? AS INTEGER) AS k0, CAST((t1 - ?) / ? AS INTEGER) AS k1,
       COUNT(*) AS c, SUM({n}) AS steps, SUM(t0) AS s0, SUM(t1) AS s1
FROM steps WHERE """ + VALID_STEP + """ AND t1 >= t0 GROUP BY phase, k0, k1"""

def step_buckets_sql(edges_j: tuple[float, ...]) -> str:
    """Per phase and histogram bucket ``b`` (the first edge with joules <= edge, as Prometheus'
    ``le``; ``len(edges_j)``: above them all), the number of valid step rows, counted in SQLite."""
    cases = " ".join(f"WHEN ({STEP_J}) <= {float(e)!r} THEN {i}" for i, e in enumerate(edges_j))
    return (f"SELECT phase, CASE {cases} ELSE {len(edges_j)} END AS b, COUNT(*) AS n FROM steps "
            f"WHERE {VALID_STEP} GROUP BY phase, b")
