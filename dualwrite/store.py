"""Stores: a named database reached through SQLAlchemy 2, with what the data path needs to know of it.

The hot paths (copy, mirror, verify) talk to the DBAPI connection directly, because SQLAlchemy's
per-row machinery costs more than the databases do at a million rows; SQLAlchemy still owns engines,
pooling and reflection. Every session runs in UTC so timestamps mean the same on every engine.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoSuchTableError, OperationalError, SQLAlchemyError

from dualwrite.config import MYSQL_DRIVER_HINT, StoreRef, redact
from dualwrite.errors import RowRejectedError, StoreError, StoreUnavailableError, is_row_rejected


class Dialect(StrEnum):
    POSTGRESQL = "postgresql"
    MYSQL = "mysql"
    SQLITE = "sqlite"


class Kind(StrEnum):
    """What a column holds, independent of the engine: the basis of type checks and canonical hashing."""

    INT = "int"
    BOOL = "bool"
    DECIMAL = "decimal"
    FLOAT = "float"
    TEXT = "text"
    BYTES = "bytes"
    DATE = "date"
    TIME = "time"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    JSON = "json"
    UUID = "uuid"
    OTHER = "other"


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    kind: Kind
    sql_type: str  # the engine's own spelling, usable in a CAST on that engine
    nullable: bool
    has_default: bool
    max_length: int | None = None
    precision: int | None = None
    scale: int | None = None
    collation: str | None = None


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: dict[str, ColumnInfo]
    primary_key: list[str]
    unique_keys: list[list[str]] = field(default_factory=list)

    def column(self, name: str) -> ColumnInfo:
        return self.columns[name]


def _kind_of(coltype: Any, dialect: Dialect) -> Kind:
    t = coltype
    name = type(t).__name__.upper()
    if isinstance(t, sa.Boolean) or name == "BOOLEAN":
        return Kind.BOOL
    if dialect is Dialect.MYSQL and name == "TINYINT" and getattr(t, "display_width", None) == 1:
        return Kind.BOOL
    if isinstance(t, sa.Integer):
        return Kind.INT
    if isinstance(t, sa.Float):
        return Kind.FLOAT
    if isinstance(t, sa.Numeric):
        if name in ("DOUBLE", "DOUBLE_PRECISION", "REAL", "FLOAT"):
            return Kind.FLOAT
        return Kind.DECIMAL
    if isinstance(t, sa.Uuid) or name == "UUID":
        return Kind.UUID
    if isinstance(t, sa.JSON) or name in ("JSON", "JSONB"):
        return Kind.JSON
    if isinstance(t, sa.DateTime):
        return Kind.TIMESTAMPTZ if getattr(t, "timezone", False) else Kind.TIMESTAMP
    if isinstance(t, sa.Date):
        return Kind.DATE
    if isinstance(t, sa.Time):
        return Kind.TIME
    # SQLAlchemy has no public base of all its binary types (BINARY, VARBINARY, MySQL's TINY/MEDIUM/LONGBLOB)
    binary = sa.types._Binary  # noqa: SLF001
    if isinstance(t, sa.LargeBinary | binary) or name in ("BYTEA", "BLOB", "VARBINARY", "BINARY"):
        return Kind.BYTES
    if isinstance(t, sa.String | sa.Enum):
        return Kind.TEXT
    return Kind.OTHER


class Store:
    """One database, named as in the spec. Holds the only copy of the URL outside the resolver."""

    def __init__(self, ref: StoreRef, *, pool_size: int = 5, pre_ping: bool = True) -> None:
        """``pre_ping=False`` saves a round trip per checkout (the adapter's secondary-write pool uses it)."""
        self.ref = ref
        self.name = ref.name
        url = sa.make_url(ref.url)
        backend = url.get_backend_name()
        if backend in ("postgresql", "postgres"):
            self.dialect = Dialect.POSTGRESQL
        elif backend in ("mysql", "mariadb"):
            self.dialect = Dialect.MYSQL
        elif backend == "sqlite":
            self.dialect = Dialect.SQLITE
        else:
            raise StoreError(f"store {ref.name!r}: unsupported database {backend!r} (postgresql, mysql, sqlite)")
        kwargs: dict[str, Any] = {}
        if self.dialect is Dialect.MYSQL:
            kwargs["connect_args"] = _mysql_connect_args(ref.name, url.get_driver_name())
        if self.dialect is Dialect.POSTGRESQL:
            kwargs["connect_args"] = {"options": "-c TimeZone=UTC"}
        if self.dialect is Dialect.SQLITE:
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["pool_pre_ping"] = pre_ping
        self.engine: Engine = sa.create_engine(url, **kwargs)
        if self.dialect is Dialect.SQLITE:
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
        self._tables: dict[str, TableInfo] = {}
        self._collations: dict[tuple[str, str], bool] = {}

    def __repr__(self) -> str:
        return f"Store({self.name!r}, {self.dialect.value})"

    def __str__(self) -> str:
        return f"{self.name} ({self.dialect.value})"

    @property
    def paramstyle(self) -> str:
        return "?" if self.dialect is Dialect.SQLITE else "%s"

    def quote(self, ident: str) -> str:
        """Quote a possibly schema-qualified identifier for this engine."""
        q = "`" if self.dialect is Dialect.MYSQL else '"'
        return ".".join(q + part.replace(q, q + q) + q for part in ident.split("."))

    # -- connections ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A raw DBAPI connection in UTC, not autocommitting; returned to the pool afterwards."""
        try:
            proxy = self.engine.raw_connection()
        except OperationalError as exc:
            raise StoreUnavailableError(f"store {self.name!r} is unreachable: {redact(str(exc.orig))}") from None
        except SQLAlchemyError as exc:
            raise StoreError(f"store {self.name!r}: {redact(str(exc))}") from None
        except self.engine.dialect.loaded_dbapi.OperationalError as exc:
            # raw_connection() lets the driver's own connect error through unwrapped (SQLAlchemy 2.1)
            raise StoreUnavailableError(f"store {self.name!r} is unreachable: {redact(str(exc))}") from None
        dbapi: Any = proxy.driver_connection
        try:
            yield dbapi
        except BaseException:
            with contextlib.suppress(Exception):
                dbapi.rollback()
            raise
        finally:
            proxy.close()

    def dispose(self) -> None:
        self.engine.dispose()

    @functools.cached_property
    def is_mariadb(self) -> bool:
        """MariaDB rather than MySQL (asked once): GTIDs, sequences and trigger DDL differ between them."""
        if self.dialect is not Dialect.MYSQL:
            return False
        with self.connect() as conn:
            cur = conn.cursor()
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0]).lower()
            cur.close()
            conn.rollback()
        return "mariadb" in version

    # -- reflection -------------------------------------------------------------------------------------

    def table_names(self) -> set[str]:
        insp = sa.inspect(self.engine)
        return set(insp.get_table_names())

    def describe(self, table: str, *, refresh: bool = False) -> TableInfo:
        """Reflect a table (cached). Raises NoSuchTableError when it does not exist."""
        if not refresh and table in self._tables:
            return self._tables[table]
        schema, _, name = table.rpartition(".")
        try:
            insp = sa.inspect(self.engine)
            cols = insp.get_columns(name, schema=schema or None)
            pk = insp.get_pk_constraint(name, schema=schema or None).get("constrained_columns") or []
            uniques: list[list[str]] = [[str(c) for c in u["column_names"]]
                                        for u in insp.get_unique_constraints(name, schema=schema or None)]
            uniques += [[str(c) for c in i["column_names"]] for i in insp.get_indexes(name, schema=schema or None)
                        if i.get("unique") and all(c is not None for c in i["column_names"])]
        except NoSuchTableError:
            raise
        except OperationalError as exc:
            raise StoreUnavailableError(f"store {self.name!r} is unreachable: {redact(str(exc.orig))}") from None
        pg_types = self._pg_format_types(table) if self.dialect is Dialect.POSTGRESQL else {}
        sqlite_types = self._sqlite_declared_types(table) if self.dialect is Dialect.SQLITE else {}
        columns: dict[str, ColumnInfo] = {}
        for c in cols:
            t = c["type"]
            kind = _kind_of(t, self.dialect)
            if self.dialect is Dialect.POSTGRESQL:
                sql_type = pg_types.get(c["name"], "text")
                if sql_type == "jsonb" or sql_type == "json":
                    kind = Kind.JSON
            else:
                try:
                    sql_type = t.compile(dialect=self.engine.dialect)
                except Exception:  # noqa: BLE001 - exotic types: keep the name
                    sql_type = type(t).__name__
            if self.dialect is Dialect.MYSQL and kind is Kind.TEXT and self._mysql_is_json(table, c["name"]):
                kind = Kind.JSON
            if self.dialect is Dialect.SQLITE and sqlite_types.get(c["name"]) in ("UUID", "GUID"):
                # SQLite has no UUID type; the declared name is all that says what the text holds
                kind, sql_type = Kind.UUID, "UUID"
            columns[c["name"]] = ColumnInfo(
                name=c["name"], kind=kind, sql_type=sql_type, nullable=bool(c.get("nullable", True)),
                has_default=c.get("default") is not None or bool(c.get("autoincrement") is True),
                max_length=getattr(t, "length", None), precision=getattr(t, "precision", None),
                scale=getattr(t, "scale", None), collation=getattr(t, "collation", None),
            )
        if self.dialect is Dialect.SQLITE and not pk:
            pk = []
        info = TableInfo(name=table, columns=columns, primary_key=list(pk), unique_keys=uniques)
        self._tables[table] = info
        return info

    def binary_collation(self, table: str, column: str) -> bool:
        """Does this text column already order bytewise (so no COLLATE is needed and indexes serve)?"""
        cache_key = (table, column)
        if cache_key in self._collations:
            return self._collations[cache_key]
        result = True
        if self.dialect is Dialect.POSTGRESQL:
            with self.connect() as conn:
                row = conn.execute(
                    "SELECT coalesce(nullif(c.collname, 'default'), d.datcollate) FROM pg_attribute a "
                    "LEFT JOIN pg_collation c ON c.oid = a.attcollation "
                    "JOIN pg_database d ON d.datname = current_database() "
                    "WHERE a.attrelid = %s::regclass AND a.attname = %s", (self.quote(table), column),
                ).fetchone()
                conn.rollback()
            name = (row[0] if row else "C") or "C"
            result = name in ("C", "POSIX", "ucs_basic") or name.lower().startswith("c.")
        elif self.dialect is Dialect.MYSQL:
            schema, _, name = table.rpartition(".")
            with self.connect() as conn:
                cur = conn.cursor()
                cur.execute("SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                            "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND COLUMN_NAME = %s",
                            (schema or None, name, column))
                row = cur.fetchone()
                conn.rollback()
            result = bool(row) and (row[0] is None or str(row[0]).endswith("_bin"))
        self._collations[cache_key] = result
        return result

    def _pg_format_types(self, table: str) -> dict[str, str]:
        with self.connect() as conn:
            cur = conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                (self.quote(table),),
            )
            rows = cur.fetchall()
            conn.rollback()
        return {r[0]: r[1] for r in rows}

    def _sqlite_declared_types(self, table: str) -> dict[str, str]:
        with self.connect() as conn:
            cur = conn.execute(f"PRAGMA table_info({self.quote(table)})")
            rows = cur.fetchall()
            conn.rollback()
        return {r[1]: str(r[2]).upper() for r in rows}

    def _mysql_is_json(self, table: str, column: str) -> bool:
        """MariaDB stores JSON as LONGTEXT with a json_valid check; find that check."""
        schema, _, name = table.rpartition(".")
        with self.connect() as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = "
                "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND CHECK_CLAUSE LIKE %s",
                (schema or None, name, f"%json_valid(`{column}`)%"),
            )
            (n,) = cur.fetchone()
            conn.rollback()
        return bool(n)


