"""Shared benchmark fixtures: the 1M-row ``orders`` table on PostgreSQL and MariaDB, timers, memory.

Builders are idempotent: a table whose stamp (row count + generator version, kept in the table comment)
matches is reused, so a benchmark run pays for data generation once. The data are deterministic
functions of ``id``, so the PostgreSQL and MariaDB copies hold the same values (the MariaDB copy is
loaded from the PostgreSQL one) and cross-engine verification benchmarks compare equal data.

Environment overrides: ``DWBENCH_PG_HOST/PORT/USER`` and ``DWBENCH_MY_HOST/PORT/USER`` (no passwords:
the benchmarks expect local trust auth).
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

PG_HOST = os.environ.get("DWBENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DWBENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("DWBENCH_PG_USER", "")
MY_HOST = os.environ.get("DWBENCH_MY_HOST", "127.0.0.1")
MY_PORT = int(os.environ.get("DWBENCH_MY_PORT", "3306"))
MY_USER = os.environ.get("DWBENCH_MY_USER", "root")

PG_SOURCE_DB = "dwbench_src"
PG_TARGET_DB = "dwbench_dst"
MY_DB = "dwbench"
TABLE = "orders"
DEFAULT_ROWS = 1_000_000
GENERATOR_VERSION = 1  # bump when the generated values change, so stale tables are rebuilt

PG_DDL = (
    f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, customer_id bigint NOT NULL, amount numeric(12,2), "
    "status text NOT NULL, note text, updated_at timestamptz NOT NULL, version bigint NOT NULL)"
)
MY_DDL = (
    f"CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL, amount DECIMAL(12,2), "
    "status TEXT NOT NULL, note TEXT, updated_at DATETIME(6) NOT NULL, version BIGINT NOT NULL) "
    "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
)
COLUMNS = ("id", "customer_id", "amount", "status", "note", "updated_at", "version")

# Deterministic values from id: ~64-char notes, some NULL notes and amounts, microsecond timestamps.
_PG_GENERATE = f"""
INSERT INTO {TABLE}
SELECT g,
       (g * 7919) % 100003,
       CASE WHEN g % 101 = 0 THEN NULL ELSE ((g * 37) % 10000000) / 100.0 END,
       (ARRAY['new','paid','shipped','delivered','cancelled','refunded'])[1 + g % 6],
       CASE WHEN g % 97 = 0 THEN NULL ELSE md5(g::text) || md5((g + 1)::text) END,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' + (g % 1000000) * interval '1 microsecond',
       1 + g % 5
