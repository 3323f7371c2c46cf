"""What an installed sessionmaker knows (:class:`OrmBinding`: the writer, each store's engine, the mapped
tables of the migration) and what a session keeps per transaction in ``session.info`` (:class:`Info`)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import UnmappedColumnError

from dualwrite.adapter._errors import RoutingError
from dualwrite.adapter._tables import TableRuntime
from dualwrite.adapter.phase import Side
from dualwrite.adapter.writer import DualWriter
from dualwrite.store import Kind

__all__ = ["ENTITY", "TENANT", "Info", "MapperInfo", "OrmBinding", "binding_of"]

log = logging.getLogger("dualwrite.adapter")

TENANT = "dualwrite_tenant"
"""``session.info`` key: the tenant the session works for (routing, overrides, ramp)."""
ENTITY = "dualwrite_entity"
"""``session.info`` key: the entity the session works on (per-entity overrides)."""


class Info:
    """The integration's own ``session.info`` keys: the state of the session's current transaction."""

    ROUTE = "_dw_route"
    """The routing the transaction writes (and reads) under."""
    WROTE = "_dw_wrote"
    """The transaction has written: its reads stay on the authoritative store (it reads its own writes)."""
    PENDING = "_dw_pending"
    """The keys written so far (:class:`~dualwrite.adapter._tables.Touched`), handled after the commit."""
    FLUSHING = "_dw_flushing"
    STARTED = "_dw_started"
    """``perf_counter`` at the transaction's first write (the call latency the gates read)."""
    STRICT = "_dw_strict"
    """The ticket of a strict write prepared before the commit."""
    STRICT_CONN = "_dw_strict_conn"
    """(the authoritative connection, its pool ``info``) of that strict write: its COMMIT is watched."""
    ASYNC_COMMIT = "_dw_async_commit"
    DEFERRED = "_dw_deferred"
    """AsyncSession: the after-commit work its ``commit()`` awaits on a thread."""
    INTERNAL = "_dw_internal"
    """Execution option of the integration's own statements (not captured again)."""
    INFLIGHT = "_dw_inflight"
    """The epoch this transaction's writes were routed under, counted in flight until it ends."""


@dataclass
class MapperInfo:
    rt: TableRuntime
    columns: tuple[tuple[str, str], ...]
    """(column name, attribute key) of every mapped column of the table."""
    key_attrs: tuple[str, ...]
    version_attr: str | None
    version_managed: bool
    tenant_attr: str | None
    complete: bool
    """Every column of the table is mapped: a flushed object is a whole row image."""
    kinds: dict[str, Kind]


class OrmBinding:
    """What an installed sessionmaker knows: the writer, the engine of each store, the mapped tables."""

    def __init__(self, writer: DualWriter, old: Engine, new: Engine | None, *, async_mode: bool = False) -> None:
        self.writer = writer
        self.engines = {Side.OLD: old} if new is None else {Side.OLD: old, Side.NEW: new}
        """No NEW engine: the new store is Redis, which the ORM reaches only through the writer's mirror."""
        self.async_mode = async_mode
        self.async_engines: dict[Side, Any] = {}
        """install_async: the application's ``AsyncEngine`` of each store."""
        self.by_table = {rt.old.table: rt for rt in writer.tables.values()}
        self._mappers: dict[Any, MapperInfo | None] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def mapper_info(self, mapper: Any) -> MapperInfo | None:
        try:
            return self._mappers[mapper]
        except KeyError:
            pass
        info = self._build(mapper)
        with self._lock:
            self._mappers[mapper] = info
        return info

    def _build(self, mapper: Any) -> MapperInfo | None:
        table = getattr(mapper, "local_table", None)
        name = getattr(table, "fullname", None)
        rt = self.by_table.get(name) if name else None
        if rt is None or table is None:
            return None
        cols: list[tuple[str, str]] = []
        for col in table.columns:
            try:
                prop = mapper.get_property_by_column(col)
            except UnmappedColumnError:  # a column the model does not map
                continue
            cols.append((col.name, prop.key))
        by_col = dict(cols)
        missing = [k for k in rt.key if k not in by_col]
        if missing:
            raise RoutingError(f"model {mapper.class_.__name__}: key column(s) {missing} of {rt.name} are not mapped")
        vcol = mapper.version_id_col
        info = rt.forward.source_info
        return MapperInfo(
            rt=rt, columns=tuple(cols), key_attrs=tuple(by_col[k] for k in rt.key),
            version_attr=by_col.get(rt.version) if rt.version else None,
            version_managed=vcol is not None and rt.version is not None and getattr(vcol, "name", None) == rt.version,
            tenant_attr=by_col.get(rt.tenant_column) if rt.tenant_column else None,
            complete=set(rt.old.columns) <= set(by_col),
            kinds={c: info.columns[c].kind for c in info.columns},
        )

    def flushed_objects(self, session: Session) -> list[tuple[Any, MapperInfo, str]]:
        """(object, its mapper's info, "new" / "dirty" / "deleted") of every migrated object a flush writes."""
        out = []
        for kind, objs in (("new", session.new), ("dirty", session.dirty), ("deleted", session.deleted)):
            for obj in objs:
                mi = self.mapper_info(sa.inspect(obj).mapper)
                if mi is not None:
                    out.append((obj, mi, kind))
        return out

    def table_of_clause(self, clause: Any) -> TableRuntime | None:
        table = getattr(clause, "table", None)
        name = getattr(table, "fullname", None)
        return None if name is None else self.by_table.get(name)

    def warn_once(self, what: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", what)


def binding_of(session: Session) -> OrmBinding | None:
    """The binding of an installed session's class, or None (a session of another sessionmaker)."""
    return getattr(type(session), "_dw_binding", None)

