"""Backfill throughput against the raw pipes, in one run (goals: PG->PG >= 0.5x, MariaDB->PG >= 0.35x,
PG->Redis >= 0.5x).

For each round, in alternation so load from neighbours hits both sides alike:
- the PostgreSQL pipe ``psql -c "COPY orders TO STDOUT (FORMAT binary)" | psql -c "COPY orders FROM STDIN
  (FORMAT binary)"`` between ``dwbench_src`` and ``dwbench_dst``, then our ``copy_range`` of the same table;
- the MariaDB pipe ``mariadb --batch --quick -e 'SELECT ...' | psql -c "COPY orders FROM STDIN (FORMAT
  text, NULL 'NULL')"``, then our ``copy_range`` MariaDB -> PostgreSQL;
- then, after those rounds, PostgreSQL -> Redis: a script-level loop reading ``COPY orders TO STDOUT``
  rows with psycopg and writing each as one ``HSET`` in a redis-py pipeline (``transaction=False``,
  ``--redis-pipeline`` rows per round trip), then our ``copy_range`` into the Redis store kind (one hash
  per row, the spec's ``redis: {key: "orders:{id}", value: hash}``, version-guarded: the path the backfill
  activity runs), both into a private ``redis-server`` emptied before each side.
``mariadb --batch`` escapes tab, newline and backslash the way COPY text reads them, and prints NULL as
``NULL`` (the bench data hold no text equal to 'NULL'; every result is checked against the source).
Each target starts empty with its primary key, like ours. Ratios compare the best round of each side;
medians and spreads are printed too. Peak RSS of each ``copy_range`` is measured in this process.

    python bench/backfill.py [--rows N] [--batch N] [--rounds N] [--via-temporal] [--redis-only | --no-redis]

The last line is ``backfill_pg_vs_copy_pipe=<ratio> backfill_mysql_vs_pipe=<ratio>
redis_backfill_rows_per_s=<n> redis_anchor_rows_per_s=<n> redis_backfill_x=<ratio>`` (``--redis-only``:
the Redis keys alone; ``--no-redis``: the SQL ones alone).
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

import common

from dualwrite.backfill_copy import CopyProgress, copy_range
from dualwrite.config import StoreRef
from dualwrite.mapping import TableMapping, identity_mapping
from dualwrite.store import Store

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


def via_temporal(args: argparse.Namespace) -> None:
    """Time the PG->PG backfill driven end to end by ``BackfillWorkflow`` on a local Temporal dev server.

    The workflow splits the key space into ranges and runs one long-running, heartbeating activity per
    range, as in production; the dev server, worker and activities run on this machine beside the pipe.
    Last line: ``backfill_via_temporal_vs_copy_pipe=<ratio>`` (goal >= 0.45).
    """
    import asyncio
    import gc
    import time

    from temporalio.testing import WorkflowEnvironment

    import worker as dw_worker
    from activities.core import DualwriteActivities
    from dualwrite.codec import data_converter
    from dualwrite.config import StoreResolver
    from dualwrite.spec import MigrationSpec
    from workflows.backfill import BackfillWorkflow
    from workflows.models import SEARCH_ATTRIBUTES, TASK_QUEUE, BackfillInput, BackfillResult, TableRef

    common.ensure_pg_source(args.rows)
    expected = checksum(common.PG_SOURCE_DB)
    timer = common.Timer()

    async def run() -> None:
        temporal = Path(sys.executable).parent / "temporal"
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(temporal), search_attributes=list(SEARCH_ATTRIBUTES),
            data_converter=data_converter(), dev_server_log_level="error")
        resolver = StoreResolver(environ={"DUALWRITE_STORE_SRC": common.pg_url(common.PG_SOURCE_DB),
                                          "DUALWRITE_STORE_DST": common.pg_url(common.PG_TARGET_DB)})
        acts = DualwriteActivities(resolver)
        spec = MigrationSpec.model_validate({
            "name": "bench", "old": "src", "new": "dst", "control_store": "dst",
            "backfill_concurrency": args.concurrency,
            "tables": [{"source": common.TABLE, "batch_size": args.batch, "version_column": "version"}]})
        async with env, dw_worker.build_worker(env.client, acts, max_activities=max(4, args.concurrency)):
            for rnd in range(1, args.rounds + 1):
                common.fresh_pg_target()
                with timer("pg pipe"):
                    pg_pipe()
                if checksum(common.PG_TARGET_DB) != expected:
                    raise SystemExit("pg pipe: target differs from the source")
                common.fresh_pg_target()
                acts.stores.close()  # the target table was recreated: forget reflected schemas
                with timer("temporal backfill"):
                    res = await env.client.execute_workflow(
                        BackfillWorkflow.run,
                        BackfillInput(table=TableRef(spec=spec, source=common.TABLE), concurrency=args.concurrency),
                        id=f"bench-backfill-{rnd}-{time.time_ns()}", task_queue=TASK_QUEUE, result_type=BackfillResult)
                if checksum(common.PG_TARGET_DB) != expected:
                    raise SystemExit("temporal backfill: target differs from the source")
                print(f"round {rnd}: pipe {timer.last('pg pipe'):.2f} s, via Temporal "
                      f"{timer.last('temporal backfill'):.2f} s ({res.rows} rows, {res.ranges} ranges, "
                      f"{res.batches} batches)", flush=True)

    asyncio.run(run())
    gc.collect()  # temporalio/sdk-python#300: let the client go before interpreter shutdown
    ratio = timer.best("pg pipe") / timer.best("temporal backfill")
    print(f"pipe: {timer.spread('pg pipe')}; via Temporal: {timer.spread('temporal backfill')}")
    print(f"backfill_via_temporal_vs_copy_pipe={ratio:.2f}")


# -- PostgreSQL -> Redis ---------------------------------------------------------------------------------

REDIS_PREFIX = "dwbench:"
ANCHOR_PREFIX = "dwanchor:orders:"


def redis_anchor(url: str, pipeline: int) -> int:
    """The raw pipe into Redis: ``COPY orders TO STDOUT`` read row by row, one pipelined ``HSET`` per row
    (non-NULL columns as fields, the text PostgreSQL printed as values), ``pipeline`` rows per round trip."""
    import redis

    client = redis.Redis.from_url(url)
    n = 0
    try:
        with psycopg.connect(common.pg_conninfo(common.PG_SOURCE_DB), options="-c TimeZone=UTC") as c, \
                c.cursor().copy(f"COPY {common.TABLE} ({COLS}) TO STDOUT") as out:
            pipe = client.pipeline(transaction=False)
            for row in out.rows():
                pipe.hset(f"{ANCHOR_PREFIX}{row[0]}",
                          mapping={k: v for k, v in zip(common.COLUMNS, row, strict=True) if v is not None})
                n += 1
                if n % pipeline == 0:
                    pipe.execute()
            pipe.execute()
    finally:
        client.close()
    return n


def redis_target(source: Store, url: str, batch: int) -> tuple[Any, TableMapping]:
    """The Redis store and mapping ``orders`` -> one hash per row under ``dwbench:orders:{id}``, compiled
    as the spec's ``redis:`` section is (version column ``version``: live writes win)."""
    from dualwrite.spec import TableSpec
    from dualwrite.stores.redis import RedisStore, redis_mapping

    spec = TableSpec.model_validate({"source": common.TABLE, "version_column": "version", "batch_size": batch,
                                     "redis": {"key": "orders:{id}", "value": "hash", "prefix": REDIS_PREFIX}})
    mapping, _layout = redis_mapping(spec, source.describe(common.TABLE))
    return RedisStore.for_tables("bench_redis", url, [spec]), mapping


