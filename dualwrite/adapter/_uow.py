"""The unit of work of the Core API: writes by key in application column names, planned as SQL on the
authoritative store's side of each table, run in one transaction there.

:class:`UnitOfWorkBase` plans the statements and records what they wrote (:class:`Touched`: the keys, and
the committed row image when the statement returned it, for the fast path); :class:`UnitOfWork` runs them
on a SQLAlchemy ``Connection`` (:class:`dualwrite.adapter.aio.AsyncUnitOfWork` on an ``AsyncConnection``).
What happens after the commit is the writer's (:meth:`DualWriter.finish`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from dualwrite.adapter import _outbox_notes as notes
from dualwrite.adapter._errors import RoutingError
from dualwrite.adapter._tables import Key, KeyLike, SideTable, TableRuntime, Touched
from dualwrite.adapter.phase import Routing
from dualwrite.store import Dialect

if TYPE_CHECKING:
    from dualwrite.adapter.writer import DualWriter

__all__ = ["Statement", "UnitOfWork", "UnitOfWorkBase"]


@dataclass
class Statement:
    """One planned write: the SQL, its parameters, and what to record when it has run."""

    rt: TableRuntime
    side: SideTable
    sql: str
    params: list[Any]
    key: Key | None
    deleted: bool = False
    mode: str = "plain"
    """'plain', 'returning' (rows come back: images or generated keys) or 'fold' (outbox folded in)."""
    want_image: bool = False
    moved_from: Key | None = None
    """An update that changed the key: the row left this key."""
    txid: bool = False
    """The RETURNING list ends with ``txid_current()`` (a strict write's commit marker, no extra round trip)."""
    row_locked: bool = False
    """An UPDATE: the rows it returns existed for every transaction and are now locked by this one."""


class UnitOfWorkBase:
    """Plans writes by key in application column names; subclasses run them (sync or asyncio)."""

    def __init__(self, writer: DualWriter, routing: Routing) -> None:
        self.writer = writer
        self.routing = routing
        self.side = routing.authoritative
        self.touched: list[Touched] = []
        self._log: list[tuple[str, Key]] = []
        self._outbox = writer.method.notes_keys and routing.mirror_to is not None
        self.txid: int | None = None
        """PostgreSQL: the authoritative transaction's id, when a strict statement returned it (the marker
        :mod:`dualwrite.adapter.strict` would otherwise fetch with a round trip of its own)."""
        self._image = routing.mirror_to is not None and writer.options.fast_path  # in-call tables only (below)

    def _side(self, rt: TableRuntime) -> SideTable:
        s = rt.sides[self.side]
        if not s.writable:
            raise RoutingError(f"table {rt.name}: the new store cannot be written in the application's schema "
                               f"({s.why_not_writable}); write cutover is not possible for it")
        return s

    def _values(self, s: SideTable, values: Mapping[str, Any], *, version: bool) -> tuple[list[str], list[str],
                                                                                          list[Any]]:
        cols: list[str] = []
        exprs: list[str] = []
        params: list[Any] = []
        for col, sql, vals in s.assignments(values):
            cols.append(col)
            exprs.append(sql)
            params += vals
        for col, val in s.defaults.items():
            if col not in cols:
                cols.append(col)
                exprs.append(s.ph)
                params.append(val)
        if version and s.version and s.version not in cols:
            expr, p = s.version_initial()
            cols.append(s.version)
            exprs.append(expr)
            params += p
        return cols, exprs, params

    def plan_insert(self, table: str, values: Mapping[str, Any]) -> Statement:
        rt = self.writer.table(table)
        s = self._side(rt)
        q = s.store.quote
        cols, exprs, params = self._values(s, values, version=True)
        key = rt.key_from_values(values)
        sql = f"INSERT INTO {s.qtable} ({', '.join(q(c) for c in cols)}) VALUES ({', '.join(exprs)})"
        return self._finish_plan(Statement(rt, s, sql, params, key), returning_key=key is None)

    def plan_update(self, table: str, key: KeyLike, values: Mapping[str, Any]) -> Statement:
        rt = self.writer.table(table)
        s = self._side(rt)
        k = rt.key_of(key)
        q = s.store.quote
        sets: list[str] = []
        params: list[Any] = []
        for col, sql, vals in s.assignments(values):
            sets.append(f"{q(col)} = {sql}")
            params += vals
        if s.version and rt.version not in values:
            sets.append(f"{q(s.version)} = {s.version_bump()}")
        if not sets:
            raise RoutingError(f"table {rt.name}: an update needs values")
        new_key = rt.key_from_values({**dict(zip(rt.key, k, strict=True)), **values})
        sql = f"UPDATE {s.qtable} SET {', '.join(sets)} WHERE {s.where_key}"
        st_ = Statement(rt, s, sql, [*params, *k], k, row_locked=True)
        if new_key is not None and new_key != k:
            st_.key, st_.moved_from = new_key, k
        return self._finish_plan(st_)

    def plan_upsert(self, table: str, values: Mapping[str, Any]) -> Statement:
        rt = self.writer.table(table)
        s = self._side(rt)
        key = rt.key_from_values(values)
        if key is None:
            raise RoutingError(f"table {rt.name}: an upsert needs every key column ({', '.join(rt.key)})")
        q = s.store.quote
        versioned = s.version is not None and s.version not in [c for c, _, _ in s.assignments(values)]
        cols, exprs, params = self._values(s, values, version=True)
        keyset = set(s.key)
        rest = [c for c in cols if c not in keyset and not (versioned and c == s.version)]
        head = f"INSERT INTO {s.qtable} ({', '.join(q(c) for c in cols)}) VALUES ({', '.join(exprs)})"
        vq = q(s.version or "")
        if s.dialect is Dialect.MYSQL:
            sets = [f"{q(c)} = VALUES({q(c)})" for c in rest]
            if versioned:
                sets.append(f"{vq} = {s.version_bump()}")
            k0 = q(s.key[0])
            sql = f"{head} ON DUPLICATE KEY UPDATE {', '.join(sets) if sets else f'{k0} = {k0}'}"
        else:
            sets = [f"{q(c)} = excluded.{q(c)}" for c in rest]
            if versioned:
                sets.append(f"{vq} = {s.version_bump(s.qtable + '.')}")
            conflict = ", ".join(q(k) for k in s.key)
            sql = f"{head} ON CONFLICT ({conflict}) " + (f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING")
        return self._finish_plan(Statement(rt, s, sql, params, key))

    def plan_delete(self, table: str, key: KeyLike) -> Statement:
        rt = self.writer.table(table)
        s = self._side(rt)
        k = rt.key_of(key)
        return self._finish_plan(Statement(rt, s, f"DELETE FROM {s.qtable} WHERE {s.where_key}", list(k), k,
                                           deleted=True))

    def _finish_plan(self, st_: Statement, *, returning_key: bool = False) -> Statement:
        """Decide RETURNING (row image / generated key) or the folded outbox append (PostgreSQL)."""
        s, rt = st_.side, st_.rt
        # MariaDB returns rows from a plain INSERT only (not from UPDATE or ON DUPLICATE KEY UPDATE)
        can_return = s.dialect is not Dialect.MYSQL or (st_.sql.startswith("INSERT") and "DUPLICATE" not in st_.sql)
        st_.want_image = (not st_.deleted and can_return and self._image and rt.fast[self.side] is not None
                          and st_.moved_from is None and rt.method.in_call)
        if self._outbox and st_.key is not None and s.dialect is Dialect.POSTGRESQL and st_.moved_from is None:
            st_.sql, st_.mode = notes.fold(s, st_.sql), "fold"
            st_.params = [*st_.params, *notes.fold_params(self.writer.migration, rt.name, st_.key)]
        elif st_.want_image or returning_key:
            st_.sql, st_.mode = f"{st_.sql} RETURNING {s.returning_all}", "returning"
            if (s.dialect is Dialect.POSTGRESQL and rt.method.writes_before_commit and self.txid is None
                    and self.routing.mirror_to is not None):
                st_.sql, st_.txid = f"{st_.sql}, txid_current()", True
        return st_

    def record_result(self, st_: Statement, rowcount: int, rows: Sequence[Sequence[Any]] | None) -> Key | None:
        """Record what a statement wrote; returns the key (generated keys included)."""
        rt, s = st_.rt, st_.side
        if st_.moved_from is not None:
            self._record(rt, st_.moved_from, None, deleted=True)
        if st_.mode == "returning":
            if st_.txid and rows:
                self.txid = int(rows[0][-1])
                rows = [r[:-1] for r in rows]
            first: Key | None = None
            for r in rows or ():
                image = dict(zip(s.columns, r, strict=True))
                k = tuple(image[c] for c in s.key)
                first = first or k
                self._record(rt, k, image if st_.want_image else None, deleted=False, row_locked=st_.row_locked)
            if first is None and st_.key is None:
                raise RoutingError(f"table {rt.name}: the insert returned no key")
            if not rows and st_.key is not None:
                self._record(rt, st_.key, None, deleted=st_.deleted)
            return first or st_.key
        if st_.key is not None:
            self._record(rt, st_.key, None, deleted=st_.deleted, logged=st_.mode == "fold")
        return st_.key

    def touch(self, table: str, *keys: KeyLike) -> None:
        """Declare keys written by statements of your own on ``connection``: they are mirrored as well."""
        rt = self.writer.table(table)
        for key in keys:
            self._record(rt, rt.key_of(key), None, deleted=False)

    def _record(self, rt: TableRuntime, key: Key, image: dict[str, Any] | None, *, deleted: bool,
                logged: bool = False, row_locked: bool = False) -> None:
        self.touched.append(Touched(rt, key, image, deleted, row_locked))
        if self._outbox and not logged:
            self._log.append((rt.name, key))

    def pending_notes(self) -> tuple[str, Any] | None:
        """The outbox notes still to append before the commit (those not folded into a statement), as
        (SQL, parameters) for ``exec_driver_sql``."""
        if not self._log:
            return None
        pending = notes.append_statement(self.writer.data[self.side], self.writer.migration, self._log)
        self._log.clear()
        return pending


class UnitOfWork(UnitOfWorkBase):
    """Writes by key inside one authoritative transaction (application column names throughout).

    ``connection`` is the SQLAlchemy connection of that transaction, for anything else the request does
    there (name the keys such statements write with :meth:`touch`).
    """

    def __init__(self, writer: DualWriter, routing: Routing, connection: Connection) -> None:
        super().__init__(writer, routing)
        self.connection = connection
        self._last_rowcount = 0

    def _execute(self, st_: Statement) -> Key | None:
        res = self.connection.exec_driver_sql(st_.sql, tuple(st_.params))
        rows = res.fetchall() if st_.mode == "returning" else None
        n = len(rows) if rows is not None else int(res.rowcount or 0)
        self._last_rowcount = n
        return self.record_result(st_, n, rows)

    def insert(self, table: str, values: Mapping[str, Any]) -> Key:
        """Insert one row; returns its key (also when the database generated it)."""
        key = self._execute(self.plan_insert(table, values))
        assert key is not None
        return key

    def update(self, table: str, key: KeyLike, values: Mapping[str, Any]) -> int:
        """Update one row by key; returns the number of rows changed."""
        self._execute(self.plan_update(table, key, values))
        return self._last_rowcount

    def upsert(self, table: str, values: Mapping[str, Any]) -> Key:
        key = self._execute(self.plan_upsert(table, values))
        assert key is not None
        return key

    def delete(self, table: str, key: KeyLike) -> int:
        self._execute(self.plan_delete(table, key))
        return self._last_rowcount

    def note_keys(self) -> None:
        """Before the commit: append the outbox notes not folded into a statement (:meth:`pending_notes`)."""
        pending = self.pending_notes()
        if pending is not None:
            self.connection.exec_driver_sql(*pending)
