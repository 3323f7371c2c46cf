"""[T2-4] Which failures a relay activity retries in place (:func:`activities.errors.transient`).

A refused or cut connection, wrapped or not, is retried within the attempt; a row the target rejects, an
unknown column or a refused privilege never is: retrying those would look like progress and be none. The
errors are the drivers' own, raised by real servers where that is cheap.
"""

from __future__ import annotations

import socket

import psycopg
import pymysql
import pytest
import redis
import sqlalchemy as sa
from conftest import pg_url

from activities.errors import transient
from dualwrite.errors import RowRejectedError, StorePermissionError, StoreUnavailableError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raised(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:  # noqa: BLE001 - the error is the result
        return exc
    raise AssertionError("nothing raised")


def test_refused_connections_are_transient_raw_or_wrapped() -> None:
    port = _closed_port()
    pg_refused = _raised(lambda: psycopg.connect(host="127.0.0.1", port=port, connect_timeout=2))
    my_refused = _raised(lambda: pymysql.connect(host="127.0.0.1", port=port, connect_timeout=2))
    sa_refused = _raised(lambda: sa.create_engine(f"postgresql+psycopg://127.0.0.1:{port}/x").connect())
    redis_refused = _raised(lambda: redis.Redis(port=port, socket_connect_timeout=2).ping())
    assert type(sa_refused).__name__ == "OperationalError" and type(sa_refused).__module__ == "sqlalchemy.exc"
    for exc in (pg_refused, my_refused, sa_refused, redis_refused, StoreUnavailableError("store 'x' is unreachable"),
                ConnectionRefusedError()):
        assert transient(exc), repr(exc)
        try:
            raise RuntimeError("reading the slot failed") from exc
        except RuntimeError as wrapped:
            assert transient(wrapped), f"wrapped {exc!r}"
    assert transient(pymysql.err.OperationalError(2013, "Lost connection to server during query"))
    assert transient(pymysql.err.InterfaceError(0, ""))


def test_constraint_data_and_statement_errors_are_not_transient() -> None:
    url = pg_url("test")
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as c:
        c.execute("CREATE TEMP TABLE tr (id int PRIMARY KEY, n int CHECK (n > 0))")
        c.execute("INSERT INTO tr VALUES (1, 1)")
        duplicate = _raised(lambda: c.execute("INSERT INTO tr VALUES (1, 1)"))
        check = _raised(lambda: c.execute("INSERT INTO tr VALUES (2, -1)"))
        bad_value = _raised(lambda: c.execute("SELECT 'x'::int"))
        unknown = _raised(lambda: c.execute("SELECT nope FROM tr"))
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE tr2 (id int PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO tr2 VALUES (1)"))
        sa_duplicate = _raised(lambda: conn.execute(sa.text("INSERT INTO tr2 VALUES (1)")))
    engine.dispose()
    for exc in (duplicate, check, bad_value, unknown, sa_duplicate,
                # PyMySQL raises OperationalError for unmapped server errors: unknown column, denied, check
                pymysql.err.OperationalError(1054, "Unknown column 'x' in 'field list'"),
                pymysql.err.OperationalError(1142, "INSERT command denied to user"),
                pymysql.err.OperationalError(4025, "CONSTRAINT `c` failed"),
                pymysql.err.IntegrityError(1062, "Duplicate entry"),
                RowRejectedError("the target rejected a row"), StorePermissionError("permission denied"),
                ValueError("bad input")):
        assert not transient(exc), repr(exc)
    # a rejected row raised while handling a lost connection is still a rejected row
    try:
        try:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        except psycopg.OperationalError:
            raise duplicate from None
    except BaseException as exc:  # noqa: BLE001
        assert not transient(exc)


@pytest.mark.parametrize("sqlstate, expected", [("08006", True), ("57P01", True), ("40P01", True),
                                                ("55000", False), ("42703", False)])
def test_postgres_operational_errors_by_sqlstate(sqlstate: str, expected: bool) -> None:
    cls = psycopg.errors.lookup(sqlstate)
    assert transient(cls("x")) is expected
