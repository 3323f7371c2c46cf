"""The ORM hook with a Redis new store ([T2-6]): an application of declarative models whose Session is bound
through :func:`dualwrite.adapter.install` writes PostgreSQL while a table moves into Redis, with each
strategy (``sync``, ``strict``, ``async``, ``outbox``). Inserts, updates, deletes, a delete and re-insert of
one key and a unit of work of several rows land in both stores (Redis read back through the Redis kind, as
the Core adapter's tests do); ``strict`` with Redis down fails the commit naming the new store, in neither
store. Real PostgreSQL, a private persistent redis-server behind a TCP proxy for the fault."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from app.harness import TcpProxy
from conftest import Databases, execute, pg_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from activities.stores import StoreCache
from dualwrite import control
from dualwrite.adapter import AdapterOptions, DualWriter, RoutingError, install, install_async
from dualwrite.capture.store_side import RelayStores, store_side
from dualwrite.config import StoreResolver, env_var_for
from dualwrite.errors import StrictWriteError
from dualwrite.keyvalue import RedisServer, start_redis
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from dualwrite.stores.redis import RedisStore

STRATEGIES = ["sync", "strict", "async", "outbox"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with start_redis(tmp_path_factory.mktemp("redis-orm")) as s:
        yield s


class App:
    """One migrated table, its ORM model, a sessionmaker installed on the writer, both stores read directly."""

    def __init__(self, pg: Store, table: str, strategy: str, redis_url: str, server: RedisServer,
                 cache: StoreCache) -> None:
        execute(pg, f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL, balance numeric(10,2), "
                    "version bigint NOT NULL DEFAULT 1)")
        self.pg, self.table = pg, table
        self.spec = MigrationSpec.model_validate({
            "name": f"kvorm-{table}", "old": pg.name, "new": "kv", "strategy": strategy,
            "tables": [{"source": table, "version_column": "version",
                        "redis": {"key": "acct:{id}", "prefix": f"{table}:"}}]})
        control.ensure_schema(pg)
        control.publish_state(pg, self.spec.name, "DUAL_WRITE", 1)
        self.w = DualWriter(self.spec, pg, RedisStore("kv", redis_url),
                            options=AdapterOptions(background=strategy == "async", phase_ttl=0.01,
                                                   secondary_timeout=0.5))
        self.rs: RelayStores | None = None
        if strategy == "outbox":
            self.rs = cache.relay_stores(self.spec)
            store_side(self.spec).setup(self.rs)
        self.r = redis.Redis.from_url(server.url, decode_responses=True)

        class Base(DeclarativeBase):
            pass

        class Account(Base):
            __tablename__ = table
            id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
            name: Mapped[str] = mapped_column(sa.Text)
            balance: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
            version: Mapped[int] = mapped_column(sa.BigInteger, default=1)

        self.Account = Account
        self.sessions: sessionmaker[Session] = sessionmaker(bind=pg.engine, expire_on_commit=False)
        install(self.sessions, self.w)

    def settle(self) -> None:
        """The strategy's mirror is done: async's queue flushed, outbox's relay drained (here: by hand)."""
        if self.w.lagged is not None:
            assert self.w.lagged.flush(10.0)
        if self.rs is not None:  # the relay's own drain of the outbox (SQL table, or Redis' stream)
            phase = control.read_state(self.pg, self.spec.name).phase  # type: ignore[union-attr]
            store_side(self.spec).drain_round(self.rs, str(phase), limit=1000, max_seconds=5, stats=None,
                                              should_stop=lambda: False)

    def sql(self, key: int) -> tuple[Any, ...] | None:
        with self.pg.connect() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT name, balance FROM {self.table} WHERE id = %s", (key,))
            row = cur.fetchone()
            conn.rollback()
        return None if row is None else tuple(row)

    def redis(self, key: int) -> tuple[Any, ...] | None:
        h = self.r.hgetall(f"{self.table}:acct:{key}")
        return (h["name"], Decimal(h["balance"]) if "balance" in h else None) if h else None

    def both(self, key: int) -> tuple[Any, ...] | None:
        assert self.sql(key) == self.redis(key), (key, self.sql(key), self.redis(key))
        return self.sql(key)

    def close(self) -> None:
        self.w.close()


@pytest.fixture
def cache(databases: Databases, server: RedisServer, tmp_path: Path, pg_old: Store) -> StoreCache:
    config = tmp_path / "dualwrite.yaml"
    config.write_text("stores: {}\n")
    environ = {env_var_for(pg_old.name): pg_url(databases.pg_db("old")), env_var_for("kv"): server.url}
    return StoreCache(StoreResolver(config_file=config, environ=environ), pool_size=2)


@pytest.fixture(params=STRATEGIES)
def app(request: pytest.FixtureRequest, pg_old: Store, table_name: str, server: RedisServer,
        cache: StoreCache) -> Iterator[App]:
    a = App(pg_old, f"{table_name}_{request.param[:2]}", request.param, server.url, server, cache)
    yield a
    a.close()


def write_everything(a: App, base: int) -> None:
    """Inserts, an update, a delete, a delete and re-insert of one key, a unit of work of several rows."""
    A = a.Account
    with a.sessions() as s, s.begin():
        s.add(A(id=base + 1, name="one", balance=Decimal("1.00")))
    with a.sessions() as s, s.begin():
        s.add(A(id=base + 2, name="two"))
        s.add(A(id=base + 3, name="three", balance=Decimal("3.30")))
    with a.sessions() as s, s.begin():
        s.get(A, base + 1).name = "one changed"  # type: ignore[union-attr]
    with a.sessions() as s, s.begin():
        s.delete(s.get(A, base + 2))
    with a.sessions() as s, s.begin():
        s.delete(s.get(A, base + 3))
        s.flush()
        s.add(A(id=base + 3, name="three again", balance=Decimal("9.99")))
    with a.sessions() as s, s.begin():  # one unit of work: several rows inserted, updated, deleted
        s.add_all([A(id=base + 4, name="four"), A(id=base + 5, name="five", balance=Decimal("5.00"))])
        s.get(A, base + 1).balance = Decimal("1.50")  # type: ignore[union-attr]
        s.flush()
        s.delete(s.get(A, base + 4))
    a.settle()
    assert a.both(base + 1) == ("one changed", Decimal("1.50"))
    assert a.both(base + 2) is None
    assert a.both(base + 3) == ("three again", Decimal("9.99"))
    assert a.both(base + 4) is None
    assert a.both(base + 5) == ("five", Decimal("5.00"))
    with a.sessions() as s:  # the application reads its rows back through the ORM
        assert s.get(a.Account, base + 1).name == "one changed"  # type: ignore[union-attr]


def test_orm_dual_write_into_redis(app: App) -> None:
    write_everything(app, 0)
    assert app.w.pending_repairs == 0


def test_orm_after_write_cutover_refuses_redis_writes_and_reads_the_mirror(app: App) -> None:
    """Redis authoritative: the ORM has no SQL engine to write it with, so a flush of the table fails with an
    error naming the Core API and writes neither store; the Core API's writes (Redis first, SQL mirrored)
    are what the ORM then reads, from the SQL mirror."""
    A = app.Account
    with app.sessions() as s, s.begin():
        s.add(A(id=1, name="before", balance=Decimal("1.00")))
    app.settle()
    control.publish_state(app.pg, app.spec.name, "CUTOVER_WRITES", 2)
    app.w.phase.refresh(force=True)
    for change in ("insert", "update", "delete"):
        with pytest.raises(RoutingError, match=r"the ORM cannot write Redis.*DualWriter\.insert"), \
                app.sessions() as s, s.begin():
            if change == "insert":
                s.add(A(id=2, name="never"))
            elif change == "update":
                s.get(A, 1).name = "never"  # type: ignore[union-attr]
            else:
                s.delete(s.get(A, 1))
    app.settle()
    assert app.both(1) == ("before", Decimal("1.00")) and app.both(2) is None
    app.w.insert(app.table, {"id": 3, "name": "core", "balance": Decimal("3.00")})
    app.w.update(app.table, 1, {"name": "core changed"})
    app.settle()
    assert app.both(3) == ("core", Decimal("3.00")) and app.both(1) == ("core changed", Decimal("1.00"))
    with app.sessions() as s:
        assert s.get(A, 3).name == "core" and s.get(A, 1).name == "core changed"  # type: ignore[union-attr]
    assert app.w.pending_repairs == 0


