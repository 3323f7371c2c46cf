"""Private PostgreSQL (``wal_level=logical``) and MariaDB (ROW binlog) servers for the ``cdc`` tests.

The machine's own servers cannot capture (``wal_level=replica``, no binlog) and must not be restarted, so
the session starts its own instances on free ports (:mod:`dualwrite.cdc.servers`), only when a cdc test
asks for them, and stops them at the end. A server that cannot start is a test failure, never a skip.
The stores are registered with the shared worker's resolver as ``cdcpgold``, ``cdcpgnew`` and
``cdcmyold``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dualwrite.cdc import pg, servers
from dualwrite.config import StoreRef, env_var_for
from dualwrite.store import Store


@pytest.fixture(scope="session")
def cdc_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # short: the PostgreSQL socket path must stay under ~100 characters
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="dwcdc-"))
    servers.watch(root, os.getpid())  # a session killed by a timeout still stops its servers
    yield root
    servers.stop_postgres(root)
    servers.stop_mariadb(root)
    import shutil

    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def cdc_pg_server(cdc_root: Path) -> servers.Server:
    try:
        return servers.start_postgres(cdc_root)
    except Exception as exc:  # noqa: BLE001 - a missing capture server fails the test, in CI and here
        pytest.fail(f"the private PostgreSQL with wal_level=logical could not start: {exc}")


@pytest.fixture(scope="session")
def cdc_my_server(cdc_root: Path) -> servers.Server:
    try:
        return servers.start_mariadb(cdc_root)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the private MariaDB with a ROW binlog could not start: {exc}")


_SESSION = secrets.token_hex(3)


def _pg_db(server: servers.Server, label: str) -> str:
    name = f"cdc_{_SESSION}_{label}"
    with psycopg.connect(host=server.host, port=server.port, user=server.user, dbname="postgres",
                         autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return name


def _my_db(server: servers.Server, label: str) -> str:
    from conftest import mysql_connect  # whichever driver is installed (PyMySQL by default)

    name = f"cdc_{_SESSION}_{label}"
    c = mysql_connect(host=server.host, port=server.port, user=server.user, autocommit=True)
    cur = c.cursor()
    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    c.close()
    return name


def _register(resolver: Any, databases: Any, name: str, url: str) -> Store:
    # the shared worker's resolver learns the private stores (its environment is a copy made at start)
    resolver._environ[env_var_for(name)] = url
    store = Store(StoreRef(name, url))
    databases.stores.append(store)
    return store


@pytest.fixture(scope="session")
def cdc_pg_old(cdc_pg_server: servers.Server, dw_resolver: Any, databases: Any) -> Store:
    return _register(dw_resolver, databases, "cdcpgold", cdc_pg_server.url(_pg_db(cdc_pg_server, "old")))


@pytest.fixture(scope="session")
def cdc_pg_new(cdc_pg_server: servers.Server, dw_resolver: Any, databases: Any) -> Store:
    return _register(dw_resolver, databases, "cdcpgnew", cdc_pg_server.url(_pg_db(cdc_pg_server, "new")))


@pytest.fixture(scope="session")
def cdc_my_old(cdc_my_server: servers.Server, dw_resolver: Any, databases: Any) -> Store:
    return _register(dw_resolver, databases, "cdcmyold", cdc_my_server.url(_my_db(cdc_my_server, "old")))


def hold_slot(store: Store, migration: str) -> subprocess.Popen[bytes]:
    """A session that holds the slot active, as a running capture activity does."""
    slot, pub = pg.capture_names(migration, store.name)
    url = store.engine.url
    exe = shutil.which("pg_recvlogical")
    assert exe, "pg_recvlogical (postgresql-client) is needed"
    proc = subprocess.Popen([exe, "-h", str(url.host), "-p", str(url.port), "-U", str(url.username),
                             "-d", str(url.database), "-S", slot, "--start", "-o", "proto_version=1",
                             "-o", f"publication_names={pub}", "-f", "/dev/null", "--no-loop"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (pg.lag(store, migration) or (0, False))[1]:
        assert time.monotonic() < deadline and proc.poll() is None, "pg_recvlogical did not take the slot"
        time.sleep(0.05)
    return proc
