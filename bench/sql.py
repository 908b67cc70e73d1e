"""SQL guard benchmark: what `tools.sql.guard` costs a query, and what `query()` costs over the bare driver.

    python bench/sql.py [--runs 200] [--calls 500]

Guard: the gold questions over Chinook (tools/tests/data/chinook_questions.json), each guarded `--runs`
times for each engine's dialect, with the 'customer.email' column hidden. "Cold" is a statement the guard
has not seen (the cache bypassed): parse, walk, LIMIT rewrite and generating the SQL to run; it is also
split into those phases. "Cached" is the same statement sent again (a retry, a dashboard's refresh): a
lookup in the guard's LRU cache. Target: p50 under 1 ms.

End to end on SQLite: `query()` (guard, open the file read-only with the authorizer and limits, run, fetch,
convert to JSON, close), for a statement new to the guard and for one it has seen, against sqlite3 running the
same SQL on a connection it keeps open, and against sqlite3 opening the file for each call as `query()` does;
`--calls` calls each, taking turns per question.
DuckDB the same way, from a copy built in a temporary folder. PostgreSQL too when DATABASE_URL is set (a
database and a reader role made for the bench and dropped after it). No Django. It never fails on a timing.
"""

import argparse
import functools
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

import duckdb  # noqa: E402
import psycopg  # noqa: E402
import sqlglot  # noqa: E402

from bench.callers import pct  # noqa: E402
from tools import sql  # noqa: E402
from tools.tests import chinook  # noqa: E402

TARGET_MS = 1.0
HIDDEN = frozenset({"customer.email"})
CAP = 200


def timed(function, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        function()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def guard_speed(runs: int) -> None:
    questions = chinook.questions()
    print(f"guard over {len(questions)} gold questions x 3 dialects, {runs} runs each: p50 / p95, ms")
    phases = {"cold (parse + walk + limit + generate)": [], "  parse": [], "  walk and checks": [],
              "  limit and generate": [], "cached (same statement again)": []}
    for engine in sql.ENGINES:
        dialect = sql.DIALECT[engine]
        for question in questions:
            text = chinook.gold_sql(question, engine)
            sql.guard(text, engine=engine, row_cap=CAP, hidden=HIDDEN)  # warm up, and fill the cache
            tree = sqlglot.parse_one(text, read=dialect)
            for phase, function in guard_phases(text, engine, tree).items():
                phases[phase] += timed(function, runs)
    for label, samples in phases.items():
        p50, p95 = pct(samples)
        verdict = ""
        if not label.startswith(" "):
            verdict = f"   target p50 < {TARGET_MS:g} ms: {'met' if p50 < TARGET_MS else 'missed'}"
        print(f"  {label:<40} {p50:7.3f} / {p95:7.3f}{verdict}")
    print(f"  (sqlglot {sqlglot.__version__}, {'compiled' if _compiled() else 'pure Python'})")


def guard_phases(text: str, engine: str, tree) -> dict:
    dialect = sql.DIALECT[engine]

    def checks():
        sql._check_root(tree, text, False)
        sql._check_nodes(tree, engine, False)
        sql._check_hidden(tree, sql._tables(tree), HIDDEN)

    return {
        "cold (parse + walk + limit + generate)": lambda: sql._guard(text, engine, CAP, HIDDEN, False),
        "  parse": lambda: sqlglot.parse(text, read=dialect),
        "  walk and checks": checks,
        "  limit and generate": lambda: sql._generate(sql._limited(tree, CAP + 1), dialect),
        "cached (same statement again)": lambda: sql.guard(text, engine=engine, row_cap=CAP, hidden=HIDDEN),
    }


def _compiled() -> bool:
    import sqlglot.parser

    return not sqlglot.parser.__file__.endswith(".py")


def end_to_end(label: str, target: sql.Target, open_raw, calls: int) -> None:
    """query() against the driver alone, on a connection opened per call and on one kept open. The kept one
    is timed last: an open DuckDB connection would let query() share its database instance."""
    questions = chinook.questions()
    texts = [chinook.gold_sql(questions[i % len(questions)], target.engine) for i in range(calls)]
    samples = {"query(), a new statement": [], "query(), a statement seen before": [],
               "driver, connection per call": [], "driver, kept connection": []}

    def raw(conn, text):
        conn.execute(text).fetchmany(CAP + 1)

    def raw_fresh(text):
        conn = open_raw()
        try:
            raw(conn, text)
        finally:
            conn.close()

    for text in texts:
        sql._guard_cached.cache_clear()
        samples["query(), a new statement"] += timed(functools.partial(sql.query, target, text), 1)
        samples["query(), a statement seen before"] += timed(functools.partial(sql.query, target, text), 1)
        samples["driver, connection per call"] += timed(functools.partial(raw_fresh, text), 1)
    kept = open_raw()
    for text in texts:
        samples["driver, kept connection"] += timed(functools.partial(raw, kept, text), 1)
    kept.close()
    base = pct(samples["driver, kept connection"])[0]
    print(f"{label}: query() against the driver, {calls} calls over the gold questions: p50 / p95, ms")
    for name, values in samples.items():
        p50, p95 = pct(values)
        print(f"  {name:<34} {p50:8.3f} / {p95:8.3f}   x{p50 / base:5.2f} the kept connection's p50")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    guard_speed(args.runs)

    with tempfile.TemporaryDirectory() as folder:
        sqlite_file = chinook.sqlite_copy(Path(folder) / "chinook.sqlite")
        end_to_end("SQLite", sql.Target(engine="sqlite", location=str(sqlite_file), hidden=HIDDEN),
                   lambda: sqlite3.connect(sqlite_file), args.calls)
        duckdb_file = chinook.duckdb_copy(Path(folder) / "chinook.duckdb")
        end_to_end("DuckDB", sql.Target(engine="duckdb", location=str(duckdb_file), hidden=HIDDEN),
                   lambda: duckdb.connect(str(duckdb_file), read_only=True, config=sql.DUCKDB_CONFIG),
                   max(2, args.calls // 5))
    if os.environ.get("DATABASE_URL"):
        made = chinook.postgres_copy(os.environ["DATABASE_URL"])
        try:
            target = sql.Target(engine="postgres", location=made["reader_url"], password=made["password"],
                                hidden=HIDDEN)
            end_to_end("PostgreSQL", target, lambda: psycopg.connect(made["reader_url"], password=made["password"],
                                                                     autocommit=True), args.calls)
        finally:
            chinook.postgres_drop(os.environ["DATABASE_URL"], made)
    else:
        print("PostgreSQL: skipped (no DATABASE_URL)")
    print(f"  load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