_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_TRANSIENT_MYSQL_CODES = {1205, 1213}  # lock wait timeout, deadlock


def is_transient(exc: BaseException) -> bool:
    """A conflict between concurrent transactions that retrying the whole transaction resolves."""
    if getattr(exc, "sqlstate", None) in _TRANSIENT_SQLSTATES:
        return True
    args = getattr(exc, "args", ())
    if is_mysql_error(exc) and args and args[0] in _TRANSIENT_MYSQL_CODES:
        return True
    return "database is locked" in str(exc) and type(exc).__module__.startswith("sqlite3")


def is_unique_violation(exc: BaseException) -> bool:
    """Duplicate key on insert (PostgreSQL 23505, MySQL 1062, SQLite UNIQUE constraint)."""
    if getattr(exc, "sqlstate", None) == "23505":
        return True
    args = getattr(exc, "args", ())
    if is_mysql_error(exc) and args and args[0] == 1062:
        return True
    return type(exc).__name__ == "IntegrityError" and "UNIQUE constraint failed" in str(exc)


def without_row_values(exc: BaseException, what: str) -> BaseException:
    """A data or integrity error with the row values taken out of its message.

    Drivers quote the offending value (``invalid input syntax for type integer: "..."``, ``Duplicate
    entry '...'``, COPY's line context); those messages end up in logs and Temporal history, where row
    data must never go. Other errors are returned unchanged.
    """
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    is_mysql_row_error = is_mysql_error(exc) and type(exc).__name__ in (
        "DataError", "IntegrityError")
    is_sqlite_row_error = type(exc).__module__.startswith("sqlite3") and type(exc).__name__ in (
        "DataError", "IntegrityError")
    if sqlstate[:2] in ("22", "23") or is_mysql_row_error or is_sqlite_row_error:
        code = sqlstate or (str(exc.args[0]) if getattr(exc, "args", None) else "?")
        constraint = getattr(getattr(exc, "diag", None), "constraint_name", None)
        on = f" on constraint {constraint}" if constraint else ""
        if not is_row_rejected(exc):  # a foreign key: the referenced row may not be copied yet, retry
            return StoreError(f"{what}: the target rejected a row ({type(exc).__name__}{on}, code {code}); "
                              "values are not shown")
        # permanent: the same rows are rejected the same way on every retry (an operator must act)
        return RowRejectedError(f"{what}: the target rejected a row ({type(exc).__name__}{on}, code {code}); "
                                "values are not shown")
    return exc


