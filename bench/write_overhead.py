"""What the write adapter costs: single-row updates by key on PostgreSQL, direct vs through dualwrite.

Two fresh PostgreSQL databases (old, new) hold the same 10,000-row ``accounts`` table. Every workload runs
on the same SQLAlchemy engine, interleaved iteration by iteration (so a noisy neighbour hits all of them
alike), after a warm-up:

- ``direct``: ``UPDATE accounts SET name = ?, version = version + 1 WHERE id = ?`` and COMMIT (SQLAlchemy
  Core), the anchor;
- ``triggers``: the same statement on ``accounts_trg``, a copy of ``accounts`` in the same database with the
  ``triggers`` strategy's capture triggers installed (each write also appends its key to
  ``dualwrite_changelog``): what an unchanged application pays on its primary for ``triggers``;
- ``outbox``: ``DualWriter.update`` with the outbox strategy (the key is appended in the same transaction,
  folded into the same statement);
- ``sync``: ``DualWriter.update`` with the sync strategy (the committed row image is upserted, version-guarded,
  into the new store before the call returns);
- ``strict``: ``DualWriter.update`` with the strict strategy (the key noted in the control store, the row
  written to the new store and committed there, then the authoritative COMMIT);
- ``async``: ``DualWriter.update`` with the async strategy (the key queued; background workers mirror it);
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
- ``strict_p50_x``  = p50(strict) / p50(direct)                                     [<= 2.2]
- ``async_p99_x``   = p99(async) / p99(direct)                                      [<= 1.15]
- ``triggers_p99_x`` = p99(triggers) / p99(direct): the primary write with the capture triggers installed,
  beside ``cdc_p99_x`` of ``bench/cdc.py`` (the primary write with log capture running)

The last line prints them, e.g. ``outbox_p99_x=1.38 sync_p50_x=2.05 orm_overhead=0.06 shadow_read_p50_x=1.11
strict_p50_x=2.1 async_p99_x=1.05 triggers_p99_x=1.2 strict_p99_x=... sync_p99_x=... async_p50_x=...
outbox_p50_x=... triggers_p50_x=... n=3000``: with the p50 and p99 ratio of every strategy, from which
``python -m bench.guide`` (run by ``bench.report``) writes the latency column of the README's strategy table.
Usage: ``python bench/write_overhead.py [--n 3000] [--rows 10000] [--keep] [--bypass-capture]``.
``--bypass-capture`` measures the adapter with runtime bypass detection on (the adapter marks each
transaction, a capture trigger with a ``WHEN`` clause sits on ``accounts``); the goal is that
``outbox_p99_x`` moves by at most 0.05 against a run of the code before bypass detection.
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
import common

from dualwrite import bypass, control, outbox, stats, triggers
from dualwrite.adapter import AdapterOptions, DualWriter, install
from dualwrite.config import StoreRef
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store

OLD_DB, NEW_DB = "dwbench_wo_old", "dwbench_wo_new"
DDL = ("CREATE TABLE {table} (id bigint PRIMARY KEY, tenant text NOT NULL, name text NOT NULL, "
       "balance numeric(12,2) NOT NULL, updated_at timestamptz NOT NULL, version bigint NOT NULL)")
FILL = ("INSERT INTO {table} SELECT g, 't' || (g %% 50), 'name-' || g, g %% 1000, "
        "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', 1 FROM generate_series(1, %s) g")
TRIGGERED = "accounts_trg"
"""The copy of ``accounts`` (old database only) that carries the ``triggers`` capture triggers."""


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
            for table in ("accounts", TRIGGERED) if db == OLD_DB else ("accounts",):
                c.execute(DDL.format(table=table))
                c.execute(FILL.format(table=table), (rows,))
                c.execute(f"VACUUM ANALYZE {table}")


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
    ap.add_argument("--bypass-capture", action="store_true",
                    help="install bypass capture on the old store (as from DUAL_WRITE to CUTOVER_WRITES with an "
                         "adapter strategy); the direct anchor writes as a replica session, so it pays no capture")
    args = ap.parse_args(argv)

    fresh_databases(args.rows)
    old = Store(StoreRef("old", common.pg_url(OLD_DB)))
    new = Store(StoreRef("new", common.pg_url(NEW_DB)))
    engine = sa.create_engine(common.pg_url(OLD_DB), pool_size=5)  # the application's own engine
    control.ensure_schema(old)
    writers: dict[str, DualWriter] = {}
    for label, strategy, phase in (("sync", "sync", "DUAL_WRITE"), ("outbox", "outbox", "DUAL_WRITE"),
                                   ("strict", "strict", "DUAL_WRITE"), ("async", "async", "DUAL_WRITE"),
                                   ("shadow", "sync", "SHADOW_READ")):
        name = f"bench-{label}"
        control.publish_state(old, name, phase, 1)
        spec = MigrationSpec.model_validate({
            "name": name, "old": "old", "new": "new", "strategy": strategy,
            "tables": [{"source": "accounts", "version_column": "version", "tenant_column": "tenant"}]})
        writers[label] = DualWriter(spec, old, new, old_engine=engine,
                                    options=AdapterOptions(sample_ratio=1.0, stats_window_seconds=5))
    anchor = engine
    if args.bypass_capture:
        for label in ("sync", "outbox"):
            bypass.install(old, f"bench-{label}", "accounts", "accounts", ["id"])
        anchor = sa.create_engine(common.pg_url(OLD_DB), pool_size=5,
                                  connect_args={"options": "-c dualwrite.replica=on"})
    triggers.install_triggers(old, "bench-triggers", TRIGGERED, ["id"])
    plain = sessionmaker(bind=anchor)
    integrated = sessionmaker(bind=engine)
    install(integrated, writers["sync"])
    table = sa.Table("accounts", sa.MetaData(), autoload_with=engine)
    upd = table.update().where(table.c.id == sa.bindparam("k")).values(name=sa.bindparam("n"),
                                                                        version=table.c.version + 1)
    sel = sa.select(table).where(table.c.id == sa.bindparam("k"))
    trg = sa.Table(TRIGGERED, sa.MetaData(), autoload_with=engine)
    upd_trg = trg.update().where(trg.c.id == sa.bindparam("k")).values(name=sa.bindparam("n"),
                                                                        version=trg.c.version + 1)
    rows: int = args.rows
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
        with anchor.begin() as c:
            c.execute(upd, {"k": k, "n": f"d{k}-{counter[0]}"})

    def with_triggers() -> None:  # the application's engine: not a replica session, so the triggers capture
        k = key()
        with engine.begin() as c:
            c.execute(upd_trg, {"k": k, "n": f"t{k}-{counter[0]}"})

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
        "direct": direct, "triggers": with_triggers, "outbox": via(writers["outbox"]), "sync": via(writers["sync"]),
        "strict": via(writers["strict"]), "async": via(writers["async"]),
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
        lagged = writers["async"].lagged
        async_flushed = lagged is not None and lagged.flush(timeout=60)
    finally:
        for w in writers.values():
            w.close()
        async_stats = stats.read_stats(old, "bench-async", 3600)
        strict_stats = stats.read_stats(old, "bench-strict", 3600)
        left_in_repair = sum(control.repair_queue_depth(old, f"bench-{n}") for n in ("strict", "async"))
        shadow_stats = stats.read_stats(old, "bench-shadow", 3600)
        bypassed = None
        if args.bypass_capture:  # every write was the adapter's or the (replica) anchor's: none may be recorded
            with old.connect() as conn:
                cur = conn.cursor()
                cur.execute(f"SELECT COUNT(*) FROM {bypass.BYPASS}")
                bypassed = int(cur.fetchone()[0])
                conn.rollback()
        sync_stats = stats.read_stats(old, "bench-sync", 3600)
        with old.connect() as conn:  # the triggered writes were captured: else the figure measures nothing
            cur = conn.cursor()
            cur.execute(f"SELECT COUNT(*) FROM {outbox.CHANGELOG}")
            captured = int(cur.fetchone()[0])
            conn.rollback()
        engine.dispose()
        anchor.dispose()
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
          f"sync secondary writes: {sync_stats.secondary_successes} ok, {sync_stats.secondary_failures} failed; "
          f"strict: {strict_stats.secondary_successes} ok, {strict_stats.secondary_failures} failed; async: "
          f"{async_stats.secondary_successes} ok, {async_stats.secondary_failures} failed, flushed: {async_flushed}, "
          f"worst lag {async_stats.gauges.get(stats.ASYNC_AGE, 0.0):.3f}s; repair queue after close: {left_in_repair}")
    for label in ("triggers", "strict", "sync", "async", "outbox"):
        print(f"ratio {label:<8} p50 x{p50[label] / p50['direct']:.2f}  p99 x{p99[label] / p99['direct']:.2f}")
    print(f"triggers: {captured} keys captured by the triggers on {TRIGGERED}")
    if not captured:
        raise SystemExit("the capture triggers captured nothing: triggers_p99_x would measure nothing")
    if bypassed is not None:
        print(f"bypass capture on: {bypassed} adapter writes recorded as bypassing it (must be 0)")
        if bypassed:
            raise SystemExit(1)
    outbox_p99_x = p99["outbox"] / p99["direct"]
    sync_p50_x = p50["sync"] / p50["direct"]
    orm_overhead = p50["orm+dualwrite"] / (p50["orm"] + p50["sync"] - p50["direct"]) - 1
    shadow_x = p50["read+shadow"] / p50["read"]
    strict_p50_x = p50["strict"] / p50["direct"]
    async_p99_x = p99["async"] / p99["direct"]
    triggers_p99_x = p99["triggers"] / p99["direct"]
    # the p50 and p99 ratio of every strategy (the README's strategy guide is generated from them)
    others = " ".join(f"{s}_{q}_x={(p50 if q == 'p50' else p99)[s] / (p50 if q == 'p50' else p99)['direct']:.2f}"
                      for s, q in (("strict", "p99"), ("sync", "p99"), ("async", "p50"), ("outbox", "p50"),
                                   ("triggers", "p50")))
    print(f"outbox_p99_x={outbox_p99_x:.2f} sync_p50_x={sync_p50_x:.2f} orm_overhead={orm_overhead:.2f} "
          f"shadow_read_p50_x={shadow_x:.2f} strict_p50_x={strict_p50_x:.2f} async_p99_x={async_p99_x:.2f} "
          f"triggers_p99_x={triggers_p99_x:.2f} {others} n={args.n}")


def quiet(w: DualWriter, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (w.shadow.in_flight() or w.scheduler.pending()) and time.monotonic() < deadline:
        time.sleep(0.005)


if __name__ == "__main__":
    main()