def redis_check(source: Store, target: Any, mapping: TableMapping, url: str, rows: int, ours: bool) -> None:
    """Every row landed (one key per row), and for ours a sample of rows compares equal to the source."""
    import random

    import redis

    from dualwrite.verify import verify_keys

    client = redis.Redis.from_url(url)
    try:
        found = int(client.dbsize())
    finally:
        client.close()
    if found != rows:
        raise SystemExit(f"redis {'copy_range' if ours else 'anchor'}: {found} keys, expected {rows}")
    if ours:
        sample = [(k,) for k in random.Random(rows).sample(range(1, rows + 1), min(rows, 2000))]
        report = verify_keys(source, target, mapping, sample)
        if not report.ok:
            raise SystemExit(f"redis copy_range: sample differs from the source: {report.summary()}")


def redis_rounds(pg_src: Store, args: argparse.Namespace) -> dict[str, str]:
    """The PostgreSQL -> Redis figure: anchor and ``copy_range`` alternating on a private ``redis-server``
    (persistence switched off once started: both sides measure the copy path, not the disk); the keys go
    with the server. Returns the figures for the last line."""
    import tempfile

    import redis

    from dualwrite.keyvalue import start_redis

    timer = common.Timer()
    rss = 0.0
    with tempfile.TemporaryDirectory(prefix="dwbench-redis") as tmp, start_redis(Path(tmp)) as server:
        admin = redis.Redis.from_url(server.url)
        admin.config_set("appendonly", "no")
        admin.config_set("save", "")
        target, mapping = redis_target(pg_src, server.url, args.batch)
        for rnd in range(1, args.rounds + 1):
            admin.flushdb()
            with timer("redis anchor"):
                n = redis_anchor(server.url, args.redis_pipeline)
            if n != args.rows:
                raise SystemExit(f"redis anchor: read {n} rows, expected {args.rows}")
            redis_check(pg_src, target, mapping, server.url, args.rows, ours=False)
            print(f"  round {rnd} redis anchor: {timer.last('redis anchor'):.2f}s", flush=True)
            admin.flushdb()
            common.reset_peak_rss()
            with timer("redis copy_range"):
                prog = copy_range(pg_src, target, mapping)
            rss = max(rss, common.peak_rss_mb())
            if prog.rows != args.rows or not prog.done:
                raise SystemExit(f"redis copy_range: copied {prog.rows} rows, expected {args.rows}")
            redis_check(pg_src, target, mapping, server.url, args.rows, ours=True)
            parts = prog.extra.get("seconds", {})
            detail = " ".join(f"{k}={v:.2f}s" for k, v in parts.items())
            print(f"  round {rnd} redis copy_range: {timer.last('redis copy_range'):.2f}s "
                  f"(route={prog.extra.get('route')} {detail})", flush=True)
        admin.flushdb()
        admin.close()
    anchor, ours = args.rows / timer.best("redis anchor"), args.rows / timer.best("redis copy_range")
    print(f"\nPG->Redis rows={args.rows} batch={args.batch} anchor pipeline={args.redis_pipeline} "
          f"rounds={args.rounds} (best = ratio basis)")
    for label in ("redis anchor", "redis copy_range"):
        print(f"{label:17s} {timer.spread(label)}  {args.rows / timer.best(label):>10,.0f} rows/s")
    median = {k: sorted(v)[len(v) // 2] for k, v in timer.samples.items()}
    print(f"median ratio: redis {median['redis anchor'] / median['redis copy_range']:.2f}; "
          f"peak RSS during copy_range {rss:.0f} MB (limit {RSS_LIMIT_MB} MB)")
    print(f"goal: redis >= 0.5x {'met' if ours / anchor >= 0.5 else 'MISSED'}")
    return {"redis_backfill_rows_per_s": f"{ours:.0f}", "redis_anchor_rows_per_s": f"{anchor:.0f}",
            "redis_backfill_x": f"{ours / anchor:.2f}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=common.DEFAULT_ROWS)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4, help="parallel ranges (with --via-temporal)")
    ap.add_argument("--via-temporal", action="store_true",
                    help="drive the PG->PG backfill through the Temporal backfill workflow (goal >= 0.45x)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--redis-only", action="store_true", help="only the PG->Redis figure (goal >= 0.5x)")
    which.add_argument("--no-redis", action="store_true", help="only the SQL figures")
    ap.add_argument("--redis-pipeline", type=int, default=1000, help="rows per round trip of the Redis anchor")
    args = ap.parse_args()
    if args.via_temporal:
        via_temporal(args)
        return
    if args.redis_only:
        print(f"building data ({args.rows} rows) ...", flush=True)
        common.ensure_pg_source(args.rows)
        pg_src = Store(StoreRef("bench_pg", common.pg_url(common.PG_SOURCE_DB)))
        try:
            figures = redis_rounds(pg_src, args)
        finally:
            pg_src.dispose()
        print(" ".join(f"{k}={v}" for k, v in figures.items()))
        return

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
    my_src.dispose()
    redis_figures = {} if args.no_redis else redis_rounds(pg_src, args)
    pg_src.dispose()

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
    print(" ".join([f"backfill_pg_vs_copy_pipe={pg_ratio:.2f} backfill_mysql_vs_pipe={my_ratio:.2f}",
                    *(f"{k}={v}" for k, v in redis_figures.items())]))


if __name__ == "__main__":
    main()
