"""The copy's two helper threads, driven the way an application or a failing machine could drive them.

:class:`ReadAhead` runs a reader (usually holding a database connection) in its own thread; what matters is
that items and errors arrive in order, that the reader never runs away from its consumer, and that leaving
early stops the thread and hands its connection back. :class:`KeyChecker` settles the key set of committed
chunks on its own connections; what matters is that it really settles every kind of key on every engine
pair, rides out a lock conflict, fails loudly when its store goes away, and releases everything on close.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import PG_HOST, Databases, pg_url

from dualwrite.background import KeyChecker, ReadAhead
from dualwrite.errors import StoreUnavailableError
from dualwrite.mapping import TableMapping, identity_mapping
from dualwrite.store import Dialect, Store


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a daemon thread; fails the test (instead of hanging it) when it takes longer."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise AssertionError(f"still running after {seconds} s (hung)")
    if "error" in out:
        raise out["error"]
    return out.get("value")


# -- ReadAhead ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 57])
def test_items_arrive_in_order_and_an_empty_reader_ends_at_once(n: int) -> None:
    def consume() -> list[int]:
        with ReadAhead(lambda: iter(range(n)), depth=2) as ra:
            return list(ra)

    assert within(5, consume) == list(range(n))


def test_an_error_surfaces_after_the_items_read_before_it() -> None:
    boom = ValueError("row 3 is unreadable")

    def reader() -> Iterator[int]:
        yield from (0, 1, 2)
        raise boom

    got: list[int] = []

    def consume() -> None:
        with ReadAhead(reader) as ra:
            for item in ra:
                got.append(item)

    with pytest.raises(ValueError, match="row 3") as caught:
        within(5, consume)
    assert caught.value is boom
    assert got == [0, 1, 2]


def test_a_store_that_cannot_be_reached_fails_the_first_item(databases: Databases) -> None:
    gone = databases.store("bg_gone", f"postgresql+psycopg://{PG_HOST}:1/nowhere")

    def reader() -> Iterator[int]:
        with gone.connect():
            yield 1

    def consume() -> list[int]:
        with ReadAhead(reader) as ra:
            return list(ra)

    with pytest.raises(StoreUnavailableError):
        within(20, consume)


@pytest.mark.parametrize("depth", [1, 3])
def test_the_reader_stays_at_most_depth_items_ahead(depth: int) -> None:
    """A chunk read ahead is held in memory: an unbounded reader would hold the whole table."""
    produced = [0]

    def reader() -> Iterator[int]:
        for i in range(100):
            produced[0] += 1
            yield i

    def consume() -> None:
        with ReadAhead(reader, depth=depth) as ra:
            it = iter(ra)
            for consumed in range(1, 4):
                next(it)
                time.sleep(0.2)
                # one item in the producer's hand, ``depth`` in the queue
                assert produced[0] <= consumed + depth + 1, (produced[0], consumed)

    within(10, consume)


class CountingReader:
    """An iterator that records where it was advanced and closed (a cursor-like object)."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.closed_in: str | None = None
        self.i = 0

    def __iter__(self) -> CountingReader:
        return self

    def __next__(self) -> int:
        self.threads.add(threading.current_thread().name)
        self.i += 1
        return self.i

    def close(self) -> None:
        self.closed_in = threading.current_thread().name


def test_leaving_early_closes_the_reader_in_its_own_thread() -> None:
    reader = CountingReader()

    def consume() -> None:
        with ReadAhead(lambda: reader) as ra:
            for item in ra:
                if item == 2:
                    time.sleep(0.2)  # the reader now waits on a full queue
                    break

    within(5, consume)
    assert reader.closed_in == "dualwrite-read-ahead"
    assert reader.threads == {"dualwrite-read-ahead"}


def test_leaving_early_returns_the_readers_connection_to_the_pool(databases: Databases) -> None:
    """A copy that fails half-way (or is stopped) must not strand the read-ahead's database connection."""
    store = databases.store("bg_pool", pg_url(databases.pg_db("old")))
    opened_in: list[str] = []

    def reader() -> Iterator[int]:
        with store.connect() as conn:
            opened_in.append(threading.current_thread().name)
            cur = conn.cursor()
            for i in range(10_000):
                cur.execute("SELECT %s::int", (i,))
                (value,) = cur.fetchone()
                yield int(value)

    def consume() -> list[int]:
        got: list[int] = []
        with ReadAhead(reader, depth=2) as ra:
            for item in ra:
                got.append(item)
                if len(got) == 3:
                    time.sleep(0.2)  # the reader now waits on a full queue
                    raise RuntimeError("the target failed")
        return got

    with pytest.raises(RuntimeError, match="target failed"):
        within(10, consume)
    assert opened_in == ["dualwrite-read-ahead"]
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_iterating_again_after_the_end_returns_nothing() -> None:
    ra = ReadAhead(lambda: iter([1, 2]))
    assert within(5, lambda: list(ra)) == [1, 2]
    try:
        assert within(2, lambda: list(ra)) == []
    finally:
        ra.close()


