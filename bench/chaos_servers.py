"""Where a chaos run's databases live: the machine's servers, or private ones that can capture.

Strategy ``cdc`` reads the database's own log, which needs ``wal_level=logical`` on PostgreSQL and a ROW
binlog on MariaDB. The machine's shared servers have neither, and nobody may restart them, so a ``cdc`` run
starts its own instances (:mod:`dualwrite.cdc.servers`, the same servers the cdc tests use) under a
directory of its own, and stops them when it ends; a watcher process stops them too if the run is killed.
Every other strategy runs on the machine's servers, as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualwrite.cdc import servers
from dualwrite.config import normalise_url

__all__ = ["Endpoint", "ServerSet", "capture_servers", "machine_servers"]


@dataclass(frozen=True)
class Endpoint:
    """One database server a run creates its databases on."""

    host: str
    port: int
    user: str


@dataclass
class ServerSet:
    """The PostgreSQL and MariaDB servers of one run; ``root`` is set when they are the run's own."""

    pg: Endpoint
    my: Endpoint | None
    root: Path | None = None
    owned_root: bool = False

    @property
    def private(self) -> bool:
        return self.root is not None

    def pg_admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=self.pg.host, port=self.pg.port, user=self.pg.user, dbname="postgres",
                             autocommit=True) as c:
            c.execute(sql)

    def my_admin(self, sql: str) -> None:
        if self.my is None:
            raise RuntimeError("this run started no MariaDB server")
        conn = _my_connect(self.my)
        try:
            conn.cursor().execute(sql)
        finally:
            conn.close()

    def pg_url(self, db: str) -> str:
        return f"postgresql+psycopg://{self.pg.user}@{self.pg.host}:{self.pg.port}/{db}"

    def my_url(self, db: str) -> str:
        if self.my is None:
            raise RuntimeError("this run started no MariaDB server")
        return normalise_url(f"mysql://{self.my.user}@{self.my.host}:{self.my.port}/{db}")  # mysqlclient if any

    def close(self, *, keep: bool = False) -> None:
        """Stop the run's own servers (and remove their directory when the run made it)."""
        if self.root is None or keep:
            return
        servers.stop_postgres(self.root)
        servers.stop_mariadb(self.root)
        if self.owned_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _my_connect(ep: Endpoint) -> Any:
    from dualwrite.config import mysql_driver

    if mysql_driver() == "mysqldb":
        import MySQLdb as driver
    else:
        import pymysql as driver
    return driver.connect(host=ep.host, port=ep.port, user=ep.user, charset="utf8mb4", autocommit=True)


def machine_servers() -> ServerSet:
    """The machine's shared servers (PostgreSQL 5432 and MariaDB 3306, as the bench's other runs use)."""
    return ServerSet(Endpoint("127.0.0.1", 5432, "root"), Endpoint("127.0.0.1", 3306, "root"))


def capture_servers(pair: str, root: Path | None = None) -> ServerSet:
    """Private servers that can capture: a PostgreSQL with ``wal_level=logical`` always (the new store, and
    the old one of ``pg-pg``), a MariaDB with a ROW binlog for ``mariadb-pg``. ``root``: reuse (or create)
    that directory; default a fresh temporary one, removed at :meth:`ServerSet.close`."""
    owned = root is None
    # short: the PostgreSQL socket path must stay under ~100 characters
    base = Path(tempfile.mkdtemp(prefix="dwchaos-srv-")) if root is None else root
    base.mkdir(parents=True, exist_ok=True)
    servers.watch(base, os.getpid(), remove=owned)  # a run killed by a timeout still stops its servers
    out = ServerSet(Endpoint("127.0.0.1", 0, "postgres"), None, base, owned)
    try:
        pg = servers.start_postgres(base)
        out.pg = Endpoint(pg.host, pg.port, pg.user)
        if pair == "mariadb-pg":
            my = servers.start_mariadb(base)
            out.my = Endpoint(my.host, my.port, my.user)
    except Exception:
        with contextlib.suppress(Exception):
            out.close()
        raise
    return out
