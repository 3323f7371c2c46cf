"""Strategy ``cdc``: how fast the relay applies captured changes, and how far it lags behind live writes.

The machine's servers cannot capture (``wal_level=replica``, no binlog), so this starts its own private
PostgreSQL (``wal_level=logical``) and MariaDB (ROW binlog) with :mod:`dualwrite.cdc.servers`, on free
ports under ``--dir`` (default: a fresh temporary directory), and stops them at the end (``--keep`` leaves
them running; a second run on the same ``--dir`` reuses them).

- ``cdc_pg_changes_per_s``: ``--changes`` row changes (inserts, then updates of the same rows, in
  transactions of 500) are committed on the old PostgreSQL while nothing drains; then the relay's drain
  (:func:`dualwrite.cdc.capture.drain_batch`: decode the pgoutput batch, mirror the keys to a new
  PostgreSQL database by re-reading the authoritative rows, advance the slot) is timed until the slot is
  empty. Changes / seconds.
- ``cdc_mariadb_changes_per_s``: the same from the old MariaDB's binlog (mysql-replication) to PostgreSQL.
- ``cdc_lag_p99_s``: a writer commits single-row updates and inserts on the old PostgreSQL at a steady
  ``--rate`` (1,000 / s) for ``--seconds``; the drain runs beside it. For every applied batch, the lag is
  the time from the commit of its oldest change to the end of the batch's mirror (the worst change of the
  batch); p99 over the batches.

- ``cdc_p99_x`` (the line before the last): p99 of single-row updates on the primary PostgreSQL with
  capture running (slot, drain beside the writes) over p99 with none, alternating rounds of 500.

Goals (issue 15): PG >= 20,000 changes/s, MariaDB >= 5,000 changes/s, lag p99 <= 1 s at 1,000 writes/s,
``cdc_p99_x`` <= 1.05.
The last line prints the three and ``cdc_p99_x`` again (for ``bench.report``), e.g.
``cdc_pg_changes_per_s=25000 cdc_mariadb_changes_per_s=6000 cdc_lag_p99_s=0.21 cdc_p99_x=1.01``.
Usage: ``python bench/cdc.py [--changes 50000] [--rate 1000] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualwrite import control
from dualwrite.cdc import capture, servers
from dualwrite.cdc.pg import TableKeys
from dualwrite.config import StoreRef
from dualwrite.mapping import identity_mapping
from dualwrite.store import Store

PG_DDL = "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2), version bigint NOT NULL)"
MY_DDL = ("CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, amount DECIMAL(12,2), "
          "version BIGINT NOT NULL)")


def _pg_db(server: servers.Server, name: str) -> Store:
    with psycopg.connect(host=server.host, port=server.port, user=server.user, dbname="postgres",
                         autocommit=True) as c:
        for slot in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)):
            c.execute("SELECT pg_drop_replication_slot(%s)", slot)
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return Store(StoreRef(name.replace("_", ""), server.url(name)))


def _my_db(server: servers.Server, name: str) -> Store:
    import pymysql  # always installed (the C driver is an extra)

    c = pymysql.connect(host=server.host, port=server.port, user=server.user, autocommit=True)
    cur = c.cursor()
    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    cur.execute(f"CREATE DATABASE `{name}`")
    c.close()
    return Store(StoreRef(name.replace("_", ""), server.url(name)))


def _run(store: Store, *sql: str) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for s in sql:
            cur.execute(s)
        cur.close()
        conn.commit()


def _load(store: Store, changes: int) -> None:
    """``changes`` row changes: inserts of changes/2 rows, then an update of each, 500 per transaction."""
    rows = changes // 2
    with store.connect() as conn:
        cur = conn.cursor()
        for start in range(1, rows + 1, 500):
            ids = list(range(start, min(start + 500, rows + 1)))
            cur.executemany("INSERT INTO items VALUES (%s, %s, %s, 1)", [(i, f"n{i}", i * 0.5) for i in ids])
            conn.commit()
        for start in range(1, rows + 1, 500):
            cur.execute("UPDATE items SET name = 'u', version = version + 1 WHERE id BETWEEN %s AND %s",
                        (start, start + 499))
            conn.commit()
        cur.close()


def _drain_all(old: Store, new: Store, ctl: Store, migration: str, limit: int = 5000) -> tuple[int, float]:
    mapping = identity_mapping(old.describe("items", refresh=True), new.describe("items", refresh=True))
    tables = [TableKeys("items", ["id"], list(mapping.key_kinds))]
    total, started = 0, time.perf_counter()
    while True:
        res = capture.drain_batch(old, new, ctl, migration, tables, lambda _t: mapping, reverse=False, limit=limit)
        if not res.entries:
            return total, time.perf_counter() - started
        total += res.entries


def throughput(old: Store, new: Store, ctl: Store, migration: str, changes: int) -> float:
    capture.setup(old, ctl, migration, ["items"])
    try:
        _load(old, changes)
        n, seconds = _drain_all(old, new, ctl, migration)
        if n < changes:
            raise SystemExit(f"only {n} of {changes} changes were captured from {old.name}")
        return n / seconds
    finally:
        capture.teardown(old, ctl, migration)


def lag_p99(old: Store, new: Store, migration: str, rate: int, seconds: float) -> tuple[float, int]:
    capture.setup(old, old, migration, ["items"])
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with old.connect() as conn:
            cur = conn.cursor()
            started = time.perf_counter()
            i = 0
            while not stop.is_set():
                i += 1
                if i % 2:
                    cur.execute("UPDATE items SET name = %s, version = version + 1 WHERE id = %s",
                                (f"l{i}", i % 5000 + 1))
                else:
                    cur.execute("INSERT INTO items VALUES (%s, 'live', 1, 1)", (10_000_000 + i,))
                conn.commit()
                written[0] += 1
                ahead = i / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)

    mapping = identity_mapping(old.describe("items", refresh=True), new.describe("items", refresh=True))
    tables = [TableKeys("items", ["id"], list(mapping.key_kinds))]
    lags: list[float] = []
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            t0 = time.time()
            res = capture.drain_batch(old, new, old, migration, tables, lambda _t: mapping, reverse=False)
            if res.entries:
                lags.append(res.lag_seconds + (time.time() - t0))
            else:
                time.sleep(0.05)  # the relay's idle poll
    finally:
        stop.set()
        thread.join(10)
        capture.teardown(old, old, migration)
    lags.sort()
    return (lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("inf")), written[0]


def _relay_process(old_name: str, old_url: str, new_name: str, new_url: str, stop: Any) -> None:
    """The relay, in a process of its own like a worker (not competing for this process's GIL). The store
    names are the parent's: a slot's name follows its store's."""
    old, new = Store(StoreRef(old_name, old_url)), Store(StoreRef(new_name, new_url))
    mapping = identity_mapping(old.describe("items", refresh=True), new.describe("items", refresh=True))
    tables = [TableKeys("items", ["id"], list(mapping.key_kinds))]
    while not stop.is_set():
        if not capture.drain_batch(old, new, old, "bench-p99", tables, lambda _t: mapping, reverse=False).entries:
            time.sleep(0.05)


def write_p99_x(old: Store, new: Store, rounds: int = 4, n: int = 500) -> float:
    """p99 of single-row updates on the primary with capture running (slot + a relay process draining it)
    over p99 with no capture, in alternating rounds (a noisy neighbour hits both alike)."""
    import multiprocessing

    times: dict[str, list[float]] = {"direct": [], "cdc": []}
    seq = 0
    ctx = multiprocessing.get_context("spawn")
    urls = [x for s in (old, new) for x in (s.name, s.engine.url.render_as_string(hide_password=False))]
    for r in range(rounds * 2):
        mode = "cdc" if r % 2 else "direct"
        stop = ctx.Event()
        thread = None
        if mode == "cdc":
            capture.setup(old, old, "bench-p99", ["items"])
            thread = ctx.Process(target=_relay_process, args=(*urls, stop), daemon=True)
            thread.start()
            time.sleep(2.0)  # the relay process is up and polling
        with old.connect() as conn:
            cur = conn.cursor()
            for _ in range(n):
                seq += 1
                t0 = time.perf_counter()
                cur.execute("UPDATE items SET name = %s, version = version + 1 WHERE id = %s",
                            (f"p{seq}", seq % 5000 + 1))
                conn.commit()
                times[mode].append(time.perf_counter() - t0)
            cur.close()
        if thread is not None:
            stop.set()
            thread.join(10)
            if thread.is_alive():
                thread.kill()
            capture.teardown(old, old, "bench-p99")

    def p99(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * 0.99))]

    print(f"primary update p99: direct {p99(times['direct']) * 1000:.2f} ms, with capture running "
          f"{p99(times['cdc']) * 1000:.2f} ms")
    return p99(times["cdc"]) / p99(times["direct"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=50_000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="leave the private servers running")
    args = ap.parse_args()
    # mysql-replication warns when the server ends a non-blocking dump it then re-requests: not our news
    logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)
    root = args.dir or Path(tempfile.mkdtemp(prefix="dwcdcbench-"))
    t0 = time.perf_counter()
    pg_server, my_server = servers.start_postgres(root), servers.start_mariadb(root)
    print(f"private servers ready in {time.perf_counter() - t0:.1f}s: PostgreSQL :{pg_server.port}, "
          f"MariaDB :{my_server.port} ({root})")
    try:
        pg_old, pg_new = _pg_db(pg_server, "bench_old"), _pg_db(pg_server, "bench_new")
        _run(pg_old, PG_DDL)
        _run(pg_new, PG_DDL)
        pg_rate = throughput(pg_old, pg_new, pg_old, "bench-pg", args.changes)
        print(f"PostgreSQL -> PostgreSQL: {pg_rate:,.0f} changes/s ({args.changes:,} changes)")

        my_old, pg_new2 = _my_db(my_server, "bench_my"), _pg_db(pg_server, "bench_new2")
        _run(my_old, MY_DDL)
        _run(pg_new2, PG_DDL)
        control.ensure_schema(my_old)
        my_rate = throughput(my_old, pg_new2, my_old, "bench-my", args.changes)
        print(f"MariaDB -> PostgreSQL:    {my_rate:,.0f} changes/s ({args.changes:,} changes)")

        lag_old, lag_new = _pg_db(pg_server, "bench_lag_old"), _pg_db(pg_server, "bench_lag_new")
        _run(lag_old, PG_DDL, "INSERT INTO items SELECT g, 'n', 1, 1 FROM generate_series(1, 5000) g")
        _run(lag_new, PG_DDL, "INSERT INTO items SELECT g, 'n', 1, 1 FROM generate_series(1, 5000) g")
        lag, written = lag_p99(lag_old, lag_new, "bench-lag", args.rate, args.seconds)
        achieved = written / args.seconds
        print(f"lag at {achieved:,.0f} writes/s for {args.seconds:g}s: p99 {lag:.3f}s")
        cdc_x = write_p99_x(lag_old, lag_new)
        print(f"cdc_p99_x={cdc_x:.2f}")
        for s in (pg_old, pg_new, my_old, pg_new2, lag_old, lag_new):
            s.dispose()
    finally:
        if not args.keep:
            servers.stop_postgres(root)
            servers.stop_mariadb(root)
            if args.dir is None:
                shutil.rmtree(root, ignore_errors=True)
    print(f"cdc_pg_changes_per_s={pg_rate:.0f} cdc_mariadb_changes_per_s={my_rate:.0f} cdc_lag_p99_s={lag:.2f} "
          f"cdc_p99_x={cdc_x:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
