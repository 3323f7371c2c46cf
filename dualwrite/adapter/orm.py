"""ORM integration: install dual writes on a ``sessionmaker`` without touching the application's write code.

:func:`install` makes every session of a sessionmaker phase-aware for the migration's tables:

- **routing**: writes (flushes, ORM bulk statements) of migrated tables go to the authoritative store of
  the session's routing; reads go where the phase serves them from (after the transaction has written, its
  reads stay on the authoritative store, so it reads its own writes). Tables outside the migration keep the
  sessionmaker's own bind and are never mirrored. The routing is decided once per transaction, from
  ``session.info["dualwrite_tenant"]`` / ``["dualwrite_entity"]`` or else from the tenant column of the
  objects flushed; one transaction never writes two authoritative stores.
- **capture**: every flushed insert, update and delete of a migrated table records its key. ``outbox``
  appends the keys in the same transaction (so they commit or roll back with the rows); ``sync`` mirrors
  them right after the commit, from the flushed row image when it is exact (a version-guarded upsert,
  one round trip) and else with ``mirror_keys``; ``triggers`` leaves it to the database. Rows of versioned
  tables get their version bumped on every flush unless the application set it (or SQLAlchemy's own
  ``version_id_col`` manages it), because the version guard refuses an image that is not newer.
- **shadow reads**: in SHADOW_READ / CUTOVER_READS a sampled loaded object is compared with the other
  store's row off the request path (:mod:`dualwrite.shadow`).

The ORM addresses one schema, so routing a table to the new store needs the new table to carry the same
table and column names (checked: :attr:`TableRuntime.orm_compatible`). A renamed schema can still be
migrated through the ORM up to CUTOVER_READS (reads stay on the old store, with a warning); writing it
after write cutover raises :class:`RoutingError`.

:func:`install_async` does the same for an ``async_sessionmaker``; the sync mirror then runs on a worker
thread and ``await session.commit()`` returns once it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, sessionmaker

from dualwrite import bypass, outbox
from dualwrite.adapter.phase import Routing, Side
from dualwrite.adapter.strict import strict_groups
from dualwrite.adapter.writer import DualWriter, Key, RoutingError, TableRuntime, Touched
from dualwrite.mirror import normal_key
from dualwrite.spec import Strategy
from dualwrite.store import Kind

log = logging.getLogger("dualwrite.adapter")

TENANT = "dualwrite_tenant"
"""``session.info`` key: the tenant the session works for (routing, overrides, ramp)."""
ENTITY = "dualwrite_entity"
"""``session.info`` key: the entity the session works on (per-entity overrides)."""

_ROUTE = "_dw_route"
_WROTE = "_dw_wrote"
_PENDING = "_dw_pending"
_FLUSHING = "_dw_flushing"
_STARTED = "_dw_started"
_STRICT = "_dw_strict"
_ASYNC_COMMIT = "_dw_async_commit"
_DEFERRED = "_dw_deferred"
_INTERNAL = "_dw_internal"
_INFLIGHT = "_dw_inflight"
"""The epoch this transaction's writes were routed under, counted in flight until it ends."""


