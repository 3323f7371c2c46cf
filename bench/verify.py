"""Verification throughput (goals: same engine >= 1,000,000 rows/s per side, cross engine >= 250,000).

Data: the 1M-row ``orders`` table of :mod:`common` in PostgreSQL (``dwbench_src``), an identical copy in
``dwbench_verify`` (its own database: ``bench/backfill.py`` empties ``dwbench_dst`` on every run), and the
same rows in MariaDB (``dwbench``). In the same run, alternating rounds so neighbours' load hits all alike:

- same engine: ``verify_range`` PostgreSQL -> PostgreSQL (checksums pushed down);
- cross engine: ``verify_range`` MariaDB -> PostgreSQL (canonical rows compared in Python);
- naive: a plain keyset fetch-and-compare loop over the PostgreSQL pair with SQLAlchemy Core (one page
  after the other from each side, rows compared as tuples): the baseline of the issue (~170k rows/s)
  that the ratio is taken against. The same loop on raw DBAPI cursors is printed too, for reference.

Every run must compare all rows and find them equal (else the benchmark fails: a fast wrong verifier
is worth nothing). One more run per method with a handful of planted differences shows the cost of
narrowing. Rates are source rows per second of wall time; each side reads that many rows in that time.
Timings on a small shared machine are noisy: best-of-N is reported with medians and load averages.

    python bench/verify.py [--rows N] [--rounds N]

The last line is ``verify_same_engine_rows_per_s=<n> verify_cross_engine_rows_per_s=<n>
verify_vs_naive=<ratio>``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common

from dualwrite.config import StoreRef
from dualwrite.mapping import TableMapping, identity_mapping
from dualwrite.store import Store
from dualwrite.verify import VerifyReport, verify_range

VERIFY_DB = "dwbench_verify"
NAIVE_BATCH = 10_000


def _stamp(rows: int) -> str:
    return f"dwbench rows={rows} gen={common.GENERATOR_VERSION}"


def ensure_pg_verify_copy(rows: int) -> str:
    """``dwbench_verify.orders``: a binary-COPY clone of the source, reused while its stamp matches."""
    common.ensure_pg_source(rows)
    with psycopg.connect(common.pg_conninfo("postgres"), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (VERIFY_DB,)).fetchone() is None:
            admin.execute(f'CREATE DATABASE "{VERIFY_DB}"')
    with psycopg.connect(common.pg_conninfo(VERIFY_DB), autocommit=True) as dst:
        row = dst.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (common.TABLE,)).fetchone()
        if row is not None and row[0] == _stamp(rows):
            return common.pg_url(VERIFY_DB)
        dst.execute(f"DROP TABLE IF EXISTS {common.TABLE}")
        dst.execute(common.PG_DDL)
        with psycopg.connect(common.pg_conninfo(common.PG_SOURCE_DB)) as src, \
                src.cursor().copy(f"COPY {common.TABLE} TO STDOUT (FORMAT binary)") as out, \
                dst.cursor().copy(f"COPY {common.TABLE} FROM STDIN (FORMAT binary)") as inp:
            for block in out:
                inp.write(block)
        dst.execute(f"VACUUM ANALYZE {common.TABLE}")
        dst.execute(f"COMMENT ON TABLE {common.TABLE} IS '{_stamp(rows)}'")
    return common.pg_url(VERIFY_DB)


def naive_compare_sqlalchemy(source: Store, target: Store, batch: int = NAIVE_BATCH) -> int:
    """The baseline: SQLAlchemy Core keyset pages from each side in turn, compared row by row."""
    import sqlalchemy as sa

    cols = ", ".join(common.COLUMNS)
    first = sa.text(f"SELECT {cols} FROM {common.TABLE} WHERE id > :lo ORDER BY id LIMIT {batch}")
    page_sql = sa.text(f"SELECT {cols} FROM {common.TABLE} WHERE id > :lo AND id <= :hi ORDER BY id")
    last = -(2**63)
    compared = 0
    with source.engine.connect() as sconn, target.engine.connect() as tconn:
        while True:
            page = [tuple(r) for r in sconn.execute(first, {"lo": last}).fetchall()]
            hi = page[-1][0] if page else 2**63 - 1
            other = [tuple(r) for r in tconn.execute(page_sql, {"lo": last, "hi": hi}).fetchall()]
            if page != other:
                raise AssertionError(f"naive compare found a difference after id {last}")
            compared += len(page)
            if len(page) < batch:
                return compared
            last = hi


def naive_compare(source: Store, target: Store, batch: int = NAIVE_BATCH) -> int:
    """The same loop on raw DBAPI cursors (psycopg), for reference."""
    cols = ", ".join(common.COLUMNS)
    sql_first = f"SELECT {cols} FROM {common.TABLE} WHERE id > %s ORDER BY id LIMIT {batch}"
    sql_range = f"SELECT {cols} FROM {common.TABLE} WHERE id > %s AND id <= %s ORDER BY id"
    last = -(2**63)
    compared = 0
    with source.connect() as sconn, target.connect() as tconn:
        scur, tcur = sconn.cursor(), tconn.cursor()
        while True:
            page = scur.execute(sql_first, (last,)).fetchall()
            hi = page[-1][0] if page else 2**63 - 1
            other = tcur.execute(sql_range, (last, hi)).fetchall()
            if page != other:
                raise AssertionError(f"naive compare found a difference after id {last}")
            compared += len(page)
            if len(page) < batch:
                return compared
            last = hi


def _check(report: VerifyReport, rows: int, label: str) -> None:
    if not report.ok or report.rows_source != rows or report.rows_target != rows:
        raise AssertionError(f"{label}: expected {rows} equal rows, got {report.summary()}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=common.DEFAULT_ROWS)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    rows = args.rows

    src_url = common.ensure_pg_source(rows)
    dst_url = ensure_pg_verify_copy(rows)
    my_url = common.ensure_mariadb_source(rows)
    pg_src = Store(StoreRef("bench_pg_src", src_url))
    pg_dst = Store(StoreRef("bench_pg_verify", dst_url))
    my_src = Store(StoreRef("bench_mariadb", my_url))
    same: TableMapping = identity_mapping(pg_src.describe(common.TABLE), pg_dst.describe(common.TABLE))
    cross: TableMapping = identity_mapping(my_src.describe(common.TABLE), pg_src.describe(common.TABLE))

    timer = common.Timer()
    rss: dict[str, float] = {}
    reports: dict[str, VerifyReport] = {}
    print(f"rows={rows} rounds={args.rounds} cores={os.cpu_count()} load={os.getloadavg()[0]:.2f}")
    for rnd in range(args.rounds):
        common.reset_peak_rss()
        with timer("same"):
            reports["same"] = verify_range(pg_src, pg_dst, same)
        rss["same"] = max(rss.get("same", 0.0), common.peak_rss_mb())
        _check(reports["same"], rows, "same-engine")
        common.reset_peak_rss()
        with timer("cross"):
            reports["cross"] = verify_range(my_src, pg_src, cross)
        rss["cross"] = max(rss.get("cross", 0.0), common.peak_rss_mb())
        _check(reports["cross"], rows, "cross-engine")
        if rnd < max(1, args.rounds - 1):
            with timer("naive"):
                n = naive_compare_sqlalchemy(pg_src, pg_dst)
            if n != rows:
                raise AssertionError(f"naive compare saw {n} rows, expected {rows}")
        if rnd == 0:
            with timer("naive-dbapi"):
                n = naive_compare(pg_src, pg_dst)
            if n != rows:
                raise AssertionError(f"naive DBAPI compare saw {n} rows, expected {rows}")
        print(f"round {rnd + 1}: same {timer.samples['same'][-1]:.2f}s cross {timer.samples['cross'][-1]:.2f}s "
              f"load={os.getloadavg()[0]:.2f}", flush=True)

    differ = _with_differences(pg_src, pg_dst, my_src, same, cross, rows)

    same_rate = rows / timer.best("same")
    cross_rate = rows / timer.best("cross")
    naive_rate = rows / timer.best("naive")
    print(f"same-engine  (pushdown) : {timer.spread('same')}  -> {same_rate:,.0f} rows/s per side "
          f"({reports['same'].chunks} chunks, peak RSS {rss['same']:.0f} MB)")
    print(f"cross-engine (python)   : {timer.spread('cross')}  -> {cross_rate:,.0f} rows/s per side "
          f"({reports['cross'].chunks} chunks, peak RSS {rss['cross']:.0f} MB)")
    print(f"naive keyset compare    : {timer.spread('naive')}  -> {naive_rate:,.0f} rows/s (SQLAlchemy Core; "
          f"raw DBAPI loop {rows / timer.best('naive-dbapi'):,.0f} rows/s, ratio against it "
          f"{same_rate * timer.best('naive-dbapi') / rows:.1f})")
    for label, (secs, report) in differ.items():
        print(f"{label} with planted differences: {secs:.2f}s, found {report.summary()}")
    print(f"goals: same >= 1,000,000 rows/s ({'met' if same_rate >= 1e6 else 'MISSED'}), "
          f"cross >= 250,000 rows/s ({'met' if cross_rate >= 2.5e5 else 'MISSED'}); timings are noisy on a "
          f"shared 2-core machine")
    print(f"verify_same_engine_rows_per_s={same_rate:.0f} verify_cross_engine_rows_per_s={cross_rate:.0f} "
          f"verify_vs_naive={same_rate / naive_rate:.1f}")


def _with_differences(pg_src: Store, pg_dst: Store, my_src: Store, same: TableMapping, cross: TableMapping,
                      rows: int) -> dict[str, tuple[float, VerifyReport]]:
    """Plant 3 changed rows and 1 deleted row in the PostgreSQL copy; time finding them; put them back."""
    out: dict[str, tuple[float, VerifyReport]] = {}
    conninfo = common.pg_conninfo(VERIFY_DB)
    with psycopg.connect(conninfo, autocommit=True) as c:
        saved: list[Any] = c.execute(f"SELECT * FROM {common.TABLE} WHERE id = 500001").fetchall()
        c.execute(f"UPDATE {common.TABLE} SET status = status || '!' WHERE id IN (17, 400000, 999999)")
        c.execute(f"DELETE FROM {common.TABLE} WHERE id = 500001")
    try:
        for label, src, mapping in (("same-engine", pg_src, same), ("cross-engine", my_src, cross)):
            with common.timed() as t:
                report = verify_range(src, pg_dst, mapping)
            expect = (1 if rows > 500001 else 0, sum(1 for i in (17, 400000, 999999) if i <= rows))
            if (report.missing, report.field_different) != expect or report.extra:
                raise AssertionError(f"{label}: planted {expect}, found {report.summary()}")
            out[label] = (t[0], report)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as c:
            c.execute(f"UPDATE {common.TABLE} SET status = rtrim(status, '!') WHERE id IN (17, 400000, 999999)")
            cur = c.cursor()
            for r in saved:
                cur.execute(f"INSERT INTO {common.TABLE} VALUES ({', '.join(['%s'] * len(r))})", r)
    return out


if __name__ == "__main__":
    main()
