"""What the write adapter costs: single-row updates by key on PostgreSQL, direct vs through dualwrite.

Two fresh PostgreSQL databases (old, new) hold the same 10,000-row ``accounts`` table. Every workload runs
on the same SQLAlchemy engine, interleaved iteration by iteration (so a noisy neighbour hits all of them
alike), after a warm-up:

- ``direct``: ``UPDATE accounts SET name = ?, version = version + 1 WHERE id = ?`` and COMMIT (SQLAlchemy
  Core), the anchor;
- ``outbox``: ``DualWriter.update`` with the outbox strategy (the key is appended in the same transaction,
  folded into the same statement);
- ``sync``: ``DualWriter.update`` with the sync strategy (the committed row image is upserted, version-guarded,
  into the new store before the call returns);
- ``orm`` / ``orm+dualwrite``: the same application code (``get`` by key, set an attribute, commit) on a plain
  sessionmaker and on one with the ORM integration installed (sync strategy);
- reads, in alternating blocks (so the comparisons running behind one block land in that block): ``read``
  (SELECT by key) and ``read+shadow`` (``DualWriter.read`` in SHADOW_READ with 100 % sampling: the other store
  is read and compared off the request path).

Ratios (goals from the issue in brackets):

- ``outbox_p99_x``  = p99(outbox) / p99(direct)                                     [<= 1.5]
- ``sync_p50_x``    = p50(sync) / p50(direct)                                       [<= 2.2]
- ``orm_overhead``  = p50(orm+dualwrite) / (p50(orm) + p50(sync) - p50(direct)) - 1  [<= 0.10]
  i.e. what the ORM integration adds beyond what the Core API adds for the same write, relative to the
  whole ORM request;
- ``shadow_read_p50_x`` = p50(read+shadow) / p50(read)                               [<= 1.15]

The last line prints them, e.g. ``outbox_p99_x=1.38 sync_p50_x=2.05 orm_overhead=0.06 shadow_read_p50_x=1.11``.
Usage: ``python bench/write_overhead.py [--n 3000] [--rows 10000] [--keep]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from dualwrite import control, stats  # noqa: E402
from dualwrite.adapter import AdapterOptions, DualWriter, install  # noqa: E402
from dualwrite.config import StoreRef  # noqa: E402
from dualwrite.spec import MigrationSpec  # noqa: E402
from dualwrite.store import Store  # noqa: E402

OLD_DB, NEW_DB = "dwbench_wo_old", "dwbench_wo_new"
DDL = ("CREATE TABLE accounts (id bigint PRIMARY KEY, tenant text NOT NULL, name text NOT NULL, "
       "balance numeric(12,2) NOT NULL, updated_at timestamptz NOT NULL, version bigint NOT NULL)")
FILL = ("INSERT INTO accounts SELECT g, 't' || (g %% 50), 'name-' || g, g %% 1000, "
        "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', 1 FROM generate_series(1, %s) g")


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.Text)
    name: Mapped[str] = mapped_column(sa.Text)
    balance: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    updated_at: Mapped[Any] = mapped_column(sa.DateTime(timezone=True))
    version: Mapped[int] = mapped_column(sa.BigInteger)


def fresh_databases(rows: int) -> None:
    with psycopg.connect(common.pg_conninfo("postgres"), autocommit=True) as c:
        for db in (OLD_DB, NEW_DB):
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{db}"')
    for db in (OLD_DB, NEW_DB):
        with psycopg.connect(common.pg_conninfo(db), autocommit=True) as c:
            c.execute(DDL)
            c.execute(FILL, (rows,))
            c.execute("VACUUM ANALYZE accounts")


def drop_databases() -> None:
    with psycopg.connect(common.pg_conninfo("postgres"), autocommit=True) as c:
        for db in (OLD_DB, NEW_DB):
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="measured iterations per workload")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    args = ap.parse_args(argv)

    fresh_databases(args.rows)
    old = Store(StoreRef("old", common.pg_url(OLD_DB)))
    new = Store(StoreRef("new", common.pg_url(NEW_DB)))
    engine = sa.create_engine(common.pg_url(OLD_DB), pool_size=5)  # the application's own engine
    control.ensure_schema(old)
    writers: dict[str, DualWriter] = {}
    for label, strategy, phase in (("sync", "sync", "DUAL_WRITE"), ("outbox", "outbox", "DUAL_WRITE"),
                                   ("shadow", "sync", "SHADOW_READ")):
        name = f"bench-{label}"
        control.publish_state(old, name, phase, 1)
        spec = MigrationSpec(name=name, old="old", new="new", strategy=strategy,
                             tables=[{"source": "accounts", "version_column": "version", "tenant_column": "tenant"}])
        writers[label] = DualWriter(spec, old, new, old_engine=engine,
                                    options=AdapterOptions(sample_ratio=1.0, stats_window_seconds=5))
    plain = sessionmaker(bind=engine)
    integrated = sessionmaker(bind=engine)
    install(integrated, writers["sync"])
    table = sa.Table("accounts", sa.MetaData(), autoload_with=engine)
    upd = table.update().where(table.c.id == sa.bindparam("k")).values(name=sa.bindparam("n"),
                                                                        version=table.c.version + 1)
    sel = sa.select(table).where(table.c.id == sa.bindparam("k"))
    rows = args.rows
    counter = [0]

    half = rows // 2

    def key() -> int:  # writes: the first half of the keys (old and new drift apart there: no relay runs)
        counter[0] += 1
        return counter[0] * 7919 % half + 1

    def read_key() -> int:  # reads: the second half, equal in both stores, as after a clean backfill
        counter[0] += 1
        return half + counter[0] * 7919 % (rows - half) + 1

    def direct() -> None:
        k = key()
        with engine.begin() as c:
            c.execute(upd, {"k": k, "n": f"d{k}-{counter[0]}"})

    def via(w: DualWriter) -> Callable[[], None]:
        def run() -> None:
            k = key()
            w.update("accounts", k, {"name": f"a{k}-{counter[0]}"})
        return run

    def orm(maker: sessionmaker[Session]) -> Callable[[], None]:
        def run() -> None:  # the application's code: identical for both sessionmakers
            k = key()
            with maker() as s:
                a = s.get(Account, k)
                assert a is not None
                a.name = f"o{k}-{counter[0]}"  # always a real change: an unchanged attribute flushes nothing
                s.commit()
        return run

    def read_direct() -> None:
        with engine.connect() as c:
            c.execute(sel, {"k": read_key()}).first()

    def read_shadow() -> None:
        writers["shadow"].read("accounts", read_key())

    writes: dict[str, Callable[[], None]] = {
        "direct": direct, "outbox": via(writers["outbox"]), "sync": via(writers["sync"]),
        "orm": orm(plain), "orm+dualwrite": orm(integrated)}
    times: dict[str, list[float]] = {k: [] for k in [*writes, "read", "read+shadow"]}
    try:
        for _ in range(max(200, args.n // 10)):  # warm-up: pools, statement caches, the planner
            for fn in writes.values():
                fn()
            read_direct()
            read_shadow()
        quiet(writers["shadow"])
        for _ in range(args.n):
            for label, fn in writes.items():
                t0 = time.perf_counter()
                fn()
                times[label].append((time.perf_counter() - t0) * 1000)
        block = 100
        for _ in range(max(1, args.n // block)):
            for label, fn in (("read", read_direct), ("read+shadow", read_shadow)):
                for _ in range(block):
                    t0 = time.perf_counter()
                    fn()
                    times[label].append((time.perf_counter() - t0) * 1000)
                quiet(writers["shadow"])
    finally:
        for w in writers.values():
            w.close()
        shadow_stats = stats.read_stats(old, "bench-shadow", 3600)
        sync_stats = stats.read_stats(old, "bench-sync", 3600)
        engine.dispose()
        old.dispose()
        new.dispose()
        if not args.keep:
            with contextlib.suppress(Exception):
                drop_databases()

    print(f"{'workload':<16}{'p50 ms':>9}{'p99 ms':>9}  (n={args.n})")
    for label, xs in times.items():
        print(f"{label:<16}{quantile(xs, 0.5):>9.3f}{quantile(xs, 0.99):>9.3f}")
    p50 = {k: quantile(v, 0.5) for k, v in times.items()}
    p99 = {k: quantile(v, 0.99) for k, v in times.items()}
    print(f"shadow compares: {dict(shadow_stats.counters.get('shadow', {}))}; "
          f"sync secondary writes: {sync_stats.secondary_successes} ok, {sync_stats.secondary_failures} failed")
    outbox_p99_x = p99["outbox"] / p99["direct"]
    sync_p50_x = p50["sync"] / p50["direct"]
    orm_overhead = p50["orm+dualwrite"] / (p50["orm"] + p50["sync"] - p50["direct"]) - 1
    shadow_x = p50["read+shadow"] / p50["read"]
    print(f"outbox_p99_x={outbox_p99_x:.2f} sync_p50_x={sync_p50_x:.2f} orm_overhead={orm_overhead:.2f} "
          f"shadow_read_p50_x={shadow_x:.2f}")


def quiet(w: DualWriter, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (w.shadow.in_flight() or w.scheduler.pending()) and time.monotonic() < deadline:
        time.sleep(0.005)


if __name__ == "__main__":
    main()