@dataclass
class _MapperInfo:
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

    def __init__(self, writer: DualWriter, old: Engine, new: Engine, *, async_mode: bool = False) -> None:
        self.writer = writer
        self.engines = {Side.OLD: old, Side.NEW: new}
        self.async_mode = async_mode
        self.by_table = {rt.old.table: rt for rt in writer.tables.values()}
        self._mappers: dict[Any, _MapperInfo | None] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def mapper_info(self, mapper: Any) -> _MapperInfo | None:
        try:
            return self._mappers[mapper]
        except KeyError:
            pass
        info = self._build(mapper)
        with self._lock:
            self._mappers[mapper] = info
        return info

    def _build(self, mapper: Any) -> _MapperInfo | None:
        table = getattr(mapper, "local_table", None)
        name = getattr(table, "fullname", None)
        rt = self.by_table.get(name) if name else None
        if rt is None or table is None:
            return None
        cols: list[tuple[str, str]] = []
        for col in table.columns:
            try:
                prop = mapper.get_property_by_column(col)
            except Exception:  # noqa: BLE001 - a column the model does not map
                continue
            cols.append((col.name, prop.key))
        by_col = dict(cols)
        missing = [k for k in rt.key if k not in by_col]
        if missing:
            raise RoutingError(f"model {mapper.class_.__name__}: key column(s) {missing} of {rt.name} are not mapped")
        vcol = mapper.version_id_col
        info = rt.forward.source_info
        return _MapperInfo(
            rt=rt, columns=tuple(cols), key_attrs=tuple(by_col[k] for k in rt.key),
            version_attr=by_col.get(rt.version) if rt.version else None,
            version_managed=vcol is not None and rt.version is not None and getattr(vcol, "name", None) == rt.version,
            tenant_attr=by_col.get(rt.tenant_column) if rt.tenant_column else None,
            complete=set(rt.old.columns) <= set(by_col),
            kinds={c: info.columns[c].kind for c in info.columns},
        )

    def table_of_clause(self, clause: Any) -> TableRuntime | None:
        table = getattr(clause, "table", None)
        name = getattr(table, "fullname", None)
        return None if name is None else self.by_table.get(name)

    def warn_once(self, what: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", what)


# ---------------------------------------------------------------------------------------------------------
# routing


def _binding(session: Session) -> OrmBinding | None:
    return getattr(type(session), "_dw_binding", None)


def _route(session: Session, binding: OrmBinding) -> Routing:
    route: Routing | None = session.info.get(_ROUTE)
    if route is None:
        route = binding.writer.route(session.info.get(TENANT), session.info.get(ENTITY))
        session.info[_ROUTE] = route
    return route


def _begin_write(session: Session, binding: OrmBinding, tenants: list[str | None]) -> list[Routing]:
    """The first write of a transaction: wait while its scope is fenced, route it (again: a read may have
    routed the transaction under an older epoch) and count it in flight until the transaction ends."""
    routes = binding.writer.begin_write_many([(t, session.info.get(ENTITY)) for t in tenants])
    session.info[_INFLIGHT] = routes[0].epoch
    return routes


def _release(session: Session, binding: OrmBinding) -> None:
    epoch = session.info.pop(_INFLIGHT, None)
    if epoch is not None:
        binding.writer.phase.leave(epoch)


def _is_dml(clause: Any) -> bool:
    return isinstance(clause, sa.sql.dml.UpdateBase)


def _write_side(rt: TableRuntime, route: Routing) -> Side:
    side = route.authoritative
    if side is Side.NEW and not rt.orm_compatible:
        raise RoutingError(f"table {rt.name}: the ORM model cannot write the new store (its table or columns "
                           "are renamed there); move this code to the new schema before write cutover")
    return side


def _read_side(session: Session, binding: OrmBinding, rt: TableRuntime, route: Routing) -> Side:
    if session.info.get(_WROTE):
        return _write_side(rt, route)
    side = binding.writer.read_side(rt, route)
    if side is Side.NEW and not rt.orm_compatible:
        binding.warn_once(f"table {rt.name}: ORM reads stay on the old store (the new table renames columns)")
        return route.authoritative if route.authoritative is Side.OLD else side
    return side


def _dw_get_bind(session: Session, mapper: Any, clause: Any) -> Engine | None:
    binding = _binding(session)
    if binding is None:
        return None
    rt = None
    if mapper is not None:
        m = getattr(mapper, "mapper", mapper)
        if not isinstance(m, Mapper):
            with contextlib.suppress(Exception):
                m = sa.inspect(m)
        mi = binding.mapper_info(m) if isinstance(m, Mapper) else None
        rt = mi.rt if mi is not None else None
    elif _is_dml(clause):
        rt = binding.table_of_clause(clause)
    if rt is None:
        return None
    route = _route(session, binding)
    if session.info.get(_FLUSHING) or _is_dml(clause):
        side = _write_side(rt, route)
    else:
        side = _read_side(session, binding, rt, route)
    return binding.engines[side]


class DualwriteSessionMixin:
    """Routes migrated tables per phase; everything else goes to the sessionmaker's own bind."""

    _dw_binding: OrmBinding | None = None

    def get_bind(self, mapper: Any = None, *, clause: Any = None, bind: Any = None, **kw: Any) -> Any:
        if bind is None:
            engine = _dw_get_bind(self, mapper, clause)  # type: ignore[arg-type]
            if engine is not None:
                return engine
        return super().get_bind(mapper, clause=clause, bind=bind, **kw)  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------
# flush capture


def _objects(session: Session, binding: OrmBinding) -> list[tuple[Any, _MapperInfo, str]]:
    out = []
    for kind, objs in (("new", session.new), ("dirty", session.dirty), ("deleted", session.deleted)):
        for obj in objs:
            mi = binding.mapper_info(sa.inspect(obj).mapper)
            if mi is not None:
                out.append((obj, mi, kind))
    return out


def _before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
    binding = _binding(session)
    if binding is None:
        return
    objs = _objects(session, binding)
    if not objs:
        return
    info = session.info
    info.setdefault(_STARTED, time.perf_counter())
    if _INFLIGHT not in info:
        tenants: list[str | None] = []
        if TENANT not in info and not info.get(_WROTE):
            tenants = [*sorted({str(getattr(o, mi.tenant_attr)) for o, mi, _ in objs
                                if mi.tenant_attr and getattr(o, mi.tenant_attr, None) is not None})]
        if tenants:
            routes = _begin_write(session, binding, tenants)
            sides = {r.authoritative for r in routes}
            if len(sides) > 1:
                _release(session, binding)
                raise RoutingError(f"one transaction writes tenants {tenants} whose authoritative stores "
                                   "differ (an override or ramp splits them); write them in separate transactions")
            # mirror whenever any of them mirrors: mirroring a key that needs none is harmless
            info[_ROUTE] = next((r for r in routes if r.mirror_to is not None), routes[0])
        else:
            info[_ROUTE] = _begin_write(session, binding, [info.get(TENANT)])[0]
    route = _route(session, binding)
    for _obj, mi, _kind in objs:
        _write_side(mi.rt, route)
    _mark(session, binding, route, sa.inspect(objs[0][0]).mapper)
    for obj, mi, kind in objs:
        if mi.version_attr is None or mi.version_managed or kind == "deleted":
            continue
        state = sa.inspect(obj)
        current = state.dict.get(mi.version_attr)
        if kind == "new":
            if current is None:
                setattr(obj, mi.version_attr, _first_version(mi))
        elif session.is_modified(obj, include_collections=False):
            hist = state.attrs[mi.version_attr].history
            if not hist.added:  # the application did not set it
                setattr(obj, mi.version_attr, _next_version(mi, current))
    info[_FLUSHING] = True


def _mark(session: Session, binding: OrmBinding, route: Routing, mapper: Any) -> None:
    """Mark the session's transaction on the authoritative store as the adapter's (bypass capture ignores it)."""
    if binding.writer.marks_writes and bypass.marks(route.phase):
        # the write side's engine, named outright: outside a flush the mapper's bind is the read side
        conn = session.connection(bind_arguments={"bind": binding.engines[route.authoritative], "mapper": mapper})
        bypass.mark_transaction(conn, binding.writer.data[route.authoritative].dialect)


def _first_version(mi: _MapperInfo) -> Any:
    kind = mi.kinds.get(mi.rt.version or "")
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return dt.datetime.now(dt.UTC) if kind is Kind.TIMESTAMPTZ else dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return 1


def _next_version(mi: _MapperInfo, current: Any) -> Any:
    kind = mi.kinds.get(mi.rt.version or "")
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return _first_version(mi)
    return (current or 0) + 1


def _image(state: Any, mi: _MapperInfo) -> dict[str, Any] | None:
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


def _key(state: Any, mi: _MapperInfo) -> Key | None:
    d = state.dict
    if all(a in d for a in mi.key_attrs):
        return tuple(d[a] for a in mi.key_attrs)
    ident = state.identity
    if ident is not None and len(ident) == len(mi.key_attrs):
        return tuple(ident)
    return None


def _after_flush(session: Session, _flush_context: Any) -> None:
    binding = _binding(session)
    if binding is None:
        return
    objs = _objects(session, binding)
    if not objs:
        return
    route = _route(session, binding)
    session.info[_WROTE] = True
    if route.mirror_to is None:
        return
    # triggers capture the keys themselves; they are still recorded here so this instance reads its writes
    want_image = binding.writer.strategy is Strategy.SYNC and binding.writer.options.fast_path
    side = route.authoritative
    touched: list[Touched] = session.info.setdefault(_PENDING, [])
    new_touched: list[Touched] = []
    for obj, mi, kind in objs:
        state = sa.inspect(obj)
        if kind == "dirty" and not session.is_modified(obj, include_collections=False):
            continue
        key = _key(state, mi)
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
        new_touched.append(Touched(mi.rt, key, _image(state, mi) if fast_ok else None, False))
    touched += new_touched
    if binding.writer.strategy is Strategy.OUTBOX and new_touched:
        rows = list(dict.fromkeys((binding.writer.migration, t.table.name, outbox.key_json(normal_key(t.key)))
                                  for t in new_touched))
        mapper = sa.inspect(objs[0][0]).mapper
        conn = session.connection(bind_arguments={"mapper": mapper})
        sql = outbox.append_sql(binding.writer.data[side])
        conn.exec_driver_sql(sql, rows if len(rows) > 1 else rows[0])


def _after_flush_postexec(session: Session, _flush_context: Any) -> None:
    session.info.pop(_FLUSHING, None)


def _end(session: Session) -> None:
    for k in (_ROUTE, _WROTE, _PENDING, _FLUSHING, _STARTED):
        session.info.pop(k, None)


def _after_commit(session: Session) -> None:
    binding = _binding(session)
    if binding is None:
        return
    touched: list[Touched] = session.info.get(_PENDING) or []
    route: Routing | None = session.info.get(_ROUTE)
    started = session.info.get(_STARTED)
    inflight: int | None = session.info.pop(_INFLIGHT, None)
    _strict_end(session, binding, committed=True)
    _end(session)
    if route is None or started is None:
        if inflight is not None:
            binding.writer.phase.leave(inflight)
        return
    committed = time.perf_counter()
    finish = functools.partial(binding.writer.finish, route, touched, started, committed)

    def work() -> None:
        try:
            finish()
        finally:  # the unit of work (its sync mirror included) is over only now
            if inflight is not None:
                binding.writer.phase.leave(inflight)

    if not binding.async_mode:
        work()
        return
    if session.info.get(_ASYNC_COMMIT):
        session.info[_DEFERRED] = work  # AsyncSession.commit awaits it on a thread
        return
    try:
        loop = asyncio.get_running_loop()
        loop.run_in_executor(binding.writer.executor, work)
    except RuntimeError:
        work()


def _before_commit(session: Session) -> None:
    """strict tables: flush now, then write the other store inside the still open authoritative transaction
    (:mod:`dualwrite.adapter.strict`); a :class:`~dualwrite.errors.StrictWriteError` fails the commit."""
    binding = _binding(session)
    if binding is None or binding.writer.strict is None or session.in_nested_transaction():
        return
    session.flush()
    route: Routing | None = session.info.get(_ROUTE)
    if route is None or route.mirror_to is None:
        return
    strict = strict_groups(session.info.get(_PENDING) or [])
    if not strict:
        return
    conn = session.connection(bind_arguments={"bind": binding.engines[route.authoritative]})
    session.info[_STRICT] = binding.writer.strict.prepare(route, strict, conn.connection.dbapi_connection)


def _strict_end(session: Session, binding: OrmBinding, *, committed: bool) -> None:
    """The authoritative transaction of a prepared strict write ended: forget its note, or (not committed:
    the commit failed after the other store committed) restore the other store from the authoritative rows."""
    ticket = session.info.pop(_STRICT, None)
    if ticket is None or binding.writer.strict is None:
        return
    if committed:
        binding.writer.strict.committed(ticket)
    else:
        log.warning("%s", binding.writer.strict.commit_failed(ticket, RuntimeError("the commit did not happen")))


def _after_rollback(session: Session) -> None:
    binding = _binding(session)
    if binding is not None:
        _release(session, binding)
        _end(session)


def _after_transaction_end(session: Session, transaction: Any) -> None:
    """The outermost transaction ended however it ended (close() included): nothing of it is in flight."""
    binding = _binding(session)
    if binding is not None and getattr(transaction, "parent", None) is None:
        _strict_end(session, binding, committed=False)
        _release(session, binding)


def _after_soft_rollback(session: Session, previous_transaction: Any) -> None:
    if _binding(session) is None:
        return
    if getattr(previous_transaction, "nested", False):
        # a savepoint rolled back: its images may be gone; keep the keys, re-read them after the commit
        for t in session.info.get(_PENDING) or []:
            t.image = None
    else:
        _release(session, _binding(session))  # type: ignore[arg-type]
        _end(session)


def _do_orm_execute(state: ORMExecuteState) -> None:
    """ORM bulk INSERT / UPDATE / DELETE of a migrated table: capture the keys they touch."""
    if not (state.is_insert or state.is_update or state.is_delete):
        return
    if state.execution_options.get(_INTERNAL):
        return
    session = state.session
    binding = _binding(session)
    if binding is None:
        return
    stmt: Any = state.statement
    mi = None
    if state.bind_mapper is not None:
        mi = binding.mapper_info(state.bind_mapper)
    if mi is None:
        return
    rt = mi.rt
    info = session.info
    info.setdefault(_STARTED, time.perf_counter())
    if _INFLIGHT not in info:
        info[_ROUTE] = _begin_write(session, binding, [info.get(TENANT)])[0]
    route = _route(session, binding)
    _write_side(rt, route)
    _mark(session, binding, route, state.bind_mapper)
    info[_WROTE] = True
    if route.mirror_to is None:
        return
    table = stmt.table
    keys: list[Key] = []
    deleted = bool(state.is_delete)
    if state.is_insert:
        params: Any = state.parameters
        plist: list[Any] = params if isinstance(params, list) else [params] if params else []
        if not plist and getattr(stmt, "_values", None):  # insert(Model).values(...)
            plist = [{getattr(c, "key", c): getattr(v, "value", v) for c, v in stmt._values.items()}]
        for p in plist:
            k = rt.key_from_values({c: p.get(a, p.get(c)) for c, a in mi.columns if a in p or c in p})
            if k is None:
                raise RoutingError(f"table {rt.name}: an ORM bulk INSERT without key values cannot be mirrored; "
                                   "give the keys or add the objects to the session instead")
            keys.append(k)
    else:
        if mi.version_attr and not mi.version_managed and state.is_update:
            vcol = table.c[rt.version]
            values = getattr(stmt, "_values", None) or {}
            if not any(getattr(c, "key", c) in (rt.version, mi.version_attr) for c in values):
                state.statement = stmt = stmt.values({vcol: vcol + 1})
        sel = sa.select(*[table.c[k] for k in rt.key])
        if stmt.whereclause is not None:
            sel = sel.where(stmt.whereclause)
        if binding.writer.data[route.authoritative].dialect.value != "sqlite":
            sel = sel.with_for_update()
        found = session.execute(sel, execution_options={_INTERNAL: True},
                                bind_arguments={"mapper": state.bind_mapper}).all()
        keys = [tuple(r) for r in found]
    touched: list[Touched] = info.setdefault(_PENDING, [])
    touched += [Touched(rt, k, None, deleted) for k in keys]
    if binding.writer.strategy is Strategy.OUTBOX and keys:
        rows = list(dict.fromkeys((binding.writer.migration, rt.name, outbox.key_json(normal_key(k))) for k in keys))
        conn = session.connection(bind_arguments={"mapper": state.bind_mapper})
        conn.exec_driver_sql(outbox.append_sql(binding.writer.data[route.authoritative]),
                             rows if len(rows) > 1 else rows[0])


# ---------------------------------------------------------------------------------------------------------
# shadow reads of loaded objects

_load_listener_installed = False
_load_lock = threading.Lock()


def _on_load(target: Any, context: Any) -> None:
    session = getattr(context, "session", None)
    if session is None:
        return
    binding = _binding(session)
    if binding is None or session.info.get(_WROTE):
        return  # the transaction reads its own writes: the other store cannot have them yet
    state = sa.inspect(target)
    mi = binding.mapper_info(state.mapper)
    if mi is None:
        return
    route = _route(session, binding)
    writer = binding.writer
    if not writer.shadow_enabled(route) or not writer.shadow.sampled():
        return
    side = _read_side(session, binding, mi.rt, route)
    d = state.dict
    row = {col: d[attr] for col, attr in mi.columns if attr in d}
    if not all(k in row for k in mi.rt.key):
        return
    key = tuple(row[k] for k in mi.rt.key)
    writer.shadow.submit_loaded(mi.rt.name, key, side.value, row)


def _install_load_listener() -> None:
    global _load_listener_installed
    with _load_lock:
        if not _load_listener_installed:
            sa.event.listen(Mapper, "load", _on_load)
            _load_listener_installed = True


# ---------------------------------------------------------------------------------------------------------
# installing


def _session_class(base: type[Session], binding: OrmBinding) -> type[Session]:
    cls: type[Session] = type(f"Dualwrite{base.__name__}", (DualwriteSessionMixin, base), {"_dw_binding": binding})
    listeners: list[tuple[str, Callable[..., Any]]] = [
        ("before_flush", _before_flush), ("after_flush", _after_flush),
        ("after_flush_postexec", _after_flush_postexec), ("before_commit", _before_commit),
        ("after_commit", _after_commit),
        ("after_rollback", _after_rollback), ("after_soft_rollback", _after_soft_rollback),
        ("do_orm_execute", _do_orm_execute), ("after_transaction_end", _after_transaction_end),
    ]
    for name, fn in listeners:
        sa.event.listen(cls, name, fn)
    return cls


def install(maker: sessionmaker[Any], writer: DualWriter, *, old_bind: Engine | None = None,
            new_bind: Engine | None = None) -> OrmBinding:
    """Make every session of ``maker`` dual-write the migration's tables (see the module docstring).

    ``old_bind`` defaults to the sessionmaker's own bind (the application's engine on the old store), so
    the migrated tables share the transaction of everything else the session writes there; ``new_bind``
    defaults to the writer's engine on the new store.
    """
    old = old_bind or maker.kw.get("bind") or writer.engine(Side.OLD)
    new = new_bind or writer.engine(Side.NEW)
    binding = OrmBinding(writer, old, new)
    maker.class_ = _session_class(maker.class_, binding)
    _install_load_listener()
    return binding


async def _await_unfenced(session: Session, binding: OrmBinding) -> None:
    """AsyncSession: wait for a write fence to lift *before* the flush, without blocking the event loop
    (the flush's own check, which runs on the loop's thread, then finds the fence lifted)."""
    info = session.info
    if _INFLIGHT in info:
        return
    objs = _objects(session, binding)
    if not objs:
        return
    if TENANT in info:
        tenants: set[str | None] = {info.get(TENANT)}
    else:
        tenants = {str(getattr(o, mi.tenant_attr)) for o, mi, _ in objs
                   if mi.tenant_attr and getattr(o, mi.tenant_attr, None) is not None} or {None}
    w = binding.writer
    cache = w.phase
    since: float | None = None
    while any(cache.fenced(t) for t in tenants):
        now = time.monotonic()
        since = now if since is None else since
        w._fence_wait_step([(t, None) for t in tenants], since, now)  # noqa: SLF001
        await asyncio.sleep(w.options.fence_poll)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cache.refresh, force=True)


