"""Backfill throughput against the raw pipes, in one run (goals: PG->PG >= 0.5x, MariaDB->PG >= 0.35x).

For each round, in alternation so load from neighbours hits both sides alike:
- the PostgreSQL pipe ``psql -c "COPY orders TO STDOUT (FORMAT binary)" | psql -c "COPY orders FROM STDIN
  (FORMAT binary)"`` between ``dwbench_src`` and ``dwbench_dst``, then our ``copy_range`` of the same table;
- the MariaDB pipe ``mariadb --batch --quick -e 'SELECT ...' | psql -c "COPY orders FROM STDIN (FORMAT
  text, NULL 'NULL')"``, then our ``copy_range`` MariaDB -> PostgreSQL.
``mariadb --batch`` escapes tab, newline and backslash the way COPY text reads them, and prints NULL as
``NULL`` (the bench data hold no text equal to 'NULL'; every result is checked against the source).
Each target starts empty with its primary key, like ours. Ratios compare the best round of each side;
medians and spreads are printed too. Peak RSS of each ``copy_range`` is measured in this process.

    python bench/backfill.py [--rows N] [--batch N] [--rounds N] [--via-temporal]

The last line is ``backfill_pg_vs_copy_pipe=<ratio> backfill_mysql_vs_pipe=<ratio>``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

from dualwrite.config import StoreRef  # noqa: E402
from dualwrite.copy import CopyProgress, copy_range  # noqa: E402
from dualwrite.mapping import identity_mapping  # noqa: E402
from dualwrite.store import Store  # noqa: E402

RSS_LIMIT_MB = 500
COLS = ", ".join(common.COLUMNS)
_CHECKSUM = f"SELECT count(*), coalesce(sum(hashtext(o::text)), 0) FROM {common.TABLE} o"


def checksum(db: str) -> tuple[Any, ...]:
    with psycopg.connect(common.pg_conninfo(db), options="-c TimeZone=UTC") as c:
        row = c.execute(_CHECKSUM).fetchone()
        assert row is not None
        return tuple(row)


def _psql(db: str, sql: str) -> list[str]:
    return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", common.pg_conninfo(db), "-c", sql]


def run_pipe(producer: list[str], consumer: list[str]) -> None:
    env = {**os.environ, "PGOPTIONS": "-c TimeZone=UTC"}
    with subprocess.Popen(producer, stdout=subprocess.PIPE, env=env) as prod:
        cons = subprocess.run(consumer, stdin=prod.stdout, env=env, capture_output=True, check=False)
        assert prod.stdout is not None
        prod.stdout.close()
    if prod.returncode or cons.returncode:
        raise SystemExit(f"pipe failed: {cons.stderr.decode(errors='replace')[:500]}")


def pg_pipe() -> None:
    run_pipe(_psql(common.PG_SOURCE_DB, f"COPY {common.TABLE} TO STDOUT (FORMAT binary)"),
             _psql(common.PG_TARGET_DB, f"COPY {common.TABLE} FROM STDIN (FORMAT binary)"))


def mysql_pipe() -> None:
    producer = ["mariadb", *common.mysql_cli_args(), "--batch", "--quick", "--skip-column-names",
                "-e", f"SELECT {COLS} FROM {common.TABLE}"]
    run_pipe(producer, _psql(common.PG_TARGET_DB, f"COPY {common.TABLE} ({COLS}) FROM STDIN "
                                                   "(FORMAT text, NULL 'NULL')"))


def our_copy(source: Store, batch: int) -> tuple[CopyProgress, float]:
    """One copy_range of the whole table into a fresh target; returns progress and peak RSS (MB)."""
    target = Store(StoreRef("bench_dst", common.pg_url(common.PG_TARGET_DB)))
    try:
        mapping = identity_mapping(source.describe(common.TABLE), target.describe(common.TABLE),
                                   version="version", batch_size=batch)
        common.reset_peak_rss()
        prog = copy_range(source, target, mapping)
        return prog, common.peak_rss_mb()
    finally:
        target.dispose()


def via_temporal(_args: argparse.Namespace) -> None:
    """Hook for timing the same backfill driven by the Temporal backfill workflow (a later issue)."""
    raise SystemExit("--via-temporal: not yet available (the Temporal backfill workflow is not built yet)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=common.DEFAULT_ROWS)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--via-temporal", action="store_true", help="drive the copy through Temporal (not yet)")
    args = ap.parse_args()
    if args.via_temporal:
        via_temporal(args)

    print(f"building data ({args.rows} rows) ...", flush=True)
    common.ensure_pg_source(args.rows)
    common.ensure_mariadb_source(args.rows)
    expected = checksum(common.PG_SOURCE_DB)
    pg_src = Store(StoreRef("bench_pg", common.pg_url(common.PG_SOURCE_DB)))
    my_src = Store(StoreRef("bench_my", common.mysql_url()))
    timer = common.Timer()
    rss: dict[str, float] = {}
    routes: dict[str, str] = {}

    def check(label: str) -> None:
        got = checksum(common.PG_TARGET_DB)
        if got != expected:
            raise SystemExit(f"{label}: target differs from the source ({got} != {expected})")

    for rnd in range(1, args.rounds + 1):
        for label, action in (("pg pipe", pg_pipe), ("pg copy_range", None),
                              ("mysql pipe", mysql_pipe), ("mysql copy_range", None)):
            common.fresh_pg_target()
            if action is not None:
                with timer(label):
                    action()
            else:
                source = pg_src if label.startswith("pg") else my_src
                with timer(label):
                    prog, peak = our_copy(source, args.batch)
                rss[label] = max(rss.get(label, 0.0), peak)
                routes[label] = prog.extra.get("route", "?")
                if prog.rows != args.rows or not prog.done:
                    raise SystemExit(f"{label}: copied {prog.rows} rows, expected {args.rows}")
                parts = prog.extra.get("seconds", {})
                detail = " ".join(f"{k}={v:.2f}s" for k, v in parts.items())
                print(f"  round {rnd} {label}: {timer.samples[label][-1]:.2f}s ({detail})", flush=True)
            check(label)
            if action is not None:
                print(f"  round {rnd} {label}: {timer.samples[label][-1]:.2f}s", flush=True)
    pg_src.dispose()
    my_src.dispose()

    print(f"\nrows={args.rows} batch={args.batch} rounds={args.rounds} (best = ratio basis)")
    for label in ("pg pipe", "pg copy_range", "mysql pipe", "mysql copy_range"):
        best = timer.best(label)
        route = f" route={routes[label]}" if label in routes else ""
        print(f"{label:17s} {timer.spread(label)}  {args.rows / best:>10,.0f} rows/s{route}")
    pg_ratio = timer.best("pg pipe") / timer.best("pg copy_range")
    my_ratio = timer.best("mysql pipe") / timer.best("mysql copy_range")
    median = {k: sorted(v)[len(v) // 2] for k, v in timer.samples.items()}
    print(f"median ratios: pg {median['pg pipe'] / median['pg copy_range']:.2f}  "
          f"mysql {median['mysql pipe'] / median['mysql copy_range']:.2f}")
    peak = max(rss.values())
    verdict = "ok" if peak < RSS_LIMIT_MB else "OVER LIMIT"
    print(f"peak RSS during copy_range: pg {rss['pg copy_range']:.0f} MB, mysql {rss['mysql copy_range']:.0f} MB "
          f"(limit {RSS_LIMIT_MB} MB: {verdict})")
    print(f"goals: pg >= 0.5x {'met' if pg_ratio >= 0.5 else 'MISSED'}, "
          f"mysql >= 0.35x {'met' if my_ratio >= 0.35 else 'MISSED'}")
    print(f"backfill_pg_vs_copy_pipe={pg_ratio:.2f} backfill_mysql_vs_pipe={my_ratio:.2f}")


if __name__ == "__main__":
    main()
