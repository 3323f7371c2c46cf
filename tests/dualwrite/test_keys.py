"""Keys of every kind (rule 5, docs/architecture.md): integers with 0 and negatives, strings, UUIDs, composites.

Chunks are bounded by keys read on the source and applied on both sides, so both engines must order keys
the same way: string keys are compared bytewise everywhere, whatever the column collation. When the
orders agree, a copy needs no key-set repairs (``fixed_keys == 0``); a disagreement would show up there
even though the repairs would still leave the data right, so the tests assert both.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from dualwrite.backfill_copy import copy_range
from dualwrite.errors import SchemaError
from dualwrite.keys import decode_key, encode_key
from dualwrite.mapping import identity_mapping
from dualwrite.store import Kind, Store
from dualwrite.stores import Role
from dualwrite.stores.sql import SqlTable

INT_KEYS = [-(10**12), -5, -1, 0, 1, 2, 7, 2**62]
# Distinct under MariaDB's utf8mb4_general_ci (no case pairs, one supplementary character per position)
STR_KEYS = ["apple", "Banana", "Zebra", "zoo", "a", "ab", "a b", "A-1", "Éclair", "éa", "ß", "日本", "a😀",
            "~tilde", "0", "_"]
_rng = random.Random(7)
# random (v4) UUIDs, and time-based (v1) ones: MariaDB stores v1 UUIDs with the time fields swapped
UUID_KEYS = [uuid.UUID(int=_rng.getrandbits(128), version=4) for _ in range(10)] + [
    uuid.UUID(fields=(0x1000 * i, 0x2000 + i, 0x1000 | (i * 7 % 0xFFF), 0x80 | i, 0x11, 0x1234), version=1)
    for i in range(1, 8)]
COMPOSITE_KEYS = [(t, s) for t in (-3, 0, 5) for s in ("x", "Y", "é", "😀")]


def insert(store: Store, table: str, rows: list[tuple[Any, ...]]) -> None:
    ph = ", ".join([store.paramstyle] * len(rows[0]))
    with store.connect() as conn:
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {store.quote(table)} VALUES ({ph})", rows)
        cur.close()
        conn.commit()


def table_rows(store: Store, table: str, order: str) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT * FROM {store.quote(table)} ORDER BY {order}")
        rows = [tuple(str(v) if isinstance(v, uuid.UUID) else v for v in r) for r in cur.fetchall()]
        cur.close()
        conn.rollback()
    return rows


def bytewise(values: list[str]) -> list[str]:
    return sorted(values, key=lambda s: s.encode("utf-8"))


def copy_and_compare(source: Store, target: Store, table: str, order: str, batch: int = 3) -> None:
    mapping = identity_mapping(source.describe(table), target.describe(table), batch_size=batch)
    prog = copy_range(source, target, mapping)
    assert prog.done
    assert prog.fixed_keys == 0, "chunk bounds selected different rows on the two sides"
    assert prog.conflict_batches == 0
    assert table_rows(target, table, order) == table_rows(source, table, order)
    assert prog.rows == len(table_rows(source, table, order))


DDL_INT = {"postgresql": "CREATE TABLE {t} (id bigint PRIMARY KEY, v text)",
           "mysql": "CREATE TABLE {t} (id BIGINT PRIMARY KEY, v TEXT)",
           "sqlite": "CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT)"}


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new", "sqlite_old>pg_new", "pg_old>my_new"])
def test_integer_keys_with_zero_and_negatives(request: pytest.FixtureRequest, pair: str, table_name: str,
                                              run_sql: Callable[..., None]) -> None:
    source, target = (request.getfixturevalue(n) for n in pair.split(">"))
    for store in (source, target):
        run_sql(store, DDL_INT[store.dialect.value].format(t=table_name))
    insert(source, table_name, [(k, f"v{k}") for k in INT_KEYS])
    copy_and_compare(source, target, table_name, "id", batch=2)


def test_string_keys_order_bytewise_whatever_the_collation(
    my_old: Store, pg_old: Store, pg_new: Store, my_new: Store, table_name: str, run_sql: Callable[..., None],
) -> None:
    # MariaDB's default case-insensitive collation, and a linguistic ICU collation on PostgreSQL
    run_sql(my_old, f"CREATE TABLE {table_name} (k VARCHAR(20) PRIMARY KEY, n INT) "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    run_sql(pg_old, f'CREATE TABLE {table_name} (k varchar(20) COLLATE "en-US-x-icu" PRIMARY KEY, n int)')
    rows = [(k, i) for i, k in enumerate(STR_KEYS)]
    insert(my_old, table_name, rows)
    insert(pg_old, table_name, rows)

    # every side lists keys in the same (bytewise) order, and ranges select the same keys
    mapping = identity_mapping(my_old.describe(table_name), pg_old.describe(table_name))
    my_side = SqlTable(my_old, mapping, Role.SOURCE)
    pg_side = SqlTable(pg_old, mapping, Role.TARGET)
    with my_old.connect() as mc, pg_old.connect() as pc:
        expected = [(k,) for k in bytewise(STR_KEYS)]
        assert my_side.range_keys(mc, None, None) == expected
        assert pg_side.range_keys(pc, None, None) == expected
        lo, hi = ("Zebra",), ("a😀",)
        inside = [(k,) for k in bytewise(STR_KEYS) if b"Zebra" < k.encode() <= "a😀".encode()]
        assert my_side.range_keys(mc, lo, hi) == inside
        assert pg_side.range_keys(pc, lo, hi) == inside
        mc.rollback()
        pc.rollback()

    run_sql(pg_new, f"CREATE TABLE {table_name} (k varchar(20) PRIMARY KEY, n int)")
    copy_and_compare(my_old, pg_new, table_name, "n", batch=3)
    run_sql(my_new, f"CREATE TABLE {table_name} (k VARCHAR(20) PRIMARY KEY, n INT) "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    copy_and_compare(pg_old, my_new, table_name, "n", batch=3)


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new", "sqlite_old>pg_new", "pg_old>my_new"])
def test_uuid_keys(request: pytest.FixtureRequest, pair: str, table_name: str,
                   run_sql: Callable[..., None]) -> None:
    source, target = (request.getfixturevalue(n) for n in pair.split(">"))
    ddl = {"postgresql": "CREATE TABLE {t} (id uuid PRIMARY KEY, n int)",
           "mysql": "CREATE TABLE {t} (id UUID PRIMARY KEY, n INT)",
           "sqlite": "CREATE TABLE {t} (id UUID PRIMARY KEY, n INTEGER)"}
    for store in (source, target):
        run_sql(store, ddl[store.dialect.value].format(t=table_name))
    insert(source, table_name, [(k if source.dialect.value == "postgresql" else str(k), i)
                                for i, k in enumerate(UUID_KEYS)])
    mapping = identity_mapping(source.describe(table_name), target.describe(table_name))
    assert mapping.key_kinds == (Kind.UUID,)
    copy_and_compare(source, target, table_name, "n", batch=4)


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new", "sqlite_old>pg_new", "pg_old>my_new"])
def test_composite_keys(request: pytest.FixtureRequest, pair: str, table_name: str,
                        run_sql: Callable[..., None]) -> None:
    source, target = (request.getfixturevalue(n) for n in pair.split(">"))
    ddl = {"postgresql": "CREATE TABLE {t} (tenant int, code varchar(10), n int, PRIMARY KEY (tenant, code))",
           "mysql": "CREATE TABLE {t} (tenant INT, code VARCHAR(10), n INT, PRIMARY KEY (tenant, code)) "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
           "sqlite": "CREATE TABLE {t} (tenant INTEGER, code VARCHAR(10), n INTEGER, PRIMARY KEY (tenant, code))"}
    for store in (source, target):
        run_sql(store, ddl[store.dialect.value].format(t=table_name))
    insert(source, table_name, [(t, s, i) for i, (t, s) in enumerate(COMPOSITE_KEYS)])
    mapping = identity_mapping(source.describe(table_name), target.describe(table_name))
    assert mapping.source_key == ("tenant", "code")
    copy_and_compare(source, target, table_name, "n", batch=5)


@pytest.mark.parametrize("store_name", ["pg_old", "my_old", "sqlite_old"])
def test_table_without_a_key_is_refused(request: pytest.FixtureRequest, store_name: str, pg_new: Store,
                                        table_name: str, run_sql: Callable[..., None]) -> None:
    store: Store = request.getfixturevalue(store_name)
    run_sql(store, f"CREATE TABLE {table_name} (a int, b text)")
    run_sql(pg_new, f"CREATE TABLE {table_name} (a int PRIMARY KEY, b text)")
    with pytest.raises(SchemaError) as err:
        identity_mapping(store.describe(table_name), pg_new.describe(table_name))
    assert "no primary or unique key" in str(err.value)
    assert table_name in str(err.value)


def test_a_unique_key_serves_when_there_is_no_primary_key(pg_old: Store, pg_new: Store, table_name: str,
                                                          run_sql: Callable[..., None]) -> None:
    run_sql(pg_old, f"CREATE TABLE {table_name} (a int NOT NULL UNIQUE, b text)",
            f"INSERT INTO {table_name} VALUES (-1, 'x'), (0, 'y'), (3, 'z')")
    run_sql(pg_new, f"CREATE TABLE {table_name} (a int PRIMARY KEY, b text)")
    mapping = identity_mapping(pg_old.describe(table_name), pg_new.describe(table_name))
    assert mapping.source_key == ("a",)
    copy_and_compare(pg_old, pg_new, table_name, "a", batch=2)


@pytest.mark.parametrize(("kinds", "key"), [
    ((Kind.INT,), (0,)),
    ((Kind.INT,), (-(2**63),)),
    ((Kind.TEXT,), ("b64:not bytes 😀",)),
    ((Kind.UUID,), (UUID_KEYS[0],)),
    ((Kind.BYTES,), (b"\x00\xff",)),
    ((Kind.INT, Kind.TEXT), (-3, "é")),
])
def test_keys_survive_json_round_trips(kinds: tuple[Kind, ...], key: tuple[Any, ...]) -> None:
    """Cursors travel through heartbeats and workflow history as JSON."""
    wire = json.loads(json.dumps(encode_key(key)))
    assert decode_key(wire, kinds) == key
    assert decode_key(None, kinds) is None
    with pytest.raises(ValueError, match="parts"):
        decode_key([*wire, 1], kinds)
