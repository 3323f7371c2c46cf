"""The mirror primitive (rule 1, docs/architecture.md): make target rows K equal source rows K now, or absent.

Covers insert, update and delete images, the version column (not trusted under the key's lock; a guard only
for unlocked reads), composite keys across engines, batching, and the source row lock held while the target
is written.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dualwrite.mapping import compile_table, identity_mapping
from dualwrite.mirror import mirror_keys
from dualwrite.spec import ColumnMap, TableSpec
from dualwrite.store import Store

DDL = {"postgresql": "CREATE TABLE {t} (id bigint PRIMARY KEY, v varchar(40), version bigint NOT NULL)",
       "mysql": "CREATE TABLE {t} (id BIGINT PRIMARY KEY, v VARCHAR(40), version BIGINT NOT NULL)",
       "sqlite": "CREATE TABLE {t} (id INTEGER PRIMARY KEY, v VARCHAR(40), version BIGINT NOT NULL)"}


@pytest.fixture(scope="module")
def sqlite_new(tmp_path_factory: pytest.TempPathFactory, databases: Any) -> Store:
    return databases.store("sqnew", f"sqlite:///{tmp_path_factory.mktemp('mirror') / 'new.db'}")


def rows(store: Store, table: str) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT * FROM {store.quote(table)}")
        out = [tuple(r) for r in cur.fetchall()]
        cur.close()
        conn.rollback()
    return sorted(out, key=lambda r: [(x is not None, x if isinstance(x, int) else str(x)) for x in r])


def sql(store: Store, *statements: str, params: tuple[Any, ...] = ()) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for s in statements:
            cur.execute(s.replace("%s", store.paramstyle), params) if params else cur.execute(s)
        cur.close()
        conn.commit()


def make_pair(source: Store, target: Store, table: str, *, version: bool = True) -> Any:
    for store in (source, target):
        sql(store, DDL[store.dialect.value].format(t=table))
    return identity_mapping(source.describe(table), target.describe(table),
                            version="version" if version else None)


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new", "pg_old>my_new", "pg_old>sqlite_new"])
def test_insert_update_delete_images(request: pytest.FixtureRequest, pair: str, table_name: str) -> None:
    source, target = (request.getfixturevalue(n) for n in pair.split(">"))
    m = make_pair(source, target, table_name)
    sql(source, f"INSERT INTO {table_name} VALUES (1, 'a', 1), (2, 'b', 1), (0, 'zero', 1), (-7, 'neg', 1)")

    r = mirror_keys(source, target, m, [(1,), (2,), (0,), (-7,)])
    assert (r.keys, r.upserted, r.deleted) == (4, 4, 0)
    assert rows(target, table_name) == rows(source, table_name)

    sql(source, f"UPDATE {table_name} SET v = 'a2', version = 2 WHERE id = 1",
        f"DELETE FROM {table_name} WHERE id IN (2, -7)")
    r = mirror_keys(source, target, m, [(1,), (2,), (-7,), (1,)])  # duplicates count once
    assert (r.keys, r.upserted, r.deleted) == (3, 1, 2)
    assert rows(target, table_name) == [(0, "zero", 1), (1, "a2", 2)]

    # mirroring a key that exists nowhere is harmless
    r = mirror_keys(source, target, m, [(99,)])
    assert (r.keys, r.upserted, r.deleted) == (1, 0, 0)
    assert rows(target, table_name) == rows(source, table_name)


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new", "pg_old>my_new", "pg_old>sqlite_new"])
def test_locked_mirror_trusts_commit_order_not_the_version_column(request: pytest.FixtureRequest, pair: str,
                                                                  table_name: str) -> None:
    """[T2-1] A key deleted and re-inserted with its version restarting at 1, or updated without a version
    bump, must still arrive: the image is read under the key's lock, so it is the newest, whatever its
    version says. Only an unlocked read (no lock orders the images) keeps the version guard."""
    source, target = (request.getfixturevalue(n) for n in pair.split(">"))
    m = make_pair(source, target, table_name)
    sql(source, f"INSERT INTO {table_name} VALUES (1, 'reinserted', 1), (2, 'newer', 9), (3, 'no-bump', 4)")
    sql(target, f"INSERT INTO {table_name} VALUES (1, 'before-delete', 5), (2, 'older', 8), (3, 'other', 4)")

    mirror_keys(source, target, m, [(1,), (2,), (3,)])
    assert rows(target, table_name) == rows(source, table_name)

    # unlocked: the version guard is all that orders images, so an older one is refused unless forced
    sql(target, f"UPDATE {table_name} SET v = 'newer-elsewhere', version = 50 WHERE id = 1")
    mirror_keys(source, target, m, [(1,)], lock=False)
    assert rows(target, table_name)[0] == (1, "newer-elsewhere", 50)
    r = mirror_keys(source, target, m, [(1,)], lock=False, force=True)
    assert r.upserted == 1
    assert rows(target, table_name) == rows(source, table_name)


def test_without_a_version_the_source_image_always_wins(pg_old: Store, pg_new: Store, table_name: str) -> None:
    m = make_pair(pg_old, pg_new, table_name, version=False)
    sql(pg_old, f"INSERT INTO {table_name} VALUES (1, 'src', 1)")
    sql(pg_new, f"INSERT INTO {table_name} VALUES (1, 'dst', 7)")
    mirror_keys(pg_old, pg_new, m, [(1,)])
    assert rows(pg_new, table_name) == [(1, "src", 1)]


@pytest.mark.parametrize("pair", ["pg_old>my_new", "my_old>pg_new"])
def test_composite_keys(request: pytest.FixtureRequest, pair: str, table_name: str) -> None:
    source, target = (request.getfixturevalue(n) for n in pair.split(">"))
    ddl = {"postgresql": "CREATE TABLE {t} (tenant int, code varchar(8), v int, PRIMARY KEY (tenant, code))",
           "mysql": "CREATE TABLE {t} (tenant INT, code VARCHAR(8), v INT, PRIMARY KEY (tenant, code)) "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"}
    for store in (source, target):
        sql(store, ddl[store.dialect.value].format(t=table_name))
    m = identity_mapping(source.describe(table_name), target.describe(table_name))
    sql(source, f"INSERT INTO {table_name} VALUES (1, 'a', 1), (1, 'B', 2), (-2, 'é', 3), (0, '😀', 4)")
    mirror_keys(source, target, m, [(1, "a"), (1, "B"), (-2, "é"), (0, "😀")])
    assert rows(target, table_name) == rows(source, table_name)
    sql(source, f"DELETE FROM {table_name} WHERE tenant = 1 AND code = 'B'",
        f"UPDATE {table_name} SET v = 30 WHERE tenant = -2")
    r = mirror_keys(source, target, m, [(1, "B"), (-2, "é")])
    assert (r.upserted, r.deleted) == (1, 1)
    assert rows(target, table_name) == rows(source, table_name)


@pytest.mark.parametrize("target_name", ["pg_new", "my_new"])
def test_batches_of_mixed_images(request: pytest.FixtureRequest, target_name: str, pg_old: Store,
                                 table_name: str) -> None:
    target: Store = request.getfixturevalue(target_name)
    m = make_pair(pg_old, target, table_name)
    sql(pg_old, f"INSERT INTO {table_name} SELECT g, 'v' || g, 1 FROM generate_series(1, 2000) g")
    sql(target, *[f"INSERT INTO {table_name} VALUES ({i}, 'stale', 0)" for i in range(1990, 2011)])
    keys = [(i,) for i in range(1, 2501)]
    r = mirror_keys(pg_old, target, m, keys, batch_size=700)
    assert r.keys == 2500 and r.upserted == 2000 and r.deleted == 10  # 2001..2010 existed only in the target
    assert rows(target, table_name) == rows(pg_old, table_name)

    sql(pg_old, f"UPDATE {table_name} SET v = 'w', version = 2 WHERE id % 3 = 0",
        f"DELETE FROM {table_name} WHERE id % 5 = 0")
    r = mirror_keys(pg_old, target, m, keys[:2000], batch_size=700)
    assert r.deleted == 400
    assert rows(target, table_name) == rows(pg_old, table_name)


# -- the source row lock --------------------------------------------------------------------------------

IN_TRANSFORM = threading.Event()
RELEASE = threading.Event()


def blocking_upper(value: str) -> str:
    """A transform that parks the mirror between its locked source read and its target write."""
    IN_TRANSFORM.set()
    assert RELEASE.wait(10)
    return value.upper()


@pytest.fixture
def events() -> Iterator[None]:
    IN_TRANSFORM.clear()
    RELEASE.clear()
    yield
    RELEASE.set()


def test_source_rows_stay_locked_until_the_target_commits(pg_old: Store, pg_new: Store, table_name: str,
                                                          events: None) -> None:
    for store in (pg_old, pg_new):
        sql(store, DDL["postgresql"].format(t=table_name))
    spec = TableSpec(source=table_name, columns={"v": ColumnMap(transform="test_mirror:blocking_upper",
                                                                **{"from": "v"})})
    m, problems = compile_table(spec, pg_old.describe(table_name), pg_new.describe(table_name))
    assert m is not None, problems
    sql(pg_old, f"INSERT INTO {table_name} VALUES (1, 'a', 1), (2, 'b', 1)")

    worker = threading.Thread(target=mirror_keys, args=(pg_old, pg_new, m, [(1,)]))
    worker.start()
    try:
        assert IN_TRANSFORM.wait(10)
        dsn = pg_old.engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg", "postgresql")
        with psycopg.connect(dsn) as other:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute(f"SELECT 1 FROM {table_name} WHERE id = 1 FOR UPDATE NOWAIT")
            other.rollback()
            # other rows are not locked
            assert other.execute(f"SELECT 1 FROM {table_name} WHERE id = 2 FOR UPDATE NOWAIT").fetchone()
            other.rollback()
    finally:
        RELEASE.set()
        worker.join(10)
    assert rows(pg_new, table_name) == [(1, "A", 1)]