def _mysql_connect_args(store: str, driver: str) -> dict[str, Any]:
    """UTC, READ COMMITTED and utf8mb4 on either driver; a clear error when the URL's driver is missing."""
    module = {"mysqldb": "MySQLdb", "pymysql": "pymysql"}.get(driver)
    if module is None:
        raise StoreError(f"store {store!r}: unsupported MySQL driver {driver!r} (mysqldb or pymysql)")
    try:
        constants = importlib.import_module(f"{module}.constants.CLIENT")
    except ImportError:
        raise StoreError(f"store {store!r}: the URL asks for the {module} driver, which is not installed; "
                         f"{MYSQL_DRIVER_HINT} (or write mysql:// and dualwrite picks the one installed)") from None
    args: dict[str, Any] = {
        "client_flag": constants.MULTI_STATEMENTS, "local_infile": 1, "charset": "utf8mb4",
        "init_command": "SET time_zone = '+00:00', SESSION tx_isolation = 'READ-COMMITTED'"}
    if module == "pymysql":
        args["conv"] = _pymysql_conversions()
    return args


def _pymysql_conversions() -> dict[Any, Any]:
    """PyMySQL's converters, reading what is no date or time (a lax MariaDB's '0000-00-00') as NULL, as
    mysqlclient does: PyMySQL hands such values back as the string sent, which no target can store."""
    from pymysql import converters  # noqa: PLC0415 - the default driver, only for its stores

    conv: dict[Any, Any] = dict(converters.conversions)

    def or_none(parse: Any) -> Any:
        def convert(value: Any) -> Any:
            out = parse(value)
            return None if isinstance(out, str | bytes) else out
        return convert

    for field_type, parse in ((10, converters.convert_date), (12, converters.convert_datetime),
                              (7, converters.convert_datetime), (11, converters.convert_timedelta)):
        conv[field_type] = or_none(parse)  # MySQL's numbers: DATE, DATETIME, TIMESTAMP, TIME
    return conv


def is_mysql_error(exc: BaseException) -> bool:
    """An error raised by a MySQL/MariaDB driver (mysqlclient or PyMySQL): their ``args[0]`` is the code."""
    return type(exc).__module__.startswith(("MySQLdb", "pymysql"))


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside one writer: the demo's application keeps writing during backfill.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def open_store(ref: StoreRef, *, pool_size: int = 5) -> Store:
    return Store(ref, pool_size=pool_size)