# -- KeyChecker -----------------------------------------------------------------------------------------

KEYS: dict[str, list[tuple[Any, ...]]] = {
    "int": [(-7,), (0,), (1,), (2,), (2**40,), (9_000_000_000,)],
    "composite": [("apac", 1), ("apac", 2), ("émea", 1), ("Zoë 😀", 3), ("z", -1), ("Z", 0)],
    "uuid": [(str(uuid.UUID(int=i * 0x1234567890ABCDEF)),) for i in range(1, 7)],
    "text": [("a",), ("B",), ("zoë",), ("😀",), ("tab\tkey",), ("x'y",)],
}
EXTRA: dict[str, tuple[Any, ...]] = {"int": (5,), "composite": ("émea", 99),
                                     "uuid": (str(uuid.UUID(int=0xDEAD)),), "text": ("ω",)}


def key_ddl(store: Store, kind: str) -> tuple[str, list[str]]:
    """(column definitions, key columns) for a table keyed by ``kind`` on ``store``."""
    d = store.dialect
    text = "TEXT" if d is Dialect.SQLITE else "VARCHAR(64)"
    if kind == "int":
        return f"id {'INTEGER' if d is Dialect.SQLITE else 'BIGINT'} NOT NULL", ["id"]
    if kind == "composite":
        return f"region {'VARCHAR(32)' if d is Dialect.MYSQL else 'TEXT'} NOT NULL, n INTEGER NOT NULL", \
            ["region", "n"]
    if kind == "uuid":
        return f"id {'uuid' if d is Dialect.POSTGRESQL else 'CHAR(36)'} NOT NULL", ["id"]
    return f"id {text} NOT NULL", ["id"]


def make_table(store: Store, table: str, kind: str, keys: list[tuple[Any, ...]]) -> None:
    cols, key = key_ddl(store, kind)
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table} ({cols}, name TEXT, version BIGINT NOT NULL, "
                    f"PRIMARY KEY ({', '.join(key)}))")
        marks = ", ".join([p] * (len(key) + 2))
        for k in keys:
            cur.execute(f"INSERT INTO {table} VALUES ({marks})", (*k, f"row {k}", 1))
        conn.commit()


def key_set(store: Store, table: str, kind: str) -> set[tuple[Any, ...]]:
    _, key = key_ddl(store, kind)
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT {', '.join(key)} FROM {table}")
        out = {tuple(str(v) if isinstance(v, uuid.UUID) else v for v in r) for r in cur.fetchall()}
        conn.rollback()
    return out


def mapping_of(source: Store, target: Store, table: str) -> TableMapping:
    return identity_mapping(source.describe(table, refresh=True), target.describe(table, refresh=True),
                            version="version")


@pytest.mark.parametrize(("source_name", "target_name", "kind"), [
    ("pg_old", "pg_new", "int"), ("pg_old", "pg_new", "composite"), ("pg_old", "pg_new", "uuid"),
    ("my_old", "pg_new", "uuid"), ("my_old", "pg_new", "composite"), ("my_old", "my_new", "text"),
    ("sqlite_old", "pg_new", "int"), ("pg_old", "my_new", "text"),
])
def test_a_check_settles_every_key_whose_presence_differs(request: pytest.FixtureRequest, source_name: str,
                                                           target_name: str, kind: str, table_name: str) -> None:
    """A row deleted while its chunk was in flight is deleted; a row the chunk missed is delivered."""
    source: Store = request.getfixturevalue(source_name)
    target: Store = request.getfixturevalue(target_name)
    keys = KEYS[kind]
    make_table(source, table_name, kind, keys)
    make_table(target, table_name, kind, [*keys[1:], EXTRA[kind]])  # keys[0] missing, EXTRA resurrected
    with KeyChecker(source, target, mapping_of(source, target, table_name)) as checker:
        result = checker.submit(None, None).result(30)
        assert (result.keys, result.upserted, result.deleted) == (2, 1, 1)
        again = checker.submit(None, None).result(30)  # settled: nothing left to do
        assert again.keys == 0
    assert key_set(target, table_name, kind) == key_set(source, table_name, kind) == set(keys)


