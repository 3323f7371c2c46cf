"""One store opened for looking only: reflection, privilege catalogs and EXPLAIN, never a write.

SQLite files are opened read-only after checking that they exist (connecting must not create one);
PostgreSQL and MariaDB/MySQL statements run in a read-only transaction that is rolled back."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import NoSuchTableError

from dualwrite import store as store_module
from dualwrite.config import StoreRef, redact
from dualwrite.errors import DualwriteError

#: how long a preflight waits for a server before calling it unreachable
from dualwrite.preflight._redis import RedisLook
from dualwrite.preflight._report import _ROLE_LABEL
from dualwrite.store import Dialect, Store, TableInfo
from dualwrite.stores import is_redis_url

#: how long a preflight waits for a server before calling it unreachable
CONNECT_TIMEOUT_S = 10
#: tables this small (or with no catalog estimate) are counted exactly, up to this many rows
EXACT_COUNT_LIMIT = 100_000

_MYSQL_DENIED = {1142, 1143, 1044, 1045}  # table / column / database access denied




def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _error_text(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = _one_line(redact(str(orig if orig is not None else exc)))
    return re.sub(r"^store '[^']*' is unreachable: ", "", text)  # Store's wording, wrong once connected


def _access_denied(exc: BaseException) -> bool:
    """Was this (or the driver error it replaced) the server refusing access?"""
    for e in (exc, exc.__context__, exc.__cause__):
        orig = getattr(e, "orig", e)
        if orig is None:
            continue
        if getattr(orig, "sqlstate", None) == "42501" or _mysql_code(orig) in _MYSQL_DENIED:
            return True
    return False


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return redact(text[0]) if text else type(exc).__name__


def _mysql_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


#: deadlock, lock wait timeout: a live table's concurrent DDL (e.g. a relay installing its triggers) can
#: make a plan wait or deadlock; that says nothing about privileges, so the check is tried again
_MYSQL_TRANSIENT = {1205, 1213}
_EXPLAIN_ATTEMPTS = 4


def _explain(cur: Any, sql: str) -> BaseException | None:
    """Plan ``sql``; the error it ends with (None when it plans), past transient lock conflicts."""
    for attempt in range(_EXPLAIN_ATTEMPTS):
        try:
            cur.execute(sql)
            cur.fetchall()
            return None
        except Exception as exc:  # noqa: BLE001 - access denied is the answer we look for
            if _mysql_code(exc) not in _MYSQL_TRANSIENT or attempt == _EXPLAIN_ATTEMPTS - 1:
                return exc
            time.sleep(0.2 * (attempt + 1))
    return None


class _Probe:
    """A store opened to be looked at: reflection, privilege catalogs and EXPLAIN, never a write."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.roles: list[str] = []
        self.ref: StoreRef | None = None
        self.store: Store | None = None
        self.user: str | None = None
        self.error: str | None = None  # why it cannot be used (already reported once)
        self.secrets: list[str] = []
        self._table_names: list[str] | None = None
        self._facts: dict[str, Any] = {}
        self.redis: RedisLook | None = None  # a Redis store: no SQL, looked at by _redis.RedisLook

    @property
    def label(self) -> str:
        return f"store {self.name!r} ({', '.join(_ROLE_LABEL[r] for r in self.roles)})"

    @property
    def dialect(self) -> Dialect | None:
        return None if self.store is None else self.store.dialect

    def open(self, ref: StoreRef) -> None:
        """Connect once; on failure remember a clear, redacted reason in ``error``."""
        self.ref = ref
        shown = ref.redacted_url
        if is_redis_url(ref.url):
            self.redis = RedisLook(ref.name, ref.url)
            self.secrets += self.redis.secrets
            why = self.redis.open(CONNECT_TIMEOUT_S)
            if why:
                self.error = f"{why} ({shown})"
            return
        try:
            url = sa.make_url(ref.url)
        except Exception:  # noqa: BLE001 - the message would quote the URL; describe it instead
            self.error = "its URL is not a database URL (expected scheme://user:password@host:port/database)"
            return
        if url.password:
            self.secrets += [str(url.password), urllib.parse.quote(str(url.password), safe="")]
        try:
            url = self._looking_url(url)
        except ValueError as exc:
            self.error = f"{exc} ({shown})"
            return
        try:
            self.store = Store(StoreRef(ref.name, url.render_as_string(hide_password=False)), pool_size=1)
        except Exception as exc:  # noqa: BLE001 - unsupported scheme, missing driver: say which
            self.error = f"cannot be opened ({shown}): {_error_text(exc)}"
            return
        if self.store.dialect is Dialect.SQLITE:
            # Store switches SQLite files to WAL on connect: a write, and impossible on a read-only handle
            on_connect = store_module._sqlite_on_connect  # noqa: SLF001 - the hook Store installs; only undone here
            if sa.event.contains(self.store.engine, "connect", on_connect):
                sa.event.remove(self.store.engine, "connect", on_connect)
        try:
            self.user = self._whoami()
        except Exception as exc:  # noqa: BLE001 - any failure to talk to the server means unreachable
            self.error = f"cannot connect ({shown}): {_error_text(exc)}"

    def _looking_url(self, url: sa.URL) -> sa.URL:
        backend = url.get_backend_name()
        if backend == "sqlite":
            db = url.database or ""
            if not db or db == ":memory:" or url.query.get("mode") == "memory":
                raise ValueError("is an in-memory SQLite database: there is nothing to migrate and nothing lasts")
            if db.startswith("file:"):
                return url  # already a URI; the operator chose its mode
            path = Path(db)
            if not path.is_file():
                raise ValueError(f"SQLite file {path} does not exist (check never creates one)")
            return url.set(database="file:" + urllib.parse.quote(str(path.resolve())),
                           query={"mode": "ro", "uri": "true"})
        if "connect_timeout" not in url.query:
            url = url.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
        return url

    @contextlib.contextmanager
    def read_only(self) -> Iterator[Any]:
        """A cursor inside a read-only transaction, rolled back afterwards, whatever the statements."""
        assert self.store is not None
        with self.store.connect() as conn:
            cur = conn.cursor()
            try:
                if self.store.dialect is Dialect.POSTGRESQL:
                    cur.execute("SET TRANSACTION READ ONLY")
                    cur.execute("SET LOCAL statement_timeout = '30s'")
                elif self.store.dialect is Dialect.MYSQL:
                    conn.rollback()
                    cur.execute("START TRANSACTION READ ONLY")
                yield cur
            finally:
                with contextlib.suppress(Exception):
                    cur.close()
                conn.rollback()

    def _whoami(self) -> str | None:
        assert self.store is not None
        if self.store.dialect is Dialect.SQLITE:
            with self.read_only() as cur:
                cur.execute("SELECT sqlite_version()")
            return None
        with self.read_only() as cur:
            cur.execute("SELECT current_user" if self.store.dialect is Dialect.POSTGRESQL else "SELECT CURRENT_USER()")
            row = cur.fetchone()
        if not row:
            return None
        if self.store.dialect is Dialect.MYSQL:
            user, _, host = str(row[0]).rpartition("@")
            return f"'{user}'@'{host}'"  # as GRANT spells an account
        return str(row[0])

    def close(self) -> None:
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.dispose()

    # -- tables ---------------------------------------------------------------------------------------

    def describe(self, table: str, what: str = "table") -> tuple[TableInfo | None, str | None]:
        """The table's shape, or why it cannot be had (missing, with a guess at what was meant)."""
        assert self.store is not None
        try:
            return self.store.describe(table), None
        except NoSuchTableError:
            pass
        except (DualwriteError, sa.exc.SQLAlchemyError, OSError) as exc:
            if _access_denied(exc):
                return None, (f"{self.user} may not see table {table!r} in {self.label}: "
                              f"GRANT SELECT ON {table} TO {self.user}")
            return None, f"cannot read the definition of table {table!r} in {self.label}: {_error_text(exc)}"
        hint = ""
        with contextlib.suppress(Exception):
            if self._table_names is None:
                self._table_names = sorted(self.store.table_names())
            close = difflib.get_close_matches(table.rpartition(".")[2], self._table_names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        if self.store.dialect is Dialect.MYSQL:
            hint += " (or this account has no privilege on it: MySQL hides such tables)"
        return None, f"{what} {table!r} does not exist in {self.label}{hint}"

    def check_expr(self, table: str, expr: str, role: str = "old") -> str | None:
        """Does this store accept this expression over ``table``? Planned and run on zero rows, read-only.

        (Run without parameters, so a ``%`` in the expression reaches the server as written.)"""
        assert self.store is not None
        false = "0" if self.store.dialect is Dialect.SQLITE else "1 = 0"
        try:
            with self.read_only() as cur:
                cur.execute(f"SELECT ({expr}) FROM {self.store.quote(table)} WHERE {false}")
                cur.fetchall()
        except Exception as exc:  # noqa: BLE001 - whatever the engine says is the answer
            return f"the {role} store rejects this expression: {_first_line(exc)}"
        return None

    def row_estimate(self, table: str) -> tuple[int | None, str]:
        """A catalog estimate for big tables, an exact (bounded) count for small ones; never a full scan."""
        assert self.store is not None
        estimate: int | None = None
        schema, _, name = table.rpartition(".")
        try:
            with self.read_only() as cur:
                if self.store.dialect is Dialect.POSTGRESQL:
                    cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                                (self.store.quote(table),))
                    row = cur.fetchone()
                    estimate = int(row[0]) if row and row[0] is not None and row[0] >= 0 else None
                elif self.store.dialect is Dialect.MYSQL:
                    cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                                "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s", (schema or None, name))
                    row = cur.fetchone()
                    estimate = int(row[0]) if row and row[0] is not None else None
                if estimate is not None and estimate > EXACT_COUNT_LIMIT:
                    return estimate, "estimate"
                cur.execute(f"SELECT count(*) FROM (SELECT 1 FROM {self.store.quote(table)} "
                            f"LIMIT {EXACT_COUNT_LIMIT + 1}) AS n")
                row = cur.fetchone()
        except Exception:  # noqa: BLE001 - a summary nicety, never a problem of its own
            return estimate, "estimate" if estimate is not None else "unknown"
        count = int(row[0]) if row else 0
        return (EXACT_COUNT_LIMIT, "more_than") if count > EXACT_COUNT_LIMIT else (count, "exact")

    # -- privileges -----------------------------------------------------------------------------------

    def missing_privileges(self, table: str, reads: Sequence[str], writes: Sequence[str] | None) -> list[str]:
        """What this account cannot do to ``table`` that the migration needs, in words.

        ``reads`` are the columns read; ``writes`` (new store only) the columns written. Reading the
        source also means locking its rows: the mirror primitive reads them ``FOR UPDATE``.
        """
        assert self.store is not None
        try:
            if self.store.dialect is Dialect.POSTGRESQL:
                return self._pg_missing(table, reads, writes)
            if self.store.dialect is Dialect.MYSQL:
                return self._mysql_missing(table, reads, writes)
            return self._sqlite_missing(writes is not None)
        except Exception as exc:  # noqa: BLE001 - could not find out: say so rather than pass silently
            return [f"could not check privileges: {_error_text(exc)}"]

    def _pg_missing(self, table: str, reads: Sequence[str], writes: Sequence[str] | None) -> list[str]:
        assert self.store is not None
        qt = self.store.quote(table)
        wanted = [(c, "SELECT") for c in reads]
        for c in writes or []:
            wanted += [(c, "SELECT"), (c, "INSERT"), (c, "UPDATE")]
        wanted = list(dict.fromkeys(wanted))
        with self.read_only() as cur:
            cur.execute(
                "SELECT has_schema_privilege(c.relnamespace, 'USAGE'), n.nspname, row_security_active(c.oid), "
                "has_table_privilege(c.oid, 'DELETE'), has_any_column_privilege(c.oid, 'UPDATE'), "
                "has_database_privilege(current_database(), 'TEMP'), pg_is_in_recovery(), current_database() "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass", (qt,))
            usage, schema, rls, can_delete, can_lock, can_temp, standby, database = cur.fetchone()
            cur.execute("SELECT u.col, u.priv FROM unnest(%s::text[], %s::text[]) AS u(col, priv) "
                        "WHERE NOT has_column_privilege(%s::regclass, u.col, u.priv)",
                        ([c for c, _ in wanted], [p for _, p in wanted], qt))
            denied = [(str(c), str(p)) for c, p in cur.fetchall()]
        out: list[str] = []
        if not usage:
            out.append(f"no USAGE on schema {schema}: GRANT USAGE ON SCHEMA {schema} TO {self.user}")
        out += _denied_text(denied, reads, writes, table, self.user,
                            ["DELETE"] if writes is not None and not can_delete else [])
        if writes is None and not can_lock:
            out.append(f"{self.user} cannot lock rows of {table}: the mirror reads source rows FOR UPDATE, which "
                       f"PostgreSQL allows only with UPDATE privilege: GRANT UPDATE ON {table} TO {self.user}")
        if writes is not None:
            if not can_temp:
                out.append("cannot create temporary tables (the bulk write path stages rows in one): "
                           f"GRANT TEMPORARY ON DATABASE {database} TO {self.user}")
            if standby:
                out.append("the server is a read-only standby (pg_is_in_recovery): point the store at the primary")
        if rls:
            out.append(f"row-level security is active on {table} for {self.user}: it would see or change only "
                       "some rows; use a role with BYPASSRLS or the table owner")
        return out

    def _mysql_missing(self, table: str, reads: Sequence[str], writes: Sequence[str] | None) -> list[str]:
        assert self.store is not None
        q = self.store.quote
        qt = q(table)
        checks: list[tuple[str, str]] = []
        if reads:
            checks.append(("SELECT", f"EXPLAIN SELECT {', '.join(q(c) for c in reads)} FROM {qt} WHERE 1 = 0"))
            if writes is None:
                checks.append(("LOCK", f"EXPLAIN SELECT {', '.join(q(c) for c in reads)} FROM {qt} "
                                       "WHERE 1 = 0 FOR UPDATE"))
        if writes:
            cols = ", ".join(q(c) for c in writes)
            checks += [
                ("SELECT", f"EXPLAIN SELECT {cols} FROM {qt} WHERE 1 = 0"),
                ("INSERT", f"EXPLAIN INSERT INTO {qt} ({cols}) VALUES ({', '.join('NULL' for _ in writes)})"),
                ("UPDATE", f"EXPLAIN UPDATE {qt} SET {', '.join(f'{q(c)} = NULL' for c in writes)} WHERE 1 = 0"),
                ("DELETE", f"EXPLAIN DELETE FROM {qt} WHERE 1 = 0"),
            ]
        denied: list[str] = []
        other: list[str] = []
        # EXPLAIN plans a statement with the privileges of running it, and runs nothing. It cannot sit in a
        # READ ONLY transaction (the server refuses DML plans there), so it gets a plain one, rolled back.
        with self.store.connect() as conn:
            cur = conn.cursor()
            for priv, sql in dict.fromkeys(checks):
                exc = _explain(cur, sql)
                if exc is None:
                    continue
                if _mysql_code(exc) in _MYSQL_DENIED:
                    denied.append(priv)
                else:
                    other.append(f"{priv} check failed: {_first_line(exc)}")
            read_only = False
            if writes is not None:
                cur.execute("SELECT @@global.read_only")
                (flag,) = cur.fetchone()
                if int(flag or 0):
                    cur.execute("SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s "
                                "AND PRIVILEGE_TYPE IN ('SUPER', 'READ_ONLY ADMIN')", (self.user,))
                    read_only = not cur.fetchone()[0]
            cur.close()
            conn.rollback()
        out: list[str] = []
        out += _denied_text([], reads, writes, table, self.user,
                            [p for p in dict.fromkeys(denied) if p != "LOCK"])
        if "LOCK" in denied and "SELECT" not in denied:
            out.append(f"{self.user} cannot lock rows of {table}: the mirror reads source rows FOR UPDATE, and "
                       "this server wants UPDATE, DELETE or LOCK TABLES besides SELECT for that")
        if read_only:
            out.append("the server is read-only (read_only=ON) and this account may not bypass it: point the "
                       "store at the primary")
        return out + other

    def _sqlite_missing(self, write: bool) -> list[str]:
        assert self.store is not None
        db = self.store.engine.url.database or ""
        if not db.startswith("file:"):
            return []
        path = Path(urllib.parse.unquote(db.removeprefix("file:")))
        if not write:
            return [] if os.access(path, os.R_OK) else [f"cannot read the file {path}"]
        out = []
        if not os.access(path, os.R_OK | os.W_OK):
            out.append(f"cannot write the file {path}")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            out.append(f"cannot create files in {path.parent} (SQLite keeps its journal beside the database)")
        return out


def _denied_text(denied: list[tuple[str, str]], reads: Sequence[str], writes: Sequence[str] | None,
                 table: str, user: str | None, table_denied: Sequence[str] = ()) -> list[str]:
    """Say what is refused in as few sentences as possible, with the GRANT that fixes it.

    ``denied`` holds (column, privilege) refusals; a privilege refused on every column wanted is
    table-wide and joins ``table_denied`` (privileges that only exist table-wide, like DELETE).
    """
    wanted_cols = {"SELECT": list(dict.fromkeys([*reads, *(writes or [])])), "INSERT": list(writes or []),
                   "UPDATE": list(writes or [])}
    table_wide: list[str] = []
    partial: list[str] = []
    for priv in ("SELECT", "INSERT", "UPDATE"):
        cols = [c for c, p in denied if p == priv]
        if cols and set(cols) >= set(wanted_cols[priv]):
            table_wide.append(priv)
        elif cols:
            partial.append(f"{user} cannot {priv} column(s) {', '.join(cols)} of {table}: "
                           f"GRANT {priv} ({', '.join(cols)}) ON {table} TO {user}")
    table_wide += [p for p in table_denied if p not in table_wide]
    out: list[str] = []
    if table_wide:
        why = "the new store must take the migration's writes" if writes is not None else \
            "the old store must be readable"
        grant = ", ".join(table_wide)
        out.append(f"{user} cannot {grant} on {table} ({why}): GRANT {grant} ON {table} TO {user}")
    return out + partial