def test_orm_strict_with_redis_down_fails_the_commit_in_neither(pg_old: Store, table_name: str, server: RedisServer,
                                                                 cache: StoreCache) -> None:
    proxy = TcpProxy("127.0.0.1", server.port)
    proxy.start()
    a = App(pg_old, table_name, "strict", proxy.url_for(server.url), server, cache)
    try:
        A = a.Account
        with a.sessions() as s, s.begin():
            s.add(A(id=1, name="both", balance=Decimal("1.00")))
        assert a.both(1) == ("both", Decimal("1.00"))
        with proxy.down():
            for change in ("insert", "update", "delete", "several"):
                with pytest.raises(StrictWriteError) as failed, a.sessions() as s, s.begin():
                    if change in ("insert", "several"):
                        s.add(A(id=2, name="never"))
                    if change in ("update", "several"):
                        s.get(A, 1).name = "never"  # type: ignore[union-attr]
                    if change == "delete":
                        s.delete(s.get(A, 1))
                assert failed.value.store == "new" and "new store" in str(failed.value)
                assert a.sql(2) is None and a.sql(1) == ("both", Decimal("1.00"))  # PostgreSQL rolled back
        assert a.w.strict is not None
        a.w.strict.flush()
        a.w.strict.sweep(60.0)
        a.w.retry_pending_repairs()
        a.w.drain_repairs()
        assert a.both(2) is None and a.both(1) == ("both", Decimal("1.00"))  # the write is in neither
        with a.sessions() as s, s.begin():  # Redis back: the ORM's strict commits land in both again
            s.get(A, 1).name = "after"  # type: ignore[union-attr]
        assert a.both(1) == ("after", Decimal("1.00"))
    finally:
        a.close()
        proxy.stop()


async def test_async_orm_sync_into_redis_then_refused_after_write_cutover(pg_old: Store, table_name: str,
                                                                          server: RedisServer,
                                                                          cache: StoreCache) -> None:
    """``install_async`` with a Redis new store: ``await session.commit()`` returns with the row in Redis."""
    a = App(pg_old, table_name, "sync", server.url, server, cache)
    engine = create_async_engine(pg_old.ref.url)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    install_async(maker, a.w)
    A = a.Account
    try:
        async with maker() as s:
            s.add_all([A(id=1, name="one", balance=Decimal("1.00")), A(id=2, name="two")])
            await s.commit()
        assert a.both(1) == ("one", Decimal("1.00")) and a.both(2) == ("two", None)
        async with maker() as s:
            (await s.get(A, 1)).name = "one changed"  # type: ignore[union-attr]
            await s.delete(await s.get(A, 2))
            await s.commit()
        assert a.both(1) == ("one changed", Decimal("1.00")) and a.both(2) is None
        control.publish_state(a.pg, a.spec.name, "CUTOVER_WRITES", 2)
        a.w.phase.refresh(force=True)
        with pytest.raises(RoutingError, match="the ORM cannot write Redis"):
            async with maker() as s, s.begin():
                s.add(A(id=3, name="never"))
        assert a.both(3) is None and a.w.pending_repairs == 0
    finally:
        await engine.dispose()
        a.close()