def test_a_check_only_touches_its_own_range(pg_old: Store, pg_new: Store, table_name: str) -> None:
    keys = KEYS["int"]
    make_table(pg_old, table_name, "int", keys)
    make_table(pg_new, table_name, "int", [(-100,), *keys[1:], (5,), (10**13,)])
    with KeyChecker(pg_old, pg_new, mapping_of(pg_old, pg_new, table_name)) as checker:
        result = checker.submit((0,), (2,)).result(30)  # 0 < id <= 2: nothing differs there
        assert result.keys == 0
        result = checker.submit((2,), (2**40,)).result(30)  # holds the resurrected 5
        assert (result.keys, result.deleted) == (1, 1)
    assert key_set(pg_new, table_name, "int") == {(-100,), *keys[1:], (10**13,)}


LOCK_TIMEOUT_MS = 100


@pytest.fixture(scope="module")
def scratch_db(databases: Databases, pg_old: Store) -> str:
    """A database of this module's own: sessions in it may be killed, and a lock wait times out quickly."""
    db = databases.pg_db("bg_scratch")
    with pg_old.connect() as conn:  # a pooled session: PostgreSQL's connection slots are shared and scarce
        conn.execute(f"ALTER DATABASE \"{db}\" SET lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
        conn.commit()
    return db


@pytest.fixture
def own_pg(databases: Databases, scratch_db: str, table_name: str) -> Iterator[tuple[Store, str, str, str]]:
    """A store of this test's own on the scratch database (its pool counts only this test's connections),
    and the names of a source and a target table in it."""
    store = databases.store(f"bg_{table_name[-4:]}", pg_url(scratch_db))
    yield store, scratch_db, f"{table_name}_src", f"{table_name}_dst"
    store.dispose()


def test_close_waits_for_the_check_in_flight_and_releases_its_connections(
        own_pg: tuple[Store, str, str, str]) -> None:
    store, _, src, dst = own_pg
    keys = [(i,) for i in range(1, 401)]
    make_table(store, src, "int", keys)
    make_table(store, dst, "int", keys[::2])
    mapping = identity_mapping(store.describe(src), store.describe(dst), version="version")
    checker = KeyChecker(store, store, mapping)
    future = checker.submit(None, None)
    within(30, checker.close)
    assert future.done() and not future.cancelled()
    assert future.result().keys == 200
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert key_set(store, dst, "int") == set(keys)


def test_a_lock_held_for_a_moment_is_waited_out(own_pg: tuple[Store, str, str, str]) -> None:
    """A live writer holding the row a repair must change: the check is retried, not failed."""
    store, _, src, dst = own_pg
    make_table(store, src, "int", [(1,), (2,)])
    make_table(store, dst, "int", [(1,), (2,), (3,)])
    mapping = identity_mapping(store.describe(src), store.describe(dst), version="version")
    with store.connect() as blocker, KeyChecker(store, store, mapping) as checker:
        blocker.execute(f"SELECT * FROM {dst} WHERE id = 3 FOR UPDATE")
        future = checker.submit(None, None)
        time.sleep(2.5 * LOCK_TIMEOUT_MS / 1000)  # at least two attempts time out on the lock
        blocker.rollback()
        assert future.result(30).deleted == 1
    assert key_set(store, dst, "int") == {(1,), (2,)}


def test_a_lock_that_is_never_released_fails_the_check_after_bounded_attempts(
        own_pg: tuple[Store, str, str, str]) -> None:
    store, _, src, dst = own_pg
    make_table(store, src, "int", [(1,)])
    make_table(store, dst, "int", [(1,), (2,)])
    mapping = identity_mapping(store.describe(src), store.describe(dst), version="version")
    with store.connect() as blocker:
        blocker.execute(f"SELECT * FROM {dst} WHERE id = 2 FOR UPDATE")
        checker = KeyChecker(store, store, mapping)
        try:
            future = checker.submit(None, None)
            with pytest.raises(psycopg.errors.LockNotAvailable):
                future.result(20)
        finally:  # released first: a checker retrying forever could not be closed
            blocker.rollback()
            within(30, checker.close)
    assert key_set(store, dst, "int") == {(1,), (2,)}


def test_a_store_that_goes_away_fails_the_check_and_close_still_returns(
        own_pg: tuple[Store, str, str, str], pg_old: Store) -> None:
    store, db, src, dst = own_pg
    make_table(store, src, "int", [(1,), (2,)])
    make_table(store, dst, "int", [(1,)])
    mapping = identity_mapping(store.describe(src), store.describe(dst), version="version")
    checker = KeyChecker(store, store, mapping)
    try:
        assert checker.submit(None, None).result(30).keys == 1  # the checker now holds its connections
        with pg_old.connect() as conn:  # the database restarts under it
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
            conn.commit()
        with contextlib.suppress(Exception), store.connect() as conn:  # the pool reconnects for the app
            conn.execute(f"INSERT INTO {src} VALUES (3, 'late', 1)")
            conn.commit()
        future = checker.submit(None, None)
        with pytest.raises(psycopg.OperationalError):
            future.result(30)
    finally:
        within(30, checker.close)
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
