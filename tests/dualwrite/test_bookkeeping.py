"""The SQL shared by dualwrite's own small tables (control, stats, key logs), on real engines.

What an operator relies on: stamps come from the *database's* clock in UTC (instances on skewed machines
agree on who is live), windows computed with :func:`now_plus` select the rows they should, auto-numbered
ids give the order rows were written in, keys compare byte for byte even in a case-insensitive MariaDB
database, and ``create_all`` may be run by many processes at once but never hides a real failure.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from typing import Any

import pytest
from conftest import MY_HOST, MY_PORT, MY_USER, Databases, mysql_connect, mysql_url, pg_url

from dualwrite import bookkeeping as bk
from dualwrite.errors import StoreUnavailableError
from dualwrite.store import Dialect, Store

ENGINES = ["pg_old", "my_old", "sqlite_old"]


@pytest.fixture(params=ENGINES)
def store(request: pytest.FixtureRequest) -> Store:
    found: Store = request.getfixturevalue(request.param)
    return found


def as_utc(value: Any) -> dt.datetime:
    """A database timestamp as naive UTC: aware (PostgreSQL), naive UTC (MariaDB) or ISO text (SQLite)."""
    stamp: dt.datetime = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(stamp, dt.datetime), value
    return stamp if stamp.tzinfo is None else stamp.astimezone(dt.UTC).replace(tzinfo=None)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def stamp_table(store: Store, table: str) -> None:
    bk.execute(store, f"CREATE TABLE {table} (id {bk.identity_pk(store)}, label VARCHAR(64) NOT NULL, "
                      f"at {bk.ts_type(store)} NOT NULL){bk.table_suffix(store)}")


def stamp(store: Store, table: str, label: str) -> None:
    p = store.paramstyle
    bk.execute(store, f"INSERT INTO {table} (label, at) VALUES ({p}, {bk.now_sql(store)})", [label])


# -- the database's clock -------------------------------------------------------------------------------


def test_now_sql_is_the_database_clock_in_utc_to_the_sub_second(store: Store, table_name: str) -> None:
    """A stamp is UTC and keeps its fraction of a second: heartbeats 0.3 s apart are 0.3 s apart."""
    stamp_table(store, table_name)
    stamp(store, table_name, "first")
    time.sleep(0.3)
    stamp(store, table_name, "second")
    (first, second) = [as_utc(r[0]) for r in bk.query(store, f"SELECT at FROM {table_name} ORDER BY id")]
    assert abs((first - utc_now()).total_seconds()) < 5, "the stamp is not UTC"
    assert 0.25 <= (second - first).total_seconds() < 2.0


@pytest.mark.parametrize("engine", ["pg_old", "my_old"])
def test_now_sql_stays_utc_in_a_session_with_another_time_zone(request: pytest.FixtureRequest,
                                                                 engine: str) -> None:
    """A session configured for another zone (a DBA's default, a pooler) still stamps UTC."""
    store: Store = request.getfixturevalue(engine)
    zone = "SET TIME ZONE 'Asia/Kathmandu'" if store.dialect is Dialect.POSTGRESQL else "SET time_zone = '+05:45'"
    utc = "SET TIME ZONE 'UTC'" if store.dialect is Dialect.POSTGRESQL else "SET time_zone = '+00:00'"
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(zone)
        try:
            cur.execute(f"SELECT {bk.now_sql(store)}")
            (value,) = cur.fetchone()
        finally:  # the connection goes back to the session's pool: the next test must not inherit the zone
            cur.execute(utc)
            conn.rollback()
    assert abs((as_utc(value) - utc_now()).total_seconds()) < 5


def test_now_sql_moves_inside_one_transaction(store: Store) -> None:
    """The clock, not the start of the transaction: a long unit of work must not stamp stale times."""
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT {bk.now_sql(store)}")
        (a,) = cur.fetchone()
        time.sleep(0.25)
        cur.execute(f"SELECT {bk.now_sql(store)}")
        (b,) = cur.fetchone()
        conn.rollback()
    assert (as_utc(b) - as_utc(a)).total_seconds() >= 0.2


@pytest.mark.parametrize("seconds", [-86400 * 30, -3600, -0.25, 0, 2.5, 7 * 86400])
def test_now_plus_offsets_the_database_clock_exactly(store: Store, seconds: float) -> None:
    later, param = bk.now_plus(store, seconds)
    ((now, moved),) = bk.query(store, f"SELECT {bk.now_sql(store)}, {later}", [param])
    assert abs((as_utc(moved) - as_utc(now)).total_seconds() - seconds) < 0.05


def test_windows_built_with_now_plus_select_stamped_rows(store: Store, table_name: str) -> None:
    """What the control plane asks: who stamped within the last N seconds (and nobody in the future)."""
    stamp_table(store, table_name)
    stamp(store, table_name, "zoë 😀")
    time.sleep(0.4)

    def within(seconds: float, op: str = ">=") -> list[str]:
        since, param = bk.now_plus(store, seconds)
        return [str(r[0]) for r in bk.query(store, f"SELECT label FROM {table_name} WHERE at {op} {since}",
                                            [param])]

    assert within(-60) == ["zoë 😀"]
    assert within(-0.1) == []  # stamped 0.4 s ago: outside a 0.1 s window
    assert within(60) == []
    assert within(0, "<") == ["zoë 😀"]


# -- ids, keys and statements -------------------------------------------------------------------------------


def test_identity_ids_follow_write_order_and_are_never_reused(store: Store, table_name: str) -> None:
    """A key log is read in id order: an id handed out again after a delete would reorder history."""
    stamp_table(store, table_name)
    for label in ("a", "b", "c"):
        stamp(store, table_name, label)
    ids = [int(r[0]) for r in bk.query(store, f"SELECT id FROM {table_name} ORDER BY id")]
    assert len(ids) == 3 and ids == sorted(set(ids))
    assert bk.execute(store, f"DELETE FROM {table_name} WHERE id = {store.paramstyle}", [ids[-1]]) == 1
    stamp(store, table_name, "d")
    rows = bk.query(store, f"SELECT id, label FROM {table_name} ORDER BY id")
    assert [r[1] for r in rows] == ["a", "b", "d"]
    assert int(rows[-1][0]) > ids[-1], "the id of a deleted row was handed out again"


def test_mysql_tables_compare_keys_byte_for_byte_in_a_case_insensitive_database(databases: Databases) -> None:
    """Operators' MariaDB databases often default to a case- and accent-insensitive collation; dualwrite's
    own tables must still hold 'Orders' and 'orders' (and 'é' and 'e') as different keys."""
    name = databases.my_db("bk_ci")
    admin = mysql_connect(host=MY_HOST, port=MY_PORT, user=MY_USER, autocommit=True)
    admin.cursor().execute(f"ALTER DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    admin.close()
    store = databases.store("bk_ci", mysql_url(name))
    keys = ["orders", "Orders", "ORDERS", "e", "é", "straße", "strasse", "Zoë 😀"]
    bk.execute(store, f"CREATE TABLE bk_keys (k VARCHAR(64) NOT NULL PRIMARY KEY){bk.table_suffix(store)}")
    for k in keys:
        bk.execute(store, "INSERT INTO bk_keys (k) VALUES (%s)", [k])
    found = [str(r[0]) for r in bk.query(store, "SELECT k FROM bk_keys ORDER BY k")]
    assert found == sorted(keys, key=lambda s: s.encode())
    assert bk.query(store, "SELECT k FROM bk_keys WHERE k = %s", ["orders"]) == [("orders",)]


def test_table_suffix_is_only_for_mysql(store: Store) -> None:
    assert bool(bk.table_suffix(store)) is (store.dialect is Dialect.MYSQL)


def test_execute_commits_and_counts_rows_and_query_reads_them_back(store: Store, table_name: str) -> None:
    p = store.paramstyle
    bk.execute(store, f"CREATE TABLE {table_name} (k VARCHAR(64) PRIMARY KEY, v VARCHAR(64))"
                      f"{bk.table_suffix(store)}")
    assert bk.execute(store, f"INSERT INTO {table_name} VALUES ({p}, {p}), ({p}, {p}), ({p}, {p})",
                      ["a", None, "zoë 😀", "", "tab\tnl\n", "x"]) == 3
    assert bk.execute(store, f"UPDATE {table_name} SET v = {p} WHERE k <> {p}", ["y", "a"]) == 2
    assert bk.execute(store, f"DELETE FROM {table_name} WHERE k = {p}", ["nobody"]) == 0
    # committed: another connection (a fresh one, not from the pool) sees it
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT k, v FROM {table_name} ORDER BY k")
        seen = sorted(tuple(r) for r in cur.fetchall())
        conn.rollback()
    assert seen == sorted([("a", None), ("zoë 😀", "y"), ("tab\tnl\n", "y")])
    assert sorted(bk.query(store, f"SELECT k, v FROM {table_name} WHERE v IS NULL OR v = {p}", ("y",))) == seen


# -- create_all ------------------------------------------------------------------------------------------


def test_create_all_is_idempotent_and_goes_on_past_what_exists(store: Store, table_name: str) -> None:
    ddl = [f"CREATE TABLE {table_name} (id INTEGER PRIMARY KEY){bk.table_suffix(store)}",
           f"CREATE TABLE IF NOT EXISTS {table_name}_b (id INTEGER PRIMARY KEY){bk.table_suffix(store)}",
           f"CREATE INDEX IF NOT EXISTS {table_name}_bi ON {table_name}_b (id)"]
    bk.create_all(store, ddl)
    bk.create_all(store, ddl)  # the first statement now fails with "already exists": the others still run
    bk.execute(store, f"DROP TABLE {table_name}_b")
    bk.create_all(store, ddl)
    assert bk.query(store, f"SELECT COUNT(*) FROM {table_name}_b") == [(0,)]


def test_create_all_raises_a_real_failure(store: Store, table_name: str) -> None:
    with pytest.raises(Exception, match=r"(?i)syntax|near"):
        bk.create_all(store, [f"CREATE TABLE {table_name} (id INTEGER PRIMARY KEY,)"])


def test_create_all_from_many_processes_at_once(pg_old: Store) -> None:
    """PostgreSQL reports the loser of two concurrent ``CREATE ... IF NOT EXISTS`` as a duplicate key of its
    catalog: every instance of a starting fleet must still come up."""
    for _ in range(3):
        table = f"bk_race_{secrets.token_hex(3)}"
        ddl = [f"CREATE TABLE IF NOT EXISTS {table} (id {bk.identity_pk(pg_old)}, v TEXT)",
               f"CREATE INDEX IF NOT EXISTS {table}_v ON {table} (v)"]
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def start(barrier: threading.Barrier, ddl: list[str], errors: list[BaseException]) -> None:
            barrier.wait()
            try:
                bk.create_all(pg_old, ddl)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(barrier, ddl, errors)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert bk.query(pg_old, f"SELECT COUNT(*) FROM {table}") == [(0,)]


def test_create_all_on_an_unreachable_store_raises(databases: Databases) -> None:
    store = databases.store("bk_gone", pg_url(f"dwt_absent_{secrets.token_hex(3)}"))
    with pytest.raises(StoreUnavailableError):
        bk.create_all(store, ["CREATE TABLE IF NOT EXISTS bk_x (id INTEGER PRIMARY KEY)"])


def test_create_all_on_an_unreachable_store_raises_whatever_the_database_is_called(databases: Databases) -> None:
    store = databases.store("bk_gone2", pg_url(f"dwt_{secrets.token_hex(3)}_duplicate_orders"))
    with pytest.raises(StoreUnavailableError):
        bk.create_all(store, ["CREATE TABLE IF NOT EXISTS bk_x (id INTEGER PRIMARY KEY)"])
