"""Preflight: everything ``dualwrite check`` can prove before a migration starts, without writing a byte.

DESIGN rule 10 says bad input gets a clear error before anything is written. This module turns a spec
into the complete list of what is wrong with it and with the live stores it names: invalid fields, stores
with no URL or that cannot be reached, missing tables and columns, tables without a key, incompatible
mapped types, transforms that do not import, SQL expressions the source rejects, and credentials that
cannot read the old tables or write the new ones, and computed columns that could never be mirrored
back after write cutover (no ``reverse`` rule, or one the new store rejects). It keeps going after the
first problem, because an operator fixing a spec wants the whole list in one run.

Looking must never change anything, so every check reads a catalog or asks the server to *plan*:
PostgreSQL answers ``has_*_privilege``; MariaDB/MySQL answer ``EXPLAIN INSERT/UPDATE/DELETE``, which
needs exactly the privileges of the statement (roles and wildcard grants included, which
``information_schema`` privilege views miss) and executes nothing; SQLite files are opened read-only,
after checking that they exist so that connecting cannot create one. SQL expressions run as
``SELECT (expr) FROM source WHERE false`` in a read-only transaction.

Secrets: store URLs come from the resolver and leave this module only redacted; every message is
scrubbed of the passwords of the stores it touched, whatever a driver chose to put in an error.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import NoSuchTableError

from dualwrite import store as store_module
from dualwrite.config import StoreRef, StoreResolver, redact
from dualwrite.errors import DualwriteError, Problem
from dualwrite.mapping import SourceKind, TableMapping, _did_you_mean, compile_table, load_callable
from dualwrite.rowcount import EXACT_COUNT_LIMIT  # tables this small are counted exactly
from dualwrite.spec import Loc, MigrationSpec, SpecDocument, TableSpec, read_spec
from dualwrite.store import Dialect, Store, TableInfo

#: how long a preflight waits for a server before calling it unreachable
CONNECT_TIMEOUT_S = 10

_ROLE_LABEL = {"old": "old", "new": "new", "control_store": "control"}
_MYSQL_DENIED = {1142, 1143, 1044, 1045}  # table / column / database access denied


@dataclass(frozen=True)
class StoreSummary:
    """A store the spec names, as far as preflight got with it. ``url`` is redacted."""

    name: str
    roles: tuple[str, ...]
    url: str | None
    dialect: str | None
    reachable: bool
    user: str | None = None


@dataclass(frozen=True)
class TableSummary:
    """One table that passed every check: what the migration will do with it."""

    index: int
    source: str
    target: str
    source_key: tuple[str, ...]
    target_key: tuple[str, ...]
    columns: int
    version_column: str | None
    rows: int | None
    rows_kind: str  # "exact", "estimate", "more_than" (counted up to EXACT_COUNT_LIMIT) or "unknown"
    mapping: TableMapping = field(repr=False, compare=False)

    def rows_text(self) -> str:
        if self.rows is None:
            return "row count unknown"
        if self.rows_kind == "more_than":
            return f"more than {self.rows:,} rows"
        return f"{'~' if self.rows_kind == 'estimate' else ''}{self.rows:,} rows"


@dataclass
class PreflightReport:
    """Every problem found (each with where it is), and a summary of the tables and stores checked."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    stores: list[StoreSummary] = field(default_factory=list)
    tables: list[TableSummary] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def mappings(self) -> list[TableMapping]:
        return [t.mapping for t in self.tables]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view for ``dualwrite check --json`` (no mappings, no URLs but redacted ones)."""
        return {
            "spec": self.source,
            "ok": self.ok,
            "problems": [{"where": p.where, "message": p.message} for p in self.problems],
            "stores": [
                {"name": s.name, "roles": list(s.roles), "url": s.url, "dialect": s.dialect,
                 "reachable": s.reachable, "user": s.user} for s in self.stores
            ],
            "tables": [
                {"index": t.index, "source": t.source, "target": t.target, "source_key": list(t.source_key),
                 "target_key": list(t.target_key), "columns": t.columns, "version_column": t.version_column,
                 "rows": t.rows, "rows_kind": t.rows_kind} for t in self.tables
            ],
        }


# ---------------------------------------------------------------------------------------------------------
# one store, opened for looking only


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
            on_connect = store_module._sqlite_on_connect
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
    def _read_only(self) -> Iterator[Any]:
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
            with self._read_only() as cur:
                cur.execute("SELECT sqlite_version()")
            return None
        with self._read_only() as cur:
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
            with self._read_only() as cur:
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
            with self._read_only() as cur:
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
        with self._read_only() as cur:
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


# ---------------------------------------------------------------------------------------------------------
# the preflight


def _same_place(a: StoreRef, b: StoreRef) -> bool:
    """Do two store URLs name the same database (ignoring passwords and options)?"""
    try:
        ua, ub = sa.make_url(a.url), sa.make_url(b.url)
    except Exception:  # noqa: BLE001
        return False
    return (ua.get_backend_name(), ua.host, ua.port, ua.database) == (ub.get_backend_name(), ub.host, ub.port,
                                                                      ub.database)


class _Run:
    """The state of one preflight: the spec document, the probes and the problems found so far."""

    def __init__(self, doc: SpecDocument, resolver: StoreResolver) -> None:
        self.doc = doc
        self.resolver = resolver
        self.report = PreflightReport(source=doc.source, problems=list(doc.problems))
        self.probes: dict[str, _Probe] = {}
        self._same_database = False

    def problem(self, where: str, message: str) -> None:
        self.report.problems.append(Problem(where, message))

    def at(self, *loc: int | str) -> str:
        return self.doc.where(tuple(loc))

    def run(self) -> PreflightReport:
        try:
            self._stores()
            old = self.probes.get(self.doc.stores.get("old", ""))
            new = self.probes.get(self.doc.stores.get("new", ""))
            for index, entry in self.doc.tables:
                self._table(index, entry, old, new)
            for index, source, target in self.doc.broken_tables:
                self._exists_only(index, source, target, old, new)
            self._ownership(old, new)
            self._capture(old, new)
        finally:
            for probe in self.probes.values():
                probe.close()
        self._finish()
        return self.report

    def _ownership(self, old: _Probe | None, new: _Probe | None) -> None:
        """PostgreSQL lets only a table's owner (or a member of the owning role) alter, rename or drop it.
        PREPARE brings existing control tables and key logs up to date in place, and CLEANUP renames (or
        drops) the old tables: an account that does not own them fails there with ``must be owner of table
        ...``, a permanent error, after the migration started. Say so here instead."""
        from dualwrite import control, outbox, stats  # noqa: PLC0415 - only the table names

        ctl = self.probes.get(self.doc.stores.get("control_store", "") or self.doc.stores.get("old", ""))
        wanted: dict[_Probe, list[tuple[str, str]]] = {}
        # only the key log this strategy uses: another one left by an earlier migration is nobody's business
        strategy = getattr(getattr(self.doc.spec, "strategy", None), "value", "")
        logs = {"outbox": [outbox.OUTBOX], "triggers": [outbox.CHANGELOG]}.get(strategy, [])
        for probe, names, why in (
                (ctl, [control.STATE, control.INSTANCES, control.REPAIR_QUEUE, control.CHECKPOINTS, stats.STATS],
                 "PREPARE updates the control tables in place"),
                (old, logs, "the relay updates the key logs in place"),
                (new, logs, "the relay updates the key logs in place"),
                (old, [entry.source for _, entry in self.doc.tables], "CLEANUP renames (or drops) the old tables")):
            if probe is not None and probe.error is None and probe.dialect is Dialect.POSTGRESQL:
                wanted.setdefault(probe, []).extend((t, why) for t in names)
        for probe, tables in wanted.items():
            try:
                with probe._read_only() as cur:
                    cur.execute("SELECT u.t, u.why, pg_get_userbyid(c.relowner) FROM unnest(%s::text[], %s::text[]) "
                                "AS u(t, why) JOIN pg_class c ON c.oid = to_regclass(u.t) "
                                "WHERE NOT pg_has_role(current_user, c.relowner, 'USAGE')",
                                ([t for t, _ in tables], [w for _, w in tables]))
                    found = list(dict.fromkeys((str(t), str(w), str(o)) for t, w, o in cur.fetchall()))
            except Exception as exc:  # noqa: BLE001 - could not find out: say so rather than pass silently
                self.problem(probe.label, f"could not check table ownership: {_error_text(exc)}")
                continue
            for table, why, owner in found:
                self.problem(f"{probe.label} table {table}",
                             f"{probe.user} does not own table {table} (owner: {owner}), and {why}, which PostgreSQL "
                             f"allows only to the owner ('must be owner of table {table}'): ALTER TABLE {table} "
                             f"OWNER TO {probe.user}, GRANT {owner} TO {probe.user}, or run the worker as {owner}")

    def _stores(self) -> None:
        for problem in self.resolver.file_problems:
            self.problem(problem.where, problem.message)
        for role in ("old", "new", "control_store"):
            name = self.doc.stores.get(role)
            if name is None:
                continue
            probe = self.probes.setdefault(name, _Probe(name))
            probe.roles.append(role)
        for name, probe in self.probes.items():
            ref, found = self.resolver.try_resolve(name)
            if ref is None:
                messages = [p.message for p in found if p.where == f"store {name!r}"]
                probe.error = "unknown"
                self.problem(f"{self.at(probe.roles[0])} (store {name!r})",
                             messages[0] if messages else "no URL for this store")
                continue
            probe.open(ref)
            if probe.error:
                self.problem(probe.label, probe.error + "; nothing on it was checked")
        old, new = (self.probes.get(self.doc.stores.get(r, "")) for r in ("old", "new"))
        self._same_database = bool(old and new and old.ref and new.ref and old is not new
                                   and _same_place(old.ref, new.ref))
        for probe in self.probes.values():
            self.report.stores.append(StoreSummary(
                name=probe.name, roles=tuple(_ROLE_LABEL[r] for r in probe.roles),
                url=probe.ref.redacted_url if probe.ref else None,
                dialect=probe.dialect.value if probe.dialect else None,
                reachable=probe.error is None, user=probe.user))

    def _table(self, index: int, entry: TableSpec, old: _Probe | None, new: _Probe | None) -> None:
        first = len(self.report.problems)
        try:
            self._check_table(index, entry, old, new)
        finally:
            # one table's problems in file order; store-side ones (privileges) after them
            pattern = re.compile(rf"^{re.escape(self.doc.source)}:(\d+) ") if self.doc.source else None

            def line(p: Problem) -> float:
                m = pattern.match(p.where) if pattern else None
                return int(m.group(1)) if m else float("inf")

            self.report.problems[first:] = sorted(self.report.problems[first:], key=line)

    def _check_table(self, index: int, entry: TableSpec, old: _Probe | None, new: _Probe | None) -> None:
        first = len(self.report.problems)
        target_loc: Loc = ("tables", index, "target" if entry.target else "source")
        source_info = target_info = None
        if old is not None and old.error is None:
            source_info, msg = old.describe(entry.source, "source table")
            if msg:
                self.problem(self.at("tables", index, "source"), msg)
        if new is not None and new.error is None:
            target_info, msg = new.describe(entry.target_table, "target table")
            if msg and not entry.target:
                msg += "; with no 'target:' the target table has the source's name"
            if msg:
                self.problem(self.doc.where(target_loc), msg)
        if self._same_database and entry.source == entry.target_table:
            self.problem(self.doc.where(target_loc), "old and new are the same database and this entry copies "
                                                     f"table {entry.source} onto itself")
        mapping: TableMapping | None = None
        if source_info is not None and target_info is not None:
            mapping, problems = compile_table(entry, source_info, target_info, where=f"tables[{index}]")
            for p in problems:
                self.problem(self._relocate(index, p.where), p.message)
        else:
            self._one_side(index, entry, source_info, target_info)
        if source_info is not None and old is not None:
            for tcol, cmap in entry.columns.items():
                if cmap.expr is not None:
                    msg = old.check_expr(entry.source, cmap.expr)
                    if msg:
                        self.problem(self.at("tables", index, "columns", tcol), msg)
        if target_info is not None and new is not None:
            for ocol, rule in entry.reverse.items():
                if rule.expr is not None:
                    msg = new.check_expr(entry.target_table, rule.expr, "new")
                    if msg:
                        self.problem(self.at("tables", index, "reverse", ocol), f"reverse rule: {msg}")
        if mapping is not None:
            self._reversible(index, entry, mapping)
        self._privileges(index, entry, mapping, source_info, target_info, old, new)
        if mapping is not None and new is not None and old is not None and len(self.report.problems) == first:
            rows, kind = old.row_estimate(entry.source)
            self.report.tables.append(TableSummary(
                index=index, source=entry.source, target=entry.target_table, source_key=mapping.source_key,
                target_key=mapping.target_key, columns=len(mapping.columns),
                version_column=mapping.version[0] if mapping.version else None, rows=rows, rows_kind=kind,
                mapping=mapping))

    def _capture(self, old: _Probe | None, new: _Probe | None) -> None:
        """Strategy cdc: both stores' log settings, free slots, privileges, a slot left behind."""
        spec = self.doc.spec
        if spec is None or spec.strategy.value != "cdc":
            return
        from dualwrite.cdc.checks import capture_problems  # noqa: PLC0415

        for role, probe in (("old", old), ("new", new)):
            if probe is not None and probe.error is None and probe.store is not None:
                for msg in capture_problems(probe.store, spec.name, role):
                    self.problem(f"{probe.label} (strategy cdc)", msg)

    def _reversible(self, index: int, entry: TableSpec, mapping: TableMapping) -> None:
        """Every migration goes through CUTOVER_WRITES, where rows are mirrored new -> old so that rollback
        stays possible: an old column that a computed column consumes needs a reverse rule, or the old
        store would silently stop following it (found here, not on the day of the cutover)."""
        missing = mapping.needs_reverse()
        for tcol, olds in missing.items():
            names = ", ".join(repr(o) for o in olds)
            self.problem(self.at("tables", index, "columns", tcol),
                         f"column {tcol!r} is computed from old column{'s' if len(olds) > 1 else ''} {names}, "
                         "which cannot be mirrored back after write cutover: add a rule for "
                         f"{'each' if len(olds) > 1 else 'it'} under 'reverse:' (an SQL expr over the new "
                         "table's columns, or a transform)")

    def _privileges(self, index: int, entry: TableSpec, mapping: TableMapping | None,
                    source_info: TableInfo | None, target_info: TableInfo | None,
                    old: _Probe | None, new: _Probe | None) -> None:
        if source_info is not None and old is not None:
            if mapping is None or mapping.needs_python or any(c.kind is SourceKind.EXPR for c in mapping.columns):
                reads = list(source_info.columns)
            else:
                reads = list(dict.fromkeys([*mapping.source_key,
                                            *(c.source for c in mapping.columns if c.source is not None)]))
            for msg in old.missing_privileges(entry.source, reads, None):
                self.problem(f"{old.label} table {entry.source}", msg)
        if target_info is not None and new is not None:
            writes = list(mapping.target_columns) if mapping is not None else list(target_info.columns)
            for msg in new.missing_privileges(entry.target_table, [], writes):
                self.problem(f"{new.label} table {entry.target_table}", msg)

    def _one_side(self, index: int, entry: TableSpec, source: TableInfo | None, target: TableInfo | None) -> None:
        """The mapping cannot be compiled without both tables; still report what one side can tell."""
        def absent(loc: Loc, name: str, info: TableInfo, side: str) -> None:
            self.problem(self.at("tables", index, *loc), f"column {name!r} does not exist in {side} table "
                                                        f"{info.name}{_did_you_mean(name, list(info.columns))}")

        for tcol, cmap in entry.columns.items():
            if source is not None and cmap.from_ and cmap.from_ not in source.columns:
                absent(("columns", tcol), cmap.from_, source, "source")
            if target is not None and tcol not in target.columns:
                absent(("columns", tcol), tcol, target, "target")
            if cmap.transform:
                try:
                    load_callable(cmap.transform)
                except Exception as exc:  # noqa: BLE001 - any import failure is the problem
                    self.problem(self.at("tables", index, "columns", tcol),
                                 f"cannot import transform {cmap.transform!r}: {exc}")
        if source is None:
            return
        if not source.primary_key and not source.unique_keys:
            self.problem(self.at("tables", index, "key"),
                         f"source table {entry.source} has no primary or unique key: its rows cannot be told "
                         "apart, so writes cannot be mirrored, copied or verified; add a primary key to it first")
        singles = (("version_column", entry.version_column), ("tenant_column", entry.tenant_column))
        for loc, name in [*(("key", k) for k in entry.key or []), *(("drop", d) for d in entry.drop), *singles]:
            if name and name not in source.columns:
                absent((loc,), name, source, "source")

    def _exists_only(self, index: int, source: str | None, target: str | None,
                     old: _Probe | None, new: _Probe | None) -> None:
        """A table entry that did not validate: still say whether the tables it names exist."""
        for name, probe, field_name in ((source, old, "source"), (target, new, "target")):
            if name is None or probe is None or probe.error is not None:
                continue
            _, msg = probe.describe(name, f"{field_name} table")
            if msg:
                raw = self.doc.doc["tables"][index] if isinstance(self.doc.doc, dict) else {}
                key = field_name if isinstance(raw, dict) and raw.get(field_name) else "source"
                self.problem(self.at("tables", index, key), msg)

    def _relocate(self, index: int, where: str) -> str:
        """Turn compile_table's ``tables[1].columns.total`` into ``orders.yaml:14 tables[1].columns.total``."""
        prefix = f"tables[{index}]"
        if not where.startswith(prefix):
            return where
        sub = where[len(prefix):]
        parts: tuple[int | str, ...] = tuple(sub[1:].split(".", 1)) if sub.startswith(".") else ()
        return self.doc.where(("tables", index, *parts))

    def _finish(self) -> None:
        secrets = sorted({s for p in self.probes.values() for s in p.secrets if len(s) >= 4}, key=len,
                         reverse=True)

        def scrub(text: str) -> str:
            text = redact(text)
            for s in secrets:
                text = text.replace(s, "***")
            return text

        seen: set[tuple[str, str]] = set()
        clean: list[Problem] = []
        for p in self.report.problems:
            item = (scrub(p.where), scrub(p.message))
            if item not in seen:
                seen.add(item)
                clean.append(Problem(*item))
        self.report.problems = clean


def preflight(spec: MigrationSpec | SpecDocument, resolver: StoreResolver) -> PreflightReport:
    """Check a spec against its live stores, writing nothing; the report lists every problem found.

    Pass a :class:`SpecDocument` (from :func:`dualwrite.spec.read_spec`) to get file lines in every
    location and to have the live checks run on the parts of an invalid spec that did validate.
    """
    doc = spec if isinstance(spec, SpecDocument) else SpecDocument.from_spec(spec)
    return _Run(doc, resolver).run()


def preflight_file(path: str | Path, resolver: StoreResolver) -> PreflightReport:
    """Read a spec file leniently and preflight it: spec problems and store problems in one report."""
    return preflight(read_spec(path), resolver)
