"""Copying a key range: schema changes, resumability, conflicts with existing rows, and live writes.

Live writes win over backfill (rule 4, docs/architecture.md). The writer in these tests behaves like the sync dual-write
adapter: it commits on the source, then mirrors the key through ``mirror_keys``. Two kinds of races are
exercised: a deterministic one, injected from ``should_stop`` (which runs after a chunk has been read
ahead and before it is written, so the chunk's image is stale when it lands), and a writer thread running
freely while the copy runs.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from dualwrite.backfill_copy import CopyProgress, copy_range
from dualwrite.keys import decode_key, encode_key
from dualwrite.mapping import TableMapping, compile_table, identity_mapping
from dualwrite.mirror import mirror_keys
from dualwrite.spec import ColumnMap, TableSpec
from dualwrite.store import Store

ROUTE_OF = {"pg_old": "pg-binary", "my_old": "mysql-text", "sqlite_old": "generic"}


def status_code(value: str | None) -> str | None:
    """The Python transform used by the schema-change test."""
    return None if value is None else value[:3].upper()


def run(store: Store, *statements: str, params: tuple[Any, ...] = ()) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for s in statements:
            if params:
                cur.execute(s.replace("%s", store.paramstyle), params)
            else:
                cur.execute(s)
        cur.close()
        conn.commit()


def rows(store: Store, table: str, cols: str = "*") -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT {cols} FROM {store.quote(table)} ORDER BY 1")
        out = [tuple(r) for r in cur.fetchall()]
        cur.close()
        conn.rollback()
    return out


# -- schema change --------------------------------------------------------------------------------------

SRC_DDL = {
    "postgresql": "CREATE TABLE {t} (id int PRIMARY KEY, name text, legacy text, qty int, price numeric(10,2), "
                  "status text, version bigint NOT NULL)",
    "mysql": "CREATE TABLE {t} (id INT PRIMARY KEY, name TEXT, legacy TEXT, qty INT, price DECIMAL(10,2), "
             "status TEXT, version BIGINT NOT NULL)",
}
DST_DDL = ("CREATE TABLE {t} (id bigint PRIMARY KEY, full_name text, qty bigint, price numeric(14,2), "
           "label text, region text NOT NULL, status_code text, version bigint NOT NULL)")
LABEL_EXPR = {"postgresql": "upper(name) || ' #' || id::text", "mysql": "CONCAT(UPPER(name), ' #', id)"}
SRC_ROWS = [(1, "ada", "x", 2147483647, Decimal("99999999.99"), "shipped", 1),
            (2, "Bob\tTab", None, -5, Decimal("-0.01"), "new", 3),
            (3, None, "y", None, None, None, 1),
            (4, "zoë 😀", "z", 0, Decimal("0.00"), "cancelled", 2)]


@pytest.mark.parametrize(("source_name", "with_transform"),
                         [("pg_old", False), ("pg_old", True), ("my_old", False), ("my_old", True)])
def test_schema_change(request: pytest.FixtureRequest, source_name: str, with_transform: bool, pg_new: Store,
                       table_name: str) -> None:
    """Renamed, dropped and new columns, type widening, a SQL expression and a Python transform."""
    source: Store = request.getfixturevalue(source_name)
    dialect = source.dialect.value
    run(source, SRC_DDL[dialect].format(t=table_name))
    for r in SRC_ROWS:
        run(source, f"INSERT INTO {table_name} VALUES (%s, %s, %s, %s, %s, %s, %s)", params=r)
    target_table = table_name + "_v2"
    run(pg_new, DST_DDL.format(t=target_table))
    columns = {
        "full_name": ColumnMap(**{"from": "name"}),
        "label": ColumnMap(expr=LABEL_EXPR[dialect]),
        "region": ColumnMap(default="emea"),
        "status_code": (ColumnMap(transform="test_copy:status_code", **{"from": "status"}) if with_transform
                        else ColumnMap(default=None)),
    }
    spec = TableSpec(source=table_name, target=target_table, columns=columns,
                     drop=["legacy"] + ([] if with_transform else ["status"]),
                     version_column="version", batch_size=3)
    mapping, problems = compile_table(spec, source.describe(table_name), pg_new.describe(target_table))
    assert mapping is not None, problems

    prog = copy_range(source, pg_new, mapping)
    assert prog.extra["route"] == ("generic" if with_transform else ROUTE_OF[source_name])
    assert "fallback_chunks" not in prog.extra
    expected = [(i, name, qty, price, None if name is None else f"{name.upper()} #{i}", "emea",
                 status_code(status) if with_transform else None, version)
                for i, name, _legacy, qty, price, status, version in SRC_ROWS]
    assert rows(pg_new, target_table) == expected
    assert prog.rows == 4 and prog.done


def test_schema_change_defaults_of_every_kind(pg_old: Store, my_old: Store, pg_new: Store,
                                              table_name: str) -> None:
    """Spec defaults reach the target with their types intact on both fast paths."""
    target_table = table_name + "_v2"
    run(pg_new, f"CREATE TABLE {target_table} (id bigint PRIMARY KEY, flag boolean, n numeric(6,2), "
                "doc jsonb, raw bytea, at timestamptz, note text)")
    expected = [(7, True, Decimal("1.50"), {"k": ["v", 1]}, b"\x00\\",
                 dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC), "tab\tnl\n\\N")]
    columns = {"flag": ColumnMap(default=True), "n": ColumnMap(default="1.5"),
               "doc": ColumnMap(default={"k": ["v", 1]}), "raw": ColumnMap(default="\\x005c"),
               "at": ColumnMap(default="2024-05-06 07:08:09+00"), "note": ColumnMap(default="tab\tnl\n\\N")}
    for source in (pg_old, my_old):
        run(source, f"CREATE TABLE {table_name} (id int PRIMARY KEY)", f"INSERT INTO {table_name} VALUES (7)")
        run(pg_new, f"DELETE FROM {target_table}")
        spec = TableSpec(source=table_name, target=target_table, columns=columns)
        mapping, problems = compile_table(spec, source.describe(table_name), pg_new.describe(target_table))
        assert mapping is not None, problems
        prog = copy_range(source, pg_new, mapping)
        assert prog.extra["route"] in ("pg-binary", "mysql-text") and "fallback_chunks" not in prog.extra
        assert rows(pg_new, target_table) == expected, source


# -- resumability ---------------------------------------------------------------------------------------

LIVE_DDL = {
    "postgresql": "CREATE TABLE {t} (id bigint PRIMARY KEY, v varchar(20), n int{version})",
    "mysql": "CREATE TABLE {t} (id BIGINT PRIMARY KEY, v VARCHAR(20), n INT{version})",
    "sqlite": "CREATE TABLE {t} (id INTEGER PRIMARY KEY, v VARCHAR(20), n INTEGER{version})",
}


def live_tables(source: Store, target: Store, table: str, n_rows: int, *, versioned: bool,
                batch: int) -> TableMapping:
    for store in (source, target):
        version = ", version bigint NOT NULL" if versioned else ""
        run(store, LIVE_DDL[store.dialect.value].format(t=table, version=version))
    values = ", ".join(f"({10 * i}, 'v{i}', {i}{', 1' if versioned else ''})" for i in range(1, n_rows + 1))
    run(source, f"INSERT INTO {table} VALUES {values}")
    return identity_mapping(source.describe(table), target.describe(table),
                            version="version" if versioned else None, batch_size=batch)


@pytest.mark.parametrize("source_name", ["pg_old", "my_old", "sqlite_old"])
def test_stop_and_resume_copies_every_row_exactly_once(request: pytest.FixtureRequest, source_name: str,
                                                       pg_new: Store, table_name: str) -> None:
    source: Store = request.getfixturevalue(source_name)
    mapping = live_tables(source, pg_new, table_name, 100, versioned=False, batch=7)
    run(pg_new, f"CREATE TABLE {table_name}_inserts (n int)",
        f"CREATE FUNCTION {table_name}_count() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN INSERT INTO {table_name}_inserts VALUES (1); RETURN NEW; END $$",
        f"CREATE TRIGGER counted AFTER INSERT ON {table_name} FOR EACH ROW EXECUTE FUNCTION {table_name}_count()")
    polls = itertools.count()
    reported: list[Any] = []
    first = copy_range(source, pg_new, mapping, should_stop=lambda: next(polls) >= 3,
                       on_batch=lambda p: reported.append(p.cursor))
    assert reported == [(70,), (140,), (210,)]
    assert not first.done and first.batches == 3 and first.rows == 21
    assert first.cursor == (210,)
    assert len(rows(pg_new, table_name)) == 21

    # the cursor travels through Temporal as JSON
    cursor = decode_key(encode_key(first.cursor), mapping.key_kinds)
    second = copy_range(source, pg_new, mapping, cursor=cursor)
    assert second.done and second.rows == 79 and second.batches == 12
    assert first.conflict_batches == second.conflict_batches == 0  # no chunk was written twice
    assert rows(pg_new, table_name) == rows(source, table_name)
    assert rows(pg_new, f"{table_name}_inserts", "count(*)") == [(100,)]

    # a resumed copy that redoes the last chunk (a crash before its heartbeat) is harmless
    third = copy_range(source, pg_new, mapping, cursor=(900,))
    assert third.rows == 10 and third.conflict_batches == third.batches == 2
    assert rows(pg_new, table_name) == rows(source, table_name)


def test_copy_respects_range_bounds(pg_old: Store, pg_new: Store, table_name: str) -> None:
    mapping = live_tables(pg_old, pg_new, table_name, 50, versioned=False, batch=4)
    prog = copy_range(pg_old, pg_new, mapping, lo=(100,), hi=(300,))
    assert prog.done and prog.rows == 20 and prog.cursor == (300,)
    assert [r[0] for r in rows(pg_new, table_name)] == list(range(110, 301, 10))


# -- existing rows in the target ---------------------------------------------------------------------------


@pytest.mark.parametrize("source_name", ["pg_old", "my_old", "sqlite_old"])
@pytest.mark.parametrize("versioned", [True, False])
def test_existing_target_rows_newer_kept_older_replaced_extra_removed(
    request: pytest.FixtureRequest, source_name: str, versioned: bool, pg_new: Store, table_name: str,
) -> None:
    source: Store = request.getfixturevalue(source_name)
    mapping = live_tables(source, pg_new, table_name, 30, versioned=versioned, batch=8)
    run(source, f"UPDATE {table_name} SET version = 5 WHERE id = 60" if versioned else "SELECT 1")
    v = (lambda x: f", {x}") if versioned else (lambda _x: "")
    run(pg_new, f"INSERT INTO {table_name} VALUES (50, 'live', -1{v(9)}), (60, 'stale', -1{v(2)}), "
                f"(65, 'resurrected', -1{v(1)}), (290, 'live2', -1{v(3)})")
    prog = copy_range(source, pg_new, mapping)
    assert prog.done and prog.conflict_batches == 2  # chunks holding 50/60 and 290 took the staging path
    assert prog.fixed_keys == 1  # 65 exists only in the target: deleted by the key check
    got = {r[0]: r for r in rows(pg_new, table_name)}
    src = {r[0]: r for r in rows(source, table_name)}
    assert set(got) == set(src)
    if versioned:
        assert got[50] == (50, "live", -1, 9)  # newer than the backfill image: kept
        assert got[60] == src[60]  # older: replaced
        assert got[290] == (290, "live2", -1, 3)
    else:
        # without versions, whatever is there was written by a live mirror: never overwritten
        assert got[50] == (50, "live", -1) and got[60] == (60, "stale", -1) and got[290] == (290, "live2", -1)
    assert {k: r for k, r in got.items() if k not in (50, 60, 290)} == \
        {k: r for k, r in src.items() if k not in (50, 60, 290)}


# -- live writes -------------------------------------------------------------------------------------------


class SyncWriter:
    """Writes like the sync dual-write adapter: commit on the source, then mirror the key."""

    def __init__(self, source: Store, target: Store, mapping: TableMapping, table: str, versioned: bool) -> None:
        self.source, self.target, self.mapping, self.table = source, target, mapping, table
        self.versioned = versioned
        self.deleted: set[int] = set()
        self.ops = 0

    def _mirror(self, key: int) -> None:
        mirror_keys(self.source, self.target, self.mapping, [(key,)])
        self.ops += 1

    def update(self, key: int, tag: str) -> None:
        bump = ", version = version + 1" if self.versioned else ""
        run(self.source, f"UPDATE {self.table} SET v = %s, n = n + 1000{bump} WHERE id = {key}", params=(tag,))
        self._mirror(key)

    def delete(self, key: int) -> None:
        run(self.source, f"DELETE FROM {self.table} WHERE id = {key}")
        self.deleted.add(key)
        self._mirror(key)

    def insert(self, key: int) -> None:
        version = ", 1" if self.versioned else ""
        run(self.source, f"INSERT INTO {self.table} VALUES ({key}, 'new', {key}{version})")
        self.deleted.discard(key)
        self._mirror(key)


def assert_same(source: Store, target: Store, table: str, writer: SyncWriter) -> None:
    src, dst = rows(source, table), rows(target, table)
    assert dst == src
    assert not writer.deleted & {r[0] for r in dst}, "a deleted row was resurrected"


@pytest.mark.parametrize("source_name", ["pg_old", "my_old", "sqlite_old"])
@pytest.mark.parametrize("versioned", [True, False])
def test_writes_between_reading_and_writing_a_chunk_win(
    request: pytest.FixtureRequest, source_name: str, versioned: bool, pg_new: Store, table_name: str,
) -> None:
    source: Store = request.getfixturevalue(source_name)
    batch = 10
    mapping = live_tables(source, pg_new, table_name, 60, versioned=versioned, batch=batch)
    writer = SyncWriter(source, pg_new, mapping, table_name, versioned)
    prog = CopyProgress(cursor=None)

    def between_read_and_write() -> bool:
        # the chunk about to be written was read already on the row routes: its image is now stale
        assert prog.in_flight is not None
        lo, hi = prog.in_flight
        base = lo[0] if lo else 0
        if hi is not None:
            writer.delete(base + 10)  # the chunk's first key
            writer.update(base + 20, f"u{base}")
            writer.insert(base + 25)  # between two existing keys, inside the chunk's range
            writer.update(hi[0], f"last{base}")  # the chunk's upper bound
        return False

    copy_range(source, pg_new, mapping, should_stop=between_read_and_write, progress=prog)
    assert prog.done and writer.ops >= 24
    assert_same(source, pg_new, table_name, writer)


@pytest.mark.parametrize("source_name", ["pg_old", "my_old"])
@pytest.mark.parametrize("versioned", [True, False])
def test_concurrent_writer_during_copy(request: pytest.FixtureRequest, source_name: str, versioned: bool,
                                       pg_new: Store, table_name: str) -> None:
    source: Store = request.getfixturevalue(source_name)
    n_rows = 3000
    mapping = live_tables(source, pg_new, table_name, n_rows, versioned=versioned, batch=150)
    writer = SyncWriter(source, pg_new, mapping, table_name, versioned)
    done = threading.Event()
    errors: list[BaseException] = []
    rng = random.Random(42)

    def write_loop() -> None:
        try:
            while not done.is_set():
                key = 10 * rng.randint(1, n_rows)
                op = rng.random()
                if key in writer.deleted:
                    writer.insert(key)
                elif op < 0.55:
                    writer.update(key, f"w{writer.ops}")
                elif op < 0.8:
                    writer.delete(key)
                else:
                    fresh = key + rng.randint(1, 9)
                    if fresh not in writer.deleted:
                        writer.insert(fresh) if not _exists(source, table_name, fresh) else writer.delete(fresh)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=write_loop)
    thread.start()
    try:
        time.sleep(0.1)
        before = writer.ops
        prog = copy_range(source, pg_new, mapping, on_batch=lambda _p: time.sleep(0.01))
        during = writer.ops - before
    finally:
        done.set()
        thread.join(30)
    assert not errors, errors
    assert prog.done and during >= 20, f"the writer only managed {during} writes during the copy"
    assert_same(source, pg_new, table_name, writer)


def _exists(store: Store, table: str, key: int) -> bool:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id FROM {table} WHERE id = {int(key)}")
        found = cur.fetchone() is not None
        cur.close()
        conn.rollback()
    return found


def test_unknown_route_is_refused(pg_old: Store, my_new: Store, table_name: str,
                                  run_sql: Callable[..., None]) -> None:
    mapping = live_tables(pg_old, my_new, table_name, 3, versioned=False, batch=2)
    with pytest.raises(ValueError, match="cannot copy"):
        copy_range(pg_old, my_new, mapping, route="pg-binary")
    with pytest.raises(ValueError, match="unknown route"):
        copy_range(pg_old, my_new, mapping, route="carrier-pigeon")


@pytest.mark.parametrize("source_name", ["pg_old", "my_old"])
def test_a_slow_key_check_rolls_the_next_chunk_back_and_rewrites_it(
    request: pytest.FixtureRequest, source_name: str, pg_new: Store, table_name: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A written chunk never waits long on the previous chunk's check while holding its locks."""
    import dualwrite.backfill_copy as copy_module

    monkeypatch.setattr(copy_module, "CHECK_WAIT_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="dualwrite.backfill_copy")
    source: Store = request.getfixturevalue(source_name)
    mapping = live_tables(source, pg_new, table_name, 40, versioned=True, batch=6)
    run(pg_new, f"INSERT INTO {table_name} VALUES (15, 'resurrected', 0, 1)")  # gives the checks work
    prog = copy_range(source, pg_new, mapping)
    assert prog.done and prog.rows == 40 and prog.batches == 7 and prog.fixed_keys == 1
    assert prog.conflict_batches == 0  # a rolled-back chunk leaves nothing behind to conflict with
    assert rows(pg_new, table_name) == rows(source, table_name)
    assert any("writing this chunk again" in r.getMessage() for r in caplog.records)
