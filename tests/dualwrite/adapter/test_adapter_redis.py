"""The adapter with a Redis new store ([T2-6]): PostgreSQL first and Redis mirrored before write cutover,
Redis first and PostgreSQL mirrored back after it, a split column computed in Python both ways, reads
served by Redis in the application's schema and types, and what Redis cannot do refused with a clear
message. Real PostgreSQL, a private redis-server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis

from dualwrite import control
from dualwrite.adapter import AdapterOptions, DualWriter, RoutingError
from dualwrite.adapter.aio import AsyncDualWriter
from dualwrite.errors import RowRejectedError
from dualwrite.keyvalue import RedisServer, start_redis
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from dualwrite.stores import is_redis, kind_for
from dualwrite.stores.redis import RedisStore


def first_word(name: str | None) -> str | None:
    return None if name is None else name.split(" ", 1)[0]


def rest_words(name: str | None) -> str | None:
    return None if name is None else name.split(" ", 1)[1] if " " in name else ""


def join_words(row: dict[str, object]) -> str:
    return " ".join(str(p) for p in (row.get("first_name"), row.get("last_name")) if p)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with start_redis(tmp_path_factory.mktemp("redis-adapter")) as s:
        yield s


@pytest.fixture(params=["sync", "async"])
def writer(pg_old: Store, table_name: str, server: RedisServer,
           request: pytest.FixtureRequest) -> Iterator[tuple[DualWriter, str, str]]:
    t = f"{table_name}_{request.param[0]}"
    with pg_old.connect() as conn:
        conn.cursor().execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, "
                              "balance numeric(10,2), seen timestamptz, version bigint NOT NULL)")
        conn.commit()
    spec = MigrationSpec.model_validate({
        "name": f"kva-{t}", "old": pg_old.name, "new": "kv", "strategy": request.param,
        "tables": [{"source": t, "version_column": "version",
                    "columns": {"first_name": {"from": "name", "transform": "test_adapter_redis:first_word"},
                                "last_name": {"from": "name", "transform": "test_adapter_redis:rest_words"}},
                    "reverse": {"name": {"transform": "test_adapter_redis:join_words"}},
                    "redis": {"key": "acct:{id}", "prefix": f"{t}:"}}]})
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, spec.name, "DUAL_WRITE", 1)
    w = DualWriter(spec, pg_old, RedisStore("kv", server.url),
                   options=AdapterOptions(background=request.param == "async", phase_ttl=0.01))
    try:
        yield w, t, f"{t}:acct:"
    finally:
        w.close()


def settled(w: DualWriter) -> None:
    """async: wait until the queued keys are mirrored (sync mirrors inside the call)."""
    if w.lagged is not None:
        assert w.lagged.flush(10.0)


def pg_row(store: Store, table: str, key: int) -> tuple[object, ...] | None:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT name, balance, version FROM {table} WHERE id = %s", (key,))
        row = cur.fetchone()
        conn.rollback()
    return None if row is None else tuple(row)


def test_writes_before_and_after_write_cutover(writer: tuple[DualWriter, str, str], pg_old: Store,
                                               server: RedisServer) -> None:
    w, t, prefix = writer
    r = redis.Redis.from_url(server.url, decode_responses=True)
    assert is_redis(w.new_store) and kind_for(w.new_store).name == "redis"
    seen = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)

    # old store authoritative: PostgreSQL first, the row split on its way into Redis
    w.insert(t, {"id": 1, "name": "Ada Lovelace", "balance": Decimal("12.30"), "seen": seen})
    settled(w)
    assert r.hgetall(f"{prefix}1") == {"id": "1", "first_name": "Ada", "last_name": "Lovelace", "balance": "12.30",
                                       "seen": "2025-03-04T05:06:07.000000+00:00", "version": "1"}
    w.delete(t, 1)
    settled(w)
    assert not r.exists(f"{prefix}1")

    # Redis authoritative: written there first, joined back into PostgreSQL
    control.publish_state(pg_old, w.migration, "CUTOVER_WRITES", 2)
    w.phase.refresh(force=True)
    assert w.insert(t, {"id": 2, "name": "Grace Hopper", "balance": Decimal("1.50"), "seen": seen}) == (2,)
    assert r.hget(f"{prefix}2", "first_name") == "Grace"
    settled(w)
    assert pg_row(pg_old, t, 2) == ("Grace Hopper", Decimal("1.50"), 1)
    assert w.update(t, 2, {"balance": Decimal("2.75")}) == 1
    settled(w)
    assert pg_row(pg_old, t, 2) == ("Grace Hopper", Decimal("2.75"), 2)  # the version bumped as in SQL
    assert w.update(t, 99, {"balance": 1}) == 0
    w.upsert(t, {"id": 3, "name": "Alan Turing"})
    settled(w)
    assert pg_row(pg_old, t, 3) == ("Alan Turing", None, 1)
    # reads served by Redis: the application's schema and Python types
    assert w.read(t, 2) == {"id": 2, "name": "Grace Hopper", "balance": Decimal("2.75"), "seen": seen,
                            "version": 2}
    assert w.delete(t, 3) == 1
    settled(w)
    assert pg_row(pg_old, t, 3) is None and w.read(t, 3) is None

    with pytest.raises(RowRejectedError, match="exists already"):
        w.insert(t, {"id": 2, "name": "Someone Else"})
    with pytest.raises(RoutingError, match="Redis generates no keys"):
        w.insert(t, {"name": "No Key"})
    with pytest.raises(RoutingError, match="cannot change the key"):
        w.update(t, 2, {"id": 5})
    with pytest.raises(RoutingError, match="SQL statements cannot use it"), w.unit_of_work() as uow:
        uow.insert(t, {"id": 7, "name": "x"})
    with pytest.raises(RoutingError, match="asyncio adapter serves SQL stores only"):
        AsyncDualWriter(w)
    assert w.pending_repairs == 0  # no secondary write failed


def test_outbox_notes_keys_in_sql_then_in_the_redis_stream_with_the_write(pg_old: Store, table_name: str,
                                                                           server: RedisServer) -> None:
    """``outbox``: nothing is mirrored inside the call; the key is noted in the authoritative store's outbox,
    the SQL table while PostgreSQL is authoritative, the migration's Redis stream after write cutover."""
    t = f"{table_name}_o"
    with pg_old.connect() as conn:
        conn.cursor().execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, "
                              "balance numeric(10,2), seen timestamptz, version bigint NOT NULL)")
        conn.commit()
    spec = MigrationSpec.model_validate({
        "name": f"kvo-{t}", "old": pg_old.name, "new": "kv", "strategy": "outbox",
        "tables": [{"source": t, "version_column": "version", "redis": {"key": "acct:{id}", "prefix": f"{t}:"}}]})
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, spec.name, "DUAL_WRITE", 1)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    stream = f"__dualwrite__:{spec.name}:outbox"
    w = DualWriter(spec, pg_old, RedisStore("kv", server.url), options=AdapterOptions(background=False,
                                                                                        phase_ttl=0.01))
    try:
        w.insert(t, {"id": 1, "name": "Ada"})
        assert pg_row(pg_old, t, 1) == ("Ada", None, 1) and not r.exists(f"{t}:acct:1")
        with pg_old.connect() as conn:
            cur = conn.cursor()
            cur.execute("SELECT table_name, key_json FROM dualwrite_outbox WHERE migration = %s", (spec.name,))
            assert cur.fetchall() == [(t, "[1]")]
            conn.rollback()
        assert not r.exists(stream)

        control.publish_state(pg_old, spec.name, "CUTOVER_WRITES", 2)
        w.phase.refresh(force=True)
        w.insert(t, {"id": 2, "name": "Grace", "balance": Decimal("1.50")})
        w.update(t, 2, {"balance": Decimal("2.00")})
        assert w.delete(t, 2) == 1
        assert pg_row(pg_old, t, 2) is None  # the relay mirrors it, not the call
        entries = r.xrange(stream)
        assert [(e[1]["table"], e[1]["key"]) for e in entries] == [(t, "[2]")] * 3

        control.publish_state(pg_old, spec.name, "CLEANUP", 3)  # the old store retired: nothing to note
        w.phase.refresh(force=True)
        w.insert(t, {"id": 3, "name": "Alan"})
        assert r.hget(f"{t}:acct:3", "name") == "Alan" and r.xlen(stream) == 3
    finally:
        w.close()