def install_async(maker: Any, writer: DualWriter, *, old_bind: Any = None, new_bind: Any = None) -> OrmBinding:
    """:func:`install` for an ``async_sessionmaker``: ``old_bind`` / ``new_bind`` are ``AsyncEngine`` objects
    (default: the maker's bind, and an async engine on the new store's URL)."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: PLC0415 - needs greenlet

    old_async = old_bind or maker.kw.get("bind")
    if old_async is None:
        raise RoutingError("install_async needs the AsyncEngine of the old store (old_bind or the maker's bind)")
    new_async = new_bind or create_async_engine(writer.new_store.ref.url)
    binding = OrmBinding(writer, old_async.sync_engine, new_async.sync_engine, async_mode=True)
    binding.async_engines = {Side.OLD: old_async, Side.NEW: new_async}  # type: ignore[attr-defined]
    base_sync = maker.kw.get("sync_session_class") or Session
    maker.kw["sync_session_class"] = _session_class(base_sync, binding)
    base_async: type[AsyncSession] = maker.class_

    async def flush(self: AsyncSession, objects: Any = None) -> None:
        await _await_unfenced(self.sync_session, binding)
        await base_async.flush(self, objects)

    async def commit(self: AsyncSession) -> None:
        await _await_unfenced(self.sync_session, binding)
        info = self.sync_session.info
        info[_ASYNC_COMMIT] = True
        try:
            await base_async.commit(self)
        finally:
            info.pop(_ASYNC_COMMIT, None)
        work = info.pop(_DEFERRED, None)
        if work is not None:
            await asyncio.get_running_loop().run_in_executor(writer.executor, work)

    maker.class_ = type(f"Dualwrite{base_async.__name__}", (base_async,), {"commit": commit, "flush": flush})
    _install_load_listener()
    return binding