FROM generate_series(1::bigint, %s::bigint) AS g
"""


def _stamp(rows: int) -> str:
    return f"dwbench rows={rows} gen={GENERATOR_VERSION}"


# -- URLs / connections --------------------------------------------------------------------------------


def pg_url(db: str) -> str:
    """SQLAlchemy URL (psycopg 3 driver) for a local benchmark database."""
    user = f"{PG_USER}@" if PG_USER else ""
    return f"postgresql+psycopg://{user}{PG_HOST}:{PG_PORT}/{db}"


def pg_conninfo(db: str) -> str:
    """libpq conninfo, for psycopg.connect and ``psql -d``."""
    user = f" user={PG_USER}" if PG_USER else ""
    return f"host={PG_HOST} port={PG_PORT} dbname={db}{user}"


def mysql_url(db: str = MY_DB) -> str:
    """mysqlclient when installed (``pip install -e '.[mysqlclient]'``: the figures in RESULTS.md), else PyMySQL."""
    from dualwrite.config import normalise_url

    return normalise_url(f"mysql://{MY_USER}@{MY_HOST}:{MY_PORT}/{db}")


def mysql_cli_args(db: str = MY_DB) -> list[str]:
    """Arguments for the ``mariadb`` command-line client reaching the benchmark database."""
    return ["-h", MY_HOST, "-P", str(MY_PORT), "-u", MY_USER, db]


def _pg_connect(db: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(pg_conninfo(db), autocommit=True, options="-c TimeZone=UTC")


def _my_connect(db: str | None = None, *, local_infile: bool = False):  # type: ignore[no-untyped-def]
    from dualwrite.config import mysql_driver

    if mysql_driver() == "mysqldb":
        import MySQLdb as driver
    else:
        import pymysql as driver  # type: ignore[no-redef]

    kwargs: dict[str, object] = {"host": MY_HOST, "port": MY_PORT, "user": MY_USER, "charset": "utf8mb4",
                                 "autocommit": True, "init_command": "SET time_zone = '+00:00'"}
    if db:
        kwargs["database"] = db
    if local_infile:
        kwargs["local_infile"] = 1
    return driver.connect(**kwargs)


def _pg_ensure_database(db: str) -> None:
    with _pg_connect("postgres") as c:
        if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
            c.execute(f'CREATE DATABASE "{db}"')


def _pg_table_stamp(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (TABLE,)).fetchone()
    return None if row is None else (str(row[0]) if row[0] is not None else None)


# -- builders ------------------------------------------------------------------------------------------


def ensure_pg_source(rows: int = DEFAULT_ROWS) -> str:
    """The ``orders`` table with ``rows`` rows in ``dwbench_src``; reused when already built. Returns URL."""
    _pg_ensure_database(PG_SOURCE_DB)
    with _pg_connect(PG_SOURCE_DB) as c:
        if _pg_table_stamp(c) == _stamp(rows):
            return pg_url(PG_SOURCE_DB)
        c.execute(f"DROP TABLE IF EXISTS {TABLE}")
        c.execute(PG_DDL.replace("PRIMARY KEY,", ",", 1))  # load first, index after: faster
        c.execute(_PG_GENERATE.replace("%s", str(int(rows))))
        c.execute(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
        c.execute(f"VACUUM ANALYZE {TABLE}")
        c.execute(f"COMMENT ON TABLE {TABLE} IS '{_stamp(rows)}'")
    return pg_url(PG_SOURCE_DB)


def fresh_pg_target(*, create_table: bool = True) -> str:
    """``dwbench_dst`` with an empty ``orders`` table (same DDL as the source), or none. Returns URL."""
    _pg_ensure_database(PG_TARGET_DB)
    with _pg_connect(PG_TARGET_DB) as c:
        c.execute(f"DROP TABLE IF EXISTS {TABLE}")
        if create_table:
            c.execute(PG_DDL)
    return pg_url(PG_TARGET_DB)


def ensure_pg_target_copy(rows: int = DEFAULT_ROWS) -> str:
    """``dwbench_dst.orders`` equal to the source (for verification benchmarks); reused when stamped."""
    ensure_pg_source(rows)
    _pg_ensure_database(PG_TARGET_DB)
    with _pg_connect(PG_TARGET_DB) as dst:
        if _pg_table_stamp(dst) == _stamp(rows):
            return pg_url(PG_TARGET_DB)
    fresh_pg_target()
    with _pg_connect(PG_SOURCE_DB) as src, _pg_connect(PG_TARGET_DB) as dst:
        cur_src = src.cursor()
        cur_dst = dst.cursor()
        with cur_src.copy(f"COPY {TABLE} TO STDOUT (FORMAT binary)") as out, \
                cur_dst.copy(f"COPY {TABLE} FROM STDIN (FORMAT binary)") as inp:
            for block in out:
                inp.write(block)
        dst.execute(f"VACUUM ANALYZE {TABLE}")
        dst.execute(f"COMMENT ON TABLE {TABLE} IS '{_stamp(rows)}'")
    return pg_url(PG_TARGET_DB)


def ensure_mariadb_source(rows: int = DEFAULT_ROWS) -> str:
    """The same ``orders`` data in MariaDB database ``dwbench`` (loaded from the PostgreSQL source)."""
    ensure_pg_source(rows)
    admin = _my_connect()
    try:
        cur = admin.cursor()
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{MY_DB}` CHARACTER SET utf8mb4")
        cur.execute("SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_NAME = %s", (MY_DB, TABLE))
        found = cur.fetchone()
        if found is not None and found[0] == _stamp(rows):
            return mysql_url(MY_DB)
    finally:
        admin.close()
    with tempfile.TemporaryDirectory(prefix="dwbench") as tmp:
        path = Path(tmp) / "orders.tsv"
        with _pg_connect(PG_SOURCE_DB) as src, path.open("wb") as fh:
            # PostgreSQL text COPY escapes (\t, \n, \\, \N) are the ones LOAD DATA reads by default.
            sql = (f"COPY (SELECT id, customer_id, amount, status, note, "
                   f"to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), version "
                   f"FROM {TABLE} ORDER BY id) TO STDOUT")
            with src.cursor().copy(sql) as out:
                for block in out:
                    fh.write(block)
        conn = _my_connect(MY_DB, local_infile=True)
        try:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
            cur.execute(MY_DDL)
            cur.execute("SET unique_checks = 0")
            cur.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE {TABLE} CHARACTER SET utf8mb4", (str(path),))
            cur.execute(f"ALTER TABLE {TABLE} COMMENT = '{_stamp(rows)}'")
            cur.execute(f"ANALYZE TABLE {TABLE}")
            cur.fetchall()
        finally:
            conn.close()
    return mysql_url(MY_DB)


# -- measuring -----------------------------------------------------------------------------------------


@dataclass
class Timer:
    """Wall-clock timings by label; ``with timer("x"):`` adds one sample to ``samples["x"]``."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.samples.setdefault(label, []).append(time.perf_counter() - start)

    def best(self, label: str) -> float:
        return min(self.samples[label])

    def last(self, label: str) -> float:
        return self.samples[label][-1]

    def spread(self, label: str) -> str:
        xs = sorted(self.samples[label])
        return f"best {xs[0]:.2f}s median {xs[len(xs) // 2]:.2f}s worst {xs[-1]:.2f}s (n={len(xs)})"


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5), so a later reading covers one phase only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (since start or the last :func:`reset_peak_rss`)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":  # build everything once: python bench/common.py [rows]
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ROWS
    with timed() as t:
        ensure_pg_source(n)
    print(f"pg source ready in {t[0]:.1f}s")
    with timed() as t:
        ensure_mariadb_source(n)
    print(f"mariadb source ready in {t[0]:.1f}s")
    with timed() as t:
        ensure_pg_target_copy(n)
    print(f"pg target copy ready in {t[0]:.1f}s")
