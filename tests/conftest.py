"""Shared fixtures: real PostgreSQL, MariaDB and SQLite stores, fresh per test session.

Each session creates its own databases (``dwt_<id>_old``/``_new`` on PostgreSQL, ``dwt_<id>`` pairs on
MariaDB) and drops them at the end. A missing service is a test failure, never a skip: CI must prove the
data path on real engines.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from dualwrite.config import StoreRef
from dualwrite.store import Store

PG_HOST = os.environ.get("DUALWRITE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DUALWRITE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("DUALWRITE_TEST_PG_USER", "")
MY_HOST = os.environ.get("DUALWRITE_TEST_MYSQL_HOST", "127.0.0.1")
MY_PORT = int(os.environ.get("DUALWRITE_TEST_MYSQL_PORT", "3306"))
MY_USER = os.environ.get("DUALWRITE_TEST_MYSQL_USER", "root")

SESSION_ID = secrets.token_hex(3)


def pg_url(db: str) -> str:
    user = f"{PG_USER}@" if PG_USER else ""
    return f"postgresql+psycopg://{user}{PG_HOST}:{PG_PORT}/{db}"


def mysql_url(db: str) -> str:
    return f"mysql+mysqldb://{MY_USER}@{MY_HOST}:{MY_PORT}/{db}"


def _pg_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(host=PG_HOST, port=PG_PORT, dbname="postgres", user=PG_USER or None,
                               autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_HOST}:{PG_PORT} and is not reachable: {exc}")


def _my_admin():  # type: ignore[no-untyped-def]
    import MySQLdb

    try:
        return MySQLdb.connect(host=MY_HOST, port=MY_PORT, user=MY_USER, connect_timeout=5, autocommit=True)
    except MySQLdb.OperationalError as exc:
        pytest.fail(f"MariaDB is required at {MY_HOST}:{MY_PORT} and is not reachable: {exc}")


class Databases:
    """Creates throwaway databases on demand and drops them all at the end of the session."""

    def __init__(self) -> None:
        self.pg: list[str] = []
        self.my: list[str] = []
        self.stores: list[Store] = []

    def pg_db(self, label: str) -> str:
        name = f"dwt_{SESSION_ID}_{label}"
        if name not in self.pg:
            with _pg_admin() as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}"')
                c.execute(f'CREATE DATABASE "{name}"')
            self.pg.append(name)
        return name

    def my_db(self, label: str) -> str:
        name = f"dwt_{SESSION_ID}_{label}"
        if name not in self.my:
            c = _my_admin()
            cur = c.cursor()
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            c.close()
            self.my.append(name)
        return name

    def store(self, name: str, url: str) -> Store:
        s = Store(StoreRef(name, url))
        self.stores.append(s)
        return s

    def drop_all(self) -> None:
        for s in self.stores:
            s.dispose()
        if self.pg:
            with _pg_admin() as c:
                for name in self.pg:
                    c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.my:
            c = _my_admin()
            cur = c.cursor()
            for name in self.my:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            c.close()


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    dbs = Databases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def pg_old(databases: Databases) -> Store:
    return databases.store("pgold", pg_url(databases.pg_db("old")))


@pytest.fixture(scope="session")
def pg_new(databases: Databases) -> Store:
    return databases.store("pgnew", pg_url(databases.pg_db("new")))


@pytest.fixture(scope="session")
def my_old(databases: Databases) -> Store:
    return databases.store("myold", mysql_url(databases.my_db("old")))


@pytest.fixture(scope="session")
def my_new(databases: Databases) -> Store:
    return databases.store("mynew", mysql_url(databases.my_db("new")))


@pytest.fixture(scope="session")
def sqlite_old(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Store:
    path = tmp_path_factory.mktemp("sqlite") / "old.db"
    return databases.store("sqold", f"sqlite:///{path}")


@pytest.fixture
def table_name(request: pytest.FixtureRequest) -> str:
    """A table name unique to the test, so tests can share the session databases."""
    base = "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:40]
    return f"t_{base}_{secrets.token_hex(2)}"


def execute(store: Store, *statements: str) -> None:
    """Run DDL/DML statements on a store and commit."""
    with store.connect() as conn:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
        cur.close()
        conn.commit()


def fetch_all(store: Store, sql: str) -> list[tuple[object, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(sql)
        rows = [tuple(r) for r in cur.fetchall()]
        cur.close()
        conn.rollback()
    return rows


@pytest.fixture
def run_sql() -> Callable[..., None]:
    return execute


@pytest.fixture
def fetch() -> Callable[[Store, str], list[tuple[object, ...]]]:
    return fetch_all


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent

