"""ORM capture: every flushed insert, update and delete of a migrated table, and every ORM bulk statement,
records the keys it wrote (with the flushed row image where it is exact, for the fast path); methods that
note keys append them to the outbox in the same transaction. Rows of versioned tables get their version
bumped unless the application (or SQLAlchemy's ``version_id_col``) manages it: the version guard of the
fast path refuses an image that is not newer."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import ORMExecuteState, Session

from dualwrite import bypass
from dualwrite.adapter import _outbox_notes as notes
from dualwrite.adapter._errors import RoutingError
from dualwrite.adapter._orm_binding import TENANT, Info, MapperInfo, OrmBinding, binding_of
from dualwrite.adapter._orm_routing import begin_write, release, route_of, write_side
from dualwrite.adapter._tables import Key, Touched
from dualwrite.adapter.phase import Routing
from dualwrite.store import Dialect, Kind

__all__ = ["after_flush", "after_flush_postexec", "before_flush", "do_orm_execute"]


def before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
    binding = binding_of(session)
    if binding is None:
        return
    objs = binding.flushed_objects(session)
    if not objs:
        return
    info = session.info
    info.setdefault(Info.STARTED, time.perf_counter())
    if Info.INFLIGHT not in info:
        tenants: list[str | None] = []
        if TENANT not in info and not info.get(Info.WROTE):
            tenants = [*sorted({str(getattr(o, mi.tenant_attr)) for o, mi, _ in objs
                                if mi.tenant_attr and getattr(o, mi.tenant_attr, None) is not None})]
        if tenants:
            routes = begin_write(session, binding, tenants)
            sides = {r.authoritative for r in routes}
            if len(sides) > 1:
                release(session, binding)
                raise RoutingError(f"one transaction writes tenants {tenants} whose authoritative stores "
                                   "differ (an override or ramp splits them); write them in separate transactions")
            # mirror whenever any of them mirrors: mirroring a key that needs none is harmless
            info[Info.ROUTE] = next((r for r in routes if r.mirror_to is not None), routes[0])
        else:
            info[Info.ROUTE] = begin_write(session, binding, [info.get(TENANT)])[0]
    route = route_of(session, binding)
    for _obj, mi, _kind in objs:
        write_side(mi.rt, route, binding)
    mark_write(session, binding, route, sa.inspect(objs[0][0]).mapper)
    for obj, mi, kind in objs:
        if mi.version_attr is None or mi.version_managed or kind == "deleted":
            continue
        state = sa.inspect(obj)
        current = state.dict.get(mi.version_attr)
        if kind == "new":
            if current is None:
                setattr(obj, mi.version_attr, first_version(mi))
        elif session.is_modified(obj, include_collections=False):
            hist = state.attrs[mi.version_attr].history
            if not hist.added:  # the application did not set it
                setattr(obj, mi.version_attr, next_version(mi, current))
    info[Info.FLUSHING] = True


def mark_write(session: Session, binding: OrmBinding, route: Routing, mapper: Any) -> None:
    """Mark the session's transaction on the authoritative store as the adapter's (bypass capture ignores it)."""
    if binding.writer.marks_writes and bypass.marks(route.phase):
        # the write side's engine, named outright: outside a flush the mapper's bind is the read side
        conn = session.connection(bind_arguments={"bind": binding.engines[route.authoritative], "mapper": mapper})
        bypass.mark_transaction(conn, binding.writer.data[route.authoritative].dialect)


def first_version(mi: MapperInfo) -> Any:
    kind = mi.kinds.get(mi.rt.version or "")
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return dt.datetime.now(dt.UTC) if kind is Kind.TIMESTAMPTZ else dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return 1


def next_version(mi: MapperInfo, current: Any) -> Any:
    kind = mi.kinds.get(mi.rt.version or "")
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return first_version(mi)
    return (current or 0) + 1


def flushed_image(state: Any, mi: MapperInfo) -> dict[str, Any] | None:
    """The flushed row as the database holds it, or None when any doubt exists (then mirror_keys re-reads)."""
    if not mi.complete:
        return None
    d = state.dict
    image: dict[str, Any] = {}
    for col, attr in mi.columns:
        if attr not in d:
            return None  # expired: a server default / onupdate the ORM did not fetch
        v = d[attr]
        if isinstance(v, dt.datetime):
            # the application's session time zone decided what a naive value meant in a timestamptz
            # column (and an aware value in a plain timestamp): let the database say what it stored
            kind = mi.kinds.get(col)
            if (kind is Kind.TIMESTAMPTZ) == (v.tzinfo is None):
                return None
        if isinstance(v, sa.sql.ClauseElement):
            return None  # a SQL expression assigned to the attribute
        image[col] = v
    return image


def flushed_key(state: Any, mi: MapperInfo) -> Key | None:
    d = state.dict
    if all(a in d for a in mi.key_attrs):
        return tuple(d[a] for a in mi.key_attrs)
    ident = state.identity
    if ident is not None and len(ident) == len(mi.key_attrs):
        return tuple(ident)
    return None


def after_flush(session: Session, _flush_context: Any) -> None:
    binding = binding_of(session)
    if binding is None:
        return
    objs = binding.flushed_objects(session)
    if not objs:
        return
    route = route_of(session, binding)
    session.info[Info.WROTE] = True
    if route.mirror_to is None:
        return
    # triggers capture the keys themselves; they are still recorded here so this instance reads its writes
    want_image = binding.writer.method.mirrors_after_commit and binding.writer.options.fast_path
    side = route.authoritative
    touched: list[Touched] = session.info.setdefault(Info.PENDING, [])
    new_touched: list[Touched] = []
    for obj, mi, kind in objs:
        state = sa.inspect(obj)
        if kind == "dirty" and not session.is_modified(obj, include_collections=False):
            continue
        key = flushed_key(state, mi)
        if key is None:
            raise RoutingError(f"table {mi.rt.name}: cannot tell the key of a flushed {type(obj).__name__}")
        if kind == "deleted":
            new_touched.append(Touched(mi.rt, key, None, True))
            continue
        if kind == "dirty":
            for attr in mi.key_attrs:  # a row moved to another key: the old one is gone
                old = state.attrs[attr].history.deleted
                if old:
                    moved = tuple(old[0] if a == attr else state.dict.get(a) for a in mi.key_attrs)
                    new_touched.append(Touched(mi.rt, moved, None, True))
        fast_ok = want_image and mi.rt.fast[side] is not None
        new_touched.append(Touched(mi.rt, key, flushed_image(state, mi) if fast_ok else None, False))
    touched += new_touched
    note_keys(session, binding, route, sa.inspect(objs[0][0]).mapper, [(t.table.name, t.key) for t in new_touched])


def note_keys(session: Session, binding: OrmBinding, route: Routing, mapper: Any,
              written: list[tuple[str, Key]]) -> None:
    """Methods that note keys: append the keys just written to the outbox, in the same transaction."""
    if not binding.writer.method.notes_keys:
        return
    pending = notes.append_statement(binding.writer.data[route.authoritative], binding.writer.migration, written)
    if pending is not None:
        session.connection(bind_arguments={"mapper": mapper}).exec_driver_sql(*pending)


def after_flush_postexec(session: Session, _flush_context: Any) -> None:
    session.info.pop(Info.FLUSHING, None)



def do_orm_execute(state: ORMExecuteState) -> None:
    """ORM bulk INSERT / UPDATE / DELETE of a migrated table: capture the keys they touch."""
    if not (state.is_insert or state.is_update or state.is_delete) or state.execution_options.get(Info.INTERNAL):
        return
    session = state.session
    binding = binding_of(session)
    mi = binding.mapper_info(state.bind_mapper) if binding is not None and state.bind_mapper is not None else None
    if binding is None or mi is None:
        return
    info = session.info
    info.setdefault(Info.STARTED, time.perf_counter())
    if Info.INFLIGHT not in info:
        info[Info.ROUTE] = begin_write(session, binding, [info.get(TENANT)])[0]
    route = route_of(session, binding)
    write_side(mi.rt, route, binding)
    mark_write(session, binding, route, state.bind_mapper)
    info[Info.WROTE] = True
    if route.mirror_to is None:
        return
    keys = _inserted_keys(state, mi) if state.is_insert else _matched_keys(state, binding, mi, route)
    touched: list[Touched] = info.setdefault(Info.PENDING, [])
    touched += [Touched(mi.rt, k, None, bool(state.is_delete)) for k in keys]
    note_keys(session, binding, route, state.bind_mapper, [(mi.rt.name, k) for k in keys])


def _given_values(stmt: Any) -> dict[Any, Any]:
    """What ``.values(...)`` gave a bulk statement (column or name -> value or bind parameter)."""
    return dict(getattr(stmt, "_values", None) or {})  # SQLAlchemy has no public accessor of .values()


def _inserted_keys(state: ORMExecuteState, mi: MapperInfo) -> list[Key]:
    """The keys an ORM bulk INSERT writes: from its parameters, or from ``insert(Model).values(...)``."""
    rt = mi.rt
    params: Any = state.parameters
    plist: list[Any] = params if isinstance(params, list) else [params] if params else []
    if not plist and _given_values(state.statement):
        plist = [{getattr(c, "key", c): getattr(v, "value", v) for c, v in _given_values(state.statement).items()}]
    keys: list[Key] = []
    for p in plist:
        k = rt.key_from_values({c: p.get(a, p.get(c)) for c, a in mi.columns if a in p or c in p})
        if k is None:
            raise RoutingError(f"table {rt.name}: an ORM bulk INSERT without key values cannot be mirrored; "
                               "give the keys or add the objects to the session instead")
        keys.append(k)
    return keys


def _matched_keys(state: ORMExecuteState, binding: OrmBinding, mi: MapperInfo, route: Routing) -> list[Key]:
    """The keys an ORM bulk UPDATE / DELETE matches, read (and locked) in its transaction first; an UPDATE
    that does not set the version gets it bumped."""
    rt = mi.rt
    stmt: Any = state.statement
    table = stmt.table
    if mi.version_attr and not mi.version_managed and state.is_update:
        vcol = table.c[rt.version]
        if not any(getattr(c, "key", c) in (rt.version, mi.version_attr) for c in _given_values(stmt)):
            state.statement = stmt = stmt.values({vcol: vcol + 1})
    sel = sa.select(*[table.c[k] for k in rt.key])
    if stmt.whereclause is not None:
        sel = sel.where(stmt.whereclause)
    if binding.writer.data[route.authoritative].dialect is not Dialect.SQLITE:
        sel = sel.with_for_update()
    found = state.session.execute(sel, execution_options={Info.INTERNAL: True},
                                  bind_arguments={"mapper": state.bind_mapper}).all()
    return [tuple(r) for r in found]
